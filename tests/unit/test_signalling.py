"""Offer/answer on the call model: who gets which ports, forks, families, interfaces, flags.

Port rules are rtpengine's (reference §3.1, oracle README "Ports"): an offer
allocates both sides, RTP even and RTCP = RTP + 1, a re-INVITE keeps its ports,
a changed peer port renews them unless ``port-latching``, each fork gets its own.
"""

from __future__ import annotations

from typing import Any

import pytest

from relayd.calls.commands import Commands
from relayd.calls.interfaces import Interfaces
from relayd.calls.model import Call, LocalAddress
from relayd.calls.ports import PortAllocator
from tests.unit.calls import (
    A_ADDR,
    B_ADDR,
    LOCAL4,
    LOCAL6,
    T0,
    FakeBinder,
    build,
    interfaces,
    media_ports,
    req,
    sdp,
)

C_ADDR = "198.51.100.30"


def _ok(cmds: Commands, command: str, **keys: Any) -> list[str]:
    reply = cmds.handle(req(command, **keys), T0)
    assert reply["result"] == "ok", reply
    lines: list[str] = reply["sdp"].split("\r\n")
    return lines


def _m_c(lines: list[str]) -> list[str]:
    return [ln for ln in lines if ln.startswith(("m=", "c=", "a=rtcp:"))]


def _call(cmds: Commands) -> Call:
    return cmds.calls["c1"]


def _answered(cmds: Commands) -> Call:
    _ok(cmds, "offer", from_tag="a", sdp=sdp())
    _ok(cmds, "answer", from_tag="a", to_tag="b", sdp=sdp(B_ADDR, 6000))
    return _call(cmds)


# --- ports of an offer and its answer ----------------------------------------------------------


def test_offer_allocates_both_sides_in_the_worker_slice() -> None:
    cmds, binder = build(port_min=30000, port_max=30999, workers=4)
    cmds.place = lambda: 2
    lines = _ok(cmds, "offer", from_tag="a", sdp=sdp(video=5002))
    call = _call(cmds)
    assert call.worker == 2
    ports = cmds.signalling.ports
    assert ports.slices[2] == (30500, 30749)
    offerer, branch = call.parties()
    assert (offerer.tag, branch.tag) == ("a", "")
    for party in (offerer, branch):
        assert len(party.medias) == 2
        for media in party.medias:
            assert media.port % 2 == 0
            assert media.rtcp_port == media.port + 1
            assert 30500 <= media.port < media.rtcp_port <= 30749
            assert ports.worker_of(media.port) == 2
            assert media.local is not None and media.local.local == LOCAL4
            assert [(s.port, s.rtcp) for s in media.streams] == [
                (media.port, False),
                (media.port + 1, True),
            ]
    assert len({m.port for m in call.all_medias()}) == 4
    assert sorted(binder.live) == sorted((LOCAL4, m.port) for m in call.all_medias())
    # the callee is told the branch's ports, the offerer's own are kept for the answer
    audio, video = branch.medias
    assert _m_c(lines) == [
        f"c=IN IP4 {LOCAL4}",
        f"m=audio {audio.port} RTP/AVP 0 8",
        f"a=rtcp:{audio.port + 1}",
        f"m=video {video.port} RTP/AVP 96",
        f"a=rtcp:{video.port + 1}",
    ]


def test_answer_reuses_the_offerers_ports() -> None:
    cmds, binder = build()
    _ok(cmds, "offer", from_tag="a", sdp=sdp())
    call = _call(cmds)
    a_ports = media_ports(call, "a")
    b_ports = call.parties()[1].medias[0].port
    lines = _ok(cmds, "answer", from_tag="a", to_tag="b", sdp=sdp(B_ADDR, 6000))
    assert media_ports(call, "a") == a_ports
    assert media_ports(call, "b") == (b_ports, b_ports + 1)
    assert _m_c(lines) == [
        f"c=IN IP4 {LOCAL4}",
        f"m=audio {a_ports[0]} RTP/AVP 0 8",
        f"a=rtcp:{a_ports[1]}",
    ]
    assert len(binder.bound) == 2
    assert call.answered
    assert call.monologues["a"].in_dialogue_with == "b"
    assert call.monologues["b"].in_dialogue_with == "a"
    assert call.monologues["b"].medias[0].remote_rtp is not None
    assert call.monologues["b"].medias[0].remote_rtp.port == 6000


