"""The worker pool's link side: batched messages keep their order with everything sent
after them, and one flush goes out per batch. A socket pair stands in for a worker."""

from __future__ import annotations

import asyncio
import itertools
import socket
import time
from collections.abc import Iterator

import pytest

from relayd import ipc
from relayd.plane.workerpool import RESTART_DELAY_MAX, WorkerPool, WorkerProcess, restart_delay

BATCH = 0.05  # longer than relayd's, so that timer granularity does not matter


class Owner:
    def worker_lost(self, worker: WorkerProcess) -> None:
        pass

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


def test_a_worker_that_keeps_dying_at_start_is_restarted_later_and_later() -> None:
    """The first death restarts at once (media resumes); deaths in a row soon after each start
    (a crash on start-up) back off, doubling, up to the maximum."""
    delays = [restart_delay(n) for n in range(1, 10)]
    assert delays[0] == 0.0
    assert delays[1] > 0 and all(b >= a for a, b in itertools.pairwise(delays))
    assert delays[2] == 2 * delays[1]
    assert delays[-1] == RESTART_DELAY_MAX


def test_a_dead_worker_is_restarted_after_the_back_off(monkeypatch: pytest.MonkeyPatch) -> None:
    spawned: list[float] = []

    class Ready(Owner):
        def worker_ready(self, worker: WorkerProcess) -> None:
            spawned.append(asyncio.get_running_loop().time())

    monkeypatch.setattr("relayd.plane.workerpool.RESTART_DELAY_FIRST", 0.05)

    async def dying() -> tuple[list[float], float]:
        pool = WorkerPool(Ready(), 1)
        worker = pool.workers[0]
        monkeypatch.setattr(pool, "_spawn", lambda w: setattr(w, "spawned_at", time.monotonic()))
        start = asyncio.get_running_loop().time()
        worker.spawned_at = time.monotonic()
        for _ in range(3):  # three deaths, each right after its start
            pool._lost(worker)
            while len(spawned) < worker.quick_deaths:
                await asyncio.sleep(0.01)
        await pool.stop()
        return spawned, start

    times, start = asyncio.run(dying())
    assert len(times) == 3
    assert times[0] - start < 0.04  # the first: at once
    assert times[1] - times[0] >= 0.045  # then 0.05 s
    assert times[2] - times[1] >= 0.095  # then 0.1 s


def test_a_dead_workers_ports_are_taken_back_before_its_replacement_starts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    events: list[str] = []

    class Recording(Owner):
        def worker_lost(self, worker: WorkerProcess) -> None:
            events.append("lost")

        def worker_ready(self, worker: WorkerProcess) -> None:
            events.append("ready")

    async def dies() -> None:
        pool = WorkerPool(Recording(), 1)
        monkeypatch.setattr(pool, "_spawn", lambda w: None)
        pool.workers[0].spawned_at = time.monotonic() - 60  # it had lived: restarted at once
        pool._lost(pool.workers[0])
        await pool.stop()
        pool._lost(pool.workers[0])  # stopping: neither taken back nor restarted

    asyncio.run(dies())
    assert events == ["lost", "ready"]
