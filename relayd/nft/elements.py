"""Counters and expiry of nf_tables set elements, read over raw netlink.

The kernel path reads its counter elements (``count4``/``count6``) at the moments
that need them: a call's timeout coming due, ``query``, ``delete``, ``/metrics``.
Through libnftables each read would list the whole set as JSON (about 12 µs per
element, and the whole set every time); here a read asks the kernel for exactly
the elements wanted, one ``NFT_MSG_GETSETELEM`` per key (a hash lookup in the
kernel), or dumps a whole set in binary, and decodes only what it needs.

Wire format (``linux/netfilter/nf_tables.h``): each request is an nfnetlink message
(``nfgenmsg`` with family ``NFPROTO_INET``) carrying the table and set names and a
list of elements, each with its key as ``NFTA_DATA_VALUE``. A concatenated key
puts every field in its own 32-bit registers: an IPv4 address is 4 bytes, a port
2 bytes and 2 of padding, an IPv6 address 16 bytes. The reply's element carries
its counter expression (packets, bytes) and, in a set with timeouts, the time
left before it expires in milliseconds: a packet refreshes it (``update`` in the
counting rule), so ``timeout - expiration`` is how long ago the last one came.

The socket belongs to the network namespace of the thread that first uses it.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Iterable, Iterator
from functools import lru_cache
from ipaddress import ip_address
from typing import NamedTuple

from relayd.nft.libnft import NftError
from relayd.nft.netlink import (
    NLA_F_NESTED,
    NLM_F_DUMP,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    TableReader,
    attr,
    attrs,
    error_of,
    message,
    messages,
)
from relayd.nft.ruleset import Endpoint, ForwardKey

__all__ = [
    "ElementCount",
    "SetElements",
    "decode_key",
    "encode_key",
    "get_request",
    "parse_elements",
    "wire_key",
]

# linux/netfilter/nf_tables.h
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_GETSET, NFT_MSG_NEWSETELEM, NFT_MSG_GETSETELEM = 10, 12, 13
NFTA_SET_TABLE, NFTA_SET_NAME = 1, 2
NFPROTO_INET = 1
NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_ELEM_LIST_SET, NFTA_SET_ELEM_LIST_ELEMENTS = 1, 2, 3
NFTA_LIST_ELEM = 1
NFTA_SET_ELEM_KEY, NFTA_SET_ELEM_EXPIRATION, NFTA_SET_ELEM_EXPR = 1, 5, 7
NFTA_SET_ELEM_EXPRESSIONS = 11
NFTA_DATA_VALUE = 1
NFTA_EXPR_NAME, NFTA_EXPR_DATA = 1, 2
NFTA_COUNTER_BYTES, NFTA_COUNTER_PACKETS = 1, 2

_U64 = struct.Struct("!Q")
_PORT = struct.Struct("!HH")  # a port and its register's padding
_BATCH = 256
"""Requests per send: their replies must fit the socket's receive buffer."""
_RCVBUF = 1 << 21
"""The socket's receive buffer: the replies to a batch of requests wait there."""
_RECV = 1 << 16
"""Bytes asked of one ``recv``: one netlink datagram, which the kernel keeps to 32 KiB
(a dump's buffer) or one reply. Not the receive buffer's 2 MiB: a buffer that large,
allocated at every read, moves glibc's mmap threshold up to 2 MiB for good, and every
later allocation below that (the workers' 1 MiB reports) comes from the heap, which then
keeps their room (0.25 KB per call more RSS at 1,000 kernelized calls, bench/memory.py)."""
_TIMEOUT = 5.0


class ElementCount(NamedTuple):
    """One counter element: packets and bytes since it was added, and the milliseconds
    left before it expires (None in a set without timeouts)."""

    packets: int
    bytes: int
    expires_ms: int | None = None


@lru_cache(maxsize=4096)
def _packed(address: str) -> bytes:
    # few distinct addresses (relay addresses, peers behind the same NAT): parse each once
    return ip_address(address).packed


def encode_key(key: ForwardKey) -> bytes:
    """The key ``saddr . sport . daddr . dport`` as nf_tables registers hold it."""
    source, relay = key.source, key.relay
    return wire_key(source.address, source.port, relay.address, relay.port)


def wire_key(saddr: str, sport: int, daddr: str, dport: int) -> bytes:
    """:func:`encode_key` from the four values, with no :class:`ForwardKey` made for them."""
    return _packed(saddr) + _PORT.pack(sport, 0) + _packed(daddr) + _PORT.pack(dport, 0)


