"""Audio through the engine: G.711 tables against FFmpeg, and PCMU to Opus, G.722 and PCMA
(and back) with the decoded output compared with the source (aligned correlation), clean
and with loss and reordering on the input."""

from __future__ import annotations

import math
import random
import sys

import av
import pytest

from relayd.transcode import ffmpeg, g711, rtp, swresample
from relayd.transcode.codecs import AvEncoder, Resampler, open_encoder
from relayd.transcode.plan import CodecPlan, Format
from relayd.transcode.transcoder import Transcoder

PCMU = Format(0, "PCMU", 8000)
PCMA = Format(8, "PCMA", 8000)
G722 = Format(9, "G722", 8000)
OPUS = Format(96, "opus", 48000, 2, "useinbandfec=1")
OPUS_MONO = Format(111, "opus", 48000, 1)


def speechlike(seconds: float, rate: int = 8000) -> list[int]:
    """A few gliding harmonics with a syllable envelope: wideband enough to tell codecs apart."""
    out = []
    for n in range(int(seconds * rate)):
        t = n / rate
        envelope = 0.55 + 0.45 * math.sin(2 * math.pi * 3 * t)
        pitch = 140 + 40 * math.sin(2 * math.pi * 0.7 * t)
        value = sum(math.sin(2 * math.pi * pitch * k * t) / k for k in (1, 2, 3, 5))
        out.append(int(6000 * envelope * value))
    return out


def samples_bytes(values: list[int]) -> bytes:
    return b"".join(v.to_bytes(2, sys.byteorder, signed=True) for v in values)


def values_of(pcm: bytes) -> list[int]:
    return [
        int.from_bytes(pcm[i : i + 2], sys.byteorder, signed=True) for i in range(0, len(pcm), 2)
    ]


def correlation(a: list[int], b: list[int], max_lag: int = 400) -> float:
    """The best normalised correlation of ``b`` against ``a`` over lags 0..max_lag."""
    best = 0.0
    n = min(len(a), len(b)) - max_lag
    ref = a[:n]
    ref_norm = math.sqrt(sum(x * x for x in ref)) or 1.0
    for lag in range(0, max_lag, 2):
        seg = b[lag : lag + n]
        norm = math.sqrt(sum(x * x for x in seg)) or 1.0
        best = max(best, sum(x * y for x, y in zip(ref, seg, strict=True)) / (ref_norm * norm))
    return best


