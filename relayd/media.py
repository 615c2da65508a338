"""The supervisor's side of the data plane: worker processes and what they are told.

relayd binds every media socket itself (relayd/sockets.py) and passes a
duplicate to the worker that owns the port's slice, with the call's forwards;
what workers report comes back through relayd/reports.py. Workers are spawned pinned to a core
each, watched, and restarted when they die: the new worker receives the same
sockets, so media resumes on the same ports and packets that arrived in the
meantime wait in the socket buffers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from relayd import ipc
from relayd.forwarding import (
    media_key,
    paired,
    plan,
    relay_socket_keys,
    section_count,
    streams_by_socket,
)
from relayd.log import get_logger
from relayd.model import Call
from relayd.reports import OnTraffic, Reports
from relayd.sockets import SocketBinder
from relayd.updates import WORKER_BATCH_DELAY

__all__ = ["MediaPlane", "WorkerProcess"]

log = get_logger("relayd.media")

_LINK_BUFFER = 4 << 20


@dataclass
class WorkerProcess:
    index: int
    cpu: int
    link: socket.socket | None = None
    proc: subprocess.Popen[bytes] | None = None
    pid: int = 0
    restarts: int = 0
    cpu_seconds: float = 0.0
    packets: int = 0


class MediaPlane:
    def __init__(
        self,
        binder: SocketBinder,
        *,
        workers: int,
        tos: int = 0,
        log_level: int = 6,
        learning: str = "delayed",
        certificate: tuple[str, str] = ("", ""),
        log_format: str = "default",
        rtcp_capture: bool = False,
    ) -> None:
        self.binder = binder
        self.tos = tos
        self.log_level = log_level
        self.log_format = log_format
        self.rtcp_capture = rtcp_capture
        self.learning = learning
        self.certificate = certificate  # DTLS certificate and key, PEM, for every worker
        cpus = sorted(os.sched_getaffinity(0))
        self.workers = [WorkerProcess(i, cpus[i % len(cpus)]) for i in range(max(workers, 1))]
        self.reports = Reports()  # the workers' counters, folded into the streams
        # called after each stats report with the call-ids whose confirmations changed
        self.on_stats: Callable[[ipc.Stats, set[str]], None] | None = None
        self.on_traffic: OnTraffic | None = None
        self.on_rtcp: Callable[[ipc.Rtcp], None] | None = None  # RTCP copies (Homer, RTCP log)
        # per worker: media key -> the socket keys of the forward it holds. The forwards
        # themselves are not kept: a restarted worker gets them planned anew from ``calls``.
        self.placed: dict[int, dict[str, tuple[str, ...]]] = {}
        # placed sockets the worker only sends from (SocketSpec.listen False): what waits
        # in them came before their port was told, and drop_early discards it
        self.quiet: set[str] = set()
        self.calls: Mapping[str, Call] = {}  # the supervisor's call registry
        self.worker_socket = ""
        self._outbox: list[tuple[WorkerProcess, bytes]] = []  # see _send_later
        self._flush_timer: asyncio.TimerHandle | None = None
        self._listener: socket.socket | None = None
        self._closing = False

    # -- placement ------------------------------------------------------------------------

    def least_loaded(self) -> int:
        return min(self.workers, key=lambda w: (self.medias_on(w), w.index)).index

    def medias_on(self, worker: WorkerProcess) -> int:
        return len(self.placed.get(worker.index, ()))

    # -- worker processes -----------------------------------------------------------------

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
            # a replacement (upgrade, restart): the new process takes over the sockets
            loop.remove_reader(worker.link.fileno())
            worker.link.close()
        link.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _LINK_BUFFER)
        worker.link, worker.pid, worker.proc = link, hello.pid, None
        self._configure(worker)
        loop.add_reader(link.fileno(), self._readable, worker)
        log.info("worker.connected", worker=worker.index, pid=worker.pid)
        self.resend(worker)

    def _configure(self, worker: WorkerProcess) -> None:
        pem, key = self.certificate
        self._send(
            worker,
            ipc.Configure(
                worker.index,
                tos=self.tos,
                certificate=pem,
                private_key=key,
                rtcp_capture=self.rtcp_capture,
            ),
        )

    def _spawn(self, worker: WorkerProcess) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for sock in (parent, child):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _LINK_BUFFER)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _LINK_BUFFER)
        args = [
            sys.executable,
            "-m",
            "workers",
            "--worker",
            str(worker.index),
            "--cpu",
            str(worker.cpu),
            "--fd",
            str(child.fileno()),
            "--log-level",
            str(self.log_level),
            "--log-format",
            self.log_format,
        ]
        worker.proc = subprocess.Popen(args, pass_fds=[child.fileno()])
        child.close()
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
            self._ingest(message)
        elif isinstance(message, ipc.Rtcp):
            if self.on_rtcp:
                self.on_rtcp(message)
        elif isinstance(message, ipc.Hello):
            log.debug("worker.hello", worker=message.worker, pid=message.pid)

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
        worker.restarts += 1
        log.error(
            "worker.died",
            worker=worker.index,
            pid=worker.pid,
            code=code,
            medias=self.medias_on(worker),
        )
        if self.worker_socket:
            return  # systemd restarts the unit; it connects again and gets its sockets back
        self._spawn(worker)
        self.resend(worker)

    def resend(self, worker: WorkerProcess) -> None:
        """Give a (new) worker every socket and forward of its calls again: it starts
        with nothing placed, so each forward carries all its sockets."""
        placed = self.placed.pop(worker.index, {})
        for keys in placed.values():
            self.quiet.difference_update(keys)  # planned anew below, listening or not
        call_ids = dict.fromkeys(key.rpartition(" ")[0] for key in placed)  # "call-id index"
        for call_id in call_ids:
            call = self.calls.get(call_id)
            if call is not None:
                self.sync(call)

    # -- forwarding -----------------------------------------------------------------------

    def signalled(self, call: Call, tags: list[str], learning: str) -> None:
        """A signalling event touched ``tags``: learning restarts for those parties."""
        mode = learning or self.learning
        after = time.monotonic() + (3.0 if mode in ("delayed", "heuristic") else 0.0)
        for tag in tags:
            party = call.monologues.get(tag)
            if party is not None:
                party.learning, party.learn_after = mode, after

    def drop_early(self, call: Call, keep: str = "") -> None:
        """Before the reply to an offer or answer: what waits on a socket no worker reads
        yet (not handed over, or only sent from) came before anyone was told its port,
        or while nobody read it (ringing on a call with no early forward); it is dropped,
        not forwarded late once the worker reads the socket. ``keep``: a party (tag)
        whose sockets are left alone, an answerer that answers before its offer's early
        forward went out, so that its early media follows the answer's forward."""
        if not paired(call):
            return  # nothing to forward yet: no worker gets the sockets
        placed = self.placed.get(call.worker, {})
        read = {
            key
            for index in range(section_count(call))
            for key in placed.get(media_key(call.call_id, index), ())
            if key not in self.quiet
        }
        keys = [
            key
            for key in relay_socket_keys(call, besides=call.monologues.get(keep) if keep else None)
            if key not in read
        ]
        dropped = self.binder.discard_queued(keys) if keys else 0
        if dropped:
            log.debug("media.dropped_early", sockets=keys, packets=dropped)

    def sync(self, call: Call) -> None:
        worker = self.workers[call.worker]
        placed = self.placed.setdefault(worker.index, {})
        by_key = streams_by_socket(call)
        forwards = plan(call)
        planned = {forward.media for forward in forwards}
        for index in range(section_count(call)):
            # a section the plan no longer has (an early forward whose offer went on to
            # SRTP or ICE, or to another branch): the worker lets its sockets go
            key = media_key(call.call_id, index)
            if key not in planned and key in placed:
                self._unplace(worker, placed, key, send=self._send)
        for forward in forwards:
            keys = tuple(spec.key for spec in forward.sockets)
            previous = placed.get(forward.media, ())
            # sockets left out of the new plan are closed by the worker: a later plan
            # that brings them back (a fork answering again) must send them anew
            for key in previous:
                if key not in keys:
                    self.reports.forget(key)
                    self.quiet.discard(key)
            placed[forward.media] = keys
            for spec in forward.sockets:
                # an ICE alias counts into its primary socket's stream
                if self.reports.track(spec.key, by_key[spec.alias_of or spec.key]):
                    self.binder.share_key(spec.key)
                if spec.listen:
                    self.quiet.discard(spec.key)
                else:
                    self.quiet.add(spec.key)
            self._send_forward(worker, forward, previous)

    def drop(self, call: Call) -> None:
        worker = self.workers[call.worker]
        placed = self.placed.get(worker.index, {})
        for key in (media_key(call.call_id, index) for index in range(section_count(call))):
            if key in placed:
                self._unplace(worker, placed, key, send=self._send_later)

    def _unplace(
        self,
        worker: WorkerProcess,
        placed: dict[str, tuple[str, ...]],
        key: str,
        *,
        send: Callable[[WorkerProcess, ipc.Message], None],
    ) -> None:
        """The worker gives up media section ``key`` and closes its sockets."""
        for socket_key_ in placed.pop(key):
            self.reports.forget(socket_key_)
            self.quiet.discard(socket_key_)
        send(worker, ipc.Drop(key))

    def _send_forward(
        self, worker: WorkerProcess, forward: ipc.Forward, held: Sequence[str]
    ) -> None:
        """The forward, with the descriptors of its sockets the worker does not hold yet
        (``held``: those of the forward it had for this media section; a worker keeps
        exactly the sockets of its current forwards)."""
        fds: list[int] = []
        index: dict[str, int] = {}
        for spec in forward.sockets:
            if spec.key not in held and spec.key in self.binder.sockets:
                index[spec.key] = len(fds)
                fds.append(self.binder.fileno(spec.key))
        self._transmit(worker, ipc.encode_forward(forward, index), fds)

    def _send(self, worker: WorkerProcess, message: ipc.Message) -> None:
        self._transmit(worker, ipc.encode(message))

    def _send_later(self, worker: WorkerProcess, message: ipc.Message) -> None:
        """After the reply that is being worked out (a Drop of a deleted call), batched
        (``WORKER_BATCH_DELAY``): the worker that wakes for it does not hold the reply
        up. Anything sent meanwhile goes after."""
        if self._flush_timer is None:
            loop = asyncio.get_running_loop()
            self._flush_timer = loop.call_later(WORKER_BATCH_DELAY, self._flush)
        self._outbox.append((worker, ipc.encode(message)))

    def _flush(self) -> None:
        if self._flush_timer is not None:  # sent early: with something sent after it
            self._flush_timer.cancel()
            self._flush_timer = None
        outbox, self._outbox = self._outbox, []
        for worker, data in outbox:
            self._transmit(worker, data)

    def _transmit(self, worker: WorkerProcess, data: bytes, fds: Sequence[int] = ()) -> None:
        if self._outbox:
            self._flush()  # messages keep their order
        if worker.link is None:
            return
        try:
            if fds:
                socket.send_fds(worker.link, [data], list(fds))
            else:
                worker.link.send(data)
        except OSError as exc:
            log.error("worker.send_failed", worker=worker.index, error=str(exc))

    # -- stats ----------------------------------------------------------------------------

    def _ingest(self, stats: ipc.Stats) -> None:
        packets, changed = self.reports.fold(stats, self.on_traffic, time.time())
        self.workers[stats.worker].packets += packets
        if self.on_stats:
            self.on_stats(stats, changed)

    # -- shutdown -------------------------------------------------------------------------

    async def stop(self) -> None:
        self._closing = True
        loop = asyncio.get_running_loop()
        if self._listener is not None:
            loop.remove_reader(self._listener.fileno())
            self._listener.close()
            self._listener = None
        for worker in self.workers:
            if worker.link is not None:
                self._send(worker, ipc.Shutdown())
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
