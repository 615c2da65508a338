"""The relay's media sockets: bound by relayd, each held by exactly one process.

relayd binds every media socket itself, so a port clash is found while the offer
is handled and "Ran out of ports" is exact. Each socket then has one holder at a
time, so a port costs one descriptor across relayd's processes:

* relayd, from its bind until a worker takes the socket (a call not yet sent to
  its worker, a worker restarting or not connected yet);
* the worker that owns the port's slice, once the forward that carries the
  descriptor has been sent (relayd/plane/media.py): relayd then closes its own
  copy, the descriptor in flight in SCM_RIGHTS keeping the socket open;
* when the port is released, the holder closes it: relayd at once, a worker when
  it reads ``ipc.Close``. Until it has, the port is *closing*: a bind that fails on
  it is our own socket, not another program's, and the allocator tries the port
  again later instead of keeping it out of use (relayd/calls/ports.py).

When a worker dies its sockets close with it; :meth:`SocketBinder.lost` binds the
same ports again at once (the calls' SDP stays true) and holds them until the
replacement takes them. A port whose bind still fails (the old process has not
exited yet) waits in ``unbound`` for :meth:`SocketBinder.rebind_pending`.
"""

from __future__ import annotations

import errno
import os
import resource
import select
import socket
from collections.abc import Callable, Iterable, Sequence

from relayd.calls.ports import DescriptorsExhausted
from relayd.ipc import parse_key, socket_key
from relayd.log import get_logger

__all__ = ["WORKER_RESERVE", "SocketBinder", "worker_budget"]

log = get_logger("relayd.plane.sockets")

# room for ~2,700 RTP packets, so a worker kept off its core for a few milliseconds
# loses nothing (bench/media.py: one stream's max lossless rate x2.5)
_MEDIA_RCVBUF = 1 << 20
_SO_TIMESTAMPNS = 35  # Linux (SO_TIMESTAMPNS_OLD): struct timespec of the arrival, in a cmsg
_SO_RCVBUFFORCE = 33  # Linux: like SO_RCVBUF but above net.core.rmem_max (CAP_NET_ADMIN)
# a socket that cannot be made for want of descriptors or memory, whatever its port
_NO_ROOM = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))
WORKER_RESERVE = 64
"""Descriptors a worker keeps for what it opens besides media sockets (its link, epoll,
the kernel's copies, logs; plus a 64th of its limit for recordings and playback files)."""


