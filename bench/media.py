#!/usr/bin/env python3
"""Media-plane benchmark: RTP relayed in userspace by relayd and by rtpengine 10.5.

Same topology, same generator, same run (see medialab.py for the lab: three
network namespaces, a C generator, an nft or socket counter). For each number
of streams both daemons run side by side on the same relay core(s), with calls
set up over ng (offer from the caller, answer from the callee, endpoint learning
``immediate``), and their searches are interleaved trial by trial, so that
other load on the machine hits both alike. A search finds the highest
*lossless* rate (loss at most ``--loss``, 0.1 %, while the generator kept up):
start at ``--start-rate``, double until a trial fails, then bisect. Then each
daemon's CPU time (utime + stime of the daemon and its child processes, from
/proc) is measured during a trial at the same fixed ``--cpu-rate``. relayd runs
with one worker, then with each count in ``--workers`` (rtpengine: as many
threads, the same cores). A first row per stream count measures the generator
itself, with rbm-relay forwarding in the kernel and no daemon. Namespaces and
processes are removed at the end, also on Ctrl-C or failure.

    sudo .venv/bin/python bench/media.py                      # full run, about 5 minutes
    sudo .venv/bin/python bench/media.py --quick --only relayd --streams 1
    sudo .venv/bin/python bench/media.py --relayd-rev HEAD    # as committed
    sudo .venv/bin/python bench/media.py --generator-cores 2 --workers 1,2,7,14 --json out.json
    sudo .venv/bin/python bench/media.py --record --streams 1,100   # every call recorded (pcap)

With ``--record`` both daemons get a recording spool (``recording-dir``, the pcap method) and
every call is offered with ``record-call=yes``: run it beside a run without to see what
recording costs each of them per packet.
"""

from __future__ import annotations

import argparse
import fcntl
import io
import json
import os
import platform
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO, REPO / "bench"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from medialab import (  # noqa: E402
    CALLEE_ADDR,
    CALLEE_PORT,
    CALLER_ADDR,
    CALLER_PORT0,
    GENERATOR_SLACK,
    MEDIA_ADDR,
    RELAY_NS,
    RTP_SIZE,
    Bench,
    BenchError,
    NftSink,
    Placement,
    Trial,
    compile_generator,
    cores_busy,
    file_limit,
    in_netns,
    kernel_counting,
    kernel_forwarding,
    placement,
    spawn,
    steer_media,
    stop_process,
    topology,
)

from relayd.ng.client import NgClient, NgTimeout  # noqa: E402

__all__ = ["main"]

RTPENGINE_BIN = "/usr/bin/rtpengine"
RELAYS = ("relayd", "rtpengine")
LOCK_FILE = "/run/lock/relayd-bench-media.lock"
NG_HOST, NG_PORT = "127.0.0.1", 22270  # inside rbm-relay; the second daemon: +1
RELAY_PORT_MIN, RELAY_PORT_MAX = 10000, 59999  # split between the daemons of a group
PORTS_PER_STREAM = 4  # RTP and RTCP, on each side
DISTURBED_RETRIES = 2  # a trial starved by other load is run again


# -- daemons and calls -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DaemonSpec:
    relay: str
    workers: int
    ng_port: int
    port_min: int
    port_max: int
    recording_dir: str = ""  # --record: the daemon's spool


def recording_spool(args: argparse.Namespace, workdir: Path, name: str) -> str:
    """With ``--record``, a fresh spool directory for one daemon of a row ("": none)."""
    if not args.record:
        return ""
    spool = workdir / f"spool-{name}"
    spool.mkdir(parents=True, exist_ok=True)
    return str(spool)


def daemon_argv(spec: DaemonSpec, log_level: int) -> list[str]:
    listen = f"{NG_HOST}:{spec.ng_port}"
    if spec.relay in ("relayd", "candidate"):
        options: dict[str, object] = {
            "config-file": "none",
            "interface": MEDIA_ADDR,
            "listen-ng": listen,
            "port-min": spec.port_min,
            "port-max": spec.port_max,
            "table": -1,
            "num-threads": spec.workers,
            "endpoint-learning": "immediate",
            "timeout": 3600,
            "delete-delay": 0,
            "state-dir": "none",
            "log-level": log_level,
        }
        if spec.recording_dir:
            options["recording-dir"] = spec.recording_dir
        argv = [sys.executable, "-m", "relayd", "--foreground"]
        for key, value in options.items():
            argv += [f"--{key}", str(value)]
        return argv
    return [
        RTPENGINE_BIN,
        "--foreground",
        "--config-file=none",
        "--table=-1",
        f"--interface={MEDIA_ADDR}",
        f"--listen-ng={listen}",
        f"--port-min={spec.port_min}",
        f"--port-max={spec.port_max}",
        f"--num-threads={spec.workers}",
        "--endpoint-learning=immediate",
        "--timeout=3600",
        "--delete-delay=0",
        f"--log-level={log_level}",
        "--log-stderr",
        *([f"--recording-dir={spec.recording_dir}"] if spec.recording_dir else []),
    ]


