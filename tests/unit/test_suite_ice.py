"""ICE in SDP as rtpengine 10.5 writes it (its daemon test suite's ICE scenarios, at ng level).

Each test drives offers and answers through :class:`Commands` and checks the SDP lines
rtpengine writes: ``ICE-lite``, ICE restarts, re-INVITEs that keep ports and credentials,
trickle ICE placeholders, ``ICE=optional`` (passthrough) and ``media-address``.
"""

from __future__ import annotations

import asyncio
import os
import re
import select
import socket
from typing import Any

import pytest
from aioice import ice as aioice_ice
from aioice import stun as aioice_stun
from hypothesis import given
from hypothesis import strategies as st

from relayd.calls.commands import Commands
from relayd.calls.ice import Candidate, parse_candidate, passthrough_preferences, priority
from relayd.ipc import SocketSpec
from relayd.worker.ice import MAX_SENDS, RTO, IceAgent, parse_candidates
from relayd.worker.secure import SecurePath
from relayd.worker.session import Leg
from relayd.worker.sockets import MediaSocket
from tests.unit.calls import LOCAL4, LOCAL6, T0, build, req

PEER_ICE = [
    "a=ice-ufrag:asbsdfds",
    "a=ice-pwd:sfhwsrgyergws45ujhsrthsrhH",
    "a=candidate:sfthqw45hdfgdfsb 1 UDP 2130706431 198.51.100.3 2002 typ host",
    "a=candidate:ujksdfghfdfgdfsb 1 UDP 2130706175 2001:db8:abcd::3 2002 typ host",
    "a=candidate:sfthqw45hdfgdfsb 2 UDP 2130706430 198.51.100.3 2003 typ host",
    "a=candidate:ujksdfghfdfgdfsb 2 UDP 2130706174 2001:db8:abcd::3 2003 typ host",
]


def body(*lines: str, port: int = 2000, address: str = "198.51.100.1", c: str = "") -> str:
    """An SDP with one PCMU audio section; ``c`` replaces the media c= line's address."""
    family = "IP6" if ":" in (c or address) else "IP4"
    head = ["v=0", f"o=- 1545997027 1 IN IP4 {address}", "s=tester", "t=0 0"]
    media = [f"m=audio {port} RTP/AVP 0", f"c=IN {family} {c or address}", *lines]
    return "\r\n".join(head + media) + "\r\n"


def send(cmds: Commands, command: str, sdp: str, from_tag: str, **keys: Any) -> list[str]:
    reply = cmds.handle(req(command, from_tag=from_tag, sdp=sdp, **keys), T0)
    assert reply["result"] == "ok", reply
    return str(reply["sdp"]).splitlines()


def offer(cmds: Commands, sdp: str, from_tag: str = "a", **keys: Any) -> list[str]:
    return send(cmds, "offer", sdp, from_tag, **keys)


def answer(cmds: Commands, sdp: str, to_tag: str = "b", **keys: Any) -> list[str]:
    return send(cmds, "answer", sdp, "a", to_tag=to_tag, **keys)


def value(lines: list[str], prefix: str) -> str:
    found = [ln[len(prefix) :] for ln in lines if ln.startswith(prefix)]
    assert found, f"no {prefix} in {lines}"
    return found[0]


def candidates(lines: list[str]) -> list[list[str]]:
    return [ln.split()[1:6] for ln in lines if ln.startswith("a=candidate:")]


def port(lines: list[str]) -> int:
    return int(value(lines, "m=audio ").split()[0])


# -- ICE-lite and rtcp-mux kept with a party ------------------------------------------------


