"""The worker's event loop: epoll over its media sockets and the supervisor link.

A plain non-blocking ``recvfrom``/``sendto`` loop, pinned to one core: on this
kind of machine it out-runs rtpengine's userspace path, where asyncio
transports would not (docs/kernel.md, "Background"). Each readable
socket is drained in bounded batches so one busy stream cannot starve others.

The worker is the only holder of the sockets relayd gave it (relayd/ipc.py's
rules): a socket that leaves its forwards is kept idle (``parked``) until a later
forward names it again or relayd's ``Close`` gives its port back.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import struct
import time

from relayd import ipc
from relayd.ipc import LEARNING, Learning, parse_key, socket_key
from relayd.log import get_logger
from relayd.rtcp import is_rtcp
from relayd.worker.dtmf import watch as watch_dtmf
from relayd.worker.player import Players
from relayd.worker.recording import FLUSH_TICK, WorkerRecordings
from relayd.worker.secure import SecurePath
from relayd.worker.session import Leg, Verdict
from relayd.worker.silence import parse_fills, silence
from relayd.worker.sockets import MediaSocket
from relayd.worker.transcoding import configure as configure_codecs
from relayd.worker.transcoding import inject as inject_dtmf
from relayd.worker.transcoding import link as link_codecs
from relayd.worker.transcoding import outgoing

__all__ = ["Worker", "report_phase"]

_STATS_PER_MESSAGE = 50
"""Sockets per Stats message: a few hundred bytes each, well inside ipc.MAX_MESSAGE. Each
message is built and sent before the next is begun, and few per message keep what a burst
of reports allocates at once small (thousands of sockets change in the second that many
calls start: at 1,000 per message, the worker's and relayd's heaps grew by about 1 MB
each, kept for good, about 1 KB per call at 1,000 calls; at 200 per message, four
workers' pools still kept about 0.25 KB per call each at 1,000 calls, where 50 keep none
of it: bench/memory.py --workers 4). Each message costs about 23 µs to encode and decode
beside its sockets' 6 µs each."""

log = get_logger("relayd.worker")

_BATCH = 64  # packets read from one socket before looking at the others
_RECV_SIZE = 4096
_IPC_SIZE = 1 << 20
_MAX_FDS = 256
_UDP_NONBLOCKING = socket.SOCK_DGRAM | socket.SOCK_NONBLOCK
_NEVER = float("inf")
_MODES: dict[str, Learning] = {mode: mode for mode in LEARNING}


_SO_TIMESTAMPNS = 35  # Linux: relayd asks for it on every media socket (plane/sockets.py)
_TIMESPEC = struct.Struct("=qq")  # struct timespec on 64-bit Linux


def _arrival(sock: socket.socket) -> float:
    """When the kernel received the next datagram waiting on ``sock`` (wall clock), left
    where it is (MSG_PEEK); BlockingIOError when none waits. 0.0 when it carries no stamp:
    a datagram that came in while the kernel's timestamping was still being switched on
    (a moment after the first such socket) is stamped when it is read, which is no arrival
    time, and counts as old."""
    asked = time.time()  # a datagram queued now arrived before this
    _, ancillary, _, _ = sock.recvmsg(1, _TIMESPEC.size + 64, socket.MSG_PEEK)
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS and len(data) >= 16:
            seconds, nanoseconds = _TIMESPEC.unpack_from(data)
            stamped = seconds + nanoseconds / 1e9
            return stamped if stamped < asked else 0.0
    return 0.0


def _silenced(data: bytes, fills: dict[int, int]) -> bytes | bytearray:
    """``data`` with its audio overwritten by silence (relayd/worker/silence.py); RTCP as is."""
    if is_rtcp(data):
        return data
    packet = bytearray(data)
    silence(packet, len(packet), fills)
    return packet


def _is_alias(ms: MediaSocket) -> bool:
    return ms.primary is not None


def report_phase(index: int) -> float:
    """Where in the report interval worker ``index`` reports, as a fraction: spread by the
    golden ratio, so that any number of workers fall apart evenly without knowing how many."""
    return (index * 0.6180339887498949) % 1.0


