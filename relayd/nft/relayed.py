"""The table's ``relayed4``/``relayed6`` named counters, read over raw netlink.

The counting rule adds every packet of every forward to one named counter per family
(:mod:`relayd.nft.ruleset`), so the kernel's whole forwarded traffic is two objects; relayd
reads them once a second for ``max-bandwidth`` (relayd/ops/loadmeter.py). Through
libnftables a ``list counter`` fills the library's cache with the whole table first (80 ms
with 20,000 elements, measured): here one ``NFT_MSG_GETOBJ`` per counter asks the kernel for
that object alone, whatever the table holds.

Wire format (``linux/netfilter/nf_tables.h``): the request carries the table
(``NFTA_OBJ_TABLE``), the name (``NFTA_OBJ_NAME``) and the type (``NFTA_OBJ_TYPE``,
``NFT_OBJECT_COUNTER``, a 32-bit big-endian number); the reply (``NFT_MSG_NEWOBJ``) nests
the counter's ``NFTA_COUNTER_BYTES`` and ``NFTA_COUNTER_PACKETS`` (64-bit big-endian) in
``NFTA_OBJ_DATA``. The byte count is the IP packets' length, as nftables counts at
prerouting.
"""

from __future__ import annotations

import errno
import os
import struct
from typing import NamedTuple

from relayd.nft.libnft import NftError
from relayd.nft.netlink import (
    NLM_F_REQUEST,
    NLMSG_ERROR,
    TableReader,
    attr,
    attrs,
    error_of,
    message,
    messages,
    nfgenmsg,
)

__all__ = ["ObjectCount", "RelayedCounters", "get_object_request", "parse_object"]

# linux/netfilter/nf_tables.h
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_NEWOBJ, NFT_MSG_GETOBJ = 18, 19
NFTA_OBJ_TABLE, NFTA_OBJ_NAME, NFTA_OBJ_TYPE, NFTA_OBJ_DATA = 1, 2, 3, 4
NFT_OBJECT_COUNTER = 1
NFTA_COUNTER_BYTES, NFTA_COUNTER_PACKETS = 1, 2
NFPROTO_INET = 1

_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")
_TIMEOUT = 2.0


class ObjectCount(NamedTuple):
    """One counter object: packets and bytes (IP length) since it was made."""

    packets: int
    bytes: int


def get_object_request(seq: int, table: str, name: str) -> bytes:
    """One ``GETOBJ`` for the counter ``name`` of ``table`` (family inet)."""
    body = (
        nfgenmsg(NFPROTO_INET)
        + attr(NFTA_OBJ_TABLE, table.encode() + b"\0")
        + attr(NFTA_OBJ_NAME, name.encode() + b"\0")
        + attr(NFTA_OBJ_TYPE, _U32.pack(NFT_OBJECT_COUNTER))
    )
    return message(NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETOBJ, NLM_F_REQUEST, seq, body)


def parse_object(data: bytes, start: int, end: int) -> ObjectCount | None:
    """The counter in one ``NEWOBJ`` body (after its ``nfgenmsg``); None if it has none."""
    for kind, a, b in attrs(data, start, end):
        if kind != NFTA_OBJ_DATA:
            continue
        packets = size = -1
        for inner, c, d in attrs(data, a, b):
            if inner == NFTA_COUNTER_PACKETS and d - c == 8:
                (packets,) = _U64.unpack_from(data, c)
            elif inner == NFTA_COUNTER_BYTES and d - c == 8:
                (size,) = _U64.unpack_from(data, c)
        if packets >= 0 and size >= 0:
            return ObjectCount(packets, size)
    return None


class RelayedCounters(TableReader):
    """A netlink socket reading one table's counter objects, kept open between reads."""

    def __init__(self, table: str) -> None:
        super().__init__(table, _TIMEOUT)

    def get(self, name: str) -> ObjectCount | None:
        """Counter object ``name``; None if the table has none of that name."""
        seq = self._next_seq()
        try:
            sock = self._socket()
            sock.sendall(get_object_request(seq, self.table, name))
            while True:
                data = sock.recv(1 << 16)
                for kind, got, start, end in messages(data):
                    if got != seq:
                        continue
                    if kind == NLMSG_ERROR:
                        error = error_of(data, start)
                        if error == errno.ENOENT:
                            return None
                        if error:
                            raise NftError(
                                f"reading counter {self.table} {name}: {os.strerror(error)}"
                            )
                        continue
                    if kind == NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWOBJ:
                        return parse_object(data, start + 4, end)
        except OSError as exc:
            self.close()
            raise NftError(f"nfnetlink: {exc}") from exc
