#!/usr/bin/env python3
"""DTMF benchmark: streams per core with DTMF detection versus plain forwarding, relayd and
rtpengine 10.5 side by side.

A stream is one call at 20 ms packets both ways, no loss, 50 packets a second each way. The
caller sends PCMU: one second of audio in a loop, 100 ms of the digit "5" (770 + 1336 Hz)
then 900 ms of a 440 Hz tone with a tremolo (bench/transcode.py's); the callee sends PCMU.
Two modes, each for both daemons, in the same run, one after the other on the same core:

* ``plain``: both parties have PCMU and telephone-event; the daemon forwards in userspace
  (``--table=-1``: rtpengine without its kernel module; relayd in its worker), nothing
  decoded. The baseline.
* ``detect``: the caller has PCMU only, the callee PCMU and telephone-event; the offer says
  ``codec: {transcode: [telephone-event]}`` (the suite's "PCM to RFC DTMF transcoding"):
  the caller's audio is decoded, listened to for tones, and re-encoded; the digit goes to
  the callee as RFC 4733 events. ``dtmf-log-dest`` is set (to a socket of this process), so
  each digit found is also reported: the run checks that the callee got events and that
  about one digit per stream per second was reported (the detector works, in both daemons).

Figures: each daemon's CPU time (utime + stime of it and its children, from /proc) during
the sending, as a share of a core; streams per core = streams / share (the daemon is not
driven to saturation: the figure extrapolates its cost per stream). And the engine alone:
relayd's media engine in this process, PCMU decoded and encoded with and without the
detector, and the per-packet look of the RFC 4733 watch (relayd/worker/dtmf.py) at a
packet that is no event.

    python bench/dtmf.py                        # 40 streams, 5 s each
    python bench/dtmf.py --streams 20 --seconds 3
    python bench/dtmf.py --only engine          # no daemons (no rtpengine needed)

Ports (outside namespaces): 25000-25999 (``--port-base``). Every daemon and socket is
removed at the end, also on failure; every loop is bounded in time.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import select
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO, REPO / "bench"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import transcode as tc  # noqa: E402

from relayd.ng.client import NgClient  # noqa: E402
from relayd.transcode import g711, rtp  # noqa: E402
from relayd.transcode.plan import CodecPlan, Format  # noqa: E402
from relayd.transcode.transcoder import Transcoder  # noqa: E402
from relayd.worker.dtmf import DtmfWatch  # noqa: E402

HOST = tc.HOST
PCMU = tc.PCMU
TE = Format(101, "telephone-event", 8000, fmtp="0-15")
MODES = ("plain", "detect")
DIGIT_PACKETS = 5  # 100 ms of the digit in each second


def caller_payloads() -> list[bytes]:
    """One second of PCMU: the digit "5" for 100 ms, then the tone of bench/transcode.py."""
    table = g711.encoder_table("PCMU")
    step = 2 * math.pi / 8000
    digit = bytes(
        table[int(6000 * (math.sin(770 * n * step) + math.sin(1336 * n * step))) & 0xFFFF]
        for n in range(160 * DIGIT_PACKETS)
    )
    audio = tc.payloads(PCMU)
    return [digit[160 * i : 160 * (i + 1)] for i in range(DIGIT_PACKETS)] + audio[DIGIT_PACKETS:]


# -- engine alone ------------------------------------------------------------------------------


def engine_rate(plan: CodecPlan, cycle: list[bytes], seconds: float) -> float:
    """Packets per CPU second of ``plan`` on the caller's audio."""
    engine = Transcoder(plan)
    packets = [rtp.build(0, False, i, i * 160, 0x1234, p) for i, p in enumerate(cycle)]
    count, seq = 0, 0
    began = time.process_time()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for p in packets:
            data = bytearray(p)
            data[2:4] = (seq & 0xFFFF).to_bytes(2, "big")
            data[4:8] = ((seq * 160) & 0xFFFFFFFF).to_bytes(4, "big")
            engine.process(data)
            seq += 1
        count += len(packets)
    used = time.process_time() - began
    if engine.counters.errors:
        raise tc.BenchError(f"engine errors: {engine.counters}")
    return count / used


