"""relayd/recording/pcap.py: the records as rtpengine 10.5 writes them, read back independently."""

from __future__ import annotations

import pytest

from relayd.recording.pcap import (
    GLOBAL_HEADER_LEN,
    MAX_UDP_PAYLOAD,
    HeaderMaker,
    global_header,
    record_header,
    whole_length,
    whole_records,
)
from tests.support.pcap import RTPENGINE_RAW_FILE, Datagram, read_pcap

RTP = bytes.fromhex("80000000 00000000 0000aaaa") + bytes(160)


def _capture(
    record_format: str, *packets: tuple[float, tuple[str, int], tuple[str, int], bytes]
) -> list[Datagram]:
    maker = HeaderMaker(record_format)  # type: ignore[arg-type]
    data = global_header(record_format)  # type: ignore[arg-type]
    for when, src, dst, payload in packets:
        data += maker.headers(when, src, dst, len(payload)) + payload
    capture = read_pcap(data)
    assert capture.trailing == 0
    assert (capture.version, capture.thiszone, capture.sigfigs, capture.snaplen) == (
        (2, 4), 0, 0, 65535,
    )  # fmt: skip
    assert capture.linktype == {"raw": 101, "eth": 1}[record_format]
    return capture.datagrams


def test_raw_ipv4_record_is_rtpengines_byte_for_byte() -> None:
    maker = HeaderMaker("raw")
    when = 1796553436.264634
    data = global_header("raw") + maker.headers(
        when, ("127.0.0.1", 34100), ("127.0.0.1", 34520), len(RTP)
    )
    assert data + RTP == RTPENGINE_RAW_FILE


def test_ipv4_fields() -> None:
    [one] = _capture("raw", (5.25, ("192.0.2.1", 4000), ("198.51.100.7", 30000), RTP))
    assert (one.seconds, one.micros, one.caplen, one.length) == (5, 250000, 200, 200)
    assert one.ethernet is None
    assert one.ip_header[0] == 0x45
    assert (one.tos, one.total_length, one.identification, one.flags_fragment) == (0, 200, 0, 0)
    assert (one.ttl, one.protocol, one.checksum) == (64, 17, 0)
    assert (one.source, one.destination) == ("192.0.2.1", "198.51.100.7")
    assert (one.source_port, one.destination_port, one.udp_length, one.udp_checksum) == (
        4000, 30000, 180, 0,
    )  # fmt: skip
    assert one.payload == RTP


def test_ipv6_fields() -> None:
    [one] = _capture("raw", (7.0, ("2001:db8::1", 4001), ("2001:db8::2", 30001), b"\x81\xc9"))
    assert (one.caplen, one.length) == (40 + 8 + 2, 50)
    assert one.ip_header[0] >> 4 == 6
    assert (one.flow, one.payload_length, one.protocol, one.ttl) == (0, 10, 17, 64)
    assert (one.source, one.destination) == ("2001:db8::1", "2001:db8::2")
    assert (one.udp_length, one.udp_checksum, one.payload) == (10, 0, b"\x81\xc9")


@pytest.mark.parametrize(
    ("src", "dst", "ethertype"),
    [("10.0.0.1", "10.0.0.2", "0800"), ("fd00::1", "fd00::2", "86dd")],
)
def test_eth_header_has_zero_macs_and_the_ethertype(src: str, dst: str, ethertype: str) -> None:
    [one] = _capture("eth", (1.0, (src, 1), (dst, 2), RTP))
    assert one.ethernet == bytes(12) + bytes.fromhex(ethertype)
    assert one.caplen == 14 + len(one.ip_header) + 8 + len(RTP)


def test_a_call_may_mix_families_record_by_record() -> None:
    v4, v6 = _capture(
        "eth",
        (1.0, ("10.0.0.1", 1), ("10.0.0.2", 2), RTP),
        (1.1, ("fd00::1", 3), ("fd00::2", 4), RTP),
    )
    assert (v4.ip_version, v6.ip_version) == (4, 6)


def test_ipv4_mapped_addresses_are_written_as_ipv4() -> None:
    [one] = _capture("raw", (1.0, ("::ffff:10.0.0.1", 1), ("10.0.0.2", 2), RTP))
    assert (one.ip_version, one.source) == (4, "10.0.0.1")


def test_scope_ids_are_dropped() -> None:
    [one] = _capture("raw", (1.0, ("fe80::1%eth0", 1), ("fe80::2", 2), RTP))
    assert one.source == "fe80::1"


def test_mixed_families_in_one_datagram_are_refused() -> None:
    with pytest.raises(ValueError, match="not of one IP version"):
        HeaderMaker("raw").headers(1.0, ("10.0.0.1", 1), ("fd00::2", 2), 10)


def test_oversized_payload_is_refused() -> None:
    maker = HeaderMaker("raw")
    maker.headers(1.0, ("10.0.0.1", 1), ("10.0.0.2", 2), MAX_UDP_PAYLOAD)
    with pytest.raises(ValueError, match="does not fit"):
        maker.headers(1.0, ("10.0.0.1", 1), ("10.0.0.2", 2), MAX_UDP_PAYLOAD + 1)


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="raw or eth"):
        global_header("pcapng")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("when", "seconds", "micros"),
    [(0.0, 0, 0), (1.0000004, 1, 0), (1.9999996, 2, 0), (1796553436.264634, 1796553436, 264634)],
)
def test_timestamps_round_to_microseconds(when: float, seconds: int, micros: int) -> None:
    data = record_header(when, 0)
    assert int.from_bytes(data[0:4], "little") == seconds
    assert int.from_bytes(data[4:8], "little") == micros


def test_address_cache_is_bounded() -> None:
    maker = HeaderMaker("raw", cache_size=4)
    for port in range(10):
        maker.headers(1.0, ("10.0.0.1", port), ("10.0.0.2", 2), 0)
        assert len(maker._cache) <= 4


def test_whole_records_and_length_of_cut_files() -> None:
    two = RTPENGINE_RAW_FILE + RTPENGINE_RAW_FILE[GLOBAL_HEADER_LEN:]
    record = len(RTPENGINE_RAW_FILE) - GLOBAL_HEADER_LEN
    assert whole_records(two) == (len(two), 2)
    for cut in range(1, record + 1):
        assert whole_records(two[:-cut]) == (GLOBAL_HEADER_LEN + record, 1)
    assert whole_length(two[:-1]) == GLOBAL_HEADER_LEN + record
    assert whole_length(two[:10]) == 0
    assert whole_length(b"\x0a\x0d\x0d\x0a" + two[4:]) == 0
