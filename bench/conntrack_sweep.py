#!/usr/bin/env python3
"""What relayd's conntrack sweep (relayd/plane/sweep.py) costs with a full conntrack table.

In a scratch network namespace the table is filled through ctnetlink with N UDP entries
towards relay sockets, as a busy relay holds them: 99% live flows (answered) and 1% a
stranger's (never answered). Then, for each N:

* **sweep, 1 call**: ``Ctnetlink.sweep`` of one call's 4 sockets plus the deletes of its
  peers' flows by tuple (what relayd does 0.25 s after a call ends, in its sweep thread);
* **sweep, 100 calls**: the same for 400 sockets in one batch (100 calls ended within one
  batch: still one kernel walk per address family);
* **flush per socket**: the alternative of one kernel-filtered flush per socket
  (``IPCTNL_MSG_CT_DELETE`` with ``CTA_FILTER`` on the original destination, Linux 6.5+):
  no data comes back, but every socket walks the whole table;
* **full dump**: every UDP entry dumped and parsed in Python (no status filter): what a
  sweep without the kernel's status filter would cost.

Each figure is the median of ``--repeat`` runs, wall time of the calling thread. rtpengine
has no counterpart to run beside it: it deletes no conntrack entry at a call's end
(/usr/bin/rtpengine links no netfilter library and names no conntrack), so they stay until
their timeouts, 30 s unanswered and 120 s answered by default.

    sudo .venv/bin/python bench/conntrack_sweep.py                  # 10,000 and 50,000
    sudo .venv/bin/python bench/conntrack_sweep.py --entries 10000 --repeat 3

Only the scratch namespace is touched (``--netns-prefix``, default ``ctsweep``); it is
deleted at the end, also on failure. The machine-wide conntrack hash (its bucket count,
``nf_conntrack_buckets``) sets the cost of a walk as much as N does: it is printed.
"""

from __future__ import annotations

import argparse
import os
import secrets
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from ipaddress import ip_address
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from relayd.nft import conntrack as ct  # noqa: E402
from relayd.nft import netlink as nl  # noqa: E402
from relayd.nft.netlink import attr as _attr  # noqa: E402
from relayd.nft.netlink import netfilter_socket  # noqa: E402
from relayd.nft.ruleset import Endpoint  # noqa: E402

RELAY = "10.200.0.1"
FIRST_PORT = 20000
STRANGERS = 100  # one entry in STRANGERS is a stranger's
BUCKETS = Path("/proc/sys/net/netfilter/nf_conntrack_buckets")
CALL_SOCKETS = 4  # RTP and RTCP on either side
ASSURED, CONFIRMED = 1 << 2, 1 << 3  # IPS_ASSURED, IPS_CONFIRMED (set at creation)


def _tuple(kind: int, src: str, sport: int, dst: str, dport: int) -> bytes:
    ip = _attr(ct.CTA_IP_V4_SRC, ip_address(src).packed) + _attr(
        ct.CTA_IP_V4_DST, ip_address(dst).packed
    )
    proto = (
        _attr(ct.CTA_PROTO_NUM, bytes([socket.IPPROTO_UDP]))
        + _attr(ct.CTA_PROTO_SRC_PORT, struct.pack("!H", sport))
        + _attr(ct.CTA_PROTO_DST_PORT, struct.pack("!H", dport))
    )
    return _attr(kind, _attr(ct.CTA_TUPLE_IP, ip) + _attr(ct.CTA_TUPLE_PROTO, proto))


def _message(kind: int, flags: int, seq: int, body: bytes) -> bytes:
    body = struct.pack("=BBH", socket.AF_INET, 0, 0) + body
    header = struct.pack("=IHHII", 16 + len(body), 1 << 8 | kind, flags, seq, 0)
    return header + body


def _peer(i: int) -> tuple[str, int]:
    return f"10.{1 + i // 60000}.{(i // 250) % 240}.{i % 250 + 1}", 1024 + i % 60000


def _relay_port(i: int) -> int:
    return FIRST_PORT + i % 40000


