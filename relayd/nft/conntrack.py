"""Conntrack entries of relay sockets, over ctnetlink.

A conntrack entry outlives the nft elements that created it, and an entry made
while a stream was forwarded in userspace keeps matching after the elements are
added: either way packets keep their old path until the entry goes. So after
elements are added or deleted, the entries that carry a forward's packets are
deleted; in that order, elements first, the next packet makes a new entry
through the new path and none is lost (docs/kernel.md, "Background").

:meth:`Ctnetlink.delete_flows` (what :class:`relayd.nft.forward.KernelForwarder` uses)
deletes, for each UDP 4-tuple, the one entry holding it as its original *or*
reply tuple: ``IPCTNL_MSG_CT_DELETE`` looks the tuple up in the conntrack hash,
where both directions of every entry are hashed. So the key ``S → R`` finds the
NAT entry whichever side spoke first, the userspace entry of a peer that spoke
first (orig ``S → R``) and the one of a relay socket that sent first (orig
``R → S``). Cost: one hash lookup per tuple; the requests of a batch go out in
a few ``send`` calls. No table dumps: each one walks every bucket of the
conntrack hash, far too slow for the offload path (the tests' dump helpers are
in ``tests/support/conntrack.py``).

:meth:`Ctnetlink.sweep` is the one walk relayd makes, for ports given back: the
entries that *strangers'* packets made towards a relay socket (a spoofer's, late
packets after the call) name no tuple relayd knows, so they can only be found
by walking the table. One filtered dump per address family (``CTA_FILTER`` on
the protocol, ``CTA_STATUS``/``CTA_STATUS_MASK``, Linux 5.15+) returns only the
UDP entries that were never answered and are not translated: a stranger's
(nobody answers it), never the flows of live calls (answered, or translated by
relayd's NAT), so what comes back stays small however many calls are up. Those
with a given socket as original destination or source are then deleted by tuple.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Collection, Iterable, Iterator
from ipaddress import ip_address
from pathlib import Path

from relayd.nft.libnft import NftError
from relayd.nft.netlink import (
    NLA_F_NESTED,
    NLM_F_ACK,
    NLM_F_DUMP,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    attr,
    attrs,
    error_of,
    message,
    messages,
    netfilter_socket,
)
from relayd.nft.ruleset import Endpoint

__all__ = [
    "AF",
    "ConntrackError",
    "Ctnetlink",
    "delete_flows",
    "delete_request",
    "dump_entries",
    "sweep_request",
    "tracked",
]

# linux/netfilter/nfnetlink_conntrack.h
NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_NEW = 0
IPCTNL_MSG_CT_GET = 1
IPCTNL_MSG_CT_DELETE = 2
CTA_TUPLE_ORIG = 1
CTA_STATUS = 3
CTA_FILTER = 25
CTA_STATUS_MASK = 26
CTA_FILTER_ORIG_FLAGS = 1
CTA_FILTER_FLAG_CTA_PROTO_NUM = 1 << 3
IPS_SEEN_REPLY = 1 << 1
IPS_SRC_NAT = 1 << 4
IPS_DST_NAT = 1 << 5
CTA_TUPLE_IP = 1
CTA_TUPLE_PROTO = 2
CTA_IP_V4_SRC, CTA_IP_V4_DST, CTA_IP_V6_SRC, CTA_IP_V6_DST = 1, 2, 3, 4
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3

_BATCH = 256
"""Requests per send: their acknowledgements must fit the socket's receive buffer."""
_TIMEOUT = 5.0
"""Seconds to wait for the kernel's acknowledgements."""
AF = {4: socket.AF_INET, 6: socket.AF_INET6}  # an Endpoint's IP version -> address family
_SWEPT_STATUS = IPS_SEEN_REPLY | IPS_SRC_NAT | IPS_DST_NAT
"""Status bits a swept entry has none of: never answered, not translated."""
_COUNT = Path("/proc/sys/net/netfilter/nf_conntrack_count")


class ConntrackError(NftError):
    """ctnetlink is unusable or refused a request."""


def delete_request(seq: int, src: Endpoint, dst: Endpoint) -> bytes:
    """One IPCTNL_MSG_CT_DELETE for the UDP tuple src → dst, asking for an acknowledgement."""
    if src.version != dst.version:
        raise ValueError(f"mixed address families: {src} -> {dst}")
    v4 = src.version == 4
    ip = attr(CTA_IP_V4_SRC if v4 else CTA_IP_V6_SRC, ip_address(src.address).packed) + attr(
        CTA_IP_V4_DST if v4 else CTA_IP_V6_DST, ip_address(dst.address).packed
    )
    proto = (
        attr(CTA_PROTO_NUM, bytes([socket.IPPROTO_UDP]))
        + attr(CTA_PROTO_SRC_PORT, struct.pack("!H", src.port))
        + attr(CTA_PROTO_DST_PORT, struct.pack("!H", dst.port))
    )
    body = struct.pack("=BBH", AF[src.version], 0, 0) + attr(
        CTA_TUPLE_ORIG, attr(CTA_TUPLE_IP, ip) + attr(CTA_TUPLE_PROTO, proto)
    )
    kind = NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_DELETE
    return message(kind, NLM_F_REQUEST | NLM_F_ACK, seq, body)


