"""Comfort noise (RFC 3389) in the media engine, on rtpengine 10.5's own packet sequences
(t/auto-daemon-tests.pl at mr10.5.3.5, "CN tests"): CN decoded for a receiver that does not
take it (exact bytes: FFmpeg's comfortnoise decoder, as rtpengine's), and silence sent as
CN where the receiver takes CN its sender does not send (``--silence-detect``)."""

from __future__ import annotations

import struct

from relayd.transcode import rtp
from relayd.transcode.comfortnoise import ComfortNoise
from relayd.transcode.plan import CodecPlan, Format, parse
from relayd.transcode.silence import SilenceDetector, threshold
from relayd.transcode.transcoder import Transcoder

PCMU = Format(0, "PCMU", 8000)
PCMA = Format(8, "PCMA", 8000)
CN = Format(13, "CN", 8000)
OUT_SSRC = 0x0BAD_CAFE
CN_PAYLOAD = b"\x12\x23\x23\x34\x56"  # the suite's CN packet: -18 dBov, 4 coefficients

# what rtpengine 10.5 sends for the suite's CN packet (lines 3875, 4010, 4050)
NOISE_PCMU = bytes.fromhex(
    "ce5669cc61ca63d26657e24765596a745d4a68e9604a634bf4434b4848523957374c394c483b434744"
    "5748f53e593e523b533d533b415b384a4b35484a3e52504b46fd3ef13ad635545d3a5845423d3e4c42"
    "3a583c503b6e36603e3d3b413a473548354b3e3d473a3d394f40424a473d6b425a7553455a4b4f4859"
    "487843774c425947463e67443a674b3f5148443e54376c45453f6e3a68494e3f474b3ef339"
)
NOISE_PCMA = bytes.fromhex(
    "fb7058e443e641fc4471c0634477585049665ad842664167d06f6760607c1071126410656016"
    "6c636c7660d11574157c167d147d16694a1366671c6066157c7e6762d515d211f01c72491176"
    "6d6e1415646e1176177e165c1d421514166911631c601d676a156311141079686e666014596e"
    "74507d6d746779607760566f56646e77636215456c1145676a7c606c6a72125f6d6d6a5d115b"
    "617b6a636715d010"
)
NOISE_PCMA_NEXT = bytes.fromhex(
    "57656c6e6f11631764157b116c137d1f111615696d6515631614651e406b6a117d1a686d1612"
    "6e1362631f15611f161d6f187b101d7b146e156b117c6b6d7211677a1460731d7d12511ac616"
    "176e106516106e6817137d1516451f6b4312427b7714e4115d656e465810785111f56d6dd816"
    "6fcf14636968646c6b177a611175797a7f155d127c7d796053605815fe6345da7ee568e069f0"
    "6ee4584d7e4569f7"
)


def send(
    t: Transcoder, pt: int, seq: int, ts: int, payload: bytes, ssrc: int = 0x3456
) -> list[tuple[int, int, int, int, bytes]]:
    out = []
    for data in t.process(rtp.build(pt, False, seq, ts, ssrc, payload)):
        p = rtp.parse(data)
        out.append((p.pt, p.seq, p.ts, p.ssrc, p.payload))
    return out


def test_cn_decoded_for_a_receiver_without_cn() -> None:
    """ "add CN" (line 3825), B to A: B sends PCMU and CN, A takes PCMU only. The plan passes
    PCMU through and names CN with no ``cn_out``: the engine decodes the CN to 20 ms of noise
    and encodes it as PCMU (PT 0 by RFC 3551's static table), in sequence and on the
    timeline of the PCMU around it, under the direction's one SSRC."""
    t = Transcoder(CodecPlan(passthrough=(0,), cn=(CN,)), lambda: OUT_SSRC)
    z = b"\x00" * 160
    assert send(t, 0, 2000, 4000, z) == [(0, 2000, 4000, OUT_SSRC, z)]
    assert send(t, 13, 2001, 4160, CN_PAYLOAD) == [(0, 2001, 4160, OUT_SSRC, NOISE_PCMU)]
    assert send(t, 0, 2002, 4320, z) == [(0, 2002, 4320, OUT_SSRC, z)]


def test_cn_decoded_runs_on_across_packets() -> None:
    """ "consume CN" (line 3950) and its re-invite: the second CN packet (two packets later)
    carries on the same noise, so it is the noise's next 160 samples."""
    t = Transcoder(CodecPlan(passthrough=(8, 101), cn=(CN,)), lambda: OUT_SSRC)
    z = b"\x00" * 160
    assert send(t, 8, 2000, 4000, z) == [(8, 2000, 4000, OUT_SSRC, z)]
    assert send(t, 13, 2001, 4160, CN_PAYLOAD) == [(8, 2001, 4160, OUT_SSRC, NOISE_PCMA)]
    assert send(t, 8, 2002, 4320, z) == [(8, 2002, 4320, OUT_SSRC, z)]
    assert send(t, 13, 2003, 4480, CN_PAYLOAD) == [(8, 2003, 4480, OUT_SSRC, NOISE_PCMA_NEXT)]


