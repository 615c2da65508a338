"""The lab for bench/media.py: namespaces, generator, counting, CPU accounting.

Three network namespaces joined by veth pairs, private addresses only:

    rbm-caller 10.77.1.2 ⇄ 10.77.1.1 rbm-relay 10.77.2.1 ⇄ 10.77.2.2 rbm-callee
                              (media address 10.77.0.1 on lo)

Relay daemons run in rbm-relay on their own cores (RPS steers the relay's
ingress there too). ``rtpgen`` (gen/rtpgen.c, compiled here) sends from
rbm-caller on a core of its own; every callee is the same address and port in
rbm-callee, where either the socket sink (``rtpgen sink``: checks every packet)
or an nft counter at the veth ingress (cheap: drops what it counts) counts what
the relay delivered. Nothing leaves the namespaces; ``topology()`` removes them.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import select
import shlex
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CALLEE_ADDR",
    "CALLEE_INGRESS",
    "CALLEE_NS",
    "CALLEE_PORT",
    "CALLER_ADDR",
    "CALLER_INGRESS",
    "CALLER_NS",
    "CALLER_PORT0",
    "CALLER_PORTS",
    "GENERATOR_SLACK",
    "MEDIA_ADDR",
    "NETNS_PREFIX",
    "RELAY_CALLEE_SIDE",
    "RELAY_CALLER_SIDE",
    "RELAY_NS",
    "RTP_SIZE",
    "Bench",
    "BenchError",
    "NftSink",
    "Placement",
    "Trial",
    "compile_generator",
    "cores_busy",
    "file_limit",
    "in_netns",
    "kernel_counting",
    "kernel_forwarding",
    "media_addresses_added",
    "placement",
    "process_cpu",
    "process_tree",
    "setns",
    "spawn",
    "steer_media",
    "stop_process",
    "topology",
]

GENERATOR_SOURCE = Path(__file__).resolve().parent / "gen" / "rtpgen.c"
# Namespace names: rbm-caller, rbm-relay, rbm-callee. Another prefix (the environment's
# RELAYD_BENCH_NETNS, read once at import) gives a second lab that can exist beside this one:
# bench/scale.py uses its own, and so can a session whose names must carry its own prefix.
NETNS_PREFIX = os.environ.get("RELAYD_BENCH_NETNS", "rbm")
CALLER_NS, RELAY_NS, CALLEE_NS = (f"{NETNS_PREFIX}-{n}" for n in ("caller", "relay", "callee"))
NAMESPACES = (CALLER_NS, RELAY_NS, CALLEE_NS)
CALLER_ADDR, CALLEE_ADDR, MEDIA_ADDR = "10.77.1.2", "10.77.2.2", "10.77.0.1"
RELAY_CALLER_SIDE, RELAY_CALLEE_SIDE = "10.77.1.1", "10.77.2.1"
RELAY_INGRESS, CALLEE_INGRESS = "rbm-r1", "rbm-e0"  # veth ends that receive the media
CALLER_INGRESS = "rbm-c0"  # the caller's end: what the relay sends the caller arrives there
CALLER_PORT0 = 20000  # stream i sends from CALLER_PORT0 + 2i
CALLER_PORTS = 20000  # ... modulo this many pairs, where more streams than fit (bench/scale.py)
CALLEE_PORT = 40000  # every callee is one socket (or one nft rule): cheap per packet

CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1
RTP_SIZE = 12 + 160  # what the generator sends: header and 20 ms of PCMU
PREROLL_MS = 50  # one packet per stream, then this pause, before the paced part
GENERATOR_SLACK = 0.97  # a trial counts only if the generator sent this share of the target

_libc = ctypes.CDLL(None, use_errno=True)


class BenchError(RuntimeError):
    """The set-up failed, a daemon misbehaved, or a helper program gave no answer."""


# -- namespaces ------------------------------------------------------------------------------


def setns(path: str) -> None:
    """This thread into the network namespace at ``path`` (os.setns is Python 3.12's)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


@contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Sockets created inside the block belong to ``name`` (for this thread only)."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        setns(f"/run/netns/{name}")
        try:
            yield
        finally:
            if _libc.setns(own, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "cannot return to the original namespace")
    finally:
        os.close(own)


def _sh(*argv: str, netns: str | None = None, check: bool = True) -> str:
    cmd = ["ip", "netns", "exec", netns, *argv] if netns else list(argv)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise BenchError(f"{shlex.join(cmd)} failed: {done.stderr.strip()}")
    return done.stdout


def _existing_namespaces() -> set[str]:
    out = _sh("ip", "netns", "list")
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def remove_topology() -> None:
    for name in _existing_namespaces() & set(NAMESPACES):
        _sh("ip", "netns", "delete", name, check=False)


@contextmanager
def topology() -> Iterator[None]:
    """caller ⇄ relay ⇄ callee; everything is removed on the way out."""
    for name in _existing_namespaces() & set(NAMESPACES):
        pids = _sh("ip", "netns", "pids", name, check=False).split()
        if pids:
            raise BenchError(f"namespace {name} is in use by pids {' '.join(pids)}")
        _sh("ip", "netns", "delete", name)
    try:
        for name in NAMESPACES:
            _sh("ip", "netns", "add", name)
        link = ("ip", "link", "add")
        _sh(*link, CALLER_INGRESS, "netns", CALLER_NS, "type", "veth", "peer", "name",
            RELAY_INGRESS, "netns", RELAY_NS)  # fmt: skip
        _sh(*link, "rbm-r2", "netns", RELAY_NS, "type", "veth", "peer", "name", CALLEE_INGRESS,
            "netns", CALLEE_NS)  # fmt: skip
        plan = {
            CALLER_NS: [(CALLER_INGRESS, f"{CALLER_ADDR}/24")],
            RELAY_NS: [
                (RELAY_INGRESS, f"{RELAY_CALLER_SIDE}/24"),
                ("rbm-r2", f"{RELAY_CALLEE_SIDE}/24"),
                ("lo", f"{MEDIA_ADDR}/32"),
            ],
            CALLEE_NS: [(CALLEE_INGRESS, f"{CALLEE_ADDR}/24")],
        }
        for ns, addresses in plan.items():
            _sh("ip", "link", "set", "lo", "up", netns=ns)
            for dev, cidr in addresses:
                _sh("ip", "addr", "add", cidr, "dev", dev, netns=ns)
                _sh("ip", "link", "set", dev, "up", netns=ns)
            for key in ("all", "default"):
                _sh("sysctl", "-qw", f"net.ipv4.conf.{key}.rp_filter=0", netns=ns)
        _sh("ip", "route", "add", "default", "via", RELAY_CALLER_SIDE, netns=CALLER_NS)
        _sh("ip", "route", "add", "default", "via", RELAY_CALLEE_SIDE, netns=CALLEE_NS)
        yield
    finally:
        remove_topology()


@contextmanager
def media_addresses_added(addresses: Sequence[str]) -> Iterator[None]:
    """The media addresses beyond MEDIA_ADDR (which :func:`topology` gives the relay) on the
    relay's loopback, inside the block; the caller and the callee reach them through their
    default route (bench/scale.py: more calls than one address has ports)."""
    added: list[str] = []
    try:
        for address in addresses:
            if address != MEDIA_ADDR:
                _sh("ip", "addr", "add", f"{address}/32", "dev", "lo", netns=RELAY_NS)
                added.append(address)
        yield
    finally:
        for address in added:
            _sh("ip", "addr", "del", f"{address}/32", "dev", "lo", netns=RELAY_NS, check=False)


def steer_media(place: Placement, *, sink: bool) -> None:
    """The relay's ingress on its cores; the callee's ingress on the first generator core
    for the socket sink (off the relay's cores), or left where the relay sends (no
    cross-core interrupt per packet) when the nft counter drops it on arrival."""
    steer(RELAY_NS, RELAY_INGRESS, place.relay)
    steer(CALLEE_NS, CALLEE_INGRESS, place.generators[:1] if sink else ())


@contextmanager
def kernel_counting(place: Placement) -> Iterator[NftSink]:
    """Count with the nft counter (``NftSink``) instead of the socket sink, inside the block."""
    steer_media(place, sink=False)
    try:
        with NftSink() as counter:
            yield counter
    finally:
        steer_media(place, sink=True)


@contextmanager
def kernel_forwarding() -> Iterator[None]:
    """rbm-relay routes caller ⇄ callee itself: the generator check, with no daemon."""
    _sh("sysctl", "-qw", "net.ipv4.ip_forward=1", netns=RELAY_NS)
    try:
        yield
    finally:
        _sh("sysctl", "-qw", "net.ipv4.ip_forward=0", netns=RELAY_NS)


def steer(netns: str, dev: str, cpus: Sequence[int]) -> bool:
    """RPS: the receive work of ``dev`` runs on ``cpus``, as a NIC's RSS would arrange."""
    mask = f"{sum(1 << c for c in cpus):x}"
    script = f"echo {mask} > /sys/class/net/{dev}/queues/rx-0/rps_cpus"
    try:
        _sh("sh", "-c", script, netns=netns)
    except BenchError:
        return False
    return True


def _child_setup(netns: str, cpus: Sequence[int], nofile: int) -> None:
    """Runs in the child before exec: namespace, pinned cores, file limit, dies with us."""
    setns(f"/run/netns/{netns}")
    os.sched_setaffinity(0, set(cpus))
    resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn(
    argv: Sequence[str],
    *,
    netns: str,
    cpus: Sequence[int],
    nofile: int,
    stdin: int | None = subprocess.DEVNULL,
    stdout: int | object = subprocess.PIPE,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        list(argv),
        stdin=stdin,
        stdout=stdout,  # type: ignore[arg-type]
        stderr=subprocess.STDOUT if stdout is not subprocess.PIPE else subprocess.PIPE,
        text=True,
        cwd=cwd,
        env=env,
        start_new_session=True,  # Ctrl-C reaches only us; we stop the children
        preexec_fn=lambda: _child_setup(netns, cpus, nofile),
    )


def stop_process(proc: subprocess.Popen[str] | None, timeout: float = 10.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


def file_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1 << 16:
        with suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, 1 << 16))
            hard = 1 << 16
    return 1 << 16 if hard == resource.RLIM_INFINITY else int(hard)


