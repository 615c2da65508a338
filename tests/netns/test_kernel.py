"""The kernel path end to end: relayd hands confirmed RTP streams to nftables.

relayd runs in the relay namespace with ``--table 0`` (the namespace forwards,
so nftables NAT can carry the media), immediate endpoint learning (a stream is
confirmed by its first packet) and ``--tos 184``. Once both ends of a plain RTP
stream are confirmed, relayd installs the stream's two directions as elements of
``inet relayd``; from then on the packets never reach a worker.

How "never reach a worker" is proven: the relay namespace's UDP delivery
counter (``InDatagrams`` in ``/proc/<relayd>/net/snmp``, ``Udp6InDatagrams``
for IPv6) does not move while kernel-phase packets flow (every packet a worker
socket could receive is counted there), the stream's packet count right after
the offload equals what was sent in the userspace phase, a kernelized worker
socket counts whatever still reaches it as an error (and the errors stay 0), and
the nft element counters rise by exactly the packets sent in the kernel phase.

Covered: offload and counters, DSCP on every packet, a spoofer, ``delete``, a
re-INVITE to a new callee port, SIGKILL and restart (media flows throughout,
the call is adopted), stale forwards removed at restart, a restart with the
kernel path unusable, nftables failing at run time (table deleted, an nft
command failing), the kernel path unusable at start, IPv6.
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from relayd.ng.client import NgClient
from tests.netns.calls import (
    CALLEE_PORT,
    CALLEE_SSRC,
    CALLEE_TAG,
    CALLER_PORT,
    CALLER_SSRC,
    CALLER_TAG,
    EF,
    CallLegs,
    Key,
    answer_call,
    assert_received,
    bind_free,
    conntrack_entries,
    element_counters,
    exchange,
    gone,
    kernel_counted,
    kernelized,
    ok,
    run_in,
    set_up_call,
    stream_of,
    table_elements,
    table_rules,
    udp_delivered,
    wait_for,
    worker_pids,
)
from tests.netns.conftest import PORT_MAX, PORT_MIN, StartRelay
from tests.support.netns import Topology, unavailable
from tests.support.relayd import RelaydProcess
from tests.support.rtp_peer import Peer, Received, rtp_packet

_SKIP = unavailable()
pytestmark = [pytest.mark.netns, pytest.mark.skipif(_SKIP is not None, reason=f"netns: {_SKIP}")]

KERNEL = ("--table", "0", "--endpoint-learning", "immediate", "--tos", str(EF))
RELAY_PORTS = range(PORT_MIN, PORT_MAX + 1)
RTP_SIZE = 172  # 12-byte RTP header and 160 bytes of PCMU (tests.support.rtp_peer)
OFFLOAD_TIMEOUT = 4.0  # workers report once a second; offload follows the report
USER_CALLER, USER_CALLEE = 3, 1  # packets sent in the userspace phase (confirm_both)


def both_kernelized(reply: dict[str, Any]) -> bool:
    return kernelized(reply, CALLER_TAG) and kernelized(reply, CALLEE_TAG)


def neither_kernelized(reply: dict[str, Any]) -> bool:
    return not kernelized(reply, CALLER_TAG) and not kernelized(reply, CALLEE_TAG)


def keys(legs: CallLegs, caller: Peer, callee: Peer) -> tuple[Key, Key]:
    """The count-set keys of caller → relay and callee → relay."""
    assert legs.to_caller is not None
    a, b = legs.to_caller.rtp_to, legs.to_callee.rtp_to
    return (*caller.address, *a), (*callee.address, *b)


def confirm_both(caller: Peer, callee: Peer, legs: CallLegs) -> None:
    """The userspace phase: the caller sends USER_CALLER packets, then the callee
    USER_CALLEE (one: the packet that confirms the second end).

    That packet comes last and alone, so the offload it triggers cannot catch a
    userspace packet in flight: the workers' counts stay exact.
    """
    assert legs.to_caller is not None
    sent = caller.send_rtp(legs.to_caller.rtp_to, USER_CALLER, ssrc=CALLER_SSRC, tag=1)
    assert_received(callee.receive(USER_CALLER), sent, legs.to_callee.rtp_to)
    back = callee.send_rtp(legs.to_callee.rtp_to, USER_CALLEE, ssrc=CALLEE_SSRC, tag=2)
    assert_received(caller.receive(USER_CALLEE), back, legs.to_caller.rtp_to)


def offloaded(ng: NgClient, call_id: str, timeout: float = OFFLOAD_TIMEOUT) -> dict[str, Any]:
    reply = wait_for(ng, call_id, both_kernelized, timeout=timeout)
    assert both_kernelized(reply), (stream_of(reply, CALLER_TAG), stream_of(reply, CALLEE_TAG))
    return reply


def kernelized_call(ng: NgClient, topo: Topology, caller: Peer, callee: Peer) -> CallLegs:
    """A call set up, confirmed both ways in userspace and then handed to the kernel."""
    legs = set_up_call(ng, topo)
    assert legs.to_caller is not None
    confirm_both(caller, callee, legs)
    offloaded(ng, legs.call_id)
    return legs


def settled(relay: RelaydProcess, before: int = 0, timeout: float = 3.0) -> None:
    """Wait until relayd has deleted the conntrack entries of a hand-over once more
    (``KernelPath.settle``, 0.3 to 0.55 s after the offload, on its 250 ms timer): one
    ``kernel.settled`` line more than ``before``. The entries that exist after this are
    made by the packets that follow."""
    deadline = time.monotonic() + timeout
    while relay.log().count("kernel.settled") <= before:
        assert time.monotonic() < deadline, "the hand-over did not settle"
        time.sleep(0.05)


def kernel_exchange(
    ns: str, caller: Peer, callee: Peer, legs: CallLegs, count: int, first: int
) -> None:
    """Both sides send ``count`` packets; each arrives in order, intact, EF-marked, and
    not one reached a socket in the relay namespace."""
    assert legs.to_caller is not None
    before = udp_delivered(ns)
    from_caller, from_callee = exchange(caller, callee, legs, count, first=first)
    at_callee, at_caller = callee.receive(count), caller.receive(count)
    assert_received(at_callee, from_caller, legs.to_callee.rtp_to)
    assert_received(at_caller, from_callee, legs.to_caller.rtp_to)
    assert [p.tos for p in at_callee + at_caller] == [EF] * (2 * count)
    assert udp_delivered(ns) == before, "kernel-phase packets reached a socket"


def stats_reach(tag: str, packets: int) -> Callable[[dict[str, Any]], bool]:
    return lambda reply: stream_of(reply, tag)["stats"]["packets"] >= packets


# -- the tests ----------------------------------------------------------------------------------


def test_offloaded_stream_bypasses_the_workers(
    topo: Topology, start_relay: StartRelay, peers: tuple[Peer, Peer]
) -> None:
    relay = start_relay(*KERNEL)
    caller, callee = peers
    with relay.client() as ng:
        legs = set_up_call(ng, topo)
        assert neither_kernelized(ok(ng.call("query", call_id=legs.call_id)))
        assert element_counters(topo.relay) == {}
        confirm_both(caller, callee, legs)
        confirmed = time.monotonic()
        reply = offloaded(ng, legs.call_id)
        print(f"offload: kernelized {time.monotonic() - confirmed:.2f} s after confirmation")
        # the userspace phase, as the workers counted it, and nothing since
        assert stream_of(reply, CALLER_TAG)["stats"] == {
            "packets": USER_CALLER,
            "bytes": USER_CALLER * RTP_SIZE,
            "errors": 0,
        }
        assert stream_of(reply, CALLEE_TAG)["stats"] == {
            "packets": USER_CALLEE,
            "bytes": USER_CALLEE * RTP_SIZE,
            "errors": 0,
        }
        for tag in (CALLER_TAG, CALLEE_TAG):  # RTCP was never confirmed: it stays in userspace
            assert not kernelized(reply, tag, rtcp=True)
        to_callee, to_caller = keys(legs, caller, callee)
        assert element_counters(topo.relay) == {to_callee: (0, 0), to_caller: (0, 0)}

        count = 50
        kernel_exchange(topo.relay, caller, callee, legs, count, first=100)
        # the kernel counts IP packets: 20 + 8 header bytes on top of the RTP
        packet = (count, count * (RTP_SIZE + 28))
        assert element_counters(topo.relay) == {to_callee: packet, to_caller: packet}

        reply = wait_for(
            ng,
            legs.call_id,
            lambda r: (
                stats_reach(CALLER_TAG, USER_CALLER + count)(r)
                and stats_reach(CALLEE_TAG, USER_CALLEE + count)(r)
            ),
        )
        assert both_kernelized(reply)
        assert stream_of(reply, CALLER_TAG)["stats"] == {
            "packets": USER_CALLER + count,
            "bytes": (USER_CALLER + count) * RTP_SIZE,
            "errors": 0,
        }
        assert stream_of(reply, CALLEE_TAG)["stats"] == {
            "packets": USER_CALLEE + count,
            "bytes": (USER_CALLEE + count) * RTP_SIZE,
            "errors": 0,
        }
        # (conntrack entries come and go: relayd deletes them once more shortly after
        # the hand-over, and the next packet creates them again through the maps)
        assert table_rules(topo.relay)
        assert table_elements(topo.relay)


def test_one_packet_each_way_right_after_the_answer_reaches_the_kernel(
    topo: Topology, start_relay: StartRelay, peers: tuple[Peer, Peer]
) -> None:
    """The worker hears of an answer after relayd has replied, with the next batch. A callee
    whose one packet came in between was read under the early forward (learning off: not
    learned from) and stayed unconfirmed, out of the kernel, until it sent again. relayd
    is stopped right after the reply (SIGSTOP, within the batch's 2 ms but for a slow
    client) so the packets surely reach the worker first; each side sends once."""
    relay = start_relay(*KERNEL)
    assert relay.proc is not None
    caller, callee = peers
    with relay.client() as ng:
        legs = set_up_call(ng, topo, answer=False)
        time.sleep(0.1)  # the offer's early forward (after 20 ms) is with the worker
        legs = answer_call(ng, topo, legs)
        assert legs.to_caller is not None
        relay.proc.send_signal(signal.SIGSTOP)
        try:
            callee.send(rtp_packet(0, CALLEE_SSRC, 2), legs.to_callee.rtp_to)
            caller.send(rtp_packet(0, CALLER_SSRC, 1), legs.to_caller.rtp_to)
            assert len(caller.receive(1, timeout=1.0)) == 1  # the callee's, as early media
        finally:
            relay.proc.send_signal(signal.SIGCONT)
        offloaded(ng, legs.call_id)


def test_every_forwarded_packet_is_marked_ef(
    topo: Topology, start_relay: StartRelay, peers: tuple[Peer, Peer]
) -> None:
    relay = start_relay(*KERNEL)
    caller, callee = peers
    with relay.client() as ng:
        legs = kernelized_call(ng, topo, caller, callee)
        for peer in peers:  # the senders mark their packets CS1: the relay must overwrite it
            peer.sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, 0x20)
        # separate bursts: the first packet of each flow, then the established flow
        for first in (200, 201, 230):
            count = 1 if first < 230 else 30
            kernel_exchange(topo.relay, caller, callee, legs, count, first=first)


def test_spoofed_sender_gets_nothing_through(
    topo: Topology, start_relay: StartRelay, peers: tuple[Peer, Peer]
) -> None:
    relay = start_relay(*KERNEL)
    caller, callee = peers
    with relay.client() as ng, Peer(topo.spoof.ns, topo.spoof.ip4, CALLER_PORT) as spoof:
        legs = kernelized_call(ng, topo, caller, callee)
        kernel_exchange(topo.relay, caller, callee, legs, 5, first=10)
        counters = element_counters(topo.relay)

        before = udp_delivered(topo.relay)
        # the spoofer sends from the caller's port, to both relay ports of the stream
        assert legs.to_caller is not None  # answered
        spoof.send_rtp(legs.to_caller.rtp_to, 20, first=500, ssrc=0x66666666, tag=6)
        spoof.send_rtp(legs.to_callee.rtp_to, 20, first=600, ssrc=0x66666666, tag=6)
        assert callee.drain(quiet=0.3) == []
        assert caller.drain(quiet=0.0) == []
        assert spoof.drain(quiet=0.0) == []
        # the spoofed packets matched no element: they reached the worker sockets, which
        # drop whatever arrives on a kernelized stream and count it as an error
        assert element_counters(topo.relay) == counters
        assert udp_delivered(topo.relay) - before == 40
        reply = wait_for(
            ng,
            legs.call_id,
            lambda r: (
                stream_of(r, CALLER_TAG)["stats"]["errors"] >= 20
                and stream_of(r, CALLEE_TAG)["stats"]["errors"] >= 20
            ),
        )
        for tag, packets in ((CALLER_TAG, USER_CALLER + 5), (CALLEE_TAG, USER_CALLEE + 5)):
            assert stream_of(reply, tag)["stats"]["errors"] == 20, stream_of(reply, tag)
            assert stream_of(reply, tag)["stats"]["packets"] == packets, stream_of(reply, tag)
        assert both_kernelized(reply)
        # the real peers are still forwarded, from where they were learned
        kernel_exchange(topo.relay, caller, callee, legs, 5, first=20)


def test_media_in_the_kernel_keeps_a_call_alive_and_its_silence_ends_it(
    topo: Topology, start_relay: StartRelay, peers: tuple[Peer, Peer]
) -> None:
    """relayd reads a kernelized call's counters only when its timeout comes due: media
    the kernel forwarded moves the deadline (to the last packet, which the kernel's
    element keeps), and a call silent for ``timeout`` ends then, not a period later."""
    relay = start_relay(*KERNEL, "--timeout", "3")
    caller, callee = peers
    with relay.client() as ng:
        legs = kernelized_call(ng, topo, caller, callee)
        with Talker(caller, callee, legs, first=1000, interval=0.05) as talker:
            time.sleep(5.0)  # no query meanwhile: only the timer reads the counters
            assert legs.call_id in ok(ng.call("list"))["calls"], "reaped while media flowed"
        silent = time.monotonic()
        assert talker.sent > 50
        while legs.call_id in ok(ng.call("list"))["calls"]:
            assert time.monotonic() - silent < 6.0, "the silent call was not reaped"
            time.sleep(0.05)
        gone = time.monotonic() - silent
        print(f"silent call reaped {gone:.2f} s after its last packet (timeout 3 s)")
        assert 2.5 <= gone <= 4.5
    assert "reason=timeout" in relay.log() or "'timeout'" in relay.log()


def test_delete_leaves_nothing_behind(
    topo: Topology, start_relay: StartRelay, peers: tuple[Peer, Peer]
) -> None:
    relay = start_relay(*KERNEL)
    caller, callee = peers
    with relay.client() as ng:
        rules = table_rules(topo.relay)
        assert len(rules) == 8, rules  # 4 chains x 2 families, constant
        before = relay.log().count("kernel.settled")
        legs = kernelized_call(ng, topo, caller, callee)
        # the hand-over deletes the stream's conntrack entries once more 0.3 s after the
        # offload: the NAT flows checked below must be made after that, or they may be gone
        settled(relay, before)
        kernel_exchange(topo.relay, caller, callee, legs, 10, first=10)
        elements = table_elements(topo.relay)
        assert elements is not None
        assert {name: len(items) for name, items in elements.items()} == {
            "dnat4": 2,
            "snat4": 2,
            "count4": 2,
            "dnat6": 0,
            "snat6": 0,
            "count6": 0,
            "rec4": 0,  # recorded forwards (nflog): none, the call is not recorded
            "rec6": 0,
        }
        assert conntrack_entries(topo.relay, RELAY_PORTS), "the NAT flows"

        deleted = ok(ng.call("delete", call_id=legs.call_id, delete_delay=0))
        assert deleted["created"]
        assert ok(ng.call("list"))["calls"] == []
        elements = table_elements(topo.relay)
        assert elements is not None
        assert all(items == [] for items in elements.values()), elements
        assert table_rules(topo.relay) == rules
        assert conntrack_entries(topo.relay, RELAY_PORTS) == []

        # no stale path: the media of the deleted call goes nowhere
        assert legs.to_caller is not None  # answered
        caller.send_rtp(legs.to_caller.rtp_to, 3, first=50, ssrc=CALLER_SSRC, tag=1)
        callee.send_rtp(legs.to_callee.rtp_to, 3, first=50, ssrc=CALLEE_SSRC, tag=2)
        assert callee.drain(quiet=0.3) == []
        assert caller.drain(quiet=0.0) == []
        bind_free(topo.relay, topo.caller.relay4, [legs.to_caller.rtp, legs.to_caller.rtcp])
        bind_free(topo.relay, topo.callee.relay4, [legs.to_callee.rtp, legs.to_callee.rtcp])


def test_reinvite_to_a_new_callee_port_moves_the_path(
    topo: Topology, start_relay: StartRelay, peers: tuple[Peer, Peer]
) -> None:
    relay = start_relay(*KERNEL)
    caller, callee = peers
    with (
        relay.client() as ng,
        Peer(topo.callee.ns, topo.callee.ip4, CALLEE_PORT + 2) as moved,
    ):
        legs = kernelized_call(ng, topo, caller, callee)
        kernel_exchange(topo.relay, caller, callee, legs, 5, first=10)

        # re-INVITE: same offer, the callee answers from a new port
        again = set_up_call(ng, topo, call_id=legs.call_id, answer=False)
        assert again.to_callee == legs.to_callee
        assert neither_kernelized(ok(ng.call("query", call_id=legs.call_id)))
        assert element_counters(topo.relay) == {}
        legs = answer_call(ng, topo, again, callee_port=CALLEE_PORT + 2)
        assert legs.to_caller is not None
        reply = ok(ng.call("query", call_id=legs.call_id))
        assert neither_kernelized(reply)
        assert stream_of(reply, CALLEE_TAG)["advertised endpoint"]["port"] == CALLEE_PORT + 2

        # userspace again: the new port is learned from its first packet
        before = udp_delivered(topo.relay)
        back = moved.send_rtp(legs.to_callee.rtp_to, 1, first=100, ssrc=CALLEE_SSRC, tag=2)
        assert_received(caller.receive(1), back, legs.to_caller.rtp_to)
        sent = caller.send_rtp(legs.to_caller.rtp_to, 3, first=100, ssrc=CALLER_SSRC, tag=1)
        assert_received(moved.receive(3), sent, legs.to_callee.rtp_to)
        assert udp_delivered(topo.relay) - before == 4  # through the workers
        offloaded(ng, legs.call_id)
        assert set(element_counters(topo.relay)) == set(keys(legs, caller, moved))

        kernel_exchange(topo.relay, caller, moved, legs, 20, first=200)
        assert callee.drain(quiet=0.3) == [], "the old callee port still gets media"


class Talker:
    """Both peers send one RTP packet every ``interval`` from a thread, numbered from ``first``."""

    def __init__(
        self, caller: Peer, callee: Peer, legs: CallLegs, first: int, interval: float = 0.01
    ) -> None:
        assert legs.to_caller is not None
        self.caller, self.callee, self.legs = caller, callee, legs
        self.first, self.interval = first, interval
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="talker")

    def _run(self) -> None:
        assert self.legs.to_caller is not None
        seq = self.first
        while not self._stop.is_set():
            self.caller.send(rtp_packet(seq, CALLER_SSRC, 1), self.legs.to_caller.rtp_to)
            self.callee.send(rtp_packet(seq, CALLEE_SSRC, 2), self.legs.to_callee.rtp_to)
            self.sent += 1
            seq += 1
            time.sleep(self.interval)

    def __enter__(self) -> Talker:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5.0)


def received_seqs(peer: Peer, count: int) -> list[Received]:
    got = peer.receive(count, timeout=3.0)
    return got + peer.drain(quiet=0.2)


def wait_gone(pids: list[int], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not all(gone(pid) for pid in pids):
        assert time.monotonic() < deadline, [pid for pid in pids if not gone(pid)]
        time.sleep(0.02)


def kill_relay(relay: RelaydProcess) -> None:
    """SIGKILL relayd, as a crash would; its workers follow when their link closes."""
    assert relay.proc is not None
    workers = worker_pids(relay)
    relay.proc.kill()
    relay.proc.wait(5.0)
    wait_gone(workers)


def test_sigkill_keeps_media_flowing_and_restart_adopts_the_call(
    topo: Topology, start_relay: StartRelay, peers: tuple[Peer, Peer]
) -> None:
    relay = start_relay(*KERNEL)
    caller, callee = peers
    with relay.client() as ng:
        legs = kernelized_call(ng, topo, caller, callee)
        kernel_exchange(topo.relay, caller, callee, legs, 5, first=10)
    time.sleep(0.6)  # the journal is written a few times a second
    state = relay.workdir / "state"
    to_callee, to_caller = keys(legs, caller, callee)

    with Talker(caller, callee, legs, first=1000) as talker:
        time.sleep(0.3)
        killed_at = talker.sent
        kill_relay(relay)
        dead = element_counters(topo.relay)
        time.sleep(1.0)  # relayd is dead: the kernel keeps forwarding
        while_dead = element_counters(topo.relay)
        for key in (to_callee, to_caller):
            assert while_dead[key][0] - dead[key][0] >= 50, (dead, while_dead)
        print(f"sigkill: {while_dead[to_callee][0] - dead[to_callee][0]} packets/s each way")
        restarted = start_relay(*KERNEL, "--state-dir", str(state))
        with restarted.client() as ng:
            reply = ok(ng.call("query", call_id=legs.call_id))
            assert both_kernelized(reply), reply
            assert set(reply["tags"]) == {CALLER_TAG, CALLEE_TAG}
            time.sleep(0.5)
    assert talker.sent > killed_at + 100
    # every packet sent before, during and after the restart arrived, in order, EF
    at_callee, at_caller = received_seqs(callee, talker.sent), received_seqs(caller, talker.sent)
    assert legs.to_caller is not None  # answered
    for got, source in ((at_callee, legs.to_callee.rtp_to), (at_caller, legs.to_caller.rtp_to)):
        assert [p.seq for p in got] == list(range(1000, 1000 + talker.sent))
        assert {p.source for p in got} == {source}
        assert {p.tos for p in got} == {EF}
    log = restarted.log()
    assert "kernel.reconciled" in log and "kept=2" in log, log[-3000:]

    with restarted.client() as ng:
        kernel_exchange(topo.relay, caller, callee, legs, 20, first=5000)
        # the restarted relayd counts the kernel's packets again, each once
        kernel_counted(restarted, topo.relay)  # everything sent so far is in the stats
        before = ok(ng.call("query", call_id=legs.call_id))
        kernel_exchange(topo.relay, caller, callee, legs, 20, first=6000)
        for tag in (CALLER_TAG, CALLEE_TAG):
            packets = stream_of(before, tag)["stats"]["packets"] + 20
            reply = wait_for(ng, legs.call_id, stats_reach(tag, packets))
            assert stream_of(reply, tag)["stats"]["packets"] == packets

        ok(ng.call("delete", call_id=legs.call_id, delete_delay=0))
        elements = table_elements(topo.relay)
        assert elements is not None and all(items == [] for items in elements.values())
        assert conntrack_entries(topo.relay, RELAY_PORTS) == []


def test_restart_removes_forwards_of_calls_that_are_gone(
    topo: Topology, start_relay: StartRelay, peers: tuple[Peer, Peer]
) -> None:
    relay = start_relay(*KERNEL)
    caller, callee = peers
    with relay.client() as ng:
        legs = kernelized_call(ng, topo, caller, callee)
        kernel_exchange(topo.relay, caller, callee, legs, 5, first=10)
    time.sleep(0.6)
    kill_relay(relay)
    state = relay.workdir / "state"
    run_in(topo.relay, "sqlite3", str(state / "calls.sqlite"), "DELETE FROM calls")
    assert len(element_counters(topo.relay)) == 2  # the dead relayd's forwards, still there
    kernel_exchange(topo.relay, caller, callee, legs, 5, first=20)

    restarted = start_relay(*KERNEL, "--state-dir", str(state))
    with restarted.client() as ng:
        assert ok(ng.call("list"))["calls"] == []
    elements = table_elements(topo.relay)
    assert elements is not None
    assert all(items == [] for items in elements.values()), elements
    assert conntrack_entries(topo.relay, RELAY_PORTS) == []
    assert legs.to_caller is not None  # answered
    caller.send_rtp(legs.to_caller.rtp_to, 3, first=50, ssrc=CALLER_SSRC, tag=1)
    callee.send_rtp(legs.to_callee.rtp_to, 3, first=50, ssrc=CALLEE_SSRC, tag=2)
    assert callee.drain(quiet=0.3) == [] and caller.drain(quiet=0.0) == []


def test_restart_without_the_kernel_path_takes_restored_calls_to_userspace(
    topo: Topology, start_relay: StartRelay, peers: tuple[Peer, Peer]
) -> None:
    relay = start_relay(*KERNEL)
    caller, callee = peers
    with relay.client() as ng:
        legs = kernelized_call(ng, topo, caller, callee)
    time.sleep(0.6)
    kill_relay(relay)
    # the table is gone and forwarding is off when relayd comes back
    run_in(topo.relay, "nft", "delete", "table", "inet", "relayd")
    run_in(topo.relay, "conntrack", "-F")
    run_in(topo.relay, "sysctl", "-q", "-w", "net.ipv4.ip_forward=0")
    restarted = start_relay(*KERNEL, "--state-dir", str(relay.workdir / "state"))
    assert "net.ipv4.ip_forward is 0" in restarted.log()
    with restarted.client() as ng:
        reply = ok(ng.call("query", call_id=legs.call_id))
        assert neither_kernelized(reply), reply
        before = udp_delivered(topo.relay)
        from_caller, from_callee = exchange(caller, callee, legs, 10, first=100)
        assert_received(callee.receive(10), from_caller, legs.to_callee.rtp_to)
        assert legs.to_caller is not None  # answered
        assert_received(caller.receive(10), from_callee, legs.to_caller.rtp_to)
        assert udp_delivered(topo.relay) - before == 20  # through the workers
        ok(ng.call("delete", call_id=legs.call_id, delete_delay=0))


def test_table_deleted_from_outside(
    topo: Topology, start_relay: StartRelay, peers: tuple[Peer, Peer]
) -> None:
    relay = start_relay(*KERNEL)
    caller, callee = peers
    with relay.client() as ng:
        legs = kernelized_call(ng, topo, caller, callee)
        kernel_exchange(topo.relay, caller, callee, legs, 5, first=10)

        with Talker(caller, callee, legs, first=1000) as talker:
            time.sleep(0.2)
            deleted_at = time.monotonic()
            run_in(topo.relay, "nft", "delete", "table", "inet", "relayd")
            # relayd notices at its next kernel tick and hands the call to the workers
            reply = wait_for(ng, legs.call_id, neither_kernelized, timeout=3.0)
            assert neither_kernelized(reply)
            noticed = time.monotonic() - deleted_at
            delivered = udp_delivered(topo.relay)
            time.sleep(0.5)
            assert udp_delivered(topo.relay) - delivered >= 2 * 40, "not through the workers"
            # nftables works again: the table is re-created and the call re-offloaded
            reply = wait_for(ng, legs.call_id, both_kernelized, timeout=15.0)
            back = time.monotonic() - deleted_at
            assert both_kernelized(reply)
            assert table_elements(topo.relay) is not None
            time.sleep(0.3)
        at_callee = received_seqs(callee, talker.sent)
        at_caller = received_seqs(caller, talker.sent)
        lost = 2 * talker.sent - len(at_callee) - len(at_caller)
        print(
            f"table deleted: in userspace after {noticed:.2f} s, back in the kernel after"
            f" {back:.2f} s, {lost} of {2 * talker.sent} packets lost"
        )
        for got in (at_callee, at_caller):
            seqs = [p.seq for p in got]
            assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
            assert len(got) >= talker.sent * 0.8, f"{talker.sent - len(got)} lost"
        kernel_exchange(topo.relay, caller, callee, legs, 20, first=9000)
    assert relay.log().count("kernel.unavailable") == 1, relay.log()[-3000:]


def test_forwards_of_calls_ended_while_nftables_failed_are_removed(
    topo: Topology, start_relay: StartRelay, peers: tuple[Peer, Peer]
) -> None:
    """An nft command fails while the table stays (its counter set is gone): the call's
    forwards stay in the kernel, unknown to relayd, and the call ends meanwhile. Once
    nftables works again, relayd's table holds exactly its calls: nothing of that call."""
    relay = start_relay(*KERNEL)
    caller, callee = peers
    with relay.client() as ng:
        legs = kernelized_call(ng, topo, caller, callee)
        for command in (
            "flush chain inet relayd prerouting_count",
            "delete chain inet relayd prerouting_count",
            "delete set inet relayd count4",
        ):
            run_in(topo.relay, "nft", *command.split())
        reply = wait_for(ng, legs.call_id, neither_kernelized, timeout=3.0)
        assert neither_kernelized(reply)
        assert "table relayd or its counters are gone" in relay.log()  # the once-a-second look
        ok(ng.call("delete", call_id=legs.call_id, delete_delay=0))
        # the table re-created (kernel.enabled) and then reconciled with the calls there
        # are (kernel.reconciled, logged once at start and once now): its last step
        deadline = time.monotonic() + 15.0
        while relay.log().count("kernel.reconciled") < 2:
            assert time.monotonic() < deadline, "the table was not re-created"
            time.sleep(0.2)
        assert relay.log().count("kernel.enabled") == 2
    elements = table_elements(topo.relay)
    assert elements is not None
    assert all(items == [] for items in elements.values()), elements
    assert len(table_rules(topo.relay)) == 8
    assert conntrack_entries(topo.relay, RELAY_PORTS) == []
    assert legs.to_caller is not None  # answered
    caller.send_rtp(legs.to_caller.rtp_to, 3, first=50, ssrc=CALLER_SSRC, tag=1)
    assert callee.drain(quiet=0.3) == [], "the ended call's media still flows"


