"""The hand-over of calls' streams between the workers and the kernel path
(relayd/plane/handover.py): when the workers are told, when the kernel is, which streams
are marked ``kernelized``, and what happens after an nftables failure.

The kernel path and the media plane are fakes that write into one shared event log, so the
order "workers told, then kernel sync" can be asserted. Calls come from the real signalling
(tests/unit/calls.py); what the workers would confirm is set on the streams by hand.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import pytest

from relayd.calls.commands import Commands
from relayd.calls.model import Call, CallRecording, Stream
from relayd.ipc import socket_key
from relayd.plane.handover import KernelHandover
from relayd.plane.kernel import Traffic
from relayd.plane.offload import KernelLeg, kernel_legs
from relayd.plane.reports import Reports
from tests.unit.calls import B_ADDR, LOCAL4, T0, build, req, sdp

Event = tuple[str, str]  # (what happened, call-id or "")


@dataclass
class FakeKernel:
    """The KernelPath methods the hand-over calls, with a table that does as it is told.

    ``sync`` installs the legs it is given, less those whose socket is in ``uninstallable``,
    and returns their socket keys; with ``fail_next_sync`` nftables fails in it (:meth:`fail`:
    ``enabled`` goes False, nothing is in the table, ``dropped`` names the calls that were).
    ``installed`` holds the calls with something in the table, as the real one's keys.
    ``accepts`` refuses the legs whose socket is in ``refused``. ``adopt`` returns
    ``adopt_result`` if set, else per call the sockets of the legs it accepts (as the real
    one does).
    """

    log: list[Event]
    enabled: bool = True
    refused: set[str] = field(default_factory=set)
    uninstallable: set[str] = field(default_factory=set)
    fail_next_sync: bool = False
    due: bool = False  # retry_due()
    starts: bool = True  # whether start() turns it on
    table_gone: bool = False  # check() finds the table deleted from outside
    adopt_result: dict[str, set[str]] | None = None
    pending: dict[str, Traffic] = field(default_factory=dict)  # what the next read returns
    synced: list[tuple[str, list[KernelLeg]]] = field(default_factory=list)
    adopted: list[dict[str, list[KernelLeg]]] = field(default_factory=list)
    settled: list[float] = field(default_factory=list)
    recorded: dict[str, tuple[int, set[str]]] = field(default_factory=dict)
    events: dict[str, int] = field(default_factory=dict)  # call-id -> telephone-event copied
    installed: dict[str, set[str]] = field(default_factory=dict)  # call-id -> its sockets
    dropped: list[str] = field(default_factory=list)

    def fail(self) -> None:
        """nftables failed: as KernelPath._disable."""
        self.enabled = False
        self.dropped.extend(self.installed)
        self.installed.clear()

    def _hold(self, call_id: str, sockets: set[str]) -> set[str]:
        if sockets:
            self.installed[call_id] = sockets
        else:
            self.installed.pop(call_id, None)
        return sockets

    def accepts(self, leg: KernelLeg) -> bool:
        return self.enabled and leg.socket not in self.refused

    def record(
        self,
        call_id: str,
        group: int | None,
        legs: Iterable[KernelLeg] = (),
        events: int | None = None,
    ) -> None:
        """Marks a call's forwards recorded to ``group`` (only the packets of payload type
        ``events``, with it): logged only when it marks."""
        if group is not None:
            self.log.append(("kernel.record", call_id))
            self.recorded[call_id] = (group, {leg.socket for leg in legs})
            if events is not None:
                self.events[call_id] = events
            else:
                self.events.pop(call_id, None)
        else:
            self.recorded.pop(call_id, None)
            self.events.pop(call_id, None)

    def sync(self, call_id: str, legs: Iterable[KernelLeg]) -> set[str]:
        given = list(legs)
        self.log.append(("kernel.sync", call_id))
        self.synced.append((call_id, given))
        if self.fail_next_sync:
            self.fail_next_sync = False
            self.fail()
        if not self.enabled:
            return set()
        return self._hold(call_id, {leg.socket for leg in given} - self.uninstallable)

    def drop(self, call_id: str) -> bool:
        self.log.append(("kernel.drop", call_id))
        self.installed.pop(call_id, None)
        return True

    def adopt(self, calls: dict[str, list[KernelLeg]]) -> dict[str, set[str]]:
        self.log.append(("kernel.adopt", ""))
        self.adopted.append({cid: list(legs) for cid, legs in calls.items()})
        result = self.adopt_result
        if result is None:
            result = {
                cid: {leg.socket for leg in legs} - self.refused for cid, legs in calls.items()
            }
        self.installed = {}
        for cid, sockets in result.items():
            self._hold(cid, sockets)
        return result

    def retry_due(self) -> bool:
        return not self.enabled and self.due

    def check(self) -> bool:
        self.log.append(("kernel.check", ""))
        if self.table_gone:
            self.fail()
        return self.enabled

    def start(self) -> bool:
        self.log.append(("kernel.start", ""))
        self.enabled = self.starts
        if self.enabled:
            self.dropped = []
        return self.enabled

    def read(self, call_ids: Iterable[str]) -> dict[str, Traffic]:
        self.log.append(("kernel.read", " ".join(call_ids)))
        return self._pending()

    async def read_all(self) -> dict[str, Traffic]:
        self.log.append(("kernel.read_all", ""))
        await asyncio.sleep(0)  # the real one lets the loop run between kernel buffers
        return self._pending()

    def _pending(self) -> dict[str, Traffic]:
        if not self.enabled:
            return {}
        pending, self.pending = self.pending, {}
        return pending

    def settle(self, now: float) -> None:
        self.settled.append(now)


@dataclass
class FakeMedia:
    """The media plane: ``sync`` logs the call and which of its sockets were marked
    kernelized at that moment (what the workers are told to leave alone)."""

    log: list[Event]
    calls: Mapping[str, Call]
    reports: Reports = field(default_factory=Reports)
    told: list[tuple[str, frozenset[str]]] = field(default_factory=list)

    def sync(self, call: Call) -> None:
        self.log.append(("media.sync", call.call_id))
        self.told.append((call.call_id, frozenset(k for k, on in _marks(call).items() if on)))


@dataclass
class Rig:
    handover: KernelHandover
    media: FakeMedia
    cmds: Commands
    log: list[Event]
    traffic: list[tuple[Stream, int, int]]
    kernel_: FakeKernel | None

    @property
    def kernel(self) -> FakeKernel:
        assert self.kernel_ is not None
        return self.kernel_

    def call(self, call_id: str = "c1", *, confirmed: bool = True) -> Call:
        """A answers B (B at port 6000); both parties' endpoints confirmed unless told not."""
        offer = req("offer", call_id, from_tag="a", sdp=sdp())
        assert self.cmds.handle(offer, T0)["result"] == "ok"
        answer = req("answer", call_id, from_tag="a", to_tag="b", sdp=sdp(B_ADDR, 6000))
        reply = self.cmds.handle(answer, T0)
        assert reply["result"] == "ok", reply
        call = self.cmds.calls[call_id]
        for stream in _streams(call):
            stream.confirmed = confirmed
        return call

    def offloaded(self, call_id: str = "c1") -> Call:
        """A call in the kernel; the log starts afresh after it."""
        call = self.call(call_id)
        self.handover.offload(call)
        assert call_id in self.handover.in_kernel
        self.log.clear()
        self.media.told.clear()
        return call


