"""DTMF injection in the media engine (relayd/transcode/inject.py, transcoder.py): the packets
rtpengine 10.5 sends for ``play DTMF``, from the suite's "DTMF injection" scenarios (#163–#168)
and what the live 10.5 sent for the cases the suite leaves out (a 150 ms digit)."""

from __future__ import annotations

import struct

import pytest

from relayd.transcode import g711, rtp, tones
from relayd.transcode.inject import Digit, Injector
from relayd.transcode.plan import CodecPlan, Format
from relayd.transcode.transcoder import Transcoder

PCMU = Format(0, "PCMU", 8000)
PCMA = Format(8, "PCMA", 8000)
TE = Format(96, "telephone-event", 8000)


def _engine(plan: CodecPlan) -> Transcoder:
    return Transcoder(plan, new_ssrc=lambda: 0x5555)


def _send(
    engine: Transcoder, seq: int, ts: int, payload: bytes = b"\x00" * 160, pt: int = 0
) -> list[rtp.RtpPacket]:
    return [rtp.parse(p) for p in engine.process(rtp.build(pt, False, seq, ts, 0x1234, payload))]


def _pcmu_tone(code: int, volume: int, offset: int, count: int) -> bytes:
    table = g711.encoder_table("PCMU")
    pcm = tones.tone(code, volume, offset, count, 8000)
    return bytes(table[v & 0xFFFF] for v in struct.unpack(f"={count}h", pcm))


def test_injector_events_then_end_triple_then_audio_in_the_pause() -> None:
    injector = Injector()
    injector.add(Digit(0, -10, 100, 100))
    spans = [injector.span(3320 + 160 * i, 160, 8000, True) for i in range(12)]
    assert [s.duration if s else None for s in spans[:6]] == [160, 320, 480, 640, 800, 960]
    first, second, last = spans[0], spans[1], spans[5]
    assert first is not None and second is not None and last is not None
    assert first.first and not second.first and last.end and not first.end
    assert spans[6:10] == [None] * 4  # the rest of the pause is audio
    assert spans[10] is None and injector.idle  # the pause over at 4920: nothing queued


def test_injector_next_digit_starts_after_the_pause() -> None:
    injector = Injector()
    injector.add(Digit(0, -10, 100, 100))
    injector.add(Digit(1, -6, 100, 100))
    starts = []
    for i in range(20):
        span = injector.span(3320 + 160 * i, 160, 8000, True)
        if span is not None and span.first:
            starts.append(3320 + 160 * i)
    assert starts == [3320, 4920]  # #168: the second digit at 4920


def test_passthrough_events_as_suite_163() -> None:
    plan = CodecPlan(passthrough=(0, 8, 96), formats=(PCMU, PCMA, TE), inject=True)
    engine = _engine(plan)
    assert not engine.inject(Digit(0, -10, 100, 100))  # no packet yet: no SSRC context
    first = _send(engine, 1000, 3000)
    assert [(p.pt, p.seq, p.ts, p.ssrc) for p in first] == [(0, 1000, 3000, 0x5555)]
    _send(engine, 1001, 3160)
    assert engine.inject(Digit(0, -10, 100, 100))
    out = []
    for i in range(7):
        out += _send(engine, 1002 + i, 3320 + 160 * i)
    assert [(p.pt, p.marker, p.seq, p.ts, p.payload.hex()) for p in out] == [
        (96, True, 1002, 3320, "000a00a0"),
        (96, False, 1003, 3320, "000a0140"),
        (96, False, 1004, 3320, "000a01e0"),
        (96, False, 1005, 3320, "000a0280"),
        (96, False, 1006, 3320, "000a0320"),
        (96, False, 1007, 3320, "008a03c0"),
        (96, False, 1008, 3320, "008a03c0"),
        (96, False, 1009, 3320, "008a03c0"),
        (0, False, 1010, 4280, "00" * 160),
    ]


def test_passthrough_150ms_digit_as_the_live_10_5() -> None:
    engine = _engine(CodecPlan(passthrough=(0, 96), formats=(PCMU, TE), inject=True))
    _send(engine, 1000, 3000)
    engine.inject(Digit(5, -8, 150, 100))
    out = []
    for i in range(10):
        out += _send(engine, 1002 + i, 3320 + 160 * i)
    durations = [int.from_bytes(p.payload[2:4], "big") for p in out if p.pt == 96]
    assert durations == [160, 320, 480, 640, 800, 960, 1120, 1280, 1440, 1440, 1440]
    assert out[-1].pt == 0 and out[-1].seq == 1013


