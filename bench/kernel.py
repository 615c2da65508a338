#!/usr/bin/env python3
"""Kernel-path benchmark: relayd with ``--table 0`` (nftables forwarding) in bench/media.py's lab.

The same three namespaces, C generator, nft counter and lossless-rate search as
bench/media.py (imported from it, not copied). For each number of streams:

1. **generator check**: no daemon, rbm-relay routes caller → callee itself
   (``ip_forward``); the highest rate the generator can push through at all;
2. **relayd-kernel**: relayd with ``--table 0 --tos 184`` and ``ip_forward=1`` in
   rbm-relay. Calls are set up over ng; the callee and then the caller send one
   packet per stream (both ends confirmed) and relayd offloads each call to
   nftables about a second later. The benchmark waits until ng ``query`` shows
   both RTP streams of every call ``kernelized``, checks that every stream
   arrives unchanged through the kernel, then searches the max lossless rate.
   ``--offload-under-load`` lets media flow at 50 pps per stream during the
   offload instead, as in real calls;
3. **relayd** (userspace, ``--table -1``) and, with ``--relays``, rtpengine:
   the same calls, the same search, in a group of their own (no nftables table,
   no conntrack in the namespace while they run).

Per row it records the daemon's own CPU (utime + stime of relayd and its
workers, from /proc), the relay core's time per state (/proc/stat of the pinned
core: kernel forwarding runs in softirq and is charged to no process) and what
that makes per delivered packet, the generator core's share (near 100%:
generator-bound), how long the trials at the max rate outlasted the generator
(a relay working off its socket queues), the relay core's and the daemon's
idle share before the search (other tenants, relayd's once-a-second counter
reads), the datagrams that reached sockets in rbm-relay during the search (0
when the kernel forwards everything), and the daemon's RSS (main process and
workers) and the kernel's memory per established call.

``--kernel-memory`` adds a kernel-memory phase without a daemon: relayd's own
table code (``nft.KernelForwarder``) installs N forwards (N/2 streams, both
directions) in rbm-relay, the generator sends one packet per stream (one
conntrack entry each), and /proc/meminfo and /proc/slabinfo are read before,
after the install, after the packets and after the clean-up. Repeated, median
kept; machine-wide counters, so other load on the machine is noise.
``--render FILE`` prints the tables of a saved ``--json`` run again.

    sudo .venv/bin/python bench/kernel.py                       # 1, 100, 1,000 streams
    sudo .venv/bin/python bench/kernel.py --quick --streams 1 --relays kernel
    sudo .venv/bin/python bench/kernel.py --record --relays kernel,rtpengine   # recorded calls
    sudo .venv/bin/python bench/kernel.py --repeat 3 --relays kernel,relayd,rtpengine \\
        --kernel-memory 1000,10000 --json out.json

Only namespace traffic; namespaces, nft tables, conntrack entries and
processes are removed at the end, also on Ctrl-C or failure. Takes the same
lock as bench/media.py: the two never run at the same time.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shlex
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO, REPO / "bench"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import media  # noqa: E402
from medialab import (  # noqa: E402
    CALLEE_ADDR,
    CALLEE_NS,
    CALLEE_PORT,
    CALLER_ADDR,
    CALLER_PORT0,
    CALLER_PORTS,
    MEDIA_ADDR,
    PREROLL_MS,
    RELAY_NS,
    RTP_SIZE,
    Bench,
    BenchError,
    Placement,
    Trial,
    compile_generator,
    file_limit,
    in_netns,
    kernel_forwarding,
    placement,
    process_cpu,
    process_tree,
    spawn,
    steer_media,
    stop_process,
    topology,
)

from relayd.ng.client import NgClient, NgTimeout  # noqa: E402

__all__ = ["main"]

RELAYS = {"kernel": "relayd-kernel", "relayd": "relayd", "rtpengine": "rtpengine"}  # --relays
KERNEL = "relayd-kernel"  # relayd --table 0
GENERATOR = "generator"  # the generator check: no daemon
NFT_TABLE = "relayd"  # what relayd calls its table for --table 0
MEMORY_TABLE = "rbmmem"  # the kernel-memory phase's own table
TOS_EF = 184
WARM_CYCLES = 100  # calls set up and deleted before the RSS baseline
IDLE_SECONDS = 5.0
SSRC_CALLEE = 0x52430000


# -- the kernel daemon and its calls -----------------------------------------------------------


def kernel_argv(spec: media.DaemonSpec, log_level: int, tos: int) -> list[str]:
    """bench/media.py's relayd command line with the kernel path on."""
    argv = media.daemon_argv(spec, log_level)
    argv[argv.index("--table") + 1] = "0"
    return [*argv, "--tos", str(tos)]


@contextmanager
def running_kernel_relayd(
    spec: media.DaemonSpec,
    place: Placement,
    workdir: Path,
    nofile: int,
    args: argparse.Namespace,
) -> Iterator[subprocess.Popen[str]]:
    """relayd --table 0 in rbm-relay, once it answers ping; its table and flows go with it."""
    log_path = workdir / f"relayd-kernel-{spec.workers}.log"
    env = dict(os.environ, PYTHONPATH=str(args.relayd_source))
    with open(log_path, "a") as log:
        proc = spawn(
            kernel_argv(spec, max(args.log_level, 4), args.tos),  # warnings: kernel.unavailable
            netns=RELAY_NS,
            cpus=place.relay,
            nofile=nofile,
            stdout=log,
            cwd=workdir,
            env=env,
        )
    try:
        media.wait_for_pong(proc, spec.ng_port, "relayd", log_path)
        time.sleep(0.2)
        if "kernel.unavailable" in log_path.read_text(errors="replace"):
            raise BenchError(f"relayd's kernel path is off:\n{media._tail(log_path)}")
        yield proc
    finally:
        stop_process(proc)
        forget_kernel_state(NFT_TABLE)


def kernel_diagnostics(workdir: Path) -> Path:
    """rbm-relay's conntrack entries and relayd's table, for a failure report."""
    path = workdir / "kernel-state.txt"
    with open(path, "w") as out:
        for argv in (("conntrack", "-L", "-p", "udp"), ("nft", "list", "table", "inet", NFT_TABLE)):
            done = subprocess.run(
                ["ip", "netns", "exec", RELAY_NS, *argv], capture_output=True, text=True, timeout=30
            )
            out.write(f"$ {shlex.join(argv)}\n{done.stdout}{done.stderr}\n")
    return path


