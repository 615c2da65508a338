"""``block DTMF`` with triggers end to end: a real relayd over ng, real UDP sockets.

Modelled on rtpengine's suite scenario "DTMF trigger" (t/auto-daemon-tests-delay-buffer.pl):
a PCMU call with telephone-event 101, the caller blocked with ``trigger`` ``##``,
``trigger-end`` ``#``; the caller sends 5, #, #, 1, 2, #, 3 as RFC 4733 events, each digit
followed by audio, paced at 20 ms with timestamps that follow the pace. The digits before the
trigger pass, those while triggered are dropped (``DTMF-security-trigger`` ``drop``), those
after the end pass. ``SUITE_MEDIA_DAEMON=rtpengine`` runs the same against the live
rtpengine 10.5.3.5, which differs where a digit switches the block on or off (docs/dtmf.md,
"Triggers"): it lets the first event packet of the digit completing the trigger through, and
the packets after the first of the digit that ends the block; relayd blocks both digits
whole. The limits (``trigger-end-time``, ``trigger-end-digits``) are checked against both
daemons as well; the tones, relayd only (10.5 replaces tones only with a delay buffer, with
its own detector's timing).
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from relayd.transcode import g711, rtp, tones
from relayd.transcode.dtmfdetect import DtmfDetector
from tests.netns.calls import CALLER_TAG, ok
from tests.netns.test_dtmf_block import SILENCE, SSRC, _prime, _set_up
from tests.netns.test_suite_media import DAEMON, StartDaemon, parties, start_daemon
from tests.netns.test_suite_media import pytestmark as SUITE_MEDIA
from tests.support.netns import Topology
from tests.support.rtp_peer import Peer

pytestmark = SUITE_MEDIA
__all__ = ["parties", "start_daemon"]  # fixtures, used by name

CODES = "0123456789*#ABCD"
Sent = list[tuple[int, str, bytes]]  # (index of the digit, its character or ".", the packet)


def _events(digits: str) -> Sent:
    """Each digit: its start, one more packet, the end three times (20 ms apart, 100 ms in
    all), then two packets of audio."""
    out: Sent = []
    seq, ts = 1000, 3000
    for index, digit in enumerate(digits):
        code = CODES.index(digit)
        durations = ((160, 0), (320, 0), (480, 0x80), (480, 0x80), (480, 0x80))
        for i, (duration, end) in enumerate(durations):
            payload = bytes((code, end | 10)) + duration.to_bytes(2, "big")
            out.append((index, digit, rtp.build(101, i == 0, seq, ts, SSRC, payload)))
            seq += 1
        ts += 800
        for _ in range(2):
            out.append((index, ".", rtp.build(0, False, seq, ts, SSRC, SILENCE)))
            seq, ts = seq + 1, ts + 160
    return out


def _ulaw(pcm: bytes) -> bytes:
    table = g711.encoder_table("PCMU")
    return bytes(table[v & 0xFFFF] for v in memoryview(pcm).cast("h"))


def _tones(digits: str) -> Sent:
    """Each digit as 100 ms of its tone, then 100 ms of silence."""
    out: Sent = []
    seq, ts = 1000, 3000
    for index, digit in enumerate(digits):
        for i in range(10):
            on = i < 5
            pcm = tones.tone(CODES.index(digit), 10, 160 * i, 160, 8000) if on else b"\0\0" * 160
            char = digit if on else "."
            out.append((index, char, rtp.build(0, False, seq, ts, SSRC, _ulaw(pcm))))
            seq, ts = seq + 1, ts + 160
    return out


def _run(
    topo: Topology,
    start_daemon: StartDaemon,
    parties: tuple[Peer, Peer],
    name: str,
    keys: dict[str, Any],
    sent: Sent,
) -> list[bytes]:
    caller, callee = parties
    relay = start_daemon()
    with relay.client() as ng:
        call, to_a, _ = _set_up(ng, topo, name)
        ok(ng.call("block DTMF", call_id=call.call_id, from_tag=CALLER_TAG, **keys))
        _prime(caller, callee, to_a)
        for _, _, data in sent:
            caller.send(data, to_a)
            time.sleep(0.02)
        got = callee.receive(len(sent), timeout=2.0) + callee.drain(quiet=0.4)
    return [g.data for g in got]


def _header(data: bytes) -> tuple[int, int, int]:
    packet = rtp.parse(data)
    return packet.pt, packet.seq, packet.ts


def _expected(sent: Sent, blocked: set[int], apart: dict[int, slice]) -> list[bytes]:
    """What the callee gets: the audio, and the event packets of the digits not ``blocked``;
    against rtpengine also the ``apart`` packets of blocked digits (by digit, which of its
    five event packets 10.5 lets through)."""
    expected = []
    for digit in sorted({i for i, _, _ in sent}):
        events = [p for i, d, p in sent if i == digit and d != "."]
        through = set(events[apart[digit]]) if DAEMON == "rtpengine" and digit in apart else set()
        for i, d, p in sent:
            if i == digit and (d == "." or digit not in blocked or p in through):
                expected.append(p)
    return expected


def _check(got: list[bytes], expected: list[bytes]) -> None:
    assert [_header(g) for g in got] == [_header(p) for p in expected]
    assert got == expected  # untouched, SSRC and all


HASHES = {"trigger": "##", "trigger-end": "#", "DTMF-security-trigger": "drop", "delay-buffer": 1}


def test_events_between_trigger_and_end_are_dropped(
    topo: Topology, start_daemon: StartDaemon, parties: tuple[Peer, Peer]
) -> None:
    """5 and the first # pass; the second #, 1, 2 and the end # are dropped; 3 passes. 10.5
    lets the second #'s first packet through, and the end #'s packets after its first."""
    sent = _events("5##12#3")
    got = _run(topo, start_daemon, parties, "trig-events", HASHES, sent)
    _check(got, _expected(sent, {2, 3, 4, 5}, {2: slice(0, 1), 5: slice(1, None)}))