def test_kernel_path_unusable_at_start(
    topo: Topology, start_relay: StartRelay, peers: tuple[Peer, Peer]
) -> None:
    run_in(topo.relay, "sysctl", "-q", "-w", "net.ipv4.ip_forward=0")
    relay = start_relay(*KERNEL)
    caller, callee = peers
    log = relay.log()
    assert "kernel.unavailable" in log and "net.ipv4.ip_forward is 0" in log, log[-3000:]
    assert table_elements(topo.relay) is None
    with relay.client() as ng:
        legs = set_up_call(ng, topo)
        assert legs.to_caller is not None
        confirm_both(caller, callee, legs)
        time.sleep(1.5)  # a stats report: both ends confirmed, and still in userspace
        before = udp_delivered(topo.relay)
        from_caller, from_callee = exchange(caller, callee, legs, 10, first=10)
        assert_received(callee.receive(10), from_caller, legs.to_callee.rtp_to)
        assert_received(caller.receive(10), from_callee, legs.to_caller.rtp_to)
        assert udp_delivered(topo.relay) - before == 20
        reply = wait_for(ng, legs.call_id, stats_reach(CALLEE_TAG, 11))
        for tag in (CALLER_TAG, CALLEE_TAG):
            assert "confirmed" in stream_of(reply, tag)["flags"]
        assert neither_kernelized(reply)
    assert table_elements(topo.relay) is None


