"""The pcap records rtpengine 10.5's pcap recording method writes (pure: bytes in, bytes out).

rtpengine keeps no copy of the packet as it came off the wire: it writes the UDP payload it
received (RTP or RTCP, after SRTP decryption) behind IP and UDP headers it makes up itself.
What follows was read from rtpengine 10.5.3.5's own output (tests/interop/
test_recording_oracle.py compares against it byte for byte):

* **Global header**: classic libpcap (not pcapng), written in the host's byte order (so
  ``d4 c3 b2 a1`` on x86-64 and arm64), version 2.4, thiszone 0, sigfigs 0, snaplen 65535,
  microsecond timestamps. Link type 101 (LINKTYPE_RAW: the record starts with the IP header)
  for ``recording-format = raw``, 1 (LINKTYPE_ETHERNET) for ``eth``.
* **Record header**: the time the packet was handled (seconds, microseconds); captured length
  equals original length (nothing is cut at the snaplen).
* **Ethernet** (``eth`` only): 14 bytes, both MAC addresses all zero, then the EtherType of
  the IP header that follows (0x0800 or 0x86dd).
* **IPv4**: 20 bytes, version 4, IHL 5, TOS 0, total length, identification 0, no flags
  (DF clear), fragment offset 0, TTL 64, protocol 17, **header checksum 0** (not computed),
  source, destination.
* **IPv6**: 40 bytes, version 6, traffic class and flow label 0, payload length, next header
  17, hop limit 64, source, destination.
* **UDP**: source port, destination port, length, **checksum 0** (not computed, also over
  IPv6, where RFC 8200 §8.1 would require one: Wireshark shows it as missing, not wrong).
* **Which addresses**: the source is the peer the datagram came from, the destination the
  relay's own socket that received it. Only received datagrams are written (each leg's
  media once, as it arrived), never what the relay sent on.
"""

from __future__ import annotations

import ipaddress
import mmap
import struct
import sys
from dataclasses import dataclass
from enum import IntEnum
from typing import Literal

__all__ = [
    "ETHERNET_HEADER_LEN",
    "GLOBAL_HEADER_LEN",
    "MAX_UDP_PAYLOAD",
    "RECORD_HEADER_LEN",
    "SNAPLEN",
    "EtherType",
    "HeaderMaker",
    "LinkType",
    "RecordFormat",
    "Scan",
    "global_header",
    "link_type",
    "record_header",
    "scan",
    "whole_length",
    "whole_records",
]

RecordFormat = Literal["raw", "eth"]
Readable = bytes | bytearray | memoryview | mmap.mmap


class LinkType(IntEnum):
    """The pcap file's link type (tcpdump.org's LINKTYPE_* values, as stored in the file)."""

    ETHERNET = 1
    RAW = 101


class EtherType(IntEnum):
    IPV4 = 0x0800
    IPV6 = 0x86DD


SNAPLEN = 65535
GLOBAL_HEADER_LEN = 24
RECORD_HEADER_LEN = 16
ETHERNET_HEADER_LEN = 14
_IPV4_HEADER_LEN = 20
_IPV6_HEADER_LEN = 40
_UDP_HEADER_LEN = 8
_TTL = 64
_PROTO_UDP = 17
# the IPv4 total length is 16 bits and counts both headers; the UDP length counts its own
MAX_UDP_PAYLOAD = 0xFFFF - _IPV4_HEADER_LEN - _UDP_HEADER_LEN

# libpcap writes in the host's byte order; readers tell it from the magic number
_ORDER = "<" if sys.byteorder == "little" else ">"
_GLOBAL = struct.Struct(_ORDER + "IHHiIII")
_RECORD = struct.Struct(_ORDER + "IIII")
_MAGIC_MICROSECONDS = 0xA1B2C3D4
_ETHERNET = {family: bytes(12) + struct.pack("!H", family) for family in EtherType}
# version/IHL, TOS, total length, id, flags/fragment, TTL, protocol, checksum (0), src, dst;
# then UDP source, destination, length, checksum (0)
_IPV4_UDP = struct.Struct("!BBHHHBBH4s4sHHHH")
# version/class/flow, payload length, next header, hop limit, src, dst; then UDP as above
_IPV6_UDP = struct.Struct("!IHBB16s16sHHHH")


def link_type(record_format: RecordFormat) -> LinkType:
    """The link type of ``recording-format`` (ValueError for anything but raw and eth)."""
    if record_format == "raw":
        return LinkType.RAW
    if record_format == "eth":
        return LinkType.ETHERNET
    raise ValueError(f"recording-format must be raw or eth, not {record_format!r}")


def global_header(record_format: RecordFormat) -> bytes:
    """The 24 bytes a pcap file starts with, as libpcap's pcap_dump_open writes them."""
    return _GLOBAL.pack(_MAGIC_MICROSECONDS, 2, 4, 0, 0, SNAPLEN, link_type(record_format))