def _rig(
    *,
    kernel: bool = True,
    enabled: bool = True,
    rtcp_copied: bool = False,
    record_group: Callable[[Call], int | None] = lambda call: None,
    copies: bool = False,
    dtmf_events: bool = False,
    events_group: Callable[[Call], tuple[int, int] | None] = lambda call: None,
) -> Rig:
    log: list[Event] = []
    cmds, _ = build()
    fake = FakeKernel(log, enabled=enabled) if kernel else None
    media = FakeMedia(log, cmds.calls)
    traffic: list[tuple[Stream, int, int]] = []
    handover = KernelHandover(
        fake,  # type: ignore[arg-type]
        media,  # type: ignore[arg-type]
        lambda call: log.append(("changed", call.call_id)),
        lambda stream, packets, size: traffic.append((stream, packets, size)),
        rtcp_copied=rtcp_copied,
        record_group=record_group,
        copies=copies,
        dtmf_events=dtmf_events,
        events_group=events_group,
    )
    return Rig(handover, media, cmds, log, traffic, fake)


def _streams(call: Call) -> list[Stream]:
    return [s for m in call.all_medias() for s in m.streams]


def _marks(call: Call) -> dict[str, bool]:
    return {socket_key(s.local.local, s.port): s.kernelized for s in _streams(call)}


