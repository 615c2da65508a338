"""ctnetlink requests on exact bytes, with pyroute2's encoder as the oracle, and the
kernel's dump answers as Linux wrote them."""

from __future__ import annotations

import errno
import socket
import struct
from ipaddress import ip_address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relayd.nft.conntrack import (
    ConntrackError,
    _acks,
    delete_request,
    dump_entries,
    sweep_request,
)
from relayd.nft.ruleset import Endpoint

V4_REQUEST = bytes.fromhex(
    "48000000020105000700000000000000020000003400010014000100080001000a090001"
    "080002000a0900021c00020005000100110000000600020007d000000600030007cf0000"
)


def test_v4_request_bytes() -> None:
    assert delete_request(7, Endpoint("10.9.0.1", 2000), Endpoint("10.9.0.2", 1999)) == V4_REQUEST


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        (Endpoint("10.88.1.2", 4000), Endpoint("10.88.1.1", 30000)),
        (Endpoint("fd00:88::2:2", 5000), Endpoint("fd00:88::2:1", 30002)),
    ],
)
def test_requests_match_pyroute2(src: Endpoint, dst: Endpoint) -> None:
    nfct = pytest.importorskip("pyroute2.netlink.nfnetlink.nfctsocket")
    family = socket.AF_INET6 if src.version == 6 else socket.AF_INET
    tuple_orig = nfct.NFCTAttrTuple(
        family=family,
        saddr=src.address,
        daddr=dst.address,
        proto=17,
        sport=src.port,
        dport=dst.port,
    )
    msg = nfct.nfct_msg.create_from(tuple_orig=tuple_orig)
    msg["header"]["type"] = (1 << 8) | nfct.IPCTNL_MSG_CT_DELETE
    msg["header"]["flags"] = 0x1 | 0x4  # NLM_F_REQUEST | NLM_F_ACK
    msg["header"]["sequence_number"] = 42
    msg["nfgen_family"] = family
    msg.encode()
    assert delete_request(42, src, dst) == msg.data


def test_mixed_families_are_refused() -> None:
    with pytest.raises(ValueError, match="mixed"):
        delete_request(1, Endpoint("10.0.0.1", 1), Endpoint("::1", 2))


def _error(seq: int, err: int, original: bytes) -> bytes:
    body = struct.pack("=i", -err) + original[:16]
    return struct.pack("=IHHII", 16 + len(body), 2, 0x100, seq, 0) + body


def test_acknowledgements_are_read_from_a_buffer() -> None:
    buffer = _error(1, 0, V4_REQUEST) + _error(2, 2, V4_REQUEST) + _error(3, 1, V4_REQUEST)
    assert list(_acks(buffer)) == [(1, 0), (2, 2), (3, 1)]
    assert list(_acks(b"")) == []
    assert list(_acks(b"\0" * 16)) == []  # a zero length ends the walk


# -- the sweep's dump: request, and the kernel's answer as Linux 6.18 wrote it -------------

# 192.0.2.7:4000 -> 10.99.1.1:30000, never answered, dumped for sweep_request(9, 4)
V4_ENTRY = bytes.fromhex(
    "c00000000001220009000000d853000002000000340001801400018008000100c0000207080002000a630101"
    "1c0002800500010011000000060002000fa0000006000300753000003400028014000180080001000a630101"
    "08000200c00002071c00028005000100110000000600020075300000060003000fa000000800030000000008"
    "080008000000000008000c00860c8a7308000b000000000108000700000002581c0018800800010000000000"
    "08000200000000000800030000000000"
)
V4_DONE = bytes.fromhex("140000000300020009000000d853000000000000")
# [2001:db8::7]:4000 -> [fd00:99::1:1]:30002, dumped for sweep_request(11, 6)
V6_ENTRY = bytes.fromhex(
    "f0000000000122000b000000ec5300000a0000004c0001802c0001801400030020010db80000000000000000"
    "0000000714000400fd0000990000000000000000000100011c0002800500010011000000060002000fa00000"
    "06000300753200004c0002802c00018014000300fd0000990000000000000000000100011400040020010db8"
    "0000000000000000000000071c00028005000100110000000600020075320000060003000fa0000008000300"
    "00000008080008000000000008000c0000d9053708000b000000000108000700000002581c00188008000100"
    "0000000008000200000000000800030000000000"
)


