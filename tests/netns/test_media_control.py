"""``block media`` and ``silence media`` end to end, in userspace and on the kernel path.

A call between the caller and callee namespaces through relayd (as tests/netns/test_media.py
and test_kernel.py set them up). Blocked, what a party sends reaches nobody while its counters
still count it, and the other way is untouched; silenced, it arrives with its PCMU payload
all 0xFF and its RTP header as sent. On the kernel path the stream leaves nftables for the
workers while it lasts (issue 14: a blocked or silenced kernel-path stream must stop, or be
silenced, there too) and goes back once undone.
"""

from __future__ import annotations

import pytest

from tests.netns.calls import (
    CALLEE_TAG,
    CALLER_TAG,
    CallLegs,
    assert_received,
    exchange,
    kernelized,
    ok,
    set_up_call,
    stream_of,
    wait_for,
)
from tests.netns.conftest import StartRelay
from tests.netns.test_kernel import KERNEL, both_kernelized, kernelized_call
from tests.support.netns import Topology, unavailable
from tests.support.rtp_peer import Peer

_SKIP = unavailable()
pytestmark = [pytest.mark.netns, pytest.mark.skipif(_SKIP is not None, reason=f"netns: {_SKIP}")]

COUNT = 10


def _both_ways(caller: Peer, callee: Peer, legs: CallLegs, first: int) -> None:
    """Media flows both ways, packet by packet."""
    assert legs.to_caller is not None
    from_caller, from_callee = exchange(caller, callee, legs, COUNT, first=first)
    assert_received(callee.receive(COUNT), from_caller, legs.to_callee.rtp_to)
    assert_received(caller.receive(COUNT), from_callee, legs.to_caller.rtp_to)


def _caller_blocked(caller: Peer, callee: Peer, legs: CallLegs, first: int) -> None:
    """The caller's packets reach nobody; the callee's still reach the caller."""
    assert legs.to_caller is not None
    _from_caller, from_callee = exchange(caller, callee, legs, COUNT, first=first)
    assert_received(caller.receive(COUNT), from_callee, legs.to_caller.rtp_to)
    assert callee.drain(quiet=0.3) == [], "a blocked party's packet was forwarded"


def _caller_silenced(caller: Peer, callee: Peer, legs: CallLegs, first: int) -> None:
    """The caller's packets arrive with their header as sent and their payload all 0xFF."""
    assert legs.to_caller is not None
    from_caller, from_callee = exchange(caller, callee, legs, COUNT, first=first)
    got = callee.receive(COUNT)
    assert len(got) == COUNT
    for packet, sent in zip(got, from_caller, strict=True):
        assert packet.data[:12] == sent[:12]
        assert packet.data[12:] == b"\xff" * (len(sent) - 12)
        assert sent[12:] != b"\xff" * (len(sent) - 12)
    assert_received(caller.receive(COUNT), from_callee, legs.to_caller.rtp_to)


def test_block_and_silence_in_userspace(
    topo: Topology, start_relay: StartRelay, peers: tuple[Peer, Peer]
) -> None:
    caller, callee = peers
    relay = start_relay()
    with relay.client() as ng:
        legs = set_up_call(ng, topo)
        _both_ways(caller, callee, legs, 0)
        ok(ng.call("block media", call_id=legs.call_id, from_tag=CALLER_TAG))
        _caller_blocked(caller, callee, legs, COUNT)
        # the blocked packets were received and counted, not errors
        reply = wait_for(
            ng, legs.call_id, lambda r: stream_of(r, CALLER_TAG)["stats"]["packets"] == 2 * COUNT
        )
        assert stream_of(reply, CALLER_TAG)["stats"]["packets"] == 2 * COUNT
        assert stream_of(reply, CALLER_TAG)["stats"]["errors"] == 0
        ok(ng.call("unblock media", call_id=legs.call_id, from_tag=CALLER_TAG))
        _both_ways(caller, callee, legs, 2 * COUNT)
        ok(ng.call("silence media", call_id=legs.call_id, from_tag=CALLER_TAG))
        _caller_silenced(caller, callee, legs, 3 * COUNT)
        ok(ng.call("unsilence media", call_id=legs.call_id, from_tag=CALLER_TAG))
        _both_ways(caller, callee, legs, 4 * COUNT)
        # the whole call
        ok(ng.call("block media", call_id=legs.call_id))
        assert legs.to_caller is not None
        exchange(caller, callee, legs, COUNT, first=5 * COUNT)
        assert callee.drain(quiet=0.3) == [] and caller.drain(quiet=0.0) == []
        ok(ng.call("unblock media", call_id=legs.call_id))
        _both_ways(caller, callee, legs, 6 * COUNT)


def test_block_and_silence_take_a_kernel_stream_back_and_return_it(
    topo: Topology, start_relay: StartRelay, peers: tuple[Peer, Peer]
) -> None:
    caller, callee = peers
    relay = start_relay(*KERNEL)
    with relay.client() as ng:
        legs = kernelized_call(ng, topo, caller, callee)
        for command, check in (("block", _caller_blocked), ("silence", _caller_silenced)):
            ok(ng.call(f"{command} media", call_id=legs.call_id, from_tag=CALLER_TAG))
            reply = ok(ng.call("query", call_id=legs.call_id))
            assert not kernelized(reply, CALLER_TAG) and not kernelized(reply, CALLEE_TAG)
            check(caller, callee, legs, 100)
            ok(ng.call(f"un{command} media", call_id=legs.call_id, from_tag=CALLER_TAG))
            # confirmed endpoints are kept: the kernel takes the streams back
            reply = wait_for(ng, legs.call_id, both_kernelized, timeout=4.0)
            assert both_kernelized(reply)
            _both_ways(caller, callee, legs, 200)