def record_header(when: float, length: int) -> bytes:
    """A record's 16-byte header: ``when`` in whole microseconds, caplen = len = ``length``."""
    seconds, micros = divmod(round(when * 1_000_000), 1_000_000)
    return _RECORD.pack(seconds, micros, length, length)


def _packed(address: str) -> tuple[int, bytes]:
    """(IP version, packed address); an IPv4-mapped IPv6 address counts as the IPv4 one,
    as a dual-stack socket reports an IPv4 peer that way."""
    ip = ipaddress.ip_address(address.partition("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.version, ip.packed


class HeaderMaker:
    """Builds the bytes of one record (record header, Ethernet, IP, UDP) before a payload.

    Addresses are parsed once per (source, destination) pair and kept (a call has a handful
    of them); the cache is emptied when it holds ``cache_size`` pairs, so a call whose peer
    keeps moving costs memory only up to that bound.
    """

    __slots__ = ("_cache", "_cache_size", "_ethernet")

    def __init__(self, record_format: RecordFormat, *, cache_size: int = 64) -> None:
        self._ethernet = link_type(record_format) == LinkType.ETHERNET
        self._cache: dict[tuple[tuple[str, int], tuple[str, int]], tuple[int, bytes, bytes]] = {}
        self._cache_size = cache_size

    def _addresses(
        self, source: tuple[str, int], destination: tuple[str, int]
    ) -> tuple[int, bytes, bytes]:
        key = (source, destination)
        found = self._cache.get(key)
        if found is None:
            version, src = _packed(source[0])
            dst_version, dst = _packed(destination[0])
            if version != dst_version:
                raise ValueError(f"{source[0]} and {destination[0]} are not of one IP version")
            if len(self._cache) >= self._cache_size:
                self._cache.clear()
            found = self._cache[key] = (version, src, dst)
        return found

    def headers(
        self, when: float, source: tuple[str, int], destination: tuple[str, int], size: int
    ) -> bytes:
        """Everything of the record before a UDP payload of ``size`` bytes.

        ValueError when the addresses are not of one IP version or the payload does not fit
        a UDP datagram (more than 65507 bytes).
        """
        if size > MAX_UDP_PAYLOAD or size < 0:
            raise ValueError(f"a UDP payload of {size} bytes does not fit an IPv4 datagram")
        version, src, dst = self._addresses(source, destination)
        udp_len = _UDP_HEADER_LEN + size
        if version == 4:
            ip = _IPV4_UDP.pack(
                0x45, 0, _IPV4_HEADER_LEN + udp_len, 0, 0, _TTL, _PROTO_UDP, 0,
                src, dst, source[1], destination[1], udp_len, 0,
            )  # fmt: skip
            ether = _ETHERNET[EtherType.IPV4]
        else:
            ip = _IPV6_UDP.pack(
                0x60000000, udp_len, _PROTO_UDP, _TTL, src, dst,
                source[1], destination[1], udp_len, 0,
            )  # fmt: skip
            ether = _ETHERNET[EtherType.IPV6]
        if self._ethernet:
            return record_header(when, ETHERNET_HEADER_LEN + len(ip) + size) + ether + ip
        return record_header(when, len(ip) + size) + ip


def whole_records(data: Readable, start: int = GLOBAL_HEADER_LEN) -> tuple[int, int]:
    """(end of the last whole record, number of whole records) of ``data``, reading records
    from ``start`` on: what a file cut short keeps once trimmed to that end."""
    end, count = start, 0
    while end + RECORD_HEADER_LEN <= len(data):
        following = end + RECORD_HEADER_LEN + _RECORD.unpack_from(data, end)[2]
        if following > len(data):
            break
        end, count = following, count + 1
    return end, count


@dataclass(frozen=True, slots=True)
class Scan:
    """What a pcap file written here holds: its whole part, records, format, first time."""

    whole: int  # bytes up to the end of the last whole record; 0: no header of ours
    records: int
    record_format: RecordFormat | None
    first: float | None  # the first record's time


def scan(data: Readable) -> Scan:
    """Read a pcap file this module wrote (``data`` may be an mmap of it)."""
    if len(data) < GLOBAL_HEADER_LEN or _GLOBAL.unpack_from(data)[0] != _MAGIC_MICROSECONDS:
        return Scan(0, 0, None, None)
    linktype = _GLOBAL.unpack_from(data)[6]
    record_format: RecordFormat | None = (
        "raw" if linktype == LinkType.RAW else "eth" if linktype == LinkType.ETHERNET else None
    )
    whole, records = whole_records(data)
    first = None
    if records:
        seconds, micros = _RECORD.unpack_from(data, GLOBAL_HEADER_LEN)[:2]
        first = seconds + micros / 1_000_000
    return Scan(whole, records, record_format, first)


def whole_length(data: Readable) -> int:
    """How many bytes of a pcap file's contents are whole: 0 unless the global header is
    there (and is one this module writes), else up to the last whole record."""
    return scan(data).whole