class Worker:
    """One relay-worker: its sockets (by descriptor and by key), its media sections, the link to
    relayd. Everything happens in :meth:`run`: one thread, no asyncio."""

    def __init__(self, link: socket.socket, index: int) -> None:
        self.link = link
        self.index = index
        self.tos = 0
        self.stats_interval = 1.0
        self.epoll = select.epoll()
        # indexed by file descriptor (small, dense numbers): a slot costs less than a dict
        # entry, for every socket of every call
        self.by_fd: list[MediaSocket | None] = []
        self.by_key: dict[str, MediaSocket] = {}
        self.medias: dict[str, list[str]] = {}  # media key -> its socket keys (a handful)
        # sockets no forward names now, kept (not read) until named again or closed
        self.parked: dict[str, socket.socket] = {}
        # what the next report looks at: sockets that saw packets or a forward since the
        # last one, and those with SRTP/DTLS/ICE (whose state timers change). Not all of
        # them: with thousands of idle calls a full scan each second would take the core.
        self.active: list[MediaSocket] = []  # each once (MediaSocket.dirty)
        self.secured: set[MediaSocket] = set()
        self.secure = SecurePath(index, _RECV_SIZE, _BATCH)
        self.rtcp_capture = False
        self.rtcp: list[ipc.RtcpPacket] = []
        self.dtmf_events = False  # DTMF digits reported (relayd/worker/dtmf.py)
        self.recordings = WorkerRecordings(index, self.send)
        self.players = Players(index, self.by_key, self.secure.buf, self.send)
        self.copies_fd = -1  # the nflog socket of kernel-recorded packets (-1: none)
        self.running = True
        link.setblocking(False)
        self.epoll.register(link.fileno(), select.EPOLLIN)

    # -- supervisor link --------------------------------------------------------------------

    def send(self, message: ipc.Message) -> None:
        try:
            self.link.send(ipc.encode(message))
        except BlockingIOError:
            log.warning("worker.link_full", worker=self.index)

    def _read_link(self) -> None:
        while True:
            try:
                data, fds, flags, _addr = socket.recv_fds(self.link, _IPC_SIZE, _MAX_FDS)
            except BlockingIOError:
                return
            if flags & socket.MSG_CTRUNC:
                # the descriptor table is full: the kernel dropped what did not fit (relayd's
                # budget per worker keeps this from happening; its sockets are lost here)
                log.error("worker.descriptors_dropped", worker=self.index, received=len(fds))
            if not data:
                log.info("worker.supervisor_gone", worker=self.index)
                self.running = False
                for fd in fds:
                    os.close(fd)
                return
            try:
                messages = ipc.decode_all(data)
            except ipc.IpcError:
                log.exception("worker.bad_message", worker=self.index)
                for fd in fds:
                    os.close(fd)
                continue
            # the packet's descriptors, by their index among them: those its forwards took
            used: set[int] = set()
            for message in messages:
                self._apply(message, fds, used)
            for index, fd in enumerate(fds):
                if index not in used:
                    os.close(fd)

    def _apply(self, message: ipc.Message, fds: list[int], used: set[int]) -> None:
        """One message of a packet; a forward adds the descriptors it keeps to ``used``."""
        if isinstance(message, ipc.Forward):
            self._forward(message, fds, used)
        elif isinstance(message, ipc.Drop):
            self._drop(message.media)
        elif isinstance(message, ipc.Close):
            self._close_keys(message.keys)
        elif isinstance(message, ipc.Discard):
            self._discard(message.keys, message.before)
        elif isinstance(message, ipc.Configure):
            self.tos = message.tos
            self.stats_interval = message.stats_interval
            self.rtcp_capture = message.rtcp_capture
            self.dtmf_events = message.dtmf_events
            self.secure.set_certificate(message.certificate, message.private_key)
            self.recordings.configure(
                message.recording_dir, message.recording_format, message.recording_file_mode
            )
            self._listen_copies(message.nflog_group)
        elif isinstance(message, ipc.RecordStart):
            self.recordings.start(message, self.medias, self.by_key)
        elif isinstance(message, ipc.RecordSdp):
            self.recordings.sdp(message)
        elif isinstance(message, ipc.RecordPause):
            self.recordings.pause(message)
        elif isinstance(message, ipc.RecordStop):
            self.recordings.copies(self.by_key)  # what the kernel copied so far goes in first
            self.recordings.stop(message)
        elif isinstance(message, ipc.Play):
            self.players.play(message, time.monotonic())
        elif isinstance(message, ipc.PlayStop):
            self.players.stop(message)
        elif isinstance(message, ipc.InjectDtmf):
            error = inject_dtmf(message, self.by_key, self.index)
            self.send(ipc.DtmfInjected(message.request, error))
        elif isinstance(message, ipc.Shutdown):
            self.running = False

    def _listen_copies(self, group: int) -> None:
        """Read the kernel's copies of recorded packets (nflog ``group``) from now on."""
        if self.copies_fd >= 0:
            with contextlib.suppress(OSError, ValueError):
                self.epoll.unregister(self.copies_fd)
            self.copies_fd = -1
        fd = self.recordings.listen_copies(group)
        if fd >= 0:
            self.epoll.register(fd, select.EPOLLIN)
            self.copies_fd = fd

    def _forward(self, message: ipc.Forward, fds: list[int], used: set[int]) -> None:
        hosts: dict[str, str] = {}  # a party's RTP and RTCP share one copy of its address
        # and the call's sockets one float of the time learning confirms from (the same for
        # every party of a call after a signalling event, a new object per decoded value)
        times: dict[float, float] = {}
        keys = self.medias.setdefault(message.media, [])
        for spec in message.sockets:
            current = self.by_key.get(spec.key)
            if spec.fd_index >= len(fds):  # dropped on the way in (the table was full)
                log.error("worker.socket_missing", worker=self.index, key=spec.key)
                continue
            if spec.fd_index >= 0:
                used.add(spec.fd_index)
                # family and type given: no getsockname/getsockopt to find them out; the
                # socket arrives non-blocking (ipc's rules), so nothing is set on it either
                family = socket.AF_INET6 if ":" in spec.key else socket.AF_INET
                sock = socket.socket(family, _UDP_NONBLOCKING, 0, fds[spec.fd_index])
                if current is not None and current.sock.fileno() != sock.fileno():
                    self._close(current)
                    current = None
                if (stale := self.parked.pop(spec.key, None)) is not None:
                    stale.close()
                if current is None:
                    current = self._add(spec, sock)
            elif current is None and (idle := self.parked.pop(spec.key, None)) is not None:
                current = self._add(spec, idle)  # named again: read from a fresh start
            if current is None:
                log.warning("worker.unknown_socket", worker=self.index, key=spec.key)
                continue
            if current.media != message.media:  # keep the copy it has: one per media
                current.media = message.media
            if current.listening != spec.listen:
                self._listen(current, spec.listen)
            if spec.key not in keys:
                keys.append(spec.key)
            leg = current.leg
            leg.asymmetric, leg.strict, leg.handover = spec.asymmetric, spec.strict, spec.handover
            leg.kernel = spec.kernel
            leg.block = spec.block
            if spec.silence or leg.silence is not None:
                leg.silence = parse_fills(spec.silence)
            expect = parse_key(spec.expect)
            if expect is not None:
                expect = (hosts.setdefault(expect[0], expect[0]), expect[1])
            if (expect, spec.learn_after, spec.learning) != (
                leg.expect,
                leg.learn_after,
                leg.learning,
            ):
                fresh = leg.rank == -1 and leg.packets == 0
                # one copy of the mode's name for all legs, not one per decoded message
                after = times.setdefault(spec.learn_after, spec.learn_after)
                leg.reset(expect, _MODES.get(spec.learning, "delayed"), after)
                learned = parse_key(spec.learned) if fresh else None
                if learned is not None:
                    leg.endpoint, leg.confirmed = learned, True
            self.secure.configure(current, spec)
            configure_codecs(current, spec.codecs, self.index)
            if self.dtmf_events:
                engine = current.codecs.engine if current.codecs is not None else None
                current.dtmf = watch_dtmf(
                    self.index, spec.key, spec.dtmf, engine, current.dtmf, self.send
                )
            if not current.dirty:
                current.dirty = True
                self.active.append(current)
            if current.secure is not None:
                self.secured.add(current)
            else:
                self.secured.discard(current)
        wanted = {spec.key for spec in message.sockets}
        for key in [k for k in keys if k not in wanted]:
            keys.remove(key)
            if (gone := self.by_key.get(key)) is not None:
                self._close(gone, park=True)
        touched: list[MediaSocket] = []
        for spec in message.sockets:
            current = self.by_key.get(spec.key)
            if current is not None:
                current.out = self.by_key.get(spec.out)
                current.out_rtcp = self.by_key.get(spec.out_rtcp)
                current.primary = self.by_key.get(spec.alias_of) if spec.alias_of else None
                touched.append(current)
        now = time.monotonic()
        for current in touched:
            current.crypto = any(
                ms is not None and ms.secure is not None
                for ms in (current, current.out, current.out_rtcp)
            )
            self.secure.link(current)
            self.secure.start(current, now)
        link_codecs(touched)
        if self.dtmf_events:  # the kernel's copies of event packets find their watches anew
            self.recordings.reroute()
        if self.recordings.calls:
            self.recordings.forwarded(message.media, touched)

    def _add(self, spec: ipc.SocketSpec, sock: socket.socket) -> MediaSocket:
        if self.tos:
            if sock.family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, self.tos)
            else:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, self.tos)
        media_socket = MediaSocket(sock, Leg(spec.key, rtcp=spec.rtcp))
        self.by_key[spec.key] = media_socket
        fd = sock.fileno()
        if fd >= len(self.by_fd):
            self.by_fd.extend([None] * (fd + 1 - len(self.by_fd)))
        self.by_fd[fd] = media_socket
        return media_socket

    def _listen(self, media_socket: MediaSocket, listen: bool) -> None:
        """Read the socket, or leave what arrives queued in it (a send-only socket)."""
        fd = media_socket.sock.fileno()
        if listen:
            self.epoll.register(fd, select.EPOLLIN)
        else:
            self.epoll.unregister(fd)
        media_socket.listening = listen

    def _close(self, media_socket: MediaSocket, *, park: bool = False) -> None:
        """Forget ``media_socket``'s state and links; close the socket, or with ``park``
        keep it idle in ``parked`` (its port stays ours)."""
        self.secure.forget(media_socket)
        self.secured.discard(media_socket)  # (on self.active it is skipped once closed)
        fd = media_socket.sock.fileno()
        if 0 <= fd < len(self.by_fd):
            self.by_fd[fd] = None
        self.by_key.pop(media_socket.leg.key, None)
        if media_socket.listening:
            with contextlib.suppress(OSError, ValueError):
                self.epoll.unregister(fd)
        if park:
            # the same descriptor in a new socket object: the old one reads as closed
            # (fileno -1) wherever this MediaSocket is still listed
            own = media_socket.leg.key
            family = socket.AF_INET6 if ":" in own else socket.AF_INET
            idle = socket.socket(family, _UDP_NONBLOCKING, 0, media_socket.sock.detach())
            self.parked[own] = idle
        else:
            media_socket.sock.close()
        # only the sockets of the same media section point at this one
        for key in self.medias.get(media_socket.media, ()):
            other = self.by_key.get(key)
            if other is None:
                continue
            if other.active is media_socket:
                other.active = None
            if other.out is media_socket:
                other.out = None
            if other.out_rtcp is media_socket:
                other.out_rtcp = None

    def _drop(self, media: str) -> None:
        for key in self.medias.pop(media, []):
            current = self.by_key.get(key)
            if current is not None:
                self._close(current, park=True)

    def _close_keys(self, keys: tuple[str, ...]) -> None:
        """Relayd gave these sockets' ports back: close them, in a forward or idle."""
        if self.players.players or self.players.streams:
            self.players.forget(keys)
        for key in keys:
            idle = self.parked.pop(key, None)
            if idle is not None:
                idle.close()
            current = self.by_key.get(key)
            if current is None:
                continue
            listed = self.medias.get(current.media)
            if listed is not None and key in listed:
                listed.remove(key)
            self._close(current)

    def _discard(self, keys: tuple[str, ...], before: float = 0.0, limit: int = 4096) -> None:
        """Drop what waits on these sockets (send-only or idle ones: relayd's ``Discard``),
        up to the first datagram the kernel received at ``before`` or later (0: all of it):
        that one came after relayd's reply and belongs to the forward that follows."""
        for key in keys:
            current = self.by_key.get(key)
            sock = current.sock if current is not None else self.parked.get(key)
            if sock is None:
                continue
            for _ in range(limit):
                try:
                    if before and _arrival(sock) >= before:
                        break
                    sock.recv(1)
                except OSError:  # BlockingIOError when empty; a queued ICMP error ends it
                    break

    # -- stats ------------------------------------------------------------------------------

    def report(self, now: float) -> None:
        """Send a ``Stats``: the sockets whose counters, confirmation or DTLS/ICE state changed.

        Only sockets active since the last report and those with crypto are looked at. A stream's
        own socket is listed before its ICE aliases (relayd takes the last confirmed one as the
        candidate in use). Then the RTCP copies gathered meanwhile.
        """
        changed: list[ipc.SocketStats] = []
        sent = False
        cpu = time.process_time()
        looked_at = self.active + [ms for ms in self.secured if not ms.dirty]
        self.active = []
        # a stream's own socket before its ICE aliases: the supervisor takes the last
        # confirmed one of a stream as the one the party uses
        looked_at.sort(key=_is_alias)
        for ms in looked_at:
            ms.dirty = False
            if ms.sock.fileno() < 0:
                continue  # closed or parked since
            leg = ms.leg
            sec = ms.secure
            crypto = (sec.dtls_state, sec.ice_state) if sec is not None else ("", "")
            if not leg.unreported() and (sec is None or crypto == sec.reported):
                continue
            if sec is not None:
                sec.reported = crypto
            endpoint = socket_key(*leg.endpoint) if leg.endpoint else ""
            codecs = ms.codecs
            engine = codecs.engine.counters if codecs is not None and codecs.engine else None
            changed.append(
                ipc.SocketStats(
                    leg.key,
                    leg.packets,
                    leg.bytes,
                    leg.errors,
                    leg.last_packet,
                    endpoint,
                    leg.confirmed,
                    leg.ssrc,
                    *crypto,
                    codecs.name if codecs is not None else "",
                    engine.frames if engine is not None else 0,
                    engine.sent if engine is not None else 0,
                    engine.errors if engine is not None else 0,
                )
            )
            if len(changed) == _STATS_PER_MESSAGE:
                self.send(ipc.Stats(self.index, tuple(changed), cpu, now, self.recordings.lost))
                changed, sent = [], True
        if changed or not sent:  # one message at least: it carries the CPU time
            self.send(ipc.Stats(self.index, tuple(changed), cpu, now, self.recordings.lost))
        if self.rtcp:
            self.send(ipc.Rtcp(self.index, tuple(self.rtcp), now))
            self.rtcp = []

    def _sample_rtcp(self, key: str, source: tuple[str, int], data: bytes, now: float) -> None:
        if len(self.rtcp) < ipc.RTCP_SAMPLE_LIMIT:
            self.rtcp.append(ipc.RtcpPacket(key, socket_key(*source[:2]), data.hex(), now))

    def _transcoded(self, ms: MediaSocket, out: MediaSocket, data: bytes, rtcp: bool) -> None:
        """Send what the media engine makes of ``data`` (relayd/worker/transcoding.py)."""
        target = out.leg.endpoint
        if target is None:
            return
        for packet in outgoing(ms, data, rtcp, self.index):
            try:
                out.sock.sendto(packet, target)
            except OSError:
                out.leg.errors += 1

    # -- the loop -----------------------------------------------------------------------------

    def run(self) -> None:
        """Say Hello, then loop until ``Shutdown``, SIGTERM or the link's end; close every socket.

        Each wake: up to 64 datagrams per readable socket, learned and sent on from the other
        party's socket (sockets with crypto go through :class:`SecurePath`), then the DTLS
        timers and the report when due.
        """
        self.send(ipc.Hello(self.index, os.getpid()))
        poll = self.epoll.poll
        link_fd = self.link.fileno()
        by_fd = self.by_fd
        monotonic = time.monotonic
        # workers started together would report together, every second, and relayd would
        # read them all at once (with many workers on one core, ng waited behind them):
        # each worker's reports keep a phase of their own in the interval
        next_report = monotonic() + self.stats_interval * (1.0 + report_phase(self.index))
        forward = Verdict.FORWARD
        secure = self.secure
        drain_secure = secure.drain
        timers = secure.timers
        recordings = self.recordings
        next_flush = _NEVER
        players = self.players
        while self.running:
            active = self.active
            # DTLS retransmission timers: looked over once per wake, fired when one is due
            timer_at = secure.next_deadline() if timers else _NEVER
            if recordings.calls and next_flush == _NEVER:
                next_flush = monotonic() + FLUSH_TICK
            play_at = players.next_deadline() if players.players else _NEVER
            wake = min(next_report, timer_at, next_flush, play_at)
            events = poll(max(wake - monotonic(), 0.0))
            now = monotonic()
            if len(events) > 1 and any(fd == link_fd for fd, _mask in events):
                # relayd's messages first: a RecordStart or Forward sent before the reply to
                # the request that made it applies to the packets that came after that reply
                self._read_link()
                events = [event for event in events if event[0] != link_fd]
            for fd, _mask in events:
                if fd == link_fd:
                    self._read_link()
                    continue
                if fd == self.copies_fd:
                    recordings.copies(self.by_key)
                    continue
                ms = by_fd[fd] if fd < len(by_fd) else None
                if ms is None:
                    continue
                if not ms.dirty:
                    ms.dirty = True
                    active.append(ms)
                if ms.crypto:
                    drain_secure(ms, now)
                    continue
                recvfrom = ms.sock.recvfrom
                leg = ms.leg
                capture = self.rtcp_capture
                tap = ms.tap
                dtmf = ms.dtmf
                data: bytes | bytearray  # bytes as read; a copy where silence media rewrites it
                for _ in range(_BATCH):
                    try:
                        data, source = recvfrom(_RECV_SIZE)
                    except BlockingIOError:
                        break
                    except OSError:
                        leg.errors += 1
                        break
                    if leg.receive(source[:2], len(data), now) != forward:
                        continue
                    if capture and (leg.rtcp or is_rtcp(data)):
                        self._sample_rtcp(leg.key, source, data, now)
                    if tap is not None:
                        tap.packet(source[:2], data)
                    if dtmf is not None:
                        dtmf.packet(source[:2], data)
                    if leg.block:
                        continue  # block media: counted above, recorded, not forwarded
                    out = ms.out
                    if ms.out_rtcp is not None and is_rtcp(data):
                        out = ms.out_rtcp
                        leg.last_rtcp, leg.rtcp_at = data[:20], now
                    else:
                        # for the player's report block (worker/player.py): an RTP header's
                        # first bytes (its sequence number), or an RTCP socket's report
                        leg.last = data[:20] if leg.rtcp else data[:4]
                        if leg.ssrc < 0 and not leg.rtcp and len(data) >= 12:
                            leg.ssrc = int.from_bytes(data[8:12], "big")
                    if out is None:
                        continue
                    if ms.transcode:
                        self._transcoded(ms, out, bytes(data), leg.rtcp or is_rtcp(data))
                        continue
                    if leg.silence is not None and not leg.rtcp:
                        data = _silenced(data, leg.silence)
                    target = out.leg.endpoint
                    if target is None:
                        continue  # the other side is not known yet: never guess
                    try:
                        out.sock.sendto(data, target)
                    except OSError:
                        out.leg.errors += 1
                        if not out.dirty:
                            out.dirty = True
                            active.append(out)
            if now >= timer_at:
                secure.fire(now)
            if now >= play_at:
                players.fire(now)
            if now >= next_flush:
                recordings.flush_due(time.time())
                next_flush = now + FLUSH_TICK if recordings.calls else _NEVER
            if now >= next_report:
                self.report(now)
                next_report = now + self.stats_interval
        for ms in list(self.by_key.values()):
            self._close(ms)
        for idle in self.parked.values():
            idle.close()
        self.parked.clear()
