"""The audio each sipp agent plays: a tone as RTP packets in a libpcap file, made when needed.

Two seconds of a 440 Hz tone at 8 kHz in G.711, μ-law (``tone-pcmu.pcap``, payload type 0)
or A-law (``tone-pcma.pcap``, payload type 8), as 100 RTP packets of 160 bytes, 20 ms
apart, in Ethernet/IPv4/UDP frames of a classic libpcap file. sipp's ``play_pcap_audio``
replays it per call, rewriting addresses and ports to the call's own media port
(``[auto_media_port]``) and the peer's SDP address. The files are written into each
agent's working directory when it starts (nothing binary is kept in the repository).

(sipp 3.6.1's ``rtp_stream`` is no alternative here: it sends every call's stream from the
one ``-mp`` port, and relayd learns endpoints per call.)
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from pathlib import Path

from tests.support.tone import alaw_encode, mulaw_encode

__all__ = ["TONES", "TONE_PACKETS", "write_tone"]

RATE = 8000
SECONDS = 2.0
FREQUENCY = 440.0
AMPLITUDE = 0.3
PTIME_MS = 20
SSRC = 0x52454C41  # "RELA"
TONE_PACKETS = int(SECONDS * 1000 / PTIME_MS)
# file name -> (RTP payload type, G.711 encoder)
TONES: dict[str, tuple[int, Callable[[list[int]], bytes]]] = {
    "tone-pcmu.pcap": (0, mulaw_encode),
    "tone-pcma.pcap": (8, alaw_encode),
}

_LINKTYPE_ETHERNET = 1
# Placeholders only: sipp replaces addresses and ports when it replays the file.
_SOURCE = (bytes([192, 0, 2, 1]), 6000)
_DESTINATION = (bytes([192, 0, 2, 2]), 6002)


def _tone() -> list[int]:
    count = int(RATE * SECONDS)
    return [
        round(AMPLITUDE * 32767 * math.sin(2 * math.pi * FREQUENCY * n / RATE))
        for n in range(count)
    ]


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


def _rtp_pcap(audio: bytes, payload_type: int) -> bytes:
    """``audio`` as RTP packets of ``PTIME_MS`` each in a libpcap file."""
    samples = RATE * PTIME_MS // 1000
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, _LINKTYPE_ETHERNET)]
    for index in range(len(audio) // samples):
        marker = 0x80 if index == 0 else 0
        header = struct.pack(
            "!BBHII", 0x80, marker | payload_type, index + 1, index * samples, SSRC
        )
        frame = _frame(header + audio[index * samples : (index + 1) * samples], index + 1)
        usec = index * PTIME_MS * 1000
        out.append(
            struct.pack("<IIII", usec // 1_000_000, usec % 1_000_000, len(frame), len(frame))
        )
        out.append(frame)
    return b"".join(out)


def write_tone(name: str, directory: Path) -> Path:
    """Write the tone file ``name`` (a key of :data:`TONES`) into ``directory``."""
    payload_type, encode = TONES[name]
    path = directory / name
    path.write_bytes(_rtp_pcap(encode(_tone()), payload_type))
    return path