def test_reinvite_keeps_ports() -> None:
    cmds, binder = build()
    call = _answered(cmds)
    before = (media_ports(call, "a"), media_ports(call, "b"))
    _ok(cmds, "offer", from_tag="a", to_tag="b", sdp=sdp(direction="sendonly"))
    _ok(cmds, "answer", from_tag="a", to_tag="b", sdp=sdp(B_ADDR, 6000, direction="recvonly"))
    # re-INVITE from the callee: tags swapped
    lines = _ok(cmds, "offer", from_tag="b", to_tag="a", sdp=sdp(B_ADDR, 6000))
    assert (media_ports(call, "a"), media_ports(call, "b")) == before
    assert f"m=audio {before[0][0]} RTP/AVP 0 8" in lines
    assert len(binder.bound) == 2
    assert binder.released == []


def test_reoffer_with_changed_peer_port_renews_callee_side_ports() -> None:
    cmds, binder = build()
    call = _answered(cmds)
    a_before, b_before = media_ports(call, "a"), media_ports(call, "b")
    lines = _ok(cmds, "offer", from_tag="a", to_tag="b", sdp=sdp(port=5010))
    b_after = media_ports(call, "b")
    assert b_after != b_before
    assert b_after[1] == b_after[0] + 1 and b_after[0] % 2 == 0
    assert media_ports(call, "a") == a_before  # the offerer's own ports stay
    assert f"m=audio {b_after[0]} RTP/AVP 0 8" in lines
    assert binder.released == [(LOCAL4, b_before[0])]
    assert sorted(binder.live) == sorted([(LOCAL4, a_before[0]), (LOCAL4, b_after[0])])


def test_reoffer_with_changed_peer_port_and_port_latching_keeps_ports() -> None:
    cmds, binder = build()
    call = _answered(cmds)
    before = (media_ports(call, "a"), media_ports(call, "b"))
    lines = _ok(
        cmds, "offer", from_tag="a", to_tag="b", flags=["port-latching"], sdp=sdp(port=5010)
    )
    assert (media_ports(call, "a"), media_ports(call, "b")) == before
    assert f"m=audio {before[1][0]} RTP/AVP 0 8" in lines
    assert binder.released == []
    remote = call.monologues["a"].medias[0].remote_rtp
    assert remote is not None and remote.port == 5010


# --- forking -----------------------------------------------------------------------------------


def test_early_media_forks_get_their_own_offerer_side_ports() -> None:
    cmds, binder = build()
    _ok(cmds, "offer", from_tag="a", via_branch="z1", sdp=sdp())
    call = _call(cmds)
    first = media_ports(call, "a")
    callee_side = call.parties()[1].medias[0].port

    one = _ok(cmds, "answer", from_tag="a", to_tag="b1", via_branch="z1", sdp=sdp(B_ADDR, 6000))
    assert f"m=audio {first[0]} RTP/AVP 0 8" in one
    two = _ok(cmds, "answer", from_tag="a", to_tag="b2", via_branch="z1", sdp=sdp(C_ADDR, 7000))
    second = media_ports(call, "a")
    assert second != first
    assert f"m=audio {second[0]} RTP/AVP 0 8" in two
    assert call.monologues["b1"] is call.monologues["b2"]  # b2 answers b1's branch
    assert call.monologues["b1"].aliases == ("b2",)
    assert call.monologues["b1"].medias[0].port == callee_side

    again = _ok(cmds, "answer", from_tag="a", to_tag="b1", via_branch="z1", sdp=sdp(B_ADDR, 6000))
    assert media_ports(call, "a") == first
    assert f"m=audio {first[0]} RTP/AVP 0 8" in again
    assert call.monologues["a"].in_dialogue_with == "b1"
    assert [m.port for m in call.monologues["a"].other_dialogues["b2"]] == [second[0]]
    assert len(binder.bound) == 3
    assert binder.released == []


