"""Nomination by the worker's ICE agents (relayd/worker/ice.py) when things go wrong.

A controlling relayd nominates one pair per component across the agents of its local
addresses (RFC 8445 §8.1.1). These tests drive the agents with a fake clock, as the
tests of :mod:`tests.unit.test_suite_ice` do: a nomination nobody answers must hand the
nomination to a sibling agent whose pair already succeeded, and a role conflict that
makes us controlled must take back USE-CANDIDATE (a controlled agent never sends it).
"""

from __future__ import annotations

import select
import socket

import pytest
from aioice import stun as aioice_stun

from relayd.worker.ice import MAX_SENDS, IceAgent
from relayd.worker.secure import SecurePath
from relayd.worker.sockets import MediaSocket
from tests.unit.test_suite_ice import (
    HOST,
    OUR_PWD,
    OURS,
    PRFLX,
    THEIR_PWD,
    THEIRS,
    agent,
    controlling_socket,
    our_check,
    success,
    their_check,
)

HOST6 = ("2001:db8::4", 2412)
Address = tuple[str, int]


def agent6() -> IceAgent:
    """The agent of our IPv6 alias socket of the same component."""
    return IceAgent(
        OURS,
        OUR_PWD,
        THEIRS,
        THEIR_PWD,
        controlling=True,
        lite=False,
        candidates=[(HOST6, 2130706175)],
        family=6,
    )


def role_conflict(check: bytes) -> bytes:
    """The party's 487 (Role Conflict) answer to one of our checks."""
    request = aioice_stun.parse_message(check)
    response = aioice_stun.Message(
        aioice_stun.Method.BINDING,
        aioice_stun.Class.ERROR,
        transaction_id=request.transaction_id,
    )
    response.attributes["ERROR-CODE"] = (487, "Role Conflict")
    response.add_message_integrity(THEIR_PWD.encode())
    response.add_fingerprint()
    return bytes(response)


def run_timers(agents: list[IceAgent], until: float) -> list[tuple[int, bytes, tuple[str, int]]]:
    """Fire the agents' timers in time order up to ``until``: what they sent, in order, as
    (index of the agent, datagram, target)."""
    sent: list[tuple[int, bytes, tuple[str, int]]] = []
    while True:
        due = [(w, i) for i, a in enumerate(agents) if (w := a.next_timeout()) is not None]
        if not due or min(due)[0] > until:
            return sent
        now = min(due)[0]
        for i, ice in enumerate(agents):
            when = ice.next_timeout()
            if when is not None and when <= now:
                sent += [(i, data, target) for data, target in ice.handle_timeout(now)]


def nominations(sent: list[tuple[int, bytes, tuple[str, int]]]) -> list[tuple[int, Address]]:
    """The checks with USE-CANDIDATE among ``sent``: (index of the agent, target)."""
    return [(i, t) for i, d, t in sent if "USE-CANDIDATE" in our_check(d).attributes]


# -- (a) an unanswered nomination on one local address ---------------------------------------


def test_an_unanswered_nomination_moves_to_a_sibling_agents_valid_pair() -> None:
    """The IPv6 agent nominates first and is never answered; it has no other valid pair,
    but the IPv4 agent's pair succeeded meanwhile: the group nominates that one, from the
    IPv4 agent (its socket), instead of leaving the component without a nomination."""
    v4, v6 = agent(controlling=True), agent6()
    v6.join(v4.group)  # what SecurePath.link does for an alias socket
    [(check4, _)] = v4.handle_timeout(0.0)
    [(check6, _)] = v6.handle_timeout(0.0)
    [(nomination6, _)] = v6.handle(success(check6, HOST6), HOST6, 0.01).sends
    assert "USE-CANDIDATE" in our_check(nomination6).attributes  # never answered
    assert v4.handle(success(check4, HOST), HOST, 0.02).sends == ()  # v6 nominates already
    assert v4.next_timeout() is not None  # v4 waits to see whether v6's nomination fails
    sent = run_timers([v4, v6], until=60.0)
    assert nominations(sent)[:MAX_SENDS] == [(1, HOST6)] * (MAX_SENDS - 1) + [(0, HOST)]
    nomination4 = next(
        d for i, d, _ in sent if i == 0 and "USE-CANDIDATE" in our_check(d).attributes
    )
    done = v4.handle(success(nomination4, HOST), HOST, 60.0)
    assert done.nominated and v4.nominated == HOST
    assert v4.next_timeout() is None and v6.next_timeout() is None


