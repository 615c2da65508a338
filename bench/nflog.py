#!/usr/bin/env python3
"""Recording copies on the kernel path (nflog): forwarding with and without the copy.

bench/media.py's lab (medialab.py: three namespaces, the C generator, the nft counter
at the callee's ingress), no daemon: relayd's own table code (``nft.KernelForwarder``)
installs ``--streams`` forwards caller → callee in the relay namespace, as the kernel
path does, and the generator sends through them. The same forwards, the same rates,
in five modes, one trial each in turn per rate (other load hits all alike):

* ``plain``: no forward marked recorded (one verdict-map lookup per packet, a miss);
* ``unbound``: every forward marked, no socket bound to the group (the kernel looks
  for a listener and finds none);
* ``copied``: every forward marked, a reader (``relayd.nft.nflog.NflogReader`` in a
  process of its own, on the relay's core, as a recorder would share a core with the
  forwarding) decodes every copy and looks its stream up by key;
* ``stalled``: marked, a reader bound that reads nothing until the trial ends: its
  socket buffer fills, the kernel drops copies and must go on forwarding;
* ``events``: every forward marked for its telephone-event packets only (the DTMF event
  log: chain ``events_G_101``, relayd/nft/ruleset.py), a reader bound; the generator's
  packets are all audio (payload type 0): each pays the jump and the payload-type match,
  none is copied.

Per trial: packets sent and delivered (loss), the relay core's time per delivered
packet (the forwarding and the copies are made in softirq there; measured as the
time a ``SCHED_IDLE`` loop on that core did not get, which is exact where /proc/stat's
ticks only sample, and counts other tenants' processes too: hence medians), and the
reader's own CPU per copy (utime + stime of its process: tick accounting also charges
it softirq work that interrupted it, so beside the generator (``--reader-core``, the
default) it is its own), the copies it read and the packets it
got no copy of (``missed``). ``--repeat`` rounds per rate; the summary keeps each
mode's median trial. rtpengine is not in this run: it records in userspace (the issue's recording
benchmark compares the two through the daemons); this measures the mechanism alone.

    sudo .venv/bin/python bench/nflog.py                  # 100 streams, 4 rates, about 3 minutes
    sudo .venv/bin/python bench/nflog.py --streams 1000 --rates 50000,200000 --seconds 3

Namespaces ``rbn-*`` (``RELAYD_BENCH_NETNS`` names others), the table, conntrack
entries and processes are removed at the end, also on Ctrl-C or failure. Every trial
is bounded: ``--seconds`` each, at most 8 rates.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import select
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("RELAYD_BENCH_NETNS", "rbn")  # beside bench/media.py's rbm-* lab

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO, REPO / "bench"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from medialab import (  # noqa: E402
    CALLEE_ADDR,
    CALLEE_PORT,
    CALLER_ADDR,
    RELAY_CALLEE_SIDE,
    RELAY_CALLER_SIDE,
    RELAY_NS,
    RTP_SIZE,
    Bench,
    BenchError,
    compile_generator,
    file_limit,
    in_netns,
    kernel_counting,
    kernel_forwarding,
    placement,
    spawn,
    stop_process,
    topology,
)

from relayd.nft import Endpoint, Forward, KernelForwarder  # noqa: E402
from relayd.nft.nflog import NflogReader  # noqa: E402
from relayd.nft.ruleset import events_target  # noqa: E402

TABLE = "relaydbench"
GROUP = 35
SOURCE0, RELAY0, OUT0 = 35000, 36000, 37000  # stream i: port + i on each side
MODES = ("plain", "unbound", "copied", "stalled", "events")
EVENTS_PT = 101  # ``events``: the telephone-event payload type the forwards are marked for


@dataclass(slots=True)
class Row:
    mode: str
    rate: int
    sent: int = 0
    received: int = 0
    seconds: float = 0.0
    core_us: float = 0.0  # the relay core's time per delivered packet (the idle probe)
    kept_up: bool = True  # the generator sent what it should have
    copies: int = 0
    lost: int = 0
    overruns: int = 0
    reader_us: float = 0.0  # the reader's CPU per copy

    @property
    def loss(self) -> float:
        return 1 - self.received / self.sent if self.sent else 1.0

    @property
    def missed(self) -> int:
        """Packets sent without a copy read: lost in the kernel (a full socket buffer) or
        after the reader's last copy (which no sequence gap shows)."""
        return max(self.sent - self.copies, 0)


def forwards(streams: int) -> list[Forward]:
    return [
        Forward(
            Endpoint(CALLER_ADDR, SOURCE0 + i),
            Endpoint(RELAY_CALLER_SIDE, RELAY0 + i),
            Endpoint(RELAY_CALLEE_SIDE, OUT0 + i),
            Endpoint(CALLEE_ADDR, CALLEE_PORT),
        )
        for i in range(streams)
    ]


# -- the reader process ------------------------------------------------------------------------


