"""Load limits and draining on a real relayd: ng over UDP, media through real sockets.

relayd runs in the relay namespace (userspace forwarding), the caller and the callee in
theirs (tests/support/netns.py, under this file's own prefix ``ha``). What rtpengine 10.5
does, asked live (relayd/calls/load.py): a limit refuses only an offer that would create a
call, ``result: load limit`` with the limit's message where the request says
``supports: ["load limit"]``, the error "Parallel session limit reached" where it does not.

* ``max-bandwidth``: media of one call, both ways, through the workers puts the byte rate
  over the limit within the meter's second, and a new call is refused with "Bandwidth limit
  exceeded"; once the media stops, calls are taken again.
* The same with the call's media in the kernel (``table = 0``): the table's ``relayed``
  counters carry the bytes nftables forwards, which reach no worker, to the meter within its
  second (relayd/nft/relayed.py), and no packet of the call reaches a socket of the relay.
* ``relayctl set maxsessions 0`` drains: new calls refused, the call already there
  re-offers (a re-INVITE) and its media goes on; ``relayctl config`` shows the limit; a
  reload puts back the value relayd was started with.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from relayd.ng.client import NgClient
from tests.netns.calls import (
    CALLEE_SSRC,
    CALLER_SSRC,
    CALLER_TAG,
    CallLegs,
    exchange,
    ok,
    sdp,
    set_up_call,
    udp_delivered,
)
from tests.netns.conftest import StartRelay, relay_starter
from tests.netns.test_kernel import KERNEL, kernelized_call
from tests.netns.test_operations import relayctl, relayctl_json
from tests.support.netns import Topology, topology, unavailable
from tests.support.rtp_peer import Peer

_SKIP = unavailable()
pytestmark = [pytest.mark.netns, pytest.mark.skipif(_SKIP is not None, reason=f"netns: {_SKIP}")]

NG_PORT = 44201
PORT_MIN = 44210
PORT_MAX = 44299
LIMITED = {"result": "load limit"}


@pytest.fixture
def topo() -> Iterator[Topology]:
    """The usual four namespaces, under this file's own prefix."""
    with topology(prefix="ha") as created:
        yield created


@pytest.fixture
def start_relay(
    topo: Topology, tmp_path: Any, request: pytest.FixtureRequest
) -> Iterator[StartRelay]:
    with relay_starter(
        topo, tmp_path, request, ng_port=NG_PORT, port_min=PORT_MIN, port_max=PORT_MAX
    ) as start:
        yield start


def _new_offer(ng: NgClient, topo: Topology, call_id: str, **keys: Any) -> dict[str, Any]:
    reply = ng.call(
        "offer",
        call_id=call_id,
        from_tag="x-" + call_id,
        sdp=sdp(topo.caller.ip4, 6100),
        direction=["caller", "callee"],
        **keys,
    )
    return {k: v for k, v in reply.items() if k != "sdp"}


def _media(caller: Peer, callee: Peer, legs: CallLegs, seconds: float, first: int = 0) -> int:
    """Both sides send a packet every 20 ms for ``seconds``; returns the packets sent each."""
    count = int(seconds / 0.02)
    for n in range(count):
        exchange(caller, callee, legs, 1, first=first + n)
        time.sleep(0.02)
    return count


