"""Codec negotiation under transcoding (relayd/calls/transcoding.py) and the codec plans it
leads to (relayd/calls/codec_plans.py), through the ng commands: one test per rule.

The SDP answers are rtpengine 10.5's: each case is one of its daemon test suite's
transcoding scenarios (named) or what the live daemon answered to the same offer and
answer; the plans are what the workers carry out for each direction.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from relayd.calls.journal import Journal
from relayd.calls.model import Call, CodecSetup, Endpoint, Media
from relayd.calls.snapshot import dump_call, load_call
from relayd.calls.transcoding import parse_spec
from relayd.ipc import SocketSpec
from relayd.ops import admin, ctl
from relayd.plane.forwarding import plan
from relayd.plane.offload import kernel_legs
from relayd.transcode.plan import CodecPlan, Format, parse
from tests.unit.audio_sdp import audio_sdp
from tests.unit.calls import A_ADDR, B_ADDR, LOCAL4, T0, build, req

RTPMAPS = {
    "96": "opus/48000/2",
    "97": "telephone-event/48000",
    "98": "speex/16000",
    "101": "telephone-event/8000",
    "18": "G729/8000",
}


def _sdp(address: str, port: int, formats: str, *extra: str) -> str:
    """An audio section listing ``formats`` (rtpmaps from :data:`RTPMAPS`)."""
    return audio_sdp(RTPMAPS, address, port, formats, *extra)


class _Call:
    """A (tag a) offers, B (tag b) answers; replies as their m= formats and a=rtpmap lines."""

    def __init__(self) -> None:
        self.cmds, _ = build()
        self.last: dict[str, Any] = {}

    def offer(self, formats: str, *extra: str, **keys: Any) -> str:
        known = self.cmds.calls.get("c1")
        to = {"to_tag": "b"} if known is not None and "b" in known.monologues else {}
        body = _sdp(A_ADDR, 5000, formats, *extra)
        return self._formats(req("offer", from_tag="a", sdp=body, **to, **keys))

    def answer(self, formats: str, *extra: str, **keys: Any) -> str:
        body = _sdp(B_ADDR, 6000, formats, *extra)
        return self._formats(req("answer", from_tag="a", to_tag="b", sdp=body, **keys))

    def reverse_offer(self, formats: str, **keys: Any) -> str:
        """A re-INVITE from B."""
        body = _sdp(B_ADDR, 6000, formats)
        return self._formats(req("offer", from_tag="b", to_tag="a", sdp=body, **keys))

    def reverse_answer(self, formats: str, **keys: Any) -> str:
        body = _sdp(A_ADDR, 5000, formats)
        return self._formats(req("answer", from_tag="b", to_tag="a", sdp=body, **keys))

    def _formats(self, request: Any) -> str:
        reply = self.cmds.handle(request, T0)
        assert reply["result"] == "ok", reply
        self.last = reply
        m_line = next(ln for ln in str(reply["sdp"]).splitlines() if ln.startswith("m=audio"))
        return " ".join(m_line.split()[3:])

    def lines(self, prefix: str) -> list[str]:
        return [ln for ln in str(self.last["sdp"]).splitlines() if ln.startswith(prefix)]

    @property
    def call(self) -> Call:
        return self.cmds.calls["c1"]

    def media(self, tag: str) -> Media:
        return self.call.monologues[tag].medias[0]

    def plans(self, silence_detect: float = 0.0) -> dict[str, CodecPlan | None]:
        """The codec plan on each party's RTP socket: "a" for what A sends, "b" for B (with
        the configuration's ``silence-detect``)."""
        owner = {f"{LOCAL4} {self.media(tag).port}": tag for tag in ("a", "b")}
        (forward,) = plan(self.call, silence_detect)
        specs: dict[str, SocketSpec] = {
            owner[s.key]: s for s in forward.sockets if s.key in owner and not s.alias_of
        }
        return {tag: parse(spec.codecs) for tag, spec in specs.items()}


def _fmt(pt: int, name: str, rate: int = 8000, channels: int = 1, **kw: Any) -> Format:
    return Format(pt, name, rate, channels, **kw)


PCMU, PCMA, G722 = _fmt(0, "PCMU"), _fmt(8, "PCMA"), _fmt(9, "G722")


# -- transcode-X ---------------------------------------------------------------------------------