def decode_key(data: bytes) -> ForwardKey:
    """The inverse of :func:`encode_key` (16 bytes for IPv4, 40 for IPv6)."""
    size = {16: 4, 40: 16}.get(len(data))
    if size is None:
        raise ValueError(f"not a forward key: {len(data)} bytes")
    saddr = str(ip_address(data[:size]))
    (sport,) = struct.unpack_from("!H", data, size)
    daddr = str(ip_address(data[size + 4 : 2 * size + 4]))
    (dport,) = struct.unpack_from("!H", data, 2 * size + 4)
    return ForwardKey(Endpoint(saddr, sport), Endpoint(daddr, dport))


def _names(table: str, name: str) -> bytes:
    return attr(NFTA_SET_ELEM_LIST_TABLE, table.encode() + b"\0") + attr(
        NFTA_SET_ELEM_LIST_SET, name.encode() + b"\0"
    )


def _message(seq: int, flags: int, body: bytes, command: int = NFT_MSG_GETSETELEM) -> bytes:
    payload = struct.pack("=BBH", NFPROTO_INET, 0, 0) + body
    return message(NFNL_SUBSYS_NFTABLES << 8 | command, flags, seq, payload)


def get_request(seq: int, table: str, name: str, key: bytes) -> bytes:
    """One ``GETSETELEM`` for a single element (the kernel stops a list at the first
    missing key, so every key gets a request of its own). The reply is the element, or
    an error (``ENOENT`` for a key the set does not hold); no acknowledgement besides."""
    value = attr(NFTA_SET_ELEM_KEY | NLA_F_NESTED, attr(NFTA_DATA_VALUE, key))
    elem = attr(NFTA_LIST_ELEM | NLA_F_NESTED, value)
    body = _names(table, name) + attr(NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED, elem)
    return _message(seq, NLM_F_REQUEST, body)


def dump_request(seq: int, table: str, name: str) -> bytes:
    return _message(seq, NLM_F_REQUEST | NLM_F_DUMP, _names(table, name))


def _counter(data: bytes, start: int, end: int) -> tuple[int, int] | None:
    """Packets and bytes of one expression nest (``NFTA_EXPR_*``) if it is a counter."""
    packets = size = -1
    is_counter = False
    for kind, a, b in attrs(data, start, end):
        if kind == NFTA_EXPR_NAME:
            is_counter = data[a:b].rstrip(b"\0") == b"counter"
        elif kind == NFTA_EXPR_DATA:
            for inner, c, _ in attrs(data, a, b):
                if inner == NFTA_COUNTER_PACKETS:
                    (packets,) = _U64.unpack_from(data, c)
                elif inner == NFTA_COUNTER_BYTES:
                    (size,) = _U64.unpack_from(data, c)
    return (packets, size) if is_counter and packets >= 0 else None


def _element(data: bytes, start: int, end: int) -> tuple[bytes, ElementCount]:
    key = b""
    count: tuple[int, int] | None = None
    expires: int | None = None
    for kind, a, b in attrs(data, start, end):
        if kind == NFTA_SET_ELEM_KEY:
            for inner, c, d in attrs(data, a, b):
                if inner == NFTA_DATA_VALUE:
                    key = data[c:d]
        elif kind == NFTA_SET_ELEM_EXPIRATION:
            (expires,) = _U64.unpack_from(data, a)
        elif kind == NFTA_SET_ELEM_EXPR:
            count = _counter(data, a, b) or count
        elif kind == NFTA_SET_ELEM_EXPRESSIONS:
            for _, c, d in attrs(data, a, b):
                count = _counter(data, c, d) or count
    packets, size = count or (0, 0)
    return key, ElementCount(packets, max(size, 0), expires)


def parse_elements(data: bytes, start: int, end: int) -> list[tuple[bytes, ElementCount]]:
    """The elements of one ``NEWSETELEM`` message body (after its ``nfgenmsg``)."""
    found = []
    for kind, a, b in attrs(data, start, end):
        if kind == NFTA_SET_ELEM_LIST_ELEMENTS:
            for inner, c, d in attrs(data, a, b):
                if inner == NFTA_LIST_ELEM:
                    found.append(_element(data, c, d))
    return found