def reader_main(group: int, stall: bool) -> int:
    """Bind ``group`` in this namespace, say "ready", read (or not, with ``stall``) until
    stdin closes, then drain and print the totals and this process's CPU."""
    with NflogReader(group) as reader:
        streams: dict[bytes | None, int] = {}
        print("ready", flush=True)
        start = resource.getrusage(resource.RUSAGE_SELF)
        watched = [sys.stdin] if stall else [sys.stdin, reader]
        while True:
            ready = select.select(watched, [], [], 1.0)[0]
            if sys.stdin in ready and not sys.stdin.readline():
                break
            if reader in ready:
                for copy in reader.drain():
                    key = copy.wire_key()  # what a recorder finds its stream by
                    streams[key] = streams.get(key, 0) + 1
        quiet = time.monotonic() + 0.3  # the last batches, flushed on the kernel's timer
        while time.monotonic() < quiet:
            if select.select([reader], [], [], 0.05)[0]:
                for copy in reader.drain(limit=1 << 16):
                    key = copy.wire_key()
                    streams[key] = streams.get(key, 0) + 1
        end = resource.getrusage(resource.RUSAGE_SELF)
        cpu = end.ru_utime + end.ru_stime - start.ru_utime - start.ru_stime
        print(
            f"received={reader.received} lost={reader.lost} overruns={reader.overruns} "
            f"streams={len(streams)} cpu={cpu:.4f}",
            flush=True,
        )
    return 0


def start_reader(group: int, stall: bool, core: int, nofile: int) -> subprocess.Popen[str]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--reader", str(group)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = spawn(
        [*argv, *(["--stall"] if stall else [])],
        netns=RELAY_NS, cpus=[core], nofile=nofile, stdin=subprocess.PIPE, env=env,
    )  # fmt: skip
    assert proc.stdout is not None
    if not select.select([proc.stdout], [], [], 10.0)[0] or proc.stdout.readline() != "ready\n":
        stop_process(proc)
        raise BenchError(f"the reader did not start: {proc.communicate()}")
    return proc


def stop_reader(proc: subprocess.Popen[str]) -> dict[str, str]:
    out, err = proc.communicate("", timeout=30)
    if proc.returncode != 0:
        raise BenchError(f"the reader failed: {err.strip()}")
    return dict(item.split("=", 1) for item in out.split() if "=" in item)


# -- what the relay's core has left --------------------------------------------------------------


def _spin(core: int, counter: Any) -> None:
    os.sched_setaffinity(0, {core})
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    while True:
        for _ in range(20000):
            pass
        counter.value += 1


class IdleProbe:
    """A process on the relay's core at ``SCHED_IDLE`` that counts loops: it runs only when
    nothing else wants the core, and softirq work interrupts it, so the loops it missed are
    the time everything else took, exactly (tick accounting only samples; other tenants'
    processes count too, hence the medians)."""

    def __init__(self, core: int) -> None:
        ctx = multiprocessing.get_context("fork")
        self.counter = ctx.Value("Q", 0, lock=False)
        self.proc = ctx.Process(target=_spin, args=(core, self.counter), daemon=True)
        self.proc.start()
        self.rate = 0.0

    def mark(self) -> tuple[float, int]:
        return time.monotonic(), int(self.counter.value)

    def calibrate(self, seconds: float = 1.0) -> None:
        """Loops per second with the core otherwise idle (the best of three)."""
        rates = []
        for _ in range(3):
            t0, n0 = self.mark()
            time.sleep(seconds)
            t1, n1 = self.mark()
            rates.append((n1 - n0) / (t1 - t0))
        self.rate = max(rates)

    def used(self, since: tuple[float, int]) -> float:
        """Seconds of the core others used since ``since`` (a :meth:`mark`)."""
        t1, n1 = self.mark()
        return max((t1 - since[0]) - (n1 - since[1]) / self.rate, 0.0)

    def __enter__(self) -> IdleProbe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.kill()
        self.proc.join(5)


# -- trials ------------------------------------------------------------------------------------


def trial(
    bench: Bench, fwd: KernelForwarder, all_fwds: list[Forward], mode: str, rate: int,
    seconds: float, nofile: int, reader_core: str, probe: IdleProbe,
) -> Row:  # fmt: skip
    keys = [f.key for f in all_fwds]
    with in_netns(RELAY_NS):
        if mode == "plain":
            fwd.unrecord(keys)
        elif mode == "events":
            fwd.record(keys, events_target(GROUP, EVENTS_PT))
        else:
            fwd.record(keys, GROUP)
    relay = bench.place.relay
    core = relay[0] if reader_core == "relay" else bench.place.generators[0]
    reader = start_reader(GROUP, mode == "stalled", core, nofile) if mode in MODES[2:] else None
    try:
        since = probe.mark()
        result = bench.trial(rate, seconds)
        used = probe.used(since)
    finally:
        report = stop_reader(reader) if reader is not None else {}
    row = Row(mode, rate, result.sent + result.preroll, result.received, result.seconds)
    row.core_us = used / max(result.received, 1) * 1e6
    row.kept_up = result.generator_kept_up()
    if report:
        row.copies, row.lost = int(report["received"]), int(report["lost"])
        row.overruns = int(report["overruns"])
        row.reader_us = float(report["cpu"]) / max(row.copies, 1) * 1e6
    return row