def _keys(call: Call, tag: str) -> tuple[str, str]:
    """Our RTP and RTCP socket keys towards a party."""
    port = call.monologues[tag].medias[0].port
    return socket_key(LOCAL4, port), socket_key(LOCAL4, port + 1)


def events(*texts: str) -> list[Event]:
    """Log entries written as "what call-id" ("kernel.start" for one without a call)."""
    return [(what, call_id) for what, _, call_id in (t.partition(" ") for t in texts)]


def _four(call: Call) -> tuple[str, str, str, str]:
    """A's RTP and RTCP socket keys, then B's."""
    return (*_keys(call, "a"), *_keys(call, "b"))


def _only_b_ends_in_kernel(rig: Rig, call: Call, told_first: set[str]) -> None:
    """The workers were told ``told_first``, then that only B's sockets are in the kernel,
    which is where the call ends."""
    a_rtp, a_rtcp, b_rtp, b_rtcp = _four(call)
    assert rig.media.told == [("c1", frozenset(told_first)), ("c1", frozenset({b_rtp, b_rtcp}))]
    assert _marks(call) == {a_rtp: False, a_rtcp: False, b_rtp: True, b_rtcp: True}
    assert rig.handover.in_kernel == {"c1"}


def _all_keys(call: Call) -> frozenset[str]:
    return frozenset(_marks(call))


def _sent(kernel: FakeKernel) -> list[set[str]]:
    """The sockets of the legs each kernel sync was given."""
    return [{leg.socket for leg in legs} for _, legs in kernel.synced]


# -- offload ----------------------------------------------------------------------------------


def test_offload_tells_the_workers_before_the_kernel_and_marks_what_the_kernel_took() -> None:
    rig = _rig(rtcp_copied=True)  # separate RTCP stays with the workers
    call = rig.call()
    a_rtp, a_rtcp, b_rtp, b_rtcp = _four(call)
    rig.handover.offload(call)
    # the workers stop relaying on the sockets first, then the forwards go in; once saved
    assert rig.log == [("media.sync", "c1"), ("kernel.sync", "c1"), ("changed", "c1")]
    assert rig.media.told == [("c1", frozenset({a_rtp, b_rtp}))]
    assert [cid for cid, _ in rig.kernel.synced] == ["c1"]
    assert set(rig.kernel.synced[0][1]) == set(kernel_legs(call, rtcp=False))
    assert _marks(call) == {a_rtp: True, a_rtcp: False, b_rtp: True, b_rtcp: False}
    assert rig.handover.in_kernel == {"c1"}
    rig.log.clear()
    rig.handover.offload(call)  # a report with nothing new: the table is kept in step only
    # (what its forwards counted read first: they might change)
    assert rig.log == [("kernel.read", "c1"), ("kernel.sync", "c1")]
    assert rig.handover.in_kernel == {"c1"}


def test_only_the_sockets_the_kernel_took_stay_marked_and_the_workers_hear_again() -> None:
    rig = _rig()
    call = rig.call()
    a_rtp, a_rtcp, b_rtp, b_rtcp = _four(call)
    rig.kernel.uninstallable = {a_rtp, a_rtcp}
    rig.handover.offload(call)
    assert _sent(rig.kernel) == [{a_rtp, a_rtcp, b_rtp, b_rtcp}]
    assert rig.log == events("media.sync c1", "kernel.sync c1", "media.sync c1", "changed c1")
    _only_b_ends_in_kernel(rig, call, told_first={a_rtp, a_rtcp, b_rtp, b_rtcp})


