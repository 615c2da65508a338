"""The media plane end to end: real RTP through relayd between network namespaces.

relayd runs in the relay namespace with a ``caller`` and a ``callee`` interface;
the caller and callee are UDP sockets in their own namespaces (see conftest).
The caller offers, the callee answers over ng; the caller then sends to the
port in the answer SDP it got, the callee to the port in the offer SDP it got,
and each side checks packet by packet what arrives: bytes (sequence number and
payload), order, source address and port, TOS.
"""

from __future__ import annotations

import itertools
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.netns.calls import (
    CALLEE_PORT,
    CALLEE_SSRC,
    CALLEE_TAG,
    CALLER_PORT,
    CALLER_SSRC,
    CALLER_TAG,
    EF,
    answer_call,
    assert_received,
    bind_free,
    exchange,
    gone,
    ok,
    set_up_call,
    stream_of,
    wait_for,
    worker_pids,
)
from tests.netns.conftest import StartRelay
from tests.support.netns import Topology, pids, unavailable
from tests.support.rtp_peer import Peer, rtp_packet

_SKIP = unavailable()
pytestmark = [pytest.mark.netns, pytest.mark.skipif(_SKIP is not None, reason=f"netns: {_SKIP}")]

# -- the tests ----------------------------------------------------------------------------------


def test_rtp_both_ways_packet_by_packet(topo: Topology, start_relay: StartRelay) -> None:
    relay = start_relay()
    with (
        relay.client() as ng,
        Peer(topo.caller.ns, topo.caller.ip4, CALLER_PORT) as caller,
        Peer(topo.callee.ns, topo.callee.ip4, CALLEE_PORT) as callee,
    ):
        legs = set_up_call(ng, topo)
        assert legs.to_caller is not None
        from_caller, from_callee = exchange(caller, callee, legs, 50)
        assert_received(callee.receive(50), from_caller, legs.to_callee.rtp_to)
        assert_received(caller.receive(50), from_callee, legs.to_caller.rtp_to)
        assert callee.drain(quiet=0.2) == []
        assert caller.drain(quiet=0.0) == []
        reply = wait_for(
            ng,
            legs.call_id,
            lambda r: (
                stream_of(r, CALLER_TAG)["stats"]["packets"] == 50
                and stream_of(r, CALLEE_TAG)["stats"]["packets"] == 50
            ),
        )
        for tag, peer in ((CALLER_TAG, caller), (CALLEE_TAG, callee)):
            stream = stream_of(reply, tag)
            assert stream["stats"]["packets"] == 50, stream
            assert stream["stats"]["bytes"] == 50 * len(from_caller[0]), stream
            assert stream["stats"]["errors"] == 0, stream
            endpoint = stream["endpoint"]
            assert (endpoint["address"], endpoint["port"]) == peer.address, stream


def test_rtcp_both_ways(topo: Topology, start_relay: StartRelay) -> None:
    relay = start_relay()
    with (
        relay.client() as ng,
        Peer(topo.caller.ns, topo.caller.ip4, CALLER_PORT + 1) as caller,
        Peer(topo.callee.ns, topo.callee.ip4, CALLEE_PORT + 1) as callee,
    ):
        legs = set_up_call(ng, topo)
        assert legs.to_caller is not None
        assert legs.to_caller.rtcp == legs.to_caller.rtp + 1
        assert legs.to_callee.rtcp == legs.to_callee.rtp + 1
        from_caller, from_callee = exchange(caller, callee, legs, 20, rtcp=True)
        assert_received(callee.receive(20), from_caller, legs.to_callee.rtcp_to)
        assert_received(caller.receive(20), from_callee, legs.to_caller.rtcp_to)
        assert callee.drain(quiet=0.2) == [] and caller.drain(quiet=0.0) == []