def test_ice_lite_backward_then_forward_keeps_mux_port_and_credentials() -> None:
    cmds, _ = build()
    a = body(
        "a=ice-pwd:bd5dfhdfddd8e1bc6",
        "a=ice-ufrag:q25293",
        "a=candidate:1 1 UDP 2130706303 198.51.100.1 2000 typ host",
        "a=rtcp-mux",
    )
    keys: dict[str, Any] = {"ICE": "remove", "ICE-lite": "backward", "rtcp_mux": ["demux"]}
    out = offer(cmds, a, **keys)
    assert not [ln for ln in out if "ice" in ln or "candidate" in ln]
    assert "a=rtcp-mux" not in out
    back = answer(cmds, body(port=2002), ICE="force")
    # a=ice-lite at session level: before the first m= line
    assert back.index("a=ice-lite") < back.index(next(ln for ln in back if ln.startswith("m=")))
    assert "a=rtcp-mux" in back
    assert value(back, "a=rtcp:") == str(port(back))
    assert [c[0] for c in candidates(back)] == ["1", "1"]  # RTCP shares the RTP port
    ufrag = value(back, "a=ice-ufrag:")
    # the other way round: ICE-lite forward, rtcp-mux offer; mux stays in use with A
    again = offer(
        cmds,
        body(port=2002),
        from_tag="b",
        to_tag="a",
        ICE="force",
        rtcp_mux=["offer"],
        **{"ICE-lite": "forward"},
    )
    assert "a=ice-lite" in again
    assert port(again) == port(back)
    assert value(again, "a=rtcp:") == str(port(again))
    assert "a=rtcp-mux" in again
    assert [c[0] for c in candidates(again)] == ["1", "1"]
    assert value(again, "a=ice-ufrag:") == ufrag


def test_no_ice_lite_without_the_option() -> None:
    cmds, _ = build()
    offer(cmds, body(*PEER_ICE[:3]))
    assert "a=ice-lite" not in answer(cmds, body(port=2002))


# -- restarts and re-INVITEs -----------------------------------------------------------------


def test_a_new_ufrag_restarts_ice_and_default_keeps_ice_removed() -> None:
    cmds, _ = build()
    first = ["a=ice-pwd:bd5e845657ecb8d6dd8e1bc6", "a=ice-ufrag:q2758e93"]
    offer(cmds, body(*first), ICE="remove")
    before = answer(cmds, body(port=2002))
    restarted = ["a=ice-pwd:bd5e8gssdfecb8d6dd8e1bc6", "a=ice-ufrag:qdgsdfs3"]
    out = offer(cmds, body(*restarted))  # no ICE option: B stays without ICE
    assert not [ln for ln in out if ln.startswith(("a=ice-", "a=candidate"))]
    after = answer(cmds, body(port=2002))
    assert port(after) == port(before)
    assert value(after, "a=ice-ufrag:") != value(before, "a=ice-ufrag:")
    assert value(after, "a=ice-pwd:") != value(before, "a=ice-pwd:")


def test_a_moved_offerer_keeps_ports_and_credentials_with_ice() -> None:
    cmds, _ = build()
    first = offer(cmds, body(port=16478), ICE="force")
    moved = offer(cmds, body(port=16480), ICE="force")
    assert port(moved) == port(first)
    assert value(moved, "a=ice-ufrag:") == value(first, "a=ice-ufrag:")


def test_a_moved_offerer_without_port_latching_gets_new_ports_and_credentials() -> None:
    cmds, _ = build()
    flags = ["no port latching"]
    first = offer(cmds, body(port=16478), ICE="force", flags=flags)
    same = offer(cmds, body(port=16478), ICE="force", flags=flags)
    assert (port(same), value(same, "a=ice-ufrag:")) == (port(first), value(first, "a=ice-ufrag:"))
    moved = offer(cmds, body(port=16480), ICE="force", flags=flags)
    assert port(moved) != port(first)
    assert value(moved, "a=ice-ufrag:") != value(first, "a=ice-ufrag:")


# -- trickle ICE -----------------------------------------------------------------------------

TRICKLE = ["a=ice-ufrag:Ci7n", "a=ice-pwd:l9QndxLG6OycZRcQe9zcT95c", "a=ice-options:trickle"]


def test_a_trickle_placeholder_address_is_no_hold() -> None:
    for keys in ({}, {"ICE": "remove"}):
        cmds, _ = build()
        out = offer(cmds, body(*TRICKLE, port=9, c="0.0.0.0"), **keys)
        assert f"c=IN IP4 {LOCAL4}" in out
        assert "a=sendrecv" in out
        assert bool(candidates(out)) == (keys == {})


