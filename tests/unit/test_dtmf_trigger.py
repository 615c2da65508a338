"""``block DTMF``'s triggers (relayd/transcode/dtmftrigger.py, the engine's blocker, the command)
and in-band blocking in G.722 and Opus (relayd/transcode/dtmfsecurity.py).

The sequences are those of rtpengine's suite ("DTMF trigger", t/auto-daemon-tests-delay-buffer.pl:
``trigger`` ``##``, ``trigger-end`` ``#``) and of the live 10.5.3.5 (2026-12-06, docs/dtmf.md):
digits before the trigger pass, the digits while triggered are blocked, those after the end
pass; relayd decides a digit's block when it starts, so the digit completing either sequence is
blocked whole."""

from __future__ import annotations

from typing import Any

import pytest

from relayd.calls.dtmf_block import trigger_of
from relayd.calls.snapshot import dump_call, load_call
from relayd.transcode import codecs, g711, rtp, tones
from relayd.transcode.codecs import Resampler
from relayd.transcode.dtmfdetect import DtmfDetector
from relayd.transcode.dtmfsecurity import DtmfBlocker, only_security
from relayd.transcode.dtmftrigger import TriggerWatch
from relayd.transcode.plan import CodecPlan, DtmfSecurity, DtmfTrigger, Format, parse
from tests.unit.test_dtmf_block import _ask, _call, _specs

PCMU = Format(0, "PCMU", 8000)
G722 = Format(9, "G722", 8000)
OPUS = Format(96, "opus", 48000, 2)
EVENT = Format(101, "telephone-event", 8000)
SSRC = 0x1234
SILENCE = b"\xff" * 160
DROP = DtmfSecurity("drop")
QUIET = DtmfSecurity("silence")
HASHES = DtmfTrigger("##", "#", DROP)
CODE = {c: i for i, c in enumerate("0123456789*#ABCD")}


def _blocks(watch: TriggerWatch, digits: str, step: int = 1600) -> list[str]:
    """Each digit's block (its mode, "-" for none), the digits ``step`` ticks apart."""
    found = []
    for i, digit in enumerate(digits):
        block = watch.start(CODE[digit], 3000 + step * i, 8000)
        watch.end()
        found.append(block.mode if block is not None else "-")
    return found


# -- the watch ----------------------------------------------------------------------------------


def test_trigger_and_end_sequence() -> None:
    """The suite's "DTMF trigger": 5 passes, ## blocks from the second #, 1 and 2 blocked, the
    end # blocked, 3 passes."""
    watch = TriggerWatch(HASHES, None)
    assert _blocks(watch, "5##12#3") == ["-", "-", "drop", "drop", "drop", "drop", "-"]


def test_the_trigger_matches_again_after_the_end() -> None:
    watch = TriggerWatch(HASHES, None)
    expected = ["-", "drop", "drop", "drop", "-", "-", "drop", "drop", "drop"]
    assert _blocks(watch, "##1#5##2#") == expected


def test_end_by_digit_count() -> None:
    watch = TriggerWatch(DtmfTrigger("*", end_digits=2, on=QUIET), None)
    assert _blocks(watch, "1*2345") == ["-", "silence", "silence", "silence", "-", "-"]


def test_end_by_time_in_the_senders_clock() -> None:
    """300 ms from the digit that completed the trigger: a digit starting 200 ms later is
    blocked, one 400 ms later is not (1600 ticks = 200 ms at 8 kHz)."""
    watch = TriggerWatch(DtmfTrigger("#", end_ms=300, on=DROP), None)
    assert _blocks(watch, "#123") == ["drop", "drop", "-", "-"]


def test_a_digit_under_way_keeps_its_block() -> None:
    watch = TriggerWatch(DtmfTrigger("#", "#", DROP, DtmfSecurity("zero")), DROP)
    assert watch.start(CODE["#"], 0, 8000) == DROP
    watch.end()
    assert watch.start(CODE["#"], 1000, 8000) == DROP  # ends the block, once over
    assert watch.current == DROP
    watch.end()
    assert watch.current == DtmfSecurity("zero")


def test_the_block_before_the_trigger_and_a_trigger_without_a_mode() -> None:
    """10.5 with a trigger but no DTMF-security-trigger blocks nothing once triggered."""
    watch = TriggerWatch(DtmfTrigger("##", "#"), QUIET)
    assert _blocks(watch, "1##2#3") == ["silence", "silence", "-", "-", "-", "-"]


# -- the blocker: events ------------------------------------------------------------------------


def _digit(code: int, seq: int, ts: int) -> list[bytes]:
    """A 40 ms digit: its start, the end three times."""
    packets = [rtp.build(101, True, seq, ts, SSRC, bytes((code, 10, 0, 160)))]
    for i in range(3):
        packets.append(rtp.build(101, False, seq + 1 + i, ts, SSRC, bytes((code, 0x8A, 1, 64))))
    return packets