@pytest.mark.parametrize("learning", ["immediate", "delayed"])
def test_nat_caller_is_learned_and_reached(
    topo: Topology, start_relay: StartRelay, learning: str
) -> None:
    """The caller's SDP says port 6000; its NAT sends from 6100."""
    relay = start_relay("--endpoint-learning", learning)
    with (
        relay.client() as ng,
        Peer(topo.caller.ns, topo.caller.ip4, CALLER_PORT) as in_sdp,
        Peer(topo.caller.ns, topo.caller.ip4, CALLER_PORT + 100) as nat,
        Peer(topo.callee.ns, topo.callee.ip4, CALLEE_PORT) as callee,
    ):
        legs = set_up_call(ng, topo)
        answered = time.monotonic()
        assert legs.to_caller is not None
        relay_a, relay_b = legs.to_caller.rtp_to, legs.to_callee.rtp_to

        # nothing learned yet: media for the caller goes where its SDP says
        sent = callee.send_rtp(relay_b, 3, first=0, ssrc=CALLEE_SSRC, tag=2)
        assert_received(in_sdp.receive(3), sent, relay_a)

        sent = nat.send_rtp(relay_a, 5, first=0, ssrc=CALLER_SSRC, tag=1)
        assert_received(callee.receive(5), sent, relay_b)
        sent = callee.send_rtp(relay_b, 10, first=100, ssrc=CALLEE_SSRC, tag=2)
        assert_received(nat.receive(10), sent, relay_a)
        assert in_sdp.drain(quiet=0.2) == []

        def at_nat(confirmed: bool) -> Callable[[dict[str, Any]], bool]:
            def check(reply: dict[str, Any]) -> bool:
                stream = stream_of(reply, CALLER_TAG)
                return (
                    stream.get("endpoint", {}).get("port") == nat.address[1]
                    and ("confirmed" in stream["flags"]) == confirmed
                )

            return check

        if learning == "delayed":
            # inside the 3 s window media follows the last source, unconfirmed
            reply = wait_for(ng, legs.call_id, at_nat(confirmed=False), timeout=1.5)
            assert time.monotonic() - answered < 3.0, "too slow to see the unconfirmed state"
            assert at_nat(confirmed=False)(reply), stream_of(reply, CALLER_TAG)
            time.sleep(max(answered + 3.2 - time.monotonic(), 0.0))
            sent = nat.send_rtp(relay_a, 1, first=5, ssrc=CALLER_SSRC, tag=1)
            assert_received(callee.receive(1), sent, relay_b)
        reply = wait_for(ng, legs.call_id, at_nat(confirmed=True))
        assert at_nat(confirmed=True)(reply), stream_of(reply, CALLER_TAG)

        # confirmed: another source is forwarded (no strict-source) but does not move it
        sent = in_sdp.send_rtp(relay_a, 3, first=50, ssrc=CALLER_SSRC, tag=1)
        assert_received(callee.receive(3), sent, relay_b)
        sent = callee.send_rtp(relay_b, 5, first=200, ssrc=CALLEE_SSRC, tag=2)
        assert_received(nat.receive(5), sent, relay_a)
        assert in_sdp.drain(quiet=0.2) == []


