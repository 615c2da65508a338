"""Network namespaces for tests: caller ⇄ relay ⇄ callee, plus a spoofer, joined by veth.

::

    caller  c0 10.99.1.2  fd00:99::1:2 ──── r1 10.99.1.1  fd00:99::1:1 ┐
    callee  e0 10.99.2.2  fd00:99::2:2 ──── r2 10.99.2.1  fd00:99::2:1 ├ relay
    spoof   s0 10.99.3.2  fd00:99::3:2 ──── r3 10.99.3.1  fd00:99::3:1 ┘

Each peer routes everything through the relay. The addresses exist only inside
these namespaces. The relay namespace forwards (``ip_forward=1``, as the kernel
path will need) and has ``rp_filter=0``. IPv6 addresses are added ``nodad`` so
they work at once.

Namespaces are named ``rdt-<uid>-<role>``. :func:`topology` removes them in
``finally``, also when setup fails halfway, after killing whatever still runs
inside them. Code runs in a namespace either as a subprocess (:func:`exec_args`)
or, for sockets, in this process: a socket created under :func:`inside` stays in
that namespace for its whole life, wherever it is used afterwards.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "Host",
    "Topology",
    "destroy",
    "exec_args",
    "inside",
    "pids",
    "topology",
    "unavailable",
]

_CLONE_NEWNET = 0x40000000
_NETNS_DIR = Path("/run/netns")
_IP_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class Host:
    """One peer namespace and the relay's addresses on the link that leads to it."""

    ns: str
    ip4: str
    ip6: str
    relay4: str
    relay6: str


@dataclass(frozen=True, slots=True)
class Topology:
    uid: str
    relay: str  # the relay's namespace
    caller: Host
    callee: Host
    spoof: Host

    @property
    def namespaces(self) -> tuple[str, ...]:
        return (self.caller.ns, self.relay, self.callee.ns, self.spoof.ns)


def unavailable() -> str | None:
    """Why namespace tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root"
    if shutil.which("ip") is None:
        return "iproute2 'ip' not installed"
    try:
        subprocess.run(["ip", "netns", "list"], check=True, capture_output=True, timeout=5)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"'ip netns' unavailable: {exc}"
    return None


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=_IP_TIMEOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")


def exec_args(ns: str, args: Sequence[str]) -> list[str]:
    """``args`` prefixed to run inside namespace ``ns``."""
    return ["ip", "netns", "exec", ns, *args]


def _setup(topo: Topology, created: list[str]) -> None:
    for ns in topo.namespaces:
        _ip("netns", "add", ns)
        created.append(ns)
        _ip("-n", ns, "link", "set", "lo", "up")
    sysctls = [
        "net.ipv4.ip_forward=1",
        "net.ipv6.conf.all.forwarding=1",
        "net.ipv4.conf.all.rp_filter=0",
        "net.ipv4.conf.default.rp_filter=0",
        # every test's media ports (20000-59999 at most), as the Ansible role reserves the
        # range: a test's own ng client here must not take one of them as its source port
        # while a restarted relayd binds its calls' ports again
        "net.ipv4.ip_local_reserved_ports=20000-59999",
    ]
    subprocess.run(
        exec_args(topo.relay, ["sysctl", "-q", "-w", *sysctls]),
        check=True,
        capture_output=True,
        timeout=_IP_TIMEOUT,
    )
    links = (("c0", "r1", topo.caller), ("e0", "r2", topo.callee), ("s0", "r3", topo.spoof))
    for peer_if, relay_if, host in links:
        _ip(
            "link", "add", "name", peer_if, "netns", host.ns,
            "type", "veth", "peer", "name", relay_if, "netns", topo.relay,
        )  # fmt: skip
        for ns, dev, ip4, ip6 in (
            (host.ns, peer_if, host.ip4, host.ip6),
            (topo.relay, relay_if, host.relay4, host.relay6),
        ):
            _ip("-n", ns, "addr", "add", f"{ip4}/24", "dev", dev)
            _ip("-n", ns, "-6", "addr", "add", f"{ip6}/112", "dev", dev, "nodad")
            _ip("-n", ns, "link", "set", dev, "up")
        _ip("-n", host.ns, "route", "add", "default", "via", host.relay4)
        _ip("-n", host.ns, "-6", "route", "add", "default", "via", host.relay6)
        subprocess.run(
            exec_args(topo.relay, ["sysctl", "-q", "-w", f"net.ipv4.conf.{relay_if}.rp_filter=0"]),
            check=True,
            capture_output=True,
            timeout=_IP_TIMEOUT,
        )


def pids(ns: str) -> list[int]:
    """Processes running in namespace ``ns``."""
    proc = subprocess.run(
        ["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=_IP_TIMEOUT
    )
    return [int(word) for word in proc.stdout.split() if word.isdigit()]


def destroy(names: Sequence[str]) -> list[str]:
    """Kill what runs in the namespaces, then delete them; returns what went wrong."""
    problems: list[str] = []
    for ns in names:
        if not (_NETNS_DIR / ns).exists():
            continue
        left = pids(ns)
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5.0
        while left and time.monotonic() < deadline:
            left = [pid for pid in left if Path(f"/proc/{pid}").exists()]
            if left:
                time.sleep(0.02)
        try:
            _ip("netns", "del", ns)
        except (RuntimeError, subprocess.SubprocessError) as exc:
            problems.append(str(exc))
    return problems


@contextlib.contextmanager
def topology(uid: str | None = None, prefix: str = "rdt") -> Iterator[Topology]:
    """Create the four namespaces (``<prefix>-<uid>-<role>``); remove them afterwards,
    whatever happened."""
    uid = uid or secrets.token_hex(3)

    def host(role: str, net: int) -> Host:
        return Host(
            f"{prefix}-{uid}-{role}",
            f"10.99.{net}.2",
            f"fd00:99::{net}:2",
            f"10.99.{net}.1",
            f"fd00:99::{net}:1",
        )

    topo = Topology(
        uid, f"{prefix}-{uid}-relay", host("caller", 1), host("callee", 2), host("spoof", 3)
    )
    created: list[str] = []
    try:
        _setup(topo, created)
        yield topo
    finally:
        problems = destroy(created)
        if problems:
            raise RuntimeError("namespace clean-up failed: " + "; ".join(problems))


_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns: {os.strerror(errno)}")


@contextlib.contextmanager
def inside(ns: str) -> Iterator[None]:
    """Run the body with this thread in network namespace ``ns`` (setns(2)).

    Only the calling thread moves; sockets created in the body belong to ``ns``
    for good. Keep the body short: it must not start threads or subprocesses
    that are meant to run elsewhere.
    """
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(_NETNS_DIR / ns, os.O_RDONLY)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(own)
