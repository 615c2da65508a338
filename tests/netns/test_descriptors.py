"""One descriptor per media port, across relayd's processes (issue 13).

relayd binds each media socket and hands it to the worker that relays it, keeping no
copy (relayd/plane/sockets.py). Counted from /proc: every relay socket in the relay
namespace (/proc/PID/net/udp and udp6) is held by exactly one descriptor among the
main process and its workers (/proc/PID/fd), for userspace and kernelized calls; and
after a worker is SIGKILLed, relayd binds the same ports again, media of an
established call resumes on them (the gap is printed), and each port is held once
again. Namespaces are named ``fds-…`` (not the shared ``topo`` fixture's).
"""

from __future__ import annotations

import itertools
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from relayd.plane.sockets import worker_budget
from tests.netns.calls import CALLER_SSRC, ok, set_up_call, worker_pids
from tests.netns.conftest import StartRelay, relay_starter
from tests.netns.test_kernel import KERNEL, both_kernelized, confirm_both, offloaded
from tests.support.netns import Topology, topology, unavailable
from tests.support.relayd import RelaydProcess
from tests.support.rtp_peer import Peer, rtp_packet

_SKIP = unavailable()
pytestmark = [pytest.mark.netns, pytest.mark.skipif(_SKIP is not None, reason=f"netns: {_SKIP}")]

# this file's ports (each namespace is its own, but the range keeps clear of others' anyway)
PORT_MIN, PORT_MAX = 42000, 42199  # relayd's media ports
NG_PORT = 42999
CALLER_PORT, CALLEE_PORT = 42900, 42902  # the peers' own, in their namespaces
USERSPACE_CALLS = 20

# the caller and callee ports of the i-th extra call (nobody sends from them): 424xx, 426xx


@pytest.fixture
def topo() -> Iterator[Topology]:
    """This file's own namespaces, ``fds-<uid>-<role>``."""
    with topology(prefix="fds") as created:
        yield created