def test_the_group_nominates_its_best_valid_pair_after_a_failed_nomination() -> None:
    """The failed agent has a valid pair of its own, but a sibling's is better (a higher
    remote priority): the sibling's is nominated, not the failed agent's second best."""
    v4, v6 = agent(controlling=True), agent6()
    v6.join(v4.group)
    [(check4, _)] = v4.handle_timeout(0.0)
    [(nomination4, _)] = v4.handle(success(check4, HOST), HOST, 0.01).sends  # never answered
    assert "USE-CANDIDATE" in our_check(nomination4).attributes
    [(triggered, _)] = v4.handle(their_check(controlling=False), PRFLX, 0.02).sends
    assert v4.handle(success(triggered, PRFLX), PRFLX, 0.03).sends == ()  # priority 1853824767
    [(check6, _)] = v6.handle_timeout(0.04)
    assert v6.handle(success(check6, HOST6), HOST6, 0.05).sends == ()  # priority 2130706175
    sent = run_timers([v4, v6], until=60.0)
    assert nominations(sent)[:MAX_SENDS] == [(0, HOST)] * (MAX_SENDS - 1) + [(1, HOST6)]


def test_a_failed_nomination_without_any_valid_pair_waits_for_the_next_success() -> None:
    v4, v6 = agent(controlling=True), agent6()
    v6.join(v4.group)
    v6.pairs.clear()  # v6 learns its candidate later
    [(check4, _)] = v4.handle_timeout(0.0)
    v4.handle(success(check4, HOST), HOST, 0.01)
    sent = run_timers([v4, v6], until=60.0)
    assert nominations(sent) == [(0, HOST)] * (MAX_SENDS - 1)
    assert v4.group.agent is None and v4.next_timeout() is None and v6.next_timeout() is None
    v6.update([(HOST6, 2130706175)])
    [(check6, _)] = v6.handle_timeout(60.0)
    [(nomination6, target)] = v6.handle(success(check6, HOST6), HOST6, 60.1).sends
    assert "USE-CANDIDATE" in our_check(nomination6).attributes and target == HOST6


def test_a_closed_socket_leaves_its_group_and_hands_on_its_nomination() -> None:
    v4, v6 = agent(controlling=True), agent6()
    v6.join(v4.group)
    assert v4.group.agents == [v4, v6]
    [(check4, _)] = v4.handle_timeout(0.0)
    [(check6, _)] = v6.handle_timeout(0.0)
    assert v6.handle(success(check6, HOST6), HOST6, 0.01).sends  # v6 nominates
    assert v4.handle(success(check4, HOST), HOST, 0.02).sends == ()
    v6.leave()  # SecurePath.forget: v6's socket is closed
    assert v4.group.agents == [v4] and v6.group.agents == [v6]
    assert v4.group.agent is v4 and v4.next_timeout() == 0.0
    [(nomination, target)] = v4.handle_timeout(0.03)
    assert "USE-CANDIDATE" in our_check(nomination).attributes and target == HOST