def pcmu_packets(values: list[int]) -> list[bytes]:
    codes = bytes(g711.encoder_table("PCMU")[v & 0xFFFF] for v in values)
    return [
        rtp.build(0, False, 1000 + i, 160 * i, 0x1234, codes[160 * i : 160 * (i + 1)])
        for i in range(len(codes) // 160)
    ]


def decode_stream(packets: list[bytes], fmt: Format) -> list[int]:
    """What a receiver of ``fmt`` hears: packets decoded in order, gaps filled with silence,
    resampled to 8 kHz mono."""
    name = {"PCMU": "pcm_mulaw", "PCMA": "pcm_alaw", "G722": "g722", "opus": "libopus"}[fmt.name]
    rate = {"G722": 16000, "opus": 48000}.get(fmt.name, 8000)
    context = ffmpeg.audio_context(name, "r")
    context.sample_rate = rate
    context.layout = ffmpeg.layout(fmt.channels)
    context.open()
    to8k = Resampler(rate, fmt.channels, 8000, 1)
    parsed = sorted((rtp.parse(p) for p in packets), key=lambda p: p.ts)
    out: list[int] = []
    first = parsed[0].ts
    per_sample = fmt.rate // 8000 if fmt.name == "opus" else 1
    for p in parsed:
        at = (p.ts - first) // per_sample
        if at > len(out):
            out += [0] * (at - len(out))
        for frame in context.decode(av.Packet(p.payload)):
            frame.pts = None
            pcm = ffmpeg.pcm(frame, fmt.channels) if frame.format.name == "s16" else None
            if pcm is None:
                conv = av.AudioResampler("s16", ffmpeg.layout(fmt.channels), rate)
                pcm = b"".join(ffmpeg.pcm(f, fmt.channels) for f in conv.resample(frame))
            out += values_of(to8k.convert(pcm))
    return out


def test_g711_tables_are_ffmpegs() -> None:
    context = ffmpeg.audio_context("pcm_alaw", "w")
    context.sample_rate, context.layout, context.format = 8000, "mono", "s16"
    context.open()
    decoded = g711.decode("PCMU", bytes(range(256)))
    packets = context.encode(ffmpeg.frame(decoded, 8000, "mono", 1))
    assert bytes(range(256)).translate(g711.transcode_table("PCMU", "PCMA")) == b"".join(
        bytes(p) for p in packets
    )
    assert g711.transcode_table("PCMA", "PCMU")[0x00] == ord(")")  # rtpengine's bytes
    assert g711.decode("PCMA", b"\xd5") == (8).to_bytes(2, sys.byteorder, signed=True)


@pytest.mark.parametrize(
    ("target", "floor"), [(PCMA, 0.99), (G722, 0.93), (OPUS, 0.9), (OPUS_MONO, 0.9)]
)
def test_pcmu_to_each_codec_sounds_like_the_source(target: Format, floor: float) -> None:
    source = speechlike(1.0)
    t = Transcoder(CodecPlan(decode=(PCMU,), encode=target))
    out = [o for p in pcmu_packets(source) for o in t.process(p)]
    assert len(out) >= 49 and t.counters.errors == 0
    heard = decode_stream(out, target)
    assert correlation(source, heard) > floor


@pytest.mark.parametrize("source_fmt", [OPUS, G722, PCMA])
def test_each_codec_back_to_pcmu(source_fmt: Format) -> None:
    source = speechlike(1.0)
    there = Transcoder(CodecPlan(decode=(PCMU,), encode=source_fmt))
    back = Transcoder(CodecPlan(decode=(source_fmt,), encode=PCMU))
    out = [b for p in pcmu_packets(source) for a in there.process(p) for b in back.process(a)]
    assert back.counters.errors == 0
    assert correlation(source, decode_stream(out, PCMU)) > 0.8


@pytest.mark.parametrize("target", [PCMA, OPUS])
def test_loss_and_reordering_on_the_input(target: Format) -> None:
    """10 % lost, neighbours swapped now and then: no error, every output timestamp on the
    input's timeline (no drift), and the audio that came through still the source's."""
    rng = random.Random(15)
    source = speechlike(2.0)
    packets = pcmu_packets(source)
    kept = [p for p in packets if rng.random() > 0.1]
    for i in range(1, len(kept) - 1, 7):
        kept[i], kept[i + 1] = kept[i + 1], kept[i]
    t = Transcoder(CodecPlan(decode=(PCMU,), encode=target))
    out = [o for p in kept for o in t.process(p)]
    assert t.counters.errors == 0
    scale = target.rate // 8000
    parsed = [rtp.parse(o) for o in out]
    first = parsed[0].ts
    assert all((p.ts - first) % (160 * scale) == 0 for p in parsed)
    assert all((p.ts - first) // (160 * scale) == (p.seq - parsed[0].seq) for p in parsed)
    assert max(p.ts for p in parsed) - first == (len(packets) - 1) * 160 * scale
    assert correlation(source, decode_stream(out, target)) > 0.6


@pytest.mark.parametrize(("rate", "channels", "to_rate"), [(8000, 1, 16000), (48000, 2, 8000)])
def test_direct_swresample_gives_pyavs_samples(rate: int, channels: int, to_rate: int) -> None:
    if not swresample.available():
        pytest.skip("PyAV's libswresample not found: the engine uses PyAV's resampler")
    direct = swresample.SwrResampler(rate, channels, to_rate, 1)
    through_pyav = Resampler(rate, channels, to_rate, 1)
    through_pyav.direct = None
    chunk = samples_bytes(speechlike(0.02, rate) * channels)
    assert b"".join(direct.convert(chunk) for _ in range(5)) == b"".join(
        through_pyav.convert(chunk) for _ in range(5)
    )


@pytest.mark.parametrize("fmt", [G722, OPUS, OPUS_MONO, PCMA])
def test_encoders_give_what_pyavs_encode_gives(fmt: Format) -> None:
    """The engine's encoders skip PyAV's own frame cutting (AvEncoder.send): same bytes."""
    rate = 16000 if fmt.name == "G722" else 8000
    ours = open_encoder(fmt, rate, rate // 50)
    reference = open_encoder(fmt, rate, rate // 50)
    assert isinstance(reference, AvEncoder)
    reference.send = reference.context.encode
    pcm = samples_bytes(speechlike(0.2, rate))
    size = 2 * rate // 50
    frames = [pcm[i : i + size] for i in range(0, len(pcm), size)]
    if ours.channels == 2:
        frames = [_stereo(f) for f in frames]
    mine = [ours.encode(f) for f in frames]
    assert mine == [reference.encode(f) for f in frames] and all(mine)


def _stereo(mono: bytes) -> bytes:
    out = bytearray(2 * len(mono))
    out[0::4], out[1::4], out[2::4], out[3::4] = mono[0::2], mono[1::2], mono[0::2], mono[1::2]
    return bytes(out)