@pytest.fixture
def start_relay(
    topo: Topology, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[StartRelay]:
    with relay_starter(
        topo, tmp_path, request, ng_port=NG_PORT, port_min=PORT_MIN, port_max=PORT_MAX
    ) as start:
        yield start


def relay_sockets(pid: int) -> dict[int, int]:
    """Socket inode -> local port of every UDP socket on a relay port in ``pid``'s namespace."""
    found = {}
    for table in ("udp", "udp6"):
        lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        for line in lines:
            fields = line.split()
            port = int(fields[1].rsplit(":", 1)[1], 16)
            if PORT_MIN <= port <= PORT_MAX:
                found[int(fields[9])] = port
    return found


def held(pid: int) -> Counter[int]:
    """How many descriptors of process ``pid`` point at each socket inode."""
    count: Counter[int] = Counter()
    for entry in os.scandir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(entry.path)
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            count[int(target[8:-1])] += 1
    return count


def census(relay: RelaydProcess) -> tuple[int, dict[str, int], Counter[int]]:
    """The relay sockets bound, the descriptors each process holds on them, and per socket
    how many descriptors (all processes together) hold it."""
    assert relay.proc is not None
    main = relay.proc.pid
    sockets = relay_sockets(main)
    per_process: dict[str, int] = {}
    per_socket: Counter[int] = Counter({inode: 0 for inode in sockets})
    for name, pid in [("main", main)] + [(f"worker {p}", p) for p in worker_pids(relay)]:
        mine = {inode: n for inode, n in held(pid).items() if inode in sockets}
        per_process[name] = sum(mine.values())
        per_socket.update(mine)
    return len(sockets), per_process, per_socket


def assert_one_each(
    relay: RelaydProcess, expected: int, *, main: int | None = 0
) -> tuple[int, dict[str, int], Counter[int]]:
    """``expected`` relay sockets, each held by exactly one descriptor (``main`` of them in
    the main process, when given); returns that census. (A socket handed to a worker is held
    twice for a moment, relayd closing its copy once the descriptor is sent: a later census
    may catch such a moment, this one waits it out.)"""
    deadline = time.monotonic() + 3.0
    while True:
        bound, per_process, per_socket = census(relay)
        good = bound == expected and set(per_socket.values()) <= {1}
        if good and (main is None or per_process["main"] == main):
            break
        assert time.monotonic() < deadline, (bound, expected, per_process, per_socket)
        time.sleep(0.05)
    print(f"{bound} relay sockets, {sum(per_process.values())} descriptors: {per_process}")
    return bound, per_process, per_socket


def test_each_port_is_held_by_one_descriptor_userspace_and_kernelized(
    topo: Topology, start_relay: StartRelay
) -> None:
    relay = start_relay(*KERNEL, "--num-threads", "2")
    with (
        relay.client() as ng,
        Peer(topo.caller.ns, topo.caller.ip4, CALLER_PORT) as caller,
        Peer(topo.callee.ns, topo.callee.ip4, CALLEE_PORT) as callee,
    ):
        kernelized = set_up_call(ng, topo, caller_port=CALLER_PORT, callee_port=CALLEE_PORT)
        confirm_both(caller, callee, kernelized)
        offloaded(ng, kernelized.call_id)
        for i in range(USERSPACE_CALLS):
            set_up_call(
                ng, topo, call_id=f"fds-{i}", caller_port=42400 + 2 * i, callee_port=42600 + 2 * i
            )
        # an offer not answered yet: its ports stay with whoever holds them now
        set_up_call(
            ng,
            topo,
            call_id="fds-ringing",
            answer=False,
            caller_port=42400 + 2 * 99,
            callee_port=42600 + 2 * 99,
        )
        assert both_kernelized(ok(ng.call("query", call_id=kernelized.call_id)))
        calls = USERSPACE_CALLS + 2
        # two parties per call, an RTP and an RTCP socket each
        bound, per_process, _ = assert_one_each(relay, 4 * calls, main=None)
        assert sum(per_process.values()) == bound  # ports held == descriptors held
        for i in range(USERSPACE_CALLS):
            ok(ng.call("delete", call_id=f"fds-{i}", delete_delay=0))
        assert_one_each(relay, 4 * 2, main=None)  # the workers closed what they held


def test_a_killed_workers_call_resumes_on_the_same_ports(
    topo: Topology, start_relay: StartRelay
) -> None:
    relay = start_relay("--num-threads", "1", "--endpoint-learning", "immediate")
    with (
        relay.client() as ng,
        Peer(topo.caller.ns, topo.caller.ip4, CALLER_PORT) as caller,
        Peer(topo.callee.ns, topo.callee.ip4, CALLEE_PORT) as callee,
    ):
        legs = set_up_call(ng, topo, caller_port=CALLER_PORT, callee_port=CALLEE_PORT)
        for i in range(3):  # a few more calls on the worker, to be held again too
            set_up_call(
                ng, topo, call_id=f"fds-{i}", caller_port=42400 + 2 * i, callee_port=42600 + 2 * i
            )
        assert legs.to_caller is not None
        time.sleep(0.3)  # the forwards reach the worker
        assert_one_each(relay, 16)
        before = census(relay)[2].keys()
        [worker] = worker_pids(relay)
        count, interval = 1000, 0.002  # 2 s at 500 packets per second
        to_relay = legs.to_caller.rtp_to

        def talk() -> None:
            for seq in range(count):
                caller.send(rtp_packet(seq, CALLER_SSRC, 1), to_relay)
                time.sleep(interval)

        sender = threading.Thread(target=talk, name="caller-rtp")
        sender.start()
        try:
            time.sleep(0.5)
            killed = time.time()
            os.kill(worker, signal.SIGKILL)
        finally:
            sender.join(10.0)
        got = callee.receive(count, timeout=3.0)
        seqs = [p.seq for p in got]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        assert {p.source for p in got} == {legs.to_callee.rtp_to}  # the same relay port
        after = [p.at for p in got if p.at > killed]
        assert after, "no media after the worker was killed"
        gap = max(b - a for a, b in itertools.pairwise(p.at for p in got))
        print(
            f"worker SIGKILL at 500 pps: longest gap {gap * 1000:.1f} ms, first packet after"
            f" the kill {(after[0] - killed) * 1000:.1f} ms, {len(got)}/{count} packets"
            f" ({count - len(got)} lost)"
        )
        assert gap < 1.0, f"media stopped for {gap:.3f} s"
        [replacement] = worker_pids(relay)
        assert replacement != worker
        # every port is bound again, in the new worker, once; new sockets on the same ports
        assert_one_each(relay, 16)
        assert census(relay)[2].keys().isdisjoint(before)
        log = relay.log()
        [line] = [entry for entry in log.splitlines() if "worker.sockets_bound_again" in entry]
        stamp = datetime.fromisoformat(line.split()[0].replace("Z", "+00:00")).timestamp()
        print(f"ports bound again {(stamp - killed) * 1000:.1f} ms after the kill: {line}")
        assert "waiting=0" in line and "sockets=16" in line, line


# -- the descriptor limit ------------------------------------------------------------------------

NOFILE = 300  # relayd's (and so its worker's) RLIMIT_NOFILE in the test below


def test_at_its_descriptor_limit_a_worker_refuses_calls_and_keeps_the_others(
    topo: Topology, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """With a low RLIMIT_NOFILE, calls beyond what one worker may hold get "Ran out of ports"
    (relayd/plane/sockets.py's worker_budget), said once in the log; the worker does not fall
    over, every call it has keeps relaying, a deleted call's room is taken by a new one, and
    a killed worker's replacement takes every socket back (relayd holds them meanwhile)."""
    budget = worker_budget(NOFILE)
    assert budget is not None
    fits = budget // 4  # two parties, an RTP and an RTCP socket each
    with relay_starter(
        topo,
        tmp_path,
        request,
        ng_port=NG_PORT,
        port_min=PORT_MIN,
        port_max=PORT_MAX,
        nofile=NOFILE,
    ) as start:
        relay = start("--num-threads", "1", "--endpoint-learning", "immediate")
        with (
            relay.client() as ng,
            Peer(topo.caller.ns, topo.caller.ip4, CALLER_PORT) as caller,
            Peer(topo.callee.ns, topo.callee.ip4, CALLEE_PORT) as callee,
        ):
            legs = set_up_call(ng, topo, caller_port=CALLER_PORT, callee_port=CALLEE_PORT)
            [worker] = worker_pids(relay)
            refused = 0
            for i in range(fits + 10):  # bounded: ten past the budget
                try:
                    set_up_call(
                        ng, topo, call_id=f"fds-{i}", caller_port=44000 + 2 * i, callee_port=46000
                    )
                except AssertionError as exc:
                    assert "Ran out of ports" in str(exc), exc
                    refused += 1
            assert refused == 11, refused  # the first call and fits - 1 of these went in
            assert worker_pids(relay) == [worker]
            assert_one_each(relay, 4 * fits)
            log = relay.log()
            assert log.count("ports.worker_full") == 1, log
            assert "worker.died" not in log and "Traceback" not in log, log

            def relays(seq: int) -> bool:
                assert legs.to_caller is not None
                caller.send(rtp_packet(seq, CALLER_SSRC, 1), legs.to_caller.rtp_to)
                return any(p.seq == seq for p in callee.receive(1, timeout=2.0))

            assert relays(1), "the first call stopped relaying at the limit"
            for i in range(5):  # five calls go: five new ones fit again
                ok(ng.call("delete", call_id=f"fds-{i}", delete_delay=0))
            time.sleep(0.3)  # the worker closes their sockets
            for i in range(5):
                set_up_call(ng, topo, call_id=f"fds-new-{i}", caller_port=45000 + 2 * i)
            os.kill(worker, signal.SIGKILL)
            deadline = time.monotonic() + 10.0
            while worker_pids(relay) in ([], [worker]):
                assert time.monotonic() < deadline, "no replacement worker"
                time.sleep(0.05)
            assert_one_each(relay, 4 * fits)
            assert relays(2), "the first call did not resume on the replacement worker"
            log = relay.log()
            assert "worker.spawn_failed" not in log and "Traceback" not in log, log