def test_a_trickle_placeholder_in_ipv6() -> None:
    cmds, _ = build()
    out = offer(cmds, body(*TRICKLE, port=9, c="::"))
    assert f"c=IN IP6 {LOCAL6}" in out
    assert candidates(out)[0][3] == LOCAL6  # the first candidate in the family of c=


def test_a_zero_address_without_ice_is_still_hold() -> None:
    cmds, _ = build()
    out = offer(cmds, body(port=2000, c="0.0.0.0"))
    assert "c=IN IP4 0.0.0.0" in out
    assert "a=sendonly" in out


def test_trickle_ice_flag_offers_trickle() -> None:
    cmds, _ = build()
    out = offer(cmds, body(), ICE="force", flags=["trickle ICE"])
    ice = [ln for ln in out if ln.startswith(("a=ice-", "a=candidate", "a=end-of"))]
    assert ice[2] == "a=ice-options:trickle"
    assert ice[-1] == "a=end-of-candidates"
    assert len(candidates(out)) == 4


# -- ICE=optional, passthrough -----------------------------------------------------------------


def test_optional_adds_ice_to_a_plain_offer() -> None:
    cmds, _ = build()
    out = offer(cmds, body(), ICE="optional")
    assert value(out, "a=ice-ufrag:")
    assert [c[0] for c in candidates(out)] == ["1", "1", "2", "2"]
    # an answer can only take ICE to an offerer that offered it
    assert not candidates(answer(cmds, body(port=2002), ICE="optional"))


def test_optional_on_ice_passes_the_peers_ice_through() -> None:
    cmds, _ = build()
    out = offer(cmds, body(*PEER_ICE), ICE="optional")
    for line in PEER_ICE:
        assert line in out
    assert not [ln for ln in out if ln.startswith("a=ice-ufrag:") and "asbsdfds" not in ln]
    ours = [c for c in candidates(out) if c[4] not in ("2002", "2003")]
    # below the peer's lowest host priority: type preference 125, then wrapping in 32 bits
    assert [c[2] for c in ours] == ["2097152255", "4294967295", "2097152254", "4294967294"]
    assert [c[3] for c in ours] == [LOCAL4, LOCAL6, LOCAL4, LOCAL6]
    # the answerer without ICE: ICE ends for the offerer as well
    back = answer(cmds, body(port=2002), ICE="optional")
    assert not [ln for ln in back if ln.startswith(("a=ice-", "a=candidate"))]


def test_optional_with_media_address_names_it_in_every_candidate() -> None:
    cmds, _ = build()
    out = offer(
        cmds,
        body(*PEER_ICE),
        ICE="optional",
        media_address="3.4.5.6",
        flags=["full-rtcp-attribute"],
    )
    assert "c=IN IP4 3.4.5.6" in out
    assert re.fullmatch(r"\d+ IN IP4 3\.4\.5\.6", value(out, "a=rtcp:"))
    ours = [c for c in candidates(out) if c[4] not in ("2002", "2003")]
    assert {c[3] for c in ours} == {"3.4.5.6"}


def test_force_answers_with_ice_where_optional_passthrough_would_not() -> None:
    cmds, _ = build()
    offer(cmds, body(*PEER_ICE), ICE="force")
    back = answer(cmds, body(port=2002), ICE="optional")
    assert value(back, "a=ice-ufrag:")
    assert len(candidates(back)) == 4


# -- the pure parts ----------------------------------------------------------------------------


def test_parse_candidate() -> None:
    assert parse_candidate("1 2 udp 2130706302 198.51.100.4 6127 typ host") == Candidate(
        "1", 2, "UDP", 2130706302, "198.51.100.4", 6127, "host"
    )
    assert parse_candidate("1 2 udp 2130706302 198.51.100.4 6127 host") is None
    assert parse_candidate("1 x udp 1 198.51.100.4 6127 typ host") is None