def test_transcode_adds_the_codec_at_its_static_payload_type_and_answers_in_the_offerer_s() -> None:
    # suite: "one codec with one for transcoding"; the answerer picks the added codec only
    call = _Call()
    assert call.offer("0", flags=["transcode-PCMA"]) == "0 8"
    assert call.lines("a=rtpmap") == ["a=rtpmap:0 PCMU/8000", "a=rtpmap:8 PCMA/8000"]
    assert call.answer("8") == "0"
    plans = call.plans()
    assert plans["a"] == CodecPlan(decode=(PCMU,), encode=PCMA)
    assert plans["b"] == CodecPlan(decode=(PCMA,), encode=PCMU)


def test_an_answer_that_keeps_the_offerer_s_codec_needs_no_codec_work() -> None:
    # suite: "symmetric codecs w missing answer codec, no flag"
    call = _Call()
    assert call.offer("0 8", codec={"transcode": ["G722"]}) == "0 8 9"
    assert call.answer("0") == "0"
    assert call.plans() == {"a": None, "b": None}
    call = _Call()
    call.offer("0 8", codec={"transcode": ["G722"]})
    assert call.answer("9") == "0"  # transcoded to the offerer's first
    plans = call.plans()
    assert plans["b"] == CodecPlan(decode=(G722,), encode=PCMU)
    assert plans["a"] == CodecPlan(decode=(PCMU,), encode=G722)  # A was answered PCMU


def test_an_answer_with_both_passes_one_through_and_transcodes_the_other() -> None:
    # suite: "add some other codec, accept second PT"
    call = _Call()
    assert call.offer("8 0", codec={"transcode": ["G722"]}) == "8 0 9"
    assert call.answer("0 9") == "0 8"
    plans = call.plans()
    assert plans["b"] == CodecPlan(passthrough=(0,), decode=(G722,), encode=PCMA)
    assert plans["a"] == CodecPlan(passthrough=(0,), decode=(PCMA,), encode=PCMU)


def test_added_codecs_take_the_lowest_free_dynamic_payload_type_and_opus_is_stereo() -> None:
    # suite: "multi codec offer/answer w single-codec and tp-event"
    call = _Call()
    assert call.offer("0 8 101", codec={"transcode": ["opus"]}) == "0 8 96 97 101"
    assert call.lines("a=rtpmap:9") == [
        "a=rtpmap:96 opus/48000/2",
        "a=rtpmap:97 telephone-event/48000",
    ]
    assert "a=fmtp:97 0-15" in call.lines("a=fmtp")
    assert call.answer("0 8 96 101 97", flags=["single codec"]) == "0 101"


def test_a_codec_relayd_cannot_transcode_is_not_added_and_is_stripped() -> None:
    # 10.5 ignores a transcode codec it cannot encode (EVS, AMR here): relayd likewise for
    # one outside PCMU, PCMA, G722 and opus
    call = _Call()
    assert call.offer("0", flags=["transcode-G729", "transcode-FOO"]) == "0"
    # opus in more than two channels is no codec of relayd's
    assert _Call().offer("0", flags=["transcode-opus/48000/6"]) == "0"
    # once an offer adds a codec (CN and telephone-event too) or changes the packet time,
    # 10.5 strips the codecs it cannot transcode (EVS, asked), relayd those it cannot
    assert _Call().offer("8 18 98", codec={"transcode": ["PCMU"]}) == "8 0"
    assert _Call().offer("0 18", codec={"transcode": ["CN"]}) == "0 13"
    assert _Call().offer("0 18", codec={"transcode": ["telephone-event"]}) == "0 96"
    assert _Call().offer("0 18", ptime_reverse=30) == "0"
    # not where nothing is added: accept, consume, always-transcode, a codec already there
    assert _Call().offer("0 18", codec={"accept": ["PCMU"]}) == "0 18"
    assert _Call().offer("0 18", codec={"consume": ["PCMU"]}) == "18"
    assert _Call().offer("0 18", flags=["always-transcode"]) == "0 18"
    assert _Call().offer("0 18", codec={"transcode": ["PCMU"]}) == "0 18"
    # nor where the offerer has nothing relayd can decode: nothing is transcoded
    assert _Call().offer("18", codec={"transcode": ["PCMA"]}) == "18 8"


