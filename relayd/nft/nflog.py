"""Copies of the packets the kernel forwards, over nfnetlink_log: how the kernel path records.

A recorded forward's packets meet a ``log group G`` statement in relayd's table
(:mod:`relayd.nft.ruleset`: the ``rec4``/``rec6`` verdict maps jump to the chain
``record_G``); the kernel forwards each packet as before and queues a copy for the
one netlink socket bound to group G in that network namespace. :class:`NflogReader`
is that socket: it binds the group, asks for whole packets, and decodes the kernel's
messages into :class:`Copy` values; :func:`parse_copies` is the decoding alone (pure).

Rules (``linux/netfilter/nfnetlink_log.h``, ``net/netfilter/nfnetlink_log.c``):

* One socket per group and network namespace: binding a group that another socket
  holds fails (``EPERM``). Closing the socket releases the group.
* The kernel batches: copies gather in a buffer of ``nlbufsiz`` bytes that goes out as
  one datagram when ``qthreshold`` copies are in it, when the next would not fit, or
  ``flush_ms`` after the first; one ``recv`` returns a whole batch.
* Nothing waits for relayd. A batch that does not fit the socket's receive buffer is
  dropped, and the packets are forwarded all the same. The kernel says so once (the
  next ``recv`` fails with ``ENOBUFS``: :attr:`NflogReader.overruns`); how many copies
  were lost comes from the sequence number the kernel gives each copy of the group
  (``NFULNL_CFG_F_SEQ``): :attr:`NflogReader.lost` adds up the gaps.
* A copy is the packet as it is at the hook where the statement sits. relayd's sits in
  prerouting at priority mangle (-150), after conntrack and before DNAT: the packet as
  the party sent it, from the party to relayd's socket, which is how rtpengine writes a
  received packet to its pcap. A copy carries that one packet's addresses; the
  forward's other end (relayd's other socket, the far party) is relayd's own
  knowledge, found by the copy's key. (``NFULNL_CFG_F_CONNTRACK`` would add the flow's
  conntrack tuples, but only on kernels built with ``NETFILTER_NETLINK_GLUE_CT``, not
  this project's test kernel, which answers ``EOPNOTSUPP``; and at prerouting a flow's
  first packet has no NAT in its tuples yet.)
"""

from __future__ import annotations

import asyncio
import errno
import os
import select
import socket
import struct
import time
from collections.abc import Callable, Iterator
from functools import lru_cache
from ipaddress import ip_address
from typing import NamedTuple

from relayd.nft.netlink import (
    NLA_TYPE_MASK,
    NLM_F_ACK,
    NLM_F_REQUEST,
    NLMSG_ERROR,
    attr,
    error_of,
    message,
    messages,
    netfilter_socket,
    nfgenmsg,
)

__all__ = [
    "Copy",
    "NflogError",
    "NflogReader",
    "config_request",
    "key_addresses",
    "parse_copies",
    "udp_copies",
]

# linux/netfilter/nfnetlink.h, nfnetlink_log.h
NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET, NFULNL_MSG_CONFIG = 0, 1
PACKET = NFNL_SUBSYS_ULOG << 8 | NFULNL_MSG_PACKET
CONFIG = NFNL_SUBSYS_ULOG << 8 | NFULNL_MSG_CONFIG
NFULA_PACKET_HDR, NFULA_MARK, NFULA_TIMESTAMP, NFULA_IFINDEX_INDEV = 1, 2, 3, 4
NFULA_PAYLOAD, NFULA_PREFIX, NFULA_SEQ = 9, 10, 12
NFULA_CFG_CMD, NFULA_CFG_MODE, NFULA_CFG_NLBUFSIZ = 1, 2, 3
NFULA_CFG_TIMEOUT, NFULA_CFG_QTHRESH, NFULA_CFG_FLAGS = 4, 5, 6
NFULNL_CFG_CMD_BIND, NFULNL_CFG_CMD_UNBIND = 1, 2
NFULNL_COPY_PACKET = 2
NFULNL_COPY_RANGE_MAX = 0xFFFF - 4
"""The most the kernel copies of a packet (an attribute's 16-bit length, less its header)."""
NFULNL_CFG_F_SEQ = 0x1
NF_INET_PRE_ROUTING, NF_INET_POST_ROUTING = 0, 4