def watch_cost(seconds: float) -> float:
    """Nanoseconds the RFC 4733 watch takes for a packet that is no event."""
    watch = DtmfWatch(0, "bench 1", {101: 8000}, lambda message: None)
    packet = rtp.build(0, False, 1, 160, 0x1234, b"\xff" * 160)
    source = (HOST, 1)
    count = 0
    began = time.process_time()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for _ in range(10000):
            watch.packet(source, packet)
        count += 10000
    return (time.process_time() - began) / count * 1e9


# -- daemons over ng -------------------------------------------------------------------------


def ng_calls(
    client: NgClient, mode: str, streams: int, gen: tc.Generator, tag: str
) -> list[tuple[socket.socket, tc.Leg]] | str:
    """Set up the calls; the generator's legs, or why the daemon would not do the mode."""
    caller_port, callee_port = gen.caller.getsockname()[1], gen.callee.getsockname()[1]
    cycle, back = caller_payloads(), tc.payloads(PCMU)
    legs: list[tuple[socket.socket, tc.Leg]] = []
    for i in range(streams):
        common = {"call-id": f"bench-{tag}-{i}", "from-tag": f"caller-{i}"}
        flags: dict[str, object] = {"replace": ["origin"], "ICE": "remove"}
        if mode == "detect":
            offer_sdp = tc._sdp(HOST, caller_port, [PCMU])
            flags["codec"] = {"transcode": ["telephone-event"]}
        else:
            offer_sdp = tc._sdp(HOST, caller_port, [PCMU, TE])
        offer = client.request({"command": "offer", "sdp": offer_sdp, **flags, **common})
        if offer.get("result") != "ok":
            return f"offer failed: {offer.get('error-reason')}"
        sdp = str(offer["sdp"])
        pt = tc._rtpmap_pt(sdp, "telephone-event")
        offered = tc._M.search(sdp)
        if pt is None or offered is None:
            return "the offer to the callee has no telephone-event"
        answer_sdp = tc._sdp(HOST, callee_port, [PCMU, Format(pt, TE.name, 8000)])
        tags = {"to-tag": f"callee-{i}", "replace": ["origin"], **common}
        answer = client.request({"command": "answer", "sdp": answer_sdp, **tags})
        if answer.get("result") != "ok":
            return f"answer failed: {answer.get('error-reason')}"
        answered = tc._M.search(str(answer["sdp"]))
        if answered is None:
            return "the answer to the caller has no audio"
        legs.append((gen.caller, tc.Leg((HOST, int(answered.group(1))), 0, 160, cycle, 0x1000 + i)))
        legs.append((gen.callee, tc.Leg((HOST, int(offered.group(1))), 0, 160, back, 0x2000 + i)))
    return legs


def drain_reports(sock: socket.socket) -> int:
    count = 0
    for _ in range(100000):  # bounded: a run reports a few thousand digits at most
        if not select.select([sock], [], [], 0)[0]:
            break
        with contextlib.suppress(BlockingIOError):
            sock.recv(4096)
            count += 1
    return count


def check(mode: str, gen: tc.Generator, reports: int, streams: int, seconds: float) -> str:
    """Why the run did not do what the mode says ("" if it did)."""
    got = {key for key, count in gen.types.items() if count}
    if mode == "plain":
        return "" if got == {("caller", 0), ("callee", 0)} else f"received {sorted(got)}"
    if not any(side == "callee" and pt != 0 for side, pt in got):
        return f"no telephone-event reached the callee: received {sorted(got)}"
    if reports < streams * (seconds - 1):
        return f"only {reports} digits reported for {streams} streams in {seconds:.0f} s"
    return ""


