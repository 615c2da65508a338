"""The media worker processes and the link to each (relayd's side of it).

Workers are spawned pinned to a core each (or, as systemd units, connect to
``worker-socket`` and say which worker they are), watched, and restarted when
they die; the owner (relayd/plane/media.py) binds the dead one's ports again at
once and gives the new process its calls. Messages go over a SOCK_SEQPACKET link,
descriptors with the message that introduces them; updates that may wait go out
in batches of ``WORKER_BATCH_DELAY``, in order with everything sent meanwhile: a
worker's messages of a batch in one packet (relayd/ipc.py's ``join``), with the next
message sent at once where it comes first.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from relayd import ipc
from relayd.log import get_logger
from relayd.plane import updates

__all__ = [
    "RESTART_STABLE",
    "PoolOwner",
    "WorkerPool",
    "WorkerProcess",
    "WorkerSettings",
    "restart_delay",
]

log = get_logger("relayd.plane.workerpool")

_LINK_BUFFER = 4 << 20
# the most bytes of messages joined in one packet (a worker reads up to ipc.MAX_MESSAGE):
# a burst of deletes (a timer ending thousands of calls) goes out in several
_PACKET_LIMIT = 1 << 18


@dataclass
class WorkerProcess:
    """One worker index: its core, link and process, its restarts, and its figures (CPU time as
    last reported, packets counted from its reports since relayd started)."""

    index: int
    cpu: int
    link: socket.socket | None = None
    proc: subprocess.Popen[bytes] | None = None
    pid: int = 0
    restarts: int = 0
    cpu_seconds: float = 0.0
    packets: int = 0
    copies_lost: int = 0  # kernel copies of recorded packets it lost (as last reported)
    spawned_at: float = 0.0  # time.monotonic() of the last spawn
    quick_deaths: int = 0  # deaths in a row, each within RESTART_STABLE of its spawn


# A worker that dies is started again at once; one that keeps dying soon after its start
# (a broken installation, a crash on start-up) is started again after a delay that doubles
# each time, up to RESTART_DELAY_MAX, instead of some thirty times a second.
RESTART_STABLE = 10.0  # seconds a worker must live for its death to count as the first
RESTART_DELAY_FIRST = 0.1
RESTART_DELAY_MAX = 5.0


def restart_delay(quick_deaths: int) -> float:
    """Seconds to wait before starting a worker again after its ``quick_deaths``-th death in a
    row soon after its start (0: it had lived long enough, start it at once)."""
    if quick_deaths <= 1:
        return 0.0
    return min(RESTART_DELAY_FIRST * 2 ** (quick_deaths - 2), RESTART_DELAY_MAX)


@dataclass(frozen=True)
class WorkerSettings:
    """What every worker process is started with (its command line) and configured with
    (``ipc.Configure``): the same for all of them, from relayd's configuration."""

    tos: int = 0
    log_level: int = 6
    log_format: str = "default"
    certificate: str = ""  # relayd's DTLS certificate and private key, PEM
    private_key: str = ""
    rtcp_capture: bool = False  # copy relayed RTCP to relayd (Homer, the RTCP log)
    recording_dir: str = ""  # the recording spool (``recording-dir``): "" records nothing
    recording_format: str = "raw"
    recording_file_mode: int = 0o640
    nflog_base: int = -1  # worker i reads nflog group nflog_base + i (-1: none)
    dtmf_events: bool = False  # report DTMF digits (ipc.Dtmf: the DTMF event log)


class PoolOwner(Protocol):
    """What the pool asks of the media plane."""

    def worker_lost(self, worker: WorkerProcess) -> None:
        """The worker's process is gone (or going: a unit replaced while it still runs), and
        the sockets it held with it."""

    def worker_ready(self, worker: WorkerProcess) -> None:
        """A new worker process (spawned again, or a unit that connected): it has
        nothing yet."""

    def worker_message(self, worker: WorkerProcess, message: ipc.Message) -> None:
        """Whatever a worker sends but its Hello: Stats and RTCP copies."""

    def medias_on(self, worker: WorkerProcess) -> int:
        """How many media sections the worker carries (for the log)."""


