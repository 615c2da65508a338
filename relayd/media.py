"""The supervisor's side of the data plane: media sockets, worker processes, stats.

relayd binds every media socket itself (so a port clash is found while the
offer is handled, and "Ran out of ports" is accurate) and passes a duplicate
to the worker that owns the port's slice. Workers are spawned pinned to a core
each, watched, and restarted when they die: the new worker receives the same
sockets, so media resumes on the same ports and packets that arrived in the
meantime wait in the socket buffers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from relayd import ipc
from relayd.forwarding import media_key, paired, parse_key, plan, socket_key
from relayd.log import get_logger
from relayd.model import Call, Endpoint, Media, Stream

__all__ = ["MediaPlane", "SocketBinder"]

log = get_logger("relayd.media")

_LINK_BUFFER = 4 << 20
# room for ~2,700 RTP packets, so a worker kept off its core for a few milliseconds
# loses nothing (bench/media.py: one stream's max lossless rate x2.5)
_MEDIA_RCVBUF = 1 << 20
_SO_RCVBUFFORCE = 33  # Linux: like SO_RCVBUF but above net.core.rmem_max (CAP_NET_ADMIN)

# How long updates for the workers (forwards of answered calls, drops of deleted ones)
# may wait to go out together. A worker wakes once per batch instead of once per
# message, which under load leaves its core to media (and, where it shares a core with
# relayd, relayd's to signalling: bench/ng.py, 5-10% more calls per second). Media of a
# new call waits in its socket buffer meanwhile; nothing is lost.
WORKER_BATCH_DELAY = 0.002


class SocketBinder:
    """Binds and keeps the RTP/RTCP sockets of every allocated port pair.

    Kept as bare descriptors (a socket object costs three times an int, per socket
    of every call): they are only ever handed to workers, drained and closed here.
    """

    def __init__(self) -> None:
        self.sockets: dict[str, int] = {}  # socket key -> file descriptor

    def bind(self, address: str, port: int) -> bool:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        opened: list[socket.socket] = []
        try:
            for p in (port, port + 1):
                # non-blocking from the start, for every copy (the workers' included)
                sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
                opened.append(sock)
                _grow_receive_buffer(sock)
                sock.bind((address, p))
        except OSError as exc:
            for sock in opened:
                sock.close()
            log.warning("ports.bind_failed", address=address, port=port, error=str(exc))
            return False
        for p, sock in zip((port, port + 1), opened, strict=True):
            self.sockets[socket_key(address, p)] = sock.detach()
        return True

    def release(self, address: str, port: int) -> None:
        for p in (port, port + 1):
            fd = self.sockets.pop(socket_key(address, p), None)
            if fd is not None:
                os.close(fd)

    def fileno(self, key: str) -> int:
        return self.sockets[key]

    def discard_queued(self, keys: Sequence[str], limit: int = 4096) -> int:
        """Drop the datagrams waiting on sockets no worker has read yet; returns how many.

        One ``poll`` finds the sockets with something queued (nearly always none), so
        an idle socket costs no system call of its own.
        """
        poller = select.poll()
        for key in keys:
            fd = self.sockets.get(key)
            if fd is not None:
                poller.register(fd, select.POLLIN)
        dropped = 0
        for fd, _events in poller.poll(0):
            for _ in range(limit):
                try:
                    os.read(fd, 1)  # one datagram (the socket is non-blocking)
                except OSError:  # BlockingIOError when empty; a queued ICMP error ends it
                    break
                dropped += 1
        return dropped

    def share_key(self, key: str) -> None:
        """Hold ``key`` itself, an equal string the caller keeps anyway, instead of our own
        copy: one string per socket instead of two, for every socket of every call."""
        fd = self.sockets.pop(key, None)
        if fd is not None:
            self.sockets[key] = fd


def _grow_receive_buffer(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, _MEDIA_RCVBUF)
    except OSError:  # not privileged: as far as net.core.rmem_max allows
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _MEDIA_RCVBUF)


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
        self.streams: dict[str, Stream] = {}  # socket key -> the stream it carries
        # called after each stats report with the call-ids whose confirmations changed
        self.on_stats: Callable[[ipc.Stats, set[str]], None] | None = None
        # called with each stream's new userspace counts: stream, packets, bytes, errors
        self.on_traffic: Callable[[Stream, int, int, int], None] | None = None
        self.on_rtcp: Callable[[ipc.Rtcp], None] | None = None  # RTCP copies (Homer, RTCP log)
        self.reported: dict[str, tuple[int, int, int]] = {}  # socket key -> worker counters
        # stream's own socket key -> the socket whose confirmed endpoint the stream shows
        # (an ICE candidate on another local address, once the party nominated it)
        self.holders: dict[str, str] = {}
        # per worker: media key -> the socket keys of the forward it holds. The forwards
        # themselves are not kept: a restarted worker gets them planned anew from ``calls``.
        self.placed: dict[int, dict[str, tuple[str, ...]]] = {}
        self.calls: Mapping[str, Call] = {}  # the supervisor's call registry
        self.worker_socket = ""
        self._outbox: list[tuple[WorkerProcess, bytes]] = []  # see _send_later
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

    def drop_early(self, call: Call) -> None:
        """Before the reply to an offer or answer: what arrived on the call's sockets that
        its worker does not have yet came before both sides were known and had nowhere
        to go. It is dropped now, not forwarded late once the worker gets the sockets;
        what arrives after the reply is the call's media and waits for the worker."""
        if not paired(call):
            return  # an offer nobody has answered: no worker gets the sockets yet
        placed = self.placed.get(call.worker, {})
        held = {
            key
            for index in range(_sections(call))
            for key in placed.get(media_key(call.call_id, index), ())
        }
        keys = [key for key in _socket_keys(call) if key not in held]
        dropped = self.binder.discard_queued(keys) if keys else 0
        if dropped:
            log.debug("media.dropped_early", sockets=keys, packets=dropped)

    def sync(self, call: Call) -> None:
        worker = self.workers[call.worker]
        placed = self.placed.setdefault(worker.index, {})
        by_key = _streams_by_key(call)
        for forward in plan(call):
            keys = tuple(spec.key for spec in forward.sockets)
            previous = placed.get(forward.media, ())
            # sockets left out of the new plan are closed by the worker: a later plan
            # that brings them back (a fork answering again) must send them anew
            for key in previous:
                if key not in keys:
                    self.streams.pop(key, None)
                    self.reported.pop(key, None)
                    self.holders.pop(key, None)
            placed[forward.media] = keys
            for spec in forward.sockets:
                # an ICE alias counts into its primary socket's stream
                stream = by_key[spec.alias_of or spec.key]
                known = self.streams.get(spec.key)
                if known is None:
                    self.binder.share_key(spec.key)
                if known is not stream:
                    self.streams[spec.key] = stream
            self._send_forward(worker, forward, previous)

    def drop(self, call: Call) -> None:
        worker = self.workers[call.worker]
        placed = self.placed.get(worker.index, {})
        for key in (media_key(call.call_id, index) for index in range(_sections(call))):
            sockets = placed.pop(key, None)
            if sockets is None:
                continue
            for socket_key_ in sockets:
                self.streams.pop(socket_key_, None)
                self.reported.pop(socket_key_, None)
                self.holders.pop(socket_key_, None)
            self._send_later(worker, ipc.encode(ipc.Drop(key)))

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

    def _send_later(self, worker: WorkerProcess, data: bytes) -> None:
        """After the reply that is being worked out (a Drop of a deleted call), batched
        (``WORKER_BATCH_DELAY``): the worker that wakes for it does not hold the reply
        up. Anything sent meanwhile goes after."""
        if not self._outbox:
            asyncio.get_running_loop().call_later(WORKER_BATCH_DELAY, self._flush)
        self._outbox.append((worker, data))

    def _flush(self) -> None:
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
        """Fold a worker's counters into the streams (as deltas: the kernel adds its own)."""
        offset = time.time() - stats.now
        worker = self.workers[stats.worker]
        changed: set[str] = set()
        for entry in stats.sockets:
            stream = self.streams.get(entry.key)
            if stream is None:
                continue
            packets, size, errors = self.reported.get(entry.key, (0, 0, 0))
            self.reported[entry.key] = (entry.packets, entry.bytes, entry.errors)
            if entry.packets < packets:  # a new worker counts from zero again
                packets = size = errors = 0
            new_packets, new_bytes = entry.packets - packets, entry.bytes - size
            new_errors = max(entry.errors - errors, 0)
            worker.packets += new_packets
            stream.stats.packets += new_packets
            stream.stats.bytes += new_bytes
            stream.stats.errors += new_errors
            if self.on_traffic:
                self.on_traffic(stream, new_packets, new_bytes, new_errors)
            if entry.last_packet:
                stream.stats.last_packet = max(stream.stats.last_packet, entry.last_packet + offset)
            own = socket_key(stream.local.local, stream.port)
            # the stream's one DTLS session lives on its primary socket; any candidate
            # socket may be the nominated one
            if entry.dtls and entry.key == own:
                stream.dtls = entry.dtls
            if entry.ice == "nominated" or (entry.ice and not stream.ice):
                stream.ice = entry.ice
            # With ICE candidates on several local addresses a stream has one socket per
            # address (aliases of its own); the one that confirmed its endpoint last (the
            # candidate the party nominated) speaks for the stream, and the unconfirmed
            # reports of the others do not undo that.
            holder = self.holders.get(own)
            if entry.key != own:
                if entry.confirmed:
                    self.holders[own] = entry.key
                elif holder == entry.key:
                    del self.holders[own]
                else:
                    continue
            elif entry.confirmed:
                self.holders.pop(own, None)
            elif holder is not None:
                continue
            learned = parse_key(entry.endpoint)
            if learned is not None:
                stream.endpoint = Endpoint(*learned)
            if stream.confirmed != entry.confirmed:
                stream.confirmed = entry.confirmed
                changed.add(stream.call_id)
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


def _media_lists(call: Call) -> list[list[Media]]:
    """The media sections of every party, current and earlier forked dialogues."""
    lists = []
    for party in call.parties():
        lists.append(party.medias)
        lists.extend(party.other_dialogues.values())
    return lists


def _sections(call: Call) -> int:
    """How many media sections the call's forwards can have (media keys 0 … n-1)."""
    return max((len(medias) for medias in _media_lists(call)), default=0)


def _socket_keys(call: Call) -> list[str]:
    """Every relay socket of the call: both components of each media and ICE candidate."""
    keys = []
    for party in call.parties():
        for media in party.medias:
            if media.port and media.local is not None:
                keys += [socket_key(media.local.local, media.port + i) for i in (0, 1)]
            for local, port in media.ice_ports:
                keys += [socket_key(local.local, port + i) for i in (0, 1)]
    return keys


def _streams_by_key(call: Call) -> dict[str, Stream]:
    return {
        socket_key(stream.local.local, stream.port): stream
        for party in call.parties()
        for media in party.medias
        for stream in media.streams
    }