def test_priority_and_passthrough_preferences() -> None:
    assert priority(126, 0, 1) == 2130706431
    assert priority(126, 1, 2) == 2130706174
    peer = [parse_candidate(ln.split(":", 1)[1]) for ln in PEER_ICE[2:]]
    assert passthrough_preferences([c for c in peer if c is not None]) == (125, 65535)
    # a peer below the top gets ours one local preference up from its lowest
    low = Candidate("x", 1, "UDP", priority(100, 7, 1), "192.0.2.1", 1, "host")
    assert passthrough_preferences([low]) == (100, 6)
    assert passthrough_preferences([]) == (126, 0)


# -- the worker's ICE agent (relayd/worker/ice.py), messages read with aioice's codec -------------

OURS, OUR_PWD = "Ours1234", "ourpasswordourpassword1234"
THEIRS, THEIR_PWD = "q27e93", "bd5e8b8d6dd8e1bc6"


def controlling_socket(
    address: str, peer: tuple[str, int], extra: str = ""
) -> tuple[MediaSocket, socket.socket, SocketSpec]:
    """A relay socket on ``address`` whose spec makes its agent the controlling one, checking
    ``peer`` (a host candidate of component 1, then ``extra`` candidates)."""
    relay = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    relay.bind((address, 0))
    relay.setblocking(False)
    key = f"{address} {relay.getsockname()[1]}"
    candidates = ";".join(c for c in (f"{peer[0]} {peer[1]} 2130706431 1", extra) if c)
    spec = SocketSpec(
        key,
        ice_ufrag=OURS,
        ice_pwd=OUR_PWD,
        ice_remote_ufrag=THEIRS,
        ice_remote_pwd=THEIR_PWD,
        ice_controlling=True,
        ice_candidates=candidates,
    )
    return MediaSocket(relay, Leg(key)), relay, spec


HOST = ("198.51.100.4", 2412)
PRFLX = ("198.51.100.8", 3412)


def agent(*, controlling: bool, lite: bool = False) -> IceAgent:
    return IceAgent(
        OURS,
        OUR_PWD,
        THEIRS,
        THEIR_PWD,
        controlling=controlling,
        lite=lite,
        candidates=[(HOST, 2130706303), (("2001:db8::4", 2412), 2130706175)],
    )


def their_check(*, controlling: bool, tie_breaker: int = 1, nominate: bool = False) -> bytes:
    """A check from the party, as the rtpengine suite's tester (a full agent) sends it."""
    request = aioice_stun.Message(
        aioice_stun.Method.BINDING, aioice_stun.Class.REQUEST, transaction_id=os.urandom(12)
    )
    request.attributes["USERNAME"] = f"{OURS}:{THEIRS}"
    request.attributes["PRIORITY"] = 1853824767
    role = "ICE-CONTROLLING" if controlling else "ICE-CONTROLLED"
    request.attributes[role] = tie_breaker
    if nominate:
        request.attributes["USE-CANDIDATE"] = None
    request.add_message_integrity(OUR_PWD.encode())
    request.add_fingerprint()
    return bytes(request)


def success(check: bytes, source: tuple[str, int], password: str = THEIR_PWD) -> bytes:
    """The party's answer to one of our checks."""
    request = aioice_stun.parse_message(check)
    response = aioice_stun.Message(
        aioice_stun.Method.BINDING,
        aioice_stun.Class.RESPONSE,
        transaction_id=request.transaction_id,
    )
    response.attributes["XOR-MAPPED-ADDRESS"] = source
    response.add_message_integrity(password.encode())
    response.add_fingerprint()
    return bytes(response)


def our_check(data: bytes) -> aioice_stun.Message:
    """One of our checks: SOFTWARE first (the suite looks for "rtpengine" there), USERNAME
    the party's ufrag then ours, MESSAGE-INTEGRITY by the party's password."""
    assert data[:2] == b"\x00\x01" and data[20:22] == b"\x80\x22"
    message = aioice_stun.parse_message(data)
    assert message.check_message_integrity(THEIR_PWD.encode())
    assert message.attributes["SOFTWARE"].startswith("rtpengine")
    assert message.attributes["USERNAME"] == f"{THEIRS}:{OURS}"
    assert len(data) < 256
    return message


