"""Tests of the pcap reader the recording tests share (tests/support/pcap.py)."""

from __future__ import annotations

import pytest

from tests.support.pcap import RTPENGINE_RAW_FILE, read_pcap


def test_reader_reads_rtpengine_output() -> None:
    capture = read_pcap(RTPENGINE_RAW_FILE)
    assert (capture.byte_order, capture.version, capture.snaplen, capture.linktype) == (
        "<", (2, 4), 65535, 101,
    )  # fmt: skip
    [one] = capture.datagrams
    assert (one.seconds, one.micros, one.caplen, one.length) == (1796553436, 264634, 200, 200)
    assert (one.ip_version, one.ttl, one.protocol, one.checksum, one.identification) == (
        4, 64, 17, 0, 0,
    )  # fmt: skip
    assert (one.source, one.source_port, one.destination, one.destination_port) == (
        "127.0.0.1", 34100, "127.0.0.1", 34520,
    )  # fmt: skip
    assert (one.udp_length, one.udp_checksum, len(one.payload)) == (180, 0, 172)
    assert one.record == RTPENGINE_RAW_FILE[40:]
    assert capture.trailing == 0


def test_reader_stops_at_a_torn_record() -> None:
    capture = read_pcap(RTPENGINE_RAW_FILE[:-1])
    assert capture.datagrams == []
    assert capture.trailing == 16 + 199


def test_reader_refuses_other_files() -> None:
    with pytest.raises(ValueError, match="not a microsecond pcap"):
        read_pcap(b"\x0a\x0d\x0d\x0a" + bytes(20))  # pcapng
