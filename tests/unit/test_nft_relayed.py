"""The ``relayed`` counter objects over raw netlink (relayd/nft/relayed.py): exact bytes."""

from __future__ import annotations

import struct

from relayd.nft.netlink import attr, messages
from relayd.nft.relayed import ObjectCount, get_object_request, parse_object


def test_get_object_request_bytes() -> None:
    data = get_object_request(7, "relayd", "relayed4")
    # nlmsghdr: length, NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETOBJ, NLM_F_REQUEST, seq, pid
    assert data[:16] == struct.pack("=IHHII", len(data), 10 << 8 | 19, 1, 7, 0)
    assert data[16:20] == bytes([1, 0, 0, 0])  # nfgenmsg: NFPROTO_INET, version 0, res_id 0
    assert data[20:] == (
        struct.pack("=HH", 11, 1) + b"relayd\0" + b"\0"  # NFTA_OBJ_TABLE, padded
        + struct.pack("=HH", 13, 2) + b"relayed4\0" + b"\0\0\0"  # NFTA_OBJ_NAME
        + struct.pack("=HH", 8, 3) + struct.pack("!I", 1)  # NFTA_OBJ_TYPE: NFT_OBJECT_COUNTER
    )  # fmt: skip


def test_parse_object_reads_the_counter_of_a_newobj_reply() -> None:
    counter = attr(1, struct.pack("!Q", 17_200)) + attr(2, struct.pack("!Q", 100))
    body = (
        bytes([1, 0, 0, 0])
        + attr(1, b"relayd\0")
        + attr(2, b"relayed4\0")
        + attr(3, struct.pack("!I", 1))
        + attr(4 | 0x8000, counter)  # NFTA_OBJ_DATA, nested
    )
    reply = struct.pack("=IHHII", 16 + len(body), 10 << 8 | 18, 0, 7, 0) + body
    [(kind, seq, start, end)] = list(messages(reply))
    assert (kind, seq) == (10 << 8 | 18, 7)
    assert parse_object(reply, start + 4, end) == ObjectCount(packets=100, bytes=17_200)
    assert parse_object(reply, start + 4, start + 4 + 12) is None  # no NFTA_OBJ_DATA