def test_parallel_forking_by_via_branch() -> None:
    cmds, binder = build()
    _ok(cmds, "offer", from_tag="a", via_branch="z1", sdp=sdp())
    _ok(cmds, "offer", from_tag="a", via_branch="z2", sdp=sdp())
    call = _call(cmds)
    assert sorted(call.branches) == ["z1", "z2"]
    z1, z2 = call.branches["z1"].medias[0].port, call.branches["z2"].medias[0].port
    assert z1 != z2
    offerer = media_ports(call, "a")

    one = _ok(cmds, "answer", from_tag="a", to_tag="b2", via_branch="z2", sdp=sdp(B_ADDR, 6000))
    assert call.monologues["b2"] is call.branches["z2"]
    assert call.monologues["b2"].medias[0].port == z2
    assert f"m=audio {offerer[0]} RTP/AVP 0 8" in one

    two = _ok(cmds, "answer", from_tag="a", to_tag="b1", via_branch="z1", sdp=sdp(C_ADDR, 7000))
    assert call.monologues["b1"] is call.branches["z1"]
    assert call.monologues["b1"].medias[0].port == z1
    forked = media_ports(call, "a")
    assert forked != offerer
    assert f"m=audio {forked[0]} RTP/AVP 0 8" in two
    assert len(binder.bound) == 4


def test_release_call_releases_every_port_including_forks() -> None:
    cmds, binder = build()
    _ok(cmds, "offer", from_tag="a", via_branch="z1", sdp=sdp(video=5002))
    _ok(cmds, "offer", from_tag="a", via_branch="z2", sdp=sdp(video=5002))
    _ok(cmds, "answer", from_tag="a", to_tag="b1", via_branch="z1", sdp=sdp(B_ADDR, video=6002))
    _ok(cmds, "answer", from_tag="a", to_tag="b2", via_branch="z2", sdp=sdp(C_ADDR, video=7002))
    call = _call(cmds)
    bound = sorted(binder.bound)
    assert len(bound) == 8  # 2 medias x (a, a's fork, z1, z2)
    cmds.signalling.release_call(call)
    assert sorted(binder.released) == bound
    assert binder.live == {}
    assert all(m.port == 0 and m.local is None and not m.streams for m in call.all_medias())
    assert sum(p.in_use for p in cmds.signalling.ports.pools.values()) == 0


# --- families, interfaces, addresses -----------------------------------------------------------


def test_address_family_ip6_towards_the_callee() -> None:
    cmds, binder = build()
    offer = _ok(cmds, "offer", from_tag="a", sdp=sdp(), address_family="IP6")
    call = _call(cmds)
    branch = call.parties()[1].medias[0]
    assert branch.local is not None and branch.local.local == LOCAL6
    assert _m_c(offer) == [
        f"c=IN IP6 {LOCAL6}",
        f"m=audio {branch.port} RTP/AVP 0 8",
        f"a=rtcp:{branch.port + 1}",
    ]
    # the answer goes back in the offerer's family without being asked
    answer = _ok(cmds, "answer", from_tag="a", to_tag="b", sdp=sdp("2001:db8::20", 6000))
    a_port = call.monologues["a"].medias[0].port
    assert _m_c(answer) == [
        f"c=IN IP4 {LOCAL4}",
        f"m=audio {a_port} RTP/AVP 0 8",
        f"a=rtcp:{a_port + 1}",
    ]
    assert sorted(binder.live) == sorted([(LOCAL4, a_port), (LOCAL6, branch.port)])


def test_ipv6_input_stays_ipv6() -> None:
    cmds, _ = build()
    offer = _ok(cmds, "offer", from_tag="a", sdp=sdp("2001:db8::10"))
    assert f"c=IN IP6 {LOCAL6}" in offer
    assert all(m.local and m.local.local == LOCAL6 for m in _call(cmds).all_medias())


def test_direction_picks_named_interfaces_and_advertised_addresses() -> None:
    ifaces = interfaces(
        LocalAddress("pub", "10.0.0.1", "192.0.2.1"),
        LocalAddress("priv", "10.1.0.1", "10.1.0.1"),
    )
    cmds, binder = build(ifaces=ifaces)
    offer = _ok(cmds, "offer", from_tag="a", sdp=sdp(), direction=["priv", "pub"])
    assert "c=IN IP4 192.0.2.1" in offer  # the callee sees pub's advertised address
    answer = _ok(cmds, "answer", from_tag="a", to_tag="b", sdp=sdp(B_ADDR, 6000))
    assert "c=IN IP4 10.1.0.1" in answer
    call = _call(cmds)
    assert (call.monologues["a"].interface, call.monologues["b"].interface) == ("priv", "pub")
    a, b = call.monologues["a"].medias[0], call.monologues["b"].medias[0]
    assert sorted(binder.bound) == sorted([("10.1.0.1", a.port), ("10.0.0.1", b.port)])
    # the interfaces are remembered: a re-INVITE without direction keeps them
    again = _ok(cmds, "offer", from_tag="a", to_tag="b", sdp=sdp())
    assert "c=IN IP4 192.0.2.1" in again
    assert len(binder.bound) == 2


