"""The forwarding plan: which relay socket sends what onwards, derived from the call model."""

from __future__ import annotations

from typing import Any

from relayd.calls.commands import Commands
from relayd.calls.model import Call
from relayd.ipc import Forward, SocketSpec, parse_key, socket_key
from relayd.plane.forwarding import Handover, after_signalling, media_key, plan
from tests.unit.calls import A_ADDR, B_ADDR, LOCAL4, T0, build, req, sdp

MUX = ["a=rtcp-mux"]


def _call(
    cmds: Commands,
    offer: str,
    answer: str,
    **offer_keys: Any,
) -> Call:
    assert cmds.handle(req("offer", from_tag="a", sdp=offer, **offer_keys), T0)["result"] == "ok"
    reply = cmds.handle(req("answer", from_tag="a", to_tag="b", sdp=answer), T0)
    assert reply["result"] == "ok", reply
    return cmds.calls["c1"]


def _port(call: Call, tag: str, index: int = 0) -> int:
    return call.monologues[tag].medias[index].port


def _key(port: int) -> str:
    return f"{LOCAL4} {port}"


def test_keys() -> None:
    assert socket_key("2001:db8::1", 30000) == "2001:db8::1 30000"
    assert media_key("abc@host", 1) == "abc@host 1"


def _branch(call: Call, via_branch: str = "", index: int = 0) -> int:
    """Our port towards the party an offer went to, before an answer names it."""
    return call.branches[via_branch].medias[index].port


def test_an_unanswered_offer_forwards_one_way_from_the_answerer_to_the_offerer() -> None:
    # rtpengine 10.5 does this: early media that arrives on the offer's ports before the
    # answer goes to the offerer's SDP address; the answerer's address is not known yet
    cmds, _ = build()
    cmds.handle(req("offer", from_tag="a", sdp=sdp(video=5002)), T0)
    call = cmds.calls["c1"]
    forwards = plan(call)
    assert [f.media for f in forwards] == ["c1 0", "c1 1"]
    for index, forward in enumerate(forwards):
        a, b = _port(call, "a", index), _branch(call, index=index)
        a_port = 5000 + 2 * index
        assert forward == Forward(
            f"c1 {index}",
            (
                # nothing learned about the answerer before its SDP
                SocketSpec(_key(b), out=_key(a), learning="off"),
                SocketSpec(_key(b + 1), out=_key(a + 1), rtcp=True, learning="off"),
                # only sent from: what arrives stays queued until the answer
                SocketSpec(_key(a), out=_key(b), expect=f"{A_ADDR} {a_port}", listen=False),
                SocketSpec(
                    _key(a + 1),
                    out=_key(b + 1),
                    expect=f"{A_ADDR} {a_port + 1}",
                    rtcp=True,
                    listen=False,
                ),
            ),
        )


def test_the_answer_replaces_the_early_forward_on_the_same_sockets() -> None:
    cmds, _ = build()
    cmds.handle(req("offer", from_tag="a", sdp=sdp()), T0)
    (early,) = plan(cmds.calls["c1"])
    call = _call(cmds, sdp(), sdp(B_ADDR, 6000))
    (final,) = plan(call)
    assert final.media == early.media
    assert {s.key for s in final.sockets} == {s.key for s in early.sockets}
    assert all(s.out and s.listen for s in final.sockets)


def test_the_latest_branch_of_an_unanswered_offer_gets_its_early_media() -> None:
    cmds, _ = build()
    cmds.handle(req("offer", from_tag="a", via_branch="z1", sdp=sdp()), T0)
    cmds.handle(req("offer", from_tag="a", via_branch="z2", sdp=sdp()), T0)
    call = cmds.calls["c1"]
    (forward,) = plan(call)
    assert forward.sockets[0].key == _key(_branch(call, "z2"))
    assert forward.sockets[0].out == _key(_port(call, "a"))


def test_an_offer_with_a_to_tag_gets_early_media_from_that_party() -> None:
    cmds, _ = build()
    cmds.handle(req("offer", from_tag="a", to_tag="b", sdp=sdp()), T0)
    call = cmds.calls["c1"]
    a, b = _port(call, "a"), _port(call, "b")
    (forward,) = plan(call)
    assert [(s.key, s.out, s.listen) for s in forward.sockets[::2]] == [
        (_key(b), _key(a), True),
        (_key(a), _key(b), False),
    ]


def test_no_early_media_where_the_answer_settles_srtp_dtls_or_ice() -> None:
    for keys in (
        {"flags": ["ICE=force"]},
        {"transport_protocol": "RTP/SAVP"},  # SDES towards the answerer
        {"transport_protocol": "UDP/TLS/RTP/SAVP"},  # DTLS-SRTP towards the answerer
    ):
        cmds, _ = build()
        assert cmds.handle(req("offer", from_tag="a", sdp=sdp(), **keys), T0)["result"] == "ok"
        assert plan(cmds.calls["c1"]) == [], keys