@contextmanager
def running_daemon(
    spec: DaemonSpec,
    place: Placement,
    workdir: Path,
    nofile: int,
    log_level: int,
    source: Path,
) -> Iterator[subprocess.Popen[str]]:
    """The daemon in rbm-relay on the relay's cores, once it answers ping."""
    log_path = workdir / f"{spec.relay}-{spec.workers}.log"
    env = dict(os.environ, PYTHONPATH=str(source))
    with open(log_path, "a") as log:
        proc = spawn(
            daemon_argv(spec, log_level),
            netns=RELAY_NS,
            cpus=place.relay,
            nofile=nofile,
            stdout=log,
            cwd=workdir,
            env=env,
        )
    try:
        wait_for_pong(proc, spec.ng_port, spec.relay, log_path)
        yield proc
    finally:
        stop_process(proc)


def wait_for_pong(
    proc: subprocess.Popen[str] | subprocess.Popen[bytes],
    ng_port: int,
    name: str,
    log_path: Path,
    timeout: float = 20.0,
) -> None:
    """Until the relay in RELAY_NS answers ng ping; its log tail if it exits or stays mute."""
    deadline = time.monotonic() + timeout
    with in_netns(RELAY_NS):
        client = NgClient((NG_HOST, ng_port), timeout=0.2, retries=0)
    with client:
        while True:
            if proc.poll() is not None:
                raise BenchError(f"{name} exited at start-up:\n{_tail(log_path)}")
            try:
                if client.call("ping").get("result") == "pong":
                    return
            except (NgTimeout, ConnectionRefusedError):
                pass
            if time.monotonic() > deadline:
                raise BenchError(f"{name} did not answer ping:\n{_tail(log_path)}")
            time.sleep(0.05)


def _tail(path: Path, lines: int = 20) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


def _sdp(party: str, addr: str, port: int, session: int) -> str:
    return (
        "v=0\r\n"
        f"o={party} {session} 1 IN IP4 {addr}\r\n"
        "s=relayd-bench-media\r\n"
        f"c=IN IP4 {addr}\r\n"
        "t=0 0\r\n"
        f"m=audio {port} RTP/AVP 0\r\n"
        "a=rtpmap:0 PCMU/8000\r\n"
        "a=ptime:20\r\n"
        "a=sendrecv\r\n"
    )


_M_LINE = re.compile(r"^m=audio (\d+) ", re.M)
_C_LINE = re.compile(r"^c=IN IP4 (\S+)", re.M)


class Calls:
    """One call per stream, set up over ng; ``renew`` replaces them with fresh ones."""

    def __init__(self, client: NgClient, streams: int, tag: str, record: bool = False) -> None:
        self.client = client
        self.record = {"record-call": "yes"} if record else {}
        self.count = streams
        self.tag = tag
        self.generation = 0
        self.live: list[str] = []

    def setup(self) -> list[tuple[int, str, int]]:
        """The generator's (source port, relay address, relay port) per stream."""
        targets = []
        for i in range(self.count):
            call_id = f"rbm-{self.tag}-{self.generation}-{i}@{CALLER_ADDR}"
            caller_port = CALLER_PORT0 + 2 * i
            common = {"call-id": call_id, "from-tag": f"caller-{i}"}
            sdp = _sdp("caller", CALLER_ADDR, caller_port, i)
            self._ok({"command": "offer", "sdp": sdp, **common, **self.record})
            self.live.append(call_id)
            sdp = _sdp("callee", CALLEE_ADDR, CALLEE_PORT, i)
            answer = self._ok({"command": "answer", "sdp": sdp, "to-tag": f"callee-{i}", **common})
            text = str(answer.get("sdp", ""))
            port, addr = _M_LINE.search(text), _C_LINE.search(text)
            if port is None or addr is None:
                raise BenchError(f"answer {i}: no relay address in the SDP:\n{text}")
            targets.append((caller_port, addr.group(1), int(port.group(1))))
        return targets

    def renew(self) -> list[tuple[int, str, int]]:
        for i, call_id in enumerate(self.live):
            self._ok({"command": "delete", "call-id": call_id, "from-tag": f"caller-{i}"})
        self.live = []
        self.generation += 1
        return self.setup()

    def _ok(self, request: dict[str, object]) -> dict[str, object]:
        reply: dict[str, object] = self.client.request(request)
        if reply.get("result") != "ok":
            raise BenchError(f"{request['command']} failed: {reply.get('error-reason')}")
        return reply