def sweep_request(seq: int, version: int) -> bytes:
    """One IPCTNL_MSG_CT_GET dump of the UDP entries (``version``: 4 or 6) that were never
    answered (no ``IPS_SEEN_REPLY``) and are not translated (no ``IPS_SRC_NAT``/``DST_NAT``),
    filtered in the kernel."""
    proto = attr(CTA_TUPLE_PROTO, attr(CTA_PROTO_NUM, bytes([socket.IPPROTO_UDP])))
    body = (
        struct.pack("=BBH", AF[version], 0, 0)
        + attr(CTA_TUPLE_ORIG, proto)
        # the filter's flags are in host byte order, the status and its mask big-endian
        + attr(
            CTA_FILTER | NLA_F_NESTED,
            attr(CTA_FILTER_ORIG_FLAGS, struct.pack("=I", CTA_FILTER_FLAG_CTA_PROTO_NUM)),
        )
        + attr(CTA_STATUS, struct.pack("!I", 0))
        + attr(CTA_STATUS_MASK, struct.pack("!I", _SWEPT_STATUS))
    )
    kind = NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_GET
    return message(kind, NLM_F_REQUEST | NLM_F_DUMP, seq, body)


Flow = tuple[bytes, int, bytes, int]
"""An entry's original tuple as the kernel wrote it: source address (packed), source port,
destination address (packed), destination port."""


def _orig_tuple(data: bytes, start: int, end: int) -> Flow | None:
    """The UDP original tuple of one conntrack entry (its attributes in ``data[start:end]``)."""
    for kind, begin, stop in attrs(data, start, end):
        if kind != CTA_TUPLE_ORIG:
            continue
        src = dst = b""
        sport = dport = proto = 0
        for part, p_begin, p_end in attrs(data, begin, stop):
            if part == CTA_TUPLE_IP:
                for ip, a_begin, a_end in attrs(data, p_begin, p_end):
                    if ip in (CTA_IP_V4_SRC, CTA_IP_V6_SRC):
                        src = data[a_begin:a_end]
                    elif ip in (CTA_IP_V4_DST, CTA_IP_V6_DST):
                        dst = data[a_begin:a_end]
            elif part == CTA_TUPLE_PROTO:
                for field, f_begin, f_end in attrs(data, p_begin, p_end):
                    if field == CTA_PROTO_NUM and f_end > f_begin:
                        proto = data[f_begin]
                    elif field == CTA_PROTO_SRC_PORT and f_end - f_begin >= 2:
                        (sport,) = struct.unpack_from("!H", data, f_begin)
                    elif field == CTA_PROTO_DST_PORT and f_end - f_begin >= 2:
                        (dport,) = struct.unpack_from("!H", data, f_begin)
        if proto != socket.IPPROTO_UDP or not src or not dst:
            return None
        return src, sport, dst, dport
    return None


def dump_entries(data: bytes, seq: int) -> tuple[list[Flow], bool]:
    """The UDP entries of one receive buffer of a dump answering request ``seq``, and whether
    the dump is done; ConntrackError if the kernel refused it. Other messages are skipped."""
    flows: list[Flow] = []
    entry = NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_NEW
    for kind, got, start, end in messages(data):
        if got != seq:
            continue
        if kind == NLMSG_DONE:
            return flows, True
        if kind == NLMSG_ERROR:
            error = error_of(data, start)
            if error:
                raise ConntrackError(f"conntrack dump: {os.strerror(error)}")
            return flows, True
        if kind == entry:
            flow = _orig_tuple(data, start + 4, end)  # after the nfgenmsg
            if flow is not None:
                flows.append(flow)
    return flows, False


def tracked() -> int:
    """Conntrack entries in this network namespace (0 where conntrack is not loaded)."""
    try:
        return int(_COUNT.read_text())
    except (OSError, ValueError):
        return 0


def _acks(data: bytes) -> Iterator[tuple[int, int]]:
    """(sequence number, errno) of each NLMSG_ERROR in a receive buffer."""
    for kind, seq, start, _ in messages(data):
        if kind == NLMSG_ERROR:
            yield seq, error_of(data, start)