def forget_kernel_state(table: str) -> None:
    """relayd leaves its table and flows behind on purpose (restarts): remove them."""
    for argv in (("nft", "delete", "table", "inet", table), ("conntrack", "-F")):
        subprocess.run(
            ["ip", "netns", "exec", RELAY_NS, *argv], capture_output=True, text=True, timeout=30
        )


class KernelCalls(media.Calls):
    """bench/media.py's calls, also keeping the relay's callee-side address of each."""

    def __init__(self, client: NgClient, streams: int, tag: str, record: bool = False) -> None:
        super().__init__(client, streams, tag, record)
        self.callee_side: list[tuple[str, int]] = []

    def setup(self) -> list[tuple[int, str, int]]:
        targets = []
        self.callee_side = []
        for i in range(self.count):
            call_id = f"rbm-{self.tag}-{self.generation}-{i}@{CALLER_ADDR}"
            # past CALLER_PORTS calls (bench/scale.py's 100,000) the caller's ports repeat:
            # each call still has relay ports of its own, so every flow stays distinct
            caller_port = CALLER_PORT0 + 2 * (i % CALLER_PORTS)
            common = {"call-id": call_id, "from-tag": f"caller-{i}"}
            sdp = media._sdp("caller", CALLER_ADDR, caller_port, i)
            offer = self._ok({"command": "offer", "sdp": sdp, **common, **self.record})
            self.live.append(call_id)
            sdp = media._sdp("callee", CALLEE_ADDR, CALLEE_PORT, i)
            answer = self._ok({"command": "answer", "sdp": sdp, "to-tag": f"callee-{i}", **common})
            to_callee, to_caller = _relay_side(offer, i), _relay_side(answer, i)
            self.callee_side.append(to_callee)
            targets.append((caller_port, *to_caller))
        return targets

    def delete_all(self) -> None:
        for i, call_id in enumerate(self.live):
            self._ok({"command": "delete", "call-id": call_id, "from-tag": f"caller-{i}"})
        self.live = []

    def kernelized(self, i: int) -> bool:
        """Both parties' RTP streams of call ``i`` are in the kernel (ng ``query`` flags)."""
        reply = self._ok({"command": "query", "call-id": self.live[i]})
        tags: dict[str, Any] = reply.get("tags", {})  # type: ignore[assignment]
        for tag in (f"caller-{i}", f"callee-{i}"):
            try:
                flags = tags[tag]["medias"][0]["streams"][0]["flags"]
            except (KeyError, IndexError, TypeError):
                return False
            if "kernelized" not in flags:
                return False
        return True


def _relay_side(reply: dict[str, object], i: int) -> tuple[str, int]:
    text = str(reply.get("sdp", ""))
    port, addr = media._M_LINE.search(text), media._C_LINE.search(text)
    if port is None or addr is None:
        raise BenchError(f"call {i}: no relay address in the SDP:\n{text}")
    return addr.group(1), int(port.group(1))


def confirm_callee(targets: Sequence[tuple[str, int]]) -> None:
    """One RTP packet per stream from the callee's address and port, as a phone would send:
    the relay learns and confirms the callee's end of each stream."""
    with in_netns(CALLEE_NS):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((CALLEE_ADDR, CALLEE_PORT))
        for i, target in enumerate(targets):
            header = struct.pack("!BBHII", 0x80, 0, 1, 160, SSRC_CALLEE + i)
            sock.sendto(header + bytes(RTP_SIZE - len(header)), target)
            if i % 64 == 63:
                time.sleep(0.001)  # no burst past the relay's socket buffers


def wait_kernelized(calls: KernelCalls, timeout: float) -> tuple[int, float]:
    """(calls kernelized, seconds waited) once all are, or at ``timeout``."""
    start = time.monotonic()
    pending = list(range(len(calls.live)))
    while pending:
        pending = [i for i in pending if not calls.kernelized(i)]
        if not pending or time.monotonic() - start > timeout:
            break
        time.sleep(0.2)
    return len(calls.live) - len(pending), time.monotonic() - start


def offload(
    row: KernelRow,
    run: Callable[..., Trial],
    bench: Bench,
    calls: KernelCalls,
    args: argparse.Namespace,
    workdir: Path,
) -> None:
    """Both ends of every stream confirmed, every call kernelized, every stream delivered
    through the kernel; or a BenchError with the namespace's conntrack and nft state.

    By default the caller sends one packet per stream and nothing is in flight when
    relayd offloads. With ``--offload-under-load`` media flows at 50 pps per stream while
    it does, as in a real call."""
    confirm_callee(calls.callee_side)
    if args.offload_under_load:
        rate = min(50 * row.streams, 50_000)
        run(rate, args.offload_load_seconds, "offload under load")
    else:
        bench._send(1, 0.001)  # the generator's pre-roll only: one packet per stream
    row.kernelized, row.offload_wait_s = wait_kernelized(calls, args.offload_timeout)
    if row.kernelized < row.streams:
        log = media._tail(workdir / "relayd-kernel-1.log")
        raise BenchError(
            f"{row.kernelized} of {row.streams} calls kernelized after "
            f"{row.offload_wait_s:.1f} s:\n{log}"
        )
    try:
        media.warm_up(run, row.streams, min(2000, args.start_rate))
    except BenchError as exc:
        dump = kernel_diagnostics(workdir)
        raise BenchError(f"through the kernel: {exc} (state in {dump})") from None


def cycle_calls(client: NgClient, count: int, tag: str) -> None:
    """Set up and delete ``count`` calls: the daemon's allocator and caches warm up."""
    calls = KernelCalls(client, count, tag)
    calls.setup()
    calls.delete_all()


# -- measurements -------------------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss(root: int) -> tuple[int, int]:
    """VmRSS in KiB of ``root`` and of its descendants (relayd's workers)."""
    return rss_kib(root), sum(rss_kib(pid) for pid in process_tree(root)[1:])


def meminfo() -> dict[str, int]:
    """/proc/meminfo in KiB."""
    found = {}
    with open("/proc/meminfo") as f:
        for line in f:
            name, value, *_ = line.split()
            found[name.rstrip(":")] = int(value)
    return found


