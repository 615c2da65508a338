"""rtpengine 10.5's answers for codec manipulation and media echo (its daemon test suite's
scenarios "multi codec offer/answer w single-codec", "DTMF PT already present, strip one codec",
"gh #793 b1", "echo=fwd" and "echo=bkw", and what the real rtpengine answered to variants of
them: codec options, media echo, rtcp-mux per via-branch, the ports of a moved answerer),
kept here so that CI holds the behaviour without the suite. ``accept`` and ``consume``
switch transcoding on (:mod:`relayd.calls.transcoding`); their answers here are what 10.5
answered to the same offers and answers.
"""

from __future__ import annotations

from typing import Any

from relayd.calls.model import Call
from relayd.ipc import SocketSpec
from relayd.plane.forwarding import plan
from relayd.plane.offload import kernel_legs
from tests.unit.audio_sdp import audio_sdp
from tests.unit.calls import A_ADDR, B_ADDR, LOCAL4, T0, build, req, sdp

# -- media echo ---------------------------------------------------------------------------------


def _echo_call(offer_keys: dict[str, Any], answer_keys: dict[str, Any] | None = None) -> Call:
    cmds, _ = build()
    reply = cmds.handle(req("offer", from_tag="a", sdp=sdp(), **offer_keys), T0)
    assert reply["result"] == "ok", reply
    answer = req("answer", from_tag="a", to_tag="b", sdp=sdp(B_ADDR, 6000), **(answer_keys or {}))
    assert cmds.handle(answer, T0)["result"] == "ok"
    return cmds.calls["c1"]


def _routes(call: Call) -> dict[str, tuple[str, str]]:
    """Per party: where its RTP and its RTCP go ("a"/"b": from our socket towards that
    party, "": nowhere)."""
    owner = {}
    for tag in ("a", "b"):
        port = call.monologues[tag].medias[0].port
        owner[f"{LOCAL4} {port}"] = owner[f"{LOCAL4} {port + 1}"] = tag
    (forward,) = plan(call)
    specs: dict[str, list[SocketSpec]] = {"a": [], "b": []}
    for spec in forward.sockets:
        specs[owner[spec.key]].append(spec)
    return {
        tag: (owner.get(rtp.out, ""), owner.get(rtcp.out, "")) for tag, (rtp, rtcp) in specs.items()
    }


def test_without_media_echo_each_party_s_media_goes_to_the_other() -> None:
    assert _routes(_echo_call({})) == {"a": ("b", "b"), "b": ("a", "a")}


def test_media_echo_forward_echoes_the_receiver_of_the_message_and_discards_the_sender() -> None:
    # rtpengine 10.5 (echo=fwd): what B sends to the offer's port comes back to B from that
    # port; what A sends goes nowhere
    call = _echo_call({"media-echo": "fw"})
    assert _routes(call) == {"a": ("", ""), "b": ("b", "b")}
    # on the answer, the answer's receiver is the offerer
    call = _echo_call({}, {"media-echo": "forward"})
    assert _routes(call) == {"a": ("a", "a"), "b": ("", "")}


def test_media_echo_backward_both_and_blackhole() -> None:
    assert _routes(_echo_call({"media-echo": "bk"})) == {"a": ("a", "a"), "b": ("", "")}
    assert _routes(_echo_call({"media-echo": "reverse"})) == {"a": ("a", "a"), "b": ("", "")}
    assert _routes(_echo_call({"media-echo": "both"})) == {"a": ("a", "a"), "b": ("b", "b")}
    assert _routes(_echo_call({"media-echo": "sinkhole"})) == {"a": ("", ""), "b": ("", "")}


def test_media_echo_stays_until_a_message_names_another_mode() -> None:
    cmds, _ = build()
    cmds.handle(req("offer", from_tag="a", sdp=sdp(), media_echo="both"), T0)
    cmds.handle(req("answer", from_tag="a", to_tag="b", sdp=sdp(B_ADDR, 6000)), T0)
    cmds.handle(req("offer", from_tag="a", to_tag="b", sdp=sdp()), T0)
    assert _routes(cmds.calls["c1"]) == {"a": ("a", "a"), "b": ("b", "b")}
    cmds.handle(req("offer", from_tag="a", to_tag="b", sdp=sdp(), media_echo="bkw"), T0)
    assert _routes(cmds.calls["c1"]) == {"a": ("a", "a"), "b": ("", "")}