def test_a_transcode_option_s_bitrate_goes_to_the_encoder() -> None:
    call = _Call()
    assert call.offer("0", flags=["transcode-opus/48000/2/32000"]) == "0 96"
    assert call.answer("96") == "0"
    plans = call.plans()
    assert plans["a"] is not None and plans["a"].extra == {"bitrate": 32000}
    assert plans["b"] is not None and plans["b"].extra == {}


def test_transcode_parameters_follow_10_5() -> None:
    assert parse_spec("opus/48000/2/32000//useinbandfec=1").fmtp == ""
    spec = parse_spec("opus/48000/1/32000/useinbandfec=1")
    assert (spec.name, spec.rate, spec.channels, spec.bitrate) == ("opus", 48000, 1, 32000)
    assert spec.fmtp == "useinbandfec=1"
    call = _Call()
    # opus is always 48000 Hz; mono is written without a channel count
    assert call.offer("0", flags=["transcode-opus/16000/1"]) == "0 96"
    assert call.lines("a=rtpmap:96") == ["a=rtpmap:96 opus/48000"]
    # the codec is spelled as the option spells it
    call = _Call()
    call.offer("0", codec={"transcode": ["pcma"]})
    assert call.lines("a=rtpmap:8") == ["a=rtpmap:8 pcma/8000"]


def test_codecs_put_back_go_before_dtmf_and_cn_and_stay_the_offerer_s() -> None:
    # 10.5 (asked): ``offer`` and ``transcode`` put a removed codec back before the
    # telephone-event; a stripped codec brought back is the offerer's again
    assert _Call().offer("0 8 101", codec={"strip": ["PCMU"], "offer": ["PCMU"]}) == "8 0 101"
    call = _Call()
    assert call.offer("0 8 101", codec={"strip": ["PCMU"], "transcode": ["PCMU"]}) == "8 0 101"
    assert call.answer("0") == "0"
    # telephone-event stripped from the offerer: none is added for a new clock rate
    codec = {"strip": ["all"], "offer": ["PCMU"], "transcode": ["G722"]}
    assert _Call().offer("0 8 101 13", codec=codec) == "0 9"


def test_mask_all_and_transcode_offer_in_the_order_the_options_name() -> None:
    # suite: "some t/c options with answer only non-t/c codec"
    call = _Call()
    offered = call.offer(
        "96 8 101 97",
        codec={"mask": ["all"], "transcode": ["G722", "opus", "PCMA", "telephone-event"]},
    )
    # the offerer's telephone-event codecs come back in its order, each before the first
    assert offered == "9 96 8 97 101"
    assert call.answer("8 101") == "8 101"
    # A was answered its own PCMA and DTMF, B took them: no codec work either way
    assert call.plans() == {"a": None, "b": None}


def test_a_masked_codec_is_still_taken_from_the_offerer_and_transcoded() -> None:
    call = _Call()
    assert call.offer("96 8 101 97", codec={"mask": ["opus"], "transcode": ["G722"]}) == "8 9 101"
    assert call.answer("8 101") == "8 101"
    plans = call.plans()
    assert plans["b"] is None
    a = plans["a"]
    assert a is not None and a.passthrough == (8, 101)
    assert a.decode == (_fmt(96, "opus", 48000, 2),)
    assert a.encode == PCMA
    assert a.dtmf == (_fmt(97, "telephone-event", 48000),)
    assert a.dtmf_out == _fmt(101, "telephone-event")


# -- accept, consume, always-transcode ------------------------------------------------------------


def test_accept_answers_in_the_accepted_codec_and_transcodes_both_ways() -> None:
    # suite: "codec-accept"
    call = _Call()
    assert call.offer("0 8", codec={"accept": ["PCMU"]}) == "0 8"
    assert call.answer("8") == "0"
    plans = call.plans()
    assert plans["b"] == CodecPlan(decode=(PCMA,), encode=PCMU)
    assert plans["a"] == CodecPlan(decode=(PCMU,), encode=PCMA)


def test_consume_removes_from_the_offer_and_answers_in_the_consumed_codec() -> None:
    # suite: "codec-consume"
    call = _Call()
    assert call.offer("0 8", codec={"consume": ["PCMU"]}) == "8"
    assert call.answer("8") == "0"


