"""KernelForwarder against real nftables and conntrack, in namespaces of its own.

::

    caller  10.88.1.2  fd00:88::1:2 ─── 10.88.1.1  fd00:88::1:1 ┐
    callee  10.88.2.2  fd00:88::2:2 ─── 10.88.2.1  fd00:88::2:1 ├ relay (forwarding)
    spoof   10.88.3.2  fd00:88::3:2 ─── 10.88.3.1  fd00:88::3:1 ┘

Namespaces are ``rnf-<uid>-<role>``; the addresses exist only inside them and
everything is removed in ``finally``. The test body runs with its thread in the
relay namespace (that is where the forwarder and its netlink sockets live);
peers' sockets are created in their own namespaces and used from here. The
relay's own sockets stand for the worker's: whatever the kernel does not
forward lands there.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import select
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from relayd.nft import (
    Endpoint,
    Forward,
    KernelForwarder,
    NftError,
    stream,
)
from relayd.nft.elements import encode_key
from relayd.nft.ruleset import ACTIVITY_TIMEOUT
from tests.support.conntrack import count_entries, delete_entries

pytestmark = pytest.mark.netns

TABLE = "relayd"
RTP = bytes([0x80, 0x00]) + bytes(170)  # 172 bytes: 12-byte header and 160 bytes of G.711
EF = 0xB8
SO_RCVBUFFORCE = 33  # linux/socket.h; not in Python 3.11
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("ip", "nft", "conntrack"):
        if shutil.which(tool) is None:
            return f"{tool} not installed"
    return None


def _run(*args: str) -> str:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=10)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def _run_in_relay(lab: Lab, *args: str, stdin: str | None = None) -> str:
    proc = subprocess.run(
        ["ip", "netns", "exec", lab.ns("relay"), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=10,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


@contextlib.contextmanager
def _inside(ns: str) -> Iterator[None]:
    """This thread in namespace ``ns`` for the body (setns(2)); sockets made there stay there."""
    target = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        if _libc.setns(target, _CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {ns}")
        yield
    finally:
        _libc.setns(own, _CLONE_NEWNET)
        os.close(own)
        os.close(target)


@dataclass
class Lab:
    uid: str

    def ns(self, role: str) -> str:
        return f"rnf-{self.uid}-{role}"

    def exec(self, role: str, *args: str) -> str:
        return _run("ip", "netns", "exec", self.ns(role), *args)

    def udp(self, role: str, ep: Endpoint, *, recv_tos: bool = False) -> socket.socket:
        family = socket.AF_INET6 if ep.version == 6 else socket.AF_INET
        with _inside(self.ns(role)):
            sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.bind((ep.address, ep.port))
        if recv_tos and ep.version == 4:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_RECVTOS, 1)
        elif recv_tos:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVTCLASS, 1)
        return sock

    def conntrack_count(self, port: int, family: str = "ipv4") -> int:
        """Entries with ``port`` as original source or destination, as conntrack(8) lists them."""
        lines: set[str] = set()
        for flag in ("--orig-port-src", "--orig-port-dst"):
            out = self.exec("relay", "conntrack", "-L", "-f", family, "-p", "udp", flag, str(port))
            lines.update(line for line in out.splitlines() if line.strip())
        return len(lines)

    def rules(self) -> list[object]:
        """Chains and rules of relayd's table, with their handles."""
        doc = json.loads(self.exec("relay", "nft", "-a", "-j", "list", "table", "inet", TABLE))
        return [obj for obj in doc["nftables"] if "rule" in obj or "chain" in obj]


def _setup(lab: Lab) -> None:
    for role in ("caller", "relay", "callee", "spoof"):
        _run("ip", "netns", "add", lab.ns(role))
    lab.exec(
        "relay",
        "sysctl", "-q", "-w", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1",
        "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0",
    )  # fmt: skip
    for net, role in ((1, "caller"), (2, "callee"), (3, "spoof")):
        peer, relay = lab.ns(role), lab.ns("relay")
        _run(
            "ip", "link", "add", "name", "relay0", "netns", peer,
            "type", "veth", "peer", "name", f"{role}0", "netns", relay,
        )  # fmt: skip
        for ns, dev, host in ((peer, "relay0", 2), (relay, f"{role}0", 1)):
            _run("ip", "-n", ns, "addr", "add", f"10.88.{net}.{host}/24", "dev", dev)
            addr6 = f"fd00:88::{net}:{host}/112"
            _run("ip", "-n", ns, "-6", "addr", "add", addr6, "dev", dev, "nodad")
            _run("ip", "-n", ns, "link", "set", dev, "up")
        _run("ip", "-n", peer, "route", "add", "default", "via", f"10.88.{net}.1")
        _run("ip", "-n", peer, "-6", "route", "add", "default", "via", f"fd00:88::{net}:1")