def test_an_unknown_media_echo_mode_changes_nothing() -> None:
    cmds, _ = build()
    reply = cmds.handle(req("offer", from_tag="a", sdp=sdp(), media_echo="sideways"), T0)
    assert reply["result"] == "ok"
    cmds.handle(req("answer", from_tag="a", to_tag="b", sdp=sdp(B_ADDR, 6000)), T0)
    assert _routes(cmds.calls["c1"]) == {"a": ("b", "b"), "b": ("a", "a")}


def test_media_echo_with_rtcp_mux_sends_rtcp_back_from_the_rtp_port() -> None:
    mux = ["a=rtcp-mux"]
    cmds, _ = build()
    cmds.handle(req("offer", from_tag="a", sdp=sdp(extra=mux), media_echo="bk"), T0)
    cmds.handle(req("answer", from_tag="a", to_tag="b", sdp=sdp(B_ADDR, 6000, extra=mux)), T0)
    call = cmds.calls["c1"]
    a_rtp = f"{LOCAL4} {call.monologues['a'].medias[0].port}"
    (forward,) = plan(call)
    spec = next(s for s in forward.sockets if s.key == a_rtp)
    assert (spec.out, spec.out_rtcp) == (a_rtp, a_rtp)


def test_media_echo_keeps_the_call_out_of_the_kernel() -> None:
    for keys in ({}, {"media-echo": "fw"}, {"media-echo": "blackhole"}):
        call = _echo_call(keys)
        for party in call.monologues.values():
            for stream in party.medias[0].streams:
                stream.confirmed = True
        assert bool(kernel_legs(call)) == (not keys), keys


# -- rtcp-mux per via-branch (gh #793) ----------------------------------------------------------


def _forked_mux_answer(branch: str) -> str:
    """A offers with rtcp-mux twice, via-branch x123 with ``demux`` and x456 with ``offer``;
    the branch named answers without rtcp-mux: our answer to A."""
    cmds, _ = build()
    mux = ["a=rtcp-mux"]
    for via, policy in (("x123", "demux"), ("x456", "offer")):
        offer = req("offer", from_tag="a", via_branch=via, rtcp_mux=[policy], sdp=sdp(extra=mux))
        assert cmds.handle(offer, T0)["result"] == "ok"
    answer = req("answer", from_tag="a", to_tag="b", via_branch=branch, sdp=sdp(B_ADDR, 6000))
    reply = cmds.handle(answer, T0)
    assert reply["result"] == "ok", reply
    return str(reply["sdp"])


def test_each_via_branch_answers_under_the_rtcp_mux_options_of_its_own_offer() -> None:
    # rtpengine 10.5 (gh #793 b1, b2): the demux branch accepts A's rtcp-mux in the answer,
    # the "offer" branch (the later offer) does not, whatever the answerer said
    assert "a=rtcp-mux" in _forked_mux_answer("x123").splitlines()
    assert "a=rtcp-mux" not in _forked_mux_answer("x456").splitlines()


# -- codec options ------------------------------------------------------------------------------

RTPMAPS = {
    "96": "opus/48000/2",
    "97": "telephone-event/48000",
    "101": "telephone-event/8000",
    "98": "speex/16000",
    "118": "CN/16000",
}


def _sdp(address: str, port: int, formats: str, *extra: str) -> str:
    """An audio section listing ``formats`` (rtpmaps from :data:`RTPMAPS`)."""
    return audio_sdp(RTPMAPS, address, port, formats, *extra)


def _formats(reply: dict[str, Any]) -> str:
    """The payload types of the reply's audio section, each checked against its rtpmap."""
    lines = str(reply["sdp"]).splitlines()
    m_line = next(ln for ln in lines if ln.startswith("m=audio"))
    formats = m_line.split()[3:]
    rtpmaps = [
        ln.split()[0].removeprefix("a=rtpmap:") for ln in lines if ln.startswith("a=rtpmap:")
    ]
    assert rtpmaps == formats, lines
    return " ".join(formats)