def compile_generator(outdir: Path) -> Path:
    outdir.mkdir(parents=True, exist_ok=True)
    binary = outdir / "rtpgen"
    cmd = ["cc", "-O2", "-Wall", "-o", str(binary), str(GENERATOR_SOURCE)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise BenchError(f"{shlex.join(cmd)} failed:\n{done.stderr}")
    return binary


# -- CPU accounting --------------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # fields from 3 (state) on


def process_tree(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat_fields(int(entry))) is not None:
            parents[int(entry)] = int(fields[1])
    tree, todo = [root], [root]
    while todo:
        parent = todo.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent]
        tree += children
        todo += children
    return tree


def process_cpu(pids: Sequence[int]) -> float:
    """utime + stime in seconds, all threads of each process."""
    total = 0
    for pid in pids:
        if (fields := _stat_fields(pid)) is not None:
            total += int(fields[11]) + int(fields[12])
    return total / _TICK


def cores_busy(cpus: Sequence[int]) -> float:
    """Non-idle seconds of ``cpus`` (user, system, irq, softirq, ...), from /proc/stat."""
    busy = 0
    with open("/proc/stat") as f:
        for line in f:
            name, *values = line.split()
            if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
                ticks = [int(v) for v in values[:8]]
                busy += sum(ticks) - ticks[3] - ticks[4]  # minus idle, iowait
    return busy / _TICK