def test_a_leg_the_kernel_does_not_accept_is_neither_marked_nor_sent() -> None:
    rig = _rig()
    call = rig.call()
    a_rtp, a_rtcp, b_rtp, b_rtcp = _four(call)
    rig.kernel.refused = {a_rtp}
    rig.handover.offload(call)
    assert len(kernel_legs(call)) == 4
    assert _sent(rig.kernel) == [{a_rtcp, b_rtp, b_rtcp}]
    assert rig.media.told == [("c1", frozenset({a_rtcp, b_rtp, b_rtcp}))]
    assert _marks(call) == {a_rtp: False, a_rtcp: True, b_rtp: True, b_rtcp: True}
    assert rig.log == [("media.sync", "c1"), ("kernel.sync", "c1"), ("changed", "c1")]


def test_when_the_kernel_installs_nothing_the_streams_go_back_to_the_workers() -> None:
    rig = _rig()
    call = rig.call()
    rig.kernel.uninstallable = set(_all_keys(call))
    rig.handover.offload(call)
    assert rig.log == events("media.sync c1", "kernel.sync c1", "media.sync c1", "changed c1")
    assert rig.media.told == [("c1", _all_keys(call)), ("c1", frozenset())]
    assert set(_marks(call).values()) == {False}
    assert rig.handover.in_kernel == set()


def test_a_call_in_the_kernel_leaves_in_kernel_when_its_sync_installs_nothing() -> None:
    rig = _rig()
    call = rig.offloaded()
    assert set(_marks(call).values()) == {True}
    rig.kernel.uninstallable = set(_all_keys(call))
    rig.handover.offload(call)
    # the marks did not change before the sync (same legs): the workers hear only after
    assert rig.log == events("kernel.read c1", "kernel.sync c1", "media.sync c1", "changed c1")
    assert rig.media.told == [("c1", frozenset())]
    assert set(_marks(call).values()) == {False}
    assert rig.handover.in_kernel == set()


@pytest.mark.parametrize("kernel", ["none", "disabled"])
def test_without_a_working_kernel_path_offload_does_nothing(kernel: str) -> None:
    rig = _rig(kernel=kernel != "none", enabled=False)
    call = rig.call()
    assert len(kernel_legs(call)) == 4
    rig.handover.offload(call)
    assert rig.log == []  # no worker sync, no kernel sync, nothing saved
    assert set(_marks(call).values()) == {False}
    assert rig.handover.in_kernel == set()
    if rig.kernel_ is not None:
        assert rig.kernel.synced == []


# -- signalling, the end of a call ------------------------------------------------------------


def test_unoffload_drops_the_forwards_and_hands_every_stream_back_unconfirmed() -> None:
    rig = _rig()
    call = rig.offloaded()
    assert [(s.kernelized, s.confirmed) for s in _streams(call)] == [(True, True)] * 4
    rig.handover.unoffload(call)
    # counts read, forwards dropped; the workers hear with the signalling's update
    assert rig.log == [("kernel.read", "c1"), ("kernel.drop", "c1")]
    assert rig.handover.in_kernel == set()
    assert [(s.kernelized, s.confirmed) for s in _streams(call)] == [(False, False)] * 4


def test_forget_drops_only_that_calls_forwards() -> None:
    rig = _rig()
    one, two = rig.offloaded("c1"), rig.offloaded("c2")
    rig.handover.forget(one)
    assert rig.log == [("kernel.read", "c1"), ("kernel.drop", "c1")]
    assert rig.handover.in_kernel == {"c2"}
    assert set(_marks(two).values()) == {True}
    assert _marks(one) != _marks(two)  # two calls, two sets of sockets


# -- nftables failures ------------------------------------------------------------------------


def test_after_nftables_fails_in_an_offload_every_call_goes_back_to_the_workers() -> None:
    rig = _rig()
    one, two = rig.offloaded("c1"), rig.offloaded("c2")
    bystander = rig.call("c3", confirmed=False)  # never in the kernel: not touched
    rig.log.clear()
    rig.kernel.fail_next_sync = True
    rig.handover.offload(one)
    assert not rig.kernel.enabled
    assert sorted(rig.media.told) == [("c1", frozenset()), ("c2", frozenset())]
    assert [e for e in rig.log if e[0] != "changed"] == [
        ("kernel.read", "c1"),
        ("kernel.sync", "c1"),
        ("media.sync", "c1"),
        ("media.sync", "c2"),
    ]
    for call in (one, two, bystander):
        assert set(_marks(call).values()) == {False}
    assert rig.handover.in_kernel == set()


