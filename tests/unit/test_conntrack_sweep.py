"""ConntrackSweep: released ports are swept in batches, off the event loop, never failing.

The kernel side is a fake sweeper that records what it was asked; the netns tier
(tests/netns/test_conntrack_hygiene.py) runs the real one.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from relayd.calls.model import Endpoint as PeerEndpoint
from relayd.calls.model import LocalAddress, Stream
from relayd.ipc import socket_key
from relayd.nft.conntrack import ConntrackError
from relayd.nft.ruleset import Endpoint
from relayd.plane import sweep
from relayd.plane.sockets import SocketBinder
from relayd.plane.sweep import SWEEP_DELAY, ConntrackSweep, Flow

LOCAL = LocalAddress("caller", "10.99.1.1", "10.99.1.1")


class FakeSweeper:
    """Records each batch and the thread it ran in; fails while ``failure`` is set; a host
    whose conntrack holds nothing while ``empty`` is set."""

    def __init__(self) -> None:
        self.batches: list[tuple[set[Endpoint], set[Flow]]] = []
        self.threads: list[str] = []
        self.failure: Exception | None = None
        self.empty = False
        self.closed = False

    def idle(self) -> bool:
        return self.empty

    def close(self) -> None:
        self.closed = True

    def __call__(self, sockets: set[Endpoint], flows: set[Flow]) -> int:
        self.threads.append(threading.current_thread().name)
        self.batches.append((sockets, flows))
        if self.failure is not None:
            raise self.failure
        return len(sockets)


class FakeLog:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Any:
        return lambda event, **fields: self.lines.append((level, event, fields))


@pytest.fixture
def logged(monkeypatch: pytest.MonkeyPatch) -> FakeLog:
    fake = FakeLog()
    monkeypatch.setattr(sweep, "log", fake)
    return fake


def stream(port: int, endpoint: PeerEndpoint | None, advertised: PeerEndpoint | None) -> Stream:
    return Stream(
        LOCAL, port, rtcp=bool(port & 1), endpoint=endpoint, advertised_endpoint=advertised
    )


def test_ports_released_together_are_swept_in_one_batch_off_the_loop() -> None:
    fake = FakeSweeper()
    learned, advertised = PeerEndpoint("10.99.1.2", 6000), PeerEndpoint("10.99.1.2", 6100)
    streams = {
        socket_key("10.99.1.1", 30000): stream(30000, learned, advertised),
        socket_key("10.99.1.1", 30001): stream(30001, None, PeerEndpoint("10.99.1.2", 6001)),
    }
    sweeper = ConntrackSweep(streams, fake)

    async def release() -> None:
        sweeper.released("10.99.1.1", 30000)
        sweeper.released("fd00:99::1:1", 30002)
        assert fake.batches == []  # not at once: the batch waits for SWEEP_DELAY
        await asyncio.sleep(SWEEP_DELAY * 2)

    asyncio.run(release())
    assert len(fake.batches) == 1
    sockets, flows = fake.batches[0]
    assert sockets == {
        Endpoint("10.99.1.1", 30000),
        Endpoint("10.99.1.1", 30001),
        Endpoint("fd00:99::1:1", 30002),
        Endpoint("fd00:99::1:1", 30003),
    }
    assert flows == {
        (Endpoint("10.99.1.2", 6000), Endpoint("10.99.1.1", 30000)),
        (Endpoint("10.99.1.2", 6100), Endpoint("10.99.1.1", 30000)),
        (Endpoint("10.99.1.2", 6001), Endpoint("10.99.1.1", 30001)),
    }
    assert fake.threads[0].startswith("conntrack-sweep")
    assert sweeper.swept == 4
    sweeper.close()


def test_a_release_during_a_sweep_waits_for_the_next_batch() -> None:
    gate = threading.Event()

    class Slow(FakeSweeper):
        def __call__(self, sockets: set[Endpoint], flows: set[Flow]) -> int:
            gate.wait(5)
            return super().__call__(sockets, flows)

    fake = Slow()
    sweeper = ConntrackSweep({}, fake)

    async def release() -> None:
        sweeper.released("10.99.1.1", 30000)
        await asyncio.sleep(SWEEP_DELAY * 1.5)  # the first sweep is running, held
        sweeper.released("10.99.1.1", 30010)
        sweeper.released("10.99.1.1", 30020)
        gate.set()
        await asyncio.sleep(SWEEP_DELAY * 3)

    asyncio.run(release())
    assert [sorted(ep.port for ep in sockets) for sockets, _ in fake.batches] == [
        [30000, 30001],
        [30010, 30011, 30020, 30021],
    ]
    sweeper.close()


def test_failures_are_logged_once_and_never_raised(logged: FakeLog) -> None:
    fake = FakeSweeper()
    fake.failure = ConntrackError("ctnetlink: [Errno 1] Operation not permitted")
    sweeper = ConntrackSweep({}, fake)

    async def release() -> None:
        for port in (30000, 30010):
            sweeper.released("10.99.1.1", port)
            await asyncio.sleep(SWEEP_DELAY * 2)

    asyncio.run(release())
    assert len(fake.batches) == 2  # the second batch was tried all the same
    assert [(level, event) for level, event, _ in logged.lines if level == "warning"] == [
        ("warning", "conntrack.sweep_failed")
    ]
    assert sweeper.swept == 0
    sweeper.close()


def test_an_unexpected_error_is_logged_as_such(logged: FakeLog) -> None:
    fake = FakeSweeper()
    fake.failure = KeyError("bug")
    sweeper = ConntrackSweep({}, fake)
    sweeper.released("10.99.1.1", 30000)  # no event loop: swept at once
    assert ("error", "conntrack.sweep_crashed") in [(lv, ev) for lv, ev, _ in logged.lines]
    assert len(fake.batches) == 1


def test_close_sweeps_what_is_still_queued() -> None:
    fake = FakeSweeper()
    sweeper = ConntrackSweep({}, fake)

    async def release_and_stop() -> None:
        sweeper.released("10.99.1.1", 30000)
        sweeper.close()  # before SWEEP_DELAY: the batch goes now

    asyncio.run(release_and_stop())
    assert [len(sockets) for sockets, _ in fake.batches] == [2]
    assert fake.closed  # the kernel side (its netlink socket) is let go after that batch


def test_peers_of_another_family_or_without_a_port_are_left_out() -> None:
    fake = FakeSweeper()
    streams = {
        socket_key("10.99.1.1", 30000): stream(30000, PeerEndpoint("fd00::2", 6000), None),
        socket_key("10.99.1.1", 30001): stream(30001, PeerEndpoint("10.99.1.2", 0), None),
    }
    ConntrackSweep(streams, fake).released("10.99.1.1", 30000)
    assert fake.batches[0][1] == set()


def test_a_host_without_conntrack_entries_is_not_swept() -> None:
    # nothing tracked (userspace only, nf_conntrack not loaded): the batch ends before its
    # endpoints are made, and so before the sweeper is asked; once entries exist it is
    fake = FakeSweeper()
    fake.empty = True
    sweeper = ConntrackSweep({}, fake)
    sweeper.released("10.99.1.1", 30000)
    assert fake.batches == []
    assert sweeper.swept == 0
    fake.empty = False
    sweeper.released("10.99.1.1", 30002)
    assert fake.batches == [({Endpoint("10.99.1.1", 30002), Endpoint("10.99.1.1", 30003)}, set())]
    assert sweeper.swept == 2


def test_the_binder_tells_of_each_pair_it_gave_back() -> None:
    released: list[tuple[str, int]] = []
    binder = SocketBinder(on_release=lambda address, port: released.append((address, port)))
    for port in range(40000, 40100, 2):  # a free pair on loopback
        if binder.bind("127.0.0.1", port):
            break
    else:
        pytest.skip("no free port pair on 127.0.0.1")
    binder.release("127.0.0.1", port)
    binder.release("127.0.0.1", port)  # nothing held any more: nothing to tell
    assert released == [("127.0.0.1", port)]


def test_an_unreported_streams_peers_go_with_its_port() -> None:
    # a foreign call (relayd/ha/): no worker reported its streams, the host's previous life
    # may have left its peers' flows
    fake = FakeSweeper()
    sweeper = ConntrackSweep({}, fake)

    async def release() -> None:
        sweeper.unreported(stream(30000, PeerEndpoint("10.99.1.2", 6000), None))
        sweeper.unreported(stream(0, PeerEndpoint("10.99.1.2", 6002), None))  # no port: none
        sweeper.released("10.99.1.1", 30000)
        await asyncio.sleep(SWEEP_DELAY * 2)

    asyncio.run(release())
    assert fake.batches[0][1] == {(Endpoint("10.99.1.2", 6000), Endpoint("10.99.1.1", 30000))}
    sweeper.close()
