#!/usr/bin/env python3
"""ng call-setup benchmark: relayd and rtpengine side by side.

For each number N of concurrent calls the benchmark starts a fresh daemon
pinned to one CPU (the client runs on another), establishes N calls
(offer + answer, kept open, so the daemon holds N calls of state), then runs
*cycles* — offer + answer + delete of one more call — one request at a time
for ``--duration`` seconds. It reports cycles per second, client-side latency
of the whole cycle and of each command (p50/p99), the daemon's own CPU time per
cycle (which, unlike the rest, hardly moves when other work shares the machine)
and its resident memory per established call (VmRSS after minus before, over N).

With ``--concurrency K`` (a list, e.g. ``1,8``) the cycles come from K clients at
once, as from Kamailio's K children: K processes, each with its own UDP socket,
each running cycles one request at a time on call-ids of its own. Then the
report adds the clients' own CPU time beside the daemon's, so that it shows
which side saturated. ``--daemon-cpus`` gives both daemons the same CPUs (the
clients get the others, or share them when there are none left) and
``--relayd-args`` appends options to relayd's command line (e.g. to switch on
sharding), so that the same comparison runs with relayd configured otherwise.

Each call holds four sockets in either daemon, so N is bounded by RLIMIT_NOFILE:
the script raises the limit where it may (root with CAP_SYS_RESOURCE); where it
may not, a size that does not fit is reported as not run and every daemon is
measured at the largest size that fits instead.

The requests are what Kamailio's rtpengine module sends with the deployment
guide's flags (``trust-address``, ``replace: [origin, session-connection]``,
``received-from``, ``supports: [load limit]``), pre-encoded once as raw bencode
so that the Python client is not the bottleneck. Only loopback is used. Both
daemons are always stopped at the end, also on Ctrl-C or failure (and, through
``PR_SET_PDEATHSIG``, when this script is killed).

    .venv/bin/python bench/ng.py                 # 1, 1,000 and 10,000 calls, 1-2 minutes
    .venv/bin/python bench/ng.py --quick --only relayd
    .venv/bin/python bench/ng.py --floor --calls 1,1000  # and a Python floor (bench/ng_floor.py)
    .venv/bin/python bench/ng.py --json out.json --calls 1,5000
    .venv/bin/python bench/ng.py --concurrency 1,8 --calls 1,10000
    .venv/bin/python bench/ng.py --concurrency 8 --daemon-cpus 0,1 --relayd-args "--num-threads 2"
    .venv/bin/python bench/ng.py --redis 127.0.0.1:6379 --calls 1,1000   # call state in Redis

``--redis HOST:PORT`` has both daemons write their calls to that Redis server (relayd to
database 1, rtpengine to database 2, rtpengine's ``--redis`` and relayd's alike), each
database emptied before a daemon starts, so that no run restores the calls of the last.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import math
import multiprocessing
import os
import platform
import resource
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Barrier
from pathlib import Path
from types import FrameType

import psutil

__all__ = ["main"]

REPO = Path(__file__).resolve().parents[1]
RTPENGINE_BIN = "/usr/bin/rtpengine"
DAEMONS = ("relayd", "rtpengine")
# bench/ng_floor.py: the system calls of a cycle in Python, without any ng work (--floor)
FLOOR = "python-floor"

# Both daemons bind RTP and RTCP for both parties of a plain (non rtcp-mux) call,
# each socket an open file (relayd's supervisor and the worker owning the port
# each hold one), so RLIMIT_NOFILE bounds how many calls a daemon can hold.
FDS_PER_CALL = 4
FD_RESERVE = 256

# A 10-character token in the templates, replaced by the call's number.
TOKEN = "@@@@@@@@@@"
TOKEN_BYTES = TOKEN.encode()

CALLER_SDP = (
    "v=0\r\n"
    f"o=caller {TOKEN} 2353687637 IN IP4 127.0.0.10\r\n"
    "s=ng-bench\r\n"
    "c=IN IP4 127.0.0.10\r\n"
    "t=0 0\r\n"
    "m=audio 6000 RTP/AVP 0 8 101\r\n"
    "a=rtpmap:0 PCMU/8000\r\n"
    "a=rtpmap:8 PCMA/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\n"
    "a=fmtp:101 0-16\r\n"
    "a=ptime:20\r\n"
    "a=sendrecv\r\n"
)
CALLEE_SDP = (
    "v=0\r\n"
    f"o=callee {TOKEN} 1 IN IP4 127.0.0.20\r\n"
    "s=ng-bench\r\n"
    "c=IN IP4 127.0.0.20\r\n"
    "t=0 0\r\n"
    "m=audio 7000 RTP/AVP 0 101\r\n"
    "a=rtpmap:0 PCMU/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\n"
    "a=fmtp:101 0-16\r\n"
    "a=ptime:20\r\n"
    "a=sendrecv\r\n"
)
CALL_ID = f"{TOKEN}-bench@127.0.0.10"
FROM_TAG = f"{TOKEN}UAC"
TO_TAG = f"{TOKEN}UAS"

# Keys in the order Kamailio's rtpengine module sends them (tests/data/kamailio-ng/basic.jsonl).
OFFER = {
    "supports": ["load limit"],
    "sdp": CALLER_SDP,
    "flags": ["trust-address"],
    "replace": ["origin", "session-connection"],
    "call-id": CALL_ID,
    "received-from": ["IP4", "127.0.0.10"],
    "from-tag": FROM_TAG,
    "command": "offer",
}
ANSWER = {
    "supports": ["load limit"],
    "sdp": CALLEE_SDP,
    "flags": ["trust-address"],
    "replace": ["origin", "session-connection"],
    "call-id": CALL_ID,
    "received-from": ["IP4", "127.0.0.20"],
    "from-tag": FROM_TAG,
    "to-tag": TO_TAG,
    "command": "answer",
}
DELETE = {
    "supports": ["load limit"],
    "call-id": CALL_ID,
    "received-from": ["IP4", "127.0.0.10"],
    "from-tag": FROM_TAG,
    "command": "delete",
}
COMMANDS = ("offer", "answer", "delete")
OK = b"6:result2:ok"


class BenchError(RuntimeError):
    """A daemon failed to start or answered something other than ``result: ok``."""


def bencode(value: object) -> bytes:
    """Just enough bencode for the request templates (kept independent of relayd's codec)."""
    if isinstance(value, int):
        return b"i%de" % value
    if isinstance(value, str):
        raw = value.encode()
        return b"%d:%s" % (len(raw), raw)
    if isinstance(value, list):
        return b"l" + b"".join(bencode(v) for v in value) + b"e"
    if isinstance(value, dict):
        return b"d" + b"".join(bencode(k) + bencode(v) for k, v in value.items()) + b"e"
    raise TypeError(f"cannot bencode {type(value).__name__}")


@dataclass(frozen=True, slots=True)
class Templates:
    """Pre-encoded request bodies; ``TOKEN`` keeps every length prefix valid."""

    offer: bytes = bencode(OFFER)
    answer: bytes = bencode(ANSWER)
    delete: bytes = bencode(DELETE)


# -- daemons ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DaemonSpec:
    name: str
    ng: tuple[str, int]
    argv: tuple[str, ...]


def daemon_specs(args: argparse.Namespace) -> dict[str, DaemonSpec]:
    """Both daemons with the same port range, no kernel forwarding, no lingering calls."""
    port_min, port_max = args.port_min, args.port_max
    relayd_ng = parse_address(args.relayd_listen)
    rtpengine_ng = parse_address(args.rtpengine_listen)
    python = (
        [sys.executable, "-m", "cProfile", "-o", "{profile}"] if args.profile else [sys.executable]
    )
    relayd_options = {
        "config-file": "none",
        "interface": "127.0.0.1",
        "listen-ng": f"{relayd_ng[0]}:{relayd_ng[1]}",
        "port-min": port_min,
        "port-max": port_max,
        "table": -1,
        "delete-delay": 0,
        "state-dir": "none",  # no journal: a benchmark's calls are not taken back by the next run
        "log-level": 3,
    }
    relayd_argv = [*python, "-m", "relayd", "--foreground"]
    for key, value in relayd_options.items():
        relayd_argv += [f"--{key}", str(value)]
    relayd_argv += [*args.relayd_arg, *shlex.split(args.relayd_args)]
    if args.redis:
        relayd_argv += ["--redis", f"{args.redis}/{REDIS_DBS['relayd']}"]
    rtpengine_argv = [
        RTPENGINE_BIN,
        "--foreground",
        "--config-file=none",
        "--table=-1",
        "--interface=127.0.0.1",
        f"--listen-ng={rtpengine_ng[0]}:{rtpengine_ng[1]}",
        f"--port-min={port_min}",
        f"--port-max={port_max}",
        "--log-level=1",
        "--log-stderr",
        "--delete-delay=0",
        *([f"--redis={args.redis}/{REDIS_DBS['rtpengine']}"] if args.redis else []),
    ]
    floor_ng = parse_address(args.floor_listen)
    floor_argv = [
        sys.executable,
        str(REPO / "bench" / "ng_floor.py"),
        f"--listen={floor_ng[0]}:{floor_ng[1]}",
        "--interface=127.0.0.1",
        f"--port-min={port_min}",
        f"--port-max={port_max}",
    ]
    return {
        "relayd": DaemonSpec("relayd", relayd_ng, tuple(relayd_argv)),
        "rtpengine": DaemonSpec("rtpengine", rtpengine_ng, tuple(rtpengine_argv)),
        FLOOR: DaemonSpec(FLOOR, floor_ng, tuple(floor_argv)),
    }


REDIS_DBS = {"relayd": 1, "rtpengine": 2}
"""``--redis``: each daemon's database."""


def empty_redis(address: str, db: int) -> None:
    """FLUSHDB: a daemon starting with ``--redis`` restores the calls its database holds."""
    import redis  # only with --redis

    host, port = parse_address(address)
    conn = redis.Redis(host, port, db=db, socket_timeout=5)
    try:
        conn.flushdb()
    finally:
        conn.close()


def parse_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


def file_limit() -> int:
    """The largest RLIMIT_NOFILE a child can get: raising the hard limit needs CAP_SYS_RESOURCE."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        return 1 << 20  # fs.nr_open's default: the most a process can open anyway
    for wanted in (1 << 20, 1 << 17, 1 << 16):
        if hard >= wanted:
            break
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, wanted))
        except (ValueError, OSError):
            continue
        hard = wanted
        break
    return int(hard)


def max_calls(nofile: int) -> int:
    return (nofile - FD_RESERVE) // FDS_PER_CALL


def _child_setup(cpus: frozenset[int] | None, nofile: int) -> None:
    """Runs in the child before exec: pinned CPUs for all its threads, dies with us."""
    if cpus is not None:
        os.sched_setaffinity(0, cpus)
    resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
    _die_with_parent()


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _check_free(address: tuple[str, int]) -> None:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.bind(address)
    except OSError as exc:
        raise BenchError(f"{address[0]}:{address[1]} is already in use ({exc.strerror})") from None
    finally:
        probe.close()


@contextmanager
def running(
    spec: DaemonSpec,
    workdir: Path,
    *,
    cpus: frozenset[int] | None,
    nofile: int,
    profile: Path | None,
) -> Iterator[subprocess.Popen[bytes]]:
    _check_free(spec.ng)
    argv = [a.replace("{profile}", str(profile)) for a in spec.argv]
    log_path = workdir / f"{spec.name}.log"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            env=env,
            start_new_session=True,  # Ctrl-C reaches only us; we stop the daemon
            preexec_fn=lambda: _child_setup(cpus, nofile),
        )
    try:
        _wait_pong(spec, proc, log_path)
        _wait_settled(spec, proc)
        yield proc
    except BenchError as exc:
        state = "running" if proc.poll() is None else f"exited with {proc.returncode}"
        raise BenchError(f"{exc}\n{spec.name} ({state}) log:\n{_tail(log_path)}") from None
    finally:
        _stop(proc)


def _wait_pong(spec: DaemonSpec, proc: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + 15.0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.2)
        sock.connect(spec.ng)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise BenchError(f"{spec.name} exited at start-up:\n{_tail(log_path)}")
            try:
                sock.send(b"ping d7:command4:pinge")
                if b"pong" in sock.recv(4096):
                    return
            except (TimeoutError, ConnectionRefusedError):
                time.sleep(0.05)
    raise BenchError(f"{spec.name} did not answer ping:\n{_tail(log_path)}")


SETTLE_STEP = 0.25
"""Seconds between two reads of the daemon's CPU time while it starts."""
SETTLE_CPU = 0.02
"""A start-up is over when the daemon's processes use less than this share of a core over
two steps in a row."""
SETTLE_LIMIT = 30.0


def _wait_settled(spec: DaemonSpec, proc: subprocess.Popen[bytes]) -> None:
    """Wait until the daemon's process tree is idle, so that its start-up is not measured.

    relayd answers ``ping`` before its media workers have finished starting: a worker
    imports its modules for about a second after the supervisor's first pong, its RSS
    growing by tens of MB meanwhile. Measured from the pong, that growth read as memory per
    call and its CPU as CPU per cycle. rtpengine is idle at once."""
    deadline = time.monotonic() + SETTLE_LIMIT
    quiet = 0
    last = sum(cpu_seconds(proc.pid))
    while quiet < 2:
        if time.monotonic() > deadline:
            raise BenchError(f"{spec.name} still busy {SETTLE_LIMIT:.0f} s after its first pong")
        time.sleep(SETTLE_STEP)
        now = sum(cpu_seconds(proc.pid))
        quiet = quiet + 1 if now - last < SETTLE_CPU * SETTLE_STEP else 0
        last = now


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def _tail(path: Path, lines: int = 20) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User + system CPU time of the daemon (all its threads), and of its live descendants
    (relayd's media workers) together."""
    try:
        root = psutil.Process(pid)
        own = sum(root.cpu_times()[:2])
        return own, sum(sum(p.cpu_times()[:2]) for p in root.children(recursive=True))
    except psutil.Error as exc:
        raise BenchError(f"cannot read the CPU time of pid {pid}: {exc}") from None


def rss_bytes(pid: int) -> list[int]:
    """VmRSS of the daemon, then of each descendant (relayd's media workers) by pid."""
    try:
        root = psutil.Process(pid)
        children = sorted(root.children(recursive=True), key=lambda p: p.pid)
        return [p.memory_info().rss for p in (root, *children)]
    except psutil.Error as exc:
        raise BenchError(f"cannot read the memory of pid {pid}: {exc}") from None


# -- the client ------------------------------------------------------------------------------


class Client:
    """One connected UDP socket, one request in flight, raw bencode in and out."""

    def __init__(self, address: tuple[str, int], timeout: float = 5.0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.settimeout(timeout)
        self.sock.connect(address)
        self.address = address
        self.templates = Templates()

    def close(self) -> None:
        self.sock.close()

    def request(self, cookie: bytes, body: bytes) -> int:
        """Send one request; return its latency in nanoseconds."""
        sock = self.sock
        prefix = cookie + b" "
        start = time.perf_counter_ns()
        sock.send(prefix + body)
        try:
            reply = sock.recv(1 << 16)
            while not reply.startswith(prefix):  # a late reply to an earlier request
                reply = sock.recv(1 << 16)
        except TimeoutError:
            raise BenchError(f"no reply to {cookie.decode()} from {self.address}") from None
        elapsed = time.perf_counter_ns() - start
        if OK not in reply:
            raise BenchError(f"request {cookie.decode()} failed: {reply[:300]!r}")
        return elapsed

    def setup(self, number: int) -> tuple[int, int]:
        token = b"%010d" % number
        t = self.templates
        offer = self.request(token + b"o", t.offer.replace(TOKEN_BYTES, token))
        answer = self.request(token + b"a", t.answer.replace(TOKEN_BYTES, token))
        return offer, answer

    def teardown(self, number: int) -> int:
        token = b"%010d" % number
        return self.request(token + b"d", self.templates.delete.replace(TOKEN_BYTES, token))


# -- one measurement -------------------------------------------------------------------------


@dataclass(slots=True)
class Latencies:
    """Per-cycle latencies in nanoseconds, in the order the cycles completed."""

    offer: list[int] = field(default_factory=list)
    answer: list[int] = field(default_factory=list)
    delete: list[int] = field(default_factory=list)
    cycle: list[int] = field(default_factory=list)

    def extend(self, other: Latencies) -> None:
        for name in (*COMMANDS, "cycle"):
            getattr(self, name).extend(getattr(other, name))


def percentile(sorted_ns: Sequence[int], q: float) -> float:
    """Nearest-rank percentile, in milliseconds."""
    if not sorted_ns:
        return math.nan
    rank = max(0, math.ceil(q * len(sorted_ns)) - 1)
    return sorted_ns[rank] / 1e6


@dataclass(slots=True)
class Result:
    calls: int
    daemon: str
    clients: int = 1
    cycles: int = 0
    seconds: float = 0.0
    cycles_per_s: float = 0.0
    cpu_ms_per_cycle: float = math.nan  # the daemon's own CPU time, robust to a busy machine
    children_cpu_ms_per_cycle: float = math.nan  # the part of it in child processes
    daemon_cores: float = math.nan  # the daemon's CPU seconds per second: 1.0 is one busy core
    client_cpu_ms_per_cycle: float = math.nan  # all the clients' CPU time, per cycle
    client_cores: float = math.nan  # the clients' CPU seconds per second
    setup_calls_per_s: float = 0.0
    p50_ms: dict[str, float] = field(default_factory=dict)
    p99_ms: dict[str, float] = field(default_factory=dict)
    rss_before: list[int] = field(default_factory=list)  # the daemon, then its children
    rss_after: list[int] = field(default_factory=list)
    skipped: str = ""

    @property
    def bytes_per_call(self) -> float:
        grown = sum(self.rss_after) - sum(self.rss_before)
        return grown / self.calls if self.calls else math.nan


# Call numbers: the established calls count from 0, the parent's warm-up cycles from BASE,
# client k's cycles from BASE + (k + 1) * CLIENT_SPAN, so that no two clients share a call-id
# (the numbers fill TOKEN's 10 digits).
BASE = 1_000_000_000
CLIENT_SPAN = 10_000_000
MAX_CLIENTS = 99
# Unmeasured cycles each concurrent client runs on its own socket before the start.
CLIENT_WARMUP = 10


def cycles(client: Client, first: int, limit: int, deadline: float) -> Latencies:
    """Offer + answer + delete of calls first, first + 1, ..., one request in flight,
    until ``limit`` cycles or ``deadline`` (perf_counter), whichever comes first."""
    lat = Latencies()
    number = first
    while len(lat.cycle) < limit and time.perf_counter() < deadline:
        offer, answer = client.setup(number)
        delete = client.teardown(number)
        lat.offer.append(offer)
        lat.answer.append(answer)
        lat.delete.append(delete)
        lat.cycle.append(offer + answer + delete)
        number += 1
    return lat


def establish(client: Client, pid: int, result: Result, warmup: int) -> None:
    """Warm-up cycles, then ``result.calls`` calls set up and kept, with VmRSS around them."""
    for number in range(BASE, BASE + warmup):
        client.setup(number)
        client.teardown(number)
    result.rss_before = rss_bytes(pid)
    start = time.perf_counter()
    for number in range(result.calls):
        client.setup(number)
    result.setup_calls_per_s = result.calls / (time.perf_counter() - start)
    result.rss_after = rss_bytes(pid)


def measure(
    client: Client,
    pid: int,
    result: Result,
    *,
    warmup: int,
    duration: float,
    cycles_cap: int | None,
) -> None:
    """One sequential client: ``client`` runs the cycles itself, in this process."""
    establish(client, pid, result, warmup)
    limit = cycles_cap if cycles_cap is not None else sys.maxsize
    gc.disable()
    cpu_start = cpu_seconds(pid)
    client_start = time.process_time()
    start = time.perf_counter()
    try:
        lat = cycles(client, BASE + warmup, limit, start + duration)
    finally:
        gc.enable()
    seconds = time.perf_counter() - start
    client_cpu = time.process_time() - client_start
    summarize(result, lat, seconds, cpu_start, cpu_seconds(pid), client_cpu)


def summarize(
    result: Result,
    lat: Latencies,
    seconds: float,
    cpu_start: tuple[float, float],
    cpu_end: tuple[float, float],
    client_cpu: float,
) -> None:
    """Fill in ``result`` from every cycle's latencies and the CPU times around them."""
    result.seconds = seconds
    result.cycles = len(lat.cycle)
    result.cycles_per_s = result.cycles / seconds
    cpu = sum(cpu_end) - sum(cpu_start)
    result.daemon_cores = cpu / seconds
    result.client_cores = client_cpu / seconds
    if result.cycles:
        result.cpu_ms_per_cycle = 1000 * cpu / result.cycles
        result.children_cpu_ms_per_cycle = 1000 * (cpu_end[1] - cpu_start[1]) / result.cycles
        result.client_cpu_ms_per_cycle = 1000 * client_cpu / result.cycles
    for name in (*COMMANDS, "cycle"):
        values = sorted(getattr(lat, name))
        result.p50_ms[name] = percentile(values, 0.50)
        result.p99_ms[name] = percentile(values, 0.99)


@dataclass(frozen=True, slots=True)
class ClientReport:
    """What one concurrent client sends back: its latencies (as compact arrays), the
    perf_counter times of its first request and last reply, and its own CPU seconds."""

    offer: array[int]
    answer: array[int]
    delete: array[int]
    start: float
    end: float
    cpu: float


def _client_main(
    index: int,
    address: tuple[str, int],
    limit: int,
    duration: float,
    cpus: frozenset[int] | None,
    barriers: tuple[Barrier, Barrier],
    conn: Connection,
) -> None:
    """One concurrent client process: its own socket and call numbers, warm-up cycles,
    then (once every client is ready and the parent has read the daemon's CPU time)
    cycles for ``duration`` seconds or ``limit`` cycles. Sends a ClientReport, or the
    error as a string."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us on Ctrl-C
    if cpus is not None:
        os.sched_setaffinity(0, cpus)
    first = BASE + (index + 1) * CLIENT_SPAN
    client = Client(address)
    try:
        cycles(client, first, CLIENT_WARMUP, math.inf)
        gc.collect()
        gc.disable()
        for barrier in barriers:
            barrier.wait(30.0)
        cpu_start = time.process_time()
        start = time.perf_counter()
        lat = cycles(client, first + CLIENT_WARMUP, limit, start + duration)
        end = time.perf_counter()
        cpu = time.process_time() - cpu_start
        conn.send(
            ClientReport(
                array("q", lat.offer),
                array("q", lat.answer),
                array("q", lat.delete),
                start,
                end,
                cpu,
            )
        )
    except (BenchError, OSError, threading.BrokenBarrierError) as exc:
        for barrier in barriers:
            barrier.abort()  # the others and the parent stop waiting at once
        conn.send(f"client {index}: {exc}")
    finally:
        client.close()
        conn.close()


def measure_concurrent(
    client: Client,
    pid: int,
    result: Result,
    *,
    warmup: int,
    duration: float,
    cycles_cap: int | None,
    client_cpus: frozenset[int] | None,
) -> None:
    """``result.clients`` clients at once, each in its own process with its own socket.

    ``client`` (this process) does the warm-up and sets up the established calls first.
    Throughput is every client's cycles over the time from the first client's first
    request to the last client's last reply; the daemon's CPU is read around that."""
    establish(client, pid, result, warmup)
    k = result.clients
    context = multiprocessing.get_context("fork")
    # ready: every client has warmed up; go: the daemon's CPU time has been read
    ready, go = context.Barrier(k + 1), context.Barrier(k + 1)
    processes: list[multiprocessing.process.BaseProcess] = []
    pipes: list[Connection] = []
    reports: list[ClientReport] = []
    try:
        for index, limit in enumerate(client_limits(cycles_cap, k)):
            receive, send = context.Pipe(duplex=False)
            process = context.Process(
                target=_client_main,
                args=(index, client.address, limit, duration, client_cpus, (ready, go), send),
                name=f"ng-client-{index}",
                daemon=True,
            )
            process.start()
            send.close()
            processes.append(process)
            pipes.append(receive)
        try:
            ready.wait(30.0)
            cpu_start = cpu_seconds(pid)
            go.wait(30.0)
        except threading.BrokenBarrierError:
            raise BenchError(_first_error(pipes) or "a client did not start") from None
        reports = [_receive(pipe, duration + 30.0) for pipe in pipes]
        cpu_end = cpu_seconds(pid)
    finally:
        for child in processes:  # done, or stopped at once when something failed
            child.join(5.0 if len(reports) == k else 0.0)
            if child.is_alive():
                child.terminate()
                child.join(5.0)
        for pipe in pipes:
            pipe.close()
    lat = Latencies()
    for report in reports:
        cycle = [
            sum(parts) for parts in zip(report.offer, report.answer, report.delete, strict=True)
        ]
        lat.extend(Latencies(list(report.offer), list(report.answer), list(report.delete), cycle))
    seconds = max(r.end for r in reports) - min(r.start for r in reports)
    summarize(result, lat, seconds, cpu_start, cpu_end, sum(r.cpu for r in reports))


def client_limits(cycles_cap: int | None, clients: int) -> list[int]:
    """Each client's share of --cycles, as even as it goes, so that they add up to it."""
    if cycles_cap is None:
        return [sys.maxsize] * clients
    return [(cycles_cap + clients - 1 - index) // clients for index in range(clients)]


def _receive(pipe: Connection, timeout: float) -> ClientReport:
    if not pipe.poll(timeout):
        raise BenchError(f"a client sent nothing in {timeout:.0f} s")
    try:
        report = pipe.recv()
    except EOFError:
        raise BenchError("a client exited without a report") from None
    if isinstance(report, str):
        raise BenchError(report)
    assert isinstance(report, ClientReport)
    return report


def _first_error(pipes: Sequence[Connection]) -> str:
    for pipe in pipes:
        with contextlib.suppress(EOFError, OSError):
            if pipe.poll(0):
                message = pipe.recv()
                if isinstance(message, str):
                    return message
    return ""


def run_one(
    spec: DaemonSpec,
    calls: int,
    clients: int,
    args: argparse.Namespace,
    *,
    workdir: Path,
    cpus: frozenset[int] | None,
    client_cpus: frozenset[int] | None,
    nofile: int,
) -> Result:
    result = Result(calls=calls, daemon=spec.name, clients=clients)
    if args.redis and spec.name in REDIS_DBS:
        empty_redis(args.redis, REDIS_DBS[spec.name])
    suffix = "" if clients == 1 else f"-{clients}clients"
    profile = Path(args.profile) / f"{spec.name}-{calls}{suffix}.prof" if args.profile else None
    with running(spec, workdir, cpus=cpus, nofile=nofile, profile=profile) as proc:
        client = Client(spec.ng)
        try:
            if clients == 1:
                measure(
                    client,
                    proc.pid,
                    result,
                    warmup=args.warmup,
                    duration=args.duration,
                    cycles_cap=args.cycles,
                )
            else:
                measure_concurrent(
                    client,
                    proc.pid,
                    result,
                    warmup=args.warmup,
                    duration=args.duration,
                    cycles_cap=args.cycles,
                    client_cpus=client_cpus,
                )
        finally:
            client.close()
    return result


# -- report ----------------------------------------------------------------------------------


def _ms(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.3f}"


def _bytes(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:,.0f} B"


def _cores(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.2f}"


def render(results: Sequence[Result], *, concurrent: bool = False) -> str:
    """The tables and the verdicts. ``concurrent`` (--concurrency other than 1) adds a
    clients column, the CPU time of the clients beside the daemon's and issue 13's targets;
    without it the report is what it was before --concurrency existed."""
    out: list[str] = []
    lead = "| clients " if concurrent else ""
    lead_align = "---:|" if concurrent else ""
    extra = "| daemon CPU cores | client CPU ms/cycle | client CPU cores " if concurrent else ""
    out.append(
        f"{lead}| concurrent calls | daemon | cycles/s | p50 ms | p99 ms | daemon CPU ms/cycle "
        f"{extra}| setup calls/s | RSS per call |"
    )
    out.append(
        f"|{lead_align}---:|---|---:|---:|---:|---:|{'---:|' * 3 if concurrent else ''}---:|---:|"
    )
    empty = "| " * (8 if concurrent else 5) + "|"  # the cells after "not run"
    for r in results:
        head = _row_head(r, concurrent)
        if r.skipped:
            out.append(f"{head} not run: {r.skipped} {empty}")
            continue
        # one call is too few to divide memory or set-up time by
        per_call = _bytes(r.bytes_per_call) if r.calls >= 100 else "–"
        setup = f"{r.setup_calls_per_s:,.0f}" if r.calls >= 100 else "–"
        cpu = (
            f"| {_cores(r.daemon_cores)} | {_ms(r.client_cpu_ms_per_cycle)} "
            f"| {_cores(r.client_cores)} "
            if concurrent
            else ""
        )
        out.append(
            f"{head} {r.cycles_per_s:,.0f} | {_ms(r.p50_ms['cycle'])} "
            f"| {_ms(r.p99_ms['cycle'])} | {_ms(r.cpu_ms_per_cycle)} "
            f"{cpu}| {setup} | {per_call} |"
        )
    out.append("")
    out.append("Per command, client-side latency p50 / p99 in ms:")
    out.append("")
    out.append(f"{lead}| concurrent calls | daemon | offer | answer | delete |")
    out.append(f"|{lead_align}---:|---|---:|---:|---:|")
    for r in results:
        if r.skipped:
            continue
        cells = " | ".join(f"{_ms(r.p50_ms[c])} / {_ms(r.p99_ms[c])}" for c in COMMANDS)
        out.append(f"{_row_head(r, concurrent)} {cells} |")
    out.append("")
    for r in results:
        if r.skipped or r.calls < 100:
            continue
        clients = f" ({_clients(r.clients)})" if concurrent else ""
        out.append(
            f"Memory {r.daemon} at {r.calls:,} calls{clients}: VmRSS "
            f"{sum(r.rss_before) / 2**20:.1f} MiB -> {sum(r.rss_after) / 2**20:.1f} MiB, "
            f"{_bytes(r.bytes_per_call)} per call" + _split(r)
        )
    out.append("")
    out.extend(cpu_ratios(results, concurrent=concurrent))
    out.extend(targets([r for r in results if r.clients == 1]))
    if concurrent:
        out.extend(concurrency_targets(results))
    return "\n".join(out)


def _row_head(r: Result, concurrent: bool) -> str:
    head = f"| {r.calls:,} | {r.daemon} |"
    return f"| {r.clients} {head}" if concurrent else head


def cpu_ratios(results: Sequence[Result], *, concurrent: bool = False) -> list[str]:
    """CPU per cycle of each daemon as a multiple of rtpengine's at the same size (and number
    of clients), and where a daemon has child processes (relayd's media workers), their part
    of it."""
    lines: list[str] = []
    by_key = {(r.calls, r.clients, r.daemon): r for r in results if not r.skipped}
    for calls, clients in sorted({(r.calls, r.clients) for r in results}):
        where = _calls(calls) + (f", {_clients(clients)}" if concurrent else "")
        theirs = by_key.get((calls, clients, "rtpengine"))
        others = [
            r
            for r in results
            if r.calls == calls and r.clients == clients and r.daemon != "rtpengine"
        ]
        parts = [
            f"{r.daemon} {r.cpu_ms_per_cycle / theirs.cpu_ms_per_cycle:.2f}x"
            for r in others
            if theirs is not None and not r.skipped
        ]
        if parts:
            lines.append(
                f"CPU per cycle as a multiple of rtpengine's with {where}: " + ", ".join(parts)
            )
        for r in others:
            if not r.skipped and r.children_cpu_ms_per_cycle > 0:
                main = r.cpu_ms_per_cycle - r.children_cpu_ms_per_cycle
                lines.append(
                    f"CPU per cycle of {r.daemon} with {where}: {main:.3f} ms in the main "
                    f"process, {r.children_cpu_ms_per_cycle:.3f} ms in its children"
                )
    return lines


def _calls(calls: int) -> str:
    return "1 call" if calls == 1 else f"{calls:,} calls"


def _clients(clients: int) -> str:
    return "1 client" if clients == 1 else f"{clients} clients"


def _split(r: Result) -> str:
    if len(r.rss_after) < 2 or len(r.rss_before) != len(r.rss_after):
        return ""
    grown = [(a - b) / r.calls for a, b in zip(r.rss_after, r.rss_before, strict=True)]
    parts = ", ".join(_bytes(g) for g in grown[1:])
    return f" ({_bytes(grown[0])} in the main process, {parts} in its children)"


def targets(results: Sequence[Result]) -> list[str]:
    """The targets of a sequential client (issue 1's), checked wherever relayd (and for the
    comparisons, rtpengine) ran at a size."""
    lines: list[str] = []
    by_key = {(r.calls, r.daemon): r for r in results if not r.skipped}
    for calls in sorted({r.calls for r in results}):
        ours = by_key.get((calls, "relayd"))
        if ours is None:
            continue
        checks = [
            f"cycles/s {ours.cycles_per_s:,.0f} >= 1,000: {_verdict(ours.cycles_per_s >= 1000)}"
        ]
        theirs = by_key.get((calls, "rtpengine"))
        if theirs is not None:
            checks.append(
                f"cycles/s >= rtpengine's {theirs.cycles_per_s:,.0f}: "
                f"{_verdict(ours.cycles_per_s >= theirs.cycles_per_s)}"
            )
            limit = 2 * theirs.p99_ms["cycle"]
            checks.append(
                f"p99 {_ms(ours.p99_ms['cycle'])} <= 2 x rtpengine's = {_ms(limit)} ms: "
                f"{_verdict(ours.p99_ms['cycle'] <= limit)}"
            )
        if calls >= 1000:
            checks.append(
                f"memory {_bytes(ours.bytes_per_call)} per call < 10,000 B: "
                f"{_verdict(ours.bytes_per_call < 10_000)}"
            )
        lines.append(f"Targets at {calls:,} calls: " + "; ".join(checks))
    return lines


# Issue 13: a sequential client's p99 per cycle at most this, in ms.
SEQUENTIAL_P99_MS = 2.0


def concurrency_targets(results: Sequence[Result]) -> list[str]:
    """Issue 13's targets: with concurrent clients relayd's cycles/s at least rtpengine's
    with the same CPUs in the same run, and a sequential client's p99 per cycle <= 2 ms."""
    lines: list[str] = []
    by_key = {(r.calls, r.clients, r.daemon): r for r in results if not r.skipped}
    for calls in sorted({r.calls for r in results}):
        checks: list[str] = []
        sequential = by_key.get((calls, 1, "relayd"))
        if sequential is not None:
            p99 = sequential.p99_ms["cycle"]
            checks.append(
                f"1 client: p99 {_ms(p99)} <= {SEQUENTIAL_P99_MS:g} ms: "
                f"{_verdict(p99 <= SEQUENTIAL_P99_MS)}"
            )
        for clients in sorted({r.clients for r in results if r.calls == calls} - {1}):
            ours = by_key.get((calls, clients, "relayd"))
            theirs = by_key.get((calls, clients, "rtpengine"))
            if ours is None or theirs is None:
                continue
            checks.append(
                f"{_clients(clients)}: cycles/s {ours.cycles_per_s:,.0f} >= rtpengine's "
                f"{theirs.cycles_per_s:,.0f} ({ours.cycles_per_s / theirs.cycles_per_s:.2f}x): "
                f"{_verdict(ours.cycles_per_s >= theirs.cycles_per_s)}"
            )
        if checks:
            lines.append(f"Issue 13 with {_calls(calls)}: " + "; ".join(checks))
    return lines


def _verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def _cpu_list(cpus: frozenset[int]) -> str:
    return ",".join(str(c) for c in sorted(cpus))


def describe_pinning(
    daemon_cpus: frozenset[int] | None,
    client_cpus: frozenset[int] | None,
    concurrent: bool = False,
) -> str:
    if daemon_cpus is None or client_cpus is None:
        return "no pinning (fewer than 2 CPUs)"
    if not concurrent and len(daemon_cpus) == 1 and len(client_cpus) == 1:
        return f"daemon pinned to CPU {min(daemon_cpus)}, client to CPU {min(client_cpus)}"
    plural = "s" if len(daemon_cpus) > 1 else ""
    text = f"daemon pinned to CPU{plural} {_cpu_list(daemon_cpus)} (all its threads and children)"
    shared = " (shared with the daemon: no CPU left)" if client_cpus & daemon_cpus else ""
    plural = "s" if len(client_cpus) > 1 else ""
    return text + f", clients to CPU{plural} {_cpu_list(client_cpus)}{shared}"


def describe_machine(
    daemon_cpus: frozenset[int] | None,
    client_cpus: frozenset[int] | None,
    nofile: int,
    relayd_extra: Sequence[str] = (),
    concurrent: bool = False,
) -> list[str]:
    cpu_model = "unknown CPU"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    rtpengine = _output([RTPENGINE_BIN, "--version"]).removeprefix("Version: ") or "not installed"
    commit = _output(["git", "-C", str(REPO), "describe", "--always", "--dirty"]) or "unknown"
    options = f" with {shlex.join(relayd_extra)}" if relayd_extra else ""
    return [
        f"Machine: {os.cpu_count()} x {cpu_model}, Linux {platform.release()}, "
        f"Python {platform.python_version()} ({os.path.realpath(sys.executable)}), "
        f"load average {os.getloadavg()[0]:.2f} at start",
        f"Daemons: relayd at {commit}{options}, rtpengine {rtpengine}; "
        f"{describe_pinning(daemon_cpus, client_cpus, concurrent)}; RLIMIT_NOFILE {nofile:,}",
    ]


def _output(argv: Sequence[str]) -> str:
    try:
        done = subprocess.run(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


# -- main ------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/ng.py",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument("--calls", help="concurrent call counts, comma separated")
    parser.add_argument(
        "--concurrency",
        default="1",
        metavar="K[,K...]",
        help="clients running cycles at once, each its own process and socket, comma "
        "separated (default 1: one sequential client)",
    )
    parser.add_argument(
        "--daemon-cpus",
        metavar="CPU[,CPU...]",
        help="CPUs for the daemon under test, either daemon (default: the first CPU; the "
        "clients get the other CPUs, or share these where none is left)",
    )
    parser.add_argument("--duration", type=float, help="seconds of cycles per measurement")
    parser.add_argument("--cycles", type=int, help="stop each measurement after this many cycles")
    parser.add_argument("--warmup", type=int, help="unmeasured cycles before each measurement")
    parser.add_argument("--quick", action="store_true", help="1 and 100 calls, 300 cycles each")
    parser.add_argument("--only", choices=(*DAEMONS, FLOOR), help="benchmark one daemon only")
    parser.add_argument(
        "--floor",
        action="store_true",
        help="also run bench/ng_floor.py: the same system calls in Python, no ng work",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument(
        "--redis",
        metavar="HOST:PORT",
        help="both daemons write their calls to this Redis (relayd db 1, rtpengine db 2)",
    )
    parser.add_argument("--port-min", type=int, default=10000)
    parser.add_argument("--port-max", type=int, default=59999)
    parser.add_argument("--relayd-listen", default="127.0.0.1:22261", metavar="HOST:PORT")
    parser.add_argument("--rtpengine-listen", default="127.0.0.1:22260", metavar="HOST:PORT")
    parser.add_argument("--floor-listen", default="127.0.0.1:22262", metavar="HOST:PORT")
    parser.add_argument(
        "--relayd-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="one more relayd option, e.g. --relayd-arg=--state-dir=/tmp/journal (repeatable)",
    )
    parser.add_argument(
        "--relayd-args",
        default="",
        metavar="'ARGS'",
        help="more relayd options in one string, split as a shell would, appended after "
        "--relayd-arg's (a single option needs the = form: --relayd-args=--shards=4)",
    )
    parser.add_argument(
        "--profile", metavar="DIR", help="run relayd under cProfile, one .prof per measurement"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.calls = args.calls or "1,100"
        args.cycles = args.cycles or 300
        args.warmup = 50 if args.warmup is None else args.warmup
    args.calls = [int(n) for n in (args.calls or "1,1000,10000").split(",")]
    args.duration = 5.0 if args.duration is None else args.duration
    args.warmup = 200 if args.warmup is None else args.warmup
    if args.port_max - args.port_min < 4 * max(args.calls) + 16:
        parser.error(f"--port-min..--port-max is too small for {max(args.calls)} calls")
    try:
        args.concurrency = [int(k) for k in args.concurrency.split(",")]
        args.daemon_cpus = (
            frozenset(int(c) for c in args.daemon_cpus.split(",")) if args.daemon_cpus else None
        )
        shlex.split(args.relayd_args)
    except ValueError as exc:
        parser.error(str(exc))
    if not all(1 <= k <= MAX_CLIENTS for k in args.concurrency):
        parser.error(f"--concurrency takes 1 to {MAX_CLIENTS} clients")
    return args


def choose_cpus(
    allowed: Sequence[int], wanted: frozenset[int] | None
) -> tuple[frozenset[int] | None, frozenset[int] | None]:
    """The daemon's CPUs and the clients': by default the first CPU for the daemon and the
    rest for the clients; with ``wanted``, those for the daemon and the rest for the clients,
    or the same ones, shared, where no CPU is left. (None, None) with one CPU: no pinning."""
    if wanted is not None:
        if not wanted or not wanted <= set(allowed):
            raise BenchError(
                f"--daemon-cpus {_cpu_list(wanted)} is not within the CPUs this process may use "
                f"({_cpu_list(frozenset(allowed))})"
            )
        rest = frozenset(allowed) - wanted
        return wanted, rest or frozenset(allowed)
    if len(allowed) < 2:
        return None, None
    return frozenset(allowed[:1]), frozenset(allowed[1:])


def plan(args: argparse.Namespace, nofile: int) -> list[tuple[int, int, str, str]]:
    """(calls, clients, daemon, reason to skip or "") in run order, every daemon at each
    size and number of clients."""
    daemons = [args.only] if args.only else [*DAEMONS, *([FLOOR] if args.floor else [])]
    sizes = list(args.calls)
    skips: dict[tuple[int, str], str] = {}
    cap = max_calls(nofile)
    for calls in args.calls:
        if calls > cap:
            for name in daemons:
                skips[calls, name] = (
                    f"needs about {calls * FDS_PER_CALL + FD_RESERVE:,} open files, "
                    f"RLIMIT_NOFILE hard limit is {nofile:,}"
                )
            fitting = cap // 100 * 100
            if fitting and fitting not in sizes:
                sizes.append(fitting)  # still compare the daemons as large as it fits
    return [
        (n, k, d, skips.get((n, d), ""))
        for n in sorted(sizes)
        for k in args.concurrency
        for d in daemons
    ]


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks that stop daemons


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        daemon_cpus, client_cpus = choose_cpus(sorted(os.sched_getaffinity(0)), args.daemon_cpus)
    except BenchError as exc:
        print(f"bench/ng.py: {exc}", file=sys.stderr)
        return 2
    if client_cpus is not None:
        os.sched_setaffinity(0, client_cpus)  # and the client processes, forked from here
    concurrent = args.concurrency != [1]
    nofile = file_limit()
    specs = daemon_specs(args)
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    command = shlex.join([_relative(sys.executable), _relative(sys.argv[0]), *sys.argv[1:]])
    relayd_extra = [*args.relayd_arg, *shlex.split(args.relayd_args)]
    if args.redis:
        relayd_extra += ["--redis", f"{args.redis}/{REDIS_DBS['relayd']}"]
    machine = describe_machine(daemon_cpus, client_cpus, nofile, relayd_extra, concurrent)
    header = [f"$ {command}", "", *machine]
    print("\n".join(header), flush=True)

    results: list[Result] = []
    failed = False
    with tempfile.TemporaryDirectory(prefix="relayd-bench-") as tmp:
        for calls, clients, name, skipped in plan(args, nofile):
            if skipped:
                results.append(Result(calls=calls, daemon=name, clients=clients, skipped=skipped))
                continue
            what = f"{name} with {calls:,} concurrent calls"
            what += f", {_clients(clients)}" if concurrent else ""
            print(f"... {what}", file=sys.stderr, flush=True)
            try:
                result = run_one(
                    specs[name],
                    calls,
                    clients,
                    args,
                    workdir=Path(tmp),
                    cpus=daemon_cpus,
                    client_cpus=client_cpus,
                    nofile=nofile,
                )
            except BenchError as exc:
                print(f"{what} failed: {exc}", file=sys.stderr)
                failed = True
                result = Result(
                    calls=calls,
                    daemon=name,
                    clients=clients,
                    skipped=f"failed: {exc}".split("\n")[0],
                )
            results.append(result)
    print()
    print(render(results, concurrent=concurrent))
    print(f"Load average {os.getloadavg()[0]:.2f} at the end (other work here skews the figures)")
    if args.json:
        payload = {
            "command": command,
            "machine": header[2:],
            "daemon_cpus": sorted(daemon_cpus) if daemon_cpus is not None else None,
            "client_cpus": sorted(client_cpus) if client_cpus is not None else None,
            "results": [
                _jsonable(asdict(r) | {"bytes_per_call": r.bytes_per_call}) for r in results
            ],
        }
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
    return 1 if failed else 0


def _jsonable(value: object) -> object:
    """NaN (a percentile of nothing) becomes null: JSON has no NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def _relative(path: str) -> str:
    try:
        return str(Path(path).absolute().relative_to(Path.cwd()))
    except ValueError:
        return path


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)  # the daemons were stopped on the way out
