"""Recorded kernel forwards: the kernel forwards, and hands relayd a copy over nfnetlink_log.

A :class:`KernelForwarder` table in a relay namespace of its own (``nfl-<uid>-relay``,
:func:`tests.support.netns.topology`), one stream installed as the kernel path installs
it, marked recorded to an nflog group; peers send through it from their namespaces.
The test body runs with its thread in the relay namespace, where the table, the
forwarder's netlink sockets and the nflog reader live. Ports 35000-35999.
"""

from __future__ import annotations

import asyncio
import select
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from relayd.nft import Endpoint, Forward, ForwardKey, KernelForwarder, stream
from relayd.nft.nflog import NF_INET_PRE_ROUTING, Copy, NflogReader
from tests.support.netns import Topology, inside, topology, unavailable
from tests.support.nflog import key_of

pytestmark = pytest.mark.netns

TABLE = "relayd"
GROUP = 35
SO_RCVBUFFORCE = 33
RTP = bytes([0x80, 0x00]) + bytes(170)  # 172 bytes: 12-byte header and 160 of G.711


@dataclass
class Lab:
    topo: Topology
    fwd: KernelForwarder
    version: int

    @property
    def call(self) -> tuple[Endpoint, Endpoint, Endpoint, Endpoint]:
        """caller, the relay socket it sends to, the one the callee sends to, callee."""
        t = self.topo
        if self.version == 4:
            hosts = (t.caller.ip4, t.caller.relay4, t.callee.relay4, t.callee.ip4)
        else:
            hosts = (t.caller.ip6, t.caller.relay6, t.callee.relay6, t.callee.ip6)
        ports = (35000, 35100, 35102, 35002)
        caller, relay_a, relay_b, callee = (
            Endpoint(h, p) for h, p in zip(hosts, ports, strict=True)
        )
        return caller, relay_a, relay_b, callee

    @property
    def forwards(self) -> tuple[Forward, Forward]:
        return stream(*self.call)

    def udp(self, ns: str, ep: Endpoint) -> socket.socket:
        family = socket.AF_INET6 if ep.version == 6 else socket.AF_INET
        with inside(ns):
            sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 1 << 22)
        sock.bind((ep.address, ep.port))
        return sock

    def peers(self) -> tuple[socket.socket, socket.socket]:
        caller, _, _, callee = self.call
        return self.udp(self.topo.caller.ns, caller), self.udp(self.topo.callee.ns, callee)


@pytest.fixture(params=[4, 6], ids=["ipv4", "ipv6"])
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    reason = unavailable()
    if reason is not None:
        pytest.skip(reason)
    with topology(prefix="nfl") as topo, inside(topo.relay):
        fwd = KernelForwarder(TABLE)
        try:
            fwd.ensure_table()
            yield Lab(topo, fwd, request.param)
        finally:
            fwd.close()


def _send(sock: socket.socket, dest: Endpoint, count: int, first: int = 0) -> None:
    for i in range(first, first + count):
        sock.sendto(RTP[:2] + i.to_bytes(2, "big") + RTP[4:], (dest.address, dest.port))


def _recv(sock: socket.socket, count: int, timeout: float = 3.0) -> list[tuple[bytes, Endpoint]]:
    got: list[tuple[bytes, Endpoint]] = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([sock], [], [], left)[0]:
            break
        data, addr = sock.recvfrom(2048)
        got.append((data, Endpoint(addr[0], addr[1])))
    return got


def _numbers(payloads: list[bytes]) -> list[int]:
    return [int.from_bytes(p[2:4], "big") for p in payloads]


def _warm_up(lab: Lab, caller: socket.socket, callee: socket.socket) -> None:
    """One packet each way through the kernel before anything is measured: a fresh
    namespace resolves its IPv6 neighbours in about a second, holding the first packets."""
    _, relay_a, relay_b, _ = lab.call
    _send(caller, relay_a, 1, first=999)
    assert len(_recv(callee, 1)) == 1
    _send(callee, relay_b, 1, first=999)
    assert len(_recv(caller, 1)) == 1


def test_a_recorded_stream_is_forwarded_and_copied_as_the_parties_sent_it(lab: Lab) -> None:
    caller_ep, relay_a, relay_b, callee_ep = lab.call
    to_callee, to_caller = lab.forwards
    caller, callee = lab.peers()
    lab.fwd.install(lab.forwards)
    _warm_up(lab, caller, callee)
    with NflogReader(GROUP, flush_ms=20) as reader:
        lab.fwd.ensure_recording(GROUP)
        lab.fwd.record([to_callee.key, to_caller.key], GROUP)
        assert lab.fwd.recorded() == {to_callee.key: GROUP, to_caller.key: GROUP}

        _send(caller, relay_a, 50)
        _send(callee, relay_b, 30)
        # forwarding goes on as before: everything arrives, from relayd's other socket
        forward = _recv(callee, 50)
        back = _recv(caller, 30)
        assert _numbers([d for d, _ in forward]) == list(range(50))
        assert {sender for _, sender in forward} == {relay_b}
        assert _numbers([d for d, _ in back]) == list(range(30)) and len(back) == 30

        copies = reader.read(80, timeout=3.0)
        assert len(copies) == 80
        assert {c.hook for c in copies} == {NF_INET_PRE_ROUTING}
        assert {c.prefix for c in copies} == {TABLE}
        # before DNAT: from the party to the relay socket it sent to
        by_key: dict[ForwardKey | None, list[Copy]] = {}
        for copy in copies:
            by_key.setdefault(key_of(copy), []).append(copy)
        assert by_key.keys() == {ForwardKey(caller_ep, relay_a), ForwardKey(callee_ep, relay_b)}
        assert _numbers([c.udp_payload() for c in by_key[to_callee.key]]) == list(range(50))
        assert _numbers([c.udp_payload() for c in by_key[to_caller.key]]) == list(range(30))
        assert all(c.udp_payload() == RTP[:2] + c.udp_payload()[2:4] + RTP[4:] for c in copies)
        assert not any(c.truncated for c in copies)
        assert [c.seq for c in copies] == list(range(80))
        assert (reader.received, reader.lost, reader.overruns) == (80, 0, 0)
        now_us = time.time() * 1e6
        assert all(c.time_us is not None and 0 < now_us - c.time_us < 10e6 for c in copies)

        # counting is untouched by the copies
        header = 20 if lab.version == 4 else 40
        assert lab.fwd.counters()[to_callee.key] == (51, 51 * (header + 8 + len(RTP)))
        assert lab.fwd.counters()[to_caller.key].packets == 31

        # unmarked: forwarded, not copied
        lab.fwd.unrecord([to_callee.key, to_caller.key])
        lab.fwd.unrecord([to_callee.key])  # not marked: nothing to do
        assert lab.fwd.recorded() == {}
        _send(caller, relay_a, 10, first=50)
        assert _numbers([d for d, _ in _recv(callee, 10)]) == list(range(50, 60))
        assert reader.read(1, timeout=0.3) == []