def worker_budget(limit: int | None = None) -> int | None:
    """The most media sockets one worker may hold: its descriptor limit (``RLIMIT_NOFILE``,
    relayd's own by default: spawned workers inherit it, and the worker units set the same
    ``LimitNOFILE`` as relayd's), less :data:`WORKER_RESERVE` and a 64th of the limit. None
    where the limit is infinite. relayd, which binds each socket and holds a dead worker's
    until its replacement takes them, has the same limit and needs the same room."""
    if limit is None:
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if limit == resource.RLIM_INFINITY:
        return None
    return max(limit - WORKER_RESERVE - limit // 64, 2)


class SocketBinder:
    """Binds the RTP/RTCP sockets of every allocated port pair and knows who holds each.

    ``sockets``: the ones relayd holds, as bare descriptors (a socket object costs three
    times an int, per socket of every call). ``handed``: the worker holding each of the
    others. ``closing``: released sockets a worker has been asked to close (and may not
    have yet). ``unbound``: sockets of a dead worker whose port could not be bound again
    yet. ``on_close(worker, keys)`` asks a worker to close sockets (the media plane sends
    ``ipc.Close``). ``on_release`` hears of each pair given back (relayd/plane/sweep.py:
    its conntrack entries go too).
    """

    def __init__(self, on_release: Callable[[str, int], None] | None = None) -> None:
        self.sockets: dict[str, int] = {}  # socket key -> file descriptor held here
        self.handed: dict[str, int] = {}  # socket key -> the worker that holds it
        self.closing: dict[str, int] = {}  # socket key -> the worker asked to close it
        self.unbound: dict[str, int] = {}  # socket key -> the worker that held it, died
        self.on_close: Callable[[int, tuple[str, ...]], None] | None = None
        self.on_release = on_release

    def bind(self, address: str, port: int) -> bool:
        """Bind ``port`` (RTP) and ``port + 1`` (RTCP) on ``address`` and keep both descriptors.

        False (logged, nothing kept) if either cannot be bound: the allocator tries another
        pair, so "Ran out of ports" stays exact; :meth:`busy` says whether the clash was one
        of our own sockets still closing. Raises DescriptorsExhausted (logged as an error,
        nothing kept) when the process has no descriptor left: no other pair would bind.
        """
        keys = [socket_key(address, p) for p in (port, port + 1)]
        opened: list[int] = []
        try:
            for p in (port, port + 1):
                opened.append(_open(address, p))
        except OSError as exc:
            for fd in opened:
                os.close(fd)
            if exc.errno in _NO_ROOM:
                log.error("ports.no_descriptors", address=address, port=port, error=str(exc))
                raise DescriptorsExhausted(str(exc)) from None
            log.warning("ports.bind_failed", address=address, port=port, error=str(exc))
            return False
        for key, fd in zip(keys, opened, strict=True):
            self.closing.pop(key, None)
            self.sockets[key] = fd
        return True

    def busy(self, address: str, port: int) -> bool:
        """Whether a socket of ours on the pair is still being closed by a worker: a bind that
        failed there is no other program's, the pair frees itself once the worker has read
        its ``Close``."""
        return any(socket_key(address, p) in self.closing for p in (port, port + 1))

    def release(self, address: str, port: int) -> None:
        """The pair is given back: closed here, or its worker is asked to close it."""
        asked: dict[int, list[str]] = {}
        held = False  # the pair was ours (held here, by a worker, or waiting to be bound)
        for p in (port, port + 1):
            key = socket_key(address, p)
            held = self.unbound.pop(key, None) is not None or held
            fd = self.sockets.pop(key, None)
            if fd is not None:
                os.close(fd)
                held = True
            worker = self.handed.pop(key, None)
            if worker is not None:
                self.closing[key] = worker
                asked.setdefault(worker, []).append(key)
                held = True
        if self.on_close is not None:
            for worker, keys in asked.items():
                self.on_close(worker, tuple(keys))
        if held and self.on_release is not None:
            self.on_release(address, port)

    def holder(self, key: str) -> int | None:
        """The worker that holds socket ``key``; None when relayd does (or nobody)."""
        return self.handed.get(key)

    def handed_over(self, keys: Iterable[str], worker: int) -> None:
        """The descriptors of ``keys`` went to ``worker`` (sent, in flight or read): relayd's
        copies close, the worker's is the only one."""
        for key in keys:
            fd = self.sockets.pop(key, None)
            if fd is not None:
                os.close(fd)
                self.handed[key] = worker

    def lost(self, worker: int) -> list[str]:
        """``worker`` died and its sockets closed with it: bind their ports again here, each
        socket as it was (same address and port). Returns the keys bound again; those that
        could not be (yet) wait in ``unbound``."""
        for key in [k for k, w in self.closing.items() if w == worker]:
            del self.closing[key]  # closed by its death: the port is free
        keys = [k for k, w in self.handed.items() if w == worker]
        for key in keys:
            del self.handed[key]
            self.unbound[key] = worker
        return self.rebind_pending(keys)

    def rebind_pending(self, keys: Iterable[str] | None = None) -> list[str]:
        """Bind the ``unbound`` sockets again (all, or those of ``keys``); returns those bound."""
        bound = []
        for key in list(self.unbound if keys is None else keys):
            parsed = parse_key(key)
            if parsed is None or key not in self.unbound:
                continue
            try:
                fd = _open(*parsed)
            except OSError as exc:
                if exc.errno in _NO_ROOM:
                    break  # no other would bind either: they wait for the next try
                continue
            del self.unbound[key]
            self.sockets[key] = fd
            bound.append(key)
        return bound

    def fileno(self, key: str) -> int:
        return self.sockets[key]

    def discard_queued(self, keys: Sequence[str], limit: int = 4096) -> int:
        """Drop the datagrams waiting on sockets relayd holds (no worker reads them yet);
        returns how many.

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
        for held in (self.sockets, self.handed):
            value = held.pop(key, None)
            if value is not None:
                held[key] = value


def _open(address: str, port: int) -> int:
    """A bound UDP socket's descriptor, non-blocking from the start (for every copy, the
    workers' included), with a large receive buffer.

    Made as the C socket type (``socket.SocketType``), not ``socket.socket``, its Python
    subclass: only the descriptor is kept, and the subclass's ``__init__`` and ``close``
    cost a tenth of a cycle's binds for nothing (bench/ng_inprocess.py)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.SocketType(family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
    try:
        _grow_receive_buffer(sock)
        # every datagram stamped with its arrival: a worker's Discard drops only what came
        # before relayd's reply (ipc.Discard.before); read with recvfrom, nobody pays for it
        sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
        sock.bind((address, port))
    except OSError:
        sock.close()
        raise
    return sock.detach()


def _grow_receive_buffer(sock: socket.SocketType) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, _MEDIA_RCVBUF)
    except OSError:  # not privileged: as far as net.core.rmem_max allows
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _MEDIA_RCVBUF)