@pytest.fixture
def lab() -> Iterator[Lab]:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    lab = Lab(secrets.token_hex(3))
    try:
        _setup(lab)
        with _inside(lab.ns("relay")):
            yield lab
    finally:
        for role in ("caller", "relay", "callee", "spoof"):
            if Path(f"/run/netns/{lab.ns(role)}").exists():
                _run("ip", "netns", "del", lab.ns(role))


@pytest.fixture
def fwd(lab: Lab) -> Iterator[KernelForwarder]:
    forwarder = KernelForwarder(TABLE)
    try:
        forwarder.ensure_table()
        yield forwarder
    finally:
        forwarder.close()


def _recv(
    sock: socket.socket, count: int, timeout: float = 2.0
) -> list[tuple[bytes, Endpoint, int]]:
    """Up to ``count`` datagrams as (data, sender, TOS or traffic class; -1 if not asked for)."""
    got: list[tuple[bytes, Endpoint, int]] = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        left = max(0.0, deadline - time.monotonic())
        if not select.select([sock], [], [], left)[0]:
            break
        data, ancillary, _flags, addr = sock.recvmsg(2048, socket.CMSG_SPACE(4))
        tos = -1
        for level, kind, value in ancillary:
            if (level, kind) in (
                (socket.IPPROTO_IP, socket.IP_TOS),
                (socket.IPPROTO_IPV6, socket.IPV6_TCLASS),
            ):
                tos = value[0] if len(value) == 1 else int.from_bytes(value[:4], "little")
        got.append((data, Endpoint(addr[0], addr[1]), tos))
    return got


def _quiet(*socks: socket.socket, wait: float = 0.3) -> int:
    """Datagrams that arrive on any of ``socks`` within ``wait`` (drained)."""
    time.sleep(wait)
    return sum(len(_recv(s, 1000, timeout=0)) for s in socks)


def _send(sock: socket.socket, dest: Endpoint, count: int) -> None:
    for i in range(count):
        sock.sendto(RTP[:2] + i.to_bytes(2, "big") + RTP[4:], (dest.address, dest.port))


@dataclass
class Call:
    caller: Endpoint
    relay_a: Endpoint  # the relay port the caller sends to
    relay_b: Endpoint  # the relay port the callee sends to
    callee: Endpoint

    @property
    def forwards(self) -> tuple[Forward, Forward]:
        return stream(self.caller, self.relay_a, self.relay_b, self.callee)


V4 = Call(
    Endpoint("10.88.1.2", 4000), Endpoint("10.88.1.1", 30000),
    Endpoint("10.88.2.1", 30002), Endpoint("10.88.2.2", 5000),
)  # fmt: skip
V6 = Call(
    Endpoint("fd00:88::1:2", 4000), Endpoint("fd00:88::1:1", 30000),
    Endpoint("fd00:88::2:1", 30002), Endpoint("fd00:88::2:2", 5000),
)  # fmt: skip


