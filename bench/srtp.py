#!/usr/bin/env python3
"""SRTP ↔ RTP bridging: packets per second per relay core, relayd and rtpengine 10.5.

``--calls`` calls, each with SDES (AES_CM_128_HMAC_SHA1_80) on the caller's side
and plain RTP/AVP on the callee's, on loopback. The relay is pinned to one core
(relayd: one worker process, ``--cpu``; rtpengine: the whole process under
``taskset``, one worker thread, userspace only). A generator on another core
sends ``--rate`` packets per second in all, round robin over the calls, paced
in bursts of 8 packets. Directions:

* ``decrypt``: callers send SRTP (made beforehand with pylibsrtp), the relay
  unprotects and sends RTP to the callees;
* ``encrypt``: callees send RTP, the relay protects and sends SRTP.

Many calls at a moderate rate, not one call flooded: rtpengine 10.5 reads at
most 50 packets per socket wake-up and, after 5 such overruns, discards that
socket's packets ("UDP receive queue exceeded 5 times"), so one fast stream
measures that guard, not its crypto.

What arrives at the receiving sockets is counted without reading them during
the trial: each socket's kernel drop counter (/proc/net/udp) plus what is still
queued afterwards. The relay's core time (utime + stime from /proc, all
threads) over the trial gives the rate per core: packets / core-seconds, at the
same offered load for both relays. Before each trial every call's first packets
are checked for content (decrypted with the other side's key). A trial that
lost more than 1 % is marked and left out of the comparison.

    sudo .venv/bin/python bench/srtp.py                      # both relays, both directions
    sudo .venv/bin/python bench/srtp.py --only relayd --rate 40000 --json out.json
    sudo .venv/bin/python bench/srtp.py --rt 20              # SCHED_FIFO: a busy machine

Needs two cores (``--relay-cpu``, ``--generator-cpu``).
"""

from __future__ import annotations

import argparse
import base64
import json
import multiprocessing
import os
import re
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pylibsrtp  # noqa: E402

from relayd import ipc  # noqa: E402
from relayd.ng.client import NgClient  # noqa: E402

SUITE = "AES_CM_128_HMAC_SHA1_80"
PROFILE = pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80
Address = tuple[str, int]


def rtp(seq: int, ssrc: int) -> bytes:
    return struct.pack("!BBHII", 0x80, 0, seq & 0xFFFF, seq * 160, ssrc) + bytes(160)


def session(key: bytes, outbound: bool) -> pylibsrtp.Session:
    kind = pylibsrtp.Policy.SSRC_ANY_OUTBOUND if outbound else pylibsrtp.Policy.SSRC_ANY_INBOUND
    return pylibsrtp.Session(pylibsrtp.Policy(key, kind, srtp_profile=PROFILE))


def inline(key: bytes) -> str:
    return f"{SUITE} inline:{base64.b64encode(key).decode()}"


def udp(rcvbuf: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.bind(("127.0.0.1", 0))
    return sock


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def socket_drops() -> dict[int, int]:
    """Local port → drops, for every UDP socket (/proc/net/udp)."""
    drops: dict[int, int] = {}
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        parts = line.split()
        drops[int(parts[1].rsplit(":", 1)[1], 16)] = int(parts[-1])
    return drops


def drain_count(sock: socket.socket) -> int:
    count = 0
    sock.setblocking(False)
    while True:
        try:
            sock.recv(4096)
        except BlockingIOError:
            return count
        count += 1


@dataclass
class Stream:
    """One call in one direction: who sends what where, who receives, how to check it."""

    source: socket.socket
    target: Address
    sink: socket.socket
    make: Callable[[int], bytes]  # seq -> what the generator sends
    check: Callable[[bytes], bytes]  # what arrived -> the RTP packet it must be
    ssrc: int


@dataclass
class Result:
    relay: str
    direction: str
    calls: int
    sent: int
    arrived: int
    seconds: float
    core_seconds: float

    @property
    def per_core(self) -> float:
        return self.arrived / self.core_seconds if self.core_seconds else 0.0

    @property
    def lossy(self) -> bool:
        return self.arrived < 0.99 * self.sent


def _generate(
    schedule: list[tuple[socket.socket, bytes, Address]], cpu: int, rate: int, rt: int, out: Any
) -> None:
    """Send ``schedule`` at ``rate`` packets/s, 8 at a time."""
    os.sched_setaffinity(0, {cpu})
    if rt:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(max(rt - 1, 1)))
    clock = time.monotonic
    step = 8 / rate
    due = clock()
    for start in range(0, len(schedule), 8):
        while clock() < due:
            pass
        for sock, data, target in schedule[start : start + 8]:
            sock.sendto(data, target)
        due += step
    out.put(len(schedule))