def slab(name: str) -> tuple[int, int]:
    """(active objects, object size) of one slab cache; (0, 0) if absent or merged away."""
    try:
        with open("/proc/slabinfo") as f:
            for line in f:
                fields = line.split()
                if fields and fields[0] == name:
                    return int(fields[1]), int(fields[3])
    except OSError:
        pass
    return 0, 0


def udp_in_datagrams(pid: int) -> int:
    """Datagrams delivered to UDP sockets in ``pid``'s network namespace."""
    with open(f"/proc/{pid}/net/snmp") as f:
        lines = [line.split() for line in f if line.startswith("Udp:")]
    header, values = lines[0], lines[1]
    return int(values[header.index("InDatagrams")])


STAT_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
_TICK = os.sysconf("SC_CLK_TCK")


def core_times(cpus: Sequence[int]) -> dict[str, float]:
    """Seconds ``cpus`` spent in each /proc/stat state, summed over them."""
    total = dict.fromkeys(STAT_FIELDS, 0.0)
    with open("/proc/stat") as f:
        for line in f:
            name, *values = line.split()
            if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
                for key, value in zip(STAT_FIELDS, values, strict=False):
                    total[key] += int(value) / _TICK
    return total


def _delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {key: round(after[key] - before[key], 4) for key in STAT_FIELDS}


def busy(times: dict[str, float]) -> float:
    """Non-idle seconds (softirq and steal included)."""
    return sum(times.values()) - times["idle"] - times["iowait"]


