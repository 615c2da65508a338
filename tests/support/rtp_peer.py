"""A media peer for tests: sends numbered RTP/RTCP packets, records what arrives.

Packets carry a sequence number and a payload derived from it, so a receiver
can check order and content packet by packet. Every received packet is kept with
its source address and port, its IP TOS / IPv6 traffic class (IP_RECVTOS,
IPV6_RECVTCLASS) and the kernel's arrival time (SO_TIMESTAMPNS), so gaps are
measured where packets arrived, not where the test got round to reading them.
Every wait is bounded in time.
"""

from __future__ import annotations

import select
import socket
import struct
import sys
import time
from dataclasses import dataclass

from tests.support.netns import inside

__all__ = ["Peer", "Received", "payload", "rtcp_packet", "rtp_packet", "rtp_seq"]

_RTP_HEADER = struct.Struct("!BBHII")
_PAYLOAD_SIZE = 160  # 20 ms of PCMU
_SO_TIMESTAMPNS = 35  # asm-generic/socket.h; not exported by the socket module
_TIMESPEC = struct.Struct("@qq")


def payload(seq: int, tag: int) -> bytes:
    """Content that differs per packet and per sender."""
    return bytes((seq * 7 + tag + i) & 0xFF for i in range(_PAYLOAD_SIZE))


def rtp_packet(seq: int, ssrc: int, tag: int = 0) -> bytes:
    """RTP (RFC 3550 §5.1), version 2, PT 0 (PCMU)."""
    return _RTP_HEADER.pack(0x80, 0, seq & 0xFFFF, seq * 160, ssrc) + payload(seq, tag)


def rtcp_packet(seq: int, ssrc: int, tag: int = 0) -> bytes:
    """An RTCP APP packet (RFC 3550 §6.7, PT 204) carrying ``seq`` and a 20-byte body."""
    body = struct.pack("!I", seq) + payload(seq, tag)[:16]
    length = (8 + 4 + len(body)) // 4 - 1
    return struct.pack("!BBHI", 0x80, 204, length, ssrc) + b"TEST" + body


def rtp_seq(data: bytes) -> int:
    if len(data) > 1 and data[1] == 204:
        return int.from_bytes(data[12:16], "big")
    return int.from_bytes(data[2:4], "big")


@dataclass(frozen=True, slots=True)
class Received:
    data: bytes
    source: tuple[str, int]
    tos: int  # -1 when the kernel gave none
    at: float  # arrival, time.time() scale

    @property
    def seq(self) -> int:
        return rtp_seq(self.data)


class Peer:
    """One UDP socket bound in namespace ``ns`` at ``address``:``port``."""

    def __init__(self, ns: str, address: str, port: int) -> None:
        self.family = socket.AF_INET6 if ":" in address else socket.AF_INET
        with inside(ns):
            sock = socket.socket(self.family, socket.SOCK_DGRAM)
        try:
            if self.family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVTCLASS, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_RECVTOS, 1)
            sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            sock.bind((address, port))
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self.sock = sock
        self.address = (address, port)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Peer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes, to: tuple[str, int]) -> None:
        self.sock.sendto(data, to)

    def send_rtp(
        self,
        to: tuple[str, int],
        count: int,
        *,
        first: int = 0,
        ssrc: int = 0x1234,
        tag: int = 0,
        interval: float = 0.001,
        rtcp: bool = False,
    ) -> list[bytes]:
        """Send ``count`` packets numbered from ``first``; returns them in order."""
        make = rtcp_packet if rtcp else rtp_packet
        sent = []
        for seq in range(first, first + count):
            packet = make(seq, ssrc, tag)
            self.sock.sendto(packet, to)
            sent.append(packet)
            if interval:
                time.sleep(interval)
        return sent

    def _read(self) -> Received | None:
        try:
            data, ancdata, _flags, source = self.sock.recvmsg(4096, 2 * socket.CMSG_SPACE(16))
        except BlockingIOError:
            return None
        tos = -1
        at = time.time()
        for level, kind, value in ancdata:
            if (level, kind) == (socket.SOL_SOCKET, _SO_TIMESTAMPNS) and len(value) >= 16:
                seconds, nanoseconds = _TIMESPEC.unpack(value[:16])
                at = seconds + nanoseconds / 1e9
            elif (level, kind) == (socket.IPPROTO_IP, socket.IP_TOS) and value:
                tos = value[0]
            elif (level, kind) == (socket.IPPROTO_IPV6, socket.IPV6_TCLASS) and len(value) >= 4:
                tos = int.from_bytes(value[:4], sys.byteorder)
        return Received(data, (source[0], source[1]), tos, at)

    def receive(self, count: int, timeout: float = 2.0) -> list[Received]:
        """Up to ``count`` packets, waiting at most ``timeout`` seconds in all."""
        got: list[Received] = []
        deadline = time.monotonic() + timeout
        while len(got) < count:
            packet = self._read()
            if packet is not None:
                got.append(packet)
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                break
            select.select([self.sock], [], [], left)
        return got

    def drain(self, quiet: float = 0.3, limit: float = 5.0) -> list[Received]:
        """Everything that arrives until ``quiet`` seconds pass with nothing (``limit`` at most)."""
        got: list[Received] = []
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            packet = self._read()
            if packet is not None:
                got.append(packet)
                continue
            wait = max(min(quiet, deadline - time.monotonic()), 0.0)
            ready, _, _ = select.select([self.sock], [], [], wait)
            if not ready:
                break
        return got