def test_a_full_agent_checks_the_sdp_candidates_of_its_family() -> None:
    ice = agent(controlling=False)
    assert ice.next_timeout() == 0.0
    sends = ice.handle_timeout(0.0)
    assert [target for _, target in sends] == [HOST]  # the IPv6 candidate is no pair of IPv4
    message = our_check(sends[0][0])
    assert "ICE-CONTROLLED" in message.attributes
    assert "USE-CANDIDATE" not in message.attributes
    # unanswered: sent again after RTO, doubling, then the pair fails
    times = [0.0]
    while (when := ice.next_timeout()) is not None:
        again = ice.handle_timeout(when)
        if again:
            assert again[0][0] == sends[0][0]
            times.append(when)
    assert len(times) == MAX_SENDS
    assert times[1] - times[0] == RTO and times[2] - times[1] == 2 * RTO


def test_a_check_from_an_unknown_address_teaches_a_peer_reflexive_candidate() -> None:
    ice = agent(controlling=False)
    ice.handle_timeout(0.0)
    answer = ice.handle(their_check(controlling=True), PRFLX, 0.01)
    assert answer.reply is not None and answer.error == ""
    reply = aioice_stun.parse_message(answer.reply)
    assert reply.check_message_integrity(OUR_PWD.encode())
    assert reply.message_class == aioice_stun.Class.RESPONSE
    assert reply.attributes["XOR-MAPPED-ADDRESS"] == PRFLX
    [(triggered, target)] = answer.sends
    assert target == PRFLX
    our_check(triggered)
    # its success: the pair is valid; controlled, we nominate nothing ourselves
    done = ice.handle(success(triggered, PRFLX), PRFLX, 0.02)
    assert (done.nominated, done.sends, done.error) == (False, (), "")
    assert ice.nominated is None
    # the controlling party nominates it
    nominated = ice.handle(their_check(controlling=True, nominate=True), PRFLX, 0.03)
    assert nominated.nominated and ice.nominated == PRFLX


def test_controlling_nominates_the_first_pair_that_succeeds() -> None:
    ice = agent(controlling=True)
    ice.handle_timeout(0.0)
    answer = ice.handle(their_check(controlling=False), PRFLX, 0.01)
    [(triggered, _)] = answer.sends
    assert "ICE-CONTROLLING" in our_check(triggered).attributes
    step = ice.handle(success(triggered, PRFLX), PRFLX, 0.02)
    [(nomination, target)] = step.sends
    assert target == PRFLX
    assert "USE-CANDIDATE" in our_check(nomination).attributes
    assert ice.nominated is None
    done = ice.handle(success(nomination, PRFLX), PRFLX, 0.03)
    assert done.nominated and ice.nominated == PRFLX
    assert ice.handle_timeout(10.0) == []  # nominated: no more ordinary checks


def test_responses_must_be_ours_symmetric_and_authentic() -> None:
    ice = agent(controlling=True)
    [(check, _)] = ice.handle_timeout(0.0)
    assert ice.handle(success(check, HOST), PRFLX, 0.01).sends == ()  # from elsewhere
    forged = ice.handle(success(check, HOST, password="wrong-password-12"), HOST, 0.01)
    assert "MESSAGE-INTEGRITY" in forged.error
    assert ice.handle(success(check, HOST), HOST, 0.01).sends  # the real one: nominating