def test_a_reader_that_does_not_read_loses_copies_never_packets(lab: Lab) -> None:
    """Its receive buffer full, the kernel drops copies (ENOBUFS once, the sequence numbers
    say how many) and goes on forwarding every packet."""
    _, relay_a, _, _ = lab.call
    to_callee, _ = lab.forwards
    caller, callee = lab.peers()
    lab.fwd.install(lab.forwards)
    _warm_up(lab, caller, callee)
    # a buffer of a few batches of a few copies each
    with NflogReader(GROUP, qthreshold=4, flush_ms=10, nlbufsiz=4096, rcvbuf=16384) as reader:
        lab.fwd.ensure_recording(GROUP)
        lab.fwd.record([to_callee.key], GROUP)
        sent = 600
        for start in range(0, sent, 50):  # paced a little: the callee's socket must keep up
            _send(caller, relay_a, 50, first=start)
            time.sleep(0.002)
        assert _numbers([d for d, _ in _recv(callee, sent)]) == list(range(sent))
        time.sleep(0.1)  # the last batch flushed
        copies = reader.drain(limit=1000)
        assert 0 < len(copies) < sent
        assert reader.overruns >= 1
        # copies lost after the last one read show as a gap once the next comes
        _send(caller, relay_a, 1, first=sent)
        assert len(_recv(callee, 1)) == 1
        copies += reader.read(1, timeout=2.0)
        assert _numbers([c.udp_payload() for c in copies])[-1] == sent
        assert reader.received + reader.lost == sent + 1
        assert reader.lost > 0
        print(f"\ncopies kept {reader.received}, lost {reader.lost}, overruns {reader.overruns}")


def test_marks_go_with_their_forwards_and_move_between_groups(lab: Lab) -> None:
    _, relay_a, _, _ = lab.call
    to_callee, to_caller = lab.forwards
    caller, callee = lab.peers()
    lab.fwd.install(lab.forwards)
    _warm_up(lab, caller, callee)
    other = GROUP + 1
    with NflogReader(GROUP, flush_ms=20) as first, NflogReader(other, flush_ms=20) as second:
        lab.fwd.record([to_callee.key], GROUP)  # no chain yet: made on the way
        _send(caller, relay_a, 2)
        assert len(first.read(2, timeout=2.0)) == 2

        lab.fwd.record([to_callee.key], other)  # moves: one transaction
        _send(caller, relay_a, 3)
        assert len(second.read(3, timeout=2.0)) == 3
        assert first.read(1, timeout=0.2) == []

        # removing the forward removes its mark; installed again, it is not recorded
        lab.fwd.remove([to_callee.key, to_caller.key])
        assert lab.fwd.recorded() == {}
        lab.fwd.install(lab.forwards)
        _send(caller, relay_a, 2)
        assert _numbers([d for d, _ in _recv(callee, 7)]) == [0, 1, 0, 1, 2, 0, 1]
        assert second.read(1, timeout=0.2) == []


def test_reconcile_keeps_the_wanted_marks_and_drops_the_others(lab: Lab) -> None:
    """After a restart: a new forwarder finds the marks in the table, keeps those of the
    forwards it still wants (copies go on), removes the rest."""
    _, relay_a, relay_b, _ = lab.call
    to_callee, to_caller = lab.forwards
    caller, callee = lab.peers()
    lab.fwd.install(lab.forwards)
    _warm_up(lab, caller, callee)
    lab.fwd.ensure_recording(GROUP)
    lab.fwd.record([to_callee.key, to_caller.key], GROUP)
    restarted = KernelForwarder(TABLE)
    try:
        result = restarted.reconcile([to_callee])
        assert (result.kept, result.removed) == (1, 1)
        assert restarted.recorded() == {to_callee.key: GROUP}
        with NflogReader(GROUP, flush_ms=20) as reader:

            async def listen() -> list[Copy]:
                got: list[Copy] = []
                reader.attach(asyncio.get_running_loop(), got.extend)
                _send(caller, relay_a, 4)
                _send(callee, relay_b, 4)  # its forward and its mark went: not copied
                deadline = time.monotonic() + 2.0
                while len(got) < 4 and time.monotonic() < deadline:
                    await asyncio.sleep(0.02)
                await asyncio.sleep(0.1)
                reader.detach()
                return got

            copies = asyncio.run(listen())
        assert [key_of(c) for c in copies] == [to_callee.key] * 4
        restarted.unrecord([to_callee.key])  # adopted: unmarked without a listing
        assert restarted.recorded() == {}
    finally:
        restarted.close()
