#!/usr/bin/env python3
"""relayd's ng work without the network: supervisor CPU per command, warm.

Builds relayd's supervisor in this process (the same configuration as
bench/ng.py's relayd: loopback interface, no kernel path, no journal, log
level 3, one media worker spawned as in the daemon) and hands it bench/ng.py's
offer, answer and delete requests directly, as the ng socket would: bencode
decoding, flags, SDP parsing and rewriting, the call model, port allocation
with its real socket binds, the reply cache and the reply's encoding. There
are no ng datagrams, no wake-ups and no other process in between, and the same
few objects are touched over and over, so caches stay warm: this is the least
this code costs per request on this machine, the part of the daemon's
per-cycle CPU that bench/ng.py cannot separate from the I/O around it.

Reports CPU per command (this process only: the worker's side of the
hand-over is not counted; the supervisor's is, under "rest", with the event
loop's turns and this script's own loop) and per cycle, from the best of
``--rounds`` rounds of ``--cycles`` cycles each. Which calls reach their worker
before they are deleted depends on the cycle rate against the 2 ms batching
of hand-overs, so "rest" is smaller here than in the daemon. Compare
the per-cycle figure with rtpengine's whole-daemon CPU per cycle in
bench/ng.py's table of the same run.

    .venv/bin/python bench/ng_inprocess.py
    .venv/bin/python bench/ng_inprocess.py --cycles 5000 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import time

import ng as bench  # bench/ng.py, beside this script
import uvloop

from relayd import log
from relayd.calls.interfaces import resolve
from relayd.certificate import load_or_create
from relayd.config import load
from relayd.daemon import GC_THRESHOLDS, system_addresses
from relayd.ng.server import NgService
from relayd.supervisor import Supervisor

__all__ = ["main"]

SOURCE = ("127.0.0.10", 5060)
STEPS = ((b"o", "offer"), (b"a", "answer"), (b"d", "delete"))


def relayd_options(port_min: int, port_max: int) -> list[str]:
    return [
        "--config-file=none",
        "--interface=127.0.0.1",
        "--listen-ng=127.0.0.1:22263",  # parsed, never bound here
        f"--port-min={port_min}",
        f"--port-max={port_max}",
        "--table=-1",
        "--delete-delay=0",
        "--state-dir=none",  # no journal: nothing of another run is taken back
        "--log-level=3",
        "--num-threads=1",
    ]


async def measure(args: argparse.Namespace) -> dict[str, float]:
    options = relayd_options(args.port_min, args.port_max)
    config = load(options)
    log.configure(config.log_level, stderr=True)
    interfaces = resolve(config.interfaces, system_addresses())
    supervisor = Supervisor(config, interfaces, load_or_create(None, None), argv=options)
    gc.freeze()  # as relayd's main() does once start-up is done
    gc.set_threshold(*GC_THRESHOLDS)
    supervisor.media.start()
    service = NgService(supervisor.dispatch)
    templates = bench.Templates()
    bodies = {key: getattr(templates, name) for key, name in STEPS}
    names = [name for _, name in STEPS] + ["cycle"]
    best = dict.fromkeys(names, float("inf"))
    number = 0

    async def cycles(count: int, totals: dict[str, float]) -> None:
        nonlocal number
        clock = time.process_time
        for _ in range(count):
            token = b"%010d" % number
            number += 1
            for key, name in STEPS:
                data = token + key + b" " + bodies[key].replace(bench.TOKEN_BYTES, token)
                start = clock()
                reply = service.handle(data, SOURCE)
                totals[name] += clock() - start
                if not isinstance(reply, bytes) or bench.OK not in reply:
                    raise SystemExit(f"{name} failed: {reply!r:.300}")
                await asyncio.sleep(0)  # what the event loop would run between requests

    try:
        await cycles(args.warmup, dict.fromkeys(names, 0.0))
        for _ in range(args.rounds):
            totals = dict.fromkeys(names, 0.0)
            start = time.process_time()
            await cycles(args.cycles, totals)
            await asyncio.sleep(0.01)  # the last worker batch goes out inside the round
            totals["cycle"] = time.process_time() - start
            if totals["cycle"] < best["cycle"] * args.cycles:  # every row from the best round
                best = {name: value / args.cycles for name, value in totals.items()}
    finally:
        await supervisor.media.stop()
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/ng_inprocess.py", description=__doc__)
    parser.add_argument("--cycles", type=int, default=3000, help="cycles per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--port-min", type=int, default=30000)
    parser.add_argument("--port-max", type=int, default=40000)
    args = parser.parse_args(argv)
    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpus[0]})
    spent = uvloop.run(measure(args))
    commit = bench._output(["git", "-C", str(bench.REPO), "describe", "--always", "--dirty"])
    print(f"relayd at {commit or 'unknown'}, Python {sys.version.split()[0]}, CPU {cpus[0]}")
    print(
        f"the best of {args.rounds} rounds of {args.cycles:,} cycles, supervisor CPU only "
        "(no timers run: the supervisor's main loop is not started)"
    )
    print()
    print("| step | CPU µs |")
    print("|---|---:|")
    handled = 0.0
    for _, name in STEPS:
        handled += spent[name]
        print(f"| {name} | {1e6 * spent[name]:.0f} |")
    rest = 1e6 * (spent["cycle"] - handled)
    print(f"| rest: worker hand-overs sent in batches, event loop, this loop | {rest:.0f} |")
    print(f"| **cycle** | **{1e6 * spent['cycle']:.0f}** |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