def _exchange(sock: socket.socket, messages: list[bytes]) -> None:
    """Send requests that each ask for an acknowledgement; fail on an error but EEXIST."""
    sock.sendall(b"".join(messages))
    pending = len(messages)
    while pending:
        for _seq, err in ct._acks(sock.recv(1 << 16)):
            if err not in (0, 17):  # EEXIST: made already
                raise OSError(err, os.strerror(err))
            pending -= 1


def fill(sock: socket.socket, entries: int) -> None:
    """``entries`` entries: a stranger's (never answered) every STRANGERS-th, else a live
    flow (answered, assured)."""
    batch: list[bytes] = []
    for i in range(entries):
        (src, sport), dport = _peer(i), _relay_port(i)
        body = _tuple(ct.CTA_TUPLE_ORIG, src, sport, RELAY, dport) + _tuple(
            2, RELAY, dport, src, sport
        )
        body += _attr(7, struct.pack("!I", 3600))  # CTA_TIMEOUT
        if i % STRANGERS:
            body += _attr(ct.CTA_STATUS, struct.pack("!I", ct.IPS_SEEN_REPLY | ASSURED | CONFIRMED))
        flags = nl.NLM_F_REQUEST | nl.NLM_F_ACK | 0x400 | 0x200  # NLM_F_CREATE | NLM_F_EXCL
        batch.append(_message(ct.IPCTNL_MSG_CT_NEW, flags, i + 1, body))
        if len(batch) == 200:
            _exchange(sock, batch)
            batch = []
    if batch:
        _exchange(sock, batch)


def call_sockets(call: int, entries: int) -> list[Endpoint]:
    """The 4 sockets of call number ``call``, each towards which a stranger sent."""
    strangers = max(entries // STRANGERS, 1)
    return [
        Endpoint(RELAY, _relay_port(STRANGERS * ((call * CALL_SOCKETS + k) % strangers)))
        for k in range(CALL_SOCKETS)
    ]


def peer_flows(sockets: Sequence[Endpoint]) -> set[tuple[Endpoint, Endpoint]]:
    """A live peer's flow towards each socket (the entry after the stranger's)."""
    flows = set()
    for sock in sockets:
        i = sock.port - FIRST_PORT + 1
        src, sport = _peer(i)
        flows.add((Endpoint(src, sport), Endpoint(RELAY, _relay_port(i))))
    return flows


def flush_request(seq: int, sock: Endpoint) -> bytes:
    """One kernel-filtered flush of the entries with ``sock`` as original destination."""
    ip = _attr(ct.CTA_IP_V4_DST, ip_address(sock.address).packed)
    proto = _attr(ct.CTA_PROTO_NUM, bytes([socket.IPPROTO_UDP])) + _attr(
        ct.CTA_PROTO_DST_PORT, struct.pack("!H", sock.port)
    )
    flags = 1 << 1 | 1 << 3 | 1 << 5  # CTA_FILTER_FLAG_CTA_IP_DST | PROTO_NUM | PROTO_DST_PORT
    body = _attr(ct.CTA_TUPLE_ORIG, _attr(ct.CTA_TUPLE_IP, ip) + _attr(ct.CTA_TUPLE_PROTO, proto))
    body += _attr(ct.CTA_FILTER | nl.NLA_F_NESTED, _attr(1, struct.pack("=I", flags)))
    return _message(ct.IPCTNL_MSG_CT_DELETE, nl.NLM_F_REQUEST | nl.NLM_F_ACK, seq, body)


def full_dump(sock: socket.socket, seq: int) -> int:
    """Every UDP entry, dumped and parsed: how many."""
    proto = _attr(ct.CTA_TUPLE_PROTO, _attr(ct.CTA_PROTO_NUM, bytes([socket.IPPROTO_UDP])))
    body = _attr(ct.CTA_TUPLE_ORIG, proto) + _attr(
        ct.CTA_FILTER | nl.NLA_F_NESTED,
        _attr(1, struct.pack("=I", ct.CTA_FILTER_FLAG_CTA_PROTO_NUM)),
    )
    sock.sendall(_message(ct.IPCTNL_MSG_CT_GET, nl.NLM_F_REQUEST | nl.NLM_F_DUMP, seq, body))
    count, done = 0, False
    while not done:
        flows, done = ct.dump_entries(sock.recv(1 << 16), seq)
        count += len(flows)
    return count


def timed(repeat: int, run: Callable[[int], object]) -> tuple[float, object]:
    """Median milliseconds of ``repeat`` runs (each given its index) and the first's result."""
    times, results = [], []
    for index in range(repeat):
        started = time.perf_counter()
        results.append(run(index))
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), results[0]


