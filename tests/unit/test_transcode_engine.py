"""The per-direction transcoder on rtpengine 10.5's own packet sequences (t/auto-daemon-tests.pl
at mr10.5.3.5): exact bytes, sequence numbers, timestamps and SSRC where rtpengine's are
deterministic (G.711), and the engine's own rules for loss, reordering and restarts."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relayd.transcode import rtp
from relayd.transcode.codecs import CodecError
from relayd.transcode.plan import CodecPlan, Format
from relayd.transcode.transcoder import Transcoder, describe

PCMU = Format(0, "PCMU", 8000)
PCMA = Format(8, "PCMA", 8000)
# the suite's "DTMF scaling": PCMU and telephone-event at 16 kHz in, PCMA and events at 8 kHz out
SCALED_EVENTS = CodecPlan(
    decode=(Format(100, "PCMU", 16000),),
    encode=PCMA,
    dtmf=(Format(101, "telephone-event", 16000),),
    dtmf_out=Format(96, "telephone-event", 8000),
)
OUT_SSRC = 0x0BAD_CAFE


def engine(plan: CodecPlan) -> Transcoder:
    return Transcoder(plan, lambda: OUT_SSRC)


def send(
    t: Transcoder,
    pt: int,
    seq: int,
    ts: int,
    payload: bytes,
    ssrc: int = 0x5678,
    marker: bool = False,
) -> list[tuple[int, bool, int, int, int, bytes]]:
    out = []
    for data in t.process(rtp.build(pt, marker, seq, ts, ssrc, payload)):
        p = rtp.parse(data)
        out.append((p.pt, p.marker, p.seq, p.ts, p.ssrc, p.payload))
    return out


def test_one_codec_with_one_for_transcoding() -> None:
    """Scenario "one codec with one for transcoding" (line 12724), B to A: PCMU passes under
    the new SSRC with its own numbers, PCMA becomes PCMU (")" x 160 for "\\x00" x 160), the
    jump to 62011 is a sequence reset that the output runs on from (#664)."""
    t = engine(CodecPlan(passthrough=(0,), decode=(PCMA,), encode=PCMU))
    z = b"\x00" * 160
    assert send(t, 0, 2000, 4000, z) == [(0, False, 2000, 4000, OUT_SSRC, z)]
    assert send(t, 0, 2000, 4000, z) == [(0, False, 2000, 4000, OUT_SSRC, z)]
    assert send(t, 0, 2001, 4160, z) == [(0, False, 2001, 4160, OUT_SSRC, z)]
    assert send(t, 0, 2010, 5600, z) == [(0, False, 2010, 5600, OUT_SSRC, z)]
    converted = b")" * 160
    assert send(t, 8, 2011, 4000 + 160 * 11, z) == [
        (0, False, 2011, 4000 + 160 * 11, OUT_SSRC, converted)
    ]
    assert send(t, 8, 62011, 4000 + 160 * 12, z) == [
        (0, False, 2012, 4000 + 160 * 12, OUT_SSRC, converted)
    ]
    assert send(t, 8, 62012, 4000 + 160 * 13, z) == [
        (0, False, 2013, 4000 + 160 * 13, OUT_SSRC, converted)
    ]
    assert send(t, 0, 62013, 4000 + 160 * 14, z) == [(0, False, 2014, 4000 + 160 * 14, OUT_SSRC, z)]
    assert describe(t.plan) == "PCMA->PCMU"


def test_ptime_20_in_30_out_with_a_reset() -> None:
    """Scenario "default ptime in, ptime=30 out" (line 13418), A to B."""
    t = engine(CodecPlan(decode=(PCMU,), encode=Format(0, "PCMU", 8000, ptime=30)))
    z = b"\x00" * 160
    seen = [send(t, 0, 1000 + i, 3000 + 160 * i, z) for i in range(5)]
    assert [[(p[2], p[3], len(p[5])) for p in s] for s in seen] == [
        [], [(1000, 3000, 240)], [(1001, 3240, 240)], [], [(1002, 3480, 240)],
    ]  # fmt: skip
    # a 60 ms packet with a sequence and timestamp reset: the output runs on
    out = send(t, 0, 8000, 500000, b"\x00" * 480)
    assert [(p[2], p[3], p[5]) for p in out] == [
        (1003, 3720, z[:1] * 240),
        (1004, 3960, z[:1] * 240),
    ]


def test_ptime_60_and_10_in_20_out_with_reordering() -> None:
    """The same scenario, B to A: 60 ms packets cut in three, 10 ms ones joined in pairs, a
    packet that overtook its predecessor waits for it."""
    t = engine(CodecPlan(decode=(PCMU,), encode=PCMU))
    x = b"\x88"
    got = []
    sent = [(4000, 5000, 480), (4001, 5480, 480), (4002, 5960, 80), (4003, 6040, 80),
            (4005, 6200, 80), (4004, 6120, 80), (4006, 6280, 80), (4007, 6360, 80)]  # fmt: skip
    for seq, ts, size in sent:
        got.append([(p[2], p[3], p[5]) for p in send(t, 0, seq, ts, x * size, 0x4567)])
    assert got == [
        [(4000, 5000, x * 160), (4001, 5160, x * 160), (4002, 5320, x * 160)],
        [(4003, 5480, x * 160), (4004, 5640, x * 160), (4005, 5800, x * 160)],
        [], [(4006, 5960, x * 160)], [], [(4007, 6120, x * 160)], [], [(4008, 6280, x * 160)],
    ]  # fmt: skip


def test_telephone_event_rescaled_to_the_output_clock() -> None:
    """Scenario "DTMF scaling" (line 14834), its packets exactly: telephone-event/16000 goes
    out as telephone-event/8000 with its durations halved, the marker kept. The 16 to 8 kHz
    resampler holds some samples back, so each audio packet goes out one input later; the
    event starts where the next audio packet would have (3000 + 2 x 160), the audio cut
    for that packet is dropped, and the audio after the event runs on from the event's
    start by the input's timestamps (3 x 320 at 16 kHz later: 3320 + 480)."""
    t = engine(SCALED_EVENTS)
    z = b"\x00" * 320
    a = b"\x2a" * 160
    assert send(t, 100, 1000, 3000, z) == []
    assert send(t, 100, 1001, 3320, z) == [(8, False, 1000, 3000, OUT_SSRC, a)]
    assert send(t, 100, 1002, 3640, z) == [(8, False, 1001, 3160, OUT_SSRC, a)]
    event = [
        (True, 1003, b"\x08\x0f\x01\x40", b"\x08\x0f\x00\xa0"),
        (False, 1004, b"\x08\x0f\x02\x80", b"\x08\x0f\x01\x40"),
        (False, 1005, b"\x08\x8f\x03\xc0", b"\x08\x8f\x01\xe0"),
        (False, 1006, b"\x08\x8f\x03\xc0", b"\x08\x8f\x01\xe0"),
        (False, 1007, b"\x08\x8f\x03\xc0", b"\x08\x8f\x01\xe0"),
    ]
    for marker, seq, payload, out in event:
        assert send(t, 101, seq, 3960, payload, marker=marker) == [
            (96, marker, seq - 1, 3320, OUT_SSRC, out)
        ]
    assert send(t, 100, 1008, 3000 + 320 * 6, z) == [(8, False, 1007, 3800, OUT_SSRC, a)]


def test_telephone_event_waits_for_its_turn() -> None:
    """An event packet early (1005 before 1004) waits in the queue like audio."""
    t = engine(SCALED_EVENTS)
    for i in range(3):
        send(t, 100, 1000 + i, 3000 + 320 * i, b"\x00" * 320)
    start = send(t, 101, 1003, 3960, b"\x08\x0f\x01\x40", marker=True)
    assert [(p[0], p[1], p[4], p[5]) for p in start] == [(96, True, OUT_SSRC, b"\x08\x0f\x00\xa0")]
    assert send(t, 101, 1005, 3960, b"\x08\x8f\x03\xc0") == []  # 1004 has not come yet
    both = send(t, 101, 1004, 3960, b"\x08\x0f\x02\x80")
    assert [p[5] for p in both] == [b"\x08\x0f\x01\x40", b"\x08\x8f\x01\xe0"]
    assert [p[2] for p in start + both] == [1002, 1003, 1004]


def test_consumed_dtmf_leaves_no_hole_in_the_numbering() -> None:
    """A telephone-event nobody takes and no codec can carry (the audio passed through is a
    dynamic payload type: nothing to make a tone in) is consumed: it lowers the offset."""
    t = engine(CodecPlan(passthrough=(96,), dtmf=(Format(101, "telephone-event", 8000),)))
    z = b"\x00" * 160
    assert send(t, 96, 10, 0, z)[0][2] == 10
    assert send(t, 101, 11, 160, b"\x01\x00\x00\xa0") == []
    assert [(p[2], p[3]) for p in send(t, 96, 12, 320, z)] == [(11, 320)]


def test_cn_passed_on_under_its_output_payload_type() -> None:
    plan = CodecPlan(
        decode=(PCMA,), encode=PCMU, cn=(Format(13, "CN", 8000),), cn_out=Format(19, "CN", 8000)
    )
    t = engine(plan)
    send(t, 8, 10, 1000, b"\x00" * 160)
    assert send(t, 13, 11, 1160, b"\x40") == [(19, False, 11, 1160, OUT_SSRC, b"\x40")]


def test_loss_stays_a_gap_and_late_packets_are_dropped() -> None:
    """4 and 3 swapped (waited for), 6 and 7 lost (given up on once 8 is 60 ms on), 10 and 9
    swapped, 5 again after it went out: every output timestamp is where its input's was (no
    drift), the numbers keep the gap."""
    t = engine(CodecPlan(decode=(PCMU,), encode=PCMA))
    order = [0, 1, 2, 4, 3, 5, 8, 10, 9, 11, 12, 5]
    out = []
    for i in order:
        out += send(t, 0, 100 + i, 8000 + 160 * i, bytes([i]) * 160)
    seqs = [p[2] for p in out]
    assert seqs == sorted(seqs)
    assert all((p[3] - 8000) == (p[2] - 100) * 160 for p in out)
    assert [p[2] - 100 for p in out] == [0, 1, 2, 3, 4, 5, 8, 9, 10, 11, 12]
    assert t.counters.duplicates == 1
    assert t.lost == 2


def test_loss_across_a_ptime_change_keeps_the_grid() -> None:
    t = engine(CodecPlan(decode=(PCMU,), encode=Format(8, "PCMA", 8000, ptime=40)))
    out = []
    for i in (0, 1, 2, 5, 6, 7, 8, 9, 10, 11, 12):  # 3 and 4 lost
        out += send(t, 0, 100 + i, 160 * i, b"\x00" * 160)
    # every packet on the 40 ms grid; the one the hole began in completed with silence
    assert [p[3] for p in out] == [0, 320, 640, 960, 1280, 1600]
    assert all(len(p[5]) == 320 for p in out)


def test_a_new_input_ssrc_is_a_new_output_stream() -> None:
    ssrcs = iter([1, 2, 3])
    t = Transcoder(CodecPlan(decode=(PCMU,), encode=PCMA), lambda: next(ssrcs))
    first = send(t, 0, 10, 0, b"\x00" * 160, ssrc=0x1111)
    second = send(t, 0, 5000, 90000, b"\x00" * 160, ssrc=0x2222)
    assert (first[0][4], first[0][2], first[0][3]) == (1, 10, 0)
    assert (second[0][4], second[0][2], second[0][3]) == (2, 5000, 90000)


def test_what_is_not_in_the_plan_or_not_rtp_is_dropped_and_counted() -> None:
    t = engine(CodecPlan(decode=(PCMA,), encode=PCMU))
    assert send(t, 9, 1, 0, b"\x00" * 160) == []
    assert t.process(b"\x00" * 20) == []
    assert t.process(b"\x80") == []
    assert (t.counters.dropped, t.counters.errors) == (1, 2)


def test_a_codec_that_cannot_be_opened() -> None:
    with pytest.raises(CodecError):
        engine(CodecPlan(decode=(PCMA,), encode=Format(96, "AMR-WB", 16000)))
    with pytest.raises(CodecError):
        engine(CodecPlan(decode=(Format(96, "speex", 8000),), encode=PCMU))
    with pytest.raises(CodecError):
        engine(CodecPlan(decode=(PCMA,)))


_FUZZED = Transcoder(
    CodecPlan(
        passthrough=(0,),
        decode=(Format(96, "opus", 48000, 2), Format(9, "G722", 8000), PCMA),
        encode=Format(97, "opus", 48000, 1, ptime=40),
        dtmf=(Format(101, "telephone-event", 8000),),
        dtmf_out=Format(101, "telephone-event", 48000),
    )
)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([0, 8, 9, 96, 101, 13]),
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFFFFFF),
    st.integers(0, 3),
    st.binary(max_size=300),
)
def test_garbage_payloads_never_raise(
    pt: int, seq: int, ts: int, ssrc: int, payload: bytes
) -> None:
    """Whatever comes in (random payloads for every decoder, random numbering, new SSRCs):
    a list of well-formed packets comes out, or nothing."""
    for data in _FUZZED.process(rtp.build(pt, False, seq, ts, ssrc, payload)):
        assert rtp.parse(data).pt in (0, 97, 101)


