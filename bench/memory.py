#!/usr/bin/env python3
"""Memory per call: relayd's RSS (main process and each worker) per established call.

For each number N of calls and each kind of call the benchmark starts a fresh
relayd in a namespace of its own, sets up and deletes 50 calls (warm-up:
the first calls allocate the daemon's lasting structures; they get the same
media as the measured kind, and are kernelized for ``kernel``, so that the
first forwarded packets' and the first nftables transactions' lasting
allocations are not counted as the measured calls'; ``--cold-media``: the
warm-up calls get no media, as before 6 Dec 2026), reads VmRSS of the
main process and of every worker, sets up N plain-RTP calls over ng (offer +
answer, G.711 + telephone-event, as bench/ng.py's requests) and reads VmRSS
again; the difference over N is the memory per call. Kinds of call:

* ``signalled``: ``--table -1``, no media at all (bench/ng.py's figure);
* ``userspace``: ``--table -1``; the callee and then the caller send one RTP and
  one RTCP packet to each of their relay ports: both ends of every stream learned
  and confirmed by the worker, forwarded by it, reported to the main process;
* ``kernel``: ``--table 0``, the same packets; the benchmark waits until
  relayd's ``relayd_kernel_forwards`` gauge shows every stream direction in
  nftables (4 per call) before it reads VmRSS.

relayd runs with ``endpoint-learning = immediate`` (as bench/kernel.py): with the
default ``delayed`` one packet 3 s too early would confirm nothing.

Requests are never repeated and only a couple of ``/metrics`` requests are made,
so the ng reply cache holds the offer's and the answer's reply of each call, as
it does for the first 30 to 60 s of every real call (it is part of the figure).
With ``--rtpengine`` rtpengine (Debian's 10.5, ``--table=-1``) is measured on
the same userspace calls, side by side. With ``--tracemalloc`` a second relayd
runs with tracemalloc on (a ``sitecustomize`` of the benchmark's own, which
dumps a snapshot on a signal) and the allocations that grew with the calls are
printed by file and line, per call, for the main process and the first worker.
With ``--mappings`` the RSS growth of each process is broken down by mapping
(``[heap]``: glibc's heap, where objects over 512 bytes and C libraries' memory live;
``[anon]``: pymalloc's arenas; libraries), from ``/proc/PID/smaps``.

Topology: namespaces ``mem-relay`` (relayd, 10.77.0.1) and ``mem-peer`` (the
caller 10.77.0.10 and the callee 10.77.0.20), one veth between them; ng on
127.0.0.1:41000 and HTTP on 127.0.0.1:41001 inside mem-relay, media ports from
42000 up inside mem-relay (private to the namespace). ``MEMBENCH_NETNS=x`` names
them ``x-relay`` and ``x-peer`` instead (veths ``x-r0``, ``x-p0``), so that runs under
different prefixes can share a machine. Needs root. Namespaces and daemons are
removed at the end, also on failure or Ctrl-C; a second run under the same prefix
at the same time refuses to start.

    PYTHONPATH=. .venv/bin/python bench/memory.py --calls 1000,5000
    PYTHONPATH=. .venv/bin/python bench/memory.py --calls 1000 --kinds kernel --tracemalloc
    PYTHONPATH=. .venv/bin/python bench/memory.py --calls 1000 --rtpengine --json out.json
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import resource
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import tracemalloc
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from medialab import in_netns, setns  # noqa: E402  (bench/, beside this script)

from relayd.ng.client import NgClient  # noqa: E402

__all__ = ["main"]

# namespaces, veths and lock named after a prefix (MEMBENCH_NETNS, default "mem"), so that
# runs under other prefixes can share the machine
NETNS_PREFIX = os.environ.get("MEMBENCH_NETNS", "mem")
RELAY_NS, PEER_NS = f"{NETNS_PREFIX}-relay", f"{NETNS_PREFIX}-peer"
RELAY_DEV, PEER_DEV = f"{NETNS_PREFIX}-r0", f"{NETNS_PREFIX}-p0"
RELAY_ADDR, CALLER_ADDR, CALLEE_ADDR = "10.77.0.1", "10.77.0.10", "10.77.0.20"
CALLER_PORT, CALLEE_PORT = 6000, 7000  # every call's parties use the same ports
NG_PORT, HTTP_PORT = 41000, 41001
PORT_MIN = 42000
WARM_CALLS = 50
KERNEL_WAIT = 120.0
# Calls confirmed per worker report: a report of every socket of 4,500 calls at once is
# over ipc.MAX_MESSAGE (1 MiB) and the main process drops it (worker.bad_message).
CONFIRM_BATCH = 500  # seconds for every stream to reach nftables
_MAPPING = re.compile(r"[0-9a-f]+-[0-9a-f]+ ")  # a mapping's first line in /proc/PID/smaps
DUMP_SIGNAL = signal.SIGRTMIN + 7  # the sitecustomize's "write a snapshot" signal
RTPENGINE_BIN = "/usr/bin/rtpengine"
# one run per prefix at a time: the namespaces have fixed names
LOCK = f"/tmp/relayd-bench-{'memory' if NETNS_PREFIX == 'mem' else NETNS_PREFIX}.lock"

SDP = (
    "v=0\r\n"
    "o={party} {session} 1 IN IP4 {addr}\r\n"
    "s=relayd-bench-memory\r\n"
    "c=IN IP4 {addr}\r\n"
    "t=0 0\r\n"
    "m=audio {port} RTP/AVP 0 8 101\r\n"
    "a=rtpmap:0 PCMU/8000\r\n"
    "a=rtpmap:8 PCMA/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\n"
    "a=fmtp:101 0-16\r\n"
    "a=ptime:20\r\n"
    "a=sendrecv\r\n"
)

# Loaded by every Python process started with the benchmark's directory first on
# PYTHONPATH (relayd and its workers): tracemalloc on, a snapshot on DUMP_SIGNAL.
SITECUSTOMIZE = f"""
import os, signal, sys, tracemalloc
_prefix = os.environ.get("MEMBENCH_TRACE")
_stats = os.environ.get("MEMBENCH_PYMALLOC")
if _prefix or _stats:
    if _prefix:
        tracemalloc.start(int(os.environ.get("MEMBENCH_FRAMES", "1")))
    _count = [0]
    def _dump(signum, frame):
        _count[0] += 1
        if _prefix:
            tracemalloc.take_snapshot().dump(f"{{_prefix}}.{{os.getpid()}}.{{_count[0]}}")
        if _stats:
            # pymalloc's arenas, pools and blocks, printed to stderr (not under tracemalloc)
            saved = os.dup(2)
            with open(f"{{_stats}}.{{os.getpid()}}.{{_count[0]}}", "w") as out:
                os.dup2(out.fileno(), 2)
                try:
                    sys._debugmallocstats()
                finally:
                    os.dup2(saved, 2)
                    os.close(saved)
    signal.signal({int(DUMP_SIGNAL)}, _dump)