def _event_stream(digits: str) -> list[tuple[str, bytes]]:
    """(digit or ".", packet): each digit followed by two packets of silence."""
    out: list[tuple[str, bytes]] = []
    seq, ts = 1000, 3000
    for digit in digits:
        out += [(digit, p) for p in _digit(CODE[digit], seq, ts)]
        seq, ts = seq + 4, ts + 320
        for _ in range(2):
            out.append((".", rtp.build(0, False, seq, ts, SSRC, SILENCE)))
            seq, ts = seq + 1, ts + 160
    return out


def test_blocker_drops_the_triggered_events() -> None:
    blocker = DtmfBlocker(None, (PCMU, EVENT), trigger=HASHES)
    passed = [d for d, p in _event_stream("5##12#3") if blocker.filter(p) == p and d != "."]
    assert "".join(dict.fromkeys(passed)) == "5#3"
    assert passed.count("#") == 4  # the first # (its four packets) and nothing else


def test_blocker_replaces_triggered_events_with_silence() -> None:
    blocker = DtmfBlocker(None, (PCMU, EVENT), trigger=DtmfTrigger("#", "#", QUIET))
    out = [(d, blocker.filter(p)) for d, p in _event_stream("1#2#3")]
    made = [o for d, o in out if d in "#2" and o is not None]
    assert made and all(rtp.parse(o).pt == 0 and rtp.parse(o).payload == SILENCE for o in made)
    passed = [d for d, o in out if o is not None and rtp.parse(o).pt == 101]
    assert set(passed) == {"1", "3"}


def test_a_new_ssrc_starts_the_watch_again() -> None:
    blocker = DtmfBlocker(None, (PCMU, EVENT), trigger=DtmfTrigger("#", on=DROP))
    assert blocker.filter(_digit(11, 1, 0)[0]) is None
    other = rtp.build(101, True, 1, 0, SSRC + 1, bytes((1, 10, 0, 160)))
    assert blocker.filter(other) == other


# -- the blocker: tones ---------------------------------------------------------------------------


def _ulaw(pcm: bytes) -> bytes:
    table = g711.encoder_table("PCMU")
    return bytes(table[v & 0xFFFF] for v in memoryview(pcm).cast("h"))


def _tone_stream(digits: str) -> list[bytes]:
    """Each digit as 100 ms of its tone in PCMU, then 100 ms of silence."""
    packets = []
    seq, ts = 1000, 3000
    for digit in digits:
        for i in range(10):
            pcm = tones.tone(CODE[digit], 10, 160 * i, 160, 8000) if i < 5 else b"\0\0" * 160
            packets.append(rtp.build(0, False, seq, ts, SSRC, _ulaw(pcm)))
            seq, ts = seq + 1, ts + 160
    return packets


def _heard(pcm_8k: bytes) -> str:
    detector = DtmfDetector()
    found = [c.event for c in detector.push(pcm_8k) if c.event >= 0]
    found += [c.event for c in detector.push(b"\0\0" * 800) if c.event >= 0]
    return "".join("0123456789*#ABCD"[e] for e in found)


def test_tones_trigger_and_are_blocked() -> None:
    blocker = DtmfBlocker(None, (PCMU, EVENT), trigger=DtmfTrigger("##", "#", QUIET))
    sent = _tone_stream("5##12#3")
    out = [blocker.filter(p) for p in sent]
    assert all(o is not None for o in out)
    audio = b"".join(g711.decode("PCMU", rtp.parse(o).payload) for o in out if o is not None)
    assert _heard(audio) == "5#3"  # the first # and the digits after the end


# -- in-band blocking in G.722 and Opus -----------------------------------------------------------


def _encoded_stream(fmt: Format, code: int) -> tuple[list[bytes], int]:
    """Silence, 200 ms of ``code``'s tone, silence, in ``fmt`` (20 ms packets); its rate."""
    rate = codecs.audio_rate(fmt)
    samples = rate // 50
    encoder = codecs.open_encoder(fmt, rate, samples)
    channels = fmt.channels
    packets = []
    ticks = fmt.rate // 50
    for i in range(25):
        tone = 5 <= i < 15
        mono = tones.tone(code, 6, samples * i, samples, rate) if tone else b"\0\0" * samples
        pcm = tones.tone(code, 6, samples * i, samples, rate, channels) if tone else mono * channels
        packets.append(
            rtp.build(fmt.pt, False, 1000 + i, 3000 + ticks * i, SSRC, encoder.encode(pcm))
        )
    return packets, rate


def _header(data: bytes) -> tuple[int, bool, int, int, int]:
    packet = rtp.parse(data)
    return packet.pt, packet.marker, packet.seq, packet.ts, packet.ssrc


def _decoded_8k(fmt: Format, packets: list[bytes]) -> bytes:
    decoder = codecs.open_decoder(fmt, None, 1)
    resampler = Resampler(decoder.rate, 1, 8000, 1)
    return b"".join(resampler.convert(decoder.decode(rtp.parse(p).payload)) for p in packets)