@pytest.mark.parametrize("strict", [True, False], ids=["strict-source", "no-strict-source"])
def test_spoofed_source(topo: Topology, start_relay: StartRelay, strict: bool) -> None:
    relay = start_relay("--endpoint-learning", "immediate")
    flags = ["strict-source"] if strict else []
    with (
        relay.client() as ng,
        Peer(topo.caller.ns, topo.caller.ip4, CALLER_PORT) as caller,
        Peer(topo.callee.ns, topo.callee.ip4, CALLEE_PORT) as callee,
        Peer(topo.spoof.ns, topo.spoof.ip4, CALLER_PORT) as spoof,
    ):
        legs = set_up_call(ng, topo, flags=flags)
        assert legs.to_caller is not None
        relay_a, relay_b = legs.to_caller.rtp_to, legs.to_callee.rtp_to
        from_caller, from_callee = exchange(caller, callee, legs, 5)
        assert_received(callee.receive(5), from_caller, relay_b)
        assert_received(caller.receive(5), from_callee, relay_a)
        both = (CALLER_TAG, CALLEE_TAG)
        reply = wait_for(
            ng, legs.call_id, lambda r: all("confirmed" in stream_of(r, t)["flags"] for t in both)
        )
        for tag in (CALLER_TAG, CALLEE_TAG):
            assert "confirmed" in stream_of(reply, tag)["flags"], stream_of(reply, tag)

        spoofed = spoof.send_rtp(relay_a, 20, first=500, ssrc=0x66666666, tag=6)
        if strict:
            assert callee.drain(quiet=0.3) == []
            reply = wait_for(
                ng, legs.call_id, lambda r: stream_of(r, CALLER_TAG)["stats"]["errors"] >= 20
            )
            assert stream_of(reply, CALLER_TAG)["stats"]["errors"] == 20, reply
            assert stream_of(reply, CALLER_TAG)["stats"]["packets"] == 5, reply
        else:
            assert_received(callee.receive(20), spoofed, relay_b)
            assert callee.drain(quiet=0.2) == []

        # the caller keeps its endpoint either way: the callee's next packets reach it
        sent = callee.send_rtp(relay_b, 5, first=200, ssrc=CALLEE_SSRC, tag=2)
        assert_received(caller.receive(5), sent, relay_a)
        assert spoof.drain(quiet=0.2) == []
        reply = ok(ng.call("query", call_id=legs.call_id))
        endpoint = stream_of(reply, CALLER_TAG)["endpoint"]
        assert (endpoint["address"], endpoint["port"]) == caller.address
        sent = caller.send_rtp(relay_a, 5, first=300, ssrc=CALLER_SSRC, tag=1)
        assert_received(callee.receive(5), sent, relay_b)


def test_early_media_before_the_answer_reaches_the_caller_only(
    topo: Topology, start_relay: StartRelay
) -> None:
    """Offer only: what the callee sends to the offer's port goes to the caller's SDP
    address, from the port the answer will give the caller (rtpengine 10.5 does the
    same: early media racing the 183's SDP is not clipped); what arrives for the
    callee goes nowhere, since nobody knows where the callee is yet."""
    relay = start_relay()
    with (
        relay.client() as ng,
        Peer(topo.caller.ns, topo.caller.ip4, CALLER_PORT) as caller,
        Peer(topo.callee.ns, topo.callee.ip4, CALLEE_PORT) as callee,
    ):
        legs = set_up_call(ng, topo, answer=False)
        relay_b = legs.to_callee.rtp_to
        early = callee.send_rtp(relay_b, 10, first=900, ssrc=CALLEE_SSRC, tag=2)
        got_early = caller.receive(10)
        # the caller does not know our port towards it yet; the query does
        ours = stream_of(ok(ng.call("query", call_id=legs.call_id)), CALLER_TAG)
        relay_a = (ours["local address"], ours["local port"])
        caller.send_rtp(relay_a, 10, first=950, ssrc=CALLER_SSRC, tag=1)
        assert callee.drain(quiet=0.5) == []

        legs = answer_call(ng, topo, legs)
        assert legs.to_caller is not None
        assert legs.to_caller.rtp_to == relay_a
        assert_received(got_early, early, relay_a)
        from_caller, from_callee = exchange(caller, callee, legs, 5)
        assert_received(callee.receive(5), from_caller, relay_b)
        assert_received(caller.receive(5), from_callee, legs.to_caller.rtp_to)
        assert caller.drain(quiet=0.2) == [] and callee.drain(quiet=0.0) == []


def test_early_media_just_before_a_quick_answer_is_not_lost(
    topo: Topology, start_relay: StartRelay
) -> None:
    """The callee sends as soon as it has the offer and answers within milliseconds,
    before relayd hands the early forward over: its media waited in the socket and
    reaches the caller, in order, ahead of what it sends after the answer."""
    relay = start_relay()
    with (
        relay.client() as ng,
        Peer(topo.caller.ns, topo.caller.ip4, CALLER_PORT) as caller,
        Peer(topo.callee.ns, topo.callee.ip4, CALLEE_PORT) as callee,
    ):
        legs = set_up_call(ng, topo, answer=False)
        relay_b = legs.to_callee.rtp_to
        early = callee.send_rtp(relay_b, 5, first=700, ssrc=CALLEE_SSRC, tag=2)
        legs = answer_call(ng, topo, legs)
        assert legs.to_caller is not None
        after = callee.send_rtp(relay_b, 5, first=705, ssrc=CALLEE_SSRC, tag=2)
        assert_received(caller.receive(10), early + after, legs.to_caller.rtp_to)