class SetElements(TableReader):
    """A netlink socket reading one table's counter sets, kept open between reads."""

    def __init__(self, table: str) -> None:
        super().__init__(table, _TIMEOUT, _RCVBUF)

    def _socket(self) -> socket.socket:
        try:
            return super()._socket()
        except OSError as exc:
            raise NftError(f"cannot open nfnetlink: {exc}") from exc

    def get(self, name: str, keys: Iterable[bytes]) -> dict[bytes, ElementCount]:
        """The elements of set ``name`` with these encoded keys; absent keys are left out."""
        wanted = list(dict.fromkeys(keys))
        found: dict[bytes, ElementCount] = {}
        try:
            for start in range(0, len(wanted), _BATCH):
                self._get(name, wanted[start : start + _BATCH], found)
        except OSError as exc:
            self.close()
            raise NftError(f"nfnetlink: {exc}") from exc
        except NftError:
            self.close()  # unread replies would linger
            raise
        return found

    def _get(self, name: str, chunk: list[bytes], found: dict[bytes, ElementCount]) -> None:
        sock = self._socket()
        first = self._next_seq(len(chunk))
        sock.sendall(
            b"".join(get_request(first + i, self.table, name, key) for i, key in enumerate(chunk))
        )
        pending = set(range(first, first + len(chunk)))
        while pending:
            data = sock.recv(_RECV)
            for kind, seq, start, end in messages(data):
                if seq not in pending:
                    continue
                pending.discard(seq)
                if kind == NLMSG_ERROR:
                    error = error_of(data, start)
                    if error and error != errno.ENOENT:
                        raise NftError(f"reading set {self.table} {name}: {os.strerror(error)}")
                else:
                    for key, count in parse_elements(data, start + 4, end):
                        found[key] = count

    def exists(self, name: str) -> bool:
        """Whether the table holds set ``name`` (one lookup: the table may have been deleted
        by someone else, which nothing else would tell)."""
        body = attr(NFTA_SET_TABLE, self.table.encode() + b"\0") + attr(
            NFTA_SET_NAME, name.encode() + b"\0"
        )
        seq = self._next_seq(1)
        try:
            sock = self._socket()
            sock.sendall(_message(seq, NLM_F_REQUEST, body, NFT_MSG_GETSET))
            while True:
                data = sock.recv(_RECV)
                for kind, got, start, _ in messages(data):
                    if got != seq:
                        continue
                    if kind != NLMSG_ERROR:
                        return True
                    error = error_of(data, start)
                    if error == errno.ENOENT:
                        return False
                    raise NftError(f"looking up set {self.table} {name}: {os.strerror(error)}")
        except OSError as exc:
            self.close()
            raise NftError(f"nfnetlink: {exc}") from exc

    def dump(self, name: str) -> dict[bytes, ElementCount]:
        """Every element of set ``name``; NftError if the set does not exist."""
        found: dict[bytes, ElementCount] = {}
        for chunk in self.dump_chunks(name):
            found.update(chunk)
        return found

    def dump_chunks(self, name: str) -> Iterator[list[tuple[bytes, ElementCount]]]:
        """Every element of set ``name``, one list per buffer the kernel fills (a few
        hundred elements): a caller on an event loop can let others run in between. The
        socket is this reader's alone until the dump ends; NftError if the set does not
        exist."""
        try:
            yield from self._dump(name)
        except OSError as exc:
            self.close()
            raise NftError(f"nfnetlink: {exc}") from exc
        except NftError:
            self.close()
            raise

    def _dump(self, name: str) -> Iterator[list[tuple[bytes, ElementCount]]]:
        sock = self._socket()
        seq = self._next_seq(1)
        sock.sendall(dump_request(seq, self.table, name))
        done = False
        try:
            while True:
                data = sock.recv(_RECV)
                chunk: list[tuple[bytes, ElementCount]] = []
                for kind, got, start, end in messages(data):
                    if got != seq:
                        continue
                    if kind == NLMSG_DONE:
                        done = True
                        break
                    if kind == NLMSG_ERROR:
                        error = error_of(data, start)
                        if error:
                            done = True
                            raise NftError(f"listing set {self.table} {name}: {os.strerror(error)}")
                        continue
                    chunk += parse_elements(data, start + 4, end)
                yield chunk
                if done:
                    return
        finally:
            if not done:
                self.close()  # abandoned halfway: the rest of the dump must not linger