class TimedBench(Bench):
    """A :class:`Bench` that also keeps, for its last trial, the wall-clock time and the
    time the relay's and the generator's cores spent in each state (user, system,
    softirq, steal, ...)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.last_wall = 0.0
        self.last_relay: dict[str, float] = {}
        self.last_generator: dict[str, float] = {}

    def trial(self, rate: int, seconds: float) -> Trial:
        relay, generator = core_times(self.place.relay), core_times(self.place.generators)
        start = time.monotonic()
        try:
            return super().trial(rate, seconds)
        finally:
            self.last_wall = time.monotonic() - start
            self.last_relay = _delta(core_times(self.place.relay), relay)
            self.last_generator = _delta(core_times(self.place.generators), generator)


@dataclass(slots=True)
class KernelRow(media.Row):
    kernelized: int = 0  # calls with both RTP streams kernelized before the search
    kernelized_after: int = 0  # ... and after it
    offload_wait_s: float = 0.0  # waited for that after the caller's first packets
    socket_datagrams: int = -1  # reached sockets in rbm-relay during the search
    # shares of the relay core (/proc/stat, over wall time) and the daemon's CPU share
    idle_core_busy: float = 0.0  # no media flowing: other tenants, timers, counter reads
    idle_softirq: float = 0.0
    idle_daemon_cpu: float = 0.0
    idle_main_cpu: float = 0.0  # its main process alone (relayd: signalling, counter reads)
    max_core_busy: float = 0.0  # in the best trial of the search (the max lossless rate)
    max_softirq: float = 0.0
    max_steal: float = 0.0
    max_generator_busy: float = 0.0  # the generator's core, over the generator's send time
    max_daemon_cpu: float = 0.0
    lag_s: float = 0.0  # trials at the max rate: wall time less the generator's send time
    # per delivered packet, medians over the lossless trials at ≥ half the max rate: the
    # relay core's busy time and its softirq part (/proc/stat, less the idle shares) and
    # the daemon's CPU time (which includes softirq work done while it ran: tick
    # accounting charges a tick to the running process and to softirq alike)
    loaded_trials: int = 0
    busy_us_per_packet: float = 0.0
    busy_us_range: tuple[float, float] = (0.0, 0.0)  # lowest and highest of those trials
    softirq_us_per_packet: float = 0.0
    daemon_us_per_packet: float = 0.0
    cpu_core_busy: float = 0.0  # in the CPU trial at --cpu-rate
    cpu_softirq: float = 0.0
    cpu_daemon_cpu: float = 0.0
    rss_base_kib: tuple[int, int] = (0, 0)  # (main, workers) after the warm-up cycles
    rss_kib: tuple[int, int] = (0, 0)  # with every call established
    kernel_bytes_delta: int = 0  # kernel_object_bytes: calls set up → established (noisy)


def _timed_runner(
    row: KernelRow,
    bench: TimedBench,
    args: argparse.Namespace,
    renew: Callable[[], list[tuple[int, str, int]]] | None,
) -> Callable[..., Trial]:
    inner = media._runner(row, bench, args, renew)

    def run(rate: int, seconds: float = args.duration, purpose: str = "") -> Trial:
        trial = inner(rate, seconds, purpose)
        row.trials[-1]["wall_s"] = bench.last_wall
        row.trials[-1]["relay_core"] = bench.last_relay
        row.trials[-1]["generator_core"] = bench.last_generator
        return trial

    return run


def _idle(group: Sequence[tuple[KernelRow, int]], place: Placement) -> None:
    """The relay core's and each daemon's CPU share while no media flows."""
    trees = [process_tree(pid) for _, pid in group]
    cpu0 = [process_cpu(t) for t in trees]
    main0 = [process_cpu([pid]) for _, pid in group]
    times0, start = core_times(place.relay), time.monotonic()
    time.sleep(IDLE_SECONDS)
    wall = time.monotonic() - start
    times = _delta(core_times(place.relay), times0)
    for (row, pid), tree, before, main in zip(group, trees, cpu0, main0, strict=True):
        row.idle_main_cpu = (process_cpu([pid]) - main) / wall
        row.idle_core_busy = busy(times) / wall / len(place.relay)
        row.idle_softirq = times["softirq"] / wall / len(place.relay)
        row.idle_daemon_cpu = (process_cpu(tree) - before) / wall


def summarise_search(row: KernelRow) -> None:
    """CPU figures of the search: shares in the last trial at the max rate; costs per packet
    as medians over every lossless trial at half the max rate or more (loaded trials)."""
    cores, generators = len(row.relay_cores), len(row.generator_cores)
    trials: list[dict[str, Any]] = row.trials
    passing = [
        t
        for t in trials
        if not t["purpose"] and t.get("wall_s") and t["received"] and t["rate"] <= row.max_pps
    ]
    loaded = [t for t in passing if t["rate"] >= row.max_pps / 2]
    best = [t for t in passing if t["rate"] == row.max_pps]
    if not best:
        return
    t = best[-1]
    wall, relay = t["wall_s"], t["relay_core"]
    row.max_core_busy = busy(relay) / wall / cores
    row.max_softirq = relay["softirq"] / wall / cores
    row.max_steal = relay["steal"] / wall / cores
    row.max_generator_busy = busy(t["generator_core"]) / _sending(t) / generators
    row.max_daemon_cpu = t["process_cpu_s"] / wall
    row.lag_s = statistics.median(b["wall_s"] - _sending(b) for b in best)
    row.loaded_trials = len(loaded)
    idle_busy, idle_softirq = row.idle_core_busy * cores, row.idle_softirq * cores

    def costs(cost: Callable[[dict[str, Any]], float]) -> list[float]:
        return [max(cost(x), 0.0) / x["received"] * 1e6 for x in loaded]

    def per_packet(cost: Callable[[dict[str, Any]], float]) -> float:
        return statistics.median(costs(cost))

    each = costs(lambda x: busy(x["relay_core"]) - idle_busy * x["wall_s"])
    row.busy_us_per_packet = statistics.median(each)
    row.busy_us_range = (min(each), max(each))
    row.softirq_us_per_packet = per_packet(
        lambda x: x["relay_core"]["softirq"] - idle_softirq * x["wall_s"]
    )
    row.daemon_us_per_packet = per_packet(lambda x: x["process_cpu_s"])


def _sending(trial: dict[str, Any]) -> float:
    return float(trial["seconds"]) + PREROLL_MS / 1000


def summarise_cpu(row: KernelRow, cpu: Trial, wall: float, times: dict[str, float]) -> None:
    """CPU figures of the trial at the fixed ``--cpu-rate``."""
    cores = len(row.relay_cores)
    if wall > 0:
        row.cpu_core_busy = busy(times) / wall / cores
        row.cpu_softirq = times["softirq"] / wall / cores
        row.cpu_daemon_cpu = cpu.process_cpu_s / wall
    if cpu.received:
        row.cpu_s_per_10k = cpu.process_cpu_s / cpu.received * 10_000
        row.core_s_per_10k = cpu.core_busy_s / cpu.received * 10_000


@dataclass(slots=True)
class Contender:
    row: KernelRow
    bench: TimedBench
    run: Callable[..., Trial]
    pid: int
    calls: KernelCalls


def measure_daemons(
    rows: Sequence[KernelRow],
    args: argparse.Namespace,
    binary: Path,
    place: Placement,
    workdir: Path,
    nofile: int,
) -> None:
    """One group: relayd-kernel alone, or the userspace daemons side by side (as
    bench/media.py runs them: interleaved searches on the same core)."""
    steer_media(place, sink=True)
    media._check_quiet(rows, place)
    span = (media.RELAY_PORT_MAX - media.RELAY_PORT_MIN + 1) // len(rows)
    kernel = any(r.relay == KERNEL for r in rows)
    with ExitStack() as stack:
        if kernel:
            stack.enter_context(kernel_forwarding())
        group: list[Contender] = []
        for k, row in enumerate(rows):
            low = media.RELAY_PORT_MIN + k * span
            daemon = "relayd" if row.relay == KERNEL else row.relay
            spool = media.recording_spool(args, workdir, f"{row.relay}-{row.workers}-{row.streams}")
            spec = media.DaemonSpec(
                daemon, row.workers, media.NG_PORT + k, low, low + span - 1, spool
            )
            if row.relay == KERNEL:
                proc = stack.enter_context(
                    running_kernel_relayd(spec, place, workdir, nofile, args)
                )
            else:
                proc = stack.enter_context(
                    media.running_daemon(
                        spec, place, workdir, nofile, args.log_level, args.relayd_source
                    )
                )
            with in_netns(RELAY_NS):
                client = stack.enter_context(
                    NgClient((media.NG_HOST, spec.ng_port), timeout=10.0, retries=1)
                )
            cycle_calls(client, WARM_CYCLES, f"warm{k}")
            time.sleep(1.0)  # the workers' once-a-second report of the deletes
            row.rss_base_kib = tree_rss(proc.pid)
            kernel0, started = kernel_object_bytes(SOCKET_CACHES), time.monotonic()
            calls = KernelCalls(client, row.streams, f"{row.relay}{row.workers}", args.record)
            bench = TimedBench(
                binary, streams=calls.setup(), place=place, daemon_pid=proc.pid, nofile=nofile
            )
            row.setup_s = time.monotonic() - started
            fresh = row.relay != KERNEL and args.fresh_calls in ("always", row.relay)
            run = _timed_runner(row, bench, args, calls.renew if fresh else None)
            if row.relay == KERNEL:
                offload(row, run, bench, calls, args, workdir)
            else:
                media.warm_up(run, row.streams, min(2000, args.start_rate))
                time.sleep(1.0)  # the workers' report: endpoints confirmed
            row.rss_kib = tree_rss(proc.pid)
            row.kernel_bytes_delta = kernel_object_bytes(SOCKET_CACHES) - kernel0
            group.append(Contender(row, bench, run, proc.pid, calls))
        _idle([(c.row, c.pid) for c in group], place)
        with media._counting(args, place) as counter:
            for c in group:
                c.bench.counter = counter
            datagrams = udp_in_datagrams(group[0].pid)
            media.find_max(group, args)  # type: ignore[arg-type]
            searched = udp_in_datagrams(group[0].pid) - datagrams
            cpu: list[tuple[Trial, float, dict[str, float]]] = []
            for c in group:
                c.row.cpu_rate = args.cpu_rate
                trial = c.run(args.cpu_rate, args.cpu_seconds, "CPU")
                cpu.append((trial, c.bench.last_wall, c.bench.last_relay))
        for c, (trial, wall, times) in zip(group, cpu, strict=True):
            c.bench.counter = None
            summarise_search(c.row)
            summarise_cpu(c.row, trial, wall, times)
            if kernel:
                c.row.socket_datagrams = searched
                c.row.kernelized_after = sum(c.calls.kernelized(i) for i in range(c.row.streams))


def measure_generator(
    row: KernelRow, args: argparse.Namespace, binary: Path, place: Placement, nofile: int
) -> None:
    """bench/media.py's generator check (rbm-relay routes, no daemon, no nftables), with
    this script's CPU accounting."""
    steer_media(place, sink=True)
    media._check_quiet([row], place)
    streams = [(CALLER_PORT0 + 2 * i, CALLEE_ADDR, CALLEE_PORT) for i in range(row.streams)]
    bench = TimedBench(binary, streams=streams, place=place, daemon_pid=None, nofile=nofile)
    with kernel_forwarding():
        run = _timed_runner(row, bench, args, None)
        media.warm_up(run, row.streams, min(2000, args.start_rate))
        with media._counting(args, place) as counter:
            bench.counter = counter
            media.find_max([media.Contender(row, bench, run)], args)
    summarise_search(row)


