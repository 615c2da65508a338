"""rtpengine 10.5's answers for codec manipulation and media echo (its daemon test suite's
scenarios "codec-accept", "codec-consume", "simple codec masking w DTMF masked",
"multi codec offer/answer w single-codec", "DTMF PT already present, strip one codec",
"gh #793 b1", "echo=fwd" and "echo=bkw", and what the real rtpengine answered to variants of
them), kept here so that CI holds the behaviour without the suite.
"""

from __future__ import annotations

from typing import Any

from relayd.calls.model import Call
from relayd.ipc import SocketSpec
from relayd.plane.forwarding import plan
from relayd.plane.offload import kernel_legs
from tests.unit.calls import B_ADDR, LOCAL4, T0, build, req, sdp

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