def _c(lines: list[str]) -> str:
    (line,) = [ln for ln in lines if ln.startswith("c=")]
    return line.rsplit(" ", 1)[1]


def _round_robin(port_max: int = 30999) -> tuple[Commands, FakeBinder]:
    return build(
        port_max=port_max,
        ifaces=Interfaces(
            [
                LocalAddress("pub:1", "10.0.0.1", "10.0.0.1"),
                LocalAddress("pub:2", "10.0.0.2", "10.0.0.2"),
                LocalAddress("pub:3", "10.0.0.3", "10.0.0.3"),
            ]
        ),
    )


def test_a_round_robin_pool_spreads_parties_and_each_keeps_its_interface() -> None:
    cmds, binder = _round_robin()
    seen = []
    for call_id in ("c1", "c2"):
        offer = cmds.handle(req("offer", call_id, from_tag="a", sdp=sdp()), T0)
        answer = cmds.handle(
            req("answer", call_id, from_tag="a", to_tag="b", sdp=sdp(B_ADDR, 6000)), T0
        )
        # the offer goes to the callee with its address, the answer to the caller with its
        seen.append((_c(offer["sdp"].split("\r\n")), _c(answer["sdp"].split("\r\n"))))
    # no direction and the first interface named pub:1: the pool "pub", the receiver of
    # the offer first (as rtpengine), one turn per party
    assert seen == [("10.0.0.1", "10.0.0.2"), ("10.0.0.3", "10.0.0.1")]
    call = cmds.calls["c1"]
    assert [m.local.interface for m in call.all_medias() if m.local] == ["pub:2", "pub:1"]
    # a re-offer naming the pool keeps both parties where they are, ports and all
    bound = len(binder.bound)
    again = _ok(cmds, "offer", from_tag="a", to_tag="b", sdp=sdp(), direction=["pub", "pub"])
    assert _c(again) == "10.0.0.1" and len(binder.bound) == bound


def test_a_round_robin_pool_skips_an_interface_without_ports() -> None:
    cmds, _ = _round_robin(port_max=30003)  # two pairs per address
    full = _ok(cmds, "offer", call_id="c0", from_tag="a", sdp=sdp(), direction=["pub:1", "pub:1"])
    assert _c(full) == "10.0.0.1"  # pub:1 named on both sides: both its pairs taken
    got: list[object] = []
    for call_id in ("c1", "c2", "c3"):
        reply = cmds.handle(
            req("offer", call_id, from_tag="a", sdp=sdp(), direction=["pub", "pub"]), T0
        )
        got.append(_c(reply["sdp"].split("\r\n")) if reply["result"] == "ok" else reply)
    # pub:1's turn comes twice and is skipped both times (the callee's side goes to pub:2,
    # the caller's to pub:3), then nothing is left anywhere (as rtpengine answers it)
    assert got == ["10.0.0.2", "10.0.0.2", {"result": "error", "error-reason": "Ran out of ports"}]
    caller = cmds.calls["c2"].monologues["a"].medias[0].local
    assert caller is not None and caller.interface == "pub:3"


def test_unknown_direction_names_fall_back_to_the_default_interface() -> None:
    cmds, _ = build()
    offer = _ok(cmds, "offer", from_tag="a", sdp=sdp(), direction=["lan", "wan"])
    assert f"c=IN IP4 {LOCAL4}" in offer
    assert all(m.local and m.local.interface == "default" for m in _call(cmds).all_medias())


def test_legacy_internal_external_mean_families() -> None:
    cmds, _ = build()
    offer = _ok(cmds, "offer", from_tag="a", sdp=sdp(), direction=["internal", "external"])
    assert f"c=IN IP6 {LOCAL6}" in offer
    answer = _ok(cmds, "answer", from_tag="a", to_tag="b", sdp=sdp("2001:db8::20", 6000))
    assert f"c=IN IP4 {LOCAL4}" in answer
    call = _call(cmds)
    assert (call.monologues["a"].family, call.monologues["b"].family) == ("IP4", "IP6")