@pytest.mark.parametrize("version", [4, 6])
def test_sweep_request_matches_pyroute2(version: int) -> None:
    """UDP only (CTA_FILTER on the protocol), status & (SEEN_REPLY|SRC_NAT|DST_NAT) == 0."""
    nfct = pytest.importorskip("pyroute2.netlink.nfnetlink.nfctsocket")
    family = socket.AF_INET6 if version == 6 else socket.AF_INET
    tuple_orig = nfct.NFCTAttrTuple(family=family, proto=17)
    tuple_orig.attrs()  # sets the filter flags
    msg = nfct.nfct_msg.create_from(
        tuple_orig=tuple_orig,
        cta_filter={"attrs": [["CTA_FILTER_ORIG_FLAGS", tuple_orig.flags]]},
        status=0,
        status_mask=(1 << 1) | (1 << 4) | (1 << 5),
    )
    msg["header"]["type"] = (1 << 8) | nfct.IPCTNL_MSG_CT_GET
    msg["header"]["flags"] = 0x1 | 0x300  # NLM_F_REQUEST | NLM_F_DUMP
    msg["header"]["sequence_number"] = 5
    msg["nfgen_family"] = family
    msg.encode()
    assert sweep_request(5, version) == msg.data


def test_dump_entries_reads_the_original_tuples() -> None:
    flows, done = dump_entries(V4_ENTRY + V4_DONE, 9)
    assert flows == [(bytes([192, 0, 2, 7]), 4000, bytes([10, 99, 1, 1]), 30000)]
    assert done
    flows, done = dump_entries(V6_ENTRY, 11)
    src, sport, dst, dport = flows[0]
    assert (ip_address(src), sport, ip_address(dst), dport) == (
        ip_address("2001:db8::7"),
        4000,
        ip_address("fd00:99::1:1"),
        30002,
    )
    assert not done  # the DONE comes in a later buffer


def test_dump_entries_skips_other_requests_and_reads_errors() -> None:
    assert dump_entries(V4_ENTRY + V4_DONE, 8) == ([], False)  # another request's answer
    assert dump_entries(b"", 9) == ([], False)
    refused = _error(9, errno.EOPNOTSUPP, V4_DONE)
    with pytest.raises(ConntrackError, match="not supported"):
        dump_entries(refused, 9)
    assert dump_entries(_error(9, 0, V4_DONE), 9) == ([], True)


def test_dump_entries_skips_entries_without_a_udp_tuple() -> None:
    # the same entry with its protocol number rewritten to TCP (6)
    tcp = bytearray(V4_ENTRY)
    proto = V4_ENTRY.index(bytes.fromhex("0500010011"))
    tcp[proto + 4] = 6
    assert dump_entries(bytes(tcp), 9) == ([], False)
    # cut short inside the original tuple: nothing is read past the message
    short = bytearray(V4_ENTRY[:60])
    short[0:4] = struct.pack("=I", 60)
    assert dump_entries(bytes(short), 9) == ([], False)


@given(st.binary(max_size=400), st.integers(min_value=0, max_value=2**31))
def test_dump_entries_never_fails_on_garbage(data: bytes, seq: int) -> None:
    try:
        flows, _done = dump_entries(data, seq)
    except ConntrackError:
        return
    assert all(len(flow) == 4 for flow in flows)


@given(st.integers(min_value=0, max_value=len(V4_ENTRY)))
def test_dump_entries_survives_any_truncation(cut: int) -> None:
    data = bytearray(V4_ENTRY[:cut])
    if cut >= 4:
        data[0:4] = struct.pack("=I", cut)
    flows, _done = dump_entries(bytes(data), 9)
    assert flows in ([], [(bytes([192, 0, 2, 7]), 4000, bytes([10, 99, 1, 1]), 30000)])