_ATTR = struct.Struct("=HH")
_U32 = struct.Struct("!I")
_TIMESTAMP = struct.Struct("!QQ")
_PACKET_HDR = struct.Struct("!HB")  # hw_protocol, hook
_MODE = struct.Struct("!IBB")  # copy_range, copy_mode, padding
_PAD = b"\0\0"  # a port's padding in an nf_tables register (relayd.nft.elements.encode_key)
_ACK_TIMEOUT = 5.0
_SEQ_MOD = 1 << 32


class NflogError(OSError):
    """nfnetlink_log is unusable or refused the configuration (for example, the group is
    bound by another socket)."""


class Copy(NamedTuple):
    """One packet as the ``log`` statement saw it (a named tuple: one is made per copied
    packet, and a tuple is made in a third of a frozen dataclass's time).

    ``packet`` is the IP packet from its IP header on, cut at the snap length;
    ``family`` is ``AF_INET`` or ``AF_INET6``; ``hook`` the netfilter hook
    (``NF_INET_PRE_ROUTING`` for relayd's rule); ``seq`` the group's sequence number
    (None if not asked for); ``time_us`` when the packet came, in microseconds since the
    epoch (the kernel's receive time; None if it gave none); ``prefix`` the statement's
    prefix; ``indev`` the interface it came in on (0: none).
    """

    packet: bytes
    family: int
    hook: int
    seq: int | None = None
    time_us: int | None = None
    prefix: str = ""
    indev: int = 0

    def _udp(self) -> int:
        """Where the UDP header starts; -1 if the packet is not UDP (or too short). The IP
        version nibble decides, as in :func:`udp_copies` (the kernel's family agrees)."""
        packet = self.packet
        version = packet[0] >> 4 if packet else 0
        if version == 4:
            start = (packet[0] & 0x0F) * 4
            ok = start >= 20 and len(packet) >= start + 8 and packet[9] == socket.IPPROTO_UDP
            return start if ok else -1
        # IPv6: UDP right after the fixed header (no extension headers on RTP)
        ok = version == 6 and len(packet) >= 48 and packet[6] == socket.IPPROTO_UDP
        return 40 if ok else -1

    def wire_key(self) -> bytes | None:
        """``saddr . sport . daddr . dport`` laid out as the kernel holds a forward's key
        (:func:`relayd.nft.elements.encode_key`): the dictionary key to find the recorded
        stream by without making an object per packet. None: not UDP."""
        udp = self._udp()
        if udp < 0:
            return None
        packet = self.packet
        ports = packet[udp : udp + 4]
        if packet[0] >> 4 == 4:
            return packet[12:16] + ports[:2] + _PAD + packet[16:20] + ports[2:] + _PAD
        return packet[8:24] + ports[:2] + _PAD + packet[24:40] + ports[2:] + _PAD

    def addresses(self) -> tuple[tuple[str, int], tuple[str, int]] | None:
        """The packet's source and destination, ``((address, port), (address, port))``: at
        prerouting, a forward's key as :class:`relayd.nft.ruleset.ForwardKey` holds it, the
        party and relayd's socket (None: not UDP, or a port 0, which no forward has)."""
        wire = self.wire_key()
        if wire is None:
            return None
        found = key_addresses(wire)
        return found if found[0][1] and found[1][1] else None

    def udp_payload(self) -> bytes:
        """The UDP payload (the RTP or RTCP packet), as much of it as the snap length kept."""
        udp = self._udp()
        return self.packet[udp + 8 :] if udp >= 0 else b""

    @property
    def truncated(self) -> bool:
        """Whether the snap length cut the packet (its IP length says more)."""
        packet = self.packet
        if len(packet) < 8:
            return True
        if self.family == socket.AF_INET:
            (length,) = struct.unpack_from("!H", packet, 2)
        else:
            (payload,) = struct.unpack_from("!H", packet, 4)
            length = 40 + payload
        return len(packet) < length