class WorkerPool:
    """One process per worker index, its link, and what waits to be sent to it."""

    def __init__(
        self, owner: PoolOwner, workers: int, settings: WorkerSettings | None = None
    ) -> None:
        self.owner = owner
        self.settings = settings or WorkerSettings()
        cpus = sorted(os.sched_getaffinity(0))
        self.workers = [WorkerProcess(i, cpus[i % len(cpus)]) for i in range(max(workers, 1))]
        self.worker_socket = ""
        self._outbox: list[tuple[WorkerProcess, ipc.Message]] = []  # see send_later
        self._flush_timer: asyncio.TimerHandle | None = None
        self._listener: socket.socket | None = None
        self._closing = False
        self._restarts: dict[int, asyncio.TimerHandle] = {}  # worker index: delayed restart

    def start(self, worker_socket: str = "") -> None:
        """Spawn the workers, or with ``worker_socket`` wait for them to connect there
        (workers run as systemd units, ``relay-worker@N.service``)."""
        self.worker_socket = worker_socket
        if not worker_socket:
            for worker in self.workers:
                self._spawn(worker)
            return
        path = Path(worker_socket)
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        listener.bind(str(path))
        os.chmod(path, 0o660)
        listener.listen(len(self.workers) * 2)
        listener.setblocking(False)
        self._listener = listener
        asyncio.get_running_loop().add_reader(listener.fileno(), self._accept)
        log.info("worker.waiting", socket=str(path), workers=len(self.workers))

    def _accept(self) -> None:
        """A relay-worker unit connected: its first message says which worker it is."""
        if self._listener is None:
            return
        try:
            link, _ = self._listener.accept()
        except BlockingIOError:
            return
        link.settimeout(2.0)
        try:
            hello = ipc.decode(link.recv(1 << 16))
        except (OSError, ipc.IpcError):
            link.close()
            return
        if not isinstance(hello, ipc.Hello) or not 0 <= hello.worker < len(self.workers):
            log.warning("worker.rejected", message=type(hello).__name__)
            link.close()
            return
        worker = self.workers[hello.worker]
        loop = asyncio.get_running_loop()
        if worker.link is not None:
            # a replacement (upgrade, restart): the old process exits once its link closes,
            # and its sockets with it; they are bound again for the new one
            loop.remove_reader(worker.link.fileno())
            worker.link.close()
            worker.link = None
            self.owner.worker_lost(worker)
        link.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _LINK_BUFFER)
        worker.link, worker.pid, worker.proc = link, hello.pid, None
        self._configure(worker)
        loop.add_reader(link.fileno(), self._readable, worker)
        log.info("worker.connected", worker=worker.index, pid=worker.pid)
        self.owner.worker_ready(worker)

    def _configure(self, worker: WorkerProcess) -> None:
        settings = self.settings
        self.send(
            worker,
            ipc.Configure(
                worker.index,
                tos=settings.tos,
                certificate=settings.certificate,
                private_key=settings.private_key,
                rtcp_capture=settings.rtcp_capture,
                recording_dir=settings.recording_dir,
                recording_format=settings.recording_format,
                recording_file_mode=settings.recording_file_mode,
                nflog_group=settings.nflog_base + worker.index if settings.nflog_base >= 0 else -1,
                dtmf_events=settings.dtmf_events,
            ),
        )

    def _spawn(self, worker: WorkerProcess) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        args = [
            sys.executable,
            "-m",
            "relayd.worker",
            "--worker",
            str(worker.index),
            "--cpu",
            str(worker.cpu),
            "--fd",
            str(child.fileno()),
            "--log-level",
            str(self.settings.log_level),
            "--log-format",
            self.settings.log_format,
        ]
        try:
            for sock in (parent, child):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _LINK_BUFFER)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _LINK_BUFFER)
            worker.proc = subprocess.Popen(args, pass_fds=[child.fileno()])
        except OSError:  # (a fork's pipes need descriptors too)
            parent.close()
            raise
        finally:
            child.close()
        worker.spawned_at = time.monotonic()
        worker.pid = worker.proc.pid
        worker.link = parent
        parent.settimeout(2.0)
        self._configure(worker)
        asyncio.get_running_loop().add_reader(parent.fileno(), self._readable, worker)
        log.info("worker.spawned", worker=worker.index, pid=worker.pid, cpu=worker.cpu)

    def _readable(self, worker: WorkerProcess) -> None:
        link = worker.link
        if link is None:
            return
        try:
            data = link.recv(1 << 20, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._lost(worker)
            return
        try:
            message = ipc.decode(data)
        except ipc.IpcError:
            log.exception("worker.bad_message", worker=worker.index)
            return
        if isinstance(message, ipc.Stats):
            worker.cpu_seconds = message.cpu_seconds
            worker.copies_lost = message.copies_lost
        if isinstance(message, ipc.Hello):
            log.debug("worker.hello", worker=message.worker, pid=message.pid)
        else:
            self.owner.worker_message(worker, message)

    def _lost(self, worker: WorkerProcess) -> None:
        loop = asyncio.get_running_loop()
        if worker.link is not None:
            loop.remove_reader(worker.link.fileno())
            worker.link.close()
            worker.link = None
        code = None
        if worker.proc is not None:
            # the link is gone: whatever state the process is in, it is of no use now
            if worker.proc.poll() is None:
                worker.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = worker.proc.wait(0.5)
        if self._closing:
            return
        # the process is reaped (spawned) or its link closed (a unit, exiting): its sockets
        # are closed, or about to be; relayd binds their ports again now, not at the restart
        self.owner.worker_lost(worker)
        worker.restarts += 1
        quick = time.monotonic() - worker.spawned_at < RESTART_STABLE
        worker.quick_deaths = worker.quick_deaths + 1 if quick else 1
        delay = 0.0 if self.worker_socket else restart_delay(worker.quick_deaths)
        log.error(
            "worker.died",
            worker=worker.index,
            pid=worker.pid,
            code=code,
            medias=self.owner.medias_on(worker),
            restart_in=delay,
        )
        if self.worker_socket:
            return  # systemd restarts the unit; it connects again and gets the sockets
        if delay:
            self._restarts[worker.index] = loop.call_later(delay, self._restart, worker)
        else:
            self._restart(worker)

    def _restart(self, worker: WorkerProcess) -> None:
        self._restarts.pop(worker.index, None)
        if self._closing:
            return
        try:
            self._spawn(worker)
        except OSError as exc:  # no descriptor for its link (relayd holds its sockets) ...
            delay = restart_delay(worker.quick_deaths + 1)
            log.error("worker.spawn_failed", worker=worker.index, error=str(exc), retry_in=delay)
            loop = asyncio.get_running_loop()
            self._restarts[worker.index] = loop.call_later(delay, self._restart, worker)
            return
        self.owner.worker_ready(worker)

    def send(self, worker: WorkerProcess, message: ipc.Message) -> None:
        self.transmit(worker, ipc.encode(message))

    def send_later(self, worker: WorkerProcess, message: ipc.Message) -> None:
        """After the reply that is being worked out (a Drop of a deleted call), batched
        (``WORKER_BATCH_DELAY``): the worker that wakes for it does not hold the reply
        up. Anything sent meanwhile goes after, in the same packet."""
        if self._flush_timer is None:
            loop = asyncio.get_running_loop()
            self._flush_timer = loop.call_later(updates.WORKER_BATCH_DELAY, self._flush)
        self._outbox.append((worker, message))

    def _flush(self) -> None:
        for worker, encoded in self._take_outbox():
            self._send(worker, encoded)

    def _take_outbox(self) -> list[tuple[WorkerProcess, list[bytes]]]:
        """Empty the outbox: each worker's messages, encoded, in their order; a ``Close`` that
        follows a ``Close`` (the pairs of one call given back) joins it."""
        if self._flush_timer is not None:  # sent early: with something sent after it
            self._flush_timer.cancel()
            self._flush_timer = None
        outbox, self._outbox = self._outbox, []
        by_worker: dict[int, tuple[WorkerProcess, list[ipc.Message]]] = {}
        for worker, message in outbox:
            messages = by_worker.setdefault(worker.index, (worker, []))[1]
            last = messages[-1] if messages else None
            if type(message) is ipc.Close and type(last) is ipc.Close:
                messages[-1] = ipc.Close(last.keys + message.keys)
            else:
                messages.append(message)
        return [
            (worker, [ipc.encode(m) for m in messages]) for worker, messages in by_worker.values()
        ]

    def transmit(self, worker: WorkerProcess, data: bytes, fds: Sequence[int] = ()) -> bool:
        """Send one encoded message now, ``fds`` attached (SCM_RIGHTS), after what waits in the
        outbox for the same worker, in the same packet: messages to a worker keep their order.
        True if it was sent: its descriptors are the worker's now (in flight until it reads them).

        Without a link the message is lost (a new worker is given its calls again); a failed send
        is logged. A full link blocks for at most its 2 s timeout.
        """
        waiting: list[bytes] = []
        if self._outbox:
            for other, encoded in self._take_outbox():
                if other.index == worker.index:
                    waiting = encoded
                else:
                    self._send(other, encoded)
        waiting.append(data)
        return self._send(worker, waiting, fds)

    def _send(self, worker: WorkerProcess, encoded: list[bytes], fds: Sequence[int] = ()) -> bool:
        """Send encoded messages in order, as few packets as fit in ``_PACKET_LIMIT`` bytes
        (ipc.join), ``fds`` with the last message."""
        if worker.link is None:
            return False
        link = worker.link
        try:
            chunk: list[bytes] = []
            size = 0
            for data in encoded:
                if chunk and size + len(data) > _PACKET_LIMIT:
                    link.send(ipc.join(chunk))
                    chunk, size = [], 0
                chunk.append(data)
                size += len(data) + 1
            if fds:
                socket.send_fds(link, [ipc.join(chunk)], list(fds))
            else:
                link.send(ipc.join(chunk))
        except OSError as exc:
            log.error("worker.send_failed", worker=worker.index, error=str(exc))
            return False
        return True

    async def stop(self) -> None:
        """Tell every worker to stop (``Shutdown``); spawned ones get 5 s to exit, then are killed.

        From here on a worker's death is not a restart; units (``worker-socket``) are only told,
        systemd owns their processes.
        """
        self._closing = True
        for timer in self._restarts.values():
            timer.cancel()
        self._restarts.clear()
        loop = asyncio.get_running_loop()
        if self._listener is not None:
            loop.remove_reader(self._listener.fileno())
            self._listener.close()
            self._listener = None
        for worker in self.workers:
            if worker.link is not None:
                self.send(worker, ipc.Shutdown())
                loop.remove_reader(worker.link.fileno())
        deadline = time.monotonic() + 5.0
        for worker in self.workers:
            if worker.proc is None:
                continue
            while worker.proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            if worker.proc.poll() is None:
                worker.proc.kill()
                worker.proc.wait()
            if worker.link is not None:
                worker.link.close()
                worker.link = None