def test_always_transcode_decodes_even_the_same_codec() -> None:
    call = _Call()
    assert call.offer("0 101", flags=["always transcode"]) == "0 101"
    assert call.answer("0") == "0 101"  # in-band DTMF from B becomes events to A
    plans = call.plans()
    dtmf = _fmt(101, "telephone-event")
    # B's in-band tones may go to A as events (suite: "reverse DTMF transcoding - active")
    assert plans["b"] == CodecPlan(decode=(PCMU,), encode=PCMU, dtmf_out=dtmf)
    # A's DTMF events: B takes none, so they are dropped (the engine may play them as tones)
    assert plans["a"] == CodecPlan(decode=(PCMU,), encode=PCMU, dtmf=(dtmf,))
    # a re-offer without options keeps it, as 10.5 does
    assert call.offer("0 101") == "0 101"
    assert call.answer("0") == "0 101"


# -- CN ------------------------------------------------------------------------------------------


def test_cn_added_accepted_and_consumed() -> None:
    cn = _fmt(13, "CN")
    # suite: "add CN": offered to B, which sends it; A never sees it
    call = _Call()
    assert call.offer("0", codec={"transcode": ["CN"]}) == "0 13"
    assert call.answer("0 13") == "0"
    assert call.plans()["b"] == CodecPlan(passthrough=(0,), cn=(cn,))
    # and A's silence goes to B as CN (the suite sends a silent frame, expects CN), where
    # the configuration's silence-detect says what silence is (the suite runs with 1 %)
    assert call.plans()["a"] == CodecPlan(decode=(PCMU,), encode=PCMU, cn_out=cn)
    assert call.plans(1.0)["a"] == CodecPlan(
        decode=(PCMU,), encode=PCMU, cn_out=cn, silence_detect=1.0
    )
    assert call.plans(1.0)["b"] == CodecPlan(passthrough=(0,), cn=(cn,))  # no CN out: as is
    # suite: "accept CN": A's CN goes back where every packet is transcoded
    call = _Call()
    assert call.offer("0 13", flags=["always-transcode"]) == "0 13"
    assert call.answer("0") == "0 13"
    # suite: "consume CN": not offered to B, answered to A, which sends it: consumed
    call = _Call()
    codec = {"consume": ["CN"], "strip": ["all"], "offer": ["PCMA", "PCMU", "telephone-event"]}
    assert call.offer("8 0 13 101", codec=codec) == "8 0 101"
    assert call.answer("8 101") == "8 13 101"
    a = call.plans()["a"]
    assert a is not None and a.cn == (cn,) and a.cn_out is None


# -- telephone-event ------------------------------------------------------------------------------


def test_telephone_event_is_added_per_clock_rate_and_translated_with_the_audio() -> None:
    # suite: "DTMF PT already present, add one codec"
    call = _Call()
    assert call.offer("8 101", codec={"transcode": ["opus"]}) == "8 96 97 101"
    assert call.answer("96 97") == "8 101"
    b = call.plans()["b"]
    assert b is not None
    assert b.decode == (_fmt(96, "opus", 48000, 2),) and b.encode == PCMA
    assert b.dtmf == (_fmt(97, "telephone-event", 48000),)
    assert b.dtmf_out == _fmt(101, "telephone-event")
    # suite: "PCM to RFC DTMF transcoding": asked for, one per clock rate; A's tones go to
    # B as events, B's events are taken from it (A takes none)
    call = _Call()
    assert call.offer("0", codec={"transcode": ["telephone-event"]}) == "0 96"
    assert call.lines("a=rtpmap:96") == ["a=rtpmap:96 telephone-event/8000"]
    assert call.answer("0 96", "a=rtpmap:96 telephone-event/8000", "a=fmtp:96 0-15") == "0"
    event = _fmt(96, "telephone-event", fmtp="0-15")
    assert call.plans() == {
        "a": CodecPlan(decode=(PCMU,), encode=PCMU, dtmf_out=event),
        "b": CodecPlan(passthrough=(0,), dtmf=(event,)),
    }


# -- ptime ----------------------------------------------------------------------------------------


