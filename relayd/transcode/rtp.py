"""The RTP fixed header (RFC 3550 §5.1) as the transcoder reads and rewrites it.

Only what the media engine needs: payload type, marker, sequence number, timestamp, SSRC and
where the payload starts (after CSRCs and a header extension, RFC 3550 §5.3.1) and ends
(before padding, §5.1). Packets that do not parse raise :class:`RtpError`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = ["RtpError", "RtpPacket", "build", "parse"]

_HEADER = struct.Struct("!BBHII")


class RtpError(ValueError):
    """A datagram that is not an RTP packet the engine can read."""


@dataclass(frozen=True, slots=True)
class RtpPacket:
    """One RTP packet as received: header fields and its payload."""

    pt: int
    marker: bool
    seq: int
    ts: int
    ssrc: int
    payload: bytes


def parse(data: bytes | bytearray | memoryview) -> RtpPacket:
    """``data``'s header fields and payload; :class:`RtpError` if it is no RTP version 2."""
    size = len(data)
    if size < 12:
        raise RtpError("short packet")
    first, second, seq, ts, ssrc = _HEADER.unpack_from(data)
    if first >> 6 != 2:
        raise RtpError("not RTP version 2")
    start = 12 + 4 * (first & 0x0F)
    if first & 0x10:  # header extension: 4 bytes, then its length in 32-bit words
        if size < start + 4:
            raise RtpError("short extension")
        start += 4 + 4 * int.from_bytes(data[start + 2 : start + 4], "big")
    end = size
    if first & 0x20:  # padding: its count is the last byte
        end -= data[-1]
    if end < start:
        raise RtpError("bad length")
    return RtpPacket(second & 0x7F, bool(second & 0x80), seq, ts, ssrc, bytes(data[start:end]))


def build(pt: int, marker: bool, seq: int, ts: int, ssrc: int, payload: bytes) -> bytes:
    """A packet with a plain 12-byte header (no CSRC, extension or padding)."""
    return (
        _HEADER.pack(0x80, pt | (0x80 if marker else 0), seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc)
        + payload
    )