# -- kernel memory per forward -----------------------------------------------------------------


@dataclass(slots=True)
class KernelMemory:
    """Kernel memory of ``forwards`` forwards, per step and repeat: ``*_kib`` from the pages
    (SUnreclaim + Percpu), ``*_bytes`` from the live objects (:func:`kernel_object_bytes`):
    pages include slack and partly used slabs, objects do not."""

    forwards: int
    streams: int
    install_s: list[float] = field(default_factory=list)
    elements_kib: list[int] = field(default_factory=list)  # the install: table elements
    elements_bytes: list[int] = field(default_factory=list)
    conntrack_entries: list[int] = field(default_factory=list)
    conntrack_kib: list[int] = field(default_factory=list)  # one packet per stream
    conntrack_bytes: list[int] = field(default_factory=list)
    leftover_kib: list[int] = field(default_factory=list)  # after removal, against before
    leftover_bytes: list[int] = field(default_factory=list)
    conntrack_slab: tuple[int, int] = (0, 0)  # nf_conntrack (objects added, object size)
    error: str = ""

    def per_forward(self) -> tuple[float, float]:
        """(bytes of objects, bytes of pages) per forward."""
        return (
            statistics.median(self.elements_bytes) / self.forwards,
            statistics.median(self.elements_kib) * 1024 / self.forwards,
        )

    def per_entry(self) -> tuple[float, float]:
        """(bytes of objects, bytes of pages) per conntrack entry."""
        entries = statistics.median(self.conntrack_entries) or 1
        return (
            statistics.median(self.conntrack_bytes) / entries,
            statistics.median(self.conntrack_kib) * 1024 / entries,
        )


NFT_CACHES = ("kmalloc", "nf")  # nft elements, their counters, conntrack entries
SOCKET_CACHES = (*NFT_CACHES, "UDP", "sock_inode_cache", "filp", "dentry", "eventpoll")


def kernel_object_bytes(caches: tuple[str, ...] = NFT_CACHES) -> int:
    """Bytes of live objects in the slab caches named so (prefixes; /proc/slabinfo), plus
    Percpu and VmallocUsed (big hash tables). By default the caches nft elements, their
    counters and conntrack entries are made of; filesystem and process caches, where
    other load shows most, are left out. With SOCKET_CACHES: a call's UDP sockets too."""
    total = 0
    with open("/proc/slabinfo") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 3 and fields[1].isdigit() and fields[0].startswith(caches):
                total += int(fields[1]) * int(fields[3])
    info = meminfo()
    return total + (info["Percpu"] + info["VmallocUsed"]) * 1024


def kernel_snapshot(settle: float = 1.0) -> tuple[int, int]:
    """(SUnreclaim + Percpu in KiB, :func:`kernel_object_bytes`), after ``settle`` seconds:
    freed elements go after an RCU grace period."""
    time.sleep(settle)
    info = meminfo()
    return info["SUnreclaim"] + info["Percpu"], kernel_object_bytes()