def test_after_nftables_failed_elsewhere_the_next_tick_hands_every_call_back() -> None:
    rig = _rig()
    one, two = rig.offloaded("c1"), rig.offloaded("c2")
    rig.call("c3", confirmed=False)
    rig.log.clear()
    rig.kernel.fail()  # e.g. reading the counters or deleting conntrack entries failed
    rig.handover.tick()
    assert sorted(rig.media.told) == [("c1", frozenset()), ("c2", frozenset())]
    assert sorted(e for e in rig.log if e[0] == "media.sync") == [
        ("media.sync", "c1"),
        ("media.sync", "c2"),
    ]
    assert ("kernel.start", "") not in rig.log  # not due yet
    assert set(_marks(one).values()) == set(_marks(two).values()) == {False}
    assert rig.handover.in_kernel == set()
    rig.log.clear()
    rig.handover.tick()  # nothing more to hand back, and nothing read
    assert rig.log == []


# -- once a second ----------------------------------------------------------------------------


def test_tick_looks_for_the_table_only_while_it_carries_streams() -> None:
    rig = _rig()
    rig.handover.tick()
    assert rig.log == []  # nothing in the kernel: nothing to look at
    call = rig.offloaded()
    rig.handover.tick()
    assert rig.log == [("kernel.check", "")]  # one look, however many calls
    rig.log.clear()
    rig.kernel.table_gone = True  # deleted from outside: every stream back to the workers
    rig.handover.tick()
    assert rig.log[0] == ("kernel.check", "")
    assert ("media.sync", "c1") in rig.log
    assert set(_marks(call).values()) == {False}
    assert rig.handover.in_kernel == set()


def test_tick_retries_nftables_and_adopts_every_call_once_it_works_again() -> None:
    rig = _rig(enabled=False)
    confirmed = rig.call("c1")  # confirmed while nftables was down: offload did nothing
    rig.handover.offload(confirmed)
    learning = rig.call("c2", confirmed=False)
    rig.handover.tick()
    assert rig.log == []  # retry not due: not even tried
    rig.kernel.due, rig.kernel.starts = True, False
    rig.handover.tick()
    assert rig.log == [("kernel.start", "")]  # still failing: no adopt
    assert rig.kernel.adopted == []
    rig.log.clear()
    rig.kernel.starts = True
    rig.handover.tick()
    # as in an offload: the workers (relaying every call meanwhile) hear first, then the
    # table is made to hold exactly the calls' legs
    assert rig.log == events("kernel.start", "media.sync c1", "changed c1", "kernel.adopt")
    assert [{cid: set(legs) for cid, legs in a.items()} for a in rig.kernel.adopted] == [
        {"c1": set(kernel_legs(confirmed)), "c2": set()}
    ]
    assert rig.media.told == [("c1", _all_keys(confirmed))]
    assert set(_marks(learning).values()) == {False}
    assert rig.handover.in_kernel == {"c1"}


def test_when_nftables_is_back_what_the_table_did_not_take_goes_back_to_the_workers() -> None:
    rig = _rig(enabled=False)
    call = rig.call()
    a_rtp, a_rtcp, b_rtp, b_rtcp = _four(call)
    rig.kernel.due, rig.kernel.refused = True, {a_rtcp}
    rig.kernel.adopt_result = {"c1": {b_rtp, b_rtcp}}
    rig.handover.tick()
    assert rig.log == events(
        "kernel.start",
        "media.sync c1",
        "changed c1",
        "kernel.adopt",
        "changed c1",
        "media.sync c1",
    )
    # first what the kernel accepts, then what the table holds
    _only_b_ends_in_kernel(rig, call, told_first={a_rtp, b_rtp, b_rtcp})


def _tracked(rig: Rig, call: Call) -> tuple[dict[str, Stream], str, str]:
    a_rtp, _ = _keys(call, "a")
    b_rtp, _ = _keys(call, "b")
    streams = {socket_key(s.local.local, s.port): s for s in _streams(call)}
    rig.media.reports.track(a_rtp, streams[a_rtp])
    rig.media.reports.track(b_rtp, streams[b_rtp])
    return streams, a_rtp, b_rtp


