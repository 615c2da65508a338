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
            got.extend(ipc.decode_all(theirs.recv(1 << 16, socket.MSG_DONTWAIT)))
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


def packets(theirs: socket.socket) -> list[list[ipc.Message]]:
    """What the worker end received, packet by packet."""
    got = []
    while True:
        try:
            got.append(ipc.decode_all(theirs.recv(1 << 16, socket.MSG_DONTWAIT)))
        except BlockingIOError:
            return got


def test_a_batch_is_one_packet_and_a_calls_closes_are_one(
    pool: tuple[WorkerPool, socket.socket],
) -> None:
    """A deleted call's ports (one Close per pair) and its Drop wake the worker once."""
    workers, theirs = pool
    worker = workers.workers[0]

    async def deleting() -> list[list[ipc.Message]]:
        workers.send_later(worker, ipc.Close(("h 30000", "h 30001")))
        workers.send_later(worker, ipc.Close(("h 30002", "h 30003")))
        workers.send_later(worker, ipc.Drop("c1 0"))
        workers.send_later(worker, ipc.Close(("h 30004", "h 30005")))
        await asyncio.sleep(BATCH * 2)
        return packets(theirs)

    assert asyncio.run(deleting()) == [
        [
            ipc.Close(("h 30000", "h 30001", "h 30002", "h 30003")),
            ipc.Drop("c1 0"),
            ipc.Close(("h 30004", "h 30005")),
        ]
    ]


def test_what_waits_goes_in_the_packet_of_a_message_sent_at_once_with_its_descriptors(
    pool: tuple[WorkerPool, socket.socket],
) -> None:
    """The descriptors count from the packet's first: what waited carries none."""
    workers, theirs = pool
    worker = workers.workers[0]
    theirs.setblocking(False)
    held = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:

        async def signalling() -> bool:
            workers.send_later(worker, ipc.Drop("c1 0"))
            forward = ipc.Forward("c2 0", (ipc.SocketSpec("h 30000", fd_index=0),))
            return workers.transmit(worker, ipc.encode(forward), [held.fileno()])

        assert asyncio.run(signalling())
        data, fds, _flags, _addr = socket.recv_fds(theirs, 1 << 16, 4)
        assert ipc.decode_all(data) == [
            ipc.Drop("c1 0"),
            ipc.Forward("c2 0", (ipc.SocketSpec("h 30000", fd_index=0),)),
        ]
        assert len(fds) == 1
        for fd in fds:
            socket.socket(fileno=fd).close()
        with pytest.raises(BlockingIOError):
            theirs.recv(1 << 16)
    finally:
        held.close()


def test_a_burst_is_cut_into_packets_a_worker_reads_whole(
    pool: tuple[WorkerPool, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("relayd.plane.workerpool._PACKET_LIMIT", 100)
    workers, theirs = pool
    worker = workers.workers[0]
    drops = [ipc.Drop(f"call-{n} 0") for n in range(10)]

    async def deleting() -> list[list[ipc.Message]]:
        for drop in drops:
            workers.send_later(worker, drop)
        await asyncio.sleep(BATCH * 2)
        return packets(theirs)

    got = asyncio.run(deleting())
    assert len(got) > 1 and [m for packet in got for m in packet] == drops
