#!/usr/bin/env python3
"""Idle scale benchmark (issue 13): what N kernelized calls cost, idle and with a trickle.

bench/media.py's lab (three namespaces, the C generator; imported, not copied)
and bench/kernel.py's kernelized calls. For each number of calls (``--calls``,
default 1,000, 5,000 and 10,000), one daemon after the other on the relay core:

* **relayd** with the kernel path (``--table 0 --tos 184``, ``ip_forward=1``
  in the relay's namespace), and
* **rtpengine** 10.5 (``/usr/bin/rtpengine``), in userspace (``--table -1``):
  this machine has no rtpengine kernel module, so its calls stay in userspace.

Per daemon: 100 calls set up and deleted (allocator and caches warm), then a
**base** window with no call at all (``--base-window``, the ng pinger running);
then N calls set up over ng (offer + answer: **set-up time**), one RTP packet
from the callee and one from the caller per call (both ends confirmed: relayd
offloads each call to nftables about a second later), and ng ``query`` until
the calls show both RTP streams ``kernelized`` (every call up to ``--sample``
calls, an evenly spread sample of that many above). Then two measured windows
of ``--window`` seconds each (default 30):

* **idle**: no media at all;
* **media**: ``--media-rate`` packets per second per stream in each direction
  (default 1) on every call, from two C generators (caller → relay and callee →
  relay), bounded in count and time; what arrives at the caller and the callee
  is counted (and dropped) by nft counters at their veth ingress.

In each window: CPU (utime + stime over wall time, % of one core) of the daemon's
main process and of its worker processes apart, and the ng latency of a
sequential client sending ``ping`` every ``--ping-interval`` seconds (p50, p99,
max). With the calls idle: RSS per call (VmRSS after less before, over N; main
process and workers), descriptors per call and per UDP port held (/proc/PID/fd
counts and the ports bound in the relay's namespace, after less before), the
kernel's memory per call (bench/kernel.py's slab, per-CPU and vmalloc
accounting; machine-wide, so noisy). Then every call is deleted (**tear-down
time**) and the descriptors counted again.

The report is one table per number of calls, relayd and rtpengine side by side,
with issue 13's targets and relayd's verdict on each: relayd's processes
together ≤ 2 % of one core with the calls idle, ng ``ping`` p99 ≤ 5 ms in every
window, ≤ 10 KB of RSS per call, ≤ 1 descriptor per port. (The target for CPU
is stated at 10,000 calls; an idle cost that does not grow with the calls meets
it at every size, so the verdict is given at every size.) ``--json FILE`` saves
everything.

    sudo .venv/bin/python bench/scale.py                        # 1,000, 5,000, 10,000 calls
    sudo .venv/bin/python bench/scale.py --calls 100 --window 5 --base-window 2   # smoke
    sudo .venv/bin/python bench/scale.py --only relayd --calls 10000 --json out.json

The namespaces are bench/media.py's with another prefix (``rbs-``, or the
environment's ``RELAYD_BENCH_NETNS``), so a run can share the machine with
bench/media.py or bench/kernel.py (their CPU figures then disturb each other).
The descriptor limit is raised as far as the kernel allows (``fs.nr_open``) and
printed. One media address's port range (10000-59999) holds 12,400 calls; more
(up to 120,000) get as many more addresses on the relay's loopback, given to
both daemons as the round-robin interface pool ``pub`` (``pub:1/10.77.0.1``,
``pub:2/10.77.0.2``, ...), and the caller's ports repeat every 20,000 calls.
Every loop is bounded in count and time; daemons, generators, namespaces, nft
tables and conntrack entries are removed on every exit path, Ctrl-C and
failures included.
"""

from __future__ import annotations

import argparse
import fcntl
import ipaddress
import json
import math
import os
import resource
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO, REPO / "bench"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))
os.environ.setdefault("RELAYD_BENCH_NETNS", "rbs")  # read by medialab at import

import kernel  # noqa: E402
import media  # noqa: E402
from medialab import (  # noqa: E402
    CALLEE_ADDR,
    CALLEE_INGRESS,
    CALLEE_NS,
    CALLEE_PORT,
    CALLER_ADDR,
    CALLER_INGRESS,
    CALLER_NS,
    MEDIA_ADDR,
    NETNS_PREFIX,
    RELAY_NS,
    Bench,
    BenchError,
    Placement,
    compile_generator,
    in_netns,
    kernel_forwarding,
    media_addresses_added,
    placement,
    process_cpu,
    process_tree,
    spawn,
    steer_media,
    stop_process,
    topology,
)

from relayd.ng.client import NgClient, NgTimeout  # noqa: E402
from relayd.plane.sockets import worker_budget  # noqa: E402

__all__ = ["main"]

RELAYD, RTPENGINE = "relayd", "rtpengine"
LABELS = {
    RELAYD: "relayd (kernel path, --table 0)",
    RTPENGINE: "rtpengine 10.5 (userspace: no kernel module here)",
}
PORT_MIN, PORT_MAX = 10000, 59999  # relay ports; one daemon at a time has them all
CALLS_PER_ADDRESS = (PORT_MAX - PORT_MIN + 1) // media.PORTS_PER_STREAM - 100
CALLS_MAX = 120_000  # ten media addresses (see media_addresses)
POOL = "pub"  # the round-robin interface pool of several media addresses
CONFIRM_CHUNK = 500  # caller packets per generator run: a burst of thousands would
# overflow the relay core's backlog (netdev_max_backlog, 1,000)
PING_TIMEOUT = 1.0  # a ping unanswered this long counts as lost
MEDIA_LEAD, MEDIA_TAIL = 1.0, 0.5  # the generators run this much before and after the window
# issue 13's targets
TARGET_CPU = 0.02  # relayd's processes together, calls idle, share of one core
TARGET_P99_MS = 5.0
TARGET_RSS_PER_CALL = 10_000  # bytes, main process and workers together
TARGET_FDS_PER_PORT = 1.0