def test_role_conflicts_follow_the_tie_breakers() -> None:
    ice = agent(controlling=True)
    ice.tie_breaker = 1000
    lost = ice.handle(their_check(controlling=True, tie_breaker=2000), PRFLX, 0.0)
    assert lost.reply is not None and not ice.controlling  # we switch; the check is answered
    assert aioice_stun.parse_message(lost.reply).message_class == aioice_stun.Class.RESPONSE
    ice = agent(controlling=True)
    ice.tie_breaker = 3000
    kept = ice.handle(their_check(controlling=True, tie_breaker=2000), PRFLX, 0.0)
    reply = aioice_stun.parse_message(kept.reply or b"")
    assert reply.message_class == aioice_stun.Class.ERROR
    assert reply.attributes["ERROR-CODE"][0] == 487 and ice.controlling
    # ICE-lite: no checks of ours, and a controlled peer is told to control
    lite = agent(controlling=True, lite=True)
    assert lite.next_timeout() is None and not lite.controlling
    reply = aioice_stun.parse_message(
        lite.handle(their_check(controlling=False), PRFLX).reply or b""
    )
    assert reply.attributes["ERROR-CODE"][0] == 487


def test_parse_candidates_keeps_one_component_of_addresses() -> None:
    text = "198.51.100.4 2412 2130706303 1;198.51.100.4 2413 2130706302 2;host.local 9 1 1;junk"
    assert parse_candidates(text, 1) == [(("198.51.100.4", 2412), 2130706303)]
    assert parse_candidates(text, 2) == [(("198.51.100.4", 2413), 2130706302)]


def _host_address() -> str | None:
    """A local IPv4 address aioice gathers a candidate on (it leaves out loopback)."""
    addresses = aioice_ice.get_host_addresses(True, False)
    return addresses[0] if addresses else None


@pytest.mark.skipif(_host_address() is None, reason="no non-loopback IPv4 address")
@pytest.mark.parametrize("controlling", [True, False], ids=["we-control", "aioice-controls"])
def test_the_agent_connects_with_aioice_over_real_sockets(controlling: bool) -> None:
    """aioice, a full agent, on one side; our agent on a real UDP socket on the other:
    each takes the other's candidates, and ICE completes on a nominated pair."""
    address = _host_address()
    assert address is not None

    async def run() -> tuple[str, int] | None:
        peer = aioice_ice.Connection(ice_controlling=not controlling, components=1)
        await peer.gather_candidates()
        ours = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        ours.bind((address, 0))
        ours.setblocking(False)
        theirs = [c for c in peer.local_candidates if c.host == address]
        ice = IceAgent(
            OURS,
            OUR_PWD,
            peer.local_username,
            peer.local_password,
            controlling=controlling,
            lite=False,
            candidates=[((c.host, c.port), c.priority) for c in theirs],
        )
        peer.remote_username, peer.remote_password = OURS, OUR_PWD
        host, port = ours.getsockname()
        await peer.add_remote_candidate(
            aioice_ice.Candidate("relayd", 1, "udp", 2130706431, host, port, "host")
        )
        await peer.add_remote_candidate(None)
        connecting = asyncio.ensure_future(peer.connect())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        try:
            while not connecting.done() or ice.nominated is None:
                assert loop.time() < deadline, "ICE did not complete"
                now = loop.time()
                for data, target in ice.handle_timeout(now):
                    ours.sendto(data, target)
                try:
                    data, source = ours.recvfrom(2048)
                except BlockingIOError:
                    await asyncio.sleep(0.005)
                    continue
                answer = ice.handle(data, source, now)
                assert answer.error == "", answer.error
                if answer.reply is not None:
                    ours.sendto(answer.reply, source)
                for check, target in answer.sends:
                    ours.sendto(check, target)
            await connecting
            return ice.nominated
        finally:
            await peer.close()
            ours.close()

    nominated = asyncio.run(run())
    assert nominated is not None and nominated[0] == address


