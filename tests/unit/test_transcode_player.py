"""The player's media engine (relayd/transcode/player.py): a file to packets in a party's codec,
the stream kept across plays, and the sender report rtpengine's "RTCP player" scenarios expect.

``tests/data/playback/sine-100ms.wav`` is the 100 ms sine wave that rtpengine's daemon test
suite plays (``$wav_file`` of t/auto-daemon-tests.pl, mr10.5.3.5), and ``sine-100ms.pcma`` the
PCMA payloads the suite expects of rtpengine 10.5 for it (``$pcma_1`` … ``$pcma_5``).
"""

from __future__ import annotations

import re
import struct
import wave
from array import array
from io import BytesIO
from pathlib import Path

import pytest

from relayd.transcode.codecs import open_decoder
from relayd.transcode.plan import Format
from relayd.transcode.player import (
    Frames,
    PlayError,
    Received,
    Stream,
    encoder_input,
    load,
    probe,
    sender_report,
)
from relayd.transcode.rtp import parse
from tests.support.speech import segmented_correlation
from tests.support.tone import tone

DATA = Path(__file__).parents[1] / "data" / "playback"
WAV = (DATA / "sine-100ms.wav").read_bytes()
PCMA = (DATA / "sine-100ms.pcma").read_bytes()
PCMA_FORMAT = Format(8, "PCMA", 8000)


def _payloads(frames: Frames) -> list[bytes]:
    out = []
    while (payload := frames.next()) is not None:
        out.append(payload)
        assert len(out) < 10_000
    return out


def _wav(samples: list[int], rate: int) -> bytes:
    out = BytesIO()
    with wave.open(out, "wb") as file:
        file.setnchannels(1)
        file.setsampwidth(2)
        file.setframerate(rate)
        file.writeframes(array("h", samples).tobytes())
    return out.getvalue()


def _samples(pcm: bytes) -> list[int]:
    return array("h", pcm).tolist()


def test_the_suites_wav_plays_as_rtpengine_encodes_it() -> None:
    assert probe(WAV) == 100
    pcm = load(WAV, *encoder_input(PCMA_FORMAT))
    payloads = _payloads(Frames(pcm, PCMA_FORMAT, 20))
    assert [len(p) for p in payloads] == [160] * 5
    assert b"".join(payloads) == PCMA


def test_repeat_start_pos_and_a_padded_last_packet() -> None:
    pcm = load(WAV, 8000, 1)
    assert len(_payloads(Frames(pcm, PCMA_FORMAT, 20, repeat=3))) == 15
    started = _payloads(Frames(pcm, PCMA_FORMAT, 20, start_pos=40))
    assert b"".join(started) == PCMA[320:]
    odd = _payloads(Frames(pcm[: 2 * 250], PCMA_FORMAT, 20))  # 250 samples: 2 packets
    assert len(odd) == 2 and odd[1][90:] == b"\xd5" * 70  # PCMA silence after the audio
    frames = Frames(pcm, PCMA_FORMAT, 20, repeat=2)
    frames.next()
    frames.next()
    assert frames.position == 40


@pytest.mark.parametrize(
    ("fmt", "step"),
    [
        (Format(0, "PCMU", 8000), 160),
        (Format(9, "G722", 8000), 160),
        (Format(96, "opus", 48000, 2), 960),
    ],
)
def test_other_codecs_carry_the_audio(fmt: Format, step: int) -> None:
    """A 440 Hz tone played in each codec decodes back to the tone: aligned normalised
    correlation with the source above 0.9 (Opus 0.96 with its delay, G.711 and G.722 1.0;
    another tone gives under 0.05)."""
    source = _wav(tone(440, 0, 8000), 8000)
    pcm = load(source, *encoder_input(fmt))
    frames = Frames(pcm, fmt, 20)
    assert frames.step == step
    decoder = open_decoder(fmt, channels=1)
    audio = b"".join(bytes(decoder.decode(p)) for p in _payloads(frames))
    want = _samples(load(source, decoder.rate, 1))
    assert segmented_correlation(want, _samples(audio), max_lag=decoder.rate // 50) > 0.9


def test_what_does_not_play() -> None:
    for bad in (b"", b"RIFF nonsense", b"\x00" * 4096):
        with pytest.raises(PlayError):
            probe(bad)
    with pytest.raises(PlayError):
        probe("/nonexistent/file.wav")
    with pytest.raises(PlayError):
        load(b"not a media file", 8000, 1)


def test_the_stream_goes_on_across_plays() -> None:
    stream = Stream.fresh(8000)
    stream.begin(100.0, 8000)
    first = [parse(stream.packet(8, b"\xd5" * 160, 160)) for _ in range(5)]
    assert [p.marker for p in first] == [True, False, False, False, False]
    assert [p.seq for p in first] == [(first[0].seq + i) & 0xFFFF for i in range(5)]
    assert [p.ts for p in first] == [(first[0].ts + 160 * i) & 0xFFFFFFFF for i in range(5)]
    stream.begin(100.5, 8000)  # half a second later: 4000 timestamp units on
    again = parse(stream.packet(8, b"\xd5" * 160, 160))
    assert again.marker and again.ssrc == first[0].ssrc
    assert again.seq == (first[-1].seq + 1) & 0xFFFF
    assert again.ts == (first[0].ts + 4000) & 0xFFFFFFFF
    assert (stream.packets, stream.octets) == (6, 6 * 172)


# the suite's "RTCP player w/ previous SR" expectation, as a regex (#130)
_SR = re.compile(
    rb"^\x81\xc8\x00\x0c(.{4})(.{4})(.{4})(.{4})\x00\x00\x00\x01\x00\x00\x00\xac\x00\x00\x12\x34"
    rb"\x00\x00\x00\x00\x00\x00\x03\xe8\x00\x00\x00\x00\x56\x78\x9a\xbc(.{4})"
    rb"\x81\xca\x00\x05(.{4})\x01\x0c([0-9a-f]{12})\x00\x00$",
    re.S,
)


def test_sender_report_as_the_suite_expects_it() -> None:
    stream = Stream.fresh(8000)
    stream.begin(0.0, 8000)
    packet = parse(stream.packet(8, PCMA[:160], 160))
    report = sender_report(stream, 1_800_000_000.25, Received(0x1234, 1000, 0x56789ABC, 0.05))
    match = _SR.match(report)
    assert match is not None, report.hex()
    ssrc, msw, lsw, ts, dlsr, sdes_ssrc, _ = match.groups()
    assert ssrc == sdes_ssrc == struct.pack("!I", packet.ssrc)
    assert struct.unpack("!I", ts)[0] == packet.ts
    assert struct.unpack("!I", msw)[0] == 1_800_000_000 + 2208988800
    assert struct.unpack("!I", lsw)[0] == 1 << 30
    assert struct.unpack("!I", dlsr)[0] == int(0.05 * 65536)
    # no RTP from the party yet: no report block
    assert sender_report(stream, 0.0, Received())[:4] == b"\x80\xc8\x00\x06"
