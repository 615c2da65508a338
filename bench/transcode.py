#!/usr/bin/env python3
"""Transcoding benchmark: transcoded streams per core, relayd and rtpengine 10.5 side by side.

A stream is one call transcoded both ways at 20 ms packets, no loss: the caller sends PCMU,
the callee the other codec (Opus, PCMA or G.722), 50 packets a second each way. Three
figures per codec pair, in the same run:

* ``engine``: relayd's media engine alone in this process (one Transcoder per direction,
  as a worker keeps them), packets pushed through as fast as it takes them; streams per
  core = 1 / (50 x CPU time per packet of both directions). What library choices are made
  by: no sockets, no loop.
* ``worker``: a real relay-worker process pinned to one core, fed ``Forward`` messages
  with the codec plans the negotiation produces, sockets on loopback; ``rtpengine``: Debian's
  rtpengine 10.5 pinned to the same core, ``--num-threads=1``, calls set up over ng (offer
  PCMU with ``codec: {transcode: [X]}``, answer X). The same generator (this process, on
  another core) sends the same packets to both, one daemon after the other; each one's CPU
  time (utime + stime of it and its children, from /proc) during the sending gives
  streams per core = streams / CPU share (the daemon is not driven to saturation: the
  figure is the extrapolation of its cost per stream).
* ``relayd``: relayd itself, calls set up over ng like rtpengine's, once relayd's
  negotiation writes the transcoding into the SDP. Until then it says so and measures
  nothing.

    python bench/transcode.py                        # all pairs, 40 streams, 5 s each
    python bench/transcode.py --pairs opus --streams 20 --seconds 3
    python bench/transcode.py --only engine          # no daemons (no rtpengine needed)

Ports (outside namespaces): 24000-24999 (``--port-base``). Every daemon and socket is
removed at the end, also on failure.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import re
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from relayd import ipc  # noqa: E402
from relayd.ng.client import NgClient  # noqa: E402
from relayd.transcode import g711, rtp  # noqa: E402
from relayd.transcode.codecs import open_encoder  # noqa: E402
from relayd.transcode.plan import CodecPlan, Format  # noqa: E402
from relayd.transcode.transcoder import Transcoder  # noqa: E402

RTPENGINE = "/usr/bin/rtpengine"
HOST = "127.0.0.1"
PCMU = Format(0, "PCMU", 8000)
TARGETS = {
    "opus": Format(96, "opus", 48000, 2),
    "PCMA": Format(8, "PCMA", 8000),
    "G722": Format(9, "G722", 8000),
}
PACKETS_PER_SECOND = 50


class BenchError(RuntimeError):
    pass


# -- what the generator sends ----------------------------------------------------------------


def tone(seconds: float, rate: int = 8000) -> bytes:
    """A 440 Hz tone with a slow tremolo, 16-bit PCM: audio the codecs really have to code."""
    import math

    values = (
        int(8000 * (0.6 + 0.4 * math.sin(2 * math.pi * 2 * n / rate)))
        * math.sin(2 * math.pi * 440 * n / rate)
        for n in range(int(seconds * rate))
    )
    return b"".join(int(v).to_bytes(2, sys.byteorder, signed=True) for v in values)


def payloads(fmt: Format, count: int = 50) -> list[bytes]:
    """``count`` 20 ms payloads of ``fmt`` (one second of the tone), to send in a loop."""
    key = fmt.name
    if key in ("PCMU", "PCMA"):
        table = g711.encoder_table(key)
        pcm = tone(count / 50)
        codes = bytes(
            table[int.from_bytes(pcm[i : i + 2], sys.byteorder)] for i in range(0, len(pcm), 2)
        )
        return [codes[160 * i : 160 * (i + 1)] for i in range(count)]
    rate = 16000 if key == "G722" else 48000
    samples = rate // 50
    encoder = open_encoder(fmt, rate, samples)
    channels = encoder.channels
    source = tone(count / 50, rate)
    out = []
    for i in range(count):
        mono = source[2 * samples * i : 2 * samples * (i + 1)]
        if channels == 2:
            frame = bytearray(4 * samples)
            frame[0::4], frame[1::4] = mono[0::2], mono[1::2]
            frame[2::4], frame[3::4] = mono[0::2], mono[1::2]
            mono = bytes(frame)
        out.append(encoder.encode(mono))
    return out


@dataclass(slots=True)
class Leg:
    """One direction the generator feeds: where to, what payload type and clock."""

    target: tuple[str, int]
    pt: int
    step: int  # timestamp per packet
    cycle: list[bytes]
    ssrc: int
    seq: int = 0


class Generator:
    """Sends every leg's next packet each 20 ms from one socket per side, drains what comes
    back; bounded by ``seconds``."""

    def __init__(self, caller: socket.socket, callee: socket.socket) -> None:
        self.caller, self.callee = caller, callee
        self.received = 0
        self.types: dict[tuple[str, int], int] = {}  # (side, payload type) -> packets received

    def run(self, legs: Sequence[tuple[socket.socket, Leg]], seconds: float) -> tuple[int, int]:
        sent = 0
        start = time.monotonic()
        tick = 0
        while (now := time.monotonic()) - start < seconds:
            for sock, leg in legs:
                payload = leg.cycle[leg.seq % len(leg.cycle)]
                packet = rtp.build(leg.pt, False, leg.seq, leg.seq * leg.step, leg.ssrc, payload)
                with contextlib.suppress(BlockingIOError):
                    sock.sendto(packet, leg.target)
                    sent += 1
                leg.seq += 1
            tick += 1
            self.drain()
            delay = start + tick * 0.02 - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif now - start > 1 and delay < -0.2:
                raise BenchError("the generator falls behind: fewer streams, please")
        time.sleep(0.1)
        self.drain()
        return sent, self.received

    def drain(self) -> None:
        for side, sock in (("caller", self.caller), ("callee", self.callee)):
            while select.select([sock], [], [], 0)[0]:
                try:
                    data = sock.recv(4096)
                except BlockingIOError:
                    break
                self.received += 1
                if len(data) > 1:
                    key = (side, data[1] & 0x7F)
                    self.types[key] = self.types.get(key, 0) + 1

    def check(self, callee_pt: int) -> str:
        """Why what came back was not transcoded ("" if it was): the caller must get only
        PCMU, the callee only the other codec."""
        got = {key for key, count in self.types.items() if count}
        if got != {("caller", 0), ("callee", callee_pt)}:
            return f"received payload types {sorted(got)}"
        return ""


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and its children (threads included), from /proc."""
    total = 0.0
    pids = [pid]
    with contextlib.suppress(OSError):
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            pids.append(int(child))
    tick = os.sysconf("SC_CLK_TCK")
    for one in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{one}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