@pytest.mark.parametrize("call", [V4, V6], ids=["ipv4", "ipv6"])
def test_kernel_forwards_both_ways_with_ef_and_exact_counters(
    lab: Lab, fwd: KernelForwarder, call: Call
) -> None:
    caller = lab.udp("caller", call.caller, recv_tos=True)
    callee = lab.udp("callee", call.callee, recv_tos=True)
    worker_a, worker_b = lab.udp("relay", call.relay_a), lab.udp("relay", call.relay_b)
    # userspace phase: the worker relays one packet each way, leaving conntrack
    # entries for local delivery in both orientations
    _send(caller, call.relay_a, 1)
    assert len(_recv(worker_a, 1)) == 1
    _send(worker_b, call.callee, 1)
    _send(callee, call.relay_b, 1)
    assert len(_recv(worker_b, 1)) == 1
    assert len(_recv(callee, 1)) == 1

    to_callee, to_caller = call.forwards
    fwd.install([to_callee, to_caller])

    _send(caller, call.relay_a, 20)
    got = _recv(callee, 20)
    assert len(got) == 20
    assert {sender for _, sender, _ in got} == {call.relay_b}
    assert {tos for _, _, tos in got} == {EF}
    assert [int.from_bytes(data[2:4], "big") for data, _, _ in got] == list(range(20))
    _send(callee, call.relay_b, 15)
    back = _recv(caller, 15)
    assert len(back) == 15
    assert {(sender, tos) for _, sender, tos in back} == {(call.relay_a, EF)}
    assert _quiet(worker_a, worker_b, caller, callee) == 0

    header = 20 if call.caller.version == 4 else 40
    size = header + 8 + len(RTP)
    counters = fwd.counters()
    assert counters[to_callee.key] == (20, 20 * size)
    assert counters[to_caller.key] == (15, 15 * size)
    assert fwd.list_installed() == {to_callee.key: to_callee, to_caller.key: to_caller}
    # the netlink reads relayd's timers use say the same, one element or all of them
    counts = fwd.counts([to_callee.key, to_caller.key])
    assert [counts[k][:2] for k in (to_callee.key, to_caller.key)] == [
        (20, 20 * size),
        (15, 15 * size),
    ]
    assert {k: c[:2] for k, c in fwd.all_counts().items()} == {
        encode_key(to_callee.key): (20, 20 * size),
        encode_key(to_caller.key): (15, 15 * size),
    }


def test_the_counter_elements_say_when_the_last_packet_came(lab: Lab, fwd: KernelForwarder) -> None:
    call = V4
    caller, callee = lab.udp("caller", call.caller), lab.udp("callee", call.callee)
    to_callee, to_caller = call.forwards
    fwd.install(call.forwards)
    _send(caller, call.relay_a, 3)
    assert len(_recv(callee, 3)) == 3
    time.sleep(1.5)  # silence on this direction; the other never spoke
    counts = fwd.counts([to_callee.key, to_caller.key])
    spoken, silent = counts[to_callee.key], counts[to_caller.key]
    assert spoken.packets == 3 and spoken.expires_ms is not None
    idle = ACTIVITY_TIMEOUT - spoken.expires_ms / 1000
    assert 1.3 <= idle <= 3.0, idle
    assert silent.packets == 0
    _send(caller, call.relay_a, 1)  # a packet refreshes it
    assert len(_recv(callee, 1)) == 1
    fresh = fwd.counts([to_callee.key])[to_callee.key]
    assert fresh.packets == 4
    assert fresh.expires_ms is not None and ACTIVITY_TIMEOUT - fresh.expires_ms / 1000 < 1.0
    absent = Forward(Endpoint("10.88.1.2", 4999), call.relay_a, call.relay_b, call.callee)
    assert absent.key not in fwd.counts([absent.key])  # no element: left out, no error
    assert fwd.present()
    _run_in_relay(lab, "nft", "delete", "table", "inet", TABLE)
    assert not fwd.present()


def test_an_older_table_gets_counters_with_timeouts_and_keeps_its_forwards(
    lab: Lab, fwd: KernelForwarder
) -> None:
    """A table of relayd before the timed counters: plain counter sets. Brought up to date
    in place; its forwards keep forwarding and are counted in the new sets."""
    call = V4
    caller, callee = lab.udp("caller", call.caller), lab.udp("callee", call.callee)
    fwd.install(call.forwards)
    older = f"""
flush chain inet {TABLE} prerouting_count
delete set inet {TABLE} count4
delete set inet {TABLE} count6
add set inet {TABLE} count4 {{ type ipv4_addr . inet_service . ipv4_addr . inet_service; counter; }}
add set inet {TABLE} count6 {{ type ipv6_addr . inet_service . ipv6_addr . inet_service; counter; }}
"""
    _run_in_relay(lab, "nft", "-f", "-", stdin=older)
    _run_in_relay(
        lab,
        "nft",
        f"add rule inet {TABLE} prerouting_count meta l4proto udp "
        f"ip saddr . udp sport . ip daddr . udp dport @count4",
    )
    fwd.ensure_table()
    listing = _run_in_relay(lab, "nft", "list", "set", "inet", TABLE, "count4")
    assert "timeout 1d" in listing
    assert "counter" in listing
    _send(caller, call.relay_a, 2)
    assert len(_recv(callee, 2)) == 2
    assert fwd.counts([call.forwards[0].key])[call.forwards[0].key].packets == 2
    assert fwd.list_installed() == {f.key: f for f in call.forwards}