def test_answered_call_one_forward_per_media_with_four_sockets() -> None:
    cmds, _ = build()
    call = _call(cmds, sdp(video=5002), sdp(B_ADDR, 6000, video=6002))
    forwards = plan(call)
    assert [f.media for f in forwards] == ["c1 0", "c1 1"]
    for index, forward in enumerate(forwards):
        a, b = _port(call, "a", index), _port(call, "b", index)
        a_port, b_port = 5000 + 2 * index, 6000 + 2 * index
        # no policy given: SocketSpec's defaults, delayed learning from time 0
        assert forward == Forward(
            f"c1 {index}",
            (
                SocketSpec(
                    _key(a),
                    out=_key(b),
                    expect=f"{A_ADDR} {a_port}",
                ),
                SocketSpec(
                    _key(a + 1),
                    out=_key(b + 1),
                    expect=f"{A_ADDR} {a_port + 1}",
                    rtcp=True,
                ),
                SocketSpec(
                    _key(b),
                    out=_key(a),
                    expect=f"{B_ADDR} {b_port}",
                ),
                SocketSpec(
                    _key(b + 1),
                    out=_key(a + 1),
                    expect=f"{B_ADDR} {b_port + 1}",
                    rtcp=True,
                ),
            ),
        )


def test_rtcp_mux_on_the_offerer_only() -> None:
    # demux: the offerer muxes, the callee is offered plain RTCP
    cmds, _ = build()
    call = _call(cmds, sdp(extra=MUX), sdp(B_ADDR, 6000), rtcp_mux=["demux"])
    a, b = _port(call, "a"), _port(call, "b")
    (forward,) = plan(call)
    a_rtp, a_rtcp, b_rtp, b_rtcp = forward.sockets
    # RTCP from a arrives on a's RTP socket and leaves from b's RTCP socket
    assert (a_rtp.key, a_rtp.out, a_rtp.out_rtcp) == (_key(a), _key(b), _key(b + 1))
    assert (a_rtcp.key, a_rtcp.out, a_rtcp.expect) == (_key(a + 1), _key(b + 1), f"{A_ADDR} 5000")
    # RTCP from b goes out of a's RTP socket, a's only one in use
    assert (b_rtp.key, b_rtp.out, b_rtp.out_rtcp) == (_key(b), _key(a), "")
    assert (b_rtcp.key, b_rtcp.out, b_rtcp.expect) == (_key(b + 1), _key(a), f"{B_ADDR} 6001")


def test_rtcp_mux_on_both_sides() -> None:
    cmds, _ = build()
    call = _call(cmds, sdp(extra=MUX), sdp(B_ADDR, 6000, extra=MUX))
    a, b = _port(call, "a"), _port(call, "b")
    (forward,) = plan(call)
    a_rtp, a_rtcp, b_rtp, b_rtcp = forward.sockets
    assert (a_rtp.out, a_rtp.out_rtcp) == (_key(b), _key(b))
    assert (b_rtp.out, b_rtp.out_rtcp) == (_key(a), _key(a))
    assert (a_rtcp.out, b_rtcp.out) == (_key(b), _key(a))


def test_learning_policy_and_party_flags_per_party() -> None:
    cmds, _ = build()
    call = _call(cmds, sdp(), sdp(B_ADDR, 6000), flags=["strict-source"])
    call.monologues["b"].media_handover = True
    call.monologues["a"].asymmetric = True
    call.monologues["a"].learning, call.monologues["a"].learn_after = "heuristic", 12.5
    call.monologues["b"].learning, call.monologues["b"].learn_after = "off", 0.0
    (forward,) = plan(call)
    summary = [
        (s.learning, s.learn_after, s.asymmetric, s.strict, s.handover, s.rtcp)
        for s in forward.sockets
    ]
    assert summary == [
        ("heuristic", 12.5, True, True, False, False),
        ("heuristic", 12.5, True, True, False, True),
        ("off", 0.0, False, True, True, False),
        ("off", 0.0, False, True, True, True),
    ]


def test_expect_is_empty_without_an_sdp_address() -> None:
    cmds, _ = build()
    call = _call(cmds, sdp(), sdp(B_ADDR, 6000))
    media = call.monologues["b"].medias[0]
    media.remote_rtp = media.remote_rtcp = None
    (forward,) = plan(call)
    assert [s.expect for s in forward.sockets] == [f"{A_ADDR} 5000", f"{A_ADDR} 5001", "", ""]


def test_media_rejected_by_the_answer_expects_nothing_from_the_answerer() -> None:
    cmds, _ = build()
    call = _call(cmds, sdp(video=5002), sdp(B_ADDR, 6000, video=0))
    forwards = plan(call)
    assert [f.media for f in forwards] == ["c1 0", "c1 1"]
    assert [s.expect for s in forwards[1].sockets] == [f"{A_ADDR} 5002", f"{A_ADDR} 5003", "", ""]