def _conntrack_count() -> int:
    done = subprocess.run(
        ["ip", "netns", "exec", RELAY_NS, "conntrack", "-C"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return int(done.stdout.strip() or 0)


def measure_kernel_memory(
    forwards: int, repeat: int, binary: Path, place: Placement, nofile: int
) -> KernelMemory:
    """Install ``forwards`` with relayd's nft code, push one packet through each caller
    direction, remove everything; kernel memory deltas at each step."""
    from relayd.nft import Endpoint, KernelForwarder, stream

    streams = forwards // 2
    result = KernelMemory(forwards, streams)
    relay_a, relay_b = 10000, 30000  # no sockets needed: DNAT happens before delivery
    wanted = [
        f
        for i in range(streams)
        for f in stream(
            Endpoint(CALLER_ADDR, CALLER_PORT0 + 2 * i),
            Endpoint(MEDIA_ADDR, relay_a + 2 * i),
            Endpoint(MEDIA_ADDR, relay_b + 2 * i),
            Endpoint(CALLEE_ADDR, CALLEE_PORT),
        )
    ]
    sends = [(CALLER_PORT0 + 2 * i, MEDIA_ADDR, relay_a + 2 * i) for i in range(streams)]
    # one packet per stream (the generator's pre-roll), 500 streams at a time: a burst of
    # thousands would overflow the relay core's backlog (netdev_max_backlog, 1,000)
    chunks = [
        Bench(binary, streams=sends[k : k + 500], place=place, daemon_pid=None, nofile=nofile)
        for k in range(0, len(sends), 500)
    ]
    with kernel_forwarding():
        for _ in range(repeat):
            forget_kernel_state(MEMORY_TABLE)
            with in_netns(RELAY_NS):
                forwarder = KernelForwarder(MEMORY_TABLE, tos=TOS_EF)
                try:
                    forwarder.ensure_table()
                    objects0 = slab("nf_conntrack")[0]
                    before = kernel_snapshot()
                    start = time.monotonic()
                    forwarder.install(wanted)
                    result.install_s.append(time.monotonic() - start)
                    installed = kernel_snapshot()
                    for chunk in chunks:
                        chunk._send(1, 0.001)
                    time.sleep(0.5)
                    result.conntrack_entries.append(_conntrack_count())
                    flowing = kernel_snapshot()
                    objects2, size = slab("nf_conntrack")
                    result.conntrack_slab = (objects2 - objects0, size)
                    forwarder.destroy_table()
                finally:
                    forwarder.close()
            forget_kernel_state(MEMORY_TABLE)
            after = kernel_snapshot()
            result.elements_kib.append(installed[0] - before[0])
            result.elements_bytes.append(installed[1] - before[1])
            result.conntrack_kib.append(flowing[0] - installed[0])
            result.conntrack_bytes.append(flowing[1] - installed[1])
            result.leftover_kib.append(after[0] - before[0])
            result.leftover_bytes.append(after[1] - before[1])
            print(
                f"    {forwards:,} forwards: install {result.install_s[-1] * 1000:.0f} ms, "
                f"elements +{installed[1] - before[1]:,} B (pages +{installed[0] - before[0]:,} "
                f"KiB), {result.conntrack_entries[-1]:,} conntrack entries "
                f"+{flowing[1] - installed[1]:,} B (+{flowing[0] - installed[0]:,} KiB), "
                f"after removal {after[1] - before[1]:+,} B ({after[0] - before[0]:+,} KiB)",
                file=sys.stderr,
                flush=True,
            )
    return result


# -- report -------------------------------------------------------------------------------------


def _label(row: KernelRow) -> str:
    return "kernel forwarding, no relay (generator check)" if row.relay == GENERATOR else row.relay


def _per_call(row: KernelRow) -> str:
    if row.streams < 100 or not row.rss_kib[0]:
        return "–"
    main = (row.rss_kib[0] - row.rss_base_kib[0]) * 1024 / row.streams
    workers = (row.rss_kib[1] - row.rss_base_kib[1]) * 1024 / row.streams
    return f"{main + workers:,.0f} B ({main:,.0f} + {workers:,.0f})"


def render(
    rows: Sequence[KernelRow], memory: Sequence[KernelMemory], args: argparse.Namespace
) -> str:
    out = [
        "| streams | relay | max lossless pps (searches) | lag at max | relay core µs per "
        "packet: busy (softirq), range of busy | one relay core's ceiling, estimated: 10⁶ / "
        "busy µs (range) | relay "
        "core at max: busy / softirq / steal | generator core at max | daemon CPU: idle / at "
        f"max / at {args.cpu_rate:,} pps | daemon CPU µs per packet | RSS per call (main + "
        "workers) | kernelized before / after search | datagrams to relay sockets in search |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r.error:
            out.append(f"| {r.streams:,} | {_label(r)} | failed: {r.error} |" + " |" * 10)
            continue
        rate = f"≥ {r.max_pps:,}" if r.generator_bound else f"{r.max_pps:,}"
        rate += " (" + ", ".join(f"{x:,}" for x in r.searches) + ")"
        kernelized = f"{r.kernelized:,} / {r.kernelized_after:,}" if r.relay == KERNEL else "–"
        datagrams = f"{r.socket_datagrams:,}" if r.socket_datagrams >= 0 else "–"
        low, high = r.busy_us_range
        ceiling = "–"
        if r.busy_us_per_packet and low:
            ceiling = f"{1e6 / r.busy_us_per_packet:,.0f} ({1e6 / high:,.0f}–{1e6 / low:,.0f})"
        out.append(
            f"| {r.streams:,} | {_label(r)} | {rate} | {r.lag_s:.2f} s "
            f"| {r.busy_us_per_packet:.2f} ({r.softirq_us_per_packet:.2f}), {low:.2f}–{high:.2f} "
            f"| {ceiling} "
            f"| {r.max_core_busy:.0%} / {r.max_softirq:.0%} / {r.max_steal:.0%} "
            f"| {r.max_generator_busy:.0%} "
            f"| {r.idle_daemon_cpu:.1%} / {r.max_daemon_cpu:.1%} / {r.cpu_daemon_cpu:.1%} "
            f"| {r.daemon_us_per_packet:.2f} | {_per_call(r)} | {kernelized} | {datagrams} |"
        )
        if r.relay == GENERATOR:  # no daemon
            cells = out[-1].split(" | ")
            out[-1] = " | ".join(cells[:8] + ["–"] * 5) + " |"
    out += [
        "",
        f"Max lossless: highest rate with loss ≤ {args.loss:.1%} while the generator sent ≥ "
        f"{media.GENERATOR_SLACK:.0%} of what was due; median of the searches in brackets. "
        "≥: the generator could send no faster and the relay lost nothing (generator-bound). "
        "Lag: how long the trials at that rate took beyond the generator's send time (about "
        "0.3 s of counting; more: the relay was still working off its sockets' queues, so "
        "the rate held for one trial, not for good).",
        "Relay core µs per packet: the relay core's busy time (/proc/stat: user, system, "
        "softirq, ...; its idle-time share taken off) per delivered packet, median over the "
        "lossless trials at half the max rate or more; the ceiling assumes one core spends all "
        "its time so. Core shares: /proc/stat over the trial's wall time; 'busy' includes "
        "other tenants' work there. The generator core's share is over its send time: near "
        "100% means generator-bound. Daemon CPU: utime + stime of the daemon and its workers "
        "(softirq work done while they ran included).",
    ]
    for r in rows:
        if r.relay not in (GENERATOR,) and not r.error:
            extra = ""
            if r.relay == KERNEL:
                extra = (
                    f"; every call kernelized {r.offload_wait_s:.1f} s after the caller's first "
                    "packets had been sent"
                )
            out.append(
                f"{r.relay}, {r.streams:,} streams: relay core {r.idle_core_busy:.1%} busy "
                f"({r.idle_softirq:.1%} softirq) with no media, the daemon's main process "
                f"{r.idle_main_cpu:.1%}{extra}; setup {r.setup_s:.1f} s; "
                f"kernel memory {r.kernel_bytes_delta / r.streams:,.0f} B per call (sockets, "
                "kmalloc, nf_* objects, Percpu, vmalloc; noisy); "
                f"cores {r.background_busy:.0%} busy before the group started."
            )
    if memory:
        out += [
            "",
            "| forwards | streams | install (one transaction) | per forward: objects (pages) "
            "| conntrack entries | per entry: objects (pages) | nf_conntrack object "
            "| left after removal: objects (pages) |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for m in memory:
            if m.error:
                out.append(f"| {m.forwards:,} | {m.streams:,} | failed: {m.error} |" + " |" * 5)
                continue
            install_ms = statistics.median(m.install_s) * 1000
            fwd, entry = m.per_forward(), m.per_entry()
            out.append(
                f"| {m.forwards:,} | {m.streams:,} | {install_ms:.0f} ms "
                f"| {fwd[0]:,.0f} B ({fwd[1]:,.0f} B) "
                f"| {statistics.median(m.conntrack_entries):,.0f} "
                f"| {entry[0]:,.0f} B ({entry[1]:,.0f} B) | {m.conntrack_slab[1]} B "
                f"| {statistics.median(m.leftover_bytes):+,} B "
                f"({statistics.median(m.leftover_kib):+,} KiB) |"
            )
        out.append(
            "Kernel memory, medians of the repeats: objects = live objects of the kmalloc-* and "
            "nf_* slab caches (/proc/slabinfo) + Percpu + VmallocUsed; pages = SUnreclaim + "
            "Percpu (/proc/meminfo). Both are machine-wide: other load is noise. Object deltas "
            "per repeat: "
            + "; ".join(
                f"{m.forwards:,} forwards {m.elements_bytes}, entries {m.conntrack_bytes}"
                for m in memory
                if not m.error
            )
        )
    return "\n".join(out)


# -- main ---------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/kernel.py", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument(
        "--record",
        action="store_true",
        help="record every call (recording-dir, record-call=yes): relayd's kernel path then "
        "has the kernel copy each packet to the worker (nflog), the others record in userspace",
    )
    parser.add_argument("--streams", help="concurrent stream counts (default 1,100,1000)")
    parser.add_argument(
        "--relays",
        default="kernel,relayd",
        help="what to run at each size: kernel (relayd --table 0), relayd (userspace), "
        "rtpengine (userspace); default kernel,relayd",
    )
    parser.add_argument(
        "--relay-cores",
        type=int,
        default=1,
        metavar="N",
        help="cores the relay gets: the relay's ingress is steered over them (RPS) and the "
        "userspace daemons run N workers/threads on them (default 1)",
    )
    parser.add_argument(
        "--generator-cores",
        type=int,
        default=1,
        metavar="N",
        help="generator processes, one per core, streams and rate split between them: on a "
        "bigger machine, enough of them to out-send the relay (default 1)",
    )
    parser.add_argument("--quick", action="store_true", help="short trials, smoke-test sized")
    parser.add_argument("--duration", type=float, help="seconds per trial (default 2)")
    parser.add_argument("--steps", type=int, help="bisection steps after doubling (default 4)")
    parser.add_argument("--repeat", type=int, default=1, help="searches per row, median kept")
    parser.add_argument("--start-rate", type=int, default=20_000, help="pps of the first trial")
    parser.add_argument("--max-rate", type=int, default=2_000_000, help="pps ceiling")
    parser.add_argument("--loss", type=float, default=0.001, help="lossless: loss ≤ this share")
    parser.add_argument("--cpu-rate", type=int, default=10_000, help="pps of the CPU trial")
    parser.add_argument("--cpu-seconds", type=float, help="seconds of the CPU trial (default 3)")
    parser.add_argument(
        "--generator-check",
        action=argparse.BooleanOptionalAction,
        help="measure the generator's ceiling first (default: on, off with --quick)",
    )
    parser.add_argument(
        "--kernel-memory",
        help="forward counts for the kernel-memory phase (default 1000,10000; off with "
        "--quick; 0 = off)",
    )
    parser.add_argument("--memory-repeat", type=int, default=3, help="repeats of that phase")
    parser.add_argument(
        "--offload-timeout",
        type=float,
        help="seconds to wait for every call to be kernelized (default 10 + 10 ms per call)",
    )
    parser.add_argument(
        "--offload-under-load",
        action="store_true",
        help="let media flow (50 pps per stream) while relayd offloads the calls, as in real "
        "calls, instead of one packet per stream before it",
    )
    parser.add_argument(
        "--offload-load-seconds",
        type=float,
        default=3.0,
        help="how long that media flows (default 3 s; the offload comes about 1 s in)",
    )
    parser.add_argument("--tos", type=int, default=TOS_EF, help="relayd-kernel's --tos (EF)")
    parser.add_argument(
        "--fresh-calls",
        choices=("rtpengine", "relayd", "always", "never"),
        default="rtpengine",
        help="whose userspace calls are renewed before each trial (see bench/media.py)",
    )
    parser.add_argument(
        "--relayd-source", type=Path, default=REPO, metavar="DIR", help="relayd tree to run"
    )
    parser.add_argument("--relayd-rev", metavar="REV", help="run relayd as committed at REV")
    parser.add_argument(
        "--log-level", type=int, default=3, help="daemons' log level (relayd-kernel: at least 4)"
    )
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument(
        "--render",
        metavar="FILE",
        help="measure nothing: print the tables of an earlier run's --json FILE again",
    )
    parser.add_argument("--keep-logs", metavar="DIR", help="write the daemons' logs here")
    args = parser.parse_args(argv)
    cpus = sorted(os.sched_getaffinity(0))
    if args.quick:
        args.streams = args.streams or "1"
        args.duration = args.duration or 1.0
        args.steps = 2 if args.steps is None else args.steps
        args.cpu_seconds = args.cpu_seconds or 1.0
        args.generator_check = bool(args.generator_check)
        args.kernel_memory = args.kernel_memory or "0"
    args.streams = media._int_list(args.streams or "1,100,1000")
    relays = [r.strip() for r in args.relays.split(",") if r.strip()]
    if not relays or set(relays) - set(RELAYS):
        parser.error(f"--relays: choose from {', '.join(RELAYS)}")
    args.relays = [RELAYS[r] for r in dict.fromkeys(relays)]
    args.kernel_memory = [n for n in media._int_list(args.kernel_memory or "1000,10000") if n > 0]
    args.duration = args.duration or 2.0
    args.steps = 4 if args.steps is None else args.steps
    args.cpu_seconds = args.cpu_seconds or 3.0
    args.generator_check = args.generator_check is not False
    args.offload_timeout = args.offload_timeout or 10.0 + 0.01 * max(args.streams)
    args.sink = "nft"  # what bench/media.py's shared pieces read
    if len(cpus) < 2:
        parser.error("needs at least 2 CPUs: one for the relay, one for the generator")
    if not 1 <= args.generator_cores < len(cpus):
        parser.error(f"--generator-cores must be between 1 and {len(cpus) - 1}")
    if not 1 <= args.relay_cores <= len(cpus):
        parser.error(f"--relay-cores must be between 1 and {len(cpus)}")
    userspace = [r for r in args.relays if r != KERNEL]
    span = (media.RELAY_PORT_MAX - media.RELAY_PORT_MIN + 1) // max(len(userspace), 1) - 16
    if max(args.streams) * media.PORTS_PER_STREAM > span:
        parser.error(f"at most {span // media.PORTS_PER_STREAM:,} streams fit the port range")
    if max(args.kernel_memory, default=0) // 2 > 10_000:
        parser.error("--kernel-memory: at most 20,000 forwards (caller ports 20000-39999)")
    return args


def plan(args: argparse.Namespace) -> list[tuple[int, list[str]]]:
    """Per stream count: the generator check, relayd-kernel, then the userspace group."""
    groups = []
    for streams in args.streams:
        if args.generator_check:
            groups.append((streams, [GENERATOR]))
        if KERNEL in args.relays:
            groups.append((streams, [KERNEL]))
        userspace = [r for r in args.relays if r != KERNEL]
        if userspace:
            groups.append((streams, userspace))
    return groups


def run_all(
    args: argparse.Namespace, cpus: Sequence[int], nofile: int, tmp: Path
) -> tuple[list[KernelRow], list[KernelMemory], bool]:
    rows: list[KernelRow] = []
    memory: list[KernelMemory] = []
    failed = False
    workdir = Path(args.keep_logs) if args.keep_logs else tmp
    workdir.mkdir(parents=True, exist_ok=True)
    binary = compile_generator(tmp)
    if args.relayd_rev:
        args.relayd_source = tmp / "relayd-src"
        media.export_revision(args.relayd_rev, args.relayd_source)
    os.sched_setaffinity(0, {cpus[0]})  # off the relay's core, as bench/media.py does
    place = placement(args.relay_cores, args.generator_cores, cpus)
    assert place is not None  # parse_args bounds the core counts
    with topology():
        try:
            for streams, relays in plan(args):
                group = [
                    KernelRow(
                        streams, r, args.relay_cores, place.relay, place.generators, place.shared
                    )
                    for r in relays
                ]
                print(
                    f"... {' and '.join(relays)}, {streams:,} streams, relay on "
                    f"core {','.join(map(str, place.relay))}",
                    file=sys.stderr,
                    flush=True,
                )
                try:
                    if relays == [GENERATOR]:
                        measure_generator(group[0], args, binary, place, nofile)
                    else:
                        measure_daemons(group, args, binary, place, workdir, nofile)
                except (BenchError, NgTimeout, subprocess.TimeoutExpired, OSError) as exc:
                    print(f"{streams:,} streams failed: {exc}", file=sys.stderr)
                    for row in group:
                        row.error = row.error or str(exc).split("\n")[0][:120]
                    failed = True
                rows.extend(group)
            for forwards in args.kernel_memory:
                print(f"... kernel memory, {forwards:,} forwards", file=sys.stderr, flush=True)
                try:
                    memory.append(
                        measure_kernel_memory(forwards, args.memory_repeat, binary, place, nofile)
                    )
                except (BenchError, OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
                    print(f"kernel memory, {forwards:,} forwards failed: {exc}", file=sys.stderr)
                    memory.append(KernelMemory(forwards, forwards // 2, error=str(exc)[:120]))
                    failed = True
        finally:
            forget_kernel_state(NFT_TABLE)
            forget_kernel_state(MEMORY_TABLE)
    return rows, memory, failed


def _cores(cores: Sequence[int]) -> str:
    return ",".join(map(str, cores))


def render_saved(path: Path, args: argparse.Namespace) -> str:
    """The tables of a saved run, with the CPU figures of its search recomputed from its
    trials (so that a change to how they are summarised applies to old runs too)."""
    saved = json.loads(path.read_text())
    names = {f.name for f in fields(KernelRow)}
    rows = []
    for item in saved["rows"]:
        row = KernelRow(**{k: v for k, v in item.items() if k in names})
        if not row.error:
            summarise_search(row)
        rows.append(row)
    names = {f.name for f in fields(KernelMemory)}
    memory = [
        KernelMemory(**{k: v for k, v in m.items() if k in names})
        for m in saved.get("kernel_memory", [])
    ]
    args.loss = saved.get("loss_limit", args.loss)
    header = [f"$ {saved['command']}", "", *saved["machine"], "", ""]
    return "\n".join(header) + render(rows, memory, args)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.render:
        print(render_saved(Path(args.render), args))
        return 0
    if os.geteuid() != 0:
        print("bench/kernel.py needs root (network namespaces, nftables)", file=sys.stderr)
        return 2
    if "rtpengine" in args.relays and not os.access(media.RTPENGINE_BIN, os.X_OK):
        print(f"{media.RTPENGINE_BIN} not found: leave rtpengine out of --relays", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, media._terminate)
    cpus = sorted(os.sched_getaffinity(0))
    place = placement(args.relay_cores, args.generator_cores, cpus)
    assert place is not None
    nofile = file_limit()
    command = shlex.join(
        [media._relative(sys.executable), media._relative(sys.argv[0]), *sys.argv[1:]]
    )
    header = [
        f"$ {command}",
        "",
        media.describe_machine(),
        media.describe_relayd(args),
        f"Generator on core(s) {_cores(place.generators)}, relay on core(s) "
        f"{_cores(place.relay)}{' (shared)' if place.shared else ''}; trials of "
        f"{args.duration:g} s; "
        f"RTP {RTP_SIZE} bytes, caller → callee; delivered packets counted by an nft counter "
        f"at the callee's veth; load average {os.getloadavg()[0]:.2f} at start.",
    ]
    if args.record:
        header.append(
            "Every call recorded: recording-dir (pcap method), record-call=yes; relayd's kernel "
            "path has the kernel copy each packet to its worker (nflog)."
        )
    print("\n".join(header), flush=True)
    os.makedirs(os.path.dirname(media.LOCK_FILE), exist_ok=True)
    with open(media.LOCK_FILE, "w") as lock, tempfile.TemporaryDirectory(prefix="rbk-") as tmp:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print("another bench/media.py or bench/kernel.py is running", file=sys.stderr)
            return 2
        try:
            rows, memory, failed = run_all(args, cpus, nofile, Path(tmp))
        except BenchError as exc:
            print(f"bench/kernel.py: {exc}", file=sys.stderr)
            return 1
    print()
    print(render(rows, memory, args))
    print(f"Load average {os.getloadavg()[0]:.2f} at the end.")
    if args.json:
        payload = {
            "command": command,
            "machine": header[2:],
            "loss_limit": args.loss,
            "trial_seconds": args.duration,
            "rows": [asdict(r) for r in rows],
            "kernel_memory": [
                asdict(m) | ({} if m.error else {"bytes_per_forward": m.per_forward()[0],
                                                  "bytes_per_conntrack_entry": m.per_entry()[0]})
                for m in memory
            ],
        }  # fmt: skip
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)  # namespaces and processes were removed on the way out