"""


class BenchError(RuntimeError):
    """A daemon failed to start, refused a request, or did not kernelize every stream."""


@dataclass
class Row:
    """One measurement: a daemon, a kind of call, N calls, RSS per call in bytes."""

    daemon: str
    kind: str
    calls: int
    main: float = 0.0
    workers: list[float] = field(default_factory=list)
    forwards: int = 0  # stream directions in nftables (kernel)

    @property
    def total(self) -> float:
        return self.main + sum(self.workers)


def sh(*argv: str, netns: str | None = None, check: bool = True) -> str:
    cmd = ["ip", "netns", "exec", netns, *argv] if netns else list(argv)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if check and done.returncode:
        raise BenchError(f"{' '.join(cmd)}: {done.stderr.strip()}")
    return done.stdout


def remove_topology() -> None:
    for name in (RELAY_NS, PEER_NS):
        for pid in sh("ip", "netns", "pids", name, check=False).split():
            with suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        sh("ip", "netns", "delete", name, check=False)


@contextmanager
def topology() -> Iterator[None]:
    """The relay and peer namespaces joined by one veth; forwarding on in the relay's."""
    remove_topology()
    try:
        for name in (RELAY_NS, PEER_NS):
            sh("ip", "netns", "add", name)
            sh("ip", "link", "set", "lo", "up", netns=name)
        sh("ip", "link", "add", RELAY_DEV, "netns", RELAY_NS, "type", "veth",
           "peer", "name", PEER_DEV, "netns", PEER_NS)  # fmt: skip
        sh("ip", "addr", "add", f"{RELAY_ADDR}/24", "dev", RELAY_DEV, netns=RELAY_NS)
        for addr in (CALLER_ADDR, CALLEE_ADDR):
            sh("ip", "addr", "add", f"{addr}/24", "dev", PEER_DEV, netns=PEER_NS)
        for name, dev in ((RELAY_NS, RELAY_DEV), (PEER_NS, PEER_DEV)):
            sh("ip", "link", "set", dev, "up", netns=name)
            for key in ("all", dev):
                sh("sysctl", "-qw", f"net.ipv4.conf.{key}.rp_filter=0", netns=name)
        sh("sysctl", "-qw", "net.ipv4.ip_forward=1", netns=RELAY_NS)
        sh("sysctl", "-qw", "net.ipv4.conf.all.send_redirects=0", netns=RELAY_NS)
        sh("sysctl", "-qw", f"net.ipv4.conf.{RELAY_DEV}.send_redirects=0", netns=RELAY_NS)
        yield
    finally:
        remove_topology()


