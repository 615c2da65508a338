"""A real relay-worker process driven over its link, as relayd/plane/workerpool.py drives it.

The test binds the relay sockets itself and passes them with SCM_RIGHTS in a
``Forward``, exactly like relayd; the worker runs ``python -m relayd.worker --fd N``.
``stats()`` folds the worker's ``Stats`` reports into the latest value per socket.
"""

from __future__ import annotations

import contextlib
import dataclasses
import select
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

from relayd import ipc
from tests.support.process import new_session_dying_with_parent

__all__ = ["RelaySocket", "WorkerLink", "udp"]


def udp(address: str = "127.0.0.1") -> socket.socket:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind((address, 0))
    return sock


class RelaySocket:
    """A relay socket the test owns, as relayd's SocketBinder would."""

    def __init__(self, address: str = "127.0.0.1") -> None:
        self.sock = udp(address)
        self.sock.setblocking(False)  # as relayd hands them over (relayd/ipc.py)
        host, port = self.sock.getsockname()[:2]
        self.address: tuple[str, int] = (host, port)
        self.key = f"{host} {port}"


class WorkerLink:
    def __init__(
        self, *, stats_interval: float = 0.1, certificate: str = "", key: str = ""
    ) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.link = parent
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "relayd.worker", "--worker", "0", "--fd", str(child.fileno())],
            pass_fds=[child.fileno()],
            preexec_fn=new_session_dying_with_parent,
            stderr=self.log,
        )
        child.close()
        self.sockets: dict[str, ipc.SocketStats] = {}
        self.sent: set[str] = set()  # socket keys whose fd the worker has
        hello = self.receive(10.0)
        assert isinstance(hello, ipc.Hello), hello
        self.send(
            ipc.Configure(
                0, stats_interval=stats_interval, certificate=certificate, private_key=key
            )
        )

    def send(self, message: ipc.Message, fds: Sequence[int] = ()) -> None:
        socket.send_fds(self.link, [ipc.encode(message)], list(fds))

    def forward(self, media: str, specs: Sequence[tuple[ipc.SocketSpec, RelaySocket]]) -> None:
        """A Forward for ``specs``; a socket's fd rides along the first time only, as in
        relayd (``fd_index`` -1 afterwards: the worker has it)."""
        fds: list[int] = []
        sockets: list[ipc.SocketSpec] = []
        for spec, relay in specs:
            index = -1
            if relay.key not in self.sent:
                index = len(fds)
                fds.append(relay.sock.fileno())
                self.sent.add(relay.key)
            sockets.append(dataclasses.replace(spec, key=relay.key, fd_index=index))
        self.send(ipc.Forward(media, tuple(sockets)), fds)

    def receive(self, timeout: float) -> ipc.Message | None:
        ready, _, _ = select.select([self.link], [], [], timeout)
        if not ready:
            return None
        data = self.link.recv(1 << 20)
        assert data, "the worker closed its link"
        message = ipc.decode(data)
        if isinstance(message, ipc.Stats):
            for entry in message.sockets:
                self.sockets[entry.key] = entry
        return message

    def stats(self, key: str, until: object = None, timeout: float = 3.0) -> ipc.SocketStats:
        """The latest stats of socket ``key``; waits (bounded) until ``until(stats)`` holds."""
        deadline = time.monotonic() + timeout
        while True:
            current = self.sockets.get(key)
            if current is not None and (until is None or until(current)):  # type: ignore[operator]
                return current
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"stats of {key}: {current}")
            self.receive(min(left, 0.2))

    def drain(self, seconds: float) -> None:
        """Keep reading reports for ``seconds`` (so the link never fills)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.receive(left)

    def close(self) -> str:
        with contextlib.suppress(OSError):
            self.send(ipc.Shutdown())
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.link.close()
        self.log.seek(0)
        text = self.log.read().decode(errors="replace")
        self.log.close()
        return text
