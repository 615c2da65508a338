"""HEPv3, the Homer Encapsulation Protocol: encode (and decode) one capture packet. Pure.

A HEPv3 packet is ``"HEP3"``, a 16-bit total length, then chunks: vendor id
(16 bits, 0 = generic), type (16 bits), length (16 bits, the 6-byte chunk
header included), value. All integers are big-endian. The chunks and their
order are the ones rtpengine's ``send_hepv3`` (``daemon/homer.c``) writes, so a
capture server sees the same bytes from relayd as from rtpengine:

====  ===================================  ====
type  value                                size
====  ===================================  ====
1     IP family (2 = AF_INET, 10 = AF_INET6)  1
2     IP protocol (17, UDP, always)           1
7     source port                           2
8     destination port                      2
9     timestamp, seconds                    4
10    timestamp, microseconds               4
11    capture protocol type                 1
12    capture agent id (``homer-id``)       4
3/4   IPv4 source / destination             4
5/6   IPv6 source / destination             16
17    correlation id (the call-id)          n
15    payload                               n
====  ===================================  ====

Capture protocol types used here: 5, RTCP as JSON (``rtcp_homer_json``), and
0x3d (61), ng messages, rtpengine's ``homer-ng-capture-proto`` default.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from enum import IntEnum
from socket import AF_INET, AF_INET6, IPPROTO_UDP

__all__ = [
    "CaptureProtocol",
    "ChunkType",
    "HepError",
    "HepPacket",
    "decode",
    "encode",
]

MAGIC = b"HEP3"
_CHUNK = struct.Struct("!HHH")


class HepError(ValueError):
    """Bytes that are not a HEPv3 packet."""


class ChunkType(IntEnum):
    """HEPv3 chunk types of the generic vendor (0); :func:`encode` writes those of the
    module's table, in its order."""

    IP_FAMILY = 1
    IP_PROTO = 2
    IPV4_SRC = 3
    IPV4_DST = 4
    IPV6_SRC = 5
    IPV6_DST = 6
    SRC_PORT = 7
    DST_PORT = 8
    TIME_SEC = 9
    TIME_USEC = 10
    PROTO_TYPE = 11
    CAPTURE_ID = 12
    AUTH_KEY = 14
    PAYLOAD = 15
    COMPRESSED_PAYLOAD = 16
    CORRELATION_ID = 17


class CaptureProtocol(IntEnum):
    SIP = 1
    RTCP_JSON = 5
    NG = 0x3D  # rtpengine's default for ng traffic (--homer-ng-capture-proto)


@dataclass(frozen=True, slots=True)
class HepPacket:
    """One capture: source and destination, the capture time (wall clock), capture protocol
    type, agent id (``homer-id``), correlation id (the call-id) and the payload."""

    source: tuple[str, int]
    destination: tuple[str, int]
    seconds: int
    microseconds: int
    protocol: int  # capture protocol type, see CaptureProtocol
    capture_id: int
    correlation_id: bytes
    payload: bytes
    ip_protocol: int = IPPROTO_UDP


def _chunk(kind: ChunkType, value: bytes) -> bytes:
    return _CHUNK.pack(0, kind, _CHUNK.size + len(value)) + value


def encode(packet: HepPacket) -> bytes:
    """``packet`` as HEPv3, its chunks in rtpengine's order (``send_hepv3``).

    Raises HepError for an IPv4 and an IPv6 address together or more than 65535 bytes, and
    ValueError for an address that is not one.
    """
    src = ipaddress.ip_address(packet.source[0])
    dst = ipaddress.ip_address(packet.destination[0])
    if src.version != dst.version:
        raise HepError("source and destination of different IP versions")
    family = AF_INET6 if src.version == 6 else AF_INET
    chunks = [
        _chunk(ChunkType.IP_FAMILY, bytes([family])),
        _chunk(ChunkType.IP_PROTO, bytes([packet.ip_protocol])),
        _chunk(ChunkType.SRC_PORT, struct.pack("!H", packet.source[1])),
        _chunk(ChunkType.DST_PORT, struct.pack("!H", packet.destination[1])),
        _chunk(ChunkType.TIME_SEC, struct.pack("!I", packet.seconds & 0xFFFFFFFF)),
        _chunk(ChunkType.TIME_USEC, struct.pack("!I", packet.microseconds)),
        _chunk(ChunkType.PROTO_TYPE, bytes([packet.protocol & 0xFF])),
        _chunk(ChunkType.CAPTURE_ID, struct.pack("!I", packet.capture_id & 0xFFFFFFFF)),
    ]
    if family == AF_INET:
        chunks.append(_chunk(ChunkType.IPV4_SRC, src.packed))
        chunks.append(_chunk(ChunkType.IPV4_DST, dst.packed))
    else:
        chunks.append(_chunk(ChunkType.IPV6_SRC, src.packed))
        chunks.append(_chunk(ChunkType.IPV6_DST, dst.packed))
    chunks.append(_chunk(ChunkType.CORRELATION_ID, packet.correlation_id))
    chunks.append(_chunk(ChunkType.PAYLOAD, packet.payload))
    body = b"".join(chunks)
    total = len(MAGIC) + 2 + len(body)
    if total > 0xFFFF:
        raise HepError(f"packet too large for HEPv3 ({total} bytes)")
    return MAGIC + struct.pack("!H", total) + body


def decode(data: bytes) -> HepPacket:
    """The generic chunks of one HEPv3 packet (vendor chunks are skipped)."""
    if len(data) < 6 or data[:4] != MAGIC:
        raise HepError("not a HEPv3 packet")
    (total,) = struct.unpack_from("!H", data, 4)
    if total != len(data):
        raise HepError(f"length field {total}, packet {len(data)} bytes")
    values: dict[int, bytes] = {}
    offset = 6
    while offset < total:
        if offset + _CHUNK.size > total:
            raise HepError("truncated chunk header")
        vendor, kind, length = _CHUNK.unpack_from(data, offset)
        if length < _CHUNK.size or offset + length > total:
            raise HepError(f"bad length {length} of chunk type {kind}")
        if vendor == 0:
            values[kind] = data[offset + _CHUNK.size : offset + length]
        offset += length

    def need(kind: ChunkType) -> bytes:
        if kind not in values:
            raise HepError(f"chunk {kind.name} missing")
        return values[kind]

    def number(kind: ChunkType) -> int:
        return int.from_bytes(need(kind), "big")

    if number(ChunkType.IP_FAMILY) == AF_INET6:
        src, dst, size = need(ChunkType.IPV6_SRC), need(ChunkType.IPV6_DST), 16
    else:
        src, dst, size = need(ChunkType.IPV4_SRC), need(ChunkType.IPV4_DST), 4
    if len(src) != size or len(dst) != size:
        raise HepError("address chunk of the wrong size")
    return HepPacket(
        source=(str(ipaddress.ip_address(src)), number(ChunkType.SRC_PORT)),
        destination=(str(ipaddress.ip_address(dst)), number(ChunkType.DST_PORT)),
        seconds=number(ChunkType.TIME_SEC),
        microseconds=number(ChunkType.TIME_USEC),
        protocol=number(ChunkType.PROTO_TYPE),
        capture_id=number(ChunkType.CAPTURE_ID),
        correlation_id=values.get(ChunkType.CORRELATION_ID, b""),
        payload=values.get(ChunkType.PAYLOAD, b""),
        ip_protocol=number(ChunkType.IP_PROTO),
    )