def relayd_argv(kind: str, calls: int, args: argparse.Namespace) -> list[str]:
    options: dict[str, object] = {
        "config-file": "none",
        "interface": RELAY_ADDR,
        "listen-ng": f"127.0.0.1:{NG_PORT}",
        "listen-http": f"127.0.0.1:{HTTP_PORT}",
        "port-min": PORT_MIN,
        "port-max": PORT_MIN + 4 * (calls + WARM_CALLS) + 4000,
        "table": 0 if kind == "kernel" else -1,
        "num-threads": args.workers,
        "endpoint-learning": "immediate",  # as bench/kernel.py
        "timeout": 3600,
        "delete-delay": 0,
        "state-dir": "none",
        "log-level": args.log_level,
        "admin-socket": str(args.workdir / "admin.sock"),
    }
    argv = [sys.executable, "-m", "relayd", "--foreground"]
    for key, value in options.items():
        argv += [f"--{key}", str(value)]
    return argv


def rtpengine_argv(calls: int, workers: int) -> list[str]:
    return [
        RTPENGINE_BIN, "--foreground", "--config-file=none", "--table=-1",
        f"--interface={RELAY_ADDR}", f"--listen-ng=127.0.0.1:{NG_PORT}",
        f"--port-min={PORT_MIN}", f"--port-max={PORT_MIN + 4 * (calls + WARM_CALLS) + 4000}",
        f"--num-threads={workers}", "--timeout=3600", "--delete-delay=0",
        "--log-level=4", "--log-stderr",
    ]  # fmt: skip


