"""Netfilter's netlink, the little of it relayd speaks by hand: messages and attributes.

:mod:`relayd.nft.conntrack` (ctnetlink) and :mod:`relayd.nft.elements` (nf_tables set
elements) build their requests and read the kernel's answers with these; each knows
its own attributes. Layouts from ``linux/netlink.h`` and ``linux/netfilter/nfnetlink.h``:
a message is a 16-byte header (length, type, flags, sequence, port) and a body; an
attribute is a 4-byte header (length, type) and a payload padded to 4 bytes.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

__all__ = [
    "HEADER",
    "NETLINK_NETFILTER",
    "NLA_F_NESTED",
    "NLA_TYPE_MASK",
    "NLMSG_DONE",
    "NLMSG_ERROR",
    "NLM_F_ACK",
    "NLM_F_DUMP",
    "NLM_F_REQUEST",
    "SO_RCVBUFFORCE",
    "TableReader",
    "attr",
    "attrs",
    "error_of",
    "message",
    "messages",
    "netfilter_socket",
    "nfgenmsg",
]

NETLINK_NETFILTER = 12
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x4, 0x300
NLA_F_NESTED = 0x8000
NLA_TYPE_MASK = 0x3FFF
HEADER = struct.Struct("=IHHII")  # nlmsghdr
_ATTR = struct.Struct("=HH")
_NFGENMSG = struct.Struct("!BBH")  # family, version (NFNETLINK_V0), res_id in network order
SO_RCVBUFFORCE = 33
"""linux/socket.h: SO_RCVBUF beyond ``net.core.rmem_max`` (CAP_NET_ADMIN); not in Python 3.11."""


def attr(kind: int, payload: bytes) -> bytes:
    """One attribute, padded."""
    length = 4 + len(payload)
    return _ATTR.pack(length, kind) + payload + b"\0" * (-length % 4)


def attrs(data: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    """(type without its flags, payload start, payload end) of each attribute in
    ``data[start:end]``; a malformed one ends the list."""
    found = []
    unpack = _ATTR.unpack_from
    while start + 4 <= end:
        length, kind = unpack(data, start)
        if length < 4 or start + length > end:
            break
        found.append((kind & NLA_TYPE_MASK, start + 4, start + length))
        start += (length + 3) & ~3
    return found


def message(kind: int, flags: int, seq: int, body: bytes) -> bytes:
    """One message: the header, then ``body`` (an ``nfgenmsg`` and attributes)."""
    return HEADER.pack(HEADER.size + len(body), kind, flags, seq, 0) + body


def messages(data: bytes) -> Iterator[tuple[int, int, int, int]]:
    """(type, sequence number, body start, body end) of each message in a receive buffer."""
    offset = 0
    while offset + HEADER.size <= len(data):
        length, kind, _flags, seq, _pid = HEADER.unpack_from(data, offset)
        if length < HEADER.size:
            return
        yield kind, seq, offset + HEADER.size, offset + length
        offset += (length + 3) & ~3


def nfgenmsg(family: int, res_id: int = 0) -> bytes:
    """The 4 bytes that open every nfnetlink body: the protocol family and ``res_id`` (a
    subsystem's resource: nfnetlink_log's group), version 0."""
    return _NFGENMSG.pack(family, 0, res_id)


def error_of(data: bytes, start: int) -> int:
    """The errno an ``NLMSG_ERROR`` body carries (0: an acknowledgement)."""
    (error,) = struct.unpack_from("=i", data, start)
    return -error


def netfilter_socket(timeout: float, rcvbuf: int = 0, *, force: bool = False) -> socket.socket:
    """A netfilter netlink socket in this thread's network namespace (OSError if not).

    ``timeout`` 0: non-blocking. ``force``: the receive buffer may exceed
    ``net.core.rmem_max`` (``SO_RCVBUFFORCE``, which needs CAP_NET_ADMIN; without it, as
    large as ``rmem_max`` allows): a socket the kernel writes to unasked (nfnetlink_log's
    copies) must hold a burst while its reader is busy."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    try:
        if rcvbuf and force:
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
            except PermissionError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        elif rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.bind((0, 0))
        sock.settimeout(timeout)
    except OSError:
        sock.close()
        raise
    return sock


class TableReader:
    """A netfilter netlink socket asking about one nftables table, opened on first use and
    kept open between reads (closed after an error: replies left unread would linger), and
    the sequence numbers of its requests."""

    def __init__(self, table: str, timeout: float, rcvbuf: int = 0) -> None:
        self.table = table
        self._timeout = timeout
        self._rcvbuf = rcvbuf
        self._sock: socket.socket | None = None
        self._seq = 0

    def _socket(self) -> socket.socket:
        if self._sock is None:
            self._sock = netfilter_socket(self._timeout, self._rcvbuf)
        return self._sock

    def _next_seq(self, count: int = 1) -> int:
        """The first of ``count`` fresh sequence numbers (1 to 2**31, wrapping)."""
        first = self._seq % (1 << 31) + 1
        self._seq = (self._seq + count) % (1 << 31)
        return first

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