def test_ipv6_call_in_the_kernel(topo: Topology, start_relay: StartRelay) -> None:
    relay = start_relay(*KERNEL)
    with (
        relay.client() as ng,
        Peer(topo.caller.ns, topo.caller.ip6, CALLER_PORT) as caller,
        Peer(topo.callee.ns, topo.callee.ip6, CALLEE_PORT) as callee,
    ):
        legs = set_up_call(ng, topo, ipv6=True)
        confirm_both(caller, callee, legs)
        reply = offloaded(ng, legs.call_id)
        assert stream_of(reply, CALLER_TAG)["stats"]["packets"] == USER_CALLER
        to_callee, to_caller = keys(legs, caller, callee)
        assert element_counters(topo.relay, 4) == {}
        assert element_counters(topo.relay, 6) == {to_callee: (0, 0), to_caller: (0, 0)}
        kernel_exchange(topo.relay, caller, callee, legs, 30, first=100)
        packet = (30, 30 * (RTP_SIZE + 48))  # IPv6 and UDP headers
        assert element_counters(topo.relay, 6) == {to_callee: packet, to_caller: packet}
        reply = wait_for(ng, legs.call_id, stats_reach(CALLER_TAG, USER_CALLER + 30))
        assert stream_of(reply, CALLER_TAG)["stats"] == {
            "packets": USER_CALLER + 30,
            "bytes": (USER_CALLER + 30) * RTP_SIZE,
            "errors": 0,
        }
        ok(ng.call("delete", call_id=legs.call_id, delete_delay=0))
        elements = table_elements(topo.relay)
        assert elements is not None and all(items == [] for items in elements.values())
        assert conntrack_entries(topo.relay, RELAY_PORTS) == []