@pytest.mark.parametrize("first", ["alias", "primary"])
def test_the_worker_sends_the_siblings_nomination_from_the_siblings_socket(first: str) -> None:
    """Over loopback: a primary socket (127.0.0.1) and its alias (127.0.0.2) check one
    party; one of them nominates and is never answered; the other, whose pair succeeded
    meanwhile and whose checks had nothing left to do, nominates from its own socket."""
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    peer.settimeout(2)
    where = peer.getsockname()
    path = SecurePath(0, 2048, 64)
    sockets: list[MediaSocket] = []
    try:
        for address in ("127.0.0.1", "127.0.0.2"):
            ms, _, spec = controlling_socket(address, where)
            path.configure(ms, spec)
            ms.crypto = True
            sockets.append(ms)
        primary, alias = sockets
        alias.primary = primary
        path.link(alias)
        nominator, sibling = (alias, primary) if first == "alias" else (primary, alias)
        path.fire(0.0)
        checks = {}
        for _ in range(2):
            data, source = peer.recvfrom(2048)
            checks[source] = data
        relay_of = {ms.sock.getsockname(): ms for ms in sockets}

        def answer(source: tuple[str, int], data: bytes, now: float) -> None:
            peer.sendto(success(data, where), source)
            ms = relay_of[source]
            select.select([ms.sock], [], [], 2)
            path.drain(ms, now)

        answer(nominator.sock.getsockname(), checks[nominator.sock.getsockname()], 0.01)
        nomination, source = peer.recvfrom(2048)
        assert "USE-CANDIDATE" in our_check(nomination).attributes
        assert source == nominator.sock.getsockname()  # never answered
        answer(sibling.sock.getsockname(), checks[sibling.sock.getsockname()], 0.02)
        assert sibling in path.timers  # it waits for the other's nomination
        now = 0.02
        peer.setblocking(False)
        sent: list[tuple[bytes, tuple[str, int]]] = []
        while not any(s == sibling.sock.getsockname() for _, s in sent):
            deadline = path.next_deadline()
            assert deadline < 60.0, "the sibling never nominated"
            now = max(now, deadline)
            path.fire(now)
            select.select([peer], [], [], 0.05)
            try:
                while True:
                    sent.append(peer.recvfrom(2048))
            except BlockingIOError:
                pass
        assert [s for _, s in sent[:-1]] == [nominator.sock.getsockname()] * (MAX_SENDS - 1)
        again = sent[-1][0]
        assert "USE-CANDIDATE" in our_check(again).attributes
        answer(sibling.sock.getsockname(), again, now)
        assert (sibling.leg.endpoint, sibling.leg.confirmed) == (where, True)
        assert path.next_deadline() == float("inf")
    finally:
        peer.close()
        for ms in sockets:
            ms.sock.close()


# -- (b) a role conflict while nominating ------------------------------------------------------


def test_a_487_to_our_nomination_makes_us_controlled_without_use_candidate() -> None:
    """The party answers our nomination with 487: we become controlled and check the pair
    again, without USE-CANDIDATE; its success nominates nothing (the party nominates)."""
    ice = agent(controlling=True)
    [(check, _)] = ice.handle_timeout(0.0)
    [(nomination, _)] = ice.handle(success(check, HOST), HOST, 0.01).sends
    assert "USE-CANDIDATE" in our_check(nomination).attributes
    [(again, target)] = ice.handle(role_conflict(nomination), HOST, 0.02).sends
    assert not ice.controlling and target == HOST
    message = our_check(again)
    assert "ICE-CONTROLLED" in message.attributes
    assert "USE-CANDIDATE" not in message.attributes
    done = ice.handle(success(again, HOST), HOST, 0.03)
    assert not done.nominated and ice.nominated is None
    assert ice.group.agent is None
    # the party, controlling, nominates
    assert ice.handle(their_check(controlling=True, nominate=True), HOST, 0.04).nominated
    assert ice.nominated == HOST


def test_losing_the_role_to_a_check_takes_back_our_nomination() -> None:
    """A check with a higher ICE-CONTROLLING tie-breaker while our nomination is in flight:
    we turn controlled, and the nomination's retransmissions lose USE-CANDIDATE."""
    ice = agent(controlling=True)
    ice.tie_breaker = 1000
    [(check, _)] = ice.handle_timeout(0.0)
    [(nomination, _)] = ice.handle(success(check, HOST), HOST, 0.01).sends
    assert "USE-CANDIDATE" in our_check(nomination).attributes
    lost = ice.handle(their_check(controlling=True, tie_breaker=2000), HOST, 0.02)
    assert lost.reply is not None and not ice.controlling
    [(again, _)] = ice.handle_timeout(0.01 + 0.25)
    message = our_check(again)
    assert "ICE-CONTROLLED" in message.attributes
    assert "USE-CANDIDATE" not in message.attributes
    assert not ice.handle(success(again, HOST), HOST, 0.3).nominated
    assert ice.nominated is None and ice.group.agent is None