class _Call:
    """One call through the ng commands: A (tag a) offers, B (tag b) answers."""

    def __init__(self) -> None:
        self.cmds, _ = build()

    def offer(self, formats: str, **keys: Any) -> str:
        known = self.cmds.calls.get("c1")
        to = {"to_tag": "b"} if known is not None and "b" in known.monologues else {}
        reply = self.cmds.handle(
            req("offer", from_tag="a", sdp=_sdp(A_ADDR, 5000, formats), **to, **keys), T0
        )
        assert reply["result"] == "ok", reply
        return _formats(reply)

    def answer(self, formats: str, **keys: Any) -> str:
        reply = self.cmds.handle(
            req("answer", from_tag="a", to_tag="b", sdp=_sdp(B_ADDR, 6000, formats), **keys), T0
        )
        assert reply["result"] == "ok", reply
        return _formats(reply)


def test_codec_accept_answers_the_offerer_in_its_accepted_codec() -> None:
    # rtpengine 10.5 (asked live): the offer is unchanged; the answer carries the offerer's
    # first accepted audio codec in place of the answerer's, transcoded both ways, with the
    # offerer's DTMF of its clock rate where the answerer sends DTMF
    call = _Call()
    assert call.offer("0 8 101", codec={"accept": ["PCMU"]}) == "0 8 101"
    assert call.answer("8 0 101") == "0 101"
    # kept for the answers to later offers of the call
    assert call.offer("0 8 101") == "0 8 101"
    assert call.answer("0 8") == "0"
    call = _Call()
    assert call.offer("9 0 8", codec={"accept": ["G722", "PCMU"]}) == "9 0 8"
    assert call.answer("8 0") == "9"  # the first accepted, though the answerer did not take it
    call = _Call()
    call.offer("0 8", codec={"accept": ["PCMU"]})
    assert call.answer("8") == "0"
    # the answerer's DTMF at another clock rate joins the answer beside the offerer's
    call = _Call()
    call.offer("96 0 8 97 101", codec={"accept": ["PCMU"]})
    assert call.answer("96 97") == "0 97 101"
    # accepting a codec the offerer did not list changes nothing
    call = _Call()
    call.offer("0 8", codec={"accept": ["G722"]})
    assert call.answer("8") == "8"


def test_codec_consume_removes_from_the_offer_and_answers_in_the_consumed_codec() -> None:
    call = _Call()
    assert call.offer("0 8", codec={"consume": ["PCMU"]}) == "8"
    assert call.answer("8") == "0"
    call = _Call()
    assert call.offer("0 8 9 101 13", codec={"consume": ["PCMU"]}) == "8 9 101 13"
    assert call.answer("9 101 13") == "0 13 101"
    # a consumed telephone-event goes back: the offerer's DTMF is turned into tones
    call = _Call()
    assert call.offer("0 8 101", codec={"consume": ["telephone-event"]}) == "0 8"
    assert call.answer("0") == "0 101"


def test_consume_with_strip_all_and_offer_offers_in_the_order_offer_names() -> None:
    call = _Call()
    codec = {"strip": ["all"], "consume": ["CN"], "offer": ["PCMA", "PCMU", "telephone-event"]}
    assert call.offer("9 18 0 8 101 13 118", codec=codec) == "8 0 101"
    assert call.answer("8 101") == "8 13 101"  # the consumed CN goes back


def test_codec_mask_removes_but_accepts_nothing() -> None:
    # rtpengine 10.5 (simple codec masking w DTMF masked)
    call = _Call()
    assert call.offer("0 8 101", codec={"mask": ["telephone-event"]}) == "0 8"
    assert call.answer("0 8") == "0 8"
    call = _Call()
    assert call.offer("0 8", codec={"mask": ["PCMU"]}) == "8"
    assert call.answer("8") == "8"


def test_codec_offer_puts_stripped_codecs_back_after_the_kept_ones() -> None:
    assert (
        _Call().offer(
            "8 9 0 18", codec={"strip": ["all"], "except": ["PCMU"], "offer": ["G722", "PCMA"]}
        )
        == "0 9 8"
    )
    assert _Call().offer("0 8 9", codec={"strip": ["PCMU"], "offer": ["PCMU"]}) == "8 9 0"
    # without a strip, or for a codec the offerer did not list, it changes nothing
    assert _Call().offer("0 8 9", codec={"offer": ["PCMA"]}) == "0 8 9"
    assert _Call().offer("0 8", codec={"offer": ["G722"]}) == "0 8"
    # removing every codec keeps them all
    assert _Call().offer("0 8", codec={"strip": ["all"]}) == "0 8"
    assert _Call().offer("0 8", codec={"consume": ["all"]}) == "0 8"