def test_parallel_forks_only_the_current_dialogue_is_planned() -> None:
    # b1 and b2 answer their via-branches in turn: a now talks to b2 only, and b1's
    # stale pairing must not produce a second Forward under the same media key
    cmds, _ = build()
    cmds.handle(req("offer", from_tag="a", via_branch="z1", sdp=sdp()), T0)
    cmds.handle(req("offer", from_tag="a", via_branch="z2", sdp=sdp()), T0)
    cmds.handle(req("answer", from_tag="a", to_tag="b1", via_branch="z1", sdp=sdp(B_ADDR)), T0)
    cmds.handle(req("answer", from_tag="a", to_tag="b2", via_branch="z2", sdp=sdp(B_ADDR)), T0)
    call = cmds.calls["c1"]
    a, b2 = _port(call, "a"), _port(call, "b2")
    (forward,) = plan(call)
    assert [(s.key, s.out) for s in forward.sockets] == [
        (_key(a), _key(b2)),
        (_key(a + 1), _key(b2 + 1)),
        (_key(b2), _key(a)),
        (_key(b2 + 1), _key(a + 1)),
    ]


def test_early_media_fork_answered_by_an_alias_is_planned() -> None:
    cmds, _ = build()
    cmds.handle(req("offer", from_tag="a", via_branch="z1", sdp=sdp()), T0)
    cmds.handle(req("answer", from_tag="a", to_tag="b1", via_branch="z1", sdp=sdp(B_ADDR)), T0)
    first = plan(cmds.calls["c1"])
    cmds.handle(req("answer", from_tag="a", to_tag="b2", via_branch="z1", sdp=sdp(B_ADDR)), T0)
    call = cmds.calls["c1"]
    a, b = _port(call, "a"), _port(call, "b2")
    (forward,) = plan(call)
    assert [(s.key, s.out) for s in forward.sockets[::2]] == [
        (_key(a), _key(b)),
        (_key(b), _key(a)),
    ]
    assert forward != first[0]  # a's side moved to the fork's own ports
    cmds.handle(req("answer", from_tag="a", to_tag="b1", via_branch="z1", sdp=sdp(B_ADDR)), T0)
    assert plan(cmds.calls["c1"]) == first


def test_parse_key_reads_socket_keys_and_ipc_endpoints() -> None:
    assert parse_key("198.51.100.10 5000") == ("198.51.100.10", 5000)
    assert parse_key("2001:db8::1 6000") == ("2001:db8::1", 6000)
    assert parse_key("") is None
    assert parse_key("198.51.100.10") is None
    assert parse_key("198.51.100.10 x") is None
    assert parse_key(" 5000") is None


# -- after_signalling: when the worker hears of a signalled call --------------------------------


def test_a_plain_offer_waits_for_the_early_batch_and_keeps_nothing() -> None:
    for keys in ({}, {"to_tag": "b"}):  # also an offer that names its answerer
        cmds, _ = build()
        assert cmds.handle(req("offer", from_tag="a", sdp=sdp(), **keys), T0)["result"] == "ok"
        call = cmds.calls["c1"]
        for pending in (False, True):
            handover = after_signalling(call, "offer", "b", early_pending=pending)
            assert handover == Handover(early=True, keep=""), (keys, pending)


def test_an_offer_whose_answer_settles_srtp_dtls_or_ice_goes_with_the_next_batch() -> None:
    for keys in (
        {"flags": ["ICE=force"]},
        {"transport_protocol": "RTP/SAVP"},
        {"transport_protocol": "UDP/TLS/RTP/SAVP"},
    ):
        cmds, _ = build()
        assert cmds.handle(req("offer", from_tag="a", sdp=sdp(), **keys), T0)["result"] == "ok"
        handover = after_signalling(cmds.calls["c1"], "offer", "", early_pending=False)
        assert handover == Handover(early=False, keep=""), keys


def test_an_answer_keeps_the_answerers_media_only_while_the_early_forward_is_pending() -> None:
    cmds, _ = build()
    call = _call(cmds, sdp(), sdp(B_ADDR, 6000))
    # the answer came before the offer's early forward went out: what b sent since the
    # offer follows the answer's forward
    assert after_signalling(call, "answer", "b", early_pending=True) == Handover(False, "b")
    # the early forward went out: what no worker read is a ringing backlog, dropped
    assert after_signalling(call, "answer", "b", early_pending=False) == Handover(False, "")


def test_a_re_offer_within_a_dialogue_is_not_early() -> None:
    # the dialogue's own plan is not the one-way early one, though it forwards plain RTP
    cmds, _ = build()
    call = _call(cmds, sdp(), sdp(B_ADDR, 6000))
    reoffer = req("offer", from_tag="a", to_tag="b", sdp=sdp(direction="sendonly"))
    assert cmds.handle(reoffer, T0)["result"] == "ok"
    assert plan(call) != []
    assert after_signalling(call, "offer", "b", early_pending=False) == Handover(False, "")