def test_bandwidth_limit_refuses_new_calls_while_media_flows(
    topo: Topology, start_relay: StartRelay, peers: tuple[Peer, Peer]
) -> None:
    # one call's media both ways: 2 x 50 packets/s of 172 bytes, about 17 kB/s
    relay = start_relay("--max-bandwidth", "5000", "--endpoint-learning", "immediate")
    caller, callee = peers
    with relay.client() as ng:
        legs = set_up_call(ng, topo)
        assert _new_offer(ng, topo, "idle", supports=["load limit"])["result"] == "ok"
        ok(ng.call("delete", call_id="idle", from_tag="x-idle", delete_delay=0))
        sent = _media(caller, callee, legs, 2.5)
        assert len(callee.drain()) >= sent * 0.9  # the media went through the relay
        caller.drain()
        assert _new_offer(ng, topo, "busy", supports=["load limit"]) == {
            **LIMITED,
            "message": "Bandwidth limit exceeded",
        }
        assert _new_offer(ng, topo, "busy2") == {
            "result": "error",
            "error-reason": "Parallel session limit reached",
        }
        # the call itself goes on: its re-offer is answered
        again = ng.call(
            "offer",
            call_id=legs.call_id,
            from_tag=CALLER_TAG,
            sdp=sdp(topo.caller.ip4, 6000),
            direction=["caller", "callee"],
            supports=["load limit"],
        )
        assert again["result"] == "ok", again
        stats = ng.call("statistics")["statistics"]
        assert stats["totalstatistics"]["rejectedsessions"] == 0  # only max-sessions counts
        assert stats["controlstatistics"]["errorcount"] == 1  # the error reply alone
        time.sleep(2.5)  # quiet: the next samples find no media
        assert _new_offer(ng, topo, "later", supports=["load limit"])["result"] == "ok"


def test_set_maxsessions_zero_drains_and_calls_go_on(
    topo: Topology, start_relay: StartRelay, peers: tuple[Peer, Peer]
) -> None:
    relay = start_relay("--endpoint-learning", "immediate")
    caller, callee = peers
    with relay.client() as ng:
        legs = set_up_call(ng, topo)
        assert legs.to_caller is not None
        done = relayctl(relay, "set", "maxsessions", "0")
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "Success setting max-sessions from -1 to 0"
        assert relayctl_json(relay, "config")["config"]["max-sessions"] == 0
        assert _new_offer(ng, topo, "new", supports=["load limit"]) == {
            **LIMITED,
            "message": "Parallel session limit reached",
        }
        # the call already there: a re-INVITE's offer and answer, and its media
        again = ng.call(
            "offer",
            call_id=legs.call_id,
            from_tag=CALLER_TAG,
            sdp=sdp(topo.caller.ip4, 6000),
            direction=["caller", "callee"],
            supports=["load limit"],
        )
        assert again["result"] == "ok", again
        caller.send_rtp(legs.to_caller.rtp_to, 5, first=10, ssrc=CALLER_SSRC, tag=1)
        callee.send_rtp(legs.to_callee.rtp_to, 5, first=10, ssrc=CALLEE_SSRC, tag=2)
        assert len(callee.receive(5)) == 5
        assert len(caller.receive(5)) == 5
        # a reload puts back the value relayd was started with (no limit)
        reloaded = relayctl_json(relay, "reload")
        assert reloaded["applied"] == {"max-sessions": [0, -1]}
        assert _new_offer(ng, topo, "after", supports=["load limit"])["result"] == "ok"
        bad = relayctl(relay, "set", "maxsessions", "lots")
        assert bad.returncode == 1 and "not a number" in bad.stderr


def test_bandwidth_limit_counts_what_the_kernel_forwards(
    topo: Topology, start_relay: StartRelay, peers: tuple[Peer, Peer]
) -> None:
    relay = start_relay(*KERNEL, "--max-bandwidth", "5000")
    caller, callee = peers
    with relay.client() as ng:
        legs = kernelized_call(ng, topo, caller, callee)
        time.sleep(2.2)  # the userspace phase's bytes out of the meter's rate
        assert _new_offer(ng, topo, "quiet", supports=["load limit"])["result"] == "ok"
        ok(ng.call("delete", call_id="quiet", from_tag="x-quiet", delete_delay=0))
        before = udp_delivered(topo.relay)
        sent = _media(caller, callee, legs, 2.5, first=100)
        assert len(callee.drain()) >= sent * 0.9
        caller.drain()
        assert udp_delivered(topo.relay) == before, "kernel-phase packets reached a socket"
        assert _new_offer(ng, topo, "busy", supports=["load limit"]) == {
            **LIMITED,
            "message": "Bandwidth limit exceeded",
        }