def test_refresh_folds_the_kernels_counts_into_the_streams_and_reports_them() -> None:
    rig = _rig()
    call = rig.offloaded()
    streams, a_rtp, b_rtp = _tracked(rig, call)
    stats = streams[a_rtp].stats
    stats.packets, stats.bytes, stats.last_packet = 10, 1600, T0  # the workers' counts so far
    rig.kernel.pending = {a_rtp: Traffic(3, 480, 2.0), "198.51.100.99 4000": Traffic(7, 700, 0)}
    rig.log.clear()
    rig.handover.refresh([call], T0 + 5)
    # the last packet came 2 s before the read, as the kernel's element says
    assert (stats.packets, stats.bytes, stats.last_packet) == (13, 2080, T0 + 3)
    other = streams[b_rtp].stats
    assert (other.packets, other.bytes, other.last_packet) == (0, 0, 0.0)  # no delta for it
    assert rig.traffic == [(streams[a_rtp], 3, 480)]  # the unknown socket is ignored
    assert rig.log == [("kernel.read", "c1")]


def test_refresh_reads_only_calls_in_the_kernel_and_never_moves_last_packet_back() -> None:
    rig = _rig()
    kernelized = rig.offloaded("c1")
    learning = rig.call("c2", confirmed=False)
    streams, a_rtp, _ = _tracked(rig, kernelized)
    streams[a_rtp].stats.last_packet = T0 + 9  # a worker saw a packet later than the kernel
    rig.kernel.pending = {a_rtp: Traffic(1, 160, 6.0)}
    rig.log.clear()
    rig.handover.refresh([learning], T0 + 10)
    assert rig.log == []  # nothing of it in the kernel: no read at all
    rig.handover.refresh([learning, kernelized], T0 + 10)
    assert rig.log == [("kernel.read", "c1")]
    assert streams[a_rtp].stats.last_packet == T0 + 9


def test_refresh_all_reads_every_forward_once() -> None:
    rig = _rig()
    one, two = rig.offloaded("c1"), rig.offloaded("c2")
    first, a1, _ = _tracked(rig, one)
    second, a2, _ = _tracked(rig, two)
    rig.kernel.pending = {a1: Traffic(5, 800, 0.5), a2: Traffic(2, 320, 1.5)}
    rig.log.clear()

    async def two_readers() -> None:  # a scrape and a statistics at once: one read
        await asyncio.gather(rig.handover.refresh_all(), rig.handover.refresh_all())

    before = time.time()
    asyncio.run(two_readers())
    assert rig.log == [("kernel.read_all", "")]
    assert (first[a1].stats.packets, second[a2].stats.packets) == (5, 2)  # folded once
    assert before - 0.5 <= first[a1].stats.last_packet <= time.time() - 0.5
    assert before - 1.5 <= second[a2].stats.last_packet <= time.time() - 1.5


def test_forwards_leave_the_table_only_after_their_counts_were_read() -> None:
    rig = _rig()
    call = rig.offloaded()
    streams, a_rtp, _ = _tracked(rig, call)
    rig.kernel.pending = {a_rtp: Traffic(4, 640, 0.0)}
    rig.log.clear()
    rig.handover.unoffload(call)
    assert rig.log[:2] == [("kernel.read", "c1"), ("kernel.drop", "c1")]
    assert streams[a_rtp].stats.packets == 4
    rig.log.clear()
    rig.handover.forget(call)  # no longer in the kernel: nothing to read or drop
    assert rig.log == []


# -- after a restart --------------------------------------------------------------------------


