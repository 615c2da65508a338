"""DTMF in the media engine on rtpengine 10.5's own packet sequences (t/auto-daemon-tests.pl
at mr10.5.3.5): telephone-events made tones for a receiver without telephone-event
("reverse DTMF transcoding - active", exact μ-law bytes) and tones heard in the audio sent
as events ("PCM to RFC DTMF transcoding")."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relayd.transcode import g711, rtp
from relayd.transcode.plan import CodecPlan, Format
from relayd.transcode.tones import FREQUENCIES, tone
from relayd.transcode.transcoder import Transcoder

PCMU = Format(0, "PCMU", 8000)
PCMA = Format(8, "PCMA", 8000)
EVENT = Format(101, "telephone-event", 8000, fmtp="0-15")
OUT_SSRC = 0x0BAD_CAFE

# the tone "8" at volume 16 in μ-law, 3 x 20 ms: what the suite sends as in-band DTMF and
# what rtpengine makes of the event (line 14792 on)
TONE_8 = bytes.fromhex(
    "ffb0acbc4c393f63ee554af6baafbc452c2d4bbaafbb6e4853f35f3f3a52baacb35e2f2d3ec8b8c0"
    "e86bd7cc6639303fbfacaed2372f3ce1c6d277ddbfbbdc382c35d1aeadc24337406ee7584eddb8b1"
    "c33d2b2f5eb5afbe594451fb5b3f3d6bb6acb84a2d2d47bfb6c1fa63dad157373249baabb0fe332f"
    "40d2c2d17edabfbe73352d3ac4acaecd3d3643f6df5c55d2b7b4ce372b32dfb1afc34d41507e5940"
    "40e0b3adbd3f2c2f54bbb5c46b5dded94e373558b5abb4522f2f47cabfd0fed8c1c357322e40bcab"
    "b0e0393546e3db615dccb7b7e8332b37cbaeb0cb463f507e584146cfb1aec6392b317db7b5c85d58"
    "e5e14a3738f2b1abba442e304fc3bed17dd8c3c94b302f4cb6abb36135354bd8d66868c8b7ba5d30"
    "2c3cbfadb1d8403e52fb58444cc8b0b0d6342b35d5b3b5cd5454ecef47373cd3afacc03c2d3363be"
    "bdd377d9c5d044303265b2abb84c323550cfd2707ac6b8be4c2e2d45b9acb4fd3c3d55f25a4756c1"
    "b0b471302b3ac7b0b6d74d50f678453841c7aeaecc372c36e5bbbdd76ddbc9dd3f3036dcaeabbd41"
    "2f375dcbcf7befc4b9c6422d2e55b4acb858393d59ea5c4a66bdb0b8502e2c40bdafb8e8484e7d6b"
    "433a4abfadafe4322c3acfb8bddc66deccf53c303bcaadacc63b2e397cc6cdfae7c3bbce3c2d31f2"
)


def send(
    t: Transcoder, pt: int, seq: int, ts: int, payload: bytes, marker: bool = False
) -> list[tuple[int, bool, int, int, bytes]]:
    out = []
    for data in t.process(rtp.build(pt, marker, seq, ts, 0x1234, payload)):
        p = rtp.parse(data)
        out.append((p.pt, p.marker, p.seq, p.ts, p.payload))
    return out


def mulaw(pcm: bytes) -> bytes:
    table = g711.encoder_table("PCMU")
    return bytes(table[v & 0xFFFF] for v in memoryview(pcm).cast("h"))


def test_tone_samples_are_rtpengines() -> None:
    assert mulaw(tone(8, 16, 0, 480, 8000)) == TONE_8
    # any split into packets gives the same samples
    assert mulaw(tone(8, 16, 0, 100, 8000) + tone(8, 16, 100, 380, 8000)) == TONE_8
    assert tone(16, 10, 0, 4, 8000) == b"\x00" * 8  # no digit: silence
    assert tone(8, 16, 0, 3, 8000, channels=2)[:4] == tone(8, 16, 0, 1, 8000) * 2


def test_tone_level_follows_the_volume() -> None:
    """Two sines of 1/(2 x 10^(v/20)) of full scale each: 0 dB peaks near full scale."""
    for volume, peak in ((0, 32767), (20, 3277)):
        samples = struct.unpack("=8000h", tone(1, volume, 0, 8000, 8000))
        assert 0.9 * peak < max(samples) <= peak
    low, high = FREQUENCIES[5]
    samples = struct.unpack("=3h", tone(5, 0, 0, 3, 8000))
    expected = [
        int(
            math.sin(2 * math.pi * low * n / 8000) / 2 * 32767
            + math.sin(2 * math.pi * high * n / 8000) / 2 * 32767
        )
        for n in range(3)
    ]
    assert [abs(a - b) <= 1 for a, b in zip(samples, expected, strict=True)] == [True] * 3


def test_event_made_a_tone_for_a_receiver_without_telephone_event() -> None:
    """ "reverse DTMF transcoding - active" (line 14736), A to B: B takes PCMU only. The event
    (8, volume 16, 160 samples so far) goes out as 20 ms of its tone, in the audio's
    numbering and timeline; its later packets add the samples their durations add; the end
    packets repeated add nothing and are consumed."""
    t = Transcoder(CodecPlan(decode=(PCMU,), encode=PCMU, dtmf=(EVENT,)), lambda: OUT_SSRC)
    z = b"\x00" * 160
    for i in range(7):
        assert send(t, 0, 1000 + i, 3000 + 160 * i, z) == [(0, False, 1000 + i, 3000 + 160 * i, z)]
    start = send(t, 101, 1007, 4120, b"\x08\x10\x00\xa0", marker=True)
    assert start == [(0, False, 1007, 4120, TONE_8[:160])]
    assert send(t, 101, 1008, 4120, b"\x08\x10\x01\x40") == [
        (0, False, 1008, 4280, TONE_8[160:320])
    ]
    assert send(t, 101, 1009, 4120, b"\x08\x90\x01\xe0") == [(0, False, 1009, 4440, TONE_8[320:])]
    assert send(t, 101, 1010, 4120, b"\x08\x90\x01\xe0") == []
    assert send(t, 101, 1011, 4120, b"\x08\x90\x01\xe0") == []
    assert send(t, 0, 1012, 4600, z) == [(0, False, 1010, 4600, z)]


def test_event_made_a_tone_in_another_codec() -> None:
    """PCMU with events in, PCMA out: the tone is encoded as PCMA, from the same samples."""
    t = Transcoder(CodecPlan(decode=(PCMU,), encode=PCMA, dtmf=(EVENT,)), lambda: OUT_SSRC)
    send(t, 0, 1, 160, b"\xff" * 160)
    out = send(t, 101, 2, 320, b"\x08\x10\x00\xa0", marker=True)
    table = g711.encoder_table("PCMA")
    expected = bytes(table[v & 0xFFFF] for v in memoryview(tone(8, 16, 0, 160, 8000)).cast("h"))
    assert out == [(8, False, 2, 320, expected)]


TE96 = Format(96, "telephone-event", 8000, fmtp="0-15")


def detection_run(encode: Format) -> list[list[tuple[int, bool, int, int, bytes]]]:
    t = Transcoder(CodecPlan(decode=(PCMU,), encode=encode, dtmf_out=TE96), lambda: OUT_SSRC)
    z = b"\x00" * 160
    packets = [z, z, TONE_8[:160], TONE_8[160:320], TONE_8[320:], z, z, z]
    return [send(t, 0, 1000 + i, 3000 + 160 * i, p) for i, p in enumerate(packets)]


@pytest.mark.parametrize("encode", [PCMU, PCMA])
def test_tone_sent_as_events(encode: Format) -> None:
    """ "PCM to RFC DTMF transcoding" (line 14320, and "w/ PCM transcoding", 14419; "reverse
    DTMF transcoding - active", 14736, B to A): three packets of the tone "8" among μ-law
    0x00. The first two go out as audio (the digit is confirmed during the second); the
    third is replaced by the event's start (marked, duration 160, volume 16: 10.5 sends 15
    or 16); the next packet, no tone any more, by the event going on (320); the one after
    (the end confirmed) by its end, three times (480); then audio again, numbered on."""
    out = detection_run(encode)
    audio = [[(p[0], p[1], p[2], p[3]) for p in o] for o in out[:4]]
    assert audio == [[(encode.pt, False, 1000 + i, 3000 + 160 * i)] for i in range(4)]
    assert out[4] == [(96, True, 1004, 3640, b"\x08\x10\x00\xa0")]
    assert out[5] == [(96, False, 1005, 3640, b"\x08\x10\x01\x40")]
    assert out[6] == [(96, False, 1006 + i, 3640, b"\x08\x90\x01\xe0") for i in range(3)]
    assert [(p[0], p[2], p[3]) for p in out[7]] == [(encode.pt, 1009, 4120)]
    if encode == PCMU:
        assert out[2][0][4] == TONE_8[:160]  # the tone itself went out as it came


def test_no_detection_where_the_sender_sends_events() -> None:
    """A sender with telephone-event of its own: its tones in the audio are left alone."""
    plan = CodecPlan(decode=(PCMU,), encode=PCMU, dtmf=(EVENT,), dtmf_out=EVENT)
    t = Transcoder(plan, lambda: OUT_SSRC)
    z = b"\x00" * 160
    packets = [z, z, TONE_8[:160], TONE_8[160:320], TONE_8[320:], z, z, z]
    out = [send(t, 0, 1000 + i, 3000 + 160 * i, p) for i, p in enumerate(packets)]
    assert {p[0] for o in out for p in o} == {0}


def test_events_made_tones_in_passed_through_audio() -> None:
    """ "PCM to RFC DTMF transcoding" (line 14320), B to A: the plan passes PCMU through and
    names telephone-event with no ``dtmf_out``; the tone is made in PCMU (RFC 3551's PT 0)."""
    t = Transcoder(CodecPlan(passthrough=(0,), dtmf=(TE96,)), lambda: OUT_SSRC)
    z = b"\x00" * 160
    assert send(t, 0, 2000, 4000, z) == [(0, False, 2000, 4000, z)]
    assert send(t, 0, 2001, 4160, z) == [(0, False, 2001, 4160, z)]
    assert send(t, 96, 2002, 4320, b"\x08\x10\x00\xa0") == [(0, False, 2002, 4320, TONE_8[:160])]
    assert send(t, 96, 2003, 4320, b"\x08\x10\x01\x40") == [(0, False, 2003, 4480, TONE_8[160:320])]
    assert send(t, 96, 2004, 4320, b"\x08\x90\x01\xe0") == [(0, False, 2004, 4640, TONE_8[320:])]


CN = Format(13, "CN", 8000)
G722 = Format(9, "G722", 8000)
MIXED_PLANS = [
    CodecPlan(decode=(PCMU,), encode=PCMU, dtmf_out=TE96, cn_out=CN, silence_detect=1.0),
    CodecPlan(decode=(PCMU,), encode=G722, dtmf_out=TE96, cn=(CN,)),
    CodecPlan(decode=(PCMU,), encode=PCMA, dtmf=(TE96,), cn=(CN,)),
    CodecPlan(passthrough=(0,), dtmf=(TE96,), cn=(CN,)),
    CodecPlan(decode=(G722,), encode=PCMU, dtmf=(TE96,), dtmf_out=EVENT, cn=(CN,), cn_out=CN),
]


@settings(max_examples=60, deadline=None)
@given(
    plan=st.sampled_from(MIXED_PLANS),
    packets=st.lists(
        st.tuples(
            st.sampled_from([0, 9, 13, 96]),
            st.integers(0, 3),  # sequence step (0: a duplicate)
            st.integers(-200, 800),  # timestamp step
            st.binary(max_size=200),
        ),
        max_size=40,
    ),
)
def test_any_mix_of_audio_events_and_noise(
    plan: CodecPlan, packets: list[tuple[int, int, int, bytes]]
) -> None:
    """Audio, telephone-events and CN in any order, with any payload (empty, short,
    garbage): the engine never raises, sends only the payload types the plan allows, and
    (where nothing is passed through unqueued) numbers its output in order."""
    t = Transcoder(plan, lambda: OUT_SSRC)
    allowed = {f.pt for f in (plan.encode, plan.dtmf_out, plan.cn_out) if f is not None}
    allowed |= set(plan.passthrough)
    seq, ts = 1000, 3000
    last = None
    for pt, step, tick, payload in packets:
        seq, ts = seq + step, (ts + tick) & 0xFFFFFFFF
        for out in send(t, pt, seq & 0xFFFF, ts, payload):
            assert out[0] in allowed or (out[0] == 0 and not plan.encode)
            if last is not None and not plan.passthrough:  # passed-through packets skip
                assert (out[2] - last) & 0xFFFF < 0x8000  # the queue: they keep their order
            last = out[2]
