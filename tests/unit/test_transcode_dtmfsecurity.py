"""The engine's DTMF blocking (relayd/transcode/dtmfsecurity.py), packets in and out.

The expected bytes are what the live rtpengine 10.5.3.5 sent for the same input (2026-12-06,
/usr/bin/rtpengine on loopback, ``block DTMF`` with ``delay-buffer`` 1: the setting under which
10.5 applies its modes; docs/dtmf.md, "Blocking DTMF"): a PCMU call with telephone-event 101,
three packets of silence from seq 1000 ts 3000, then digit 5 (as events, or as its tone at
volume 10), then silence again."""

from __future__ import annotations

import pytest

from relayd.transcode import g711, rtp, tones
from relayd.transcode.dtmfsecurity import DtmfBlocker, only_security, sine
from relayd.transcode.plan import CodecPlan, DtmfSecurity, Format
from relayd.transcode.transcoder import Transcoder

PCMU = Format(0, "PCMU", 8000)
PCMA = Format(8, "PCMA", 8000)
EVENT = Format(101, "telephone-event", 8000)
FORMATS = (PCMU, PCMA, EVENT)
SSRC = 0x1234
SILENCE = b"\xff" * 160
# rtpengine's 400 Hz at volume 10 in μ-law: one period of 20 samples, the suite's
# "PCM DTMF block" (t/auto-daemon-tests-delay-buffer.pl) and the live daemon alike
TONE_400 = bytes.fromhex("ffb5a79f9c9b9c9fa7b5ff35271f1c1b1c1f2735") * 8


def _ulaw(pcm: bytes) -> bytes:
    table = g711.encoder_table("PCMU")
    return bytes(table[v & 0xFFFF] for v in memoryview(pcm).cast("h"))


def _events(seq: int = 1003, ts: int = 3480, code: int = 5) -> list[bytes]:
    """Digit ``code``, 100 ms: four packets of duration 160..640, the end (800) three times."""
    packets = []
    for i, (duration, end) in enumerate(
        ((160, False), (320, False), (480, False), (640, False), (800, True), (800, True))
    ):
        flags = (0x80 if end else 0) | 10
        payload = bytes((code, flags)) + duration.to_bytes(2, "big")
        packets.append(rtp.build(101, i == 0, seq + i, ts, SSRC, payload))
    packets.append(rtp.build(101, False, seq + 6, ts, SSRC, payload))
    return packets


def _tone_stream() -> list[bytes]:
    """Silence, six packets of digit 5's tone (volume 10), four of silence."""
    packets = [rtp.build(0, False, 1000 + i, 3000 + 160 * i, SSRC, SILENCE) for i in range(3)]
    for i in range(6):
        ts = 3480 + 160 * i
        payload = _ulaw(tones.tone(5, 10, 160 * i, 160, 8000))
        packets.append(rtp.build(0, False, 1003 + i, ts, SSRC, payload))
    packets += [rtp.build(0, False, 1009 + i, 4440 + 160 * i, SSRC, SILENCE) for i in range(4)]
    return packets


def _blocker(mode: str, **params: int) -> DtmfBlocker:
    return DtmfBlocker(DtmfSecurity(mode, **params), FORMATS, pick=lambda: 3)


def _run(blocker: DtmfBlocker, packets: list[bytes]) -> list[bytes | None]:
    return [blocker.filter(p) for p in packets]


# -- RFC 4733 events ---------------------------------------------------------------------------


def test_drop_drops_the_events_and_leaves_the_audio() -> None:
    blocker = _blocker("drop")
    audio = rtp.build(0, False, 1000, 3000, SSRC, SILENCE)
    assert blocker.filter(audio) == audio
    assert _run(blocker, _events()) == [None] * 7


@pytest.mark.parametrize(("mode", "digit", "code"), [("zero", 0, 0), ("DTMF", 7, 7)])
def test_zero_and_dtmf_recode_the_events(mode: str, digit: int, code: int) -> None:
    """10.5: ``000a00a0`` … ``008a0320`` for digit 5 under ``zero``; ``070a00a0`` under
    ``DTMF`` with digit 7: the code replaced, flags, duration, header kept."""
    got = _run(_blocker(mode, digit=digit), _events())
    for sent, out in zip(_events(), got, strict=True):
        assert out == sent[:12] + bytes([code]) + sent[13:]