@dataclass(frozen=True, slots=True)
class Placement:
    """Which cores the relay and the generator(s) run on."""

    relay: tuple[int, ...]
    generators: tuple[int, ...]
    shared: bool  # the relay's cores include a generator's


def placement(workers: int, generators: int, cpus: Sequence[int]) -> Placement | None:
    gens, others = tuple(cpus[:generators]), list(cpus[generators:])
    if workers <= len(others):
        return Placement(tuple(others[:workers]), gens, False)
    if workers <= len(cpus):
        return Placement(tuple(cpus[-workers:]), gens, True)
    return None


# -- trials ----------------------------------------------------------------------------------


@dataclass(slots=True)
class Trial:
    rate: int
    sent: int = 0  # paced packets; the pre-roll (one per stream) is counted apart
    due: int = 0  # paced packets the generator should have sent in the time it ran
    preroll: int = 0
    received: int = 0
    errors: int = 0
    lagged: int = 0
    seconds: float = 0.0
    bad: int = 0
    streams: int = 0  # streams of which the sink received anything
    process_cpu_s: float = 0.0
    core_busy_s: float = 0.0

    @property
    def loss(self) -> float:
        total = self.sent + self.preroll
        return max(total - self.received, 0) / total if total else 1.0

    @property
    def achieved(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0

    def generator_kept_up(self) -> bool:
        return self.sent >= GENERATOR_SLACK * self.due and self.errors == 0


def _key_values(text: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in text.split() if "=" in item)


class NftSink:
    """Counts (and drops) the media at the callee's veth ingress, in a netdev nft table.

    Cheaper than any socket: the relay pays its transmit and a counter, as with a
    NIC, and the generator's core receives nothing. What it cannot check (RTP
    content, every stream delivered) the socket sink checks in each warm-up.
    """

    TABLE = "rbm-sink"

    def __init__(self) -> None:
        rules = (
            f"table netdev {self.TABLE} {{\n"
            f"  chain ingress {{\n"
            f'    type filter hook ingress device "{CALLEE_INGRESS}" priority 0; policy accept;\n'
            f"    ip daddr {CALLEE_ADDR} udp dport {CALLEE_PORT} udp length {8 + RTP_SIZE} "
            'counter drop comment "good"\n'
            f'    ip daddr {CALLEE_ADDR} udp dport {CALLEE_PORT} counter drop comment "bad"\n'
            "  }\n}\n"
        )
        done = subprocess.run(
            ["ip", "netns", "exec", CALLEE_NS, "nft", "-f", "-"],
            input=rules,
            capture_output=True,
            text=True,
            timeout=30,
        )
        if done.returncode != 0:
            raise BenchError(f"cannot add the nft counter: {done.stderr.strip()}")

    def close(self) -> None:
        _sh("nft", "delete", "table", "netdev", self.TABLE, netns=CALLEE_NS, check=False)

    def __enter__(self) -> NftSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def counts(self) -> tuple[int, int]:
        """(good, bad) packets so far."""
        out = _sh("nft", "-j", "list", "table", "netdev", self.TABLE, netns=CALLEE_NS)
        found: dict[str, int] = {}
        for item in json.loads(out)["nftables"]:
            rule = item.get("rule")
            if rule is None:
                continue
            for expr in rule["expr"]:
                if "counter" in expr:
                    found[rule.get("comment", "")] = int(expr["counter"]["packets"])
        return found.get("good", 0), found.get("bad", 0)

    def settle(self, quiet: float = 0.2, limit: float = 5.0) -> tuple[int, int]:
        """Counts once nothing has arrived for ``quiet`` seconds: the relay is done."""
        last, since, deadline = self.counts(), time.monotonic(), time.monotonic() + limit
        while time.monotonic() < deadline:
            time.sleep(0.05)
            now = self.counts()
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet:
                break
        return last


class Bench:
    """Trials against one relay in the namespaces: generator, counting, CPU."""

    def __init__(
        self,
        binary: Path,
        *,
        streams: Sequence[tuple[int, str, int]],
        place: Placement,
        daemon_pid: int | None,
        nofile: int,
    ) -> None:
        self.binary = binary
        self.streams = streams
        self.place = place
        self.daemon_pid = daemon_pid
        self.nofile = nofile
        self.counter: NftSink | None = None  # None: the socket sink

    def trial(self, rate: int, seconds: float) -> Trial:
        """Send at ``rate`` for ``seconds``; count until the relay has nothing left to send."""
        result = Trial(rate)
        sink = None if self.counter is not None else self._start_sink()
        try:
            before = self.counter.counts() if self.counter is not None else (0, 0)
            pids = process_tree(self.daemon_pid) if self.daemon_pid else []
            cpu0, busy0 = process_cpu(pids), cores_busy(self.place.relay)
            sent = self._send(rate, seconds)
            if sink is not None:
                # end of input: the sink stops once the relay has gone quiet
                sink_out, _ = sink.communicate("", timeout=15)
                got = _key_values(sink_out)
            else:
                assert self.counter is not None
                good, bad = self.counter.settle()
                got = {
                    "received": str(good - before[0]),
                    "bad": str(bad - before[1]),
                    "streams": "-1",  # not known
                }
            result.process_cpu_s = process_cpu(pids) - cpu0
            result.core_busy_s = cores_busy(self.place.relay) - busy0
        finally:
            stop_process(sink)
        try:
            result.sent, result.errors = int(sent["sent"]), int(sent["errors"])
            result.preroll, result.due = int(sent["preroll"]), int(sent["due"])
            result.lagged, result.seconds = int(sent["lagged"]), float(sent["seconds"])
            result.received, result.bad = int(got["received"]), int(got["bad"])
            result.streams = int(got["streams"])
        except (KeyError, ValueError):
            raise BenchError(f"unexpected output: {sent!r} {got!r}") from None
        return result

    def _send(self, rate: int, seconds: float) -> dict[str, str]:
        """One generator per generator core, each with its share of streams and rate."""
        cores = self.place.generators[: len(self.streams)]
        gens: list[subprocess.Popen[str]] = []
        try:
            for k, core in enumerate(cores):
                share = self.streams[k :: len(cores)]
                gen = spawn(
                    [str(self.binary), "send", "-a", CALLER_ADDR, "-r",
                     f"{rate / len(cores):.1f}", "-d", str(seconds), "-w", str(PREROLL_MS)],
                    netns=CALLER_NS, cpus=[core], nofile=self.nofile, stdin=subprocess.PIPE,
                )  # fmt: skip
                gens.append(gen)
                assert gen.stdin is not None
                gen.stdin.write("".join(f"{src} {addr} {port}\n" for src, addr, port in share))
                gen.stdin.close()  # the generator starts at end of input
            outputs = []
            for gen in gens:
                assert gen.stdout is not None and gen.stderr is not None
                out, err = gen.stdout.read(), gen.stderr.read()
                if gen.wait(seconds + 30) != 0:
                    raise BenchError(f"the generator failed: {err.strip()}")
                outputs.append(_key_values(out))
        finally:
            for gen in gens:
                stop_process(gen)
        try:
            total = {
                key: str(sum(int(o[key]) for o in outputs))
                for key in ("sent", "due", "preroll", "errors", "lagged")
            }
            total["seconds"] = str(max(float(o["seconds"]) for o in outputs))
        except (KeyError, ValueError):
            raise BenchError(f"unexpected generator output: {outputs!r}") from None
        return total

    def _start_sink(self) -> subprocess.Popen[str]:
        sink = spawn(
            [str(self.binary), "sink", "-a", CALLEE_ADDR, "-p", str(CALLEE_PORT), "-n",
             str(len(self.streams))],
            netns=CALLEE_NS, cpus=self.place.generators[:1], nofile=self.nofile,
            stdin=subprocess.PIPE,
        )  # fmt: skip
        assert sink.stdout is not None
        ready, _, _ = select.select([sink.stdout], [], [], 10.0)
        if not ready or sink.stdout.readline().strip() != "ready":
            raise BenchError(f"the sink did not start: {_drain(sink)}")
        return sink


def _drain(proc: subprocess.Popen[str]) -> str:
    stop_process(proc, 2.0)
    out, err = proc.communicate()
    return f"{out or ''}{err or ''}".strip()