def trial(
    relay: str, direction: str, pid: int, streams: list[Stream], args: argparse.Namespace
) -> Result:
    for stream in streams:  # content check, and endpoint learning
        stream.sink.settimeout(2.0)
        for seq in range(3):
            stream.source.sendto(stream.make(seq), stream.target)
            data = stream.sink.recv(4096)
            assert stream.check(data) == rtp(seq, stream.ssrc), f"{relay} {direction}: {seq}"
    per_call = int(args.seconds * args.rate) // len(streams)
    schedule = [
        (stream.source, stream.make(seq), stream.target)
        for seq in range(3, 3 + per_call)
        for stream in streams
    ]
    ports = {stream.sink.getsockname()[1] for stream in streams}
    drops_before = socket_drops()
    queue: multiprocessing.Queue[int] = multiprocessing.Queue()
    before = cpu_seconds(pid)
    started = time.monotonic()
    child = multiprocessing.Process(
        target=_generate, args=(schedule, args.generator_cpu, args.rate, args.rt, queue)
    )
    child.start()
    sent = queue.get()
    child.join()
    time.sleep(0.2)  # let the relay finish what is queued
    elapsed = time.monotonic() - started
    core = cpu_seconds(pid) - before
    drops_after = socket_drops()
    arrived = sum(drain_count(stream.sink) for stream in streams)
    arrived += sum(drops_after.get(p, 0) - drops_before.get(p, 0) for p in ports)
    return Result(relay, direction, len(streams), sent, arrived, elapsed, core)


def _chrt(rt: int) -> list[str]:
    """Run the relay SCHED_FIFO so that other load on its core does not skew the trial."""
    return ["chrt", "-f", str(rt)] if rt else []


def _streams(
    index: int,
    caller: socket.socket,
    callee: socket.socket,
    to_caller_side: Address,
    to_callee_side: Address,
    k_in: bytes,
    k_out: bytes,
) -> tuple[Stream, Stream]:
    protect = session(k_in, outbound=True)
    unprotect = session(k_out, outbound=False)
    ssrc = 0x5A5A0000 + index
    decrypt = Stream(
        caller, to_caller_side, callee, lambda seq: protect.protect(rtp(seq, ssrc)), bytes, ssrc
    )
    encrypt = Stream(
        callee, to_callee_side, caller, lambda seq: rtp(seq, ssrc), unprotect.unprotect, ssrc
    )
    return decrypt, encrypt


# -- relayd ---------------------------------------------------------------------------------------


@contextmanager
def relayd_worker(cpu: int, rt: int) -> Iterator[tuple[int, socket.socket]]:
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    command = [sys.executable, "-m", "relayd.worker", "--worker", "0", "--cpu", str(cpu)]
    proc = subprocess.Popen(
        [*_chrt(rt), *command, "--fd", str(child.fileno())],
        pass_fds=[child.fileno()],
        cwd=REPO,
        stderr=subprocess.DEVNULL,
    )
    child.close()
    try:
        parent.recv(1 << 16)  # Hello
        parent.send(ipc.encode(ipc.Configure(0, stats_interval=60.0)))
        yield proc.pid, parent
    finally:
        parent.close()
        proc.terminate()
        proc.wait(5)


def relayd_calls(link: socket.socket, calls: int) -> tuple[list[Stream], list[Stream], list[Any]]:
    decrypt: list[Stream] = []
    encrypt: list[Stream] = []
    keep: list[socket.socket] = []
    for index in range(calls):
        a, b = udp(), udp()  # relay sockets: a towards the SRTP caller, b towards the callee
        caller, callee = udp(rcvbuf=1 << 16), udp(rcvbuf=1 << 16)
        k_in, k_out = os.urandom(30), os.urandom(30)

        def key(s: socket.socket) -> str:
            return f"127.0.0.1 {s.getsockname()[1]}"

        specs = (
            ipc.SocketSpec(key(a), 0, out=key(b), expect=key(caller), learning="immediate",
                           srtp_in=inline(k_in), srtp_out=inline(k_out)),
            ipc.SocketSpec(key(b), 1, out=key(a), expect=key(callee), learning="immediate"),
        )  # fmt: skip
        message = ipc.encode(ipc.Forward(f"bench {index}", specs))
        socket.send_fds(link, [message], [a.fileno(), b.fileno()])
        d, e = _streams(index, caller, callee, a.getsockname(), b.getsockname(), k_in, k_out)
        decrypt.append(d)
        encrypt.append(e)
        keep += [a, b, caller, callee]
    return decrypt, encrypt, keep


# -- rtpengine ------------------------------------------------------------------------------------


def sdp(port: int, proto: str, crypto: str = "") -> str:
    lines = ["v=0", "o=- 1 1 IN IP4 127.0.0.1", "s=-", "c=IN IP4 127.0.0.1", "t=0 0",
             f"m=audio {port} {proto} 0", "a=rtpmap:0 PCMU/8000", "a=sendrecv"]  # fmt: skip
    if crypto:
        lines.append(f"a=crypto:1 {crypto}")
    return "\r\n".join(lines) + "\r\n"


