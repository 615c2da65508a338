"""The audio each sipp agent plays: a tone as RTP packets in a libpcap file, made when needed.

Two seconds of a 440 Hz tone at 8 kHz in G.711, μ-law (``tone-pcmu.pcap``, payload type 0)
or A-law (``tone-pcma.pcap``, payload type 8), as 100 RTP packets of 160 bytes, 20 ms
apart, in Ethernet/IPv4/UDP frames of a classic libpcap file. sipp's ``play_pcap_audio``
replays it per call, rewriting addresses and ports to the call's own media port
(``[auto_media_port]``) and the peer's SDP address. The files are written into each
agent's working directory when it starts (nothing binary is kept in the repository).

``dtmf-pcmu.pcap`` is PCMU silence with RFC 4733 digits (payload type 101) in it.

(sipp 3.6.1's ``rtp_stream`` is no alternative here: it sends every call's stream from the
one ``-mp`` port, and relayd learns endpoints per call.)
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from pathlib import Path

from tests.support.tone import alaw_encode, mulaw_encode

__all__ = ["DTMF_DIGITS", "DTMF_PACKETS", "DTMF_PCAP", "TONES", "TONE_PACKETS", "write_tone"]

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

# RFC 4733 digits among PCMU silence (``dtmf-pcmu.pcap``, :func:`_dtmf_packets`): what the
# DTMF interop test (tests/interop/test_kamailio_dtmf_block.py) plays
DTMF_PCAP = "dtmf-pcmu.pcap"
DTMF_DIGITS = "159"
DTMF_PACKETS = 50 + 17 * len(DTMF_DIGITS)

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


def _pcap(packets: list[bytes]) -> bytes:
    """RTP ``packets``, ``PTIME_MS`` apart, in a libpcap file."""
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, _LINKTYPE_ETHERNET)]
    for index, packet in enumerate(packets):
        frame = _frame(packet, index + 1)
        usec = index * PTIME_MS * 1000
        out.append(
            struct.pack("<IIII", usec // 1_000_000, usec % 1_000_000, len(frame), len(frame))
        )
        out.append(frame)
    return b"".join(out)


def _rtp_pcap(audio: bytes, payload_type: int) -> bytes:
    """``audio`` as RTP packets of ``PTIME_MS`` each in a libpcap file."""
    samples = RATE * PTIME_MS // 1000
    packets = []
    for index in range(len(audio) // samples):
        marker = 0x80 if index == 0 else 0
        header = struct.pack(
            "!BBHII", 0x80, marker | payload_type, index + 1, index * samples, SSRC
        )
        packets.append(header + audio[index * samples : (index + 1) * samples])
    return _pcap(packets)


def _dtmf_packets() -> list[bytes]:
    """PCMU silence with :data:`DTMF_DIGITS` as RFC 4733 events (payload type 101, volume 10):
    1 s of silence, then each digit for 100 ms (five packets, durations 160 to 800, the
    first marked, the end sent three times) and 200 ms of silence after it."""
    samples = RATE * PTIME_MS // 1000
    packets: list[bytes] = []

    def add(payload_type: int, ts: int, payload: bytes) -> None:
        header = struct.pack("!BBHII", 0x80, payload_type, len(packets) + 1, ts, SSRC)
        packets.append(header + payload)

    slot = 0
    for _ in range(50):
        add(0, slot * samples, b"\xff" * samples)
        slot += 1
    for digit in DTMF_DIGITS:
        code, start = "0123456789*#ABCD".index(digit), slot * samples
        for step in range(7):
            duration = min(step + 1, 5) * samples
            end = 0x80 if step >= 4 else 0
            add(
                101 | (0x80 if step == 0 else 0),
                start,
                bytes((code, end | 10)) + duration.to_bytes(2, "big"),
            )
            slot += 1
        for _ in range(10):
            add(0, slot * samples, b"\xff" * samples)
            slot += 1
    return packets


def write_tone(name: str, directory: Path) -> Path:
    """Write the media file ``name`` (a key of :data:`TONES`, or :data:`DTMF_PCAP`) into
    ``directory``."""
    path = directory / name
    if name == DTMF_PCAP:
        path.write_bytes(_pcap(_dtmf_packets()))
        return path
    payload_type, encode = TONES[name]
    path.write_bytes(_rtp_pcap(encode(_tone()), payload_type))
    return path