def test_a_worker_socket_checks_nominates_and_latches_over_loopback() -> None:
    """The worker's crypto branch wired to the agent: a socket whose spec names the party's
    candidate checks it from its timer, nominates on success and latches the party there."""
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    peer.settimeout(2)
    where = peer.getsockname()
    ms, relay, spec = controlling_socket("127.0.0.1", where, extra="192.0.2.99 9 1 2")
    path = SecurePath(0, 2048, 64)
    try:
        path.configure(ms, spec)
        ms.crypto = True
        assert path.next_deadline() == 0.0
        path.fire(0.0)
        check, source = peer.recvfrom(2048)
        assert "USE-CANDIDATE" not in our_check(check).attributes
        peer.sendto(success(check, where), source)
        select.select([relay], [], [], 2)
        path.drain(ms, 0.01)
        nomination, _ = peer.recvfrom(2048)
        assert "USE-CANDIDATE" in our_check(nomination).attributes
        peer.sendto(success(nomination, where), source)
        select.select([relay], [], [], 2)
        path.drain(ms, 0.02)
        assert (ms.leg.endpoint, ms.leg.confirmed) == (where, True)
        assert ms.secure is not None and ms.secure.ice_state == "nominated"
        assert path.next_deadline() == float("inf")
    finally:
        peer.close()
        relay.close()


def test_one_nomination_per_component_across_our_addresses() -> None:
    v4 = agent(controlling=True)
    v6 = IceAgent(
        OURS,
        OUR_PWD,
        THEIRS,
        THEIR_PWD,
        controlling=True,
        lite=False,
        candidates=[(("2001:db8::4", 2412), 2130706175)],
        family=6,
    )
    v6.group = v4.group  # what SecurePath.link does for an alias socket
    [(check4, _)] = v4.handle_timeout(0.0)
    [(check6, _)] = v6.handle_timeout(0.0)
    first = v6.handle(success(check6, ("2001:db8::4", 2412)), ("2001:db8::4", 2412), 0.01)
    [(nomination, _)] = first.sends
    assert "USE-CANDIDATE" in our_check(nomination).attributes
    assert v4.handle(success(check4, HOST), HOST, 0.02).sends == ()  # v6 nominates already
    assert v6.handle(success(nomination, ("2001:db8::4", 2412)), ("2001:db8::4", 2412)).nominated
    assert v4.next_timeout() is None  # the component is done


def test_an_unanswered_nomination_falls_back_to_another_valid_pair() -> None:
    ice = agent(controlling=True)
    [(check, _)] = ice.handle_timeout(0.0)
    [(nomination, _)] = ice.handle(success(check, HOST), HOST, 0.01).sends
    assert "USE-CANDIDATE" in our_check(nomination).attributes  # never answered
    # a peer-reflexive pair succeeds meanwhile
    [(triggered, _)] = ice.handle(their_check(controlling=False), PRFLX, 0.02).sends
    assert ice.handle(success(triggered, PRFLX), PRFLX, 0.03).sends == ()
    sent: list[tuple[bytes, tuple[str, int]]] = []
    while not any(t == PRFLX for _, t in sent) and (when := ice.next_timeout()) is not None:
        sent += ice.handle_timeout(when)
    again = [data for data, target in sent if target == PRFLX]
    assert again and "USE-CANDIDATE" in our_check(again[0]).attributes
    assert sum(1 for data, target in sent if target == HOST) == MAX_SENDS - 1


@given(st.binary(max_size=200), st.booleans())
def test_a_full_agent_never_raises_on_junk(data: bytes, controlling: bool) -> None:
    ice = agent(controlling=controlling)
    [(check, _)] = ice.handle_timeout(0.0)
    # junk, and junk behind a real header of a response to our check
    for datagram in (data, check[:1] + b"\x01" + check[2:20] + data):
        answer = ice.handle(datagram, HOST, 0.01)
        assert answer.reply is None and not answer.nominated


def test_remove_after_optional_passthrough_removes_the_peers_ice_again() -> None:
    """Passthrough lasts while the option says so: a later ICE=remove strips the peer's ICE
    (found in review: the passthrough flag outlived the option)."""
    cmds, _ = build()
    peer_b = [ln.replace("198.51.100.3", "198.51.100.4") for ln in PEER_ICE]
    assert "a=ice-ufrag:asbsdfds" in offer(cmds, body(*PEER_ICE), ICE="optional")
    answer(cmds, body(*peer_b, port=2004, address="198.51.100.4"), ICE="optional")
    again = send(cmds, "offer", body(*PEER_ICE), "a", to_tag="b", ICE="remove")
    assert not [ln for ln in again if ln.startswith(("a=ice-", "a=candidate"))], again