def test_media_address_is_written_but_not_learned() -> None:
    cmds, _ = build()
    offer = _ok(cmds, "offer", from_tag="a", sdp=sdp(), media_address="198.51.100.123")
    assert "c=IN IP4 198.51.100.123" in offer
    media = _call(cmds).monologues["a"].medias[0]
    assert media.remote_rtp is not None and media.remote_rtp.address == A_ADDR
    assert media.local is not None and media.local.local == LOCAL4


def test_sip_source_address_uses_received_from() -> None:
    cmds, _ = build()
    _ok(
        cmds,
        "offer",
        from_tag="a",
        sdp=sdp(),
        flags=["SIP-source-address"],
        received_from=["IP4", "192.0.2.99"],
    )
    media = _call(cmds).monologues["a"].medias[0]
    assert [(s.endpoint, s.advertised_endpoint) for s in media.streams] == [
        (media.remote_rtp, media.remote_rtp),
        (media.remote_rtcp, media.remote_rtcp),
    ]
    assert media.remote_rtp is not None and media.remote_rtcp is not None
    assert (media.remote_rtp.address, media.remote_rtp.port) == ("192.0.2.99", 5000)
    assert (media.remote_rtcp.address, media.remote_rtcp.port) == ("192.0.2.99", 5001)
    assert _call(cmds).monologues["a"].sip_source == "192.0.2.99"


@pytest.mark.parametrize(
    ("default", "flags", "expected"),
    [
        (False, [], A_ADDR),
        (False, ["trust-address"], A_ADDR),
        (True, [], "192.0.2.99"),
        (True, ["trust-address"], A_ADDR),
    ],
)
def test_trust_address_and_sip_source_default(
    default: bool, flags: list[str], expected: str
) -> None:
    cmds, _ = build(sip_source_default=default)
    _ok(cmds, "offer", from_tag="a", sdp=sdp(), flags=flags, received_from=["IP4", "192.0.2.99"])
    remote = _call(cmds).monologues["a"].medias[0].remote_rtp
    assert remote is not None and remote.address == expected


def test_strict_source_and_asymmetric_land_on_both_parties() -> None:
    cmds, _ = build()
    _ok(cmds, "offer", from_tag="a", sdp=sdp(), flags=["strict-source", "asymmetric"])
    call = _call(cmds)
    assert [(p.strict_source, p.asymmetric) for p in call.parties()] == [(True, True)] * 2
    _ok(cmds, "answer", from_tag="a", to_tag="b", sdp=sdp(B_ADDR, 6000), flags=["symmetric"])
    # symmetric switches asymmetric off again; strict-source sticks
    assert [(p.strict_source, p.asymmetric) for p in call.parties()] == [(True, False)] * 2


def test_media_handover_on_both_parties() -> None:
    cmds, _ = build()
    _ok(cmds, "offer", from_tag="a", sdp=sdp(), flags=["media-handover"])
    assert [p.media_handover for p in _call(cmds).parties()] == [True, True]


def test_rejected_media_gets_no_ports() -> None:
    cmds, binder = build()
    body = sdp(video=0)
    lines = _ok(cmds, "offer", from_tag="a", sdp=body)
    assert "m=video 0 RTP/AVP 96" in lines
    assert len(binder.bound) == 2
    assert [m.port for m in _call(cmds).all_medias()] == [
        _call(cmds).monologues["a"].medias[0].port,
        0,
        _call(cmds).parties()[1].medias[0].port,
        0,
    ]


