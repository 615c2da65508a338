"""The kernel path's policy (relayd/plane/offload.py): which directions of a call nftables
may carry, and the ``kernelized`` marks on the call's streams.

Calls come from the real signalling (tests/unit/calls.py); what the workers would learn
and confirm is set on the streams by hand.
"""

from __future__ import annotations

from typing import Any

import pytest

from relayd.calls.commands import Commands
from relayd.calls.model import Call, Endpoint
from relayd.plane.offload import KernelLeg, back_to_userspace, kernel_legs, mark_kernelized
from tests.unit.calls import A_ADDR, B_ADDR, LOCAL4, T0, build, req, sdp

MUX = ["a=rtcp-mux"]
NAT = "192.0.2.77"  # where A's packets really come from (learned, not its SDP address)
SDES = "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:EcYUZZ8/HwtmE2z1s6j5/iOFqB7aJ6sCLP3R0gJm"
ICE_A = [
    "a=ice-ufrag:abcd",
    "a=ice-pwd:abcdefghijklmnopqrstuvwx",
    f"a=candidate:1 1 UDP 2130706431 {A_ADDR} 5000 typ host",
]


def _call(offer: str | None = None, answer: str | None = None, **offer_keys: Any) -> Call:
    """A answers B: offer from tag ``a``, answer from ``b`` (B at port 6000)."""
    cmds, _ = build()
    return _answer(cmds, offer, answer, **offer_keys)


def _answer(cmds: Commands, offer: str | None, answer: str | None, **offer_keys: Any) -> Call:
    offered = req("offer", from_tag="a", sdp=offer or sdp(), **offer_keys)
    assert cmds.handle(offered, T0)["result"] == "ok"
    answered = req("answer", from_tag="a", to_tag="b", sdp=answer or sdp(B_ADDR, 6000))
    reply = cmds.handle(answered, T0)
    assert reply["result"] == "ok", reply
    return cmds.calls["c1"]


def _confirm(call: Call, *tags: str, components: int = 2) -> None:
    """The workers confirmed these parties' endpoints (RTP, and RTCP unless components=1)."""
    for tag in tags:
        for media in call.monologues[tag].medias:
            for stream in media.streams[:components]:
                stream.confirmed = True


def _behind_nat(call: Call) -> None:
    """A's packets come from NAT:40000/40001, which the workers learned."""
    for stream in call.monologues["a"].medias[0].streams:
        stream.endpoint = Endpoint(NAT, 40000 + stream.rtcp)


def _relay(call: Call, tag: str) -> int:
    """Our RTP port towards a party, first media section."""
    return call.monologues[tag].medias[0].port


def _legs(call: Call, *, rtcp: bool = True) -> set[KernelLeg]:
    """Both directions of RTP (and RTCP with ``rtcp``) between A behind NAT and B at its SDP
    address: what arrives on our socket towards one leaves from ours towards the other."""
    a, b = _relay(call, "a"), _relay(call, "b")
    legs = set()
    for c in (0, 1) if rtcp else (0,):
        us_a, us_b = Endpoint(LOCAL4, a + c), Endpoint(LOCAL4, b + c)
        party_a, party_b = Endpoint(NAT, 40000 + c), Endpoint(B_ADDR, 6000 + c)
        legs.add(KernelLeg(f"{LOCAL4} {a + c}", party_a, us_a, us_b, party_b))
        legs.add(KernelLeg(f"{LOCAL4} {b + c}", party_b, us_b, us_a, party_a))
    return legs


def _kernelized(call: Call) -> dict[str, bool]:
    return {f"{s.local.local} {s.port}": s.kernelized for m in call.all_medias() for s in m.streams}


# -- kernel_legs ------------------------------------------------------------------------------


def test_a_confirmed_plain_call_has_four_legs_between_the_learned_endpoints() -> None:
    call = _call()
    _behind_nat(call)
    _confirm(call, "a", "b")
    a, b = _relay(call, "a"), _relay(call, "b")
    legs = kernel_legs(call)
    assert len(legs) == 4
    # from A (as learned, not its SDP address) on our socket towards A, out of ours towards
    # B to B; and back; RTP and RTCP each on its own: (ours, the other of ours, from, to)
    expected = [
        (a, b, (NAT, 40000), (B_ADDR, 6000)),
        (b, a, (B_ADDR, 6000), (NAT, 40000)),
        (a + 1, b + 1, (NAT, 40001), (B_ADDR, 6001)),
        (b + 1, a + 1, (B_ADDR, 6001), (NAT, 40001)),
    ]
    assert set(legs) == {
        KernelLeg(
            f"{LOCAL4} {ours}", Endpoint(*src), Endpoint(LOCAL4, ours), Endpoint(LOCAL4, out),
            Endpoint(*dst),
        )
        for ours, out, src, dst in expected
    }  # fmt: skip


def test_while_rtcp_is_copied_separate_rtcp_streams_stay_with_the_workers() -> None:
    call = _call()
    _behind_nat(call)
    _confirm(call, "a", "b")
    legs = kernel_legs(call, rtcp=False)
    assert len(legs) == 2
    assert set(legs) == _legs(call, rtcp=False)