@pytest.mark.parametrize("fmt", [G722, OPUS], ids=["G722", "opus"])
@pytest.mark.parametrize("mode", ["silence", "tone", "zero"])
def test_tones_blocked_in_g722_and_opus(fmt: Format, mode: str) -> None:
    """A 5 typed as a tone: the detector finds it in what is sent, and no 5 in what the blocker
    lets out (``zero`` puts a 0 there instead); the packets keep their headers."""
    packets, _ = _encoded_stream(fmt, 5)
    assert _heard(_decoded_8k(fmt, packets)) == "5"
    blocker = DtmfBlocker(DtmfSecurity(mode), (fmt, EVENT))
    out = [blocker.filter(p) for p in packets]
    assert all(o is not None for o in out)
    kept = [o for o in out if o is not None]
    assert [_header(o) for o in kept] == [_header(p) for p in packets]
    assert sum(o != p for o, p in zip(kept, packets, strict=True)) >= 5
    heard = _heard(_decoded_8k(fmt, kept))
    assert "5" not in heard
    assert heard == ("0" if mode == "zero" else "")


def test_a_transcoded_g722_direction_is_blocked_before_the_transcoder() -> None:
    from relayd.transcode.transcoder import Transcoder

    packets, _ = _encoded_stream(G722, 7)
    plan = CodecPlan(decode=(G722,), encode=PCMU, security=QUIET)
    engine = Transcoder(plan, new_ssrc=lambda: 99)
    out = [o for p in packets for o in engine.process(p)]
    audio = b"".join(g711.decode("PCMU", rtp.parse(o).payload) for o in out)
    assert len(out) >= 20
    assert _heard(audio) == ""
    plain = Transcoder(CodecPlan(decode=(G722,), encode=PCMU), new_ssrc=lambda: 99)
    unblocked = [o for p in packets for o in plain.process(p)]
    assert _heard(b"".join(g711.decode("PCMU", rtp.parse(o).payload) for o in unblocked)) == "7"


# -- the plan, the command, the journal -----------------------------------------------------------


def test_plan_text_round_trip_and_a_plan_of_triggers_alone() -> None:
    trigger = DtmfTrigger("##", "#", QUIET, DtmfSecurity("zero"), 3000, 4)
    plan = CodecPlan(passthrough=(0,), formats=(PCMU,), trigger=trigger)
    assert parse(plan.to_text()) == plan
    assert '"tr":["##","#",["silence",0,400,10],["zero",0,400,10],3000,4]' in plan.to_text()
    assert only_security(plan)
    assert DtmfBlocker.of(plan) is not None


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({}, None),
        ({"trigger": "##"}, DtmfTrigger("##")),
        (
            {
                "trigger": "**",
                "trigger-end": "#",
                "dtmf-security-trigger": "tone",
                "dtmf-security-trigger-end": "drop",
                "trigger-end-time": "2000",
                "trigger-end-digits": 16,
                "frequency": 600,
            },
            DtmfTrigger(
                "**", "#", DtmfSecurity("tone", 0, 600), DtmfSecurity("drop", 0, 600), 2000, 16
            ),
        ),
        (
            {"trigger": b"a1", "end-trigger": "b", "end-trigger-digits": "x"},
            DtmfTrigger("A1", "B"),
        ),
    ],
)
def test_trigger_values(values: dict[str, Any], expected: DtmfTrigger | None) -> None:
    assert trigger_of(values) == expected


def test_a_trigger_is_planned_journalled_and_unblocked() -> None:
    cmds, call = _call()
    keys = {"trigger": "##", "trigger-end": "#", "DTMF-security-trigger": "silence"}
    assert _ask(cmds, "block DTMF", from_tag="a", **keys) == {"result": "ok"}
    plan = parse(_specs(call)["a"].codecs)
    assert plan is not None and plan.security is None
    assert plan.trigger == DtmfTrigger("##", "#", QUIET)
    assert _specs(call)["b"].codecs == ""
    restored = load_call(dump_call(call))
    assert restored.monologues["a"].dtmf_block_trigger == DtmfTrigger("##", "#", QUIET)
    assert restored.monologues["a"].dtmf_trigger == DtmfTrigger("##", "#", QUIET)
    _ask(cmds, "unblock DTMF", from_tag="a")
    assert _specs(call)["a"].codecs == ""
    _ask(cmds, "block DTMF", **keys)  # the whole call: both parties watched
    assert all(parse(s.codecs).trigger is not None for s in _specs(call).values())  # type: ignore[union-attr]


def test_events_become_audio_in_the_g722_the_party_sends() -> None:
    packets, _ = _encoded_stream(G722, 1)
    blocker = DtmfBlocker(QUIET, (G722, EVENT))
    assert blocker.filter(packets[0]) == packets[0]
    made = [blocker.filter(p) for p in _digit(5, 2000, 8000)]
    first = made[0]
    assert first is not None and made[2:] == [None, None]
    packet = rtp.parse(first)
    assert (packet.pt, packet.seq, packet.ts, len(packet.payload)) == (9, 2000, 8000, 160)
    assert made[1] is not None and len(rtp.parse(made[1]).payload) == 160  # 160 ticks more: 20 ms
