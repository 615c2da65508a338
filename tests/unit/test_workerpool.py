"""The worker pool's link side: batched messages keep their order with everything sent
after them, and one flush goes out per batch. A socket pair stands in for a worker."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import pytest

from relayd import ipc
from relayd.plane.workerpool import WorkerPool, WorkerProcess

BATCH = 0.05  # longer than relayd's, so that timer granularity does not matter


class Owner:
    def worker_ready(self, worker: WorkerProcess) -> None:
        pass

    def worker_message(self, worker: WorkerProcess, message: ipc.Message) -> None:
        pass

    def medias_on(self, worker: WorkerProcess) -> int:
        return 0


@pytest.fixture
def pool(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[WorkerPool, socket.socket]]:
    monkeypatch.setattr("relayd.plane.updates.WORKER_BATCH_DELAY", BATCH)
    pool = WorkerPool(Owner(), 1)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pool.workers[0].link = ours
    try:
        yield pool, theirs
    finally:
        ours.close()
        theirs.close()


def received(theirs: socket.socket) -> list[ipc.Message]:
    got = []
    while True:
        try:
            got.append(ipc.decode(theirs.recv(1 << 16, socket.MSG_DONTWAIT)))
        except BlockingIOError:
            return got


def test_batched_drops_go_out_together_after_the_delay(
    pool: tuple[WorkerPool, socket.socket],
) -> None:
    workers, theirs = pool
    worker = workers.workers[0]

    async def deleting() -> list[list[ipc.Message]]:
        workers.send_later(worker, ipc.Drop("c1 0"))
        workers.send_later(worker, ipc.Drop("c2 0"))
        await asyncio.sleep(BATCH / 2)
        before = received(theirs)
        await asyncio.sleep(BATCH)
        return [before, received(theirs)]

    before, after = asyncio.run(deleting())
    assert before == []
    assert after == [ipc.Drop("c1 0"), ipc.Drop("c2 0")]


def test_a_message_sent_at_once_goes_after_what_waits(
    pool: tuple[WorkerPool, socket.socket],
) -> None:
    workers, theirs = pool
    worker = workers.workers[0]

    async def signalling() -> list[ipc.Message]:
        workers.send_later(worker, ipc.Drop("c1 0"))
        workers.send(worker, ipc.Drop("c2 0"))  # e.g. a forward: the batch goes first
        workers.send_later(worker, ipc.Drop("c3 0"))  # a new batch, with its own timer
        await asyncio.sleep(BATCH * 2)
        return received(theirs)

    assert asyncio.run(signalling()) == [
        ipc.Drop("c1 0"),
        ipc.Drop("c2 0"),
        ipc.Drop("c3 0"),
    ]
