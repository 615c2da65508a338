"""``block DTMF`` / ``unblock DTMF`` end to end: a real relayd over ng, real UDP sockets.

A PCMU call with telephone-event 101 between the caller and callee namespaces; the caller's
DTMF is blocked in each ``DTMF-security`` mode, then unblocked. What the callee gets is what
the live rtpengine 10.5.3.5 sent for the same packets (2026-12-06, with ``delay-buffer`` set,
the setting under which 10.5 applies its modes: docs/dtmf.md, "Blocking DTMF"), except where
relayd's detector is quicker (in-band tones: replaced from the detector's first block that
hits the digit, 13 ms into the tone, 10.5 from the tone's third packet) and where 10.5
renumbers (events turned into audio: relayd keeps the sender's numbers).
``SUITE_MEDIA_DAEMON=rtpengine`` runs the event scenarios that agree byte for byte (``drop``,
``zero``, ``DTMF``) against rtpengine.

On the kernel path (as root, ``--table 0``) a blocked party's media leaves nftables for the
workers and comes back once unblocked (docs/dtmf.md: why not an nft rule).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from relayd.transcode import g711, rtp, tones
from relayd.transcode.dtmfsecurity import sine
from tests.netns.calls import CALLEE_TAG, CALLER_TAG, kernelized, ok, wait_for
from tests.netns.test_kernel import KERNEL, both_kernelized, offloaded
from tests.netns.test_suite_media import (
    DAEMON,
    Call,
    StartDaemon,
    body,
    parties,
    start_daemon,
)
from tests.netns.test_suite_media import pytestmark as SUITE_MEDIA
from tests.support.netns import Topology
from tests.support.rtp_peer import Peer

pytestmark = SUITE_MEDIA
__all__ = ["parties", "start_daemon"]  # fixtures, used by name

SSRC = 0x1234
SILENCE = b"\xff" * 160
EVENTS = ("a=rtpmap:101 telephone-event/8000", "a=sendrecv")
FLAGS = {"ICE": "remove"}
ANY = b""  # a payload the test checks otherwise


def _ulaw(pcm: bytes) -> bytes:
    table = g711.encoder_table("PCMU")
    return bytes(table[v & 0xFFFF] for v in memoryview(pcm).cast("h"))


TONE_400 = _ulaw(sine(400, 10, 0, 160, 8000))  # 10.5: ffb5a79f9c9b9c9fa7b5ff35…, period 20


@dataclass(frozen=True, slots=True)
class Packet:
    pt: int
    seq: int
    ts: int
    payload: bytes
    marker: bool = False

    def data(self, ssrc: int = SSRC) -> bytes:
        return rtp.build(self.pt, self.marker, self.seq, self.ts, ssrc, self.payload)


def _events(code: int = 5) -> list[Packet]:
    """Digit ``code`` from seq 1001 ts 3160: durations 160 to 640, the end (800) three times."""
    found = []
    durations = ((160, 0), (320, 0), (480, 0), (640, 0), (800, 0x80), (800, 0x80), (800, 0x80))
    for i, (duration, end) in enumerate(durations):
        payload = bytes((code, end | 10)) + duration.to_bytes(2, "big")
        found.append(Packet(101, 1001 + i, 3160, payload, i == 0))
    return found


EVENT_STREAM = [Packet(0, 1000, 3000, SILENCE), *_events(), Packet(0, 1008, 3960, SILENCE)]


def _event_expected(mode: str) -> list[Packet]:
    head, tail = [EVENT_STREAM[0]], [EVENT_STREAM[-1]]
    if mode == "drop":
        return head + tail
    if mode in ("zero", "DTMF"):
        return head + _events(0 if mode == "zero" else 7) + tail
    replaced = []
    for i in range(5):  # each event packet that adds duration: 160 samples of audio
        ts = 3160 + 160 * i
        payload = {"silence": SILENCE, "tone": TONE_400}.get(mode, ANY)
        replaced.append(Packet(0, 1001 + i, ts, payload))
    return head + replaced + tail


def _digit_5(i: int) -> bytes:
    return _ulaw(tones.tone(5, 10, 160 * i, 160, 8000))


TONE_STREAM = [
    *(Packet(0, 1000 + i, 3000 + 160 * i, SILENCE) for i in range(3)),
    *(Packet(0, 1003 + i, 3480 + 160 * i, _digit_5(i)) for i in range(6)),
    *(Packet(0, 1009 + i, 4440 + 160 * i, SILENCE) for i in range(4)),
]


def _tone_expected(mode: str) -> list[Packet]:
    """From the detector's first block that hits the digit (sample 30 of the tone's first
    packet) to the packet in which it confirms its end (two after the tone), the payload
    replaced."""
    if mode == "drop":
        return TONE_STREAM
    found = []
    for index, packet in enumerate(TONE_STREAM):
        if 3 <= index <= 10:
            keep = 30 if index == 3 else 0
            ts, count = packet.ts + keep, 160 - keep
            made = {
                "silence": SILENCE[keep:],
                "tone": _ulaw(sine(400, 10, ts, count, 8000)),
                "zero": _ulaw(tones.tone(0, 10, ts, count, 8000)),
                "DTMF": _ulaw(tones.tone(7, 10, ts, count, 8000)),
            }.get(mode)
            payload = packet.payload[:keep] + made if made is not None else ANY
            packet = Packet(0, packet.seq, packet.ts, payload)
        found.append(packet)
    return found


def _set_up(ng: Any, topo: Topology, call_id: str) -> tuple[Call, tuple[str, int], tuple[str, int]]:
    call = Call(ng, topo, call_id)
    to_b = call.offer(body(topo.caller.ip4, 6000, "RTP/AVP 0 101", EVENTS), **FLAGS)
    to_a = call.answer(body(topo.callee.ip4, 7000, "RTP/AVP 0 101", EVENTS), **FLAGS)
    return call, to_a.rtp_to, to_b.rtp_to


def _prime(caller: Peer, callee: Peer, to_a: tuple[str, int]) -> None:
    """Audio of another SSRC until the callee hears it: the forward is in place."""
    deadline = time.monotonic() + 5.0
    seq = 1
    while not callee.receive(1, timeout=0.1):
        assert time.monotonic() < deadline, "no audio through the relay"
        caller.send(rtp.build(0, False, seq, 160 * seq, 0x5555, SILENCE), to_a)
        seq += 1
    callee.drain(quiet=0.2)


def _play(caller: Peer, callee: Peer, to_a: tuple[str, int], sent: Sequence[Packet]) -> None:
    for packet in sent:
        caller.send(packet.data(), to_a)
        time.sleep(0.005)


def _check(callee: Peer, expected: Sequence[Packet]) -> None:
    got = callee.receive(len(expected), timeout=3.0)
    got += callee.drain(quiet=0.3)
    assert len(got) == len(expected), [g.data[:12].hex() for g in got]
    for received, want in zip(got, expected, strict=True):
        packet = rtp.parse(received.data)
        header = (packet.pt, packet.marker, packet.seq, packet.ts, packet.ssrc)
        assert header == (want.pt, want.marker, want.seq, want.ts, SSRC), (header, want)
        if want.payload == ANY:  # random digits: a tone, not the silence or the digit sent
            assert len(packet.payload) == 160 and packet.payload != SILENCE
        else:
            assert packet.payload == want.payload, (want.seq, packet.payload[:16].hex())


MODES = ["drop", "silence", "tone", "random", "zero", "DTMF"]


def _block(ng: Any, call_id: str, mode: str) -> None:
    keys: dict[str, Any] = {"DTMF-security": mode, "delay-buffer": 1}  # 10.5 needs the latter
    if mode == "DTMF":
        keys["digit"] = "7"
    ok(ng.call("block DTMF", call_id=call_id, from_tag=CALLER_TAG, **keys))


@pytest.mark.parametrize("mode", MODES)
def test_events_blocked_in_each_mode_then_unblocked(
    topo: Topology, start_daemon: StartDaemon, parties: tuple[Peer, Peer], mode: str
) -> None:
    if DAEMON != "relayd" and mode not in ("drop", "zero", "DTMF"):
        pytest.skip("10.5 renumbers the audio it makes of events (and hangs on random)")
    caller, callee = parties
    relay = start_daemon()
    with relay.client() as ng:
        call, to_a, _ = _set_up(ng, topo, f"blk-events-{mode}")
        _block(ng, call.call_id, mode)
        _prime(caller, callee, to_a)
        _play(caller, callee, to_a, EVENT_STREAM)
        _check(callee, _event_expected(mode))
        ok(ng.call("unblock DTMF", call_id=call.call_id, from_tag=CALLER_TAG))
        again = [Packet(p.pt, p.seq + 100, p.ts + 16000, p.payload, p.marker) for p in EVENT_STREAM]
        _play(caller, callee, to_a, again)
        _check(callee, again)


@pytest.mark.parametrize("mode", MODES)
def test_in_band_tones_blocked_in_each_mode(
    topo: Topology, start_daemon: StartDaemon, parties: tuple[Peer, Peer], mode: str
) -> None:
    if DAEMON != "relayd":
        pytest.skip("10.5's detector confirms a packet later")
    caller, callee = parties
    relay = start_daemon()
    with relay.client() as ng:
        call, to_a, _ = _set_up(ng, topo, f"blk-tones-{mode}")
        _block(ng, call.call_id, mode)
        _prime(caller, callee, to_a)
        _play(caller, callee, to_a, TONE_STREAM)
        _check(callee, _tone_expected(mode))


def test_a_blocked_party_leaves_the_kernel_and_comes_back(
    topo: Topology, start_daemon: StartDaemon, parties: tuple[Peer, Peer]
) -> None:
    """On the kernel path the confirmed call is in nftables; blocked, it is with the workers
    (events dropped); unblocked, back in the kernel (events through)."""
    if DAEMON != "relayd":
        pytest.skip(f"{DAEMON} runs without its kernel module here")
    caller, callee = parties
    relay = start_daemon(*KERNEL)
    with relay.client() as ng:
        call, to_a, to_b = _set_up(ng, topo, "blk-kernel")
        _prime(caller, callee, to_a)
        while not caller.receive(1, timeout=0.1):
            callee.send(rtp.build(0, False, 1, 160, 0x6666, SILENCE), to_b)
        offloaded(ng, call.call_id)
        _block(ng, call.call_id, "drop")
        reply = ok(ng.call("query", call_id=call.call_id))
        assert not kernelized(reply, CALLER_TAG) and not kernelized(reply, CALLEE_TAG)
        _play(caller, callee, to_a, EVENT_STREAM)
        _check(callee, _event_expected("drop"))
        ok(ng.call("unblock DTMF", call_id=call.call_id, from_tag=CALLER_TAG))
        reply = wait_for(ng, call.call_id, both_kernelized, timeout=4.0)
        assert both_kernelized(reply), reply
        again = [Packet(p.pt, p.seq + 100, p.ts + 16000, p.payload, p.marker) for p in EVENT_STREAM]
        _play(caller, callee, to_a, again)
        _check(callee, again)
