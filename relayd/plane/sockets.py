"""The relay's media sockets: bound by the supervisor, handed to workers as duplicates.

relayd binds every media socket itself, so a port clash is found while the offer
is handled and "Ran out of ports" is accurate; the worker that owns the port's
slice gets a duplicate (relayd/plane/media.py), and a replacement worker gets the same
sockets again.
"""

from __future__ import annotations

import os
import select
import socket
from collections.abc import Callable, Sequence

from relayd.ipc import socket_key
from relayd.log import get_logger

__all__ = ["SocketBinder"]

log = get_logger("relayd.plane.sockets")

# room for ~2,700 RTP packets, so a worker kept off its core for a few milliseconds
# loses nothing (bench/media.py: one stream's max lossless rate x2.5)
_MEDIA_RCVBUF = 1 << 20
_SO_RCVBUFFORCE = 33  # Linux: like SO_RCVBUF but above net.core.rmem_max (CAP_NET_ADMIN)


class SocketBinder:
    """Binds and keeps the RTP/RTCP sockets of every allocated port pair.

    Kept as bare descriptors (a socket object costs three times an int, per socket
    of every call): they are only ever handed to workers, drained and closed here.
    ``on_release`` hears of each pair given back (relayd/plane/sweep.py: its conntrack
    entries go too).
    """

    def __init__(self, on_release: Callable[[str, int], None] | None = None) -> None:
        self.sockets: dict[str, int] = {}  # socket key -> file descriptor
        self.on_release = on_release

    def bind(self, address: str, port: int) -> bool:
        """Bind ``port`` (RTP) and ``port + 1`` (RTCP) on ``address`` and keep both descriptors.

        False (logged, nothing kept) if either cannot be bound: the allocator leaves that pair
        reserved and tries another, so "Ran out of ports" stays exact.
        """
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
        held = False
        for p in (port, port + 1):
            fd = self.sockets.pop(socket_key(address, p), None)
            if fd is not None:
                os.close(fd)
                held = True
        if held and self.on_release is not None:
            self.on_release(address, port)

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