@contextmanager
def daemon(argv: list[str], log: Path, env: dict[str, str], nofile: int) -> Iterator[int]:
    """The daemon in the relay namespace until it answers ping; its pid. Stopped after."""

    def child() -> None:
        os.setsid()
        setns(f"/run/netns/{RELAY_NS}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    with open(log, "a") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, preexec_fn=child, env=env, cwd=log.parent
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise BenchError(f"{argv[0]} exited:\n{log.read_text()[-3000:]}")
            try:
                with in_netns(RELAY_NS), NgClient(("127.0.0.1", NG_PORT), timeout=0.5) as ng:
                    if ng.call("ping").get("result") == "pong":
                        break
            except (TimeoutError, OSError):
                pass
            if time.monotonic() > deadline:
                raise BenchError(f"{argv[0]} did not answer ping:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        time.sleep(0.5)  # the workers' start-up allocations
        yield proc.pid
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def children(pid: int) -> list[int]:
    """The daemon's worker processes (relayd); none for rtpengine (threads)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise BenchError(f"no VmRSS for {pid}")


def mappings(pid: int) -> dict[str, int]:
    """RSS by mapping: ``[heap]`` (glibc's main arena: blocks over 512 bytes, C libraries),
    ``[anon]`` (pymalloc's 1 MiB arenas, mmapped blocks), each file (libraries)."""
    found: dict[str, int] = {}
    name = ""
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if _MAPPING.match(line):
            name = fields[5] if len(fields) > 5 else "[anon]"
        elif fields[0] == "Rss:":
            found[name] = found.get(name, 0) + int(fields[1]) * 1024
    return found


def mapping_growth(before: dict[str, int], after: dict[str, int], count: int) -> str:
    """What each mapping's RSS gained, per call, largest first."""
    grew = {n: (after.get(n, 0) - before.get(n, 0)) / count for n in {*before, *after}}
    ranked = sorted(grew.items(), key=lambda item: -abs(item[1]))
    return ", ".join(f"{name} {size:,.0f}" for name, size in ranked if abs(size) >= 1)


class Calls:
    """Plain RTP calls over ng; each party's relay port (RTP; RTCP is the next one)."""

    def __init__(self, ng: NgClient, tag: str) -> None:
        self.ng, self.tag = ng, tag
        self.to_caller: list[int] = []  # the relay's port that the caller sends to
        self.to_callee: list[int] = []

    def _ok(self, message: dict[str, object]) -> dict[str, object]:
        reply = self.ng.request(message)
        if reply.get("result") != "ok":
            raise BenchError(f"{message['command']}: {reply}")
        return reply

    def setup(self, count: int) -> None:
        for i in range(count):
            call = {"call-id": f"{self.tag}-{i}@{CALLER_ADDR}", "from-tag": f"{self.tag}-{i}-uac"}
            flags = {"flags": ["trust-address"], "replace": ["origin", "session-connection"]}
            sdp = SDP.format(party="caller", session=i, addr=CALLER_ADDR, port=CALLER_PORT)
            offer = self._ok({"command": "offer", "sdp": sdp, **flags, **call})
            sdp = SDP.format(party="callee", session=i, addr=CALLEE_ADDR, port=CALLEE_PORT)
            to_tag = f"{self.tag}-{i}-uas"
            answer = self._ok({"command": "answer", "sdp": sdp, "to-tag": to_tag, **flags, **call})
            self.to_callee.append(_port(offer))
            self.to_caller.append(_port(answer))

    def delete(self, count: int) -> None:
        for i in range(count):
            call = {"call-id": f"{self.tag}-{i}@{CALLER_ADDR}", "from-tag": f"{self.tag}-{i}-uac"}
            self._ok({"command": "delete", **call})


def _port(reply: dict[str, object]) -> int:
    for line in str(reply.get("sdp", "")).splitlines():
        if line.startswith("m=audio "):
            return int(line.split()[1])
    raise BenchError(f"no m=audio in {reply}")


def confirm(calls: Calls) -> None:
    """One RTP and one RTCP packet from each party to each of its relay ports, callee first."""
    rtp = struct.pack("!BBHII", 0x80, 0, 1, 160, 0x4D454D00) + bytes(160)
    rtcp = struct.pack("!BBHI", 0x80, 201, 1, 0x4D454D00)  # an empty receiver report
    for addr, port, targets in (
        (CALLEE_ADDR, CALLEE_PORT, calls.to_callee),
        (CALLER_ADDR, CALLER_PORT, calls.to_caller),
    ):
        with in_netns(PEER_NS):
            rtp_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            rtcp_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with rtp_sock, rtcp_sock:
            rtp_sock.bind((addr, port))
            rtcp_sock.bind((addr, port + 1))
            for i, target in enumerate(targets):
                rtp_sock.sendto(rtp, (RELAY_ADDR, target))
                rtcp_sock.sendto(rtcp, (RELAY_ADDR, target + 1))
                if i % 64 == 63:
                    time.sleep(0.002)  # no burst past the relay's socket buffers
                if i % CONFIRM_BATCH == CONFIRM_BATCH - 1:
                    time.sleep(1.2)  # one worker report (once a second) per batch
        time.sleep(0.5)


def kernel_forwards() -> int:
    with in_netns(RELAY_NS):
        url = f"http://127.0.0.1:{HTTP_PORT}/metrics"
        with urllib.request.urlopen(url, timeout=10) as reply:
            text = reply.read().decode()
    for line in text.splitlines():
        if line.startswith("relayd_kernel_forwards "):
            return int(float(line.split()[1]))
    raise BenchError("no relayd_kernel_forwards in /metrics")


def wait_kernelized(expected: int) -> int:
    """Stream directions in nftables once ``expected`` are, or once the count stops growing."""
    start, last, last_change = time.monotonic(), -1, time.monotonic()
    while True:
        count = kernel_forwards()
        if count >= expected:
            return count
        if count != last:
            last, last_change = count, time.monotonic()
        if time.monotonic() - last_change > 15 or time.monotonic() - start > KERNEL_WAIT:
            return count
        time.sleep(1.0)


def measure(
    name: str,
    argv: list[str],
    kind: str,
    count: int,
    args: argparse.Namespace,
    trace: str = "",
    pymalloc: str = "",
) -> tuple[Row, list[int]]:
    """One fresh daemon: warm-up, RSS, ``count`` calls (kernelized for ``kind`` kernel), RSS.
    With ``trace`` (tracemalloc) or ``pymalloc`` (its statistics) each process dumps what
    it holds to files of that prefix at both readings."""
    env = dict(os.environ)
    dumps = trace or pymalloc
    env["PYTHONPATH"] = os.pathsep.join(
        [p for p in (args.sitedir if dumps else "", str(REPO), env.get("PYTHONPATH", "")) if p]
    )
    if trace:
        env["MEMBENCH_TRACE"] = trace
        env["MEMBENCH_FRAMES"] = str(args.frames)
    if pymalloc:
        env["MEMBENCH_PYMALLOC"] = pymalloc
    log = args.workdir / f"{name}-{kind}-{count}.log"
    nofile = min(4 * (count + WARM_CALLS) + 1024, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    with daemon(argv, log, env, nofile) as pid:
        with in_netns(RELAY_NS):
            ng = NgClient(("127.0.0.1", NG_PORT), timeout=10)
        with ng:
            warm = Calls(ng, "warm")
            try:
                warm.setup(WARM_CALLS)
            except BenchError as exc:
                raise BenchError(f"{exc}; relayd's log:\n{log.read_text()[-3000:]}") from None
            if kind != "signalled" and not args.cold_media:
                # the warm-up calls' media too: what the first forwarded or kernelized
                # packets allocate for good (buffers, the first nftables transaction's
                # room in the heap) is the daemon's, not the measured calls'
                confirm(warm)
                if kind == "kernel":
                    wait_kernelized(4 * WARM_CALLS)
            warm.delete(WARM_CALLS)
            time.sleep(1.0)
            pids = [pid, *children(pid)]
            if dumps:
                for p in pids:
                    os.kill(p, DUMP_SIGNAL)
                time.sleep(1.0)
            before = [rss(p) for p in pids]
            maps_before = [mappings(p) for p in pids] if args.mappings else []
            calls = Calls(ng, "call")
            calls.setup(count)
            row = Row(name, kind, count)
            if kind != "signalled":
                confirm(calls)
            if kind == "kernel":
                row.forwards = wait_kernelized(4 * count)
                if row.forwards < 2 * count:
                    raise BenchError(
                        f"only {row.forwards} of {4 * count} forwards in nftables; "
                        f"relayd's log:\n{log.read_text()[-3000:]}"
                    )
            time.sleep(1.0)
            after = [rss(p) for p in pids]
            roles = ("main process", "worker 0")
            for p, was, role in zip(pids, maps_before, roles, strict=False):
                grew = mapping_growth(was, mappings(p), count)
                print(f"{role}, RSS growth by mapping, B per call: {grew}", flush=True)
            if dumps:
                for p in pids:
                    os.kill(p, DUMP_SIGNAL)
                time.sleep(2.0)
    row.main = (after[0] - before[0]) / count
    row.workers = [(a - b) / count for a, b in zip(after[1:], before[1:], strict=True)]
    return row, pids


def breakdown(trace: str, pid: int, count: int, top: int, frames: int) -> list[str]:
    """The allocations that grew between the two snapshots of ``pid``, per call, by line
    (``frames`` > 1: by the innermost ``frames`` lines of the allocating call stack)."""
    first = tracemalloc.Snapshot.load(f"{trace}.{pid}.1")
    second = tracemalloc.Snapshot.load(f"{trace}.{pid}.2")
    stats = second.compare_to(first, "lineno" if frames <= 1 else "traceback")
    total = sum(s.size_diff for s in stats)
    lines = [f"  traced growth {total / count:8.0f} B per call"]
    for stat in stats[:top]:
        where = " < ".join(
            f"{frame.filename.removeprefix(str(REPO) + '/')}:{frame.lineno}"
            for frame in reversed(stat.traceback)  # innermost first
        )
        lines.append(
            f"  {stat.size_diff / count:8.0f} B {stat.count_diff / count:6.2f} blocks  {where}"
        )
    return lines


def pymalloc_growth(prefix: str, pid: int, count: int) -> str:
    """What pymalloc's arenas gained between the two dumps of ``pid``, per call."""
    pools = [_pymalloc(Path(f"{prefix}.{pid}.{n}")) for n in (1, 2)]
    if not all(pools):
        return "  pymalloc: no statistics"
    growth = ", ".join(f"{k} {(pools[1][k] - pools[0][k]) / count:,.0f}" for k in pools[0])
    return f"  pymalloc growth, B per call: {growth}"


def _pymalloc(path: Path) -> dict[str, int]:
    """The byte totals of ``sys._debugmallocstats()`` (blocks in use, free blocks in used
    pools, free pools, arenas' total), or nothing if it was not written."""
    wanted = {
        "# bytes in allocated blocks": "used",
        "# bytes in available blocks": "free blocks",
        "unused pools": "free pools",
        "Total": "arenas",
    }
    found: dict[str, int] = {}
    if not path.exists():
        return found
    for line in path.read_text().splitlines():
        label, _, value = line.rpartition("=")
        number = value.strip().replace(",", "")
        for start, name in wanted.items():
            # the first "Total" is the arenas'; a second one, the arena map's
            if start in label and number.isdigit() and name not in found:
                found[name] = int(number)
    return found if len(found) == len(wanted) else {}


def render(rows: list[Row]) -> str:
    head = "| daemon | calls | kind | main B/call | workers B/call | total B/call | forwards |"
    out = [head, "|---|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        workers = " + ".join(f"{w:,.0f}" for w in r.workers) or "—"
        forwards = f"{r.forwards:,}" if r.kind == "kernel" else "—"
        out.append(
            f"| {r.daemon} | {r.calls:,} | {r.kind} | {r.main:,.0f} | {workers} "
            f"| {r.total:,.0f} | {forwards} |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", default="1000,5000", help="comma-separated call counts")
    parser.add_argument("--kinds", default="userspace,kernel", help="signalled,userspace,kernel")
    parser.add_argument("--workers", type=int, default=1, help="relayd's num-threads")
    parser.add_argument("--rtpengine", action="store_true", help="rtpengine too (userspace)")
    parser.add_argument("--tracemalloc", action="store_true", help="breakdown by file:line")
    parser.add_argument("--top", type=int, default=25, help="lines of the breakdown")
    parser.add_argument("--frames", type=int, default=1, help="call stack depth of the breakdown")
    parser.add_argument(
        "--mappings", action="store_true", help="RSS growth by mapping (heap, anonymous, files)"
    )
    parser.add_argument(
        "--cold-media",
        action="store_true",
        help="warm-up calls without media (before 6 Dec 2026, 20:00 UTC: the first forwarded "
        "and kernelized packets' lasting allocations counted as the measured calls')",
    )
    parser.add_argument("--log-level", type=int, default=4, help="relayd's log level")
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args(argv)
    counts = [int(c) for c in args.calls.split(",")]
    kinds = args.kinds.split(",")
    rows: list[Row] = []
    lock = open(LOCK, "w")  # noqa: SIM115 - held until the process ends
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise SystemExit(f"another bench/memory.py holds {LOCK}: its namespaces") from None
    with tempfile.TemporaryDirectory(prefix="relayd-memory-") as tmp, topology():
        args.workdir = Path(tmp)
        args.sitedir = str(Path(tmp) / "site")
        os.mkdir(args.sitedir)
        Path(args.sitedir, "sitecustomize.py").write_text(SITECUSTOMIZE)
        for count in counts:
            for kind in kinds:
                argv_ = relayd_argv(kind, count, args)
                stats = str(Path(tmp) / f"pymalloc-{kind}-{count}") if args.tracemalloc else ""
                row, pids = measure("relayd", argv_, kind, count, args, pymalloc=stats)
                rows.append(row)
                print(render([row]).splitlines()[-1], flush=True)
                if args.tracemalloc:
                    roles = ("main process", "worker 0")
                    for pid, role in zip(pids[:2], roles, strict=False):
                        print(f"{role}:\n{pymalloc_growth(stats, pid, count)}")
                    trace = str(Path(tmp) / f"trace-{kind}-{count}")
                    _, pids = measure("relayd", argv_, kind, count, args, trace)
                    for pid, role in zip(pids[:2], roles, strict=False):
                        print(f"tracemalloc, {kind}, {count:,} calls, {role}:")
                        lines = breakdown(trace, pid, count, args.top, args.frames)
                        print("\n".join(lines), flush=True)
            if args.rtpengine:
                row, _ = measure("rtpengine", rtpengine_argv(count, args.workers), "userspace",
                                 count, args)  # fmt: skip
                rows.append(row)
                print(render([row]).splitlines()[-1], flush=True)
    print()
    print(render(rows))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) | {"total": r.total} for r in rows], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