def daemon_figure(
    name: str, argv: list[str], ng: int, mode: str, streams: int, seconds: float,
    gen: tc.Generator, reports: socket.socket, cpu: int, log: Path,
) -> tuple[float, float, int, int, int] | str:  # fmt: skip
    with tc.daemon(argv, cpu, ng, log) as proc, NgClient((HOST, ng), timeout=2.0) as client:
        legs = ng_calls(client, mode, streams, gen, f"{name}-{mode}")
        if isinstance(legs, str):
            return legs
        try:
            gen.received = 0
            gen.run(legs, 1.0)  # warm-up
            drain_reports(reports)
            before, began = tc.cpu_seconds(proc.pid), time.monotonic()
            gen.received = 0
            gen.types.clear()
            sent, received = gen.run(legs, seconds)
            share = (tc.cpu_seconds(proc.pid) - before) / (time.monotonic() - began)
            time.sleep(0.2)  # the last digits' ends
            digits = drain_reports(reports)
        finally:
            for i in range(streams):
                with contextlib.suppress(Exception):
                    client.request(
                        {
                            "command": "delete",
                            "call-id": f"bench-{name}-{mode}-{i}",
                            "from-tag": f"caller-{i}",
                        }
                    )
    if why := check(mode, gen, digits, streams, seconds):
        return why
    if received < sent * 0.9:
        return f"only {received} of {sent} packets came back: overloaded"
    return share, streams / share if share else 0.0, sent, received, digits


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--streams", type=int, default=40, help="calls per daemon run")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--only", choices=("engine", "daemons"), default=None)
    parser.add_argument("--daemon-cpu", type=int, default=1, help="core the daemons run on")
    parser.add_argument("--generator-cpu", type=int, default=0)
    parser.add_argument("--port-base", type=int, default=25000)
    parser.add_argument("--log-dir", default="/tmp", help="where the daemons' logs go")
    return parser.parse_args(argv)


def daemon_runs(
    args: argparse.Namespace, gen: tc.Generator, reports: socket.socket
) -> Iterator[tuple[str, str, tuple[float, float, int, int, int] | str]]:
    base, cpu = args.port_base, args.daemon_cpu
    dest = f"{HOST}:{reports.getsockname()[1]}"
    logs = Path(args.log_dir)
    for mode in MODES:
        argv = [*tc.rtpengine_argv(base, range(base + 600, base + 900)), f"--dtmf-log-dest={dest}"]
        log = logs / "bench-dtmf-rtpengine.log"
        yield (
            "rtpengine 10.5",
            mode,
            daemon_figure(
                "rtpengine", argv, base, mode, args.streams, args.seconds, gen, reports, cpu, log
            ),
        )
        argv = [*tc.relayd_argv(base + 1, range(base + 10, base + 300)), "--dtmf-log-dest", dest]
        log = logs / "bench-dtmf-relayd.log"
        yield (
            "relayd",
            mode,
            daemon_figure(
                "relayd", argv, base + 1, mode, args.streams, args.seconds, gen, reports, cpu, log
            ),
        )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    base = args.port_base
    if args.streams * 4 > 290:
        raise SystemExit("at most 72 streams: the port ranges hold 290 ports each")
    rows: list[str] = []
    if args.only != "daemons":
        seconds = min(args.seconds, 3.0)
        cycle = caller_payloads()
        print(f"engine alone, one core of this machine ({os.cpu_count()} cores)")
        for label, plan in (
            ("PCMU decoded and encoded", CodecPlan(decode=(PCMU,), encode=PCMU)),
            ("the same, tones detected", CodecPlan(decode=(PCMU,), encode=PCMU, dtmf_out=TE)),
        ):
            rate = engine_rate(plan, cycle, seconds)
            rows.append(
                f"| engine alone | {label} | {rate:,.0f} packets/s | "
                f"{rate / tc.PACKETS_PER_SECOND:,.0f} |"
            )
            print(rows[-1], flush=True)
        cost = watch_cost(seconds)
        rows.append(
            f"| engine alone | RFC 4733 watch, a packet that is no event | {cost:.0f} ns | |"
        )
        print(rows[-1], flush=True)
    if args.only == "engine":
        return 0
    os.sched_setaffinity(0, {args.generator_cpu})
    caller, callee, reports = tc._udp(base + 990), tc._udp(base + 991), tc._udp(base + 992)
    gen = tc.Generator(caller, callee)
    try:
        for label, mode, result in daemon_runs(args, gen, reports):
            if isinstance(result, str):
                rows.append(f"| {label} | {mode} | not measured: {result} | |")
            else:
                share, per_core, sent, received, digits = result
                figures = (
                    f"{args.streams} streams: {100 * share:.1f} % of a core, {sent} sent, "
                    f"{received} back, {digits} digits reported"
                )
                rows.append(f"| {label} | {mode} | {figures} | {per_core:,.0f} |")
            print(rows[-1], flush=True)
    finally:
        for sock in (caller, callee, reports):
            sock.close()
    print("\n| measured | mode | figures | streams per core |\n|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
