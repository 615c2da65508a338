"""rtpengine 10.5's transcoding scenarios, their media, kept as namespace tests (issue 15).

CI cannot run rtpengine's suite (no network to fetch it), so the packet checks of its
transcoding scenarios live here, written from the scenarios as the suite states them
("#N Lx": scenario N at line x of ``t/auto-daemon-tests.pl``, mr10.5.3.5): the ng flags,
the SDP relayd must write, and a script of packets sent (``Snd``), packets that must come
(``Rcv``: payload type, sequence number, timestamp, SSRC and payload, byte for byte) and
pauses, in the suite's order. An SSRC of ``None`` takes whatever comes (the suite's ``-1``,
a transcoder's own SSRC) and ``SAME`` then wants that one again. The ng conversations
themselves are checked in process by tests/unit/test_suite_corpus.py.

The parties and the daemon are those of :mod:`tests.netns.test_suite_media`;
``SUITE_MEDIA_DAEMON=rtpengine`` runs the same scripts against rtpengine 10.5.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import pytest

from relayd.ng.client import NgClient
from tests.netns.calls import (
    CALLEE_PORT,
    CALLEE_TAG,
    CALLER_PORT,
    CALLER_TAG,
    kernelized,
    ok,
    stream_of,
    wait_for,
    worker_pids,
)
from tests.netns.test_kernel import KERNEL
from tests.netns.test_suite_media import (
    DAEMON,
    Call,
    Side,
    StartDaemon,
    body,
    check_rtp,
    flags,
    formats,
    has_lines,
    one,
    parties,
    rtp,
    start_daemon,
)
from tests.netns.test_suite_media import pytestmark as SUITE_MEDIA
from tests.support.netns import Topology
from tests.support.relayd import RelaydProcess
from tests.support.rtp_peer import Peer

pytestmark = SUITE_MEDIA
__all__ = ["parties", "start_daemon"]  # fixtures, used by name

Who = Literal["A", "B"]
SAME: Literal["same"] = "same"
# a confirmed call goes to the kernel after the workers' next report (once a second)
OFFLOAD_WAIT = 2.5


@dataclass(frozen=True, slots=True)
class Snd:
    """``side`` sends this RTP packet to the relay port it was given."""

    side: Who
    pt: int
    seq: int
    ts: int
    ssrc: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Rcv:
    """``side`` must get this RTP packet next, from the relay port it sends to."""

    side: Who
    pt: int
    seq: int
    ts: int
    ssrc: int | Literal["same"] | None
    payload: bytes


@dataclass(frozen=True, slots=True)
class Pause:
    seconds: float


Step = Snd | Rcv | Pause


@dataclass(frozen=True)
class Scenario:
    offer_media: str
    answer_media: str
    offer_flags: dict[str, Any]
    answer_flags: dict[str, Any]
    offered_formats: tuple[str, ...]  # the m= line's payload types relayd offers the callee
    answered_formats: tuple[str, ...]  # and answers the caller
    offered: tuple[str, ...]  # lines the offer to the callee must have
    answered: tuple[str, ...]  # lines the answer to the caller must have
    script: tuple[Step, ...]


SILENCE = b"\x00" * 160

SCENARIOS = {
    # #198 L12724 one codec with one for transcoding: the caller has PCMU only, PCMA is
    # added for the callee; the callee's PCMA comes to the caller as PCMU (")" is μ-law for
    # A-law's 0x00) under a new SSRC, its PCMU too, sequence numbers continued across the
    # callee's jump from 2011 to 62011
    "198-one-codec-transcoded": Scenario(
        "RTP/AVP 0",
        "RTP/AVP 0 8",
        flags(ICE="remove", replace=["origin"], codec={"transcode": ["PCMA"]}),
        flags(replace=["origin"]),
        ("0", "8"),
        ("0",),
        ("a=rtpmap:0 PCMU/8000", "a=rtpmap:8 PCMA/8000"),
        ("a=rtpmap:0 PCMU/8000",),
        (
            Snd("A", 0, 1000, 3000, 0x1234, SILENCE),
            Rcv("B", 0, 1000, 3000, 0x1234, SILENCE),
            Snd("A", 0, 1000, 3000, 0x1234, SILENCE),
            Rcv("B", 0, 1000, 3000, 0x1234, SILENCE),
            Snd("A", 0, 1001, 3160, 0x1234, SILENCE),
            Rcv("B", 0, 1001, 3160, 0x1234, SILENCE),
            Snd("A", 0, 1010, 4600, 0x1234, SILENCE),
            Rcv("B", 0, 1010, 4600, 0x1234, SILENCE),
            Snd("B", 0, 2000, 4000, 0x5678, SILENCE),
            Rcv("A", 0, 2000, 4000, None, SILENCE),
            Snd("B", 0, 2000, 4000, 0x5678, SILENCE),
            Rcv("A", 0, 2000, 4000, SAME, SILENCE),
            Snd("B", 0, 2001, 4160, 0x5678, SILENCE),
            Rcv("A", 0, 2001, 4160, SAME, SILENCE),
            Snd("B", 0, 2010, 5600, 0x5678, SILENCE),
            Rcv("A", 0, 2010, 5600, SAME, SILENCE),
            Snd("B", 8, 2011, 4000 + 160 * 11, 0x5678, SILENCE),
            Rcv("A", 0, 2011, 4000 + 160 * 11, SAME, b")" * 160),
            Snd("B", 8, 62011, 4000 + 160 * 12, 0x5678, SILENCE),
            Rcv("A", 0, 2012, 4000 + 160 * 12, SAME, b")" * 160),
            Snd("B", 8, 62012, 4000 + 160 * 13, 0x5678, SILENCE),
            Rcv("A", 0, 2013, 4000 + 160 * 13, SAME, b")" * 160),
            Snd("B", 0, 62013, 4000 + 160 * 14, 0x5678, SILENCE),
            Rcv("A", 0, 2014, 4000 + 160 * 14, SAME, SILENCE),
        ),
    ),
    # #209 L13418 default ptime in, ptime=30 out: the caller's 20 ms packets go to the
    # callee as 30 ms ones (a 60 ms one as two, across a sequence and timestamp reset);
    # the callee's 60 and 10 ms packets come to the caller as 20 ms ones, a reordered
    # pair put back in order
    "209-ptime-30-out": Scenario(
        "RTP/AVP 0",
        "RTP/AVP 0",
        flags(ICE="remove", replace=["origin"], ptime=30),
        flags(ICE="remove", replace=["origin"]),
        ("0",),
        ("0",),
        ("a=rtpmap:0 PCMU/8000", "a=ptime:30"),
        ("a=rtpmap:0 PCMU/8000",),
        (
            Snd("A", 0, 1000, 3000, 0x1234, SILENCE),
            Pause(0.02),
            Snd("A", 0, 1001, 3160, 0x1234, SILENCE),
            Rcv("B", 0, 1000, 3000, None, b"\x00" * 240),
            Snd("A", 0, 1002, 3320, 0x1234, SILENCE),
            Rcv("B", 0, 1001, 3240, SAME, b"\x00" * 240),
            Snd("A", 0, 1003, 3480, 0x1234, SILENCE),
            Pause(0.001),
            Snd("A", 0, 1004, 3640, 0x1234, SILENCE),
            Rcv("B", 0, 1002, 3480, SAME, b"\x00" * 240),
            Snd("A", 0, 8000, 500000, 0x1234, b"\x00" * 480),
            Rcv("B", 0, 1003, 3720, SAME, b"\x00" * 240),
            Rcv("B", 0, 1004, 3960, SAME, b"\x00" * 240),
            Snd("B", 0, 4000, 5000, 0x4567, b"\x88" * 480),
            Rcv("A", 0, 4000, 5000, None, b"\x88" * 160),
            Rcv("A", 0, 4001, 5160, SAME, b"\x88" * 160),
            Rcv("A", 0, 4002, 5320, SAME, b"\x88" * 160),
            Snd("B", 0, 4001, 5480, 0x4567, b"\x88" * 480),
            Rcv("A", 0, 4003, 5480, SAME, b"\x88" * 160),
            Rcv("A", 0, 4004, 5640, SAME, b"\x88" * 160),
            Rcv("A", 0, 4005, 5800, SAME, b"\x88" * 160),
            Snd("B", 0, 4002, 5960, 0x4567, b"\x88" * 80),
            Pause(0.001),
            Snd("B", 0, 4003, 6040, 0x4567, b"\x88" * 80),
            Rcv("A", 0, 4006, 5960, SAME, b"\x88" * 160),
            Snd("B", 0, 4005, 6200, 0x4567, b"\x88" * 80),
            Pause(0.01),
            Snd("B", 0, 4004, 6120, 0x4567, b"\x88" * 80),
            Rcv("A", 0, 4007, 6120, SAME, b"\x88" * 160),
        ),
    ),
}


def confirmed(reply: dict[str, Any], tag: str) -> bool:
    return "confirmed" in stream_of(reply, tag)["flags"]


def run(a: Side, b: Side, script: Sequence[Step]) -> None:
    """Play ``script``: every packet sent and every packet that must come, in order."""
    sides = {"A": a, "B": b}
    seen: dict[str, int] = {}  # the SSRC each side got first under None
    for step in script:
        if isinstance(step, Pause):
            time.sleep(step.seconds)
        elif isinstance(step, Snd):
            sender = sides[step.side]
            packet = rtp(step.pt, step.seq, step.ts, step.ssrc, step.payload)
            sender.peer.send(packet, sender.relay.rtp_to)
        else:
            receiver = sides[step.side]
            got = one(receiver.peer, f"{receiver.name} (seq {step.seq})")
            assert got.source == receiver.relay.rtp_to, f"seq {step.seq} came from {got.source}"
            ssrc = seen.get(step.side) if isinstance(step.ssrc, str) else step.ssrc
            got_ssrc = check_rtp(got.data, step.pt, step.seq, step.ts, ssrc, step.payload)
            seen.setdefault(step.side, got_ssrc)


def played(
    ng: NgClient, topo: Topology, parties: tuple[Peer, Peer], call_id: str, scenario: Scenario
) -> tuple[Call, Side, Side]:
    """The scenario's offer and answer, each checked against the SDP the suite wants, then
    its script played; the call and its two sides."""
    caller, callee = parties
    call = Call(ng, topo, call_id)
    to_b = call.offer(
        body(topo.caller.ip4, CALLER_PORT, scenario.offer_media), **scenario.offer_flags
    )
    assert tuple(formats(call.offered)) == scenario.offered_formats, call.offered
    has_lines(call.offered, *scenario.offered)
    to_a = call.answer(
        body(topo.callee.ip4, CALLEE_PORT, scenario.answer_media), **scenario.answer_flags
    )
    assert tuple(formats(call.answered)) == scenario.answered_formats, call.answered
    has_lines(call.answered, *scenario.answered)
    a, b = Side("caller", caller, to_a), Side("callee", callee, to_b)
    run(a, b, scenario.script)
    return call, a, b


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_transcoding_scenario(
    topo: Topology, start_daemon: StartDaemon, parties: tuple[Peer, Peer], name: str
) -> None:
    scenario = SCENARIOS[name]
    caller, callee = parties
    relay = start_daemon()
    with relay.client() as ng:
        played(ng, topo, parties, f"suite-{name}", scenario)
        assert caller.drain(quiet=0.2) == [] and callee.drain(quiet=0.0) == []


def test_198_a_transcoded_call_stays_with_the_workers_on_the_kernel_path(
    topo: Topology, start_daemon: StartDaemon, parties: tuple[Peer, Peer]
) -> None:
    """#198 again with the kernel path on (as root): the caller's PCMU needs no codec work,
    but its direction cannot go to nftables alone (the conntrack entry of its NAT would
    carry the callee's PCMA back untranscoded), so the whole call stays with the workers,
    confirmed both ways and never kernelized, and the callee's PCMA still arrives as PCMU
    once the offload timer has had its turn."""
    if DAEMON != "relayd":
        pytest.skip(f"{DAEMON} runs without its kernel module here")
    scenario = SCENARIOS["198-one-codec-transcoded"]
    relay = start_daemon(*KERNEL)
    with relay.client() as ng:
        call, a, b = played(ng, topo, parties, "suite-198-kernel", scenario)
        reply = wait_for(
            ng, call.call_id, lambda r: all(confirmed(r, tag) for tag in (CALLER_TAG, CALLEE_TAG))
        )
        time.sleep(OFFLOAD_WAIT)
        reply = ok(ng.call("query", call_id=call.call_id))
        for tag in (CALLER_TAG, CALLEE_TAG):
            assert not kernelized(reply, tag), stream_of(reply, tag)
        run(
            a,
            b,
            (
                Snd("A", 0, 1100, 19000, 0x1234, SILENCE),
                Rcv("B", 0, 1100, 19000, 0x1234, SILENCE),
                Snd("B", 8, 62014, 4000 + 160 * 15, 0x5678, SILENCE),
                Snd("B", 8, 62015, 4000 + 160 * 16, 0x5678, SILENCE),
                Rcv("A", 0, 2015, 4000 + 160 * 15, None, b")" * 160),
                Rcv("A", 0, 2016, 4000 + 160 * 16, SAME, b")" * 160),
            ),
        )


def test_a_transcoded_call_survives_its_worker_being_killed(
    topo: Topology, start_daemon: StartDaemon, parties: tuple[Peer, Peer]
) -> None:
    """The #198 call; the workers killed with SIGKILL between two of the callee's PCMA
    packets: relayd binds the ports again, the replacement workers get the forward with its
    codec plan, and the callee's PCMA keeps arriving at the caller as PCMU, from the same
    relay port (a new transcoder: a new SSRC is allowed)."""
    if DAEMON != "relayd":
        pytest.skip("relayd's workers")
    scenario = SCENARIOS["198-one-codec-transcoded"]
    caller = parties[0]
    relay = start_daemon()
    with relay.client() as ng:
        _, a, b = played(ng, topo, parties, "suite-198-worker-killed", scenario)
        assert isinstance(relay, RelaydProcess)
        killed = worker_pids(relay)
        for pid in killed:
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10.0
        while len(set(worker_pids(relay)) - set(killed)) < len(killed):
            assert time.monotonic() < deadline, "no replacement workers"
            time.sleep(0.05)
        # the replacement takes the sockets and the plan: keep sending until PCMU comes
        seq, ts = 3000, 90000
        while True:
            assert time.monotonic() < deadline, "no transcoded packet after the restart"
            b.peer.send(rtp(8, seq, ts, 0x5678, SILENCE), b.relay.rtp_to)
            got = caller.receive(1, timeout=0.1)
            if got:
                break
            seq, ts = seq + 1, ts + 160
        assert got[0].source == a.relay.rtp_to
        data = got[0].data
        assert data[1] & 0x7F == 0 and data[12:] == b")" * 160, data[:16]