def test_a_spoofed_sender_falls_through_to_the_relay_socket(lab: Lab, fwd: KernelForwarder) -> None:
    call = V4
    callee = lab.udp("callee", call.callee)
    worker_a = lab.udp("relay", call.relay_a)
    spoof = lab.udp("spoof", Endpoint("10.88.3.2", call.caller.port))
    other_port = lab.udp("caller", Endpoint(call.caller.address, 4002))
    caller = lab.udp("caller", call.caller)
    fwd.install(call.forwards)

    _send(spoof, call.relay_a, 3)
    _send(other_port, call.relay_a, 2)
    senders = [sender for _, sender, _ in _recv(worker_a, 5)]
    assert (
        sorted(senders, key=str)
        == [Endpoint("10.88.1.2", 4002)] * 2 + [Endpoint("10.88.3.2", 4000)] * 3
    )
    assert _quiet(callee) == 0
    assert fwd.counters()[call.forwards[0].key] == (0, 0)
    # strangers' packets add no element of their own to the counter sets
    assert set(fwd.all_counts()) == {encode_key(f.key) for f in call.forwards}

    _send(caller, call.relay_a, 1)  # the learned source still goes through
    assert [sender for _, sender, _ in _recv(callee, 1)] == [call.relay_b]
    assert _quiet(worker_a) == 0
    # the endpoint sweep removes even the spoofer's entry
    assert count_entries(call.relay_a) == 3
    delete_entries([call.relay_a, call.relay_b])
    assert count_entries(call.relay_a) == 0
    assert lab.conntrack_count(call.relay_a.port) == 0


def test_remove_leaves_no_element_rule_change_or_flow(lab: Lab, fwd: KernelForwarder) -> None:
    call = V4
    caller, callee = lab.udp("caller", call.caller), lab.udp("callee", call.callee)
    worker_a, worker_b = lab.udp("relay", call.relay_a), lab.udp("relay", call.relay_b)
    rules = lab.rules()
    fwd.install(call.forwards)
    _send(caller, call.relay_a, 3)
    _send(callee, call.relay_b, 3)
    assert len(_recv(callee, 3)) == 3 and len(_recv(caller, 3)) == 3
    assert lab.conntrack_count(call.relay_a.port) == 1

    fwd.remove(f.key for f in call.forwards)
    fwd.remove(f.key for f in call.forwards)  # absent keys: nothing to do, no error

    assert fwd.list_installed() == {}
    assert fwd.state().all_keys() == set()
    assert lab.rules() == rules
    for relay in (call.relay_a, call.relay_b):
        assert lab.conntrack_count(relay.port) == 0
    _send(caller, call.relay_a, 2)
    _send(callee, call.relay_b, 1)
    assert len(_recv(worker_a, 2)) == 2 and len(_recv(worker_b, 1)) == 1
    assert _quiet(caller, callee) == 0


def test_reinstall_with_a_new_callee_port_moves_the_path(lab: Lab, fwd: KernelForwarder) -> None:
    call = V4
    moved = Call(call.caller, call.relay_a, call.relay_b, Endpoint(call.callee.address, 5002))
    caller, old = lab.udp("caller", call.caller), lab.udp("callee", call.callee)
    new = lab.udp("callee", moved.callee)
    fwd.install(call.forwards)
    _send(caller, call.relay_a, 2)
    assert len(_recv(old, 2)) == 2

    fwd.install(moved.forwards)  # replaces the caller's direction, adds the new reverse
    fwd.remove([call.forwards[1].key])
    _send(caller, call.relay_a, 4)
    assert [sender for _, sender, _ in _recv(new, 4)] == [call.relay_b] * 4
    _send(new, call.relay_b, 2)
    assert [sender for _, sender, _ in _recv(caller, 2)] == [call.relay_a] * 2
    assert _quiet(old) == 0
    assert fwd.list_installed() == {f.key: f for f in moved.forwards}


