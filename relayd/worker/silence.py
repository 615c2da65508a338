"""``silence media`` in the worker: an RTP packet's payload overwritten with its codec's silence.

The supervisor tells a socket which payload types to silence and with what byte
(``SocketSpec.silence``, ``"0=ff 8=d5"``: PCMU 0xFF, PCMA 0xD5, G.722 0xFA, as rtpengine's codec
table has them); :func:`silence` fills the payload of such a packet, between the RTP header
(12 bytes, the CSRCs, the header extension) and the padding, and leaves every other packet as
it is: other payload types (telephone-event, comfort noise), RTCP, and what is too short or
not RTP version 2.
"""

from __future__ import annotations

__all__ = ["parse_fills", "silence"]


def parse_fills(text: str) -> dict[int, int] | None:
    """``"0=ff 8=d5"`` as {payload type: byte}; None for none."""
    fills = {}
    for item in text.split():
        payload_type, _, fill = item.partition("=")
        try:
            fills[int(payload_type)] = int(fill, 16) & 0xFF
        except ValueError:
            continue
    return fills or None


def silence(packet: bytearray | memoryview, size: int, fills: dict[int, int]) -> None:
    """Overwrite the payload of the RTP packet in ``packet[:size]`` in place, if its payload
    type is one of ``fills``."""
    if size < 12 or packet[0] >> 6 != 2:
        return
    fill = fills.get(packet[1] & 0x7F)
    if fill is None:
        return
    start = 12 + 4 * (packet[0] & 0x0F)
    if packet[0] & 0x10:  # a header extension: 4 bytes, then its length in words
        if size < start + 4:
            return
        start += 4 + 4 * int.from_bytes(packet[start + 2 : start + 4], "big")
    end = size
    if packet[0] & 0x20:  # padding: its count is the last byte
        end -= packet[size - 1]
    if start < end:
        packet[start:end] = bytes((fill,)) * (end - start)