# -- engine alone ------------------------------------------------------------------------------


def engine_figure(target: Format, seconds: float) -> tuple[float, float, float]:
    """Packets per CPU second of PCMU->target, target->PCMU, and streams per core."""
    results = []
    for source, out, cycle in ((PCMU, target, payloads(PCMU)), (target, PCMU, payloads(target))):
        engine = Transcoder(CodecPlan(decode=(source,), encode=out))
        step = 160 if source.rate == 8000 else 960
        packets = [rtp.build(source.pt, False, i, i * step, 0x1234, p) for i, p in enumerate(cycle)]
        count = 0
        began = time.process_time()
        deadline = time.monotonic() + seconds
        seq = 0
        while time.monotonic() < deadline:
            for p in packets:
                data = bytearray(p)
                data[2:4] = (seq & 0xFFFF).to_bytes(2, "big")
                data[4:8] = ((seq * step) & 0xFFFFFFFF).to_bytes(4, "big")
                engine.process(data)
                seq += 1
            count += len(packets)
        used = time.process_time() - began
        if engine.counters.errors:
            raise BenchError(f"engine errors {source.name}->{out.name}: {engine.counters}")
        results.append(count / used)
    forward, back = results
    streams = 1 / (PACKETS_PER_SECOND * (1 / forward + 1 / back))
    return forward, back, streams


# -- relay-worker fed Forward messages ------------------------------------------------------


