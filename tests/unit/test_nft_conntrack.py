"""ctnetlink delete requests on exact bytes, with pyroute2's encoder as the oracle."""

from __future__ import annotations

import socket
import struct

import pytest

from relayd.nft.conntrack import _acks, delete_request
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
