"""HEPv3 encoding: exact bytes (rtpengine's chunk order), decoding, and what it refuses."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relayd.ops import hep
from relayd.ops.hep import CaptureProtocol, HepError, HepPacket

RTCP_JSON = HepPacket(
    source=("192.0.2.10", 5061),
    destination=("192.0.2.20", 40001),
    seconds=1_700_000_000,
    microseconds=250_000,
    protocol=CaptureProtocol.RTCP_JSON,
    capture_id=2001,
    correlation_id=b"a84b4c76e66710",
    payload=b'{"a":1}',
)

# Written out by hand from the HEPv3 layout, chunk by chunk, in the order rtpengine's
# send_hepv3() writes them: vendor 0, type, length (header included), value.
RTCP_JSON_BYTES = bytes.fromhex(
    "48455033 007e"  # "HEP3", total length 126
    "0000 0001 0007 02"  # IP family: AF_INET
    "0000 0002 0007 11"  # IP protocol: UDP
    "0000 0007 0008 13c5"  # source port 5061
    "0000 0008 0008 9c41"  # destination port 40001
    "0000 0009 000a 6553f100"  # seconds 1700000000
    "0000 000a 000a 0003d090"  # microseconds 250000
    "0000 000b 0007 05"  # capture protocol: RTCP as JSON
    "0000 000c 000a 000007d1"  # capture agent id 2001
    "0000 0003 000a c000020a"  # IPv4 source 192.0.2.10
    "0000 0004 000a c0000214"  # IPv4 destination 192.0.2.20
    "0000 0011 0014 6138346234633736653636373130"  # correlation id "a84b4c76e66710"
    "0000 000f 000d 7b2261223a317d"  # payload '{"a":1}'
)


def test_ipv4_packet_bytes() -> None:
    assert hep.encode(RTCP_JSON) == RTCP_JSON_BYTES


def test_ipv4_packet_decodes() -> None:
    assert hep.decode(RTCP_JSON_BYTES) == RTCP_JSON


def test_ipv6_ng_packet_bytes() -> None:
    packet = HepPacket(
        source=("2001:db8::1", 2223),
        destination=("2001:db8::2", 50000),
        seconds=1,
        microseconds=2,
        protocol=CaptureProtocol.NG,
        capture_id=0,
        correlation_id=b"",
        payload=b"c1 d7:command4:pinge",
    )
    expected = bytes.fromhex(
        "48455033 0095"  # 149 bytes
        "0000 0001 0007 0a"  # AF_INET6
        "0000 0002 0007 11"
        "0000 0007 0008 08af"
        "0000 0008 0008 c350"
        "0000 0009 000a 00000001"
        "0000 000a 000a 00000002"
        "0000 000b 0007 3d"  # ng, rtpengine's homer-ng-capture-proto default
        "0000 000c 000a 00000000"
        "0000 0005 0016 20010db8000000000000000000000001"
        "0000 0006 0016 20010db8000000000000000000000002"
        "0000 0011 0006"  # an empty correlation id is still written
        "0000 000f 001a 6331206437 3a636f6d6d616e64 343a70696e67 65"  # "c1 d7:command4:pinge"
    )
    assert hep.encode(packet) == expected
    assert hep.decode(expected) == packet


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"HEP2\x00\x06", "not a HEPv3 packet"),
        (RTCP_JSON_BYTES[:-1], "length field 126, packet 125 bytes"),
        (b"HEP3\x00\x09\x00\x00\x00", "truncated chunk header"),
        (b"HEP3\x00\x0c\x00\x00\x00\x01\x00\x09", "bad length 9 of chunk type 1"),
        (
            RTCP_JSON_BYTES.replace(bytes.fromhex("007e"), bytes.fromhex("007d"), 1).replace(
                bytes.fromhex("0000 0003 000a c000020a"), bytes.fromhex("0000 0003 0009 c00002")
            ),
            "address chunk of the wrong size",
        ),
    ],
)
def test_malformed_packets_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(HepError, match=message):
        hep.decode(data)


def test_mixed_families_are_refused() -> None:
    with pytest.raises(HepError):
        hep.encode(HepPacket(("192.0.2.1", 1), ("2001:db8::1", 2), 0, 0, 5, 0, b"", b""))


_ipv4 = st.ip_addresses(v=4).map(str)
_port = st.integers(0, 65535)


@given(
    src=_ipv4,
    dst=_ipv4,
    ports=st.tuples(_port, _port),
    seconds=st.integers(0, 2**32 - 1),
    micro=st.integers(0, 999_999),
    protocol=st.integers(0, 255),
    capture_id=st.integers(0, 2**32 - 1),
    correlation=st.binary(max_size=200),
    payload=st.binary(max_size=2000),
)
def test_round_trip(
    src: str,
    dst: str,
    ports: tuple[int, int],
    seconds: int,
    micro: int,
    protocol: int,
    capture_id: int,
    correlation: bytes,
    payload: bytes,
) -> None:
    packet = HepPacket(
        (src, ports[0]), (dst, ports[1]), seconds, micro, protocol, capture_id, correlation, payload
    )
    assert hep.decode(hep.encode(packet)) == packet


@given(st.binary(max_size=300))
def test_decoder_never_crashes(data: bytes) -> None:
    with contextlib.suppress(HepError):
        hep.decode(b"HEP3" + (len(data) + 6).to_bytes(2, "big") + data)