def test_recoding_keeps_every_block_and_the_padding() -> None:
    payload = b"\x05\x0a\x00\xa0\x06\x0a\x00\x50"
    packet = bytearray(rtp.build(101, False, 1, 2, SSRC, payload + b"\x00\x00\x00\x04"))
    packet[0] |= 0x20  # padded: four bytes
    out = _blocker("zero").filter(bytes(packet))
    assert out == bytes(packet[:12]) + b"\x00\x0a\x00\xa0\x00\x0a\x00\x50" + b"\x00\x00\x00\x04"


@pytest.mark.parametrize("mode", ["silence", "tone", "random"])
def test_audio_modes_replace_each_event_packet_that_adds_duration(mode: str) -> None:
    """In the sender's audio codec, same sequence numbers, the timestamps where the samples
    each event packet adds begin; the end's repetitions add nothing and are dropped."""
    blocker = _blocker(mode)
    blocker.filter(rtp.build(0, False, 1002, 3320, SSRC, SILENCE))
    got = _run(blocker, _events())
    assert got[5:] == [None, None]
    for i, out in enumerate(got[:5]):
        assert out is not None
        packet = rtp.parse(out)
        ts = 3480 + 160 * i
        assert (packet.pt, packet.marker, packet.seq, packet.ts, packet.ssrc) == (
            0,
            False,
            1003 + i,
            ts,
            SSRC,
        )
        if mode == "silence":
            assert packet.payload == SILENCE  # 10.5: "\xff" x 160
        elif mode == "tone":
            assert packet.payload == TONE_400  # 10.5, byte for byte
        else:
            assert packet.payload == _ulaw(tones.tone(3, 10, ts, 160, 8000))


def test_events_replaced_in_the_codec_the_sender_last_used() -> None:
    blocker = _blocker("silence")
    blocker.filter(rtp.build(8, False, 1002, 3320, SSRC, b"\xd5" * 160))
    out = blocker.filter(_events()[0])
    assert out is not None and rtp.parse(out).pt == 8 and rtp.parse(out).payload == b"\xd5" * 160


def test_a_tone_of_another_frequency_and_volume() -> None:
    blocker = _blocker("tone", frequency=1000, volume=20)
    out = blocker.filter(_events()[0])
    assert out is not None
    assert rtp.parse(out).payload == _ulaw(sine(1000, 20, 3480, 160, 8000))


# -- in-band tones -----------------------------------------------------------------------------

# what 10.5 sent in place of the tone packet at timestamp 3800, its first 16 bytes
ZERO_AT_3800 = bytes.fromhex("303cb8a1a4f8211c2daf9da3e82a293f")
SEVEN_AT_3800 = bytes.fromhex("eb3b2b2df0a79da74c1f1b29bfa1a0b2")


@pytest.mark.parametrize("mode", ["silence", "tone", "zero", "DTMF", "random"])
def test_in_band_tones_are_replaced_from_detection_to_the_end(mode: str) -> None:
    """The first packet of the tone goes through up to the detector's first block that hits the
    digit (sample 30: the tone starts in the block before; 10.5 lets two packets through);
    from there to the packet in which the digit's end is confirmed the payload is replaced;
    the rest goes on as sent."""
    sent = _tone_stream()
    got = _run(_blocker(mode, digit=7), sent)
    assert got[:3] == sent[:3]
    assert got[11:] == sent[11:]
    for index in range(3, 11):
        out = got[index]
        assert out is not None and out[:12] == sent[index][:12], index
        keep = 30 if index == 3 else 0
        assert out[12 : 12 + keep] == sent[index][12 : 12 + keep]
        ts = 3000 + 160 * index + keep
        payload = out[12 + keep :]
        if mode == "silence":
            assert payload == SILENCE[keep:]
        elif mode == "tone":
            assert payload == _ulaw(sine(400, 10, ts, 160 - keep, 8000))
        elif mode == "zero":
            assert payload == _ulaw(tones.tone(0, 10, ts, 160 - keep, 8000))
        elif mode == "DTMF":
            assert payload == _ulaw(tones.tone(7, 10, ts, 160 - keep, 8000))
        else:
            assert payload == _ulaw(tones.tone(3, 10, ts, 160 - keep, 8000))
    if mode == "zero":
        assert got[5] is not None and got[5][12:28] == ZERO_AT_3800
    if mode == "DTMF":
        assert got[5] is not None and got[5][12:28] == SEVEN_AT_3800


