"""The netlink codec of nf_tables counter elements (relayd/nft/elements.py): keys as the
kernel's registers hold them, the requests, and the replies' counters and expiry. The
kernel side (real sets, real reads) is in tests/netns/test_nft_forward.py."""

from __future__ import annotations

import struct

import pytest

from relayd.nft import Endpoint, ForwardKey
from relayd.nft.elements import (
    NFTA_COUNTER_BYTES,
    NFTA_COUNTER_PACKETS,
    NFTA_DATA_VALUE,
    NFTA_EXPR_DATA,
    NFTA_EXPR_NAME,
    NFTA_LIST_ELEM,
    NFTA_SET_ELEM_EXPIRATION,
    NFTA_SET_ELEM_EXPR,
    NFTA_SET_ELEM_EXPRESSIONS,
    NFTA_SET_ELEM_KEY,
    NFTA_SET_ELEM_LIST_ELEMENTS,
    ElementCount,
    decode_key,
    encode_key,
    get_request,
    parse_elements,
)
from relayd.nft.netlink import NLA_F_NESTED

V4 = ForwardKey(Endpoint("198.51.100.7", 4000), Endpoint("203.0.113.1", 30000))
V6 = ForwardKey(Endpoint("2001:db8::7", 4000), Endpoint("2001:db8:4321::1", 30002))


def attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def nested(kind: int, *children: bytes) -> bytes:
    return attr(kind | NLA_F_NESTED, b"".join(children))


def counter(packets: int, size: int) -> bytes:
    return attr(NFTA_EXPR_NAME, b"counter\0") + nested(
        NFTA_EXPR_DATA,
        attr(NFTA_COUNTER_BYTES, struct.pack("!Q", size)),
        attr(NFTA_COUNTER_PACKETS, struct.pack("!Q", packets)),
    )


def element(key: bytes, *extra: bytes) -> bytes:
    return nested(NFTA_LIST_ELEM, nested(NFTA_SET_ELEM_KEY, attr(NFTA_DATA_VALUE, key)), *extra)


def test_keys_fill_32_bit_registers_in_network_order() -> None:
    assert encode_key(V4) == (
        bytes([198, 51, 100, 7]) + b"\x0f\xa0\0\0" + bytes([203, 0, 113, 1]) + b"\x75\x30\0\0"
    )
    assert len(encode_key(V6)) == 40
    assert decode_key(encode_key(V4)) == V4
    assert decode_key(encode_key(V6)) == V6
    with pytest.raises(ValueError):
        decode_key(b"\0" * 12)


def test_a_get_request_names_the_table_set_and_one_key() -> None:
    message = get_request(7, "relayd", "count4", encode_key(V4))
    length, kind, flags, seq, _ = struct.unpack_from("=IHHII", message)
    assert (length, seq) == (len(message), 7)
    assert kind == 10 << 8 | 13  # NFNL_SUBSYS_NFTABLES, NFT_MSG_GETSETELEM
    assert flags == 1  # a request, no dump, no acknowledgement: the element or an error
    assert message[16] == 1  # nfgenmsg family NFPROTO_INET
    body = message[20:]
    assert b"relayd\0" in body and b"count4\0" in body
    assert encode_key(V4) in body


def test_an_element_reads_as_its_counter_and_expiry() -> None:
    body = nested(
        NFTA_SET_ELEM_LIST_ELEMENTS,
        element(
            encode_key(V4),
            attr(NFTA_SET_ELEM_EXPIRATION, struct.pack("!Q", 86_397_500)),
            nested(NFTA_SET_ELEM_EXPR, counter(3, 600)),
        ),
        # a kernel that lists several expressions per element nests them in a list
        element(
            encode_key(V6),
            nested(NFTA_SET_ELEM_EXPRESSIONS, nested(NFTA_LIST_ELEM, counter(9, 1800))),
        ),
    )
    found = dict(parse_elements(body, 0, len(body)))
    assert found == {
        encode_key(V4): ElementCount(3, 600, 86_397_500),
        encode_key(V6): ElementCount(9, 1800, None),
    }


def test_an_element_without_a_counter_reads_as_nothing_counted() -> None:
    other = attr(NFTA_EXPR_NAME, b"limit\0")
    body = nested(
        NFTA_SET_ELEM_LIST_ELEMENTS, element(encode_key(V4), nested(NFTA_SET_ELEM_EXPR, other))
    )
    assert parse_elements(body, 0, len(body)) == [(encode_key(V4), ElementCount(0, 0, None))]