# -- the daemons -------------------------------------------------------------------------------


def media_addresses(calls: int, least: int = 1) -> list[str]:
    """The relay's media addresses for ``calls``: MEDIA_ADDR, and as many more after it
    (10.77.0.2, ...) as the port range of one address needs to hold them all (``least``
    at least)."""
    count = max(least, math.ceil(calls / CALLS_PER_ADDRESS))
    first = ipaddress.IPv4Address(MEDIA_ADDR)
    return [str(first + k) for k in range(count)]


def workers_for(calls: int, nofile: int) -> int:
    """The fewest relayd workers that hold ``calls``' ports, each socket held once by a
    worker whose descriptor budget (relayd/plane/sockets.py) is taken from ``nofile``."""
    budget = worker_budget(nofile) or calls * media.PORTS_PER_STREAM
    return max(1, math.ceil(calls * media.PORTS_PER_STREAM / budget))


def interface_values(addresses: Sequence[str]) -> list[str]:
    """``interface`` values: the one address as bench/media.py gives it, or several as the
    round-robin pool ``pub`` (``pub:1/A;pub:2/B``: each party takes the next in turn with
    free ports), as an operator spreads calls over addresses on either daemon."""
    if len(addresses) == 1:
        return list(addresses)
    return [f"{POOL}:{k}/{address}" for k, address in enumerate(addresses, 1)]


def daemon_argv(daemon: str, args: argparse.Namespace, addresses: Sequence[str]) -> list[str]:
    """bench/kernel.py's relayd (kernel path) or bench/media.py's rtpengine, with the whole
    relay port range on each media address and timeouts that reap no idle call while it
    is measured."""
    spec = media.DaemonSpec(daemon, args.workers, media.NG_PORT, PORT_MIN, PORT_MAX)
    values = interface_values(addresses)
    if daemon == RELAYD:
        argv = kernel.kernel_argv(spec, max(args.log_level, 4), kernel.TOS_EF)
        argv[argv.index("--timeout") + 1] = str(args.timeout)
        at = argv.index("--interface")
        argv[at : at + 2] = [item for value in values for item in ("--interface", value)]
        return [*argv, "--silent-timeout", str(args.silent_timeout)]
    argv = [
        a
        for a in media.daemon_argv(spec, args.log_level)
        if not a.startswith(("--timeout=", "--interface="))
    ]
    return [
        *argv,
        *(f"--interface={value}" for value in values),
        f"--timeout={args.timeout}",
        f"--silent-timeout={args.silent_timeout}",
    ]


@contextmanager
def running(
    daemon: str,
    args: argparse.Namespace,
    place: Placement,
    workdir: Path,
    nofile: int,
    addresses: Sequence[str],
) -> Iterator[subprocess.Popen[str]]:
    """The daemon in the relay's namespace on the relay core, once it answers ping; relayd's
    nft table and the namespace's conntrack entries go with it."""
    log_path = workdir / f"{daemon}.log"
    env = dict(os.environ, PYTHONPATH=str(args.relayd_source))
    with ExitStack() as stack:
        if daemon == RELAYD:
            stack.enter_context(kernel_forwarding())
            stack.callback(kernel.forget_kernel_state, kernel.NFT_TABLE)
        with open(log_path, "a") as log:
            proc = spawn(
                daemon_argv(daemon, args, addresses),
                netns=RELAY_NS,
                cpus=place.relay,
                nofile=nofile,
                stdout=log,
                cwd=workdir,
                env=env,
            )
        stack.callback(stop_process, proc, 30.0)
        media.wait_for_pong(proc, media.NG_PORT, daemon, log_path)
        time.sleep(0.2)
        if daemon == RELAYD and "kernel.unavailable" in log_path.read_text(errors="replace"):
            raise BenchError(f"relayd's kernel path is off:\n{media._tail(log_path)}")
        yield proc


# -- what the processes hold -------------------------------------------------------------------


@dataclass(slots=True)
class Holdings:
    """RSS (KiB) and open descriptors of the main process and of its workers together, and
    the UDP sockets and distinct ports (address and number) bound to the media addresses
    in the namespace."""

    rss_main_kib: int = 0
    rss_workers_kib: int = 0
    fds_main: int = 0
    fds_workers: int = 0
    workers: int = 0
    udp_sockets: int = 0
    udp_ports: int = 0


def _fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


# every media address there can be (media_addresses for CALLS_MAX calls)
_MEDIA_ADDRESSES = frozenset(media_addresses(CALLS_MAX))