def test_timeout_tears_down_silent_call_only(topo: Topology, start_relay: StartRelay) -> None:
    relay = start_relay("--timeout", "2")
    with (
        relay.client() as ng,
        Peer(topo.caller.ns, topo.caller.ip4, CALLER_PORT) as caller,
        Peer(topo.callee.ns, topo.callee.ip4, CALLEE_PORT) as callee,
        Peer(topo.caller.ns, topo.caller.ip4, CALLER_PORT + 2) as silent_caller,
        Peer(topo.callee.ns, topo.callee.ip4, CALLEE_PORT + 2) as silent_callee,
    ):
        silent = set_up_call(
            ng, topo, call_id="silent", caller_port=CALLER_PORT + 2, callee_port=CALLEE_PORT + 2
        )
        started = time.monotonic()
        talking = set_up_call(ng, topo, call_id="talking")
        assert silent.to_caller is not None and talking.to_caller is not None
        torn_down_after = None
        sent_a: list[bytes] = []
        sent_b: list[bytes] = []
        for seq in range(45):  # 4.5 s of media at 10 packets per second
            a, b = exchange(caller, callee, talking, 1, first=seq)
            sent_a += a
            sent_b += b
            if torn_down_after is None:
                reply = ng.call("query", call_id="silent")
                if reply.get("result") != "ok":
                    assert reply == {"result": "error", "error-reason": "Unknown call-id"}
                    torn_down_after = time.monotonic() - started
            time.sleep(0.1)
        assert torn_down_after is not None, "the silent call outlived --timeout 2 by 2.5 s"
        print(f"timeout: silent call gone {torn_down_after:.2f} s after its last signal")
        assert 1.9 <= torn_down_after <= 4.0, torn_down_after
        ok(ng.call("query", call_id="talking"))
        assert_received(callee.receive(45), sent_a, talking.to_callee.rtp_to)
        assert_received(caller.receive(45), sent_b, talking.to_caller.rtp_to)

        bind_free(topo.relay, topo.caller.relay4, [silent.to_caller.rtp, silent.to_caller.rtcp])
        bind_free(topo.relay, topo.callee.relay4, [silent.to_callee.rtp, silent.to_callee.rtcp])
        assert silent_caller.drain(quiet=0.0) == [] and silent_callee.drain(quiet=0.0) == []


def test_worker_killed_mid_call(topo: Topology, start_relay: StartRelay) -> None:
    """A SIGKILLed worker's call goes on, on the same relay ports: relayd binds them again
    a few milliseconds after the death (what arrives meanwhile, and what the dead worker
    had not read, is lost: at 100 packets/s one at most) and what arrives after waits in
    relayd's sockets for the new worker (tests/netns/test_descriptors.py counts the
    descriptors and prints the gap)."""
    relay = start_relay("--num-threads", "1")
    with (
        relay.client() as ng,
        Peer(topo.caller.ns, topo.caller.ip4, CALLER_PORT) as caller,
        Peer(topo.callee.ns, topo.callee.ip4, CALLEE_PORT) as callee,
    ):
        legs = set_up_call(ng, topo)
        assert legs.to_caller is not None
        [worker] = worker_pids(relay)
        count, interval = 300, 0.01  # 3 s at 100 packets per second
        sent: list[bytes] = []

        def talk() -> None:
            for seq in range(count):
                packet = rtp_packet(seq, CALLER_SSRC, 1)
                caller.send(packet, legs.to_caller.rtp_to)  # type: ignore[union-attr]
                sent.append(packet)
                time.sleep(interval)

        sender = threading.Thread(target=talk, name="caller-rtp")
        sender.start()
        try:
            time.sleep(1.0)
            killed = time.time()
            os.kill(worker, signal.SIGKILL)
        finally:
            sender.join(10.0)
        got = callee.receive(count, timeout=3.0)
        seqs = [p.seq for p in got]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), seqs
        assert {p.source for p in got} == {legs.to_callee.rtp_to}
        after = [p.at for p in got if p.at > killed]
        assert after, "no media after the worker was killed"
        arrivals = [p.at for p in got]
        gap = max(b - a for a, b in itertools.pairwise(arrivals))
        print(
            f"worker kill: longest gap {gap * 1000:.0f} ms, first packet after the kill"
            f" {(after[0] - killed) * 1000:.0f} ms, {len(got)}/{count} packets"
        )
        assert gap < 1.0, f"media stopped for {gap:.3f} s"
        assert len(got) >= count * 0.95, f"{count - len(got)} of {count} packets lost"
        by_seq = {p.seq: p.data for p in got}
        assert all(by_seq[seq] == sent[seq] for seq in by_seq)

        [replacement] = worker_pids(relay)
        assert replacement != worker
        reply = ok(ng.call("query", call_id=legs.call_id))
        assert set(reply["tags"]) == {CALLER_TAG, CALLEE_TAG}
        sent_back = callee.send_rtp(legs.to_callee.rtp_to, 5, first=100, ssrc=CALLEE_SSRC, tag=2)
        assert_received(caller.receive(5), sent_back, legs.to_caller.rtp_to)