def test_reconcile_keeps_live_flows_and_removes_extras(lab: Lab, fwd: KernelForwarder) -> None:
    call = V4
    extra = Call(
        Endpoint("10.88.1.2", 4010), Endpoint("10.88.1.1", 30010),
        Endpoint("10.88.2.1", 30012), Endpoint("10.88.2.2", 5010),
    )  # fmt: skip
    caller, callee = lab.udp("caller", call.caller), lab.udp("callee", call.callee)
    callee.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 1 << 22)  # read after the run
    worker_a = lab.udp("relay", call.relay_a)
    fwd.install([*call.forwards, *extra.forwards])
    total = 300

    def sender() -> None:
        for i in range(total):
            _send(caller, call.relay_a, 1)
            time.sleep(0.001 if i % 10 else 0.005)

    thread = threading.Thread(target=sender)
    thread.start()
    try:
        results = [fwd.reconcile(call.forwards) for _ in range(5)]
    finally:
        thread.join()

    assert len(_recv(callee, total, timeout=3)) == total
    assert _quiet(worker_a) == 0
    assert [(r.kept, r.added, r.removed) for r in results] == [(2, 0, 2)] + [(2, 0, 0)] * 4
    assert fwd.list_installed() == {f.key: f for f in call.forwards}
    assert fwd.counters()[call.forwards[0].key].packets == total  # never reset


def test_dscp_only_for_relayd_flows(lab: Lab, fwd: KernelForwarder) -> None:
    call = V4
    callee = lab.udp("callee", call.callee, recv_tos=True)
    caller = lab.udp("caller", call.caller)
    routed = lab.udp("caller", Endpoint(call.caller.address, 4004))
    # another relay socket: one on relay_b would clash with the forward's NAT
    # binding (its entry holds the reply tuple callee -> relay_b)
    local = lab.udp("relay", Endpoint("10.88.2.1", 30004))
    # the host's own DNAT towards the callee: forwarded, but not relayd's flow
    host_nat = (
        "add table ip hostnat\n"
        "add chain ip hostnat pre { type nat hook prerouting priority dstnat; }\n"
        "add rule ip hostnat pre udp dport 31000 dnat to 10.88.2.2:5000\n"
    )
    subprocess.run(
        ["ip", "netns", "exec", lab.ns("relay"), "nft", "-f", "-"],
        input=host_nat, text=True, check=True, timeout=10,
    )  # fmt: skip
    fwd.install(call.forwards)

    _send(caller, Endpoint("10.88.1.1", 31000), 2)  # host DNAT
    _send(routed, call.callee, 2)  # plainly routed through the relay
    _send(local, call.callee, 2)  # locally generated
    _send(caller, call.relay_a, 2)  # relayd's forward
    got = _recv(callee, 8)
    by_sender: dict[Endpoint, list[int]] = {}
    for _, sender, tos in got:
        by_sender.setdefault(sender, []).append(tos)
    assert by_sender == {
        Endpoint("10.88.1.2", 4000): [0, 0],
        Endpoint("10.88.1.2", 4004): [0, 0],
        Endpoint("10.88.2.1", 30004): [0, 0],
        call.relay_b: [EF, EF],
    }
    fwd.ensure_table()  # idempotent, and it leaves the host's table alone
    assert "table ip hostnat" in lab.exec("relay", "nft", "list", "tables")


def test_destroy_table_leaves_an_empty_ruleset(lab: Lab, fwd: KernelForwarder) -> None:
    call = V6
    caller, callee = lab.udp("caller", call.caller), lab.udp("callee", call.callee)
    fwd.install(call.forwards)
    _send(caller, call.relay_a, 2)
    assert len(_recv(callee, 2)) == 2
    assert lab.conntrack_count(call.relay_a.port, "ipv6") == 1

    fwd.destroy_table()
    fwd.destroy_table()  # no table: nothing to do

    assert lab.exec("relay", "nft", "list", "tables") == ""
    assert lab.conntrack_count(call.relay_a.port, "ipv6") == 0


def test_failures_raise_nft_errors_and_probes_do_not(lab: Lab, fwd: KernelForwarder) -> None:
    assert fwd.available()
    with pytest.raises(NftError, match="No such file or directory"):
        fwd.nft.run([{"delete": {"table": {"family": "inet", "name": "nosuch"}}}])
    missing = KernelForwarder(TABLE, library="libnftables.so.0-missing").available()
    assert not missing and "libnftables.so.0-missing" in missing.reason
    unprivileged = subprocess.run(
        [
            "setpriv", "--bounding-set=-all", "--inh-caps=-all", sys.executable, "-c",
            "from relayd.nft import KernelForwarder as K; a = K().available()\n"
            "print(a.ok, a.reason)",
        ],
        capture_output=True, text=True, timeout=30, cwd=Path(__file__).parents[2],
    )  # fmt: skip
    assert unprivileged.stdout.strip() == "False CAP_NET_ADMIN missing (not root)", (
        unprivileged.stderr
    )
