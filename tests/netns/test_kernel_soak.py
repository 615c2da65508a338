"""Kernel-path soak: thousands of calls set up, offloaded and deleted, then nothing left behind.

relayd runs with ``--table 0`` and a wide port range. The calls go in batches:
all offers of a batch, then all answers (pipelined over one ng socket), then one
RTP packet from each caller and from each callee (one socket per call and
side, each on its own port, reused from batch to batch), which confirms both
ends; once the ``count4`` set holds both directions of every call of the batch
(read with ``nft``; one call's ``query`` says ``kernelized``), one more packet
each way goes through the kernel to every peer, and the batch is deleted
(``delete-delay: 0``). Afterwards:
no element, no conntrack entry of the relay port range, no call, no media
socket in relayd or its workers, and every port of the range binds again.

The loop runs up to ``CALLS`` (10,000) calls and stops before ``BUDGET`` (100 s)
runs out; fewer than ``MIN_CALLS`` (3,000) in that time fails the test. The
count and rate reached are printed (run with ``-s``) and recorded in
docs/kernel.md.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from relayd.ng import bencode
from relayd.ng.client import NgClient
from tests.netns.calls import (
    CALLEE_TAG,
    CALLER_TAG,
    EF,
    advertised,
    conntrack_entries,
    element_counters,
    sdp,
    stream_flags,
    table_elements,
    udp_delivered,
)
from tests.netns.conftest import NG_PORT, StartRelay
from tests.support.netns import Topology, inside, unavailable
from tests.support.relayd import RelaydProcess
from tests.support.rtp_peer import rtp_packet

_SKIP = unavailable()
pytestmark = [pytest.mark.netns, pytest.mark.skipif(_SKIP is not None, reason=f"netns: {_SKIP}")]

# On this shared 2-vCPU VM 10,000 calls took 40-45 s when it was quiet, but other
# tenants' load brought the rate down to 55-159 calls/s (7,000 calls in 87 s): the loop
# goes on up to CALLS while the budget lasts, and MIN_CALLS must be reached.
CALLS = int(os.environ.get("RELAYD_SOAK_CALLS", "10000"))
MIN_CALLS = min(3000, CALLS)
BATCH = 1000
BUDGET = 100.0  # seconds for the loop, at most; the checks afterwards take about 5 s
PORT_MIN, PORT_MAX = 20000, 59999
CALLER_BASE, CALLEE_BASE = 10000, 12000  # the peers' source ports: BASE + index in batch
WINDOW = 64  # ng requests in flight
OFFLOAD_TIMEOUT = 10.0


class Pipeline:
    """Many ng requests in flight over one UDP socket; replies matched by cookie."""

    def __init__(self, ns: str, address: tuple[str, int]) -> None:
        with inside(ns):
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.setblocking(False)
        self.poll = select.poll()  # not select(): the peers' sockets push fds past 1024
        self.poll.register(self.sock, select.POLLIN)
        self.address = address
        self.prefix = os.urandom(4).hex()
        self.serial = 0

    def close(self) -> None:
        self.sock.close()

    def run(self, messages: list[dict[str, Any]], timeout: float = 20.0) -> list[dict[str, Any]]:
        """Send every message (at most WINDOW unanswered), return the replies in order."""
        frames: dict[bytes, bytes] = {}
        order: list[bytes] = []
        for message in messages:
            self.serial += 1
            cookie = f"{self.prefix}_{self.serial}".encode()
            frames[cookie] = cookie + b" " + bencode.encode(message)
            order.append(cookie)
        replies: dict[bytes, dict[str, Any]] = {}
        waiting: dict[bytes, float] = {}  # cookie -> when it was (re)sent
        queue = iter(order)
        deadline = time.monotonic() + timeout
        while len(replies) < len(order):
            now = time.monotonic()
            assert now < deadline, f"{len(order) - len(replies)} ng requests unanswered"
            for cookie, sent in list(waiting.items()):
                if now - sent > 2.0:  # lost: the same cookie gets the cached reply
                    self.sock.sendto(frames[cookie], self.address)
                    waiting[cookie] = now
            while len(waiting) < WINDOW:
                cookie = next(queue, b"")
                if not cookie:
                    break
                self.sock.sendto(frames[cookie], self.address)
                waiting[cookie] = now
            self.poll.poll(500)
            while True:
                try:
                    data = self.sock.recv(1 << 16)
                except BlockingIOError:
                    break
                cookie, _, body = data.partition(b" ")
                if cookie in waiting:
                    del waiting[cookie]
                    replies[cookie] = NgClient.decode_body(body)
        return [replies[cookie] for cookie in order]


@dataclass
class Side:
    """One socket per call of a batch, in one peer namespace."""

    sockets: list[socket.socket]

    @classmethod
    def open(cls, ns: str, address: str, base: int, count: int) -> Side:
        sockets = []
        with inside(ns):
            for index in range(count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sockets.append(sock)
                sock.bind((address, base + index))
                sock.setblocking(False)
        return cls(sockets)

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()

    def collect(self, count: int, timeout: float = 5.0) -> int:
        """Read until ``count`` packets arrived (or ``timeout``); return how many did."""
        got = 0
        deadline = time.monotonic() + timeout
        while got < count and time.monotonic() < deadline:
            got += self.drain()
            if got < count:
                time.sleep(0.01)
        return got

    def drain(self) -> int:
        """Read whatever arrived; return how many packets."""
        got = 0
        for sock in self.sockets:
            with contextlib.suppress(BlockingIOError, ConnectionRefusedError):
                while sock.recv(4096):
                    got += 1
        return got


def ok_all(replies: list[dict[str, Any]], what: str) -> None:
    bad = [r for r in replies if r.get("result") != "ok"]
    assert not bad, f"{len(bad)} {what} failed, e.g. {bad[0]}"


def fds(pid: int) -> list[str]:
    """What each open file descriptor of ``pid`` points to."""
    found = []
    for name in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(FileNotFoundError):
            found.append(os.readlink(f"/proc/{pid}/fd/{name}"))
    return found


def settled_fds(pids: list[int], timeout: float = 5.0) -> dict[int, list[str]]:
    """Open files per process, once every worker has its epoll and nothing changes for 0.3 s."""
    deadline = time.monotonic() + timeout
    last: dict[int, list[str]] = {}
    while True:
        now = {pid: sorted(fds(pid)) for pid in pids}
        polling = all("anon_inode:[eventpoll]" in files for files in list(now.values())[1:])
        if (now == last and polling) or time.monotonic() > deadline:
            return now
        last = now
        time.sleep(0.3)


def udp_inodes(ns: str) -> set[str]:
    """Socket inodes of every UDP socket in ``ns``."""
    inodes: set[str] = set()
    with inside(ns):
        for table in ("/proc/self/net/udp", "/proc/self/net/udp6"):
            for line in Path(table).read_text().splitlines()[1:]:
                inodes.add(line.split()[9])
    return inodes


def process_tree(relay: RelaydProcess) -> list[int]:
    assert relay.proc is not None
    parent = psutil.Process(relay.proc.pid)
    return [parent.pid, *(child.pid for child in parent.children())]


def media_sockets(pids: list[int], ns: str) -> dict[int, int]:
    """UDP sockets open per process (relayd: its ng listener; workers: none)."""
    udp = udp_inodes(ns)
    return {
        pid: sum(1 for link in fds(pid) if link.startswith("socket:[") and link[8:-1] in udp)
        for pid in pids
    }


@pytest.fixture
def sides(topo: Topology) -> Iterator[tuple[Side, Side]]:
    callers = Side.open(topo.caller.ns, topo.caller.ip4, CALLER_BASE, BATCH)
    try:
        callees = Side.open(topo.callee.ns, topo.callee.ip4, CALLEE_BASE, BATCH)
        try:
            yield callers, callees
        finally:
            callees.close()
    finally:
        callers.close()


def wait_offloaded(ns: str, directions: int) -> int:
    deadline = time.monotonic() + OFFLOAD_TIMEOUT
    while True:
        found = len(element_counters(ns))
        if found >= directions or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def not_offloaded(
    topo: Topology,
    pipe: Pipeline,
    ids: list[str],
    to_caller_of: list[tuple[str, int]],
    to_callee_of: list[tuple[str, int]],
) -> str:
    """For a failed wait: the directions of the batch that have no forward (call, which
    way, the relay port the packet went to) and what ``query`` says of the first few."""
    keys = set(element_counters(topo.relay))
    missing: list[tuple[str, str, int]] = []
    for i, call_id in enumerate(ids):
        if (topo.caller.ip4, CALLER_BASE + i, *to_caller_of[i]) not in keys:
            missing.append((call_id, "caller", to_caller_of[i][1]))
        if (topo.callee.ip4, CALLEE_BASE + i, *to_callee_of[i]) not in keys:
            missing.append((call_id, "callee", to_callee_of[i][1]))
    flags = {
        c: stream_flags(pipe.run([{"command": "query", "call-id": c}])[0])
        for c, _, _ in missing[:3]
    }
    return f"missing {missing[:20]} ({len(missing)}); streams of the first: {flags}"


def test_soak_calls_offloaded_and_deleted(
    topo: Topology, start_relay: StartRelay, sides: tuple[Side, Side]
) -> None:
    relay = start_relay(
        "--table", "0",
        "--endpoint-learning", "immediate",
        "--tos", str(EF),
        "--port-min", str(PORT_MIN),
        "--port-max", str(PORT_MAX),
        "--log-level", "5",
        "--max-sessions", "-1",
    )  # fmt: skip
    callers, callees = sides
    tree = process_tree(relay)
    assert len(tree) >= 2, "relayd and its workers"
    baseline_fds = settled_fds(tree)
    baseline_udp = media_sockets(tree, topo.relay)
    pipe = Pipeline(topo.relay, ("127.0.0.1", NG_PORT))
    started = time.monotonic()
    done = 0
    timings: dict[str, float] = {"signalling": 0.0, "media": 0.0, "offload": 0.0, "delete": 0.0}
    try:
        last = 0.0  # how long the previous batch took: no batch starts that would end late
        while done < CALLS and time.monotonic() - started + last < BUDGET:
            batch = min(BATCH, CALLS - done)
            ids = [f"soak-{done + i}" for i in range(batch)]
            t0 = time.monotonic()
            offers = pipe.run(
                [
                    {
                        "command": "offer",
                        "call-id": call_id,
                        "from-tag": CALLER_TAG,
                        "sdp": sdp(topo.caller.ip4, CALLER_BASE + i),
                        "direction": ["caller", "callee"],
                    }
                    for i, call_id in enumerate(ids)
                ]
            )
            ok_all(offers, "offers")
            answers = pipe.run(
                [
                    {
                        "command": "answer",
                        "call-id": call_id,
                        "from-tag": CALLER_TAG,
                        "to-tag": CALLEE_TAG,
                        "sdp": sdp(topo.callee.ip4, CALLEE_BASE + i),
                    }
                    for i, call_id in enumerate(ids)
                ]
            )
            ok_all(answers, "answers")
            t1 = time.monotonic()
            to_caller_of = [advertised(answer["sdp"]).rtp_to for answer in answers]
            to_callee_of = [advertised(offer["sdp"]).rtp_to for offer in offers]
            for i in range(batch):
                callers.sockets[i].sendto(rtp_packet(0, 0x1000 + i, 1), to_caller_of[i])
            for i in range(batch):
                callees.sockets[i].sendto(rtp_packet(0, 0x2000 + i, 2), to_callee_of[i])
            t2 = time.monotonic()
            found = wait_offloaded(topo.relay, 2 * batch)
            assert found == 2 * batch, (
                f"batch at {done}: {found} of {2 * batch} offloaded; "
                + not_offloaded(topo, pipe, ids, to_caller_of, to_callee_of)
            )
            t3 = time.monotonic()
            sample = pipe.run([{"command": "query", "call-id": ids[-1]}])[0]
            for tag in (CALLER_TAG, CALLEE_TAG):
                flags = sample["tags"][tag]["medias"][0]["streams"][0]["flags"]
                assert "kernelized" in flags, (ids[-1], tag, flags)
            # one packet each way through the kernel: every call has a NAT flow to clean up
            callers.drain()
            callees.drain()
            delivered = udp_delivered(topo.relay)
            for i in range(batch):
                callers.sockets[i].sendto(rtp_packet(1, 0x1000 + i, 1), to_caller_of[i])
                callees.sockets[i].sendto(rtp_packet(1, 0x2000 + i, 2), to_callee_of[i])
            assert callees.collect(batch) == batch, "kernel-phase packets lost"
            assert callers.collect(batch) == batch, "kernel-phase packets lost"
            assert udp_delivered(topo.relay) == delivered, "kernel-phase packets in userspace"
            deletes = pipe.run(
                [{"command": "delete", "call-id": call_id, "delete-delay": 0} for call_id in ids]
            )
            ok_all(deletes, "deletes")
            t4 = time.monotonic()
            callers.drain()
            callees.drain()
            for name, span in zip(timings, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                timings[name] += span
            done += batch
            last = t4 - t0
        elapsed = time.monotonic() - started
    finally:
        pipe.close()
    rate = done / elapsed
    print(
        f"soak: {done} calls in {elapsed:.1f} s ({rate:.0f} calls/s, batches of {BATCH});"
        + "".join(f" {name} {span:.1f} s," for name, span in timings.items())
    )
    assert done >= MIN_CALLS, f"only {done} calls in {BUDGET:.0f} s ({rate:.0f} calls/s)"

    # nothing left behind
    elements = table_elements(topo.relay)
    assert elements is not None
    assert {name: len(items) for name, items in elements.items() if items} == {}
    assert conntrack_entries(topo.relay, range(PORT_MIN, PORT_MAX + 1)) == []
    with relay.client() as ng:
        assert ng.call("list")["calls"] == []
    time.sleep(1.5)  # workers close their sockets when relayd's drop reaches them
    assert process_tree(relay) == tree, "a worker was restarted"
    assert media_sockets(tree, topo.relay) == baseline_udp
    settled = settled_fds(tree)
    assert settled == baseline_fds, {
        pid: (sorted(set(settled[pid]) - set(files)), sorted(set(files) - set(settled[pid])))
        for pid, files in baseline_fds.items()
    }
    for address in (topo.caller.relay4, topo.callee.relay4):
        taken = []
        with inside(topo.relay):
            for port in range(PORT_MIN, PORT_MAX + 1):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                try:
                    sock.bind((address, port))
                except OSError:
                    taken.append(port)
                finally:
                    sock.close()
        assert taken == [], f"{address}: {len(taken)} ports still bound, e.g. {taken[:5]}"
    log = relay.log()
    for trouble in ("kernel.unavailable", "Traceback", "worker.died", "ng.internal_error"):
        assert trouble not in log, log[log.index(trouble) - 2000 : log.index(trouble) + 2000]