def test_adopt_marks_exactly_what_the_kernel_holds_and_reports_the_calls_that_changed() -> None:
    rig = _rig()
    kept = rig.call("c1")  # its forwards survived the restart: part of them
    learning = rig.call("c2", confirmed=False)  # nothing in the kernel, nothing marked
    stale = rig.call("c3")  # the journal says kernelized; the table no longer holds it
    for stream in _streams(stale):
        stream.kernelized = True
    a_rtp, a_rtcp = _keys(kept, "a")
    rig.kernel.adopt_result = {"c1": {a_rtp, a_rtcp}, "c3": set()}
    changed = rig.handover.adopt([kept, learning, stale])
    assert changed == [kept, stale]
    assert rig.log == [("kernel.adopt", ""), ("changed", "c1"), ("changed", "c3")]
    assert [{cid: set(legs) for cid, legs in a.items()} for a in rig.kernel.adopted] == [
        {"c1": set(kernel_legs(kept)), "c2": set(), "c3": set(kernel_legs(stale))}
    ]
    b_rtp, b_rtcp = _keys(kept, "b")
    assert _marks(kept) == {a_rtp: True, a_rtcp: True, b_rtp: False, b_rtcp: False}
    assert set(_marks(learning).values()) == set(_marks(stale).values()) == {False}
    assert rig.handover.in_kernel == {"c1"}
    assert rig.media.told == []  # the caller tells the workers (tick, or start-up)


@pytest.mark.parametrize("kernel", ["none", "disabled"])
def test_adopt_without_a_working_kernel_path_puts_every_stream_in_userspace(kernel: str) -> None:
    rig = _rig(kernel=kernel != "none", enabled=False)
    marked, plain = rig.call("c1"), rig.call("c2")
    for stream in _streams(marked):
        stream.kernelized = True
    assert rig.handover.adopt([marked, plain]) == [marked]
    assert rig.log == [("changed", "c1")]  # the table is not asked
    assert set(_marks(marked).values()) == {False}
    assert rig.handover.in_kernel == set()


def test_adopt_with_no_calls_still_clears_the_table() -> None:
    rig = _rig()
    assert rig.handover.adopt([]) == []
    assert rig.kernel.adopted == [{}]  # whatever the table holds is stale


def test_settle_passes_the_time_to_the_kernel_path() -> None:
    rig = _rig()
    rig.handover.settle(12.5)
    assert rig.kernel.settled == [12.5]
    _rig(kernel=False).handover.settle(12.5)  # without a kernel path: nothing to do


def test_a_recorded_call_is_marked_before_its_forwards_go_in_and_unmarked_after() -> None:
    """With the kernel copying recorded packets (``copies``), a recorded call goes to the
    kernel like any other; its forwards are marked for its worker's nflog group before they
    are installed (the first forwarded packet is copied), and unmarked when it stops."""
    recording = {"on": True}
    rig = _rig(record_group=lambda call: 7 if recording["on"] else None, copies=True)
    call = rig.call()
    call.recording = CallRecording(names=("n",), pcap="p")
    rig.handover.offload(call)
    assert rig.log == events("media.sync c1", "kernel.record c1", "kernel.sync c1", "changed c1")
    group, sockets = rig.kernel.recorded["c1"]
    assert group == 7 and sockets == set(_four(call))
    recording["on"] = False
    rig.handover.offload(call)
    assert "c1" not in rig.kernel.recorded
    # without copies the recorded call stays with the workers
    rig = _rig(record_group=lambda call: 7)
    call = rig.call()
    call.recording = CallRecording(names=("n",), pcap="p")
    rig.handover.offload(call)
    assert not rig.handover.in_kernel and rig.kernel.recorded == {}


def test_dtmf_reported_call_marked_for_its_event_packets() -> None:
    """The DTMF event log with the kernel copying event packets (``events_group``): the call
    goes to the kernel, its forwards marked for its worker's group and its telephone-event
    payload type before they go in; a recording takes the mark over (it copies all)."""
    recording = {"on": False}
    rig = _rig(
        record_group=lambda call: 7 if recording["on"] else None,
        copies=True,
        dtmf_events=True,
        events_group=lambda call: (7, 101),
    )
    call = rig.call()
    rig.handover.offload(call)
    assert rig.log == events("media.sync c1", "kernel.record c1", "kernel.sync c1", "changed c1")
    assert rig.kernel.recorded["c1"] == (7, set(_four(call)))
    assert rig.kernel.events == {"c1": 101}
    recording["on"] = True
    call.recording = CallRecording(names=("n",), pcap="p")
    rig.handover.offload(call)
    assert rig.kernel.events == {}  # every packet copied now
    assert rig.kernel.recorded["c1"][0] == 7