@contextmanager
def rtpengine(cpu: int, ng_port: int, rt: int) -> Iterator[int]:
    workdir = tempfile.mkdtemp(prefix="bench-srtp-")
    args = [*_chrt(rt), "taskset", "-c", str(cpu), "/usr/bin/rtpengine", "--foreground",
            "--config-file=none", "--table=-1", "--interface=127.0.0.1",
            f"--listen-ng=127.0.0.1:{ng_port}", "--port-min=41000", "--port-max=45999",
            "--num-threads=1", "--log-level=3", "--log-stderr",
            "--endpoint-learning=immediate", f"--pidfile={workdir}/pid"]  # fmt: skip
    proc = subprocess.Popen(args, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        with NgClient(("127.0.0.1", ng_port), timeout=0.2, retries=0) as client:
            for _ in range(100):
                with suppress(Exception):
                    if client.call("ping").get("result") == "pong":
                        break
                time.sleep(0.05)
        yield proc.pid
    finally:
        proc.terminate()
        proc.wait(5)


def _port(sdp_text: str) -> Address:
    found = re.search(r"m=audio (\d+)", sdp_text)
    assert found, sdp_text
    return ("127.0.0.1", int(found[1]))


def rtpengine_calls(ng_port: int, calls: int) -> tuple[list[Stream], list[Stream], list[Any]]:
    decrypt: list[Stream] = []
    encrypt: list[Stream] = []
    keep: list[socket.socket] = []
    with NgClient(("127.0.0.1", ng_port), timeout=2.0) as client:
        for index in range(calls):
            caller, callee = udp(rcvbuf=1 << 16), udp(rcvbuf=1 << 16)
            k_in = os.urandom(30)
            call = {"call-id": f"bench-srtp-{index}", "from-tag": "caller"}
            offer = client.call(
                "offer", **call, ICE="remove", DTLS="off",
                **{"transport-protocol": "RTP/AVP"},
                sdp=sdp(caller.getsockname()[1], "RTP/SAVP", inline(k_in)),
            )  # fmt: skip
            answer = client.call(
                "answer", **call, **{"to-tag": "callee"},
                sdp=sdp(callee.getsockname()[1], "RTP/AVP"),
            )  # fmt: skip
            found = re.search(r"a=crypto:\d+ \S+ inline:([A-Za-z0-9+/=]+)", answer["sdp"])
            assert found, answer["sdp"]
            k_out = base64.b64decode(found[1] + "=" * (-len(found[1]) % 4))
            d, e = _streams(
                index, caller, callee, _port(answer["sdp"]), _port(offer["sdp"]), k_in, k_out
            )
            decrypt.append(d)
            encrypt.append(e)
            keep += [caller, callee]
    return decrypt, encrypt, keep


# -- main -----------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("relayd", "rtpengine"))
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rate", type=int, default=20_000, help="packets per second, all calls")
    parser.add_argument("--relay-cpu", type=int, default=1)
    parser.add_argument("--generator-cpu", type=int, default=0)
    parser.add_argument("--ng-port", type=int, default=22999)
    parser.add_argument(
        "--rt", type=int, default=0, help="SCHED_FIFO priority for relay and generator (0: off)"
    )
    parser.add_argument("--json")
    args = parser.parse_args()
    results: list[Result] = []
    if args.only in (None, "relayd"):
        with relayd_worker(args.relay_cpu, args.rt) as (pid, link):
            decrypt, encrypt, keep = relayd_calls(link, args.calls)
            time.sleep(0.2)
            results.append(trial("relayd", "decrypt", pid, decrypt, args))
            results.append(trial("relayd", "encrypt", pid, encrypt, args))
            for sock in keep:
                sock.close()
    if args.only in (None, "rtpengine"):
        with rtpengine(args.relay_cpu, args.ng_port, args.rt) as pid:
            decrypt, encrypt, keep = rtpengine_calls(args.ng_port, args.calls)
            results.append(trial("rtpengine", "decrypt", pid, decrypt, args))
            results.append(trial("rtpengine", "encrypt", pid, encrypt, args))
            for sock in keep:
                sock.close()
    header = ("relay", "direction", "calls", "sent", "arrived", "seconds", "core s", "core %")
    print("{:10} {:9} {:>5} {:>8} {:>8} {:>7} {:>7} {:>6} {:>11}".format(*header, "pkt/s/core"))
    for r in results:
        load = 100 * r.core_seconds / r.seconds
        row = (r.relay, r.direction, r.calls, r.sent, r.arrived, r.seconds, r.core_seconds, load)
        note = "  LOSSY: left out" if r.lossy else ""
        print(
            "{:10} {:9} {:5d} {:8d} {:8d} {:7.2f} {:7.2f} {:6.1f}".format(*row)
            + f" {r.per_core:11.0f}{note}"
        )
    by = {(r.relay, r.direction): r.per_core for r in results if not r.lossy}
    for direction in ("decrypt", "encrypt"):
        if ("rtpengine", direction) in by and ("relayd", direction) in by:
            ratio = by[("relayd", direction)] / by[("rtpengine", direction)]
            print(f"{direction}: relayd / rtpengine per core = {ratio:.2f} (target >= 0.75)")
    if args.json:
        rows = [{**asdict(r), "per_core": r.per_core} for r in results]
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