_WANTED = frozenset(
    {NFULA_PAYLOAD, NFULA_PACKET_HDR, NFULA_TIMESTAMP, NFULA_SEQ, NFULA_IFINDEX_INDEV, NFULA_PREFIX}
)


@lru_cache(maxsize=64)
def _prefix(raw: bytes) -> str:
    # a rule's prefix, the same on every copy: decoded once
    return raw.split(b"\0", 1)[0].decode(errors="replace")


def _copy(data: bytes, start: int, end: int) -> Copy | None:
    """One ``NFULNL_MSG_PACKET`` body (``data[start:end]``, from its nfgenmsg); None
    without a payload (a copy-meta instance, which relayd never configures)."""
    family = data[start]
    hook = 0
    seq = time_us = None
    prefix = ""
    indev = 0
    packet = b""
    unpack = _ATTR.unpack_from
    wanted = _WANTED
    offset = start + 4
    while offset + 4 <= end:
        length, kind = unpack(data, offset)
        if length < 4 or offset + length > end:
            break
        kind &= NLA_TYPE_MASK
        if kind not in wanted:  # the hardware header and address, the interface's type
            offset += (length + 3) & ~3
            continue
        a, b = offset + 4, offset + length
        size = length - 4
        if kind == NFULA_PAYLOAD:
            packet = data[a:b]
        elif kind == NFULA_PACKET_HDR and size >= 4:
            hook = data[a + 2]
        elif kind == NFULA_TIMESTAMP and size >= 16:
            sec, usec = _TIMESTAMP.unpack_from(data, a)
            time_us = sec * 1_000_000 + usec
        elif kind == NFULA_SEQ and size >= 4:
            (seq,) = _U32.unpack_from(data, a)
        elif kind == NFULA_IFINDEX_INDEV and size >= 4:
            (indev,) = _U32.unpack_from(data, a)
        elif kind == NFULA_PREFIX:
            prefix = _prefix(data[a:b])
        offset += (length + 3) & ~3
    if not packet:
        return None
    return Copy(packet, family, hook, seq, time_us, prefix, indev)


def parse_copies(data: bytes) -> list[Copy]:
    """The copies in one datagram from nfnetlink_log (one batch); other messages (the
    ``NLMSG_DONE`` that ends a batch, acknowledgements) are skipped."""
    found = []
    for kind, _seq, start, end in messages(data):
        end = min(end, len(data))
        if kind == PACKET and end - start >= 4:
            copy = _copy(data, start, end)
            if copy is not None:
                found.append(copy)
    return found


_NLMSG = struct.Struct("=IH")  # a netlink message's length and type
_UDP = socket.IPPROTO_UDP
_PORT = struct.Struct("!H")


