"""RTCP of a transcoded stream, rewritten so that each side hears about the SSRCs it knows.

A direction that transcodes sends under a new SSRC (:mod:`relayd.transcode.transcoder`),
so the sender's reports would name an SSRC the receiver never saw, and the receiver's
reports an SSRC the sender never sent. rtpengine 10.5 rewrites RTCP in place rather than
terminating it (``daemon/rtcp.c``, its "transcode" handlers; reports of its own only with
``generate-RTCP``), and so does relayd:

* The first SSRC of each packet of the compound (RFC 3550 §6.4: an SR's or RR's sender,
  the first SDES chunk, the first BYE source) that is the party's input SSRC becomes the
  output SSRC of the party's transcoded direction (``forward``).
* An SR's sender info (§6.4.1) of that SSRC takes the output stream's packet and octet
  counts and its last RTP timestamp, once the output has sent something; the NTP time
  stays.
* A report block (SR or RR) about the output SSRC of the other direction (``reverse``, the
  stream this party receives) is turned into one about what the other party sent: its
  SSRC, and relayd's own reception figures of that input (cumulative lost, fraction lost,
  extended highest sequence number). Jitter, LSR and DLSR stay as the party measured them.

Anything that does not parse as RTCP is left as it is.
"""

from __future__ import annotations

import struct
from typing import Protocol

__all__ = ["Stream", "rewrite"]

_WORD = struct.Struct("!I")
_SR, _RR, _SDES, _BYE = 200, 201, 202, 203
_BLOCK = 24


class Stream(Protocol):
    """What the rewrite needs of one direction's engine (a Transcoder)."""

    ssrc_in: int
    ssrc_out: int
    last_ts: int

    @property
    def sent_packets(self) -> int: ...

    @property
    def sent_octets(self) -> int: ...

    @property
    def received(self) -> int: ...

    @property
    def lost(self) -> int: ...

    @property
    def highest_seq(self) -> int: ...


def rewrite(data: bytes | bytearray, forward: Stream | None, reverse: Stream | None) -> bytes:
    """``data`` (an RTCP compound from the party whose RTP ``forward`` transcodes, towards
    the party whose RTP ``reverse`` transcodes; either may be None) rewritten."""
    out = bytearray(data)
    offset = 0
    size = len(out)
    while offset + 8 <= size:
        first, pt = out[offset], out[offset + 1]
        length = 4 * (int.from_bytes(out[offset + 2 : offset + 4], "big") + 1)
        if first >> 6 != 2 or offset + length > size:
            break
        if pt in (_SR, _RR, _SDES, _BYE) and forward is not None:
            (ssrc,) = _WORD.unpack_from(out, offset + 4)
            if ssrc == forward.ssrc_in and forward.ssrc_in >= 0:
                _WORD.pack_into(out, offset + 4, forward.ssrc_out)
                if pt == _SR and forward.sent_packets and length >= 28:
                    _WORD.pack_into(out, offset + 16, forward.last_ts & 0xFFFFFFFF)
                    _WORD.pack_into(out, offset + 20, forward.sent_packets & 0xFFFFFFFF)
                    _WORD.pack_into(out, offset + 24, forward.sent_octets & 0xFFFFFFFF)
        if pt in (_SR, _RR) and reverse is not None:
            blocks = offset + (28 if pt == _SR else 8)
            for index in range(first & 0x1F):
                block = blocks + index * _BLOCK
                if block + _BLOCK > offset + length:
                    break
                _block(out, block, reverse)
        offset += length
    return bytes(out)


def _block(out: bytearray, block: int, reverse: Stream) -> None:
    (ssrc,) = _WORD.unpack_from(out, block)
    if ssrc != reverse.ssrc_out or reverse.ssrc_in < 0:
        return
    _WORD.pack_into(out, block, reverse.ssrc_in)
    received = reverse.received
    if not received:
        return
    lost = min(reverse.lost, 0x7FFFFF)
    expected = received + lost
    out[block + 4] = lost * 256 // expected if expected else 0
    out[block + 5 : block + 8] = lost.to_bytes(3, "big")
    if reverse.highest_seq >= 0:
        _WORD.pack_into(out, block + 8, reverse.highest_seq)