def test_tos_marks_relayed_packets(topo: Topology, start_relay: StartRelay) -> None:
    relay = start_relay("--tos", str(EF))
    with (
        relay.client() as ng,
        Peer(topo.caller.ns, topo.caller.ip4, CALLER_PORT) as caller,
        Peer(topo.callee.ns, topo.callee.ip4, CALLEE_PORT) as callee,
    ):
        legs = set_up_call(ng, topo)
        assert legs.to_caller is not None
        from_caller, from_callee = exchange(caller, callee, legs, 10)
        at_callee, at_caller = callee.receive(10), caller.receive(10)
        assert_received(at_callee, from_caller, legs.to_callee.rtp_to)
        assert_received(at_caller, from_callee, legs.to_caller.rtp_to)
        assert [p.tos for p in at_callee] == [EF] * 10
        assert [p.tos for p in at_caller] == [EF] * 10


def test_sigterm_leaves_nothing_behind(topo: Topology, start_relay: StartRelay) -> None:
    relay = start_relay()
    assert relay.proc is not None
    with (
        relay.client() as ng,
        Peer(topo.caller.ns, topo.caller.ip4, CALLER_PORT) as caller,
        Peer(topo.callee.ns, topo.callee.ip4, CALLEE_PORT) as callee,
    ):
        legs = set_up_call(ng, topo)
        assert legs.to_caller is not None
        from_caller, _ = exchange(caller, callee, legs, 5)
        assert_received(callee.receive(5), from_caller, legs.to_callee.rtp_to)
        workers = worker_pids(relay)
        assert workers
        asked = time.monotonic()
        relay.proc.send_signal(signal.SIGTERM)
        assert relay.proc.wait(5.0) == 0, relay.log()[-4000:]
        print(f"sigterm: relayd exited 0 after {time.monotonic() - asked:.2f} s")
        assert all(gone(pid) for pid in workers), [p for p in workers if not gone(p)]
        assert pids(topo.relay) == []
        bind_free(topo.relay, topo.caller.relay4, [legs.to_caller.rtp, legs.to_caller.rtcp], 0.0)
        bind_free(topo.relay, topo.callee.relay4, [legs.to_callee.rtp, legs.to_callee.rtcp], 0.0)


def test_ipv6_call(topo: Topology, start_relay: StartRelay) -> None:
    relay = start_relay("--tos", str(EF))
    with (
        relay.client() as ng,
        Peer(topo.caller.ns, topo.caller.ip6, CALLER_PORT) as caller,
        Peer(topo.callee.ns, topo.callee.ip6, CALLEE_PORT) as callee,
    ):
        legs = set_up_call(ng, topo, ipv6=True)
        assert legs.to_caller is not None
        from_caller, from_callee = exchange(caller, callee, legs, 20)
        at_callee, at_caller = callee.receive(20), caller.receive(20)
        assert_received(at_callee, from_caller, legs.to_callee.rtp_to)
        assert_received(at_caller, from_callee, legs.to_caller.rtp_to)
        assert [p.tos for p in at_callee + at_caller] == [EF] * 40
