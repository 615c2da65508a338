"""``block DTMF`` with triggers end to end: a real relayd over ng, real UDP sockets.

Modelled on rtpengine's suite scenario "DTMF trigger" (t/auto-daemon-tests-delay-buffer.pl):
a PCMU call with telephone-event 101, the caller blocked with ``trigger`` ``##``,
``trigger-end`` ``#``; the caller sends 5, #, #, 1, 2, #, 3 as RFC 4733 events, each digit
followed by audio, paced at 20 ms with timestamps that follow the pace. The digits before the
trigger pass, those while triggered are dropped (``DTMF-security-trigger`` ``drop``), those
after the end pass. ``SUITE_MEDIA_DAEMON=rtpengine`` runs the same against the live
rtpengine 10.5.3.5, which differs in two packets only (docs/dtmf.md, "Triggers"): it lets the
first event packet of the digit completing the trigger through, and the end packets of the
digit completing ``trigger-end``; relayd blocks both digits whole. The time limit
(``trigger-end-time``) is checked against both daemons as well; the tones, relayd only (10.5
replaces tones only with a delay buffer, with its own detector's timing).
"""

from __future__ import annotations

import time
from typing import Any

from relayd.transcode import g711, rtp, tones
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


HASHES = {"trigger": "##", "trigger-end": "#", "DTMF-security-trigger": "drop", "delay-buffer": 1}


def test_events_between_trigger_and_end_are_dropped(
    topo: Topology, start_daemon: StartDaemon, parties: tuple[Peer, Peer]
) -> None:
    sent = _events("5##12#3")
    got = _run(topo, start_daemon, parties, "trig-events", HASHES, sent)
    blocked = {2, 3, 4, 5}  # the second #, 1, 2, the end #
    expected = [p for i, d, p in sent if d == "." or i not in blocked]
    if DAEMON == "rtpengine":  # the completing digits' first and end packets (module doc)
        second, end = [[p for i, d, p in sent if i == k and d != "."] for k in (2, 5)]
        expected = [
            p for p in [p for _, _, p in sent] if p in expected or p in (second[0], *end[2:])
        ]
    assert [_header(g) for g in got] == [_header(p) for p in expected]
    assert got == expected  # untouched, SSRC and all


def test_the_block_ends_after_trigger_end_time(
    topo: Topology, start_daemon: StartDaemon, parties: tuple[Peer, Peer]
) -> None:
    """``trigger-end-time`` 300: the 1 (140 ms after the trigger) dropped, the 2 (280 ms) too,
    the 3 (420 ms) passes."""
    keys = {"trigger": "#", "trigger-end-time": 300, "DTMF-security-trigger": "drop"}
    sent = _events("5#123")
    got = _run(topo, start_daemon, parties, "trig-time", keys, sent)
    passed = {rtp.parse(g).payload[0] for g in got if rtp.parse(g).pt == 101}
    if DAEMON == "rtpengine":
        passed.discard(CODES.index("#"))  # its first packet passes there
    assert passed == {5, 3}
    assert sum(rtp.parse(g).pt == 0 for g in got) == 10  # all the audio


def test_tones_between_trigger_and_end_are_silenced(
    topo: Topology, start_daemon: StartDaemon, parties: tuple[Peer, Peer]
) -> None:
    """The same sequence as tones in the audio, ``DTMF-security-trigger`` ``silence``: what the
    callee hears holds the 5, the first # and the 3, and nothing of the others."""
    if DAEMON != "relayd":
        return
    keys = {**HASHES, "DTMF-security-trigger": "silence"}
    sent = _tones("5##12#3")
    got = _run(topo, start_daemon, parties, "trig-tones", keys, sent)
    assert [_header(g) for g in got] == [_header(p) for _, _, p in sent]
    from relayd.transcode.dtmfdetect import DtmfDetector

    detector = DtmfDetector()
    audio = b"".join(g711.decode("PCMU", rtp.parse(g).payload) for g in got)
    heard = [c.event for c in detector.push(audio + b"\0\0" * 800) if c.event >= 0]
    assert "".join(CODES[e] for e in heard) == "5#3"
