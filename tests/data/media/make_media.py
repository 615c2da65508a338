"""Write ``tone-pcmu.pcap``: the audio each sipp agent plays in every call.

Two seconds of a 440 Hz tone at 8 kHz in G.711 μ-law (PCMU, RTP payload type
0) as 100 RTP packets of 160 bytes, 20 ms apart, in Ethernet/IPv4/UDP frames
of a classic libpcap file, written with Python's stdlib only.  sipp's
``play_pcap_audio`` replays it per call, rewriting addresses and ports to the
call's own media port (``[auto_media_port]``) and the peer's SDP address.

(sipp 3.6.1's ``rtp_stream`` is no alternative here: it sends every call's
stream from the one ``-mp`` port, and relayd learns endpoints per call.)

Run ``python tests/data/media/make_media.py`` to regenerate it byte for byte.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path

RATE = 8000
SECONDS = 2.0
FREQUENCY = 440.0
AMPLITUDE = 0.3
PTIME_MS = 20
PAYLOAD_TYPE = 0
SSRC = 0x52454C41  # "RELA"
HERE = Path(__file__).resolve().parent
PCAP = HERE / "tone-pcmu.pcap"

_BIAS = 0x84
_CLIP = 32635
_LINKTYPE_ETHERNET = 1
# Placeholders only: sipp replaces addresses and ports when it replays the file.
_SOURCE = (bytes([192, 0, 2, 1]), 6000)
_DESTINATION = (bytes([192, 0, 2, 2]), 6002)


def linear_to_ulaw(sample: int) -> int:
    """One 16-bit linear sample as a G.711 μ-law byte (ITU-T G.711)."""
    sign = 0x80 if sample < 0 else 0
    magnitude = min(-sample if sample < 0 else sample, _CLIP) + _BIAS
    exponent = 7
    mask = 0x4000
    while exponent > 0 and not magnitude & mask:
        exponent -= 1
        mask >>= 1
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def tone() -> bytes:
    count = int(RATE * SECONDS)
    return bytes(
        linear_to_ulaw(round(AMPLITUDE * 32767 * math.sin(2 * math.pi * FREQUENCY * n / RATE)))
        for n in range(count)
    )


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _frame(payload: bytes, ident: int) -> bytes:
    (src, sport), (dst, dport) = _SOURCE, _DESTINATION
    udp_length = 8 + len(payload)
    pseudo = src + dst + struct.pack("!BBH", 0, 17, udp_length)
    udp = struct.pack("!HHHH", sport, dport, udp_length, 0) + payload
    udp = udp[:6] + struct.pack("!H", _checksum(pseudo + udp) or 0xFFFF) + udp[8:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + udp_length, ident, 0, 64, 17, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    ethernet = bytes(6) + bytes(6) + struct.pack("!H", 0x0800)
    return ethernet + ip + udp


def rtp_pcap(audio: bytes) -> bytes:
    """``audio`` as RTP packets of ``PTIME_MS`` each in a libpcap file."""
    samples = RATE * PTIME_MS // 1000
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, _LINKTYPE_ETHERNET)]
    for index in range(len(audio) // samples):
        marker = 0x80 if index == 0 else 0
        header = struct.pack(
            "!BBHII", 0x80, marker | PAYLOAD_TYPE, index + 1, index * samples, SSRC
        )
        frame = _frame(header + audio[index * samples : (index + 1) * samples], index + 1)
        usec = index * PTIME_MS * 1000
        out.append(
            struct.pack("<IIII", usec // 1_000_000, usec % 1_000_000, len(frame), len(frame))
        )
        out.append(frame)
    return b"".join(out)


if __name__ == "__main__":
    PCAP.write_bytes(rtp_pcap(tone()))