def measure(entries: int, repeat: int) -> list[tuple[str, float, str]]:
    """Inside the scratch namespace: fill, then each method (rows: name, ms, note)."""
    raw = netfilter_socket(10)
    fill(raw, entries)
    filled = ct.tracked()
    sweeper = ct.Ctnetlink()
    unanswered = len(sweeper._unanswered(4))
    rows = [("the sweep's dump returns", 0.0, f"{unanswered} entries (a stranger's) of {filled}")]

    def one_call(index: int) -> int:
        sockets = call_sockets(index, entries)
        return sweeper.sweep(sockets) + sweeper.delete_flows(peer_flows(sockets))

    ms, deleted = timed(repeat, one_call)
    rows.append(("sweep, 1 call (4 sockets)", ms, f"{deleted} entries deleted (first run)"))

    def hundred_calls(index: int) -> int:
        sockets = [s for c in range(100) for s in call_sockets(repeat + 100 * index + c, entries)]
        return sweeper.sweep(sockets) + sweeper.delete_flows(peer_flows(sockets))

    ms, deleted = timed(repeat, hundred_calls)
    rows.append(("sweep, 100 calls (400 sockets)", ms, f"{deleted} entries deleted (first run)"))

    def per_socket(index: int) -> None:
        first = repeat * 101 + 100 + index
        _exchange(
            raw, [flush_request(k + 1, s) for k, s in enumerate(call_sockets(first, entries))]
        )

    ms, _ = timed(repeat, per_socket)
    rows.append(("flush per socket, 1 call (4 walks)", ms, "nothing returned"))
    ms, count = timed(repeat, lambda index: full_dump(raw, 900 + index))
    rows.append(("full dump + parse, every UDP entry", ms, f"{count} entries parsed"))
    sweeper.close()
    raw.close()
    return rows


def inside(argv: Sequence[str]) -> None:
    entries, repeat = int(argv[0]), int(argv[1])
    for name, ms, note in measure(entries, repeat):
        print(f"{name}\t{ms:.2f}\t{note}")


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", default="10000,50000", help="table sizes, comma-separated")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--netns-prefix", default="ctsweep")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (network namespaces, ctnetlink)", file=sys.stderr)
        return 2
    buckets = BUCKETS.read_text().strip() if BUCKETS.exists() else "?"
    print(f"conntrack hash: {buckets} buckets (machine-wide); kernel {os.uname().release}")
    print(f"{'method':<40} {'ms (median)':>12}  note")
    for size in (int(word) for word in args.entries.split(",")):
        ns = f"{args.netns_prefix}-{secrets.token_hex(3)}"
        subprocess.run(["ip", "netns", "add", ns], check=True)
        ip_exec = ["ip", "netns", "exec", ns, sys.executable, __file__]
        try:
            out = subprocess.run(
                [*ip_exec, "--inside", str(size), str(args.repeat)],
                check=True,
                stdout=subprocess.PIPE,
                text=True,
                timeout=600,
            ).stdout
        finally:
            subprocess.run(["ip", "netns", "del", ns], check=False)
        print(f"-- {size:,} entries")
        for line in out.splitlines():
            name, ms, note = line.split("\t")
            shown = f"{float(ms):>12.2f}" if float(ms) else f"{'':>12}"
            print(f"{name:<40} {shown}  {note}")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--inside"]:
        inside(sys.argv[2:])
    else:
        sys.exit(main(sys.argv[1:]))