@contextlib.contextmanager
def worker_process(cpu: int) -> Iterator[tuple[subprocess.Popen[bytes], socket.socket]]:
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    argv = [sys.executable, "-m", "relayd.worker", "--worker", "0", "--fd", str(child.fileno())]
    proc = subprocess.Popen(
        [*argv, "--cpu", str(cpu)], pass_fds=[child.fileno()], env=env, stderr=subprocess.DEVNULL
    )
    child.close()
    try:
        if not select.select([parent], [], [], 10)[0]:
            raise BenchError("the worker did not say hello")
        parent.recv(1 << 20)
        parent.send(ipc.encode(ipc.Configure(0, stats_interval=1.0)))
        yield proc, parent
    finally:
        with contextlib.suppress(OSError):
            parent.send(ipc.encode(ipc.Shutdown()))
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        parent.close()


def _udp(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((HOST, port))
    sock.setblocking(False)
    return sock


def worker_figure(
    target: Format, streams: int, seconds: float, ports: range, gen: Generator, cpu: int
) -> tuple[float, float, int, int] | str:
    """CPU share of the worker, streams per core, packets sent and received."""
    caller_at, callee_at = gen.caller.getsockname()[:2], gen.callee.getsockname()[:2]
    relay: list[socket.socket] = []
    with worker_process(cpu) as (proc, link), contextlib.ExitStack() as stack:
        legs: list[tuple[socket.socket, Leg]] = []
        pu, px = payloads(PCMU), payloads(target)
        for i in range(streams):
            a = stack.enter_context(_udp(ports[2 * i]))  # towards the caller
            b = stack.enter_context(_udp(ports[2 * i + 1]))  # towards the callee
            relay += [a, b]
            forward = CodecPlan(decode=(PCMU,), encode=target).to_text()
            back = CodecPlan(decode=(target,), encode=PCMU).to_text()
            a_key, b_key = (
                ipc.socket_key(HOST, ports[2 * i]),
                ipc.socket_key(HOST, ports[2 * i + 1]),
            )
            specs = (
                ipc.SocketSpec(
                    a_key,
                    0,
                    out=b_key,
                    expect=ipc.socket_key(*caller_at),
                    learning="off",
                    codecs=forward,
                ),
                ipc.SocketSpec(
                    b_key,
                    1,
                    out=a_key,
                    expect=ipc.socket_key(*callee_at),
                    learning="off",
                    codecs=back,
                ),
            )
            socket.send_fds(
                link,
                [ipc.encode_forward(ipc.Forward(f"bench {i}", specs), {a_key: 0, b_key: 1})],
                [a.fileno(), b.fileno()],
            )
            step = 960 if target.rate == 48000 else 160
            legs.append((gen.caller, Leg((HOST, ports[2 * i]), 0, 160, pu, 0x1000 + i)))
            legs.append(
                (gen.callee, Leg((HOST, ports[2 * i + 1]), target.pt, step, px, 0x2000 + i))
            )
        for sock in relay:
            sock.close()  # the worker holds them now
        time.sleep(0.3)
        gen.received = 0
        gen.run(legs, 1.0)  # warm-up: codecs opened, caches filled
        before, began = cpu_seconds(proc.pid), time.monotonic()
        gen.received = 0
        gen.types.clear()
        sent, received = gen.run(legs, seconds)
        share = (cpu_seconds(proc.pid) - before) / (time.monotonic() - began)
        if why := gen.check(target.pt):
            return why
        while select.select([link], [], [], 0)[0]:
            link.recv(1 << 20)
    return share, streams / share if share else 0.0, sent, received


# -- daemons over ng -------------------------------------------------------------------------


def _sdp(addr: str, port: int, formats: Sequence[Format]) -> str:
    lines = [
        "v=0", f"o=- 1 1 IN IP4 {addr}", "s=bench-transcode", f"c=IN IP4 {addr}", "t=0 0",
        f"m=audio {port} RTP/AVP {' '.join(str(f.pt) for f in formats)}",
    ]  # fmt: skip
    for f in formats:
        channels = f"/{f.channels}" if f.channels > 1 else ""
        lines.append(f"a=rtpmap:{f.pt} {f.name}/{f.rate}{channels}")
    lines += ["a=ptime:20", "a=sendrecv", ""]
    return "\r\n".join(lines)


_M = re.compile(r"^m=audio (\d+) ", re.M)


def _rtpmap_pt(sdp: str, name: str) -> int | None:
    found = re.search(rf"^a=rtpmap:(\d+) {re.escape(name)}/", sdp, re.M | re.I)
    return int(found.group(1)) if found else None


def ng_calls(
    client: NgClient, target: Format, streams: int, gen: Generator, tag: str
) -> list[tuple[socket.socket, Leg]] | str:
    """Set up the calls; the generator's legs, or why the daemon would not transcode."""
    caller_port, callee_port = gen.caller.getsockname()[1], gen.callee.getsockname()[1]
    pu, px = payloads(PCMU), payloads(target)
    legs: list[tuple[socket.socket, Leg]] = []
    name = target.name
    for i in range(streams):
        common = {"call-id": f"bench-{tag}-{i}", "from-tag": f"caller-{i}"}
        offer_sdp = _sdp(HOST, caller_port, [PCMU])
        flags = {"codec": {"transcode": [name]}, "replace": ["origin"], "ICE": "remove"}
        offer = client.request({"command": "offer", "sdp": offer_sdp, **flags, **common})
        if offer.get("result") != "ok":
            return f"offer failed: {offer.get('error-reason')}"
        sdp = str(offer["sdp"])
        pt = _rtpmap_pt(sdp, name)
        offered = _M.search(sdp)
        if pt is None or offered is None:
            return f"the offer to the callee has no {name}: no transcoding"
        answer_fmt = dataclasses.replace(target, pt=pt)
        answer_sdp = _sdp(HOST, callee_port, [answer_fmt])
        tags = {"to-tag": f"callee-{i}", "replace": ["origin"], **common}
        answer = client.request({"command": "answer", "sdp": answer_sdp, **tags})
        if answer.get("result") != "ok":
            return f"answer failed: {answer.get('error-reason')}"
        answered = _M.search(str(answer["sdp"]))
        if answered is None or _rtpmap_pt(str(answer["sdp"]), "PCMU") is None:
            return "the answer to the caller has no PCMU"
        step = 960 if target.rate == 48000 else 160
        legs.append((gen.caller, Leg((HOST, int(answered.group(1))), 0, 160, pu, 0x1000 + i)))
        legs.append((gen.callee, Leg((HOST, int(offered.group(1))), pt, step, px, 0x2000 + i)))
    return legs


@contextlib.contextmanager
def daemon(argv: list[str], cpu: int, ng: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            ["taskset", "-c", str(cpu), *argv], stdout=out, stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONPATH=str(REPO)),
        )  # fmt: skip
    try:
        with NgClient((HOST, ng), timeout=0.3, retries=0) as client:
            deadline = time.monotonic() + 20
            while True:
                if proc.poll() is not None:
                    raise BenchError(f"{argv[0]} exited: see {log}")
                with contextlib.suppress(Exception):
                    if client.call("ping").get("result") == "pong":
                        break
                if time.monotonic() > deadline:
                    raise BenchError(f"{argv[0]} does not answer ping: see {log}")
                time.sleep(0.1)
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def rtpengine_argv(ng: int, ports: range) -> list[str]:
    return [
        RTPENGINE, "--foreground", "--config-file=none", "--table=-1", f"--interface={HOST}",
        f"--listen-ng={HOST}:{ng}", f"--port-min={ports.start}", f"--port-max={ports.stop - 1}",
        "--num-threads=1", "--endpoint-learning=immediate", "--timeout=3600",
        "--delete-delay=0", "--log-level=4", "--log-stderr",
    ]  # fmt: skip