def median_rows(rows: Sequence[Row]) -> list[Row]:
    """One row per mode and rate: the median trial by core time (its other figures kept)."""
    groups: dict[tuple[str, int], list[Row]] = {}
    for row in rows:
        groups.setdefault((row.mode, row.rate), []).append(row)
    kept = []
    for group in groups.values():
        ordered = sorted(group, key=lambda r: r.core_us)
        kept.append(ordered[(len(ordered) - 1) // 2])
    return kept


def render(rows: Sequence[Row]) -> str:
    head = (
        f"{'mode':<8} {'rate/s':>8} {'sent':>9} {'loss':>7} {'core µs/pkt':>11} "
        f"{'copies':>9} {'missed':>8} {'overruns':>8} {'reader µs/copy':>14}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        copies = f"{r.copies:>9,} {r.missed:>8,} {r.overruns:>8,} {r.reader_us:>14.2f}"
        lines.append(
            f"{r.mode:<8} {r.rate:>8,} {r.sent:>9,} {r.loss:>7.2%} {r.core_us:>11.2f} "
            + (copies if r.mode in MODES[2:] else "")
            + ("" if r.kept_up else "  (generator fell behind)")
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> list[Row]:
    cpus = sorted(os.sched_getaffinity(0))
    place = placement(1, 1, cpus)
    if place is None:
        raise BenchError("needs two cores")
    nofile = file_limit()
    rows: list[Row] = []
    all_fwds = forwards(args.streams)
    with tempfile.TemporaryDirectory(prefix="rbn-") as tmp, topology(), kernel_forwarding():
        binary = compile_generator(Path(tmp))
        with in_netns(RELAY_NS):
            fwd = KernelForwarder(TABLE)
            fwd.ensure_table()
            fwd.install(all_fwds)
            fwd.ensure_recording(GROUP)
        try:
            streams = [(f.source.port, f.relay.address, f.relay.port) for f in all_fwds]
            bench = Bench(binary, streams=streams, place=place, daemon_pid=None, nofile=nofile)
            warm = bench.trial(1000, 0.5)  # the socket sink checks every packet once
            if warm.streams != args.streams or warm.bad:
                raise BenchError(f"{warm.streams} of {args.streams} streams came through")
            with IdleProbe(place.relay[0]) as probe, kernel_counting(place) as counter:
                probe.calibrate()
                bench.counter = counter
                for rate in args.rates:
                    for _ in range(args.repeat):
                        for mode in args.modes:
                            row = trial(
                                bench, fwd, all_fwds, mode, rate, args.seconds, nofile,
                                args.reader_core, probe,
                            )  # fmt: skip
                            rows.append(row)
                            print(render([row]).splitlines()[-1], flush=True)
        finally:
            with in_netns(RELAY_NS):
                fwd.destroy_table()
                fwd.close()
    return rows


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--streams", type=int, default=100)
    p.add_argument("--rates", default="20000,50000,100000,200000", help="packets/s, all streams")
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--repeat", type=int, default=3, help="trials per mode and rate (median)")
    p.add_argument(
        "--reader-core",
        choices=("generator", "relay"),
        default="generator",
        help="where the reader runs: beside the generator (its CPU is its own), or on the "
        "relay's core (sharing it with the forwarding, as a busy host would)",
    )
    p.add_argument("--reader", type=int, help=argparse.SUPPRESS)  # the reader process
    p.add_argument("--stall", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.rates = [int(r) for r in args.rates.split(",")][:8]
    args.modes = [m for m in args.modes.split(",") if m]
    if set(args.modes) - set(MODES) or not 1 <= args.streams <= 1000:
        p.error(f"modes among {', '.join(MODES)}; 1 to 1000 streams")
    if not 0 < args.seconds <= 10 or not 1 <= args.repeat <= 5:
        p.error("--seconds: at most 10; --repeat: 1 to 5")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.reader is not None:
        return reader_main(args.reader, args.stall)
    if os.geteuid() != 0:
        print("needs root (namespaces, nftables)", file=sys.stderr)
        return 2
    started = time.monotonic()
    print(
        f"{args.streams} streams, {RTP_SIZE}-byte RTP, {args.seconds:g} s per trial; "
        f"relay on one core, the reader (copied, stalled) on the {args.reader_core}'s",
        flush=True,
    )
    rows = run(args)
    print(f"\nmedians of {args.repeat} (by core time):")
    print(render(median_rows(rows)))
    print(f"\n{time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