@pytest.mark.parametrize("rtcp", [True, False])
def test_with_rtcp_mux_on_both_sides_one_forward_on_the_rtp_port_carries_both(rtcp: bool) -> None:
    call = _call(sdp(extra=MUX), sdp(B_ADDR, 6000, extra=MUX))
    _behind_nat(call)
    _confirm(call, "a", "b")  # the RTCP streams too: their sockets are not used
    legs = kernel_legs(call, rtcp=rtcp)
    assert len(legs) == 2
    assert set(legs) == _legs(call, rtcp=False)


@pytest.mark.parametrize(
    ("offer", "answer", "mux"),
    [
        (sdp(extra=MUX), sdp(B_ADDR, 6000), ["demux"]),  # only A muxes
        (sdp(), sdp(B_ADDR, 6000, extra=MUX), ["offer"]),  # only B muxes
    ],
)
def test_rtcp_mux_on_one_side_only_stays_with_the_workers(
    offer: str, answer: str, mux: list[str]
) -> None:
    # RTCP must be split from RTP (or joined to it) packet by packet
    call = _call(offer, answer, rtcp_mux=mux)
    _confirm(call, "a", "b")
    assert kernel_legs(call) == []
    assert kernel_legs(call, rtcp=False) == []


def test_nothing_goes_to_the_kernel_before_both_parties_are_confirmed() -> None:
    call = _call()
    _behind_nat(call)
    _confirm(call, "a")
    assert kernel_legs(call) == []  # not even A → B: B's endpoint is only its SDP's
    for stream in call.monologues["a"].medias[0].streams:
        stream.confirmed = False
    _confirm(call, "b")
    assert kernel_legs(call) == []
    _confirm(call, "a")
    assert set(kernel_legs(call)) == _legs(call)


def test_each_component_goes_once_both_its_streams_have_a_confirmed_endpoint() -> None:
    call = _call()
    _behind_nat(call)
    _confirm(call, "a", "b", components=1)
    call.monologues["b"].medias[0].streams[1].confirmed = True  # only B's RTCP
    assert set(kernel_legs(call)) == _legs(call, rtcp=False)
    # A's RTCP confirmed, but with no endpoint to key on: still only RTP
    a_rtcp = call.monologues["a"].medias[0].streams[1]
    a_rtcp.confirmed, a_rtcp.endpoint = True, None
    assert set(kernel_legs(call)) == _legs(call, rtcp=False)


@pytest.mark.parametrize(
    ("offer", "answer", "keys"),
    [
        # A speaks SDES-SRTP, B plain RTP
        (sdp(extra=[SDES]).replace("RTP/AVP", "RTP/SAVP"), None, {"transport_protocol": "RTP/AVP"}),
        # A plain RTP, B SDES-SRTP
        (
            None,
            sdp(B_ADDR, 6000, extra=[SDES]).replace("RTP/AVP", "RTP/SAVP"),
            {"transport_protocol": "RTP/SAVP"},
        ),
    ],
)
def test_srtp_on_either_side_stays_with_the_workers(
    offer: str | None, answer: str | None, keys: dict[str, Any]
) -> None:
    call = _call(offer, answer, **keys)
    _confirm(call, "a", "b")
    protocols = {t: call.monologues[t].medias[0].protocol for t in "ab"}
    assert sorted(protocols.values()) == ["RTP/AVP", "RTP/SAVP"]
    assert kernel_legs(call) == []


def test_plain_rtp_avpf_both_ways_goes_to_the_kernel() -> None:
    avpf = sdp().replace("RTP/AVP", "RTP/AVPF")
    call = _call(avpf, sdp(B_ADDR, 6000).replace("RTP/AVP", "RTP/AVPF"))
    assert [call.monologues[t].medias[0].protocol for t in "ab"] == ["RTP/AVPF", "RTP/AVPF"]
    _behind_nat(call)
    _confirm(call, "a", "b")
    assert set(kernel_legs(call)) == _legs(call)


@pytest.mark.parametrize("tag", ["a", "b"])
def test_an_asymmetric_party_stays_with_the_workers(tag: str) -> None:
    # an asymmetric party sends from anywhere: there is no learned source to key on
    call = _call()
    _confirm(call, "a", "b")
    call.monologues[tag].asymmetric = True
    assert kernel_legs(call) == []


ICE_B = [
    "a=ice-ufrag:efgh",
    "a=ice-pwd:abcdefghijklmnopqrstuvwx",
    f"a=candidate:1 1 UDP 2130706431 {B_ADDR} 6000 typ host",
]