def test_cn_decoded_into_a_transcoded_stream() -> None:
    """ "add CN and 2nd codec, accept second PT" (line 4229): PCMU is transcoded to PCMA and
    CN decoded into the same PCMA stream."""
    t = Transcoder(CodecPlan(decode=(PCMU,), encode=PCMA, cn=(CN,)), lambda: OUT_SSRC)
    assert send(t, 0, 2000, 4000, b"\xff" * 160) == [(8, 2000, 4000, OUT_SSRC, b"\xd5" * 160)]
    assert send(t, 13, 2001, 4160, CN_PAYLOAD) == [(8, 2001, 4160, OUT_SSRC, NOISE_PCMA)]


def test_cn_with_cn_out_is_forwarded_and_without_output_consumed() -> None:
    forwarded = Transcoder(CodecPlan(passthrough=(0,), cn=(CN,), cn_out=CN), lambda: OUT_SSRC)
    assert send(forwarded, 13, 5, 800, CN_PAYLOAD) == [(13, 5, 800, OUT_SSRC, CN_PAYLOAD)]
    # no codec to decode CN into (a dynamic payload type passed through): consumed
    consumed = Transcoder(CodecPlan(passthrough=(96,), cn=(CN,)), lambda: OUT_SSRC)
    assert send(consumed, 13, 5, 800, CN_PAYLOAD) == []


def test_silence_goes_out_as_cn() -> None:
    """ "add CN" (line 3825), A to B with ``--silence-detect=1``: loud PCMU passes, 160
    silent samples (μ-law 0xff) go out as PT 13 ``"\\x20"`` with the audio's number and
    timestamp."""
    plan = CodecPlan(decode=(PCMU,), encode=PCMU, cn_out=CN, silence_detect=1.0)
    t = Transcoder(plan, lambda: OUT_SSRC)
    assert send(t, 0, 1000, 3000, b"\x00" * 160) == [(0, 1000, 3000, OUT_SSRC, b"\x00" * 160)]
    assert send(t, 0, 1001, 3160, b"\x00" * 160) == [(0, 1001, 3160, OUT_SSRC, b"\x00" * 160)]
    assert send(t, 0, 1002, 3320, b"\xff" * 160) == [(13, 1002, 3320, OUT_SSRC, b"\x20")]
    # PCMA: "consume CN" (line 3950), A-law 0xd5 is silence
    plan = CodecPlan(decode=(PCMA,), encode=PCMA, cn_out=CN, silence_detect=1.0)
    t = Transcoder(plan, lambda: OUT_SSRC)
    assert send(t, 8, 1001, 3160, b"\x00" * 160) == [(8, 1001, 3160, OUT_SSRC, b"\x00" * 160)]
    assert send(t, 8, 1002, 3320, b"\xd5" * 160) == [(13, 1002, 3320, OUT_SSRC, b"\x20")]
    # without silence detection, silence is audio
    t = Transcoder(CodecPlan(decode=(PCMU,), encode=PCMU, cn_out=CN), lambda: OUT_SSRC)
    assert send(t, 0, 1002, 3320, b"\xff" * 160) == [(0, 1002, 3320, OUT_SSRC, b"\xff" * 160)]


def test_silence_detected_on_pcm_between_codecs() -> None:
    """PCMU to G.722 goes through PCM: the test runs on the samples the encoder takes."""
    g722 = Format(9, "G722", 8000)
    plan = CodecPlan(decode=(PCMU,), encode=g722, cn_out=CN, silence_detect=1.0)
    t = Transcoder(plan, lambda: OUT_SSRC)
    out = [
        send(t, 0, 1 + i, 160 * (1 + i), (b"\x00" if i < 2 else b"\xff") * 160) for i in range(6)
    ]
    # the resampler holds the first packet back; its delay carries loud samples into the
    # first silent packet; then silence
    assert [[(p[0], p[1], p[2], len(p[4])) for p in o] for o in out] == [
        [], [(9, 1, 160, 160)], [(9, 2, 320, 160)], [(9, 3, 480, 160)],
        [(13, 4, 640, 1)], [(13, 5, 800, 1)],
    ]  # fmt: skip


def test_silence_detector_limits() -> None:
    assert threshold(1.0) == 655  # rtpengine: (int)(0.01 * UINT32_MAX) >> 16
    pcm = SilenceDetector(655)
    assert pcm.silent(struct.pack("=4h", 0, 655, -655, 12))
    assert not pcm.silent(struct.pack("=4h", 0, 656, 0, 0))
    assert not pcm.silent(struct.pack("=4h", 0, 0, -656, 0))
    assert not pcm.silent(b"")
    law = SilenceDetector(655, "PCMU")
    assert law.silent(b"\xff\x7f\xfe")  # 0, 0, -... small
    assert not law.silent(b"\xff\x00")


def test_comfort_noise_level_follows_the_payload() -> None:
    """A new CN level is taken in as FFmpeg's decoder takes it (half-way per call): after a
    40 packets of -80 dBov, the noise is far below what -18 dBov made."""
    noise = ComfortNoise(160)
    loud = memoryview(noise.decode(b"\x12")).cast("h")
    for _ in range(40):
        quiet = memoryview(noise.decode(b"\x50")).cast("h")
    assert len(loud) == len(quiet) == 160
    assert max(map(abs, loud)) > 10 * max(1, max(map(abs, quiet)))


def test_plan_carries_silence_detect() -> None:
    plan = CodecPlan(passthrough=(0,), cn_out=CN, silence_detect=1.5)
    assert '"sd":1.5' in plan.to_text()
    assert parse(plan.to_text()) == plan
    assert parse('{"p":[0]}') == CodecPlan(passthrough=(0,))