def test_the_block_ends_after_trigger_end_time(
    topo: Topology, start_daemon: StartDaemon, parties: tuple[Peer, Peer]
) -> None:
    """``trigger-end-time`` 300: the 1 (140 ms after the trigger) is dropped, the 2 (280 ms)
    too, being under way at 300 ms; the 3 (420 ms) passes. 10.5 ends the block at 300 ms
    within the 2 (its first packet dropped, the rest through) and lets the trigger's first
    packet through."""
    keys = {"trigger": "#", "trigger-end-time": 300, "DTMF-security-trigger": "drop"}
    sent = _events("5#123")
    got = _run(topo, start_daemon, parties, "trig-time", keys, sent)
    _check(got, _expected(sent, {1, 2, 3}, {1: slice(0, 1), 3: slice(1, None)}))


def test_the_block_ends_after_trigger_end_digits(
    topo: Topology, start_daemon: StartDaemon, parties: tuple[Peer, Peer]
) -> None:
    """``trigger-end-digits`` 2: the two digits after the trigger are dropped, the rest pass.
    10.5 ends the block after the second digit's first packet (and without a
    ``trigger-end`` beside it, never: docs/dtmf.md)."""
    keys = {
        "trigger": "##",
        "trigger-end": "*",
        "trigger-end-digits": 2,
        "DTMF-security-trigger": "drop",
    }
    sent = _events("##1234")
    got = _run(topo, start_daemon, parties, "trig-digits", keys, sent)
    _check(got, _expected(sent, {1, 2, 3}, {1: slice(0, 1), 3: slice(1, None)}))


def test_tones_between_trigger_and_end_are_silenced(
    topo: Topology, start_daemon: StartDaemon, parties: tuple[Peer, Peer]
) -> None:
    """The same sequence as tones in the audio, ``DTMF-security-trigger`` ``silence``: what the
    callee hears holds the 5, the first # and the 3, and nothing of the others."""
    if DAEMON != "relayd":
        pytest.skip("10.5 replaces tones only with a delay buffer, on its detector's timing")
    keys = {**HASHES, "DTMF-security-trigger": "silence"}
    sent = _tones("5##12#3")
    got = _run(topo, start_daemon, parties, "trig-tones", keys, sent)
    assert [_header(g) for g in got] == [_header(p) for _, _, p in sent]
    detector = DtmfDetector()
    audio = b"".join(g711.decode("PCMU", rtp.parse(g).payload) for g in got)
    heard = [c.event for c in detector.push(audio + b"\0\0" * 800) if c.event >= 0]
    assert "".join(CODES[e] for e in heard) == "5#3"