def relayd_argv(ng: int, ports: range) -> list[str]:
    options = {
        "config-file": "none", "interface": HOST, "listen-ng": f"{HOST}:{ng}",
        "port-min": ports.start, "port-max": ports.stop - 1, "table": -1, "num-threads": 1,
        "endpoint-learning": "immediate", "timeout": 3600, "delete-delay": 0,
        "state-dir": "none", "log-level": 4,
    }  # fmt: skip
    argv = [sys.executable, "-m", "relayd", "--foreground"]
    for key, value in options.items():
        argv += [f"--{key}", str(value)]
    return argv


def daemon_figure(
    name: str, argv: list[str], ng: int, target: Format, streams: int, seconds: float,
    gen: Generator, cpu: int, log: Path,
) -> tuple[float, float, int, int] | str:  # fmt: skip
    with daemon(argv, cpu, ng, log) as proc, NgClient((HOST, ng), timeout=2.0) as client:
        legs = ng_calls(client, target, streams, gen, name)
        if isinstance(legs, str):
            return legs
        try:
            gen.received = 0
            gen.run(legs, 1.0)
            before, began = cpu_seconds(proc.pid), time.monotonic()
            gen.received = 0
            gen.types.clear()
            sent, received = gen.run(legs, seconds)
            share = (cpu_seconds(proc.pid) - before) / (time.monotonic() - began)
            why = gen.check(legs[1][1].pt)
        finally:
            for i in range(streams):
                with contextlib.suppress(Exception):
                    client.request(
                        {
                            "command": "delete",
                            "call-id": f"bench-{name}-{i}",
                            "from-tag": f"caller-{i}",
                        }
                    )
    if why:
        return why
    if received < sent * 0.9:
        return f"only {received} of {sent} packets came back: not transcoding, or overloaded"
    return share, streams / share if share else 0.0, sent, received