def test_ptime_rewrites_the_offer_and_ptime_reverse_the_answer() -> None:
    # suite: "ptime=50 in, change to 30, reverse to 20, response 40"
    call = _Call()
    call.offer("0", "a=ptime:50", ptime=30, ptime_reverse=20)
    assert call.lines("a=ptime") == ["a=ptime:30"]
    call.answer("0", "a=ptime:40")
    assert call.lines("a=ptime") == ["a=ptime:20"]
    plans = call.plans()
    assert plans["a"] == CodecPlan(decode=(PCMU,), encode=_fmt(0, "PCMU", ptime=30))
    assert plans["b"] == CodecPlan(decode=(PCMU,), encode=_fmt(0, "PCMU", ptime=20))
    # suite: "ptime=50 in, change to 30, default response": the offerer's own goes back
    call = _Call()
    call.offer("0", "a=ptime:50", ptime=30)
    call.answer("0")
    assert call.lines("a=ptime") == ["a=ptime:50"]
    # B says no ptime (20 ms) and A is sent 50 ms packets
    assert call.plans()["b"] == CodecPlan(decode=(PCMU,), encode=_fmt(0, "PCMU", ptime=50))
    # suite: "default ptime in, ptime=30 out, default response": nobody names a ptime for
    # B -> A, yet B's 60 and 10 ms packets reach A as 20 ms ones (a ptime option puts both
    # directions through the encoder)
    call = _Call()
    call.offer("0", ptime=30)
    call.answer("0")
    plans = call.plans()
    assert plans["a"] == CodecPlan(decode=(PCMU,), encode=_fmt(0, "PCMU", ptime=30))
    assert plans["b"] == CodecPlan(decode=(PCMU,), encode=_fmt(0, "PCMU", ptime=20))
    # suite: "ptime=30 in, no change, reverse to 20, response 40": A -> B is encoded at A's
    # own 30 ms (not B's 40), B -> A at the reverse 20 ms
    call = _Call()
    call.offer("0", "a=ptime:30", ptime_reverse=20)
    call.answer("0", "a=ptime:40")
    plans = call.plans()
    assert plans["a"] == CodecPlan(decode=(PCMU,), encode=_fmt(0, "PCMU", ptime=30))
    assert plans["b"] == CodecPlan(decode=(PCMU,), encode=_fmt(0, "PCMU", ptime=20))


# -- re-INVITEs -----------------------------------------------------------------------------------


def test_a_re_offer_without_options_offers_only_the_offerer_s_codecs() -> None:
    call = _Call()
    assert call.offer("0", flags=["transcode-PCMA"]) == "0 8"
    assert call.answer("8") == "0"
    # the re-INVITE drops the option: PCMA is not offered again, and an answer that takes
    # PCMU passes through
    assert call.offer("0") == "0"
    assert call.answer("0") == "0"
    assert call.plans() == {"a": None, "b": None}
    # and one that adds it back transcodes again
    assert call.offer("0", flags=["transcode-PCMA"]) == "0 8"
    assert call.answer("8") == "0"
    assert call.plans()["a"] == CodecPlan(decode=(PCMU,), encode=PCMA)


def test_a_re_offer_from_the_callee_keeps_transcoding_what_the_first_offer_added() -> None:
    # 10.5 (asked): A offered PCMU, relayd added PCMA, B took PCMA; B's re-INVITE offers
    # PCMA (and PCMU), A answers PCMU: B is answered PCMA, and relayd goes on transcoding
    for offered_back in ("8", "8 0"):
        call = _Call()
        assert call.offer("0", flags=["transcode-PCMA"]) == "0 8"
        assert call.answer("8") == "0"
        assert call.reverse_offer(offered_back) == offered_back
        assert call.reverse_answer("0") == "8"
        plans = call.plans()
        assert plans["a"] == CodecPlan(decode=(PCMU,), encode=PCMA)
        assert plans["b"] == CodecPlan(decode=(PCMA,), encode=PCMU)
    # where the first answer took the offerer's codec, nothing was added: no transcoding
    call = _Call()
    call.offer("0 8", codec={"transcode": ["G722"]})
    call.answer("0")
    assert call.reverse_offer("0 8") == "0 8"
    assert call.reverse_answer("8") == "8"
    assert call.plans() == {"a": None, "b": None}


def test_a_re_offer_from_the_callee_keeps_the_packet_times_the_other_way_round() -> None:
    call = _Call()
    call.offer("0", ptime=30)
    assert call.lines("a=ptime") == ["a=ptime:30"]
    call.answer("0")
    call.reverse_offer("0")
    assert call.lines("a=ptime") == []
    call.reverse_answer("0")
    assert call.lines("a=ptime") == ["a=ptime:30"]  # B is still sent 30 ms packets


