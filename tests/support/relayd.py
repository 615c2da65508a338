"""Start a real relayd daemon for a test and stop it afterwards."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path

from relayd.ng.client import NgClient, NgTimeout
from tests.support.netns import exec_args, inside
from tests.support.process import new_session_dying_with_parent, stop_process

__all__ = ["RelaydProcess", "running_relayd"]

REPO = Path(__file__).resolve().parents[2]
STATE = Path("state")  # the journal's directory, under the daemon's workdir


class RelaydProcess:
    """One relayd started in the foreground with a given set of options.

    With ``netns``, relayd runs inside that network namespace (``ip netns exec``)
    and the ng clients made here talk to it from inside it as well. Its call journal is
    ``state_dir`` (by default ``workdir/state``: never a journal another run left); with
    ``state_dir=None`` no ``--state-dir`` is given, and ``env`` (e.g. ``RELAYD_STATE_DIR``)
    must point the default somewhere of the test's own. ``nofile``: its RLIMIT_NOFILE
    (and so its workers').
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
        config_file: Path | None = None,
        ng_host: str = "127.0.0.1",
        netns: str | None = None,
        state_dir: Path | None = STATE,
        env: Mapping[str, str] | None = None,
        nofile: int | None = None,
    ) -> None:
        self.workdir = workdir
        self.env = dict(env or {})
        self.netns = netns
        self.ng_address = (ng_host, ng_port)
        self.admin_socket = workdir / "admin.sock"
        args = [sys.executable, "-m", "relayd", "--foreground"]
        args += ["--config-file", str(config_file) if config_file else "none"]
        for item in interface:
            args += ["--interface", item]
        args += [
            "--listen-ng",
            f"{ng_host}:{ng_port}",
            "--port-min",
            str(port_min),
            "--port-max",
            str(port_max),
            "--table",
            "-1",
            "--log-level",
            "7",
            "--pidfile",
            str(workdir / "relayd.pid"),
            *(["--state-dir", str(workdir / state_dir)] if state_dir is not None else []),
            "--admin-socket",
            str(self.admin_socket),
            *extra,
        ]
        if nofile is not None:  # its descriptor limit (util-linux's prlimit execs relayd)
            args = ["prlimit", f"--nofile={nofile}", "--", *args]
        self.args = exec_args(netns, args) if netns else args
        self.log_path = workdir / "relayd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait: float = 10.0) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO), **self.env)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.args,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.workdir,
                preexec_fn=new_session_dying_with_parent,
            )
        deadline = time.monotonic() + wait
        with self.client(timeout=0.2, retries=0) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"relayd exited at start-up:\n{self.log()}")
                try:
                    if client.call("ping").get("result") == "pong":
                        return
                except (NgTimeout, ConnectionRefusedError):
                    time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"relayd did not answer ping:\n{self.log()}")

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
def running_relayd(workdir: Path, **kwargs: object) -> Iterator[RelaydProcess]:
    daemon = RelaydProcess(workdir, **kwargs)  # type: ignore[arg-type]
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()
