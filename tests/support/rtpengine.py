"""Start the real rtpengine daemon (Debian's 10.5) for a test and stop it afterwards.

Mirrors :mod:`tests.support.relayd`. rtpengine 10.5 runs as root in a container
without its kernel module as long as ``--table=-1`` is given (userspace only)
and ``--no-fallback`` is *not*: with a table >= 0 it logs "FAILED TO CREATE
KERNEL TABLE" and falls back, with ``--no-fallback`` it exits. Nothing else is
needed: no config file (``--config-file=none``), no Redis, no recording dir.
Defaults that matter for tests: endpoint learning ``delayed`` (3 s after the
last signal), ``delete-delay`` 30 s (a deleted call keeps its ports that long),
``timeout`` 60 s, one self-signed DTLS certificate generated per start (so
fingerprints differ between runs). The first ``--interface`` is the default;
an unnamed second one (``::1``) joins the same logical interface, so ICE
candidates are printed for both addresses and ``address family: IP6`` selects it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path

import pytest

from relayd.ng.client import NgClient, NgTimeout
from tests.support.netns import exec_args, inside
from tests.support.process import new_session_dying_with_parent, stop_process

__all__ = [
    "RTPENGINE",
    "RtpengineProcess",
    "require_rtpengine",
    "rtpengine_installed",
    "running_rtpengine",
    "udp_port_in_use",
]

RTPENGINE = os.environ.get("RTPENGINE", "/usr/bin/rtpengine")


def rtpengine_installed() -> str | None:
    """The daemon's path (``$RTPENGINE`` or /usr/bin/rtpengine), None if absent."""
    return shutil.which(RTPENGINE)


def udp_port_in_use(host: str, port: int) -> bool:
    """True if something is bound to ``host:port`` (UDP).

    rtpengine binds its ng socket with address/port reuse, so a second daemon
    on the same port starts fine and the kernel splits the requests between
    the two; a plain bind is the only warning we get.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def require_rtpengine() -> str:
    """The daemon's path, or skip the calling test when it is not installed."""
    path = rtpengine_installed()
    if path is None:
        pytest.skip(f"rtpengine not installed ({RTPENGINE})")
    return path


class RtpengineProcess:
    """One rtpengine started in the foreground, userspace forwarding only.

    With ``netns``, rtpengine runs inside that network namespace (``ip netns exec``)
    and the ng clients made here talk to it from inside it as well, as
    :class:`tests.support.relayd.RelaydProcess` does.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        ng_port: int,
        port_min: int,
        port_max: int,
        interface: Sequence[str] = ("127.0.0.1",),
        extra: Sequence[str] = (),
        ng_host: str = "127.0.0.1",
        netns: str | None = None,
    ) -> None:
        self.workdir = workdir
        self.netns = netns
        self.ng_address = (ng_host, ng_port)
        args = [require_rtpengine(), "--foreground", "--config-file=none", "--table=-1"]
        args += [f"--interface={item}" for item in interface]
        args += [
            f"--listen-ng={ng_host}:{ng_port}",
            f"--port-min={port_min}",
            f"--port-max={port_max}",
            "--log-stderr",
            "--log-level=7",
            f"--pidfile={workdir / 'rtpengine.pid'}",
            *extra,
        ]
        self.args = exec_args(netns, args) if netns else args
        self.log_path = workdir / "rtpengine.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait: float = 10.0) -> None:
        with self._namespace():
            taken = udp_port_in_use(*self.ng_address)
        if taken:
            raise RuntimeError(
                f"ng port {self.ng_address[0]}:{self.ng_address[1]} is already in use "
                "(another test run?); a second rtpengine would share its requests"
            )
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.args,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                preexec_fn=new_session_dying_with_parent,
            )
        deadline = time.monotonic() + wait
        try:
            with self.client(timeout=0.2, retries=0) as client:
                while time.monotonic() < deadline:
                    if self.proc.poll() is not None:
                        raise RuntimeError(f"rtpengine exited at start-up:\n{self.log()}")
                    try:
                        if client.call("ping").get("result") == "pong":
                            return
                    except (NgTimeout, ConnectionRefusedError):
                        time.sleep(0.05)
            raise RuntimeError(f"rtpengine did not answer ping:\n{self.log()}")
        except BaseException:
            self.stop()
            raise

    def client(self, **kwargs: object) -> NgClient:
        with self._namespace():
            return NgClient(self.ng_address, **kwargs)  # type: ignore[arg-type]

    def _namespace(self) -> AbstractContextManager[None]:
        return inside(self.netns) if self.netns else nullcontext()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 10.0) -> int | None:
        return stop_process(self.proc, timeout)


@contextmanager
def running_rtpengine(workdir: Path, **kwargs: object) -> Iterator[RtpengineProcess]:
    daemon = RtpengineProcess(workdir, **kwargs)  # type: ignore[arg-type]
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()