# -- the kernel path, the journal, query ----------------------------------------------------------


def _confirm(call: Call) -> None:
    for tag, address, port in (("a", A_ADDR, 5000), ("b", B_ADDR, 6000)):
        for stream in call.monologues[tag].medias[0].streams:
            stream.confirmed = True
            stream.endpoint = Endpoint(address, port + stream.rtcp)


def test_a_media_with_a_plan_either_way_stays_off_the_kernel_path() -> None:
    call = _Call()
    call.offer("8 0", codec={"transcode": ["G722"]})
    call.answer("0 9")
    _confirm(call.call)
    assert kernel_legs(call.call) == []  # both directions transcode
    call = _Call()
    call.offer("0 8", codec={"transcode": ["G722"]})
    call.answer("0")
    _confirm(call.call)
    assert len(kernel_legs(call.call)) == 4  # no codec work: RTP and RTCP, both ways
    # suite: "one codec with one for transcoding": B may send PCMA, A takes only PCMU;
    # what A sends needs no codec work, but cannot go to the kernel alone: its forward's
    # conntrack entry would carry B's packets back untranscoded (plane/offload.py)
    call = _Call()
    call.offer("0", flags=["transcode-PCMA"])
    assert call.answer("0 8") == "0"
    _confirm(call.call)
    assert call.plans()["a"] is None and call.plans()["b"] is not None
    assert kernel_legs(call.call) == []


def test_what_the_plans_are_made_of_survives_the_journal(tmp_path: Path) -> None:
    call = _Call()
    call.offer("8 101", codec={"transcode": ["opus"]}, flags=["always-transcode"], ptime=30)
    call.answer("96 97")
    before = call.plans()
    setup = call.media("b").codec_setup
    assert isinstance(setup, CodecSetup) and setup.always and setup.ptime == 30
    back = load_call(json.loads(json.dumps(dump_call(call.call))))
    assert back == call.call
    journal = Journal(tmp_path)
    journal.save(call.call)
    journal.flush()
    journal.close()
    (restored,) = Journal(tmp_path).load()
    assert restored.monologues["b"].medias[0].codec_setup == setup
    call.cmds.calls["c1"] = restored
    assert call.plans() == before and before["a"] is not None


def test_query_marks_a_transcoding_media_and_lists_its_codecs() -> None:
    call = _Call()
    call.offer("0", flags=["transcode-PCMA"])
    call.answer("8")
    reply = call.cmds.handle(req("query"), T0)
    media_a = reply["tags"]["a"]["medias"][0]
    assert "transcoding" in media_a["flags"]
    assert media_a["codecs"] == {"in": ["0 PCMU/8000"], "out": ["0 PCMU/8000"]}
    media_b = reply["tags"]["b"]["medias"][0]
    assert media_b["codecs"] == {"in": ["8 PCMA/8000"], "out": ["8 PCMA/8000"]}
    plain = _Call()
    plain.offer("0")
    plain.answer("0")
    media = plain.cmds.handle(req("query"), T0)["tags"]["a"]["medias"][0]
    assert "transcoding" not in media["flags"] and "codecs" not in media


def test_relayctl_list_callid_shows_what_each_party_sends_and_is_sent(
    capsys: pytest.CaptureFixture[str],
) -> None:
    call = _Call()
    call.offer("0", flags=["transcode-PCMA"])
    call.answer("8")
    detail = admin._call_detail(call.call, T0)
    caller, callee = detail["parties"]
    assert caller["medias"][0]["codecs_in"] == ["0 PCMU/8000"]
    assert callee["medias"][0]["codecs_in"] == ["8 PCMA/8000"]
    ctl._print_admin("list", "callid", json.loads(json.dumps(detail)))
    out = capsys.readouterr().out
    assert "transcoding: sends 0 PCMU/8000; is sent 0 PCMU/8000" in out
    assert "transcoding: sends 8 PCMA/8000; is sent 8 PCMA/8000" in out
    plain = _Call()
    plain.offer("0")
    plain.answer("0")
    media = admin._call_detail(plain.call, T0)["parties"][0]["medias"][0]
    assert media["codecs_in"] == media["codecs_out"] == []
