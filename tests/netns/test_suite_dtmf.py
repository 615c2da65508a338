"""rtpengine 10.5's DTMF injection scenarios (``play DTMF``), kept as namespace tests (issue 16).

Written from the suite's scenarios ("#N Lx": scenario N at line x of ``t/auto-daemon-tests.pl``,
mr10.5.3.5) as tests/netns/test_suite_transcoding.py keeps the transcoding ones: the ng flags,
and the packets each side sends and must get, byte for byte, a ``play DTMF`` between them.
The errors ``play DTMF`` answers are the live 10.5's (relayd/calls/dtmf_play.py lists them).
``SUITE_MEDIA_DAEMON=rtpengine`` runs the same scripts against rtpengine 10.5.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from relayd.ng.client import NgClient
from relayd.transcode import g711, tones
from tests.netns.calls import (
    CALLEE_PORT,
    CALLEE_TAG,
    CALLER_PORT,
    CALLER_TAG,
    kernelized,
    ok,
    stream_of,
    wait_for,
)
from tests.netns.test_kernel import KERNEL
from tests.netns.test_suite_media import (
    DAEMON,
    SHA1_80,
    Call,
    Side,
    StartDaemon,
    body,
    check_rtp,
    flags,
    one,
    parties,
    rtp,
    sdes_call,
    srtp,
    start_daemon,
)
from tests.netns.test_suite_media import pytestmark as SUITE_MEDIA
from tests.netns.test_suite_transcoding import (
    OFFLOAD_WAIT,
    SAME,
    SILENCE,
    Rcv,
    Snd,
    Step,
    Who,
    confirmed,
    run,
)
from tests.support.netns import Topology
from tests.support.rtp_peer import Peer

pytestmark = SUITE_MEDIA
__all__ = ["parties", "start_daemon"]  # fixtures, used by name

INJECT = flags(ICE="remove", replace=["origin"], flags=["inject DTMF"])


def _tone(code: int, volume: int, offset: int, count: int, law: str = "PCMU") -> bytes:
    """``count`` samples of a digit's tone from ``offset``, as G.711 codes (10.5's samples)."""
    table = g711.encoder_table(law)
    pcm = memoryview(tones.tone(code, volume, offset, count, 8000)).cast("h")
    return bytes(table[v & 0xFFFF] for v in pcm)


def _attributes(media: str) -> tuple[str, ...]:
    """The suite's attributes: telephone-event's rtpmap where the m= line has 96."""
    rtpmap = ("a=rtpmap:96 telephone-event/8000",) if "96" in media.split()[1:] else ()
    return (*rtpmap, "a=sendrecv")


def set_up(
    ng: NgClient,
    topo: Topology,
    parties: tuple[Peer, Peer],
    name: str,
    offer_media: str,
    answer_media: str,
    offer_flags: dict[str, Any] = INJECT,
    answer_flags: dict[str, Any] = INJECT,
) -> tuple[Call, Side, Side]:
    caller, callee = parties
    call = Call(ng, topo, f"dtmf-{name}")
    to_b = call.offer(
        body(topo.caller.ip4, CALLER_PORT, offer_media, _attributes(offer_media)), **offer_flags
    )
    to_a = call.answer(
        body(topo.callee.ip4, CALLEE_PORT, answer_media, _attributes(answer_media)), **answer_flags
    )
    return call, Side("caller", caller, to_a), Side("callee", callee, to_b)


def play_dtmf(ng: NgClient, call: Call, tag: str, **keys: Any) -> dict[str, Any]:
    return ng.call("play DTMF", call_id=call.call_id, from_tag=tag, **keys)


def events(to: Who, seq: int, ts: int, code: int, volume: int) -> list[Step]:
    """A 100 ms digit as events towards ``to``, one per 20 ms packet the other side sends
    from ``seq`` on: five packets growing by 160 (the first marked), then the end packet
    (duration 960) three times (#163)."""
    sender: Who = "A" if to == "B" else "B"
    ssrc = 0x1234 if sender == "A" else 0x6543
    steps: list[Step] = []
    for i in range(6):
        steps.append(Snd(sender, 0, seq + i, ts + 160 * i, ssrc, SILENCE))
        end = 0x80 if i == 5 else 0
        payload = bytes((code, end | volume)) + (160 * (i + 1)).to_bytes(2, "big")
        pt = 96 | (0x80 if i == 0 else 0)
        steps += [Rcv(to, pt, seq + i + j, ts, SAME, payload) for j in range(3 if end else 1)]
    return steps


def test_163_injected_events_without_transcoding(
    topo: Topology, start_daemon: StartDaemon, parties: tuple[Peer, Peer]
) -> None:
    """#163 L10466: both sides take telephone-event; ``play DTMF`` of "0" towards the callee
    goes out as events in place of the caller's audio (marked, all stamped with the digit's
    start), the end packet three times, the audio after it numbered on by two."""
    with start_daemon().client() as ng:
        call, a, b = set_up(ng, topo, parties, "163", "RTP/AVP 0 8 96", "RTP/AVP 0 8 96")
        run(a, b, (
            Snd("A", 0, 1000, 3000, 0x1234, SILENCE),
            Rcv("B", 0, 1000, 3000, None, SILENCE),
            Snd("A", 0, 1001, 3160, 0x1234, SILENCE),
            Rcv("B", 0, 1001, 3160, SAME, SILENCE),
        ))  # fmt: skip
        ok(play_dtmf(ng, call, CALLER_TAG, code="0", volume=10, duration=100))
        run(a, b, (
            *events("B", 1002, 3320, 0, 10),
            Snd("A", 0, 1008, 4280, 0x1234, SILENCE),
            Rcv("B", 0, 1010, 4280, SAME, SILENCE),
        ))  # fmt: skip
        # the other way: "*" at volume 10 towards the caller
        run(a, b, (
            Snd("B", 0, 4000, 8000, 0x6543, SILENCE),
            Rcv("A", 0, 4000, 8000, None, SILENCE),
        ))  # fmt: skip
        ok(play_dtmf(ng, call, CALLEE_TAG, code="*", volume=10, duration=100))
        run(a, b, events("A", 4001, 8160, 10, 10))


def test_165_injected_tones_and_pause_without_telephone_event(
    topo: Topology, start_daemon: StartDaemon, parties: tuple[Peer, Peer]
) -> None:
    """#165 L10679: no telephone-event on either side: "C" for 120 ms at volume 5 goes out
    as its tone in the caller's PCMU (10.5's very samples), then 110 ms of silence, the
    packet where the pause ends half silence, half the caller's own audio."""
    with start_daemon().client() as ng:
        call, a, b = set_up(ng, topo, parties, "165", "RTP/AVP 0 8", "RTP/AVP 0 8")
        run(a, b, (
            Snd("A", 0, 1000, 3000, 0x1234, SILENCE),
            Rcv("B", 0, 1000, 3000, None, SILENCE),
        ))  # fmt: skip
        ok(play_dtmf(ng, call, CALLER_TAG, code="C", volume=5, duration=120, pause=110))
        script: list[Step] = []
        for i in range(13):
            seq, ts = 1001 + i, 3160 + 160 * i
            if i < 6:
                payload = _tone(14, 5, 160 * i, 160)
            elif i < 11:
                payload = b"\xff" * 160
            elif i == 11:
                payload = b"\xff" * 80 + b"\x00" * 80
            else:
                payload = SILENCE
            script += [Snd("A", 0, seq, ts, 0x1234, SILENCE), Rcv("B", 0, seq, ts, SAME, payload)]
        assert _tone(14, 5, 0, 8) == bytes.fromhex("ff9394bc2e56bf2b")  # the suite's bytes
        run(a, b, script)


def test_164_injected_events_into_a_transcoded_direction(
    topo: Topology, start_daemon: StartDaemon, parties: tuple[Peer, Peer]
) -> None:
    """#164 L10573: the callee's PCMA comes to the caller as PCMU; "#" at volume -10 goes
    out as events of the telephone-event both take, in place of the transcoded audio."""
    offer = {**INJECT, "codec": {"transcode": ["PCMA"]}}
    with start_daemon().client() as ng:
        call, a, b = set_up(
            ng, topo, parties, "164", "RTP/AVP 0 96", "RTP/AVP 8 96", offer_flags=offer
        )
        run(a, b, (
            Snd("B", 8, 4000, 8000, 0x6543, b"\x2a" * 160),
            Rcv("A", 0, 4000, 8000, None, SILENCE),
        ))  # fmt: skip
        ok(play_dtmf(ng, call, CALLEE_TAG, code="#", volume=-10, duration=100))
        script: list[Step] = []
        for i in range(6):
            script.append(Snd("B", 8, 4001 + i, 8160 + 160 * i, 0x6543, b"\x2a" * 160))
            end = 0x80 if i == 5 else 0
            payload = bytes((11, end | 10)) + (160 * (i + 1)).to_bytes(2, "big")
            pt = 96 | (0x80 if i == 0 else 0)
            script += [
                Rcv("A", pt, 4001 + i + j, 8160, SAME, payload) for j in range(3 if end else 1)
            ]
        script += [
            Snd("B", 8, 4007, 9120, 0x6543, b"\x2a" * 160),
            Rcv("A", 0, 4009, 9120, SAME, SILENCE),
        ]
        run(a, b, script)


def test_128_injected_events_on_sdes_passing_through(
    topo: Topology, start_daemon: StartDaemon, parties: tuple[Peer, Peer]
) -> None:
    """#128 L7875 (TT#81600): SDES both sides, the keys passing through; with ``inject
    DTMF`` relayd takes the SRTP apart (a new SSRC), protects it again with the keys the
    parties hold, and an injected digit reaches the callee protected as well."""
    key_a = "QjnnaukLn7iwASAs0YLzPUplJkjOhTZK2dvOwo6c"
    key_b = "cdDuBSOp/rX/7ikmU1Tnuu337gXUUMFAhkARhB/j"
    sdes = {**INJECT, "DTLS": "off"}
    with start_daemon().client() as ng:
        call, to_a, to_b = sdes_call(
            topo,
            ng,
            "128-inject",
            ("RTP/SAVP 0 101", ("a=rtpmap:101 telephone-event/8000", "a=sendrecv",
                                f"a=crypto:1 {SHA1_80} inline:{key_a}")),
            ("RTP/SAVP 0 101", ("a=rtpmap:101 telephone-event/8000", "a=sendrecv",
                                f"a=crypto:1 {SHA1_80} inline:{key_b}")),
            offer_flags=sdes,
            answer_flags=sdes,
        )  # fmt: skip
        a = Side("A", parties[0], to_a, srtp(SHA1_80, key_a, key_b))
        b = Side("B", parties[1], to_b, srtp(SHA1_80, key_b, key_a))
        assert a.srtp is not None and b.srtp is not None

        protect, unprotect = a.srtp.send.protect, b.srtp.receive.unprotect

        def send(seq: int, ts: int) -> None:
            a.peer.send(protect(rtp(0, seq, ts, 0x1234, SILENCE)), a.relay.rtp_to)

        def got() -> bytes:
            packet = one(b.peer, "the callee")
            assert packet.source == b.relay.rtp_to
            return unprotect(packet.data)

        send(1000, 3000)
        ssrc = check_rtp(got(), 0, 1000, 3000, None, SILENCE)
        assert ssrc != 0x1234  # the engine's own SSRC, as 10.5's
        ok(play_dtmf(ng, call, CALLER_TAG, code="9", volume=12, duration=100))
        for i in range(6):
            send(1001 + i, 3160 + 160 * i)
            end = 0x80 if i == 5 else 0
            payload = bytes((9, end | 12)) + (160 * (i + 1)).to_bytes(2, "big")
            for j in range(3 if end else 1):
                pt = 101 | (0x80 if i == 0 else 0)
                check_rtp(got(), pt, 1001 + i + j, 3160, ssrc, payload)


def test_play_dtmf_errors_as_10_5(
    topo: Topology, start_daemon: StartDaemon, parties: tuple[Peer, Peer]
) -> None:
    """What 10.5 answers, in its order: the call, the party, the digit, then the party's
    stream (no packet yet: no SSRC context); ``all`` asks every party, the caller's digit
    queued before the callee's missing stream fails the request."""
    with start_daemon().client() as ng:
        call, a, b = set_up(ng, topo, parties, "errors", "RTP/AVP 0 8 96", "RTP/AVP 0 8 96")

        def error(**keys: Any) -> str:
            reply = ng.call("play DTMF", **keys)
            assert reply["result"] == "error", reply
            return str(reply["error-reason"])

        assert error(call_id="nope", from_tag=CALLER_TAG, code="1") == "Unknown call-ID"
        assert error(call_id=call.call_id, code="1") == "No participant party specified"
        assert (
            error(call_id=call.call_id, from_tag="nobody", code="1")
            == "From-tag given, but no such tag exists"
        )
        assert (
            error(call_id=call.call_id, label="nolabel", code="1")
            == "No monologue matching the given label"
        )
        assert error(call_id=call.call_id, from_tag=CALLER_TAG, code="X") == (
            "Out of range 'code' specified"
        )
        no_ssrc = "No SSRC context present for DTMF injection"
        assert error(call_id=call.call_id, from_tag=CALLER_TAG, code="1") == no_ssrc
        run(a, b, (
            Snd("A", 0, 1000, 3000, 0x1234, SILENCE),
            Rcv("B", 0, 1000, 3000, None, SILENCE),
        ))  # fmt: skip
        assert error(call_id=call.call_id, flags=["all"], code="1") == no_ssrc
        # the caller's digit went in all the same, as 10.5's does
        run(a, b, (
            Snd("A", 0, 1001, 3160, 0x1234, SILENCE),
            Rcv("B", 96 | 0x80, 1001, 3160, SAME, bytes.fromhex("013f00a0")),
        ))  # fmt: skip


def test_without_inject_dtmf_nothing_is_injected_and_the_call_goes_to_the_kernel(
    topo: Topology, start_daemon: StartDaemon, parties: tuple[Peer, Peer]
) -> None:
    """Without ``inject DTMF`` 10.5 answers ``play DTMF`` "ok" and injects nothing: the
    call's media passes untouched (its own SSRC) and, as root, goes to the kernel. With
    the flag the call stays with the workers, kernel path or not, and the digit goes in."""
    if DAEMON != "relayd":
        pytest.skip(f"{DAEMON} runs without its kernel module here")
    plain = flags(ICE="remove", replace=["origin"])
    with start_daemon(*KERNEL).client() as ng:
        call, a, b = set_up(
            ng, topo, parties, "noflag", "RTP/AVP 0 96", "RTP/AVP 0 96", plain, plain
        )
        script: list[Step] = [
            Snd("A", 0, 1000, 3000, 0x1234, SILENCE),
            Rcv("B", 0, 1000, 3000, 0x1234, SILENCE),
            Snd("B", 0, 4000, 8000, 0x6543, SILENCE),
            Rcv("A", 0, 4000, 8000, 0x6543, SILENCE),
        ]
        run(a, b, script)
        ok(play_dtmf(ng, call, CALLER_TAG, code="1"))
        run(a, b, (
            Snd("A", 0, 1001, 3160, 0x1234, SILENCE),
            Rcv("B", 0, 1001, 3160, 0x1234, SILENCE),
        ))  # fmt: skip
        reply = wait_for(
            ng, call.call_id, lambda r: kernelized(r, CALLER_TAG) and kernelized(r, CALLEE_TAG)
        )
        assert kernelized(reply, CALLER_TAG) and kernelized(reply, CALLEE_TAG), reply

        injected, a2, b2 = set_up(ng, topo, parties, "flag", "RTP/AVP 0 96", "RTP/AVP 0 96")
        run(a2, b2, (
            Snd("A", 0, 1000, 3000, 0x1234, SILENCE),
            Rcv("B", 0, 1000, 3000, None, SILENCE),
            Snd("B", 0, 4000, 8000, 0x6543, SILENCE),
            Rcv("A", 0, 4000, 8000, None, SILENCE),
        ))  # fmt: skip
        reply = wait_for(
            ng,
            injected.call_id,
            lambda r: all(confirmed(r, tag) for tag in (CALLER_TAG, CALLEE_TAG)),
        )
        assert all(confirmed(reply, tag) for tag in (CALLER_TAG, CALLEE_TAG)), reply
        time.sleep(OFFLOAD_WAIT)
        reply = ok(ng.call("query", call_id=injected.call_id))
        for tag in (CALLER_TAG, CALLEE_TAG):
            assert not kernelized(reply, tag), stream_of(reply, tag)
        ok(play_dtmf(ng, injected, CALLER_TAG, code="1", volume=6))
        run(a2, b2, (
            Snd("A", 0, 1001, 3160, 0x1234, SILENCE),
            Rcv("B", 96 | 0x80, 1001, 3160, SAME, bytes.fromhex("010600a0")),
        ))  # fmt: skip