# -- the search ------------------------------------------------------------------------------


@dataclass(slots=True)
class Row:
    streams: int
    relay: str  # relayd, rtpengine, or kernel (the generator check)
    workers: int
    relay_cores: tuple[int, ...] = ()
    generator_cores: tuple[int, ...] = ()
    shared_cores: bool = False
    max_pps: int = 0
    searches: list[int] = field(default_factory=list)
    loss_at_max: float = 0.0
    generator_bound: bool = False
    cpu_rate: int = 0
    cpu_s_per_10k: float = 0.0
    core_s_per_10k: float = 0.0  # the relay's cores, all of their time: noisy on a shared VM
    trials: list[dict[str, object]] = field(default_factory=list)
    setup_s: float = 0.0
    background_busy: float = 0.0
    error: str = ""


def passes(trial: Trial, loss_limit: float) -> bool:
    return trial.loss <= loss_limit and trial.generator_kept_up()


Search = Generator[int, Trial, tuple[Trial | None, bool]]


def search(*, start: int, ceiling: int, steps: int, loss_limit: float) -> Search:
    """Yields the rates to try and is sent their trials: double from ``start`` until a
    failure, then bisect. Returns the best passing trial (None if even the lowest rate
    failed) and whether the failure just above it was the generator's (it could not
    send that fast, and nothing was lost), not the relay's."""
    best: Trial | None = None
    rate = start
    while True:
        trial = yield rate
        if passes(trial, loss_limit):
            best = trial
            if rate >= ceiling:
                return best, False
            rate = min(rate * 2, ceiling)
            continue
        failed = trial
        if best is not None:
            break
        if rate <= 1000:
            return None, _generator_failed(failed, loss_limit)
        rate //= 2
    for _ in range(steps):
        mid = (best.rate + failed.rate) // 2
        if mid - best.rate < max(best.rate // 100, 100):
            break
        trial = yield mid
        if passes(trial, loss_limit):
            best = trial
        else:
            failed = trial
    return best, _generator_failed(failed, loss_limit)


def _generator_failed(trial: Trial, loss_limit: float) -> bool:
    return trial.loss <= loss_limit and not trial.generator_kept_up()


def interleave(
    runs: Sequence[Callable[[int], Trial]], args: argparse.Namespace
) -> list[tuple[Trial | None, bool]]:
    """One search per daemon, taking turns trial by trial."""
    searches = [
        search(start=args.start_rate, ceiling=args.max_rate, steps=args.steps, loss_limit=args.loss)
        for _ in runs
    ]
    pending = {i: next(s) for i, s in enumerate(searches)}
    results: dict[int, tuple[Trial | None, bool]] = {}
    while pending:
        for i in list(pending):
            try:
                pending[i] = searches[i].send(runs[i](pending[i]))
            except StopIteration as done:
                results[i] = done.value
                del pending[i]
    return [results[i] for i in range(len(runs))]


@dataclass(slots=True)
class Contender:
    """One daemon of a group: its row, its trials, and how it runs one."""

    row: Row
    bench: Bench
    run: Callable[..., Trial]


def _runner(
    row: Row,
    bench: Bench,
    args: argparse.Namespace,
    renew: Callable[[], list[tuple[int, str, int]]] | None,
) -> Callable[..., Trial]:
    """One trial at a time, recorded in ``row``; ``renew`` gives fresh calls before each."""
    done = 0

    def run(rate: int, seconds: float = args.duration, purpose: str = "") -> Trial:
        nonlocal done
        for attempt in range(DISTURBED_RETRIES + 1):
            if renew is not None and done:
                bench.streams = renew()
            done += 1
            trial = bench.trial(rate, seconds)
            row.trials.append(
                asdict(trial) | {"loss": trial.loss, "achieved": trial.achieved, "purpose": purpose}
            )
            # the generator got less than half its core and nothing was lost: some
            # other load took the machine, and the trial says nothing about the relay
            disturbed = trial.sent < 0.5 * trial.due and trial.loss <= args.loss
            mark = purpose or ("ok" if passes(trial, args.loss) else "FAIL")
            if disturbed and attempt < DISTURBED_RETRIES:
                mark = "disturbed: again"
            print(
                f"    {row.relay:>9} {rate:>9,} pps: sent {trial.sent + trial.preroll:,}, "
                f"received {trial.received:,}, loss {trial.loss:.3%}, generator "
                f"{trial.achieved:,.0f} pps  {mark}",
                file=sys.stderr,
                flush=True,
            )
            if not disturbed:
                break
            time.sleep(2.0)
        return trial

    return run


def warm_up(run: Callable[..., Trial], streams: int, rate: int) -> None:
    """Until every stream is forwarded, unchanged, without loss (the socket sink checks
    each packet's size, RTP version and SSRC; a new worker needs a moment to start)."""
    for _ in range(10):
        trial = run(rate, 0.5, "warm-up")
        if trial.streams == streams and trial.loss == 0 and trial.bad == 0:
            return
    if trial.streams < streams or trial.bad:
        raise BenchError(
            f"{trial.streams} of {streams} streams reached the callee, {trial.bad:,} packets "
            f"not as sent (received {trial.received:,} of {trial.sent + trial.preroll:,})"
        )


def find_max(group: Sequence[Contender], args: argparse.Namespace) -> None:
    """``--repeat`` interleaved searches; each row keeps the median of its own (of those
    that found a rate at all: one the generator could not even start is left out)."""
    found: list[list[Trial | None]] = [[] for _ in group]
    for _ in range(args.repeat):
        for k, (best, bound) in enumerate(interleave([c.run for c in group], args)):
            found[k].append(best)
            group[k].row.generator_bound = group[k].row.generator_bound or bound
    for contender, trials in zip(group, found, strict=True):
        row = contender.row
        row.searches = [t.rate if t else 0 for t in trials]
        rates = [t.rate for t in trials if t is not None] or [0]
        row.max_pps = int(statistics.median_low(rates))
        best = next((t for t in trials if t and t.rate == row.max_pps), None)
        row.loss_at_max = best.loss if best is not None else 1.0


def background_busy(cores: Sequence[int], seconds: float = 0.5) -> float:
    """Share of ``cores`` busy with something else before a group starts (other tenants)."""
    before = cores_busy(cores)
    time.sleep(seconds)
    return (cores_busy(cores) - before) / (seconds * len(cores))


def _check_quiet(rows: Sequence[Row], place: Placement) -> None:
    busy = background_busy(sorted({*place.relay, *place.generators}))
    for row in rows:
        row.background_busy = busy
    if busy > 0.05:
        print(
            f"    warning: the cores were {busy:.0%} busy before the start: "
            "other load on the machine makes the figures noisy",
            file=sys.stderr,
        )


def measure_group(
    rows: Sequence[Row],
    args: argparse.Namespace,
    binary: Path,
    place: Placement,
    workdir: Path,
    nofile: int,
) -> None:
    """The daemons of ``rows`` side by side on the same cores: set up the calls, warm
    up, find each one's max lossless rate (interleaved), then each one's CPU cost."""
    steer_media(place, sink=True)
    _check_quiet(rows, place)
    span = (RELAY_PORT_MAX - RELAY_PORT_MIN + 1) // len(rows)
    with ExitStack() as stack:
        group: list[Contender] = []
        for k, row in enumerate(rows):
            low = RELAY_PORT_MIN + k * span
            spool = recording_spool(args, workdir, f"{row.relay}-{row.workers}-{row.streams}")
            spec = DaemonSpec(row.relay, row.workers, NG_PORT + k, low, low + span - 1, spool)
            source = args.candidate if row.relay == "candidate" else args.relayd_source
            proc = stack.enter_context(
                running_daemon(spec, place, workdir, nofile, args.log_level, source)
            )
            started = time.monotonic()
            with in_netns(RELAY_NS):
                client = stack.enter_context(
                    NgClient((NG_HOST, spec.ng_port), timeout=10.0, retries=1)
                )
            calls = Calls(client, row.streams, f"{row.relay}{row.workers}", args.record)
            bench = Bench(
                binary, streams=calls.setup(), place=place, daemon_pid=proc.pid, nofile=nofile
            )
            row.setup_s = time.monotonic() - started
            fresh = args.fresh_calls in ("always", row.relay)
            group.append(
                Contender(row, bench, _runner(row, bench, args, calls.renew if fresh else None))
            )
        for contender in group:
            warm_up(contender.run, contender.row.streams, min(2000, args.start_rate))
        with _counting(args, place) as counter:
            for contender in group:
                contender.bench.counter = counter
            find_max(group, args)
            cpu = []
            for contender in group:
                row = contender.row
                row.cpu_rate = args.cpu_rate
                cpu.append(contender.run(row.cpu_rate, args.cpu_seconds, "CPU"))
        for contender, trial in zip(group, cpu, strict=True):
            contender.bench.counter = None
            if trial.received:
                contender.row.cpu_s_per_10k = trial.process_cpu_s / trial.received * 10_000
                contender.row.core_s_per_10k = trial.core_busy_s / trial.received * 10_000


@contextmanager
def _counting(args: argparse.Namespace, place: Placement) -> Iterator[NftSink | None]:
    """The nft counter for the measured trials, unless ``--sink socket``."""
    if args.sink != "nft":
        yield None
        return
    with kernel_counting(place) as counter:
        yield counter


def measure_generator(
    row: Row, args: argparse.Namespace, binary: Path, place: Placement, nofile: int
) -> None:
    """No daemon: rbm-relay forwards in the kernel, so the generator is the limit."""
    steer_media(place, sink=True)
    _check_quiet([row], place)
    streams = [(CALLER_PORT0 + 2 * i, CALLEE_ADDR, CALLEE_PORT) for i in range(row.streams)]
    bench = Bench(binary, streams=streams, place=place, daemon_pid=None, nofile=nofile)
    with kernel_forwarding():
        run = _runner(row, bench, args, None)
        warm_up(run, row.streams, min(2000, args.start_rate))
        with _counting(args, place) as counter:
            bench.counter = counter
            find_max([Contender(row, bench, run)], args)


# -- report ----------------------------------------------------------------------------------


KERNEL_LABEL = "kernel forwarding, no relay (generator check)"


def render(rows: Sequence[Row], loss_limit: float, cpu_rate: int) -> str:
    theirs = {(r.streams, r.workers): r for r in rows if r.relay == "rtpengine" and not r.error}
    out = [
        "| streams | relay | workers | max lossless pps | CPU s per 10k pkts | loss at that rate "
        "| relayd / rtpengine |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        label = KERNEL_LABEL if r.relay == "kernel" else r.relay
        if r.error:
            out.append(f"| {r.streams:,} | {label} | {r.workers} | failed: {r.error} | | | |")
            continue
        rate = f"≥ {r.max_pps:,}" if r.generator_bound else f"{r.max_pps:,}"
        ratio = "–"
        other = theirs.get((r.streams, r.workers))
        if r.relay in ("relayd", "candidate") and other is not None and other.max_pps:
            ratio = f"{r.max_pps / other.max_pps:.2f}×"
        if r.relay == "kernel":
            cpu, workers = "–", "–"
        else:
            cpu = f"{r.cpu_s_per_10k:.3f}"
            if r.cpu_rate != cpu_rate:
                cpu += f" (at {r.cpu_rate:,} pps)"
            cores = ",".join(map(str, r.relay_cores)) + (", shared" if r.shared_cores else "")
            workers = f"{r.workers} (core {cores})"
        out.append(
            f"| {r.streams:,} | {label} | {workers} | {rate} | {cpu} | {r.loss_at_max:.3%} "
            f"| {ratio} |"
        )
    out.append("")
    out.append(
        f"Max lossless: the highest rate found with loss ≤ {loss_limit:.1%} while the "
        f"generator sent ≥ {GENERATOR_SLACK:.0%} of what was due. CPU: utime + stime of the "
        f"daemon and its child processes during a trial at {cpu_rate:,} pps (the same for "
        "both relays), per 10,000 packets delivered."
    )
    if any(r.relay == "kernel" for r in rows):
        out.append(
            "Generator check: no daemon, rbm-relay forwards in the kernel (ip_forward), so "
            "the generator is the limit; a relay row near it says more about the generator "
            "than about the relay."
        )
    if any(r.shared_cores for r in rows):
        out.append(
            "shared: the relay's cores include a generator core: such rows understate what "
            "that many cores can relay."
        )
    if any(r.generator_bound for r in rows):
        out.append("≥: the generator could send no faster; the relay lost nothing.")
    out.append("")
    out.extend(targets(rows))
    return "\n".join(out)


def targets(rows: Sequence[Row]) -> list[str]:
    lines = []
    ours = [r for r in rows if r.relay == "relayd" and not r.error]
    by_key = {(r.streams, r.workers): r for r in rows if r.relay == "rtpengine" and not r.error}
    base = {r.streams: r for r in ours if r.workers == 1}
    for r in ours:
        other = by_key.get((r.streams, r.workers))
        if other is not None and other.max_pps:
            ok = r.max_pps >= other.max_pps
            lines.append(
                f"Target at {r.streams:,} streams, {r.workers} worker(s): relayd {r.max_pps:,} "
                f">= rtpengine {other.max_pps:,} pps: {'met' if ok else 'NOT met'} "
                f"({r.max_pps / other.max_pps:.2f}×)"
            )
        one = base.get(r.streams)
        if r.workers > 1 and one is not None and one.max_pps:
            lines.append(
                f"Scaling at {r.streams:,} streams: {r.workers} workers relay "
                f"{r.max_pps / one.max_pps:.2f}× what 1 worker relays"
                + (" (cores shared with the generator)" if r.shared_cores else "")
            )
    relayd = {(r.streams, r.workers): r for r in ours}
    for r in rows:
        mine = relayd.get((r.streams, r.workers))
        if r.relay == "candidate" and not r.error and mine is not None and mine.max_pps:
            lines.append(
                f"Candidate at {r.streams:,} streams, {r.workers} worker(s): {r.max_pps:,} pps, "
                f"{r.max_pps / mine.max_pps:.2f}× relayd; CPU per 10k packets "
                f"{r.cpu_s_per_10k:.3f} s against {mine.cpu_s_per_10k:.3f} s"
            )
    return lines


def export_revision(rev: str, dest: Path) -> None:
    """The daemon's packages (relayd/, workers/, nft/, ...) as committed at ``rev``."""
    git = ["git", "-C", str(REPO)]
    listing = subprocess.run(
        [*git, "ls-tree", "--name-only", rev], capture_output=True, text=True, timeout=30
    )
    packages = [
        name
        for name in listing.stdout.split()
        if name not in ("tests", "bench")
        and subprocess.run(
            [*git, "cat-file", "-e", f"{rev}:{name}/__init__.py"], capture_output=True, timeout=30
        ).returncode
        == 0
    ]
    if listing.returncode != 0 or "relayd" not in packages:
        raise BenchError(f"no relayd package at {rev}: {listing.stderr.strip()}")
    done = subprocess.run(
        [*git, "archive", "--format=tar", rev, *packages], capture_output=True, timeout=60
    )
    if done.returncode != 0:
        raise BenchError(f"git archive {rev}: {done.stderr.decode(errors='replace').strip()}")
    with tarfile.open(fileobj=io.BytesIO(done.stdout)) as tar:
        tar.extractall(dest, filter="data")


def describe_relayd(args: argparse.Namespace) -> str:
    if args.relayd_rev:
        commit = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", args.relayd_rev],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return f"relayd at {args.relayd_rev} ({commit or 'unknown'}), uncommitted edits excluded"
    source: Path = args.relayd_source
    """The revision of the relayd tree under test, and whether it has local changes."""
    try:
        git = ["git", "-C", str(source)]
        head = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--", "relayd", "workers"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return f"relayd from {source}"
    if head.returncode != 0:
        return f"relayd from {source}"
    changes = " with local changes" if dirty.stdout.strip() else ""
    where = "" if source == REPO else f" from {source}"
    return f"relayd {head.stdout.strip()}{changes}{where}"


def describe_machine() -> str:
    model = "unknown CPU"
    with suppress(OSError), open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    try:
        version = subprocess.run(
            [RTPENGINE_BIN, "--version"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=5,
        ).stdout.strip()
        version = version.removeprefix("Version: ") or "unknown"
    except (OSError, subprocess.TimeoutExpired):
        version = "not installed"
    return (
        f"Machine: {os.cpu_count()} x {model}, Linux {platform.release()}, "
        f"Python {platform.python_version()} ({os.path.realpath(sys.executable)}), "
        f"rtpengine {version}"
    )


# -- main ------------------------------------------------------------------------------------


def _int_list(text: str) -> list[int]:
    return [int(item.replace("_", "")) for item in text.split(",") if item.strip()]


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/media.py",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument("--streams", help="concurrent stream counts (default 1,100,1000)")
    parser.add_argument(
        "--record",
        action="store_true",
        help="record every call (recording-dir, record-call=yes) in both daemons",
    )
    parser.add_argument(
        "--workers",
        help="relay worker/thread counts for the scaling rows (default 1,2,all: "
        "all = every core but the generator's, or every core on a 2-core machine)",
    )
    parser.add_argument("--scale-streams", type=int, help="streams for the scaling rows")
    parser.add_argument(
        "--generator-cores",
        type=int,
        default=1,
        metavar="N",
        help="generator processes, one per core (the first N cores), streams and rate "
        "split between them: one core sends about 0.35 Mpps, more than one relay core "
        "takes, not more than many (default 1)",
    )
    parser.add_argument("--only", choices=RELAYS, help="benchmark one relay only")
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
        "--fresh-calls",
        choices=("rtpengine", "relayd", "always", "never"),
        default="rtpengine",
        help="whose calls are deleted and set up again before each trial (default rtpengine: "
        "10.5 stops reading a socket for good once its queue held more than 50 packets "
        "5 times, so an overloaded trial would poison the next ones)",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--relayd-source",
        type=Path,
        default=REPO,
        metavar="DIR",
        help="relayd source tree to run (default: this checkout), e.g. to measure a patch",
    )
    source.add_argument(
        "--relayd-rev",
        metavar="REV",
        help="run relayd as committed at REV (git archive of its packages), "
        "unaffected by uncommitted edits in the checkout",
    )
    parser.add_argument(
        "--candidate",
        type=Path,
        metavar="DIR",
        help="also run relayd from the source tree DIR (a patch to measure), labelled "
        "candidate, side by side with the others",
    )
    parser.add_argument(
        "--generator-check",
        action=argparse.BooleanOptionalAction,
        help="first measure the generator's own ceiling, with kernel forwarding and no "
        "daemon (default: on, off with --quick)",
    )
    parser.add_argument(
        "--sink",
        choices=("nft", "socket"),
        default="nft",
        help="how trials count delivered packets: an nft counter that drops them at the "
        "callee's veth (default; cheapest for everyone) or the C sink's socket (checks "
        "every packet; it shares the generator's core, which then limits the rate); "
        "warm-ups always use the socket",
    )
    parser.add_argument("--log-level", type=int, default=3, help="daemons' log level")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--keep-logs", metavar="DIR", help="write the daemons' logs here")
    args = parser.parse_args(argv)
    cpus = sorted(os.sched_getaffinity(0))
    if args.quick:
        args.streams = args.streams or "1"
        args.workers = args.workers or "1"
        args.duration = args.duration or 1.0
        args.steps = 2 if args.steps is None else args.steps
        args.cpu_seconds = args.cpu_seconds or 1.0
        args.generator_check = bool(args.generator_check)
    args.streams = _int_list(args.streams or "1,100,1000")
    everything = len(cpus) - args.generator_cores if len(cpus) > 2 else len(cpus)
    workers = (args.workers or "1,2,all").replace("all", str(everything))
    args.workers = sorted(set(_int_list(workers)))
    args.scale_streams = args.scale_streams or max(args.streams)
    args.duration = args.duration or 2.0
    args.steps = 4 if args.steps is None else args.steps
    args.cpu_seconds = args.cpu_seconds or 3.0
    args.generator_check = args.generator_check is not False
    if len(cpus) < 2:
        parser.error("needs at least 2 CPUs: one for the relay, one for the generator")
    if not 1 <= args.generator_cores < len(cpus):
        parser.error(f"--generator-cores must be between 1 and {len(cpus) - 1}")
    span = (RELAY_PORT_MAX - RELAY_PORT_MIN + 1) // (len(RELAYS) + 1) - 16
    if max([*args.streams, args.scale_streams]) * PORTS_PER_STREAM > span:
        parser.error(f"at most {span // PORTS_PER_STREAM:,} streams fit the relay port range")
    if max(args.workers) > len(cpus) or min(args.workers) < 1:
        parser.error(f"--workers must be between 1 and {len(cpus)}")
    return args


def plan(args: argparse.Namespace) -> list[tuple[int, int, list[str]]]:
    """(streams, workers, relays) groups in run order: the generator checks ("kernel")
    first, then both relays side by side at each size, then the scaling groups."""
    relays = [args.only] if args.only else list(RELAYS)
    if args.candidate:
        relays.insert(1, "candidate")
    first = args.workers[0]
    groups = [(s, 1, ["kernel"]) for s in args.streams] if args.generator_check else []
    groups += [(s, first, relays) for s in args.streams]
    groups += [(args.scale_streams, w, relays) for w in args.workers[1:]]
    return groups


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks that clean up


def _relative(path: str) -> str:
    try:
        return str(Path(path).absolute().relative_to(Path.cwd()))
    except ValueError:
        return path


def run_rows(
    args: argparse.Namespace, cpus: Sequence[int], nofile: int, tmp: Path
) -> tuple[list[Row], bool]:
    """Every row of the plan, in the namespaces; a row that fails is reported, not fatal."""
    rows: list[Row] = []
    failed = False
    workdir = Path(args.keep_logs) if args.keep_logs else tmp
    workdir.mkdir(parents=True, exist_ok=True)
    binary = compile_generator(tmp)
    if args.relayd_rev:
        args.relayd_source = tmp / "relayd-src"
        export_revision(args.relayd_rev, args.relayd_source)
    # this process (nft reads, ng requests) stays off the relay's cores
    os.sched_setaffinity(0, {cpus[0]})  # the first generator core
    with topology():
        for streams, workers, relays in plan(args):
            place = placement(workers, args.generator_cores, cpus)
            assert place is not None  # parse_args bounds --workers
            group = [
                Row(streams, relay, workers, place.relay, place.generators, place.shared)
                for relay in relays
            ]
            print(
                f"... {' and '.join(relays)}, {streams:,} streams, {workers} worker(s) on "
                f"core(s) {','.join(map(str, place.relay))}",
                file=sys.stderr,
                flush=True,
            )
            try:
                if relays == ["kernel"]:
                    measure_generator(group[0], args, binary, place, nofile)
                else:
                    measure_group(group, args, binary, place, workdir, nofile)
            except (BenchError, NgTimeout, subprocess.TimeoutExpired) as exc:
                print(f"{' and '.join(relays)}, {streams:,} streams failed: {exc}", file=sys.stderr)
                for row in group:
                    row.error = row.error or str(exc).split("\n")[0][:120]
                failed = True
            rows.extend(group)
    return rows, failed


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if os.geteuid() != 0:
        print("bench/media.py needs root (network namespaces)", file=sys.stderr)
        return 2
    if args.only != "relayd" and not os.access(RTPENGINE_BIN, os.X_OK):
        print(f"{RTPENGINE_BIN} not found: use --only relayd", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _terminate)
    cpus = sorted(os.sched_getaffinity(0))
    nofile = file_limit()
    command = shlex.join([_relative(sys.executable), _relative(sys.argv[0]), *sys.argv[1:]])
    gens = ",".join(map(str, cpus[: args.generator_cores]))
    counting = "an nft counter at the callee's veth" if args.sink == "nft" else "the socket sink"
    header = [
        f"$ {command}",
        "",
        describe_machine(),
        describe_relayd(args),
        f"Generator on core(s) {gens}; trials of {args.duration:g} s; RTP {RTP_SIZE} bytes "
        f"(12 + 160), caller → callee only; delivered packets counted by {counting}.",
    ]
    if args.record:
        header.append("Every call recorded: recording-dir (pcap method), record-call=yes.")
    print("\n".join(header), flush=True)

    os.makedirs(os.path.dirname(LOCK_FILE), exist_ok=True)
    with open(LOCK_FILE, "w") as lock, tempfile.TemporaryDirectory(prefix="rbm-") as tmp:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print("another bench/media.py is running", file=sys.stderr)
            return 2
        try:
            rows, failed = run_rows(args, cpus, nofile, Path(tmp))
        except BenchError as exc:
            print(f"bench/media.py: {exc}", file=sys.stderr)
            return 1
    print()
    print(render(rows, args.loss, args.cpu_rate))
    if args.json:
        payload = {
            "command": command,
            "machine": header[2:],
            "loss_limit": args.loss,
            "trial_seconds": args.duration,
            "rows": [asdict(r) for r in rows],
        }
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)  # namespaces and processes were removed on the way out