def test_passthrough_tones_and_pause_as_suite_165() -> None:
    engine = _engine(CodecPlan(passthrough=(0, 8), formats=(PCMU, PCMA), inject=True))
    _send(engine, 1000, 3000)
    engine.inject(Digit(14, -5, 120, 110))  # "C"
    out = []
    for i in range(13):
        out += _send(engine, 1002 + i, 3320 + 160 * i)
    assert [p.seq for p in out] == list(range(1002, 1015))
    assert out[0].payload[:8] == bytes.fromhex("ff9394bc2e56bf2b")  # the suite's bytes
    assert out[0].payload == _pcmu_tone(14, 5, 0, 160)
    assert out[5].payload == _pcmu_tone(14, 5, 800, 160)
    assert [p.payload for p in out[6:11]] == [b"\xff" * 160] * 5
    assert out[11].payload == b"\xff" * 80 + b"\x00" * 80  # the pause ends mid-packet
    assert out[12].payload == b"\x00" * 160


def test_transcoded_tones_as_suite_166() -> None:
    plan = CodecPlan(decode=(PCMU,), encode=PCMA, inject=True)
    engine = _engine(plan)
    _send(engine, 1000, 3000)
    engine.inject(Digit(14, -5, 120, 100))
    out = []
    for i in range(12):
        out += _send(engine, 1002 + i, 3320 + 160 * i)
    table = g711.encoder_table("PCMA")
    tone = tones.tone(14, 5, 0, 160, 8000)
    expected = bytes(table[v & 0xFFFF] for v in struct.unpack("=160h", tone))
    assert out[0].pt == 8 and out[0].payload == expected
    assert out[0].payload[:4] == bytes.fromhex("d5b9be97")  # the suite's first bytes
    assert [p.payload for p in out[6:11]] == [b"\xd5" * 160] * 5
    assert out[11].payload == b"\x2a" * 160  # audio again (PCMU 0x00 is PCMA 0x2a)


def test_transcoded_events_as_suite_164() -> None:
    plan = CodecPlan(passthrough=(96,), decode=(PCMU,), encode=PCMA, formats=(TE,), inject=True)
    engine = _engine(plan)
    _send(engine, 1000, 3000)
    engine.inject(Digit(11, -10, 100, 100))  # "#"
    out = []
    for i in range(7):
        out += _send(engine, 1002 + i, 3320 + 160 * i)
    assert [(p.pt, p.seq, p.ts, p.payload.hex()) for p in out] == [
        (96, 1002, 3320, "0b0a00a0"),
        (96, 1003, 3320, "0b0a0140"),
        (96, 1004, 3320, "0b0a01e0"),
        (96, 1005, 3320, "0b0a0280"),
        (96, 1006, 3320, "0b0a0320"),
        (96, 1007, 3320, "0b8a03c0"),
        (96, 1008, 3320, "0b8a03c0"),
        (96, 1009, 3320, "0b8a03c0"),
        (8, 1010, 4280, "2a" * 160),
    ]


@pytest.mark.parametrize("name", ["G722", "opus"])
def test_tones_into_a_passed_through_codec_decode_as_the_digit(name: str) -> None:
    """G.722 and Opus passed through: the injected packets carry the digit's tone in the
    stream's own codec (decoded, the Goertzel detector finds the digit)."""
    from relayd.transcode import codecs
    from relayd.transcode.dtmfdetect import RATE, DtmfDetector

    fmt = Format(9, "G722", 8000) if name == "G722" else Format(111, "opus", 48000, 2)
    rate = codecs.audio_rate(fmt)
    samples = rate // 50
    encoder = codecs.open_encoder(fmt, rate, samples)
    silent = encoder.encode(b"\x00\x00" * samples * encoder.channels)
    engine = _engine(CodecPlan(passthrough=(fmt.pt,), formats=(fmt,), inject=True))
    step = fmt.rate // 50
    _send(engine, 1000, 0, silent, fmt.pt)
    engine.inject(Digit(7, -8, 200, 100))
    decoder = codecs.open_decoder(fmt, None, 1)
    resampler = codecs.Resampler(decoder.rate, decoder.channels, RATE, 1)
    detector = DtmfDetector()
    changes = []
    for i in range(1, 20):
        for packet in _send(engine, 1000 + i, step * i, silent, fmt.pt):
            changes += detector.push(resampler.convert(decoder.decode(packet.payload)))
    assert [c.event for c in changes][:2] == [7, -1]