def test_ptime_50_in_30_out_and_30_in_20_out() -> None:
    """ "ptime=50 in, change to 30, reverse to 20" (line 13865) and "ptime=30 in, no change,
    reverse to 20" (line 14010), with the plans they need (A to B: PCMU at 30 ms; B to A:
    PCMU at 20 ms): 2 x 50 ms become 3 x 30 ms with 10 ms left, 20 ms more make another;
    4 x 30 ms become 6 x 20 ms. (The negotiation does not give these plans yet.)"""
    t = engine(CodecPlan(decode=(PCMU,), encode=Format(0, "PCMU", 8000, ptime=30)))
    z = b"\x00" * 240
    assert [p[2:4] for p in send(t, 0, 1000, 3000, b"\x00" * 400)] == [(1000, 3000)]
    assert [p[2:4] for p in send(t, 0, 1001, 3400, b"\x00" * 400)] == [(1001, 3240), (1002, 3480)]
    assert send(t, 0, 1002, 3800, b"\x00" * 160) == [(0, False, 1003, 3720, OUT_SSRC, z)]
    t = engine(CodecPlan(decode=(PCMU,), encode=Format(0, "PCMU", 8000, ptime=20)))
    out = [send(t, 0, 4000 + i, 5000 + 240 * i, b"\x88" * 240) for i in range(4)]
    assert [[p[2:4] for p in o] for o in out] == [
        [(4000, 5000)], [(4001, 5160), (4002, 5320)], [(4003, 5480)], [(4004, 5640), (4005, 5800)],
    ]  # fmt: skip
    assert {p[5] for o in out for p in o} == {b"\x88" * 160}
