"""RTCP compound packets as the JSON text rtpengine sends to Homer. Pure.

RFC 3550 §6.4 (SR, RR), §6.5 (SDES). The text is built the way rtpengine's
``homer_*`` handlers in ``daemon/rtcp.c`` build it, byte for byte, so Homer's
RTCP views read relayd's captures like rtpengine's: an SR contributes
``"sender_information":{…}``, every SR or RR ``"ssrc"``, ``"type"``,
``"report_count"`` and ``"report_blocks":[…]``, an SDES
``"sdes_report_count"`` and ``"sdes_information":[…]``; other packet types
(BYE, APP, feedback, XR) add nothing. Parsing stops at the first malformed
packet; what was parsed before it is still reported, as rtpengine does.
"""

from __future__ import annotations

import struct

__all__ = ["homer_json", "is_rtcp"]

_SR, _RR, _SDES = 200, 201, 202
_MIN_SIZES = {200: 28, 201: 8, 202: 4, 203: 4, 204: 12, 205: 12, 206: 12, 207: 8}
_BLOCK = struct.Struct("!IB3sIIII")  # ssrc, fraction lost, cumulative lost, seq, jitter, lsr, dlsr


def is_rtcp(data: bytes) -> bool:
    """RTCP packet types 200–204 (RFC 5761 §4: what shares a port with RTP)."""
    return len(data) > 1 and 200 <= data[1] <= 204


def _sanitize(text: list[str]) -> None:
    """rtpengine's ``str_sanitize``: drop trailing commas and spaces."""
    joined = "".join(text).rstrip(", ")
    text[:] = [joined]


def _blocks(out: list[str], data: bytes, offset: int, ssrc: int, pt: int, count: int) -> None:
    out.append(f'"ssrc":{ssrc},"type":{pt},"report_count":{count},"report_blocks":[')
    for index in range(count):
        source, fraction, lost, seq, jitter, lsr, dlsr = _BLOCK.unpack_from(
            data, offset + index * _BLOCK.size
        )
        out.append(
            f'{{"source_ssrc":{source},"highest_seq_no":{seq},"fraction_lost":{fraction},'
            f'"ia_jitter":{jitter},"packets_lost":{int.from_bytes(lost, "big")},'
            f'"lsr":{lsr},"dlsr":{dlsr}}},'
        )
    _sanitize(out)
    out.append("],")


def _text(raw: bytes) -> str:
    escapes = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n"}
    escapes |= {"\r": "\\r", "\t": "\\t"}
    chars = []
    for byte in raw:
        char = chr(byte)
        if char in escapes:
            chars.append(escapes[char])
        elif byte < 0x20 or byte > 126:
            chars.append("_")
        else:
            chars.append(char)
    return "".join(chars)


def _sdes(out: list[str], data: bytes, start: int, end: int, count: int) -> None:
    out.append(f'"sdes_report_count":{count},"sdes_information": [ ')
    offset = start + 4
    for _ in range(count):
        if offset + 4 > end:
            break
        (ssrc,) = struct.unpack_from("!I", data, offset)
        offset += 4
        while offset < end:
            kind = data[offset]
            if kind == 0:
                offset += 1
                break
            if offset + 2 > end or offset + 2 + data[offset + 1] > end:
                offset = end
                break
            length = data[offset + 1]
            value = data[offset + 2 : offset + 2 + length]
            out.append(f'{{"sdes_chunk_ssrc":{ssrc},"type":{kind},"text":"{_text(value)}"}},')
            offset += 2 + length
        offset += (-(offset - start)) % 4  # chunks are padded to 32 bits
    _sanitize(out)
    out.append("],")


def homer_json(data: bytes) -> str | None:
    """The JSON rtpengine would send for this RTCP datagram, None when it sends nothing."""
    out = ["{ "]
    offset = 0
    while offset + 4 <= len(data):
        first, pt, words = struct.unpack_from("!BBH", data, offset)
        length = (words + 1) * 4
        if offset + length > len(data) or first >> 6 != 2:
            break
        if length < _MIN_SIZES.get(pt, 0):
            break
        count = first & 0x1F
        if pt in (_SR, _RR):
            header = 28 if pt == _SR else 8
            if header + count * _BLOCK.size > length:
                break
            (ssrc,) = struct.unpack_from("!I", data, offset + 4)
            if pt == _SR:
                msw, lsw, rtp_ts, packets, octets = struct.unpack_from("!IIIII", data, offset + 8)
                out.append(
                    f'"sender_information":{{"ntp_timestamp_sec":{msw},'
                    f'"ntp_timestamp_usec":{lsw},"octets":{octets},"rtp_timestamp":{rtp_ts}, '
                    f'"packets":{packets}}},'
                )
            _blocks(out, data, offset + header, ssrc, pt, count)
        elif pt == _SDES:
            _sdes(out, data, offset, offset + length, count)
        offset += length
    _sanitize(out)
    text = out[0] + " }"
    return text if len(text) > len("{ ") + 2 else None