# --- the port allocator ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("port_min", "port_max", "workers"),
    [(30000, 30999, 1), (30001, 30020, 3), (30001, 30021, 3), (40000, 40099, 7), (30000, 30003, 4)],
)
def test_slices_are_disjoint_and_cover_the_range(
    port_min: int, port_max: int, workers: int
) -> None:
    ports = PortAllocator(port_min, port_max, workers)
    first = port_min + (port_min & 1)
    pairs = (port_max - first + 1) // 2
    assert len(ports.slices) == workers
    covered: list[int] = []
    for low, high in ports.slices:
        assert low % 2 == 0 and (high - low + 1) % 2 == 0
        covered.extend(range(low, high + 1))
    assert covered == list(range(first, first + 2 * pairs))  # disjoint, in order, no gap
    sizes = [(high - low + 1) // 2 for low, high in ports.slices]
    assert max(sizes) - min(sizes) <= 1
    for worker, (low, high) in enumerate(ports.slices):
        if high >= low:
            assert ports.worker_of(low) == ports.worker_of(high) == worker
            assert ports.pool("192.0.2.1", worker).capacity == (high - low + 1) // 2


def test_slices_for_an_odd_port_min() -> None:
    ports = PortAllocator(30001, 30020, 3)
    assert ports.slices == [(30002, 30007), (30008, 30013), (30014, 30019)]
    assert ports.worker_of(30013) == 1
    assert ports.worker_of(30020) == 0  # outside every slice
    ports = PortAllocator(30001, 30021, 3)
    assert ports.slices == [(30002, 30009), (30010, 30015), (30016, 30021)]


def test_allocation_stays_in_the_slice_and_release_returns_to_it() -> None:
    ports = PortAllocator(30000, 30099, 4)
    taken = [ports.allocate("192.0.2.1", 3) for _ in range(12)]
    low, high = ports.slices[3]
    assert all(low <= p and p + 1 <= high and p % 2 == 0 for p in taken)
    assert len(set(taken)) == 12
    assert ports.pool("192.0.2.1", 3).in_use == 12
    for port in taken:
        ports.release("192.0.2.1", port)
    assert ports.pool("192.0.2.1", 3).in_use == 0
    assert ports.pool("192.0.2.1", 7).in_use == 0  # worker numbers wrap around
    assert ports.pool("192.0.2.1", 7) is ports.pool("192.0.2.1", 3)


def test_each_address_has_its_own_pool() -> None:
    ports = PortAllocator(30000, 30001)
    assert ports.allocate("192.0.2.1") == 30000
    assert ports.allocate("192.0.2.2") == 30000


def test_a_fork_keeps_what_a_webrtc_offerer_said() -> None:
    # the offerer's DTLS fingerprint and ICE credentials must survive a second answerer:
    # its answer back still needs our DTLS role and our ICE candidates
    cmds, _ = build()
    webrtc = sdp(
        extra=[
            "a=ice-ufrag:abcd",
            "a=ice-pwd:abcdefghijklmnopqrstuvwx",
            "a=candidate:1 1 UDP 2130706431 192.0.2.10 5000 typ host",
            "a=fingerprint:sha-256 " + ":".join(["AB"] * 32),
            "a=setup:actpass",
            "a=rtcp-mux",
        ]
    ).replace("RTP/AVP", "UDP/TLS/RTP/SAVPF")
    _ok(
        cmds,
        "offer",
        from_tag="a",
        via_branch="z1",
        sdp=webrtc,
        ICE="remove",
        transport_protocol="RTP/AVP",
    )
    one = _ok(cmds, "answer", from_tag="a", to_tag="b1", via_branch="z1", sdp=sdp(B_ADDR, 6000))
    two = _ok(cmds, "answer", from_tag="a", to_tag="b2", via_branch="z1", sdp=sdp(C_ADDR, 7000))
    for lines in (one, two):
        answer = "\n".join(lines)
        assert "UDP/TLS/RTP/SAVPF" in answer
        assert "a=setup:active" in answer
        assert "a=ice-ufrag:" in answer and "a=candidate:" in answer


def test_lines_made_once_by_the_rewrite_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Our c= and a=ptime lines are made once per address and packet time and shared, up to
    a limit (an ng media-address and an SDP's ptime may be anything): past it the table
    starts over, the SDP the same."""
    from relayd.calls import rewrite
    from relayd.sdp.intern import Recurring

    monkeypatch.setattr(rewrite, "_CONNECTIONS", Recurring(2))
    monkeypatch.setattr(rewrite, "_PTIME_LINES", Recurring(64))
    cmds, _ = build()
    for n in range(1, 80):
        address = f"192.0.2.{n}"
        lines = _ok(
            cmds,
            "offer",
            call_id=f"c{n}",
            from_tag="a",
            sdp=sdp(extra=[f"a=ptime:{n}"]),
            media_address=address,
        )
        assert f"c=IN IP4 {address}" in lines
        assert f"a=ptime:{n}" in lines
        cmds.handle(req("delete", call_id=f"c{n}", from_tag="a"), T0)
    assert 0 < len(rewrite._CONNECTIONS) <= 2
    assert 0 < len(rewrite._PTIME_LINES) <= 64
    last = rewrite._CONNECTIONS.get(("IP4", "192.0.2.79"))  # the latest kept, the table renewed
    assert last is not None and last.text == "c=IN IP4 192.0.2.79"
