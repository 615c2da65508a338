"""An independent pcap reader for the recording tests (tested in test_recording_reader.py).

Written from the pcap and IP/UDP header layouts (tcpdump.org's pcap format; RFC 791,
RFC 8200, RFC 768), not from relayd/recording/pcap.py, so that a mistake there is not
repeated here. Every field is kept, so that a test can assert each one.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Capture", "Datagram", "read_pcap", "read_pcap_file"]


@dataclass(frozen=True)
class Datagram:
    seconds: int
    micros: int
    caplen: int
    length: int
    ethernet: bytes | None  # the 14 bytes, with link type 1
    ip_version: int
    ip_header: bytes
    # IPv4 fields (None for IPv6)
    tos: int | None
    total_length: int | None
    identification: int | None
    flags_fragment: int | None
    ttl: int  # IPv6: the hop limit
    protocol: int  # IPv6: next header
    checksum: int | None
    # IPv6 fields (None for IPv4)
    flow: int | None
    payload_length: int | None
    source: str
    destination: str
    source_port: int
    destination_port: int
    udp_length: int
    udp_checksum: int
    payload: bytes

    @property
    def record(self) -> bytes:
        """The record's bytes after its pcap header."""
        return (self.ethernet or b"") + self.ip_header + self.udp_header + self.payload

    @property
    def udp_header(self) -> bytes:
        return struct.pack(
            "!HHHH", self.source_port, self.destination_port, self.udp_length, self.udp_checksum
        )


@dataclass(frozen=True)
class Capture:
    byte_order: str
    version: tuple[int, int]
    thiszone: int
    sigfigs: int
    snaplen: int
    linktype: int
    datagrams: list[Datagram]
    trailing: int  # bytes after the last whole record


def _datagram(header: tuple[int, int, int, int], data: bytes, linktype: int) -> Datagram:
    ethernet = None
    if linktype == 1:
        ethernet, data = data[:14], data[14:]
    elif linktype != 101:
        raise ValueError(f"unexpected link type {linktype}")
    version = data[0] >> 4
    if version == 4:
        ihl = (data[0] & 0x0F) * 4
        tos, total, ident, flags, ttl, proto, csum = struct.unpack("!xBHHHBBH", data[:12])
        src = str(ipaddress.IPv4Address(data[12:16]))
        dst = str(ipaddress.IPv4Address(data[16:20]))
        ip_header, rest = data[:ihl], data[ihl:]
        flow = plen = None
    elif version == 6:
        first, plen, proto, ttl = struct.unpack("!IHBB", data[:8])
        flow = first & 0x0FFFFFFF
        src = str(ipaddress.IPv6Address(data[8:24]))
        dst = str(ipaddress.IPv6Address(data[24:40]))
        ip_header, rest = data[:40], data[40:]
        tos = total = ident = flags = csum = None
    else:
        raise ValueError(f"IP version {version}")
    sport, dport, ulen, ucsum = struct.unpack("!HHHH", rest[:8])
    return Datagram(
        header[0], header[1], header[2], header[3], ethernet, version, ip_header,
        tos, total, ident, flags, ttl, proto, csum, flow, plen,
        src, dst, sport, dport, ulen, ucsum, rest[8:],
    )  # fmt: skip


def read_pcap(data: bytes) -> Capture:
    magic = data[:4]
    if magic == b"\xd4\xc3\xb2\xa1":
        order = "<"
    elif magic == b"\xa1\xb2\xc3\xd4":
        order = ">"
    else:
        raise ValueError(f"not a microsecond pcap: {magic.hex()}")
    major, minor, zone, sigfigs, snaplen, linktype = struct.unpack(order + "HHiIII", data[4:24])
    offset = 24
    datagrams = []
    while offset + 16 <= len(data):
        header = struct.unpack(order + "IIII", data[offset : offset + 16])
        end = offset + 16 + header[2]
        if end > len(data):
            break
        datagrams.append(_datagram(header, data[offset + 16 : end], linktype))
        offset = end
    return Capture(
        order, (major, minor), zone, sigfigs, snaplen, linktype, datagrams, len(data) - offset
    )


def read_pcap_file(path: str | Path) -> Capture:
    return read_pcap(Path(path).read_bytes())


# One record of rtpengine 10.5.3.5's own output (recording-format = raw): an RTP packet with
# 12 bytes of header and 160 of payload from 127.0.0.1:34100 to its socket 127.0.0.1:34520.
RTPENGINE_RAW_FILE = (
    bytes.fromhex("d4c3b2a1 0200 0400 00000000 00000000 ffff0000 65000000")
    + struct.pack("<IIII", 1796553436, 264634, 200, 200)
    + bytes.fromhex("450000c8 00000000 40110000 7f000001 7f000001 853486d8 00b40000")
    + bytes.fromhex("80000000 00000000 0000aaaa")
    + bytes(160)
)