# -- the run ----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--pairs", default="opus,PCMA,G722", help="codecs against PCMU")
    parser.add_argument("--streams", type=int, default=40, help="calls per daemon run")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--only", choices=("engine", "daemons"), default=None)
    parser.add_argument("--daemon-cpu", type=int, default=1, help="core the daemons run on")
    parser.add_argument("--generator-cpu", type=int, default=0)
    parser.add_argument("--port-base", type=int, default=24000)
    parser.add_argument("--log-dir", default="/tmp", help="where the daemons' logs go")
    return parser.parse_args(argv)


Result = tuple[float, float, int, int] | str


def daemon_runs(
    args: argparse.Namespace, target: Format, gen: Generator
) -> Iterator[tuple[str, Result]]:
    """The relay-worker's, rtpengine's and relayd's figures for one pair, one after the other."""
    base, cpu, streams, seconds = args.port_base, args.daemon_cpu, args.streams, args.seconds
    logs = Path(args.log_dir)
    worker_ports = range(base + 300, base + 600)
    yield "relay-worker", worker_figure(target, streams, seconds, worker_ports, gen, cpu)
    argv = rtpengine_argv(base, range(base + 600, base + 900))
    log = logs / "bench-transcode-rtpengine.log"
    yield (
        "rtpengine 10.5",
        daemon_figure("rtpengine", argv, base, target, streams, seconds, gen, cpu, log),
    )
    argv = relayd_argv(base + 1, range(base + 10, base + 300))
    log = logs / "bench-transcode-relayd.log"
    yield "relayd", daemon_figure("relayd", argv, base + 1, target, streams, seconds, gen, cpu, log)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    pairs = [TARGETS[p] for p in args.pairs.split(",")]
    base = args.port_base
    if args.streams * 4 > 300:
        raise SystemExit("at most 75 streams: the port ranges hold 300 ports each")
    rows: list[str] = []
    if args.only != "daemons":
        print(f"engine alone, one core of this machine ({os.cpu_count()} cores)")
        for target in pairs:
            forward, back, streams = engine_figure(target, min(args.seconds, 3.0))
            figures = f"{forward:,.0f} packets/s PCMU->{target.name}, {back:,.0f} back"
            rows.append(f"| PCMU<->{target.name} | engine alone | {figures} | {streams:,.0f} |")
            print(rows[-1])
    if args.only == "engine":
        return 0
    os.sched_setaffinity(0, {args.generator_cpu})
    caller, callee = _udp(base + 990), _udp(base + 991)
    gen = Generator(caller, callee)
    try:
        for target in pairs:
            for label, result in daemon_runs(args, target, gen):
                if isinstance(result, str):
                    rows.append(f"| PCMU<->{target.name} | {label} | not measured: {result} | |")
                else:
                    share, per_core, sent, received = result
                    figures = f"{args.streams} streams: {100 * share:.1f} % of a core"
                    rows.append(
                        f"| PCMU<->{target.name} | {label} | {figures}, {sent} sent, "
                        f"{received} back | {per_core:,.0f} |"
                    )
                print(rows[-1], flush=True)
    finally:
        caller.close()
        callee.close()
    print("\n| pair | measured | figures | streams per core |\n|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