def test_drop_leaves_in_band_tones_alone() -> None:
    sent = _tone_stream()
    assert _run(_blocker("drop"), sent) == sent


def test_speech_like_audio_is_left_alone() -> None:
    """A single 1 kHz sine is no DTMF: nothing replaced."""
    blocker = _blocker("silence")
    for i in range(20):
        payload = _ulaw(sine(1000, 6, 160 * i, 160, 8000))
        packet = rtp.build(0, False, i, 160 * i, SSRC, payload)
        assert blocker.filter(packet) == packet


def test_a_new_ssrc_starts_afresh() -> None:
    blocker = _blocker("tone")
    sent = _tone_stream()
    _run(blocker, sent[:6])  # a digit on: silence would become the tone
    on = blocker.filter(rtp.build(0, False, 9, 4440, SSRC, SILENCE))
    assert on is not None and on[12:] == TONE_400
    fresh = rtp.build(0, False, 50, 9000, SSRC + 1, SILENCE)
    assert blocker.filter(fresh) == fresh  # the new stream's detector has heard nothing


# -- in the engine -----------------------------------------------------------------------------


def test_a_plan_that_only_blocks_keeps_ssrc_and_sequence() -> None:
    security = DtmfSecurity("drop")
    plan = CodecPlan(passthrough=(0, 8, 101), formats=FORMATS, security=security)
    assert only_security(plan)
    engine = Transcoder(plan)
    audio = rtp.build(0, False, 1000, 3000, SSRC, SILENCE)
    assert engine.process(audio) == [audio]
    assert [engine.process(p) for p in _events()] == [[]] * 7
    later = rtp.build(0, False, 1010, 4280, SSRC, SILENCE)
    assert engine.process(later) == [later]


def test_blocking_runs_before_the_transcoder() -> None:
    """PCMU and events to a PCMA-only receiver: with the events dropped first, no tones are
    made of them; the audio is still transcoded (under the engine's SSRC)."""
    plan = CodecPlan(decode=(PCMU,), encode=PCMA, dtmf=(EVENT,), security=DtmfSecurity("drop"))
    assert not only_security(plan)
    engine = Transcoder(plan, new_ssrc=lambda: 0x9999)
    out = engine.process(rtp.build(0, False, 1002, 3320, SSRC, SILENCE))
    assert [rtp.parse(p).payload for p in out] == [b"\xd5" * 160]
    for packet in _events():
        assert engine.process(packet) == []
    out = engine.process(rtp.build(0, False, 1010, 4280, SSRC, SILENCE))
    assert [(rtp.parse(p).ssrc, rtp.parse(p).payload) for p in out] == [(0x9999, b"\xd5" * 160)]


def test_without_blocking_the_same_plan_makes_tones() -> None:
    """The control of the test above: the events do become audio that is no silence."""
    plan = CodecPlan(decode=(PCMU,), encode=PCMA, dtmf=(EVENT,))
    engine = Transcoder(plan, new_ssrc=lambda: 0x9999)
    engine.process(rtp.build(0, False, 1002, 3320, SSRC, SILENCE))
    made = [p for packet in _events() for p in engine.process(packet)]
    assert made and any(rtp.parse(p).payload != b"\xd5" * 160 for p in made)


def test_the_engine_counts_what_blocking_passes_and_drops() -> None:
    plan = CodecPlan(passthrough=(0, 101), formats=FORMATS, security=DtmfSecurity("drop"))
    engine = Transcoder(plan)
    engine.process(rtp.build(0, False, 1000, 3000, SSRC, SILENCE))
    for packet in _events():
        engine.process(packet)
    counters = engine.counters
    assert (counters.packets, counters.sent, counters.octets) == (8, 1, 160)