def test_stripping_the_last_codec_of_a_clock_rate_strips_its_dtmf_and_cn() -> None:
    # rtpengine 10.5 (DTMF PT already present, strip one codec)
    assert _Call().offer("8 96 101 97", codec={"strip": ["PCMA"]}) == "96 97"
    assert _Call().offer("8 0 13 96 101 97", codec={"strip": ["PCMA"]}) == "0 13 96 101 97"
    assert _Call().offer("8 0 13 96 101 97", codec={"strip": ["PCMA", "PCMU"]}) == "96 97"
    # DTMF with no audio codec of its rate is left alone unless the options touched that
    # rate (here: speex/16000) or any DTMF or CN codec (here: CN/16000)
    assert _Call().offer("96 101 97 98", codec={"strip": ["speex"]}) == "96 101 97"
    assert _Call().offer("96 101 97 118", codec={"strip": ["CN"]}) == "96 97"


def test_single_codec_answers_the_first_audio_codec_with_dtmf_and_cn() -> None:
    # rtpengine 10.5 (multi codec offer/answer w single-codec)
    call = _Call()
    assert call.offer("0 8") == "0 8"
    assert call.answer("0 8", flags=["single codec"]) == "0"
    call = _Call()
    call.offer("0 8 9 101 13")
    assert call.answer("9 101 8 13 0", flags=["single-codec"]) == "9 101 13"
    call = _Call()
    call.offer("0 8")
    assert call.answer("0 8") == "0 8"  # without the flag: all of them


def test_except_spares_codecs_from_consume_and_mask_and_offer_puts_them_back() -> None:
    call = _Call()
    assert call.offer("0 8 9", codec={"consume": ["all"], "except": ["PCMA"]}) == "8"
    assert call.answer("8") == "0"  # consumed: the offerer's first goes back
    assert _Call().offer("0 8 9", codec={"mask": ["PCMU"], "offer": ["PCMU"]}) == "8 9 0"
    call = _Call()
    assert call.offer("0 8 9", codec={"consume": ["PCMU"], "offer": ["PCMU"]}) == "8 9 0"
    assert call.answer("0 8") == "0"  # offered back, taken by the answerer: accepted


def test_codec_strip_in_an_answer_strips_from_the_answer_to_the_offerer() -> None:
    call = _Call()
    call.offer("0 8 9 101")
    assert call.answer("8 0 101", codec={"strip": ["PCMA"]}) == "0 101"
    call = _Call()
    call.offer("0 8 9 101")
    assert call.answer("8 0 101", flags=["codec-strip-PCMU"]) == "8 101"


# -- a re-answer from an answerer that moved ----------------------------------------------------


def test_an_answerer_that_moved_gets_the_offerer_new_ports_unless_port_latching() -> None:
    # rtpengine 10.5 (the re-offer and re-answer of "simple codec masking w DTMF masked"):
    # a re-answer from another address or port is answered with new ports towards the
    # offerer, as a re-offer from a moved offerer gets its receiver new ones
    for flags, renewed in (([], True), (["port-latching"], False)):
        cmds, _ = build()
        cmds.handle(req("offer", from_tag="a", sdp=sdp()), T0)
        cmds.handle(req("answer", from_tag="a", to_tag="b", sdp=sdp(B_ADDR, 6000)), T0)
        call = cmds.calls["c1"]
        before = call.monologues["a"].medias[0].port
        cmds.handle(req("offer", from_tag="a", to_tag="b", sdp=sdp()), T0)
        again = req("answer", from_tag="a", to_tag="b", sdp=sdp(B_ADDR, 6010), flags=flags)
        reply = cmds.handle(again, T0)
        after = call.monologues["a"].medias[0].port
        assert (after != before) == renewed, flags
        assert f"m=audio {after} RTP/AVP 0 8" in str(reply["sdp"])
    # the same answer again keeps them
    cmds, _ = build()
    cmds.handle(req("offer", from_tag="a", sdp=sdp()), T0)
    cmds.handle(req("answer", from_tag="a", to_tag="b", sdp=sdp(B_ADDR, 6000)), T0)
    before = cmds.calls["c1"].monologues["a"].medias[0].port
    cmds.handle(req("answer", from_tag="a", to_tag="b", sdp=sdp(B_ADDR, 6000)), T0)
    assert cmds.calls["c1"].monologues["a"].medias[0].port == before