def udp_bound(pid: int) -> tuple[int, int]:
    """(UDP sockets, distinct ports) bound to the media addresses in ``pid``'s namespace.

    Listed by ``ss`` (sock_diag over netlink): /proc/net/udp takes minutes with the
    400,000 sockets of 100,000 calls, its reader walking the table again for each page."""
    out = subprocess.run(
        ["nsenter", f"--net=/proc/{pid}/ns/net", "ss", "-uanH"],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout
    sockets, ports = 0, set()
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[3].rpartition(":")[0] in _MEDIA_ADDRESSES:
            sockets += 1
            ports.add(fields[3])
    return sockets, len(ports)


def holdings(pid: int) -> Holdings:
    workers = process_tree(pid)[1:]
    sockets, ports = udp_bound(pid)
    return Holdings(
        rss_main_kib=kernel.rss_kib(pid),
        rss_workers_kib=sum(kernel.rss_kib(w) for w in workers),
        fds_main=_fds(pid),
        fds_workers=sum(_fds(w) for w in workers),
        workers=len(workers),
        udp_sockets=sockets,
        udp_ports=ports,
    )


# -- the ng pinger -----------------------------------------------------------------------------


class Pinger:
    """A sequential ng client in a thread: ``ping`` every ``interval`` seconds while the block
    runs, at most ``limit`` seconds and ``limit / interval`` pings; latencies in ms."""

    def __init__(self, port: int, interval: float, limit: float) -> None:
        self.port = port
        self.interval = interval
        self.limit = limit
        self.latencies_ms: list[float] = []
        self.lost = 0
        self.error = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ng-pinger", daemon=True)

    def __enter__(self) -> Pinger:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(self.limit + 2 * PING_TIMEOUT)

    def _run(self) -> None:
        try:
            with in_netns(RELAY_NS):  # this thread only
                client = NgClient((media.NG_HOST, self.port), timeout=PING_TIMEOUT, retries=0)
            with client:
                start = time.monotonic()
                budget = int(self.limit / self.interval) + 1
                for k in range(budget):
                    if self._stop.is_set() or time.monotonic() - start > self.limit:
                        break
                    sent = time.perf_counter()
                    try:
                        reply = client.call("ping")
                    except NgTimeout:
                        self.lost += 1
                    else:
                        if reply.get("result") == "pong":
                            self.latencies_ms.append((time.perf_counter() - sent) * 1000)
                        else:
                            self.lost += 1
                    self._stop.wait(max(0.0, start + (k + 1) * self.interval - time.monotonic()))
        except OSError as exc:  # reported with the window, not raised from a thread
            self.error = str(exc)


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank percentile (``q`` in 0..1) of ``values``; 0 when empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


# -- a measured window -------------------------------------------------------------------------


@dataclass(slots=True)
class Window:
    """One measured stretch in two parts: CPU shares of one core with nothing but the load
    under test (no ng traffic at all), then the same with the ng pinger running, and its
    latencies (ms); media counts for the media windows."""

    seconds: float = 0.0  # the first part: no ng traffic
    cpu_main: float = 0.0
    cpu_workers: float = 0.0
    ping_seconds: float = 0.0  # the second part: the pinger running
    cpu_main_pinged: float = 0.0
    cpu_workers_pinged: float = 0.0
    pings: int = 0
    pings_lost: int = 0
    ping_p50_ms: float = 0.0
    ping_p99_ms: float = 0.0
    ping_max_ms: float = 0.0
    ping_error: str = ""
    # media windows only: per direction, what the generator sent and what arrived
    target_pps: float = 0.0  # per direction
    sent: tuple[int, int] = (0, 0)  # (caller → callee, callee → caller)
    due: tuple[int, int] = (0, 0)
    lagged: tuple[int, int] = (0, 0)
    send_seconds: tuple[float, float] = (0.0, 0.0)
    delivered: tuple[int, int] = (0, 0)

    @property
    def cpu(self) -> float:
        return self.cpu_main + self.cpu_workers

    @property
    def cpu_pinged(self) -> float:
        return self.cpu_main_pinged + self.cpu_workers_pinged


def _cpu_over(pid: int, workers: Sequence[int], seconds: float) -> tuple[float, float, float]:
    """(main, workers) CPU shares of one core over ``seconds`` of sleep; the wall time."""
    main0, workers0, start = process_cpu([pid]), process_cpu(workers), time.monotonic()
    time.sleep(seconds)
    wall = time.monotonic() - start
    return (process_cpu([pid]) - main0) / wall, (process_cpu(workers) - workers0) / wall, wall


def measure_window(
    pid: int, seconds: float, ping_seconds: float, args: argparse.Namespace
) -> Window:
    """CPU of ``pid`` and its workers over ``seconds`` with no ng traffic, then over
    ``ping_seconds`` with the ng pinger running, and the pinger's latencies. (The pinger's
    own cost would otherwise be most of an idle relay's CPU.)"""
    workers = process_tree(pid)[1:]
    window = Window()
    window.cpu_main, window.cpu_workers, wall = _cpu_over(pid, workers, seconds)
    window.seconds = round(wall, 3)
    with Pinger(media.NG_PORT, args.ping_interval, ping_seconds) as pinger:
        window.cpu_main_pinged, window.cpu_workers_pinged, wall = _cpu_over(
            pid, workers, ping_seconds
        )
    window.ping_seconds = round(wall, 3)
    lat = pinger.latencies_ms
    window.pings, window.pings_lost, window.ping_error = len(lat), pinger.lost, pinger.error
    window.ping_p50_ms = round(percentile(lat, 0.5), 3)
    window.ping_p99_ms = round(percentile(lat, 0.99), 3)
    window.ping_max_ms = round(max(lat, default=0.0), 3)
    return window


# -- media -------------------------------------------------------------------------------------


class IngressCounter:
    """Counts and drops every UDP packet for ``addr`` at the veth ingress of ``netns``: what
    the relay delivered there, with no socket to pay for and no ICMP sent back."""

    def __init__(self, netns: str, device: str, addr: str) -> None:
        self.netns = netns
        self.table = f"{NETNS_PREFIX}-count"
        rules = (
            f"table netdev {self.table} {{\n"
            "  chain ingress {\n"
            f'    type filter hook ingress device "{device}" priority 0; policy accept;\n'
            f"    ip daddr {addr} meta l4proto udp counter drop\n"
            "  }\n}\n"
        )
        done = subprocess.run(
            ["ip", "netns", "exec", netns, "nft", "-f", "-"],
            input=rules,
            capture_output=True,
            text=True,
            timeout=30,
        )
        if done.returncode != 0:
            raise BenchError(f"cannot add the counter in {netns}: {done.stderr.strip()}")

    def packets(self) -> int:
        done = subprocess.run(
            ["ip", "netns", "exec", self.netns, "nft", "-j", "list", "table", "netdev", self.table],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if done.returncode != 0:
            raise BenchError(f"cannot read the counter in {self.netns}: {done.stderr.strip()}")
        for item in json.loads(done.stdout)["nftables"]:
            for expr in item.get("rule", {}).get("expr", []):
                if "counter" in expr:
                    return int(expr["counter"]["packets"])
        return 0

    def close(self) -> None:
        subprocess.run(
            ["ip", "netns", "exec", self.netns, "nft", "delete", "table", "netdev", self.table],
            capture_output=True,
            timeout=30,
        )


@contextmanager
def counters() -> Iterator[tuple[IngressCounter, IngressCounter]]:
    """(at the callee, at the caller), removed on the way out."""
    with ExitStack() as stack:
        callee = IngressCounter(CALLEE_NS, CALLEE_INGRESS, CALLEE_ADDR)
        stack.callback(callee.close)
        caller = IngressCounter(CALLER_NS, CALLER_INGRESS, CALLER_ADDR)
        stack.callback(caller.close)
        yield callee, caller


def confirm_ends(
    calls: kernel.KernelCalls, to_caller: list[tuple[int, str, int]], bench: Bench
) -> None:
    """One RTP packet per stream from the callee, then one from the caller (bench/kernel.py's
    order), the caller's in generator runs of CONFIRM_CHUNK streams."""
    kernel.confirm_callee(calls.callee_side)
    for k in range(0, len(to_caller), CONFIRM_CHUNK):
        bench.streams = to_caller[k : k + CONFIRM_CHUNK]
        bench._send(1, 0.001)  # the generator's pre-roll only: one packet per stream
    bench.streams = to_caller


def send_media(
    binary: Path,
    streams: Sequence[Sequence[tuple[int, str, int]]],
    sources: Sequence[tuple[str, str]],
    rate: float,
    seconds: float,
    place: Placement,
    nofile: int,
) -> list[dict[str, str]]:
    """One paced generator per direction, all at once, each ``rate`` pps for ``seconds``
    (no pre-roll); their outputs. Bounded: each generator stops at ``seconds``, and is
    killed 30 s after that at the latest."""
    gens: list[subprocess.Popen[str]] = []
    try:
        for share, (netns, addr) in zip(streams, sources, strict=True):
            gen = spawn(
                [str(binary), "send", "-a", addr, "-r", f"{rate:.1f}", "-d", str(seconds)],
                netns=netns,
                cpus=place.generators[:1],
                nofile=nofile,
                stdin=subprocess.PIPE,
            )
            gens.append(gen)
            assert gen.stdin is not None
            gen.stdin.write("".join(f"{src} {dst} {port}\n" for src, dst, port in share))
            gen.stdin.close()
        outputs = []
        for gen in gens:
            assert gen.stdout is not None and gen.stderr is not None
            out, err = gen.stdout.read(), gen.stderr.read()  # until it exits, at ``seconds``
            if gen.wait(30) != 0:
                raise BenchError(f"the generator failed: {err.strip()}")
            outputs.append(dict(item.split("=", 1) for item in out.split() if "=" in item))
        return outputs
    finally:
        for gen in gens:
            stop_process(gen)


# -- one daemon at one size --------------------------------------------------------------------


@dataclass(slots=True)
class ScaleRow:
    calls: int
    daemon: str
    label: str = ""
    workers: int = 0
    nofile: int = 0
    addresses: int = 1  # media addresses (more than one: the round-robin pool "pub")
    reached: int = 0  # calls set up (fewer than ``calls`` only when the set-up failed)
    setup_s: float = 0.0  # offer + answer of every call
    confirm_s: float = 0.0  # one packet per stream each way
    checked: int = 0  # calls queried for "kernelized" (relayd)
    kernelized: int = 0  # ... of which both RTP streams were
    kernelize_wait_s: float = 0.0  # after the confirming packets
    kernelized_after: int = 0  # of the same calls, after the media window
    teardown_s: float = 0.0  # delete of every call
    base: Window = field(default_factory=Window)  # no calls
    idle: Window = field(default_factory=Window)
    media: Window = field(default_factory=Window)
    held_base: Holdings = field(default_factory=Holdings)  # after the warm-up cycles
    held_idle: Holdings = field(default_factory=Holdings)  # every call set up, after idle
    held_media: Holdings = field(default_factory=Holdings)
    held_deleted: Holdings = field(default_factory=Holdings)  # after the tear-down
    kernel_bytes: int = 0  # kernel objects, calls set up and idle, less before the calls
    kernel_bytes_media: int = 0  # ... after the media window (conntrack entries too)
    conntrack_entries: int = 0  # in the relay's namespace with the calls idle
    conntrack_media: int = 0  # ... after the media window
    load_start: float = 0.0
    error: str = ""

    def per_call_bytes(self, after: Holdings) -> tuple[float, float]:
        """(main, workers) RSS bytes per call: ``after`` less the base, over the calls."""
        b = self.held_base
        return (
            (after.rss_main_kib - b.rss_main_kib) * 1024 / self.calls,
            (after.rss_workers_kib - b.rss_workers_kib) * 1024 / self.calls,
        )

    def fds_per_call(self) -> tuple[float, float]:
        b, a = self.held_base, self.held_idle
        return (a.fds_main - b.fds_main) / self.calls, (a.fds_workers - b.fds_workers) / self.calls

    def ports_per_call(self) -> float:
        return (self.held_idle.udp_ports - self.held_base.udp_ports) / self.calls

    def fds_per_port(self) -> float:
        ports = self.held_idle.udp_ports - self.held_base.udp_ports
        return sum(self.fds_per_call()) * self.calls / ports if ports else 0.0


def _sample(count: int, size: int) -> list[int]:
    """Every index up to ``size`` calls; above, ``size`` indices spread evenly."""
    if count <= size:
        return list(range(count))
    return sorted({round(k * (count - 1) / (size - 1)) for k in range(size)})


def wait_kernelized(calls: kernel.KernelCalls, indices: Sequence[int], timeout: float) -> int:
    """How many of the calls ``indices`` show both RTP streams kernelized, once all do or at
    ``timeout``; at most timeout / 0.5 rounds."""
    pending, deadline = list(indices), time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        pending = [i for i in pending if not calls.kernelized(i)]
        if pending:
            time.sleep(0.5)
    return len(indices) - len(pending)


def measure(
    row: ScaleRow,
    args: argparse.Namespace,
    binary: Path,
    place: Placement,
    workdir: Path,
    nofile: int,
) -> None:
    row.label, row.nofile, row.load_start = LABELS[row.daemon], nofile, os.getloadavg()[0]
    with ExitStack() as stack:
        addresses = media_addresses(row.calls, args.addresses)
        row.addresses = len(addresses)
        stack.enter_context(media_addresses_added(addresses))
        proc = stack.enter_context(running(row.daemon, args, place, workdir, nofile, addresses))
        with in_netns(RELAY_NS):
            client = stack.enter_context(
                NgClient((media.NG_HOST, media.NG_PORT), timeout=30.0, retries=1)
            )
        kernel.cycle_calls(client, kernel.WARM_CYCLES, f"{row.daemon}-warm")
        time.sleep(1.0)  # the workers' once-a-second report of the deletes
        row.held_base = holdings(proc.pid)
        row.workers = row.held_base.workers
        progress(f"{row.daemon}: base window, no calls, 2 x {args.base_window:g} s")
        row.base = measure_window(proc.pid, args.base_window, args.base_window, args)

        kernel0 = kernel.kernel_object_bytes(kernel.SOCKET_CACHES)
        calls = kernel.KernelCalls(client, row.calls, f"{row.daemon}-{row.calls}")
        stack.callback(_delete_quietly, calls)  # on failure; the daemon goes anyway
        progress(f"{row.daemon}: setting up {row.calls:,} calls")
        start = time.monotonic()
        try:
            to_caller = calls.setup()
        finally:
            row.reached = len(calls.live)
        row.setup_s = time.monotonic() - start
        callee, caller = stack.enter_context(counters())
        bench = Bench(binary, streams=to_caller, place=place, daemon_pid=None, nofile=nofile)
        start = time.monotonic()
        confirm_ends(calls, to_caller, bench)
        row.confirm_s = time.monotonic() - start
        indices = _sample(row.calls, args.sample)
        if row.daemon == RELAYD:
            start = time.monotonic()
            row.checked = len(indices)
            row.kernelized = wait_kernelized(calls, indices, args.offload_timeout)
            row.kernelize_wait_s = time.monotonic() - start
            if row.kernelized < row.checked:
                raise BenchError(
                    f"{row.kernelized} of {row.checked} calls kernelized after "
                    f"{row.kernelize_wait_s:.0f} s:\n{media._tail(workdir / 'relayd.log')}"
                )
        time.sleep(2.0)  # the workers' reports of the confirmed ends, relayd's offload
        row.kernel_bytes = kernel.kernel_object_bytes(kernel.SOCKET_CACHES) - kernel0
        row.conntrack_entries = kernel._conntrack_count()

        progress(
            f"{row.daemon}: {row.calls:,} calls idle, {args.window:g} + {args.ping_window:g} s"
        )
        row.idle = measure_window(proc.pid, args.window, args.ping_window, args)
        row.held_idle = holdings(proc.pid)

        if args.media_rate > 0:
            rate = args.media_rate * row.calls
            progress(
                f"{row.daemon}: media, {rate:,.0f} pps each way, "
                f"{args.window:g} + {args.ping_window:g} s"
            )
            to_callee = [(CALLEE_PORT, addr, port) for addr, port in calls.callee_side]
            before = (callee.packets(), caller.packets())
            outputs: list[dict[str, str]] = []
            failures: list[BaseException] = []
            duration = MEDIA_LEAD + args.window + args.ping_window + MEDIA_TAIL

            def flow() -> None:
                try:
                    outputs.extend(
                        send_media(
                            binary,
                            [to_caller, to_callee],
                            [(CALLER_NS, CALLER_ADDR), (CALLEE_NS, CALLEE_ADDR)],
                            rate,
                            duration,
                            place,
                            nofile,
                        )
                    )
                except (BenchError, OSError, subprocess.TimeoutExpired) as exc:
                    failures.append(exc)

            sender = threading.Thread(target=flow, name="media", daemon=True)
            sender.start()
            time.sleep(MEDIA_LEAD)  # the generators at their rate before measuring
            row.media = measure_window(proc.pid, args.window, args.ping_window, args)
            sender.join(duration + 40)  # send_media gives up 30 s after ``duration``
            if failures or sender.is_alive():
                raise BenchError(f"media: {failures[0] if failures else 'no end'}")
            time.sleep(0.5)  # the last packets through the relay
            row.media.target_pps = rate
            row.media.delivered = (
                callee.packets() - before[0],
                caller.packets() - before[1],
            )
            try:
                row.media.sent = (int(outputs[0]["sent"]), int(outputs[1]["sent"]))
                row.media.due = (int(outputs[0]["due"]), int(outputs[1]["due"]))
                row.media.lagged = (int(outputs[0]["lagged"]), int(outputs[1]["lagged"]))
                row.media.send_seconds = (
                    float(outputs[0]["seconds"]),
                    float(outputs[1]["seconds"]),
                )
            except (KeyError, ValueError, IndexError):
                raise BenchError(f"unexpected generator output: {outputs!r}") from None
            row.held_media = holdings(proc.pid)
            row.kernel_bytes_media = kernel.kernel_object_bytes(kernel.SOCKET_CACHES) - kernel0
            row.conntrack_media = kernel._conntrack_count()
            if row.daemon == RELAYD:
                row.kernelized_after = sum(calls.kernelized(i) for i in indices)

        progress(f"{row.daemon}: deleting {row.calls:,} calls")
        start = time.monotonic()
        calls.delete_all()
        row.teardown_s = time.monotonic() - start
        time.sleep(1.0)
        row.held_deleted = holdings(proc.pid)


def _delete_quietly(calls: kernel.KernelCalls) -> None:
    """Delete what a failed measurement left, as far as the daemon still answers."""
    with suppress(BenchError, NgTimeout, OSError):
        calls.delete_all()


def progress(text: str) -> None:
    print(f"... {text}", file=sys.stderr, flush=True)


# -- report ------------------------------------------------------------------------------------


def _pct(x: float) -> str:
    return f"{x:.2%}"


def _verdict(ok: bool) -> str:
    return "**pass**" if ok else "**FAIL**"


def _ping(w: Window) -> str:
    lost = f", {w.pings_lost} lost" if w.pings_lost else ""
    return f"{w.ping_p50_ms:.2f} / {w.ping_p99_ms:.2f} / {w.ping_max_ms:.1f} ms ({w.pings:,}{lost})"


def _cpu(main: float, workers: float, processes: int) -> str:
    if processes == 0:
        return f"{_pct(main + workers)} (one process)"
    return f"{_pct(main + workers)} ({_pct(main)} + {_pct(workers)})"


def _quiet(w: Window, processes: int) -> str:
    return _cpu(w.cpu_main, w.cpu_workers, processes)


def _pinged(w: Window, processes: int) -> str:
    return _cpu(w.cpu_main_pinged, w.cpu_workers_pinged, processes)


def _media(w: Window) -> str:
    if not w.target_pps:
        return "–"
    rates = [s / t if t else 0.0 for s, t in zip(w.sent, w.send_seconds, strict=True)]
    shares = [d / s if s else 0.0 for d, s in zip(w.delivered, w.sent, strict=True)]
    return (
        f"sent {rates[0]:,.0f} / {rates[1]:,.0f} pps (target {w.target_pps:,.0f}), "
        f"delivered {shares[0]:.1%} / {shares[1]:.1%}"
    )


def _rss(row: ScaleRow, after: Holdings) -> str:
    main, workers = row.per_call_bytes(after)
    if row.workers == 0:
        return f"{main:,.0f} B"
    return f"{main + workers:,.0f} B ({main:,.0f} + {workers:,.0f})"


def cells(row: ScaleRow) -> dict[str, str]:
    """The table's figures of one daemon at one size, by line."""
    if row.error:
        return {"setup": f"**failed** after {row.reached:,} calls set up: {row.error}"}
    per_call = row.fds_per_call()
    fds = f"{sum(per_call):.2f}"
    if row.workers:
        fds += f" ({per_call[0]:.2f} + {per_call[1]:.2f})"
    left = row.held_deleted
    base = row.held_base
    kernelized = "–"
    if row.checked:
        kernelized = f"{row.kernelized:,} of {row.checked:,} / {row.kernelized_after:,} after media"
    return {
        "setup": f"{row.setup_s:.1f} s ({row.setup_s / row.calls * 1000:.2f} ms per call)",
        "confirm": f"{row.confirm_s:.1f} s"
        + (f", then kernelized in {row.kernelize_wait_s:.1f} s" if row.checked else ""),
        "kernelized": kernelized,
        "teardown": f"{row.teardown_s:.1f} s ({row.teardown_s / row.calls * 1000:.2f} ms per call)",
        "base cpu": _quiet(row.base, row.workers),
        "base cpu pinged": _pinged(row.base, row.workers),
        "base ping": _ping(row.base),
        "idle cpu": _quiet(row.idle, row.workers),
        "idle cpu pinged": _pinged(row.idle, row.workers),
        "idle ping": _ping(row.idle),
        "media": _media(row.media),
        "media cpu": _quiet(row.media, row.workers) if row.media.target_pps else "–",
        "media cpu pinged": _pinged(row.media, row.workers) if row.media.target_pps else "–",
        "media ping": _ping(row.media) if row.media.target_pps else "–",
        "rss": _rss(row, row.held_idle),
        "rss media": _rss(row, row.held_media) if row.media.target_pps else "–",
        "kernel": f"{row.kernel_bytes / row.calls:,.0f} B / "
        + (f"{row.kernel_bytes_media / row.calls:,.0f} B" if row.media.target_pps else "–"),
        "fds": fds,
        "ports": f"{row.ports_per_call():.2f}",
        "fds per port": f"{row.fds_per_port():.2f}",
        "deleted": f"{left.fds_main + left.fds_workers - base.fds_main - base.fds_workers:+,}"
        f" descriptors, {left.udp_ports - base.udp_ports:+,} ports",
        "conntrack": f"{row.conntrack_entries:,} / "
        + (f"{row.conntrack_media:,}" if row.media.target_pps else "–"),
        "nofile": f"{row.nofile:,}",
        "addresses": f"{row.addresses}" + (f" (pool {POOL!r})" if row.addresses > 1 else ""),
    }


LINES = [  # key, label, target
    ("addresses", "media addresses", ""),
    ("setup", "set-up: offer + answer of every call", ""),
    ("confirm", "one packet per stream each way", ""),
    ("kernelized", "calls kernelized (checked) / after the media window", ""),
    ("teardown", "tear-down: delete of every call", ""),
    ("base cpu", "CPU, no calls (main + workers)", ""),
    ("base cpu pinged", "CPU, no calls, with the ng pinger", ""),
    ("base ping", "ng ping p50 / p99 / max, no calls (pings)", ""),
    ("idle cpu", "**CPU, calls idle** (main + workers)", "≤ 2 % of one core"),
    ("idle cpu pinged", "CPU, calls idle, with the ng pinger", ""),
    ("idle ping", "**ng ping p50 / p99 / max, calls idle**", "p99 ≤ 5 ms"),
    ("media", "media (each way: caller → callee / callee → caller)", ""),
    ("media cpu", "**CPU with media** (main + workers)", ""),
    ("media cpu pinged", "CPU with media, with the ng pinger", ""),
    ("media ping", "**ng ping p50 / p99 / max, with media**", "p99 ≤ 5 ms"),
    ("rss", "**RSS per call, idle** (main + workers)", "≤ 10 KB"),
    ("rss media", "RSS per call after the media window", "≤ 10 KB"),
    ("kernel", "kernel memory per call, idle / after media (machine-wide: noisy)", ""),
    ("fds", "descriptors per call (main + workers)", ""),
    ("ports", "UDP ports bound per call", ""),
    ("fds per port", "**descriptors per port**", "≤ 1"),
    ("deleted", "left after the tear-down, against before the calls", ""),
    ("conntrack", "conntrack entries in the relay's namespace, idle / after media", ""),
    ("nofile", "descriptor limit (RLIMIT_NOFILE)", ""),
]


def verdicts(row: ScaleRow) -> dict[str, str]:
    """relayd's verdict per line that has a target."""
    if row.error:
        return {}
    found = {
        "idle cpu": _verdict(row.idle.cpu <= TARGET_CPU),
        "idle ping": _verdict(row.idle.ping_p99_ms <= TARGET_P99_MS and not row.idle.pings_lost),
        "rss": _verdict(sum(row.per_call_bytes(row.held_idle)) <= TARGET_RSS_PER_CALL),
        "fds per port": _verdict(row.fds_per_port() <= TARGET_FDS_PER_PORT),
    }
    if row.media.target_pps:
        ok = row.media.ping_p99_ms <= TARGET_P99_MS and not row.media.pings_lost
        found["media ping"] = _verdict(ok)
        found["rss media"] = _verdict(
            sum(row.per_call_bytes(row.held_media)) <= TARGET_RSS_PER_CALL
        )
    return found


def render(rows: Sequence[ScaleRow], args: argparse.Namespace) -> str:
    out: list[str] = []
    for calls in dict.fromkeys(r.calls for r in rows):
        group = {r.daemon: r for r in rows if r.calls == calls}
        daemons = [d for d in (RELAYD, RTPENGINE) if d in group]
        columns = {d: cells(group[d]) for d in daemons}
        verdict = verdicts(group[RELAYD]) if RELAYD in group else {}
        out += [
            f"### {calls:,} calls",
            "",
            "| | " + " | ".join(LABELS[d] for d in daemons) + " | target (issue 13) | relayd |",
            "|---|" + "---:|" * len(daemons) + "---|---|",
        ]
        for key, label, target in LINES:
            figures = [columns[d].get(key, "–") for d in daemons]
            out.append(
                f"| {label} | " + " | ".join(figures) + f" | {target} | {verdict.get(key, '')} |"
            )
        out.append("")
    out.append(
        f"Windows: no calls {args.base_window:g} s, idle and media {args.window:g} s each with "
        "no ng traffic at all (the CPU lines with the targets), each followed by "
        f"{args.base_window:g} / {args.ping_window:g} s with a sequential ng client sending ping "
        f"every {args.ping_interval * 1000:g} ms (the latencies, and the CPU 'with the ng "
        f"pinger'); media {args.media_rate:g} packet/s per "
        "stream per direction on every call. CPU: utime + stime over wall time, share of one "
        "core. RSS, descriptors, ports: with the calls idle, less after 100 calls set up and "
        "deleted, over the calls. Kernel memory: bench/kernel.py's slab (kmalloc, nf_*, UDP, "
        "socket inode, file, dentry, epoll), Percpu and VmallocUsed, machine-wide. Targets: "
        "≤ 2 % stated at 10,000 calls; 10 KB taken as 10,000 B."
    )
    return "\n".join(out)


# -- main --------------------------------------------------------------------------------------


def raise_file_limit() -> tuple[int, str]:
    """RLIMIT_NOFILE as high as it goes: the kernel's ceiling (fs.nr_open) where this process
    may raise its hard limit (CAP_SYS_RESOURCE), else the hard limit. (The limit, why.)"""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        ceiling = int(Path("/proc/sys/fs/nr_open").read_text())
    except (OSError, ValueError):
        ceiling = hard
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, ceiling))
        return ceiling, "fs.nr_open"
    except (ValueError, OSError):
        pass
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        return soft, "the soft limit: it could not be raised"
    return hard, f"the hard limit: raising it to fs.nr_open ({ceiling:,}) was refused"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/scale.py", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument(
        "--calls", default="1000,5000,10000", help="call counts (default %(default)s)"
    )
    parser.add_argument(
        "--only", choices=(RELAYD, RTPENGINE), help="one daemon instead of both side by side"
    )
    parser.add_argument(
        "--window",
        type=float,
        default=30.0,
        help="CPU windows with the calls idle and with media, no ng traffic (default 30 s)",
    )
    parser.add_argument(
        "--ping-window",
        type=float,
        default=20.0,
        help="then as long with the ng pinger running: its latencies (default 20 s)",
    )
    parser.add_argument(
        "--base-window", type=float, default=10.0, help="no calls: each part (default 10 s)"
    )
    parser.add_argument(
        "--ping-interval", type=float, default=0.02, help="seconds between ng pings (0.02)"
    )
    parser.add_argument(
        "--media-rate",
        type=float,
        default=1.0,
        help="packets/s per stream per direction in the media window (default 1; 0 = none)",
    )
    parser.add_argument(
        "--timeout", type=int, default=86400, help="the daemons' --timeout, s (no idle reaping)"
    )
    parser.add_argument(
        "--silent-timeout", type=int, default=86400, help="the daemons' --silent-timeout, s"
    )
    parser.add_argument(
        "--sample",
        type=int,
        default=200,
        help="calls queried for kernelized: all of them up to this many, a spread sample above",
    )
    parser.add_argument(
        "--offload-timeout",
        type=float,
        help="seconds to wait for the sampled calls to be kernelized (default 30 + 5 ms per call)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        help="relayd workers / rtpengine threads (default: as few as hold the largest size's "
        "ports at the descriptor limit, one descriptor per port)",
    )
    parser.add_argument(
        "--addresses",
        type=int,
        default=1,
        help="media addresses at least (default: as many as the calls need, 12,400 each)",
    )
    parser.add_argument(
        "--relayd-source", type=Path, default=REPO, metavar="DIR", help="relayd tree to run"
    )
    parser.add_argument("--relayd-rev", metavar="REV", help="run relayd as committed at REV")
    parser.add_argument("--log-level", type=int, default=3, help="daemons' log level")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--keep-logs", metavar="DIR", help="write the daemons' logs here")
    args = parser.parse_args(argv)
    args.calls = media._int_list(args.calls)
    if not args.calls or min(args.calls) < 1 or max(args.calls) > CALLS_MAX:
        parser.error(f"--calls: 1 to {CALLS_MAX:,}")
    if min(args.window, args.ping_window, args.base_window) <= 0 or not (
        0.001 <= args.ping_interval <= 10
    ):
        parser.error("windows must be positive, --ping-interval between 0.001 and 10 s")
    if args.media_rate < 0 or args.media_rate * max(args.calls) > 500_000:
        parser.error("--media-rate: at most 500,000 packets/s per direction in all")
    if args.sample < 2:
        parser.error("--sample: at least 2")
    if not 1 <= args.addresses <= len(media_addresses(CALLS_MAX)):
        parser.error(f"--addresses: 1 to {len(media_addresses(CALLS_MAX))}")
    args.daemons = [args.only] if args.only else [RELAYD, RTPENGINE]
    args.offload_timeout = args.offload_timeout or 30.0 + 0.005 * max(args.calls)
    if len(os.sched_getaffinity(0)) < 2:
        parser.error("needs at least 2 CPUs: one for the daemon, one for the generator")
    return args


def run_all(
    args: argparse.Namespace, place: Placement, nofile: int, tmp: Path
) -> tuple[list[ScaleRow], bool]:
    rows: list[ScaleRow] = []
    failed = False
    workdir = Path(args.keep_logs) if args.keep_logs else tmp
    workdir.mkdir(parents=True, exist_ok=True)
    binary = compile_generator(tmp)
    if args.relayd_rev:
        args.relayd_source = tmp / "relayd-src"
        media.export_revision(args.relayd_rev, args.relayd_source)
    os.sched_setaffinity(0, set(place.generators))  # off the daemon's core
    with topology():
        steer_media(place, sink=False)
        for calls in args.calls:
            for daemon in args.daemons:
                row = ScaleRow(calls, daemon)
                try:
                    measure(row, args, binary, place, workdir, nofile)
                except (BenchError, NgTimeout, subprocess.TimeoutExpired, OSError) as exc:
                    print(f"{daemon}, {calls:,} calls failed: {exc}", file=sys.stderr)
                    row.error = str(exc).split("\n")[0][:160]
                    failed = True
                rows.append(row)
    return rows, failed


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if os.geteuid() != 0:
        print("bench/scale.py needs root (network namespaces, nftables)", file=sys.stderr)
        return 2
    if RTPENGINE in args.daemons and not os.access(media.RTPENGINE_BIN, os.X_OK):
        print(f"{media.RTPENGINE_BIN} not found: use --only relayd", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, media._terminate)
    cpus = sorted(os.sched_getaffinity(0))
    place = placement(1, 1, cpus)
    assert place is not None  # parse_args: two CPUs at least
    nofile, why = raise_file_limit()
    chosen = args.workers is None
    if chosen:
        args.workers = workers_for(max(args.calls), nofile)
    command = shlex.join(
        [media._relative(sys.executable), media._relative(sys.argv[0]), *sys.argv[1:]]
    )
    header = [
        f"$ {command}",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {media.describe_machine()}",
        media.describe_relayd(args),
        f"Daemon on core {place.relay[0]}, generators and this script on core "
        f"{place.generators[0]}; namespaces {NETNS_PREFIX}-*; descriptor limit "
        f"(RLIMIT_NOFILE) {nofile:,} for the daemons ({why}); load average "
        f"{os.getloadavg()[0]:.2f} at start.",
    ]
    ports = max(args.calls) * media.PORTS_PER_STREAM
    header.append(
        f"relayd workers / rtpengine threads: {args.workers}"
        + (
            f" (the fewest that hold {ports:,} ports at {nofile:,} descriptors each; --workers)"
            if chosen
            else ""
        )
        + "."
    )
    if ports + 1000 > nofile:
        header.append(
            f"Warning: {max(args.calls):,} calls hold {ports:,} ports; a process that holds a "
            f"descriptor for each (rtpengine) runs out at {nofile:,}."
        )
    print("\n".join(header), flush=True)
    lock_path = f"/run/lock/relayd-bench-{NETNS_PREFIX}.lock"
    if NETNS_PREFIX == "rbm":
        lock_path = media.LOCK_FILE  # the lab of bench/media.py and bench/kernel.py
    with open(lock_path, "w") as lock, tempfile.TemporaryDirectory(prefix="rbs-") as tmp:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"another benchmark holds {lock_path}", file=sys.stderr)
            return 2
        try:
            rows, failed = run_all(args, place, nofile, Path(tmp))
        except BenchError as exc:
            print(f"bench/scale.py: {exc}", file=sys.stderr)
            return 1
    print()
    print(render(rows, args))
    print(f"\nLoad average {os.getloadavg()[0]:.2f} at the end.")
    if args.json:
        payload = {
            "command": command,
            "machine": header[2:],
            "nofile": nofile,
            "args": {k: str(v) for k, v in vars(args).items()},
            "rows": [asdict(r) for r in rows],
        }
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)  # namespaces and processes were removed on the way out