def udp_copies(data: bytes) -> Iterator[tuple[bytes | None, int | None, bytes, int | None]]:
    """``(wire_key, time_us, udp_payload, seq)`` of each copy in one datagram: what a recorder
    needs, without a :class:`Copy` per packet (the workers' hot path). The same values as
    ``parse_copies``' ``wire_key()``, ``time_us``, ``udp_payload()`` and ``seq``; a copy that
    is not UDP comes with no key and no payload (its sequence number still counts)."""
    size = len(data)
    offset = 0
    nlmsg, attr_ = _NLMSG.unpack_from, _ATTR.unpack_from
    stamp, u32 = _TIMESTAMP.unpack_from, _U32.unpack_from
    while offset + 16 <= size:
        length, kind = nlmsg(data, offset)
        if length < 16:
            return
        end = min(offset + length, size)
        if kind == PACKET:
            at = offset + 20  # past the nlmsghdr and the nfgenmsg
            time_us = seq = None
            packet = b""
            while at + 4 <= end:
                alen, atype = attr_(data, at)
                if alen < 4 or at + alen > end:
                    break
                atype &= NLA_TYPE_MASK
                if atype == NFULA_PAYLOAD:
                    packet = data[at + 4 : at + alen]
                elif atype == NFULA_TIMESTAMP and alen >= 20:
                    sec, usec = stamp(data, at + 4)
                    time_us = sec * 1_000_000 + usec
                elif atype == NFULA_SEQ and alen >= 8:
                    (seq,) = u32(data, at + 4)
                at += (alen + 3) & ~3
            if packet:
                # (inline: a call per copy costs as much as the rest of this)
                version = packet[0] >> 4
                if version == 4 and len(packet) >= 28 and packet[9] == _UDP:
                    udp = (packet[0] & 0x0F) * 4
                    if udp >= 20 and len(packet) >= udp + 8:
                        ports = packet[udp : udp + 4]
                        key = packet[12:16] + ports[:2] + _PAD + packet[16:20] + ports[2:] + _PAD
                        yield key, time_us, packet[udp + 8 :], seq
                        offset += (length + 3) & ~3
                        continue
                elif version == 6 and len(packet) >= 48 and packet[6] == _UDP:
                    ports = packet[40:44]
                    key = packet[8:24] + ports[:2] + _PAD + packet[24:40] + ports[2:] + _PAD
                    yield key, time_us, packet[48:], seq
                    offset += (length + 3) & ~3
                    continue
                yield None, time_us, b"", seq
        offset += (length + 3) & ~3


def key_addresses(wire: bytes) -> tuple[tuple[str, int], tuple[str, int]]:
    """The ``((source, port), (destination, port))`` a forward key from :func:`udp_copies`
    (or :meth:`Copy.wire_key`) stands for."""
    size = 4 if len(wire) == 16 else 16
    source = str(ip_address(wire[:size]))
    dest = str(ip_address(wire[size + 4 : 2 * size + 4]))
    (sport,) = _PORT.unpack_from(wire, size)
    (dport,) = _PORT.unpack_from(wire, 2 * size + 4)
    return (source, sport), (dest, dport)