@pytest.mark.parametrize(
    ("offer", "answer", "keys"),
    [
        # ICE towards B only (B answers with ICE: one that answers without has none)
        (sdp(), sdp(B_ADDR, 6000, extra=ICE_B), {"ICE": "force"}),
        (sdp(extra=ICE_A), None, {"ICE": "remove"}),  # ICE with A only
    ],
)
def test_ice_on_either_side_stays_with_the_workers(
    offer: str, answer: str | None, keys: dict[str, Any]
) -> None:
    # STUN consent checks arrive on the media port and must reach a worker
    call = _call(offer, answer, **keys)
    ufrags = [bool(call.monologues[t].medias[0].ice_ufrag) for t in "ab"]
    assert sorted(ufrags) == [False, True]
    _confirm(call, "a", "b")
    assert kernel_legs(call) == []


def test_an_unanswered_call_has_no_legs() -> None:
    cmds, _ = build()
    cmds.handle(req("offer", from_tag="a", to_tag="b", sdp=sdp()), T0)
    call = cmds.calls["c1"]
    assert not call.answered
    # even with every stream confirmed on an endpoint (early media learned)
    for stream in (s for m in call.all_medias() for s in m.streams):
        stream.endpoint = stream.endpoint or Endpoint(B_ADDR, 6000 + stream.rtcp)
        stream.confirmed = True
    assert kernel_legs(call) == []
    # the guard itself: a paired, confirmed call goes nowhere until it is answered
    call = _call()
    _confirm(call, "a", "b")
    call.answered = False
    assert kernel_legs(call) == []


def test_each_media_section_is_decided_on_its_own() -> None:
    # B rejects the video: audio goes to the kernel, the video section does not even
    # where a stray packet confirmed an endpoint on our socket towards B
    call = _call(sdp(video=5002), sdp(B_ADDR, 6000, video=0))
    _behind_nat(call)
    _confirm(call, "a", "b")
    for stream in call.monologues["b"].medias[1].streams:
        stream.endpoint = Endpoint(B_ADDR, 6002 + stream.rtcp)
    assert set(kernel_legs(call)) == _legs(call)


# -- the kernelized marks ---------------------------------------------------------------------


def test_mark_kernelized_marks_exactly_the_given_sockets_and_says_whether_any_changed() -> None:
    call = _call()
    a, b = _relay(call, "a"), _relay(call, "b")
    rtp = {f"{LOCAL4} {a}", f"{LOCAL4} {b}"}
    assert mark_kernelized(call, rtp) is True
    assert _kernelized(call) == {
        f"{LOCAL4} {a}": True,
        f"{LOCAL4} {a + 1}": False,
        f"{LOCAL4} {b}": True,
        f"{LOCAL4} {b + 1}": False,
    }
    assert mark_kernelized(call, rtp) is False  # nothing new: the workers need not hear
    # a socket no longer given is unmarked, one now given is marked
    assert mark_kernelized(call, {f"{LOCAL4} {a}", f"{LOCAL4} {a + 1}"}) is True
    assert _kernelized(call) == {
        f"{LOCAL4} {a}": True,
        f"{LOCAL4} {a + 1}": True,
        f"{LOCAL4} {b}": False,
        f"{LOCAL4} {b + 1}": False,
    }
    assert mark_kernelized(call, set()) is True
    assert set(_kernelized(call).values()) == {False}
    assert mark_kernelized(call, set()) is False


def test_back_to_userspace_unmarks_and_unconfirms_every_stream() -> None:
    call = _call(sdp(video=5002), sdp(B_ADDR, 6000, video=6002))
    _confirm(call, "a", "b")
    mark_kernelized(call, {leg.socket for leg in kernel_legs(call)})
    assert len(_kernelized(call)) == 8 and set(_kernelized(call).values()) == {True}
    back_to_userspace(call)
    streams = [s for m in call.all_medias() for s in m.streams]
    assert len(streams) == 8
    assert [(s.kernelized, s.confirmed) for s in streams] == [(False, False)] * 8
    assert kernel_legs(call) == []  # learning starts again: nothing until confirmed anew


def test_the_marks_cover_the_media_of_earlier_forked_dialogues() -> None:
    # a's ports towards b1 are kept when b2 answers the same branch: a stream there must
    # not stay marked as the kernel's (nor confirmed) once the call is signalled
    cmds, _ = build()
    cmds.handle(req("offer", from_tag="a", via_branch="z1", sdp=sdp()), T0)
    cmds.handle(req("answer", from_tag="a", to_tag="b1", via_branch="z1", sdp=sdp(B_ADDR)), T0)
    cmds.handle(req("answer", from_tag="a", to_tag="b2", via_branch="z1", sdp=sdp(B_ADDR)), T0)
    call = cmds.calls["c1"]
    (old,) = call.monologues["a"].other_dialogues["b1"]
    stale = old.streams[0]
    key = f"{stale.local.local} {stale.port}"
    assert key not in {f"{LOCAL4} {_relay(call, 'a')}", f"{LOCAL4} {_relay(call, 'a') + 1}"}

    assert mark_kernelized(call, {key}) is True
    assert stale.kernelized
    assert mark_kernelized(call, set()) is True
    assert not stale.kernelized

    stale.kernelized = stale.confirmed = True
    back_to_userspace(call)
    assert (stale.kernelized, stale.confirmed) == (False, False)