class Ctnetlink:
    """A ctnetlink socket for :meth:`delete_flows`, kept open between calls.

    Closing a netlink socket can wait for an RCU grace period (milliseconds
    under load), more than a whole batch of deletions costs. The socket belongs
    to the network namespace of the thread that first uses it.
    """

    def __init__(self) -> None:
        self._sock: socket.socket | None = None
        self._seq = 0

    def open(self) -> None:
        """Open the socket now rather than at the first request (a long-lived user opens it
        at start-up, so its descriptors do not change later); ConntrackError if it cannot."""
        self._socket()

    def _socket(self) -> socket.socket:
        if self._sock is None:
            try:
                sock = netfilter_socket(_TIMEOUT)
            except OSError as exc:
                raise ConntrackError(f"cannot open ctnetlink: {exc}") from exc
            self._sock = sock
        return self._sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def probe(self) -> None:
        """Prove ctnetlink answers: delete a flow that does not exist."""
        nowhere = Endpoint("127.0.0.1", 9)  # discard: nothing sends from it to itself
        self.delete_flows([(nowhere, nowhere)])

    def delete_flows(self, tuples: Iterable[tuple[Endpoint, Endpoint]]) -> int:
        """Delete the entry holding each UDP tuple (src, dst) in either direction.

        Returns how many entries were deleted; a tuple without an entry is not an error.
        """
        wanted = list(dict.fromkeys(tuples))
        deleted = 0
        try:
            for start in range(0, len(wanted), _BATCH):
                deleted += self._delete(wanted[start : start + _BATCH])
        except OSError as exc:
            self.close()
            raise ConntrackError(f"ctnetlink: {exc}") from exc
        except ConntrackError:
            self.close()  # unread acknowledgements would linger
            raise
        return deleted

    def sweep(self, sockets: Collection[Endpoint]) -> int:
        """Delete every UDP entry that was never answered and is not translated, with one of
        ``sockets`` as its original destination or source; returns how many were deleted.

        One kernel-filtered dump per address family among ``sockets`` (each walks the whole
        table, so callers batch), then a delete by tuple per match.
        """
        wanted: dict[int, set[tuple[bytes, int]]] = {}
        packed: dict[str, bytes] = {}  # a batch's sockets share a few local addresses
        for ep in sockets:
            raw = packed.get(ep.address)
            if raw is None:
                raw = packed[ep.address] = ip_address(ep.address).packed
            wanted.setdefault(ep.version, set()).add((raw, ep.port))
        found: set[tuple[Endpoint, Endpoint]] = set()
        try:
            for version, keys in wanted.items():
                for src, sport, dst, dport in self._unanswered(version):
                    if ((dst, dport) in keys or (src, sport) in keys) and sport and dport:
                        found.add(
                            (
                                Endpoint(str(ip_address(src)), sport),
                                Endpoint(str(ip_address(dst)), dport),
                            )
                        )
        except OSError as exc:
            self.close()
            raise ConntrackError(f"ctnetlink: {exc}") from exc
        except ConntrackError:
            self.close()  # the rest of the dump would linger
            raise
        return self.delete_flows(found) if found else 0

    def _unanswered(self, version: int) -> list[Flow]:
        sock = self._socket()
        self._seq = self._seq % (1 << 31) + 1
        seq = self._seq
        sock.sendall(sweep_request(seq, version))
        flows: list[Flow] = []
        done = False
        while not done:
            more, done = dump_entries(sock.recv(1 << 16), seq)
            flows += more
        return flows

    def _delete(self, chunk: list[tuple[Endpoint, Endpoint]]) -> int:
        sock = self._socket()
        first = self._seq + 1
        self._seq = (self._seq + len(chunk)) % (1 << 31)
        requests = (delete_request(first + i, src, dst) for i, (src, dst) in enumerate(chunk))
        sock.sendall(b"".join(requests))
        pending = {first + i: pair for i, pair in enumerate(chunk)}
        deleted = 0
        while pending:
            for seq, err in _acks(sock.recv(1 << 16)):
                pair = pending.pop(seq, None)
                if pair is None:
                    continue
                if err == 0:
                    deleted += 1
                elif err != errno.ENOENT:
                    raise ConntrackError(
                        f"conntrack delete {pair[0]} -> {pair[1]}: {os.strerror(err)}"
                    )
        return deleted


def delete_flows(tuples: Iterable[tuple[Endpoint, Endpoint]]) -> int:
    """:meth:`Ctnetlink.delete_flows` on a socket of its own."""
    ct = Ctnetlink()
    try:
        return ct.delete_flows(tuples)
    finally:
        ct.close()