def config_request(
    seq: int,
    group: int,
    command: int | None = None,
    *,
    snaplen: int | None = None,
    nlbufsiz: int | None = None,
    flush_ms: int | None = None,
    qthreshold: int | None = None,
    flags: int | None = None,
) -> bytes:
    """One ``NFULNL_MSG_CONFIG`` for ``group``, asking for an acknowledgement: the command
    (bind, unbind), then whatever is given: copy-packet mode cut at ``snaplen`` bytes, the
    batch buffer, its flush timeout (the kernel counts hundredths of a second), the copies
    per batch, the flags. Numbers go big-endian, as the kernel reads them."""
    body = nfgenmsg(socket.AF_UNSPEC, group)
    if command is not None:
        body += attr(NFULA_CFG_CMD, bytes([command]))
    if snaplen is not None:
        body += attr(NFULA_CFG_MODE, _MODE.pack(snaplen, NFULNL_COPY_PACKET, 0))
    if nlbufsiz is not None:
        body += attr(NFULA_CFG_NLBUFSIZ, _U32.pack(nlbufsiz))
    if flush_ms is not None:
        body += attr(NFULA_CFG_TIMEOUT, _U32.pack(max(1, (flush_ms + 9) // 10)))
    if qthreshold is not None:
        body += attr(NFULA_CFG_QTHRESH, _U32.pack(qthreshold))
    if flags is not None:
        body += attr(NFULA_CFG_FLAGS, struct.pack("!H", flags))
    return message(CONFIG, NLM_F_REQUEST | NLM_F_ACK, seq, body)


class NflogReader:
    """The socket bound to one nfnetlink_log group: copies in, decoded, drops counted.

    Non-blocking once open: :meth:`drain` takes what has come (for an event loop,
    :meth:`attach`), :meth:`read` waits for a number of copies (tests, tools). The socket
    belongs to the network namespace of the thread that calls :meth:`open`.

    Defaults: whole packets (``snaplen`` 65535: the kernel copies at most the packet),
    batches of up to 64 copies in a 32 KiB buffer flushed after 100 ms at the latest (a
    stream's last packets reach relayd that long after the packet at most), a 4 MiB
    receive buffer (about 12,000 copies of 200-byte RTP packets: a busy reader has that
    much slack before copies are lost).
    """

    def __init__(
        self,
        group: int,
        *,
        snaplen: int = NFULNL_COPY_RANGE_MAX,
        qthreshold: int = 64,
        flush_ms: int = 100,
        nlbufsiz: int = 1 << 15,
        rcvbuf: int = 1 << 22,
    ) -> None:
        if not 0 <= group <= 0xFFFF:
            raise ValueError(f"nflog group out of range: {group}")
        if not 0 < snaplen <= NFULNL_COPY_RANGE_MAX:
            raise ValueError(f"snap length out of range: {snaplen}")
        if qthreshold < 1 or flush_ms < 1 or nlbufsiz < 4096 or rcvbuf < nlbufsiz:
            raise ValueError(
                "nflog batching: qthreshold, flush_ms >= 1; 4096 <= nlbufsiz <= rcvbuf"
            )
        self.group = group
        self.snaplen = snaplen
        self.qthreshold = qthreshold
        self.flush_ms = flush_ms
        self.nlbufsiz = nlbufsiz
        self.rcvbuf = rcvbuf
        self.received = 0
        """Copies decoded."""
        self.lost = 0
        """Copies the kernel numbered but relayd never got (gaps in their sequence)."""
        self.overruns = 0
        """Times the kernel reported dropping a batch (``ENOBUFS``)."""
        self._sock: socket.socket | None = None
        self._seq = 0
        self._expected = 0  # the sequence number of the next copy
        self._early: list[Copy] = []  # copies that came while waiting for an acknowledgement
        self._loop: asyncio.AbstractEventLoop | None = None
        # a datagram holds one batch, or a single copy bigger than the batch buffer
        self._bufsize = max(nlbufsiz, snaplen + 1024)

    # -- life ---------------------------------------------------------------------------

    def open(self) -> None:
        """Bind the group and configure it (NflogError if the kernel refuses)."""
        if self._sock is not None:
            return
        try:
            self._sock = netfilter_socket(0.0, self.rcvbuf, force=True)
        except OSError as exc:
            raise NflogError(f"cannot open nfnetlink: {exc}") from exc
        try:
            self._configure(command=NFULNL_CFG_CMD_BIND)
            self._configure(
                snaplen=self.snaplen,
                nlbufsiz=self.nlbufsiz,
                flush_ms=self.flush_ms,
                qthreshold=self.qthreshold,
                flags=NFULNL_CFG_F_SEQ,
            )
        except (NflogError, OSError) as exc:
            self.close()
            if isinstance(exc, NflogError):
                raise
            raise NflogError(f"nfnetlink_log group {self.group}: {exc}") from exc

    def close(self) -> None:
        """Stop watching, unbind the group and close the socket (the kernel would release
        the group with the socket anyway). Copies not read yet are lost with it."""
        self.detach()
        sock, self._sock = self._sock, None
        if sock is None:
            return
        try:
            self._seq += 1
            sock.send(config_request(self._seq, self.group, NFULNL_CFG_CMD_UNBIND))
        except OSError:
            pass
        sock.close()
        self._early.clear()

    def __enter__(self) -> NflogReader:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def fileno(self) -> int:
        if self._sock is None:
            raise NflogError("nflog reader is not open")
        return self._sock.fileno()

    def _configure(self, **kw: int | None) -> None:
        """Send one configuration message and wait for the kernel's answer; copies that
        come in between are kept for the next read."""
        sock = self._sock
        assert sock is not None
        self._seq += 1
        seq = self._seq
        sock.send(config_request(seq, self.group, **kw))
        deadline = time.monotonic() + _ACK_TIMEOUT
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([sock], [], [], left)[0]:
                raise NflogError(f"nfnetlink_log group {self.group}: no answer")
            try:
                data = sock.recv(self._bufsize)
            except BlockingIOError:
                continue
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    self.overruns += 1
                    continue
                raise
            for kind, got, start, _ in messages(data):
                if kind == NLMSG_ERROR and got == seq:
                    error = error_of(data, start)
                    if error:
                        what = "bound by another socket" if error == errno.EPERM else ""
                        cause = OSError(error, os.strerror(error))
                        raise NflogError(
                            f"nfnetlink_log group {self.group}: {what or os.strerror(error)}"
                        ) from cause
                    self._early += self._count(parse_copies(data))
                    return
            self._early += self._count(parse_copies(data))

    # -- reading ------------------------------------------------------------------------

    def _count(self, copies: list[Copy]) -> list[Copy]:
        expected = self._expected
        for copy in copies:
            seq = copy.seq
            if seq is None:
                continue
            if seq != expected:
                self.lost += (seq - expected) % _SEQ_MOD
            expected = (seq + 1) % _SEQ_MOD
        self._expected = expected
        self.received += len(copies)
        return copies

    def _datagrams(self, limit: int) -> Iterator[bytes]:
        """At most ``limit`` datagrams (the kernel's batches) that wait, without waiting;
        ``ENOBUFS`` (batches the kernel dropped) is counted and reading goes on."""
        if self._sock is None:
            raise NflogError("nflog reader is not open")
        recv = self._sock.recv
        size = self._bufsize
        for _ in range(limit):
            try:
                data = recv(size)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise NflogError(f"nfnetlink_log group {self.group}: {exc}") from exc
                self.overruns += 1
                continue
            yield data

    def drain(self, limit: int = 64) -> list[Copy]:
        """The copies that have come, from at most ``limit`` datagrams (batches), without
        waiting: an event loop's reader takes a bounded share and is called again while
        more is there. ``ENOBUFS`` is counted and reading goes on."""
        found, self._early = self._early, []
        try:
            for data in self._datagrams(limit):
                found += self._count(parse_copies(data))
        except NflogError:
            self._early = found  # what came before the failure is not lost
            raise
        return found

    def drain_udp(self, limit: int = 64) -> list[tuple[bytes, int | None, bytes]]:
        """As :meth:`drain`, as :func:`udp_copies` gives them: ``(wire_key, time_us,
        udp_payload)`` of each UDP copy (the workers' way: no object per copy)."""
        found: list[tuple[bytes, int | None, bytes]] = []
        expected = self._expected
        try:
            for data in self._datagrams(limit):
                for key, time_us, payload, seq in udp_copies(data):
                    self.received += 1
                    if seq is not None:
                        if seq != expected:
                            self.lost += (seq - expected) % _SEQ_MOD
                        expected = (seq + 1) % _SEQ_MOD
                    if key is not None:
                        found.append((key, time_us, payload))
        finally:
            self._expected = expected
        return found

    def read(self, count: int, timeout: float) -> list[Copy]:
        """Wait until ``count`` copies have come or ``timeout`` seconds have passed; returns
        what came (possibly more than ``count``: the rest of the last batch)."""
        if self._sock is None:
            raise NflogError("nflog reader is not open")
        found: list[Copy] = []
        deadline = time.monotonic() + timeout
        while True:
            found += self.drain()
            left = deadline - time.monotonic()
            if len(found) >= count or left <= 0:
                return found
            select.select([self._sock], [], [], left)

    def attach(
        self, loop: asyncio.AbstractEventLoop, deliver: Callable[[list[Copy]], object]
    ) -> None:
        """Hand every batch that comes to ``deliver`` from ``loop`` (``add_reader``)."""
        self.detach()

        def readable() -> None:
            copies = self.drain()
            if copies:
                deliver(copies)

        loop.add_reader(self.fileno(), readable)
        self._loop = loop

    def detach(self) -> None:
        loop, self._loop = self._loop, None
        if loop is not None and self._sock is not None and not loop.is_closed():
            loop.remove_reader(self._sock.fileno())
