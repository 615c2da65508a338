"""A call's end takes every conntrack entry towards its relay ports with it, a stranger's too.

Two calls carry media both ways while a stranger (the spoof namespace) sends to every
relay socket of both; then one call is deleted. Within a sweep (relayd/plane/sweep.py)
no UDP entry with one of the deleted call's sockets as original source or destination
is left, whoever made it, while the other call's entries are all still there. Run with
the kernel path off (conntrack kept busy by a table of the test's own, as on a host whose
firewall tracks connections) and on (relayd's NAT). Namespaces are ``hyg-<uid>-<role>``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from relayd.nft.ruleset import Endpoint
from relayd.ng.client import NgClient
from tests.netns.calls import (
    CALLEE_PORT,
    CALLEE_TAG,
    CALLER_PORT,
    CALLER_TAG,
    EF,
    CallLegs,
    assert_received,
    exchange,
    ok,
    run_in,
    set_up_call,
    stream_of,
    wait_for,
)
from tests.netns.conftest import StartRelay
from tests.support.conntrack import count_entries
from tests.support.netns import Topology, inside, topology, unavailable
from tests.support.rtp_peer import Peer

_SKIP = unavailable()
pytestmark = [pytest.mark.netns, pytest.mark.skipif(_SKIP is not None, reason=f"netns: {_SKIP}")]

USERSPACE = ("--table", "-1", "--endpoint-learning", "immediate")
KERNEL = ("--table", "0", "--endpoint-learning", "immediate", "--tos", str(EF))
# a firewall of the test's own that makes conntrack track every flow of the relay namespace
TRACKING = (
    "add table inet hygct",
    "add chain inet hygct pre { type filter hook prerouting priority 0; }",
    "add rule inet hygct pre ct state new counter",
)
TAGS = (CALLER_TAG, CALLEE_TAG)
STRANGER_PORT = 9000
SWEPT_WITHIN = 3.0  # seconds: the sweep follows the release by SWEEP_DELAY (0.25 s)


@pytest.fixture
def topo() -> Iterator[Topology]:
    """The usual four namespaces, under this test's own prefix."""
    with topology(prefix="hyg") as created:
        yield created


def sockets_of(legs: CallLegs) -> list[Endpoint]:
    """The call's four relay sockets: RTP and RTCP on the caller's side and the callee's."""
    assert legs.to_caller is not None
    return [
        Endpoint(side.address, port)
        for side in (legs.to_caller, legs.to_callee)
        for port in (side.rtp, side.rtcp)
    ]


def entries(topo: Topology, sockets: list[Endpoint]) -> dict[Endpoint, int]:
    """UDP entries with each socket as original source or destination (a table dump)."""
    with inside(topo.relay):
        return {sock: count_entries(sock) for sock in sockets}


def media_both_ways(caller: Peer, callee: Peer, legs: CallLegs, first: int) -> None:
    """RTP both ways, then RTCP (the peers send it from their RTP port, so the first
    packet towards each goes to the SDP's RTCP port): every socket learns its peer."""
    assert legs.to_caller is not None
    sent_a, sent_b = exchange(caller, callee, legs, 3, first=first)
    assert_received(callee.receive(3), sent_a, legs.to_callee.rtp_to)
    assert_received(caller.receive(3), sent_b, legs.to_caller.rtp_to)
    exchange(caller, callee, legs, 3, first=first, rtcp=True)
    assert callee.receive(2) and caller.receive(2)
    caller.drain(quiet=0.1)
    callee.drain(quiet=0.1)


@pytest.mark.parametrize("path", ["userspace", "kernel"])
def test_delete_leaves_no_entry_towards_the_calls_ports(
    topo: Topology, start_relay: StartRelay, path: str
) -> None:
    if path == "userspace":
        for command in TRACKING:
            run_in(topo.relay, "nft", command)
    relay = start_relay(*(KERNEL if path == "kernel" else USERSPACE))
    with (
        relay.client() as ng,
        Peer(topo.caller.ns, topo.caller.ip4, CALLER_PORT) as caller_a,
        Peer(topo.callee.ns, topo.callee.ip4, CALLEE_PORT) as callee_a,
        Peer(topo.caller.ns, topo.caller.ip4, CALLER_PORT + 2) as caller_b,
        Peer(topo.callee.ns, topo.callee.ip4, CALLEE_PORT + 2) as callee_b,
        Peer(topo.spoof.ns, topo.spoof.ip4, STRANGER_PORT) as stranger,
    ):
        ended = set_up_call(ng, topo, call_id="hyg-ended")
        kept = set_up_call(
            ng, topo, call_id="hyg-kept", caller_port=CALLER_PORT + 2, callee_port=CALLEE_PORT + 2
        )
        media_both_ways(caller_a, callee_a, ended, first=0)
        media_both_ways(caller_b, callee_b, kept, first=0)
        for sock in sockets_of(ended) + sockets_of(kept):
            stranger.send_rtp((sock.address, sock.port), 2, first=900, ssrc=0x66666666, tag=6)
        assert stranger.drain(quiet=0.3) == []

        from_stranger = Endpoint(topo.spoof.ip4, STRANGER_PORT)
        assert entries(topo, [from_stranger]) == {from_stranger: 8}  # one per socket
        before_ended = entries(topo, sockets_of(ended))
        before_kept = entries(topo, sockets_of(kept))
        # the stranger's entry towards every socket, and the peers' flows besides
        assert all(count >= 1 for count in before_ended.values()), before_ended
        assert all(count >= 1 for count in before_kept.values()), before_kept
        assert sum(before_ended.values()) > len(before_ended)

        # the peers' flows are deleted by tuple, towards the endpoints the workers reported
        # (once a second): RTCP's learned one differs from its SDP's
        learned(ng, ended.call_id)
        ok(ng.call("delete", call_id=ended.call_id, delete_delay=0))
        left = _swept(topo, sockets_of(ended))
        assert left == dict.fromkeys(sockets_of(ended), 0), run_in(topo.relay, "conntrack", "-L")
        # the other call's entries stay: the stranger's towards it, and its peers' flows
        # (with the kernel path these may be renewed by its hand-over meanwhile)
        assert entries(topo, [from_stranger]) == {from_stranger: 4}
        after_kept = entries(topo, sockets_of(kept))
        if path == "userspace":
            assert after_kept == before_kept
        assert all(count >= 1 for count in after_kept.values()), after_kept
        assert "conntrack.swept" in relay.log()
        assert ok(ng.call("query", call_id=kept.call_id))


def learned(ng: NgClient, call_id: str) -> None:
    def rtcp_learned(reply: dict[str, Any]) -> bool:
        ports = [stream_of(reply, tag, rtcp=True)["endpoint"]["port"] for tag in TAGS]
        return ports == [CALLER_PORT, CALLEE_PORT]

    assert rtcp_learned(wait_for(ng, call_id, rtcp_learned))


def _swept(topo: Topology, sockets: list[Endpoint]) -> dict[Endpoint, int]:
    deadline = time.monotonic() + SWEPT_WITHIN
    while True:
        left = entries(topo, sockets)
        if not any(left.values()) or time.monotonic() > deadline:
            return left
        time.sleep(0.1)
