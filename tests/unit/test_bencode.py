"""Bencode codec: exact bytes out, lenient key order in, exact errors for the rest."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relayd.ng import bencode
from relayd.ng.bencode import BencodeError

KAMAILIO_NG = Path(__file__).resolve().parent.parent / "data" / "kamailio-ng"


def _kamailio_offer() -> dict[str, Any]:
    """The first offer Kamailio 5.6 sent in the captured basic call, in its key order."""
    for line in (KAMAILIO_NG / "basic.jsonl").read_text().splitlines():
        entry = json.loads(line)
        if entry["dir"] == "req" and entry["msg"]["command"] == "offer":
            msg: dict[str, Any] = entry["msg"]
            return msg
    raise AssertionError("no offer in basic.jsonl")


@pytest.mark.parametrize(
    ("value", "wire"),
    [
        (0, b"i0e"),
        (42, b"i42e"),
        (-7, b"i-7e"),
        (2**63, b"i9223372036854775808e"),
        (True, b"i1e"),
        ("", b"0:"),
        ("ping", b"4:ping"),
        ("é", b"2:\xc3\xa9"),
        ("☎ call", b"8:\xe2\x98\x8e call"),
        (b"\x00\xff", b"2:\x00\xff"),
        ([], b"le"),
        ((1, "a"), b"li1e1:ae"),
        ({}, b"de"),
        ({"result": "pong"}, b"d6:result4:ponge"),
        # the edges of the encoder's tables of length prefixes and small integers
        ([1023, 1024, -1], b"li1023ei1024ei-1ee"),
        ("x" * 1023, b"1023:" + b"x" * 1023),
        ("x" * 1024, b"1024:" + b"x" * 1024),
        # one string that is not ASCII: every length is counted in bytes again
        ({"a": "ab", "b": "é", "c": ["é", 7]}, b"d1:a2:ab1:b2:\xc3\xa91:cl2:\xc3\xa9i7eee"),
        (
            {"flags": ["trust-address"], "codec": {"strip": ["PCMA"]}},
            b"d5:flagsl13:trust-addresse5:codecd5:stripl4:PCMAeee",
        ),
    ],
)
def test_encode_exact_bytes(value: object, wire: bytes) -> None:
    assert bencode.encode(value) == wire


def test_encode_keeps_insertion_order_like_rtpengine() -> None:
    assert bencode.encode({"sdp": "x", "result": "ok"}) == b"d3:sdp1:x6:result2:oke"


def test_encode_refuses_other_types() -> None:
    with pytest.raises(TypeError, match="cannot bencode NoneType"):
        bencode.encode({"a": None})


@pytest.mark.parametrize(
    ("wire", "value"),
    [
        (b"i0e", 0),
        (b"i-1e", -1),
        (b"i1234567890123e", 1234567890123),
        (b"0:", ""),
        (b"2:\xc3\xa9", "é"),
        (b"le", []),
        (b"li1el1:aee", [1, ["a"]]),
        (b"d1:ad1:bi2eee", {"a": {"b": 2}}),
    ],
)
def test_decode_exact_values(wire: bytes, value: object) -> None:
    assert bencode.decode(wire) == value


def test_decode_accepts_unsorted_keys_and_keeps_their_order() -> None:
    decoded = bencode.decode(b"d3:sdp1:x7:command5:offere")
    assert decoded == {"sdp": "x", "command": "offer"}
    assert isinstance(decoded, dict)
    assert list(decoded) == ["sdp", "command"]


def test_decode_real_kamailio_offer_in_kamailio_key_order() -> None:
    offer = _kamailio_offer()
    keys = list(offer)
    assert keys != sorted(keys), "the capture keeps Kamailio's (unsorted) order"
    # and once more with sdp first, the order the module adds keys in for offers
    sdp_first = {"sdp": offer["sdp"], **{k: v for k, v in offer.items() if k != "sdp"}}
    for message in (offer, sdp_first):
        wire = bencode.encode(message)
        assert wire.startswith(b"d" + bencode.encode(next(iter(message))))
        decoded = bencode.decode(wire)
        assert decoded == message
        assert isinstance(decoded, dict)
        assert list(decoded) == list(message)
    wire = bencode.encode(sdp_first)
    assert wire.startswith(b"d3:sdp221:v=0\r\no=caller 53655765 ")
    assert wire.endswith(b"8:from-tag9:28964UAC17:command5:offere")


def test_decode_duplicate_key_last_wins() -> None:
    assert bencode.decode(b"d1:ai1e1:ai2ee") == {"a": 2}


@pytest.mark.parametrize(
    "wire",
    [b"", b"i", b"i12", b"i-", b"l", b"li1e", b"d", b"d1:a", b"d1:ai1e", b"5:ab", b"3", b"10"],
)
def test_decode_truncated(wire: bytes) -> None:
    with pytest.raises(BencodeError, match=r"^truncated data$"):
        bencode.decode(wire)


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        # BEP 3 canonical integers only; rtpengine rejects these too (i-0e on TCP)
        (b"i-0e", "bad integer at offset 0"),
        (b"i01e", "bad integer at offset 0"),
        (b"i-01e", "bad integer at offset 0"),
        (b"i00e", "bad integer at offset 0"),
        (b"ie", "bad integer at offset 0"),
        (b"i-e", "bad integer at offset 0"),
        (b"i+1e", "bad integer at offset 0"),
        (b"i 1e", "bad integer at offset 0"),
        (b"i1-2e", "bad integer at offset 0"),
        (b"i--1e", "bad integer at offset 0"),
        (b"i\xd9\xa1e", "bad integer at offset 0"),  # ARABIC-INDIC DIGIT ONE
        (b"li1ei2xe", "bad integer at offset 4"),
        (b"i1x", "bad integer at offset 0"),  # cannot become an integer: not "truncated"
        (b"i-0", "bad integer at offset 0"),
        (b"01:a", "bad string length at offset 0"),
        (b"1x:a", "bad string length at offset 0"),
        (b"1x", "bad string length at offset 0"),
        (b"-1:a", "unexpected byte 0x2d at offset 0"),
        (b"x", "unexpected byte 0x78 at offset 0"),
        (b"d1:ae", "unexpected byte 0x65 at offset 4"),
        (b"i1ei2e", "trailing data at offset 3"),
        (b"de ", "trailing data at offset 2"),
        (b"4:pingx", "trailing data at offset 6"),
    ],
)
def test_decode_errors(wire: bytes, message: str) -> None:
    with pytest.raises(BencodeError) as info:
        bencode.decode(wire)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("wire", "offset"),
    [(b"di1ei2ee", 1), (b"dli1eei2ee", 1), (b"d1:ai1edeli1eee", 7)],
)
def test_decode_non_string_key(wire: bytes, offset: int) -> None:
    with pytest.raises(BencodeError) as info:
        bencode.decode(wire)
    assert str(info.value) == f"dictionary key is not a string at offset {offset}"


def test_decode_huge_integer_is_a_bencode_error() -> None:
    # more digits than int() converts: must not escape as a plain ValueError
    with pytest.raises(BencodeError, match=r"^bad integer at offset 0$"):
        bencode.decode(b"i" + b"9" * 5000 + b"e")
    with pytest.raises(BencodeError, match=r"^bad string length at offset 0$"):
        bencode.decode(b"9" * 5000 + b":x")


def test_nesting_limit() -> None:
    assert bencode.decode(b"l" * 33 + b"e" * 33) == _nested(33)
    with pytest.raises(BencodeError, match=r"^nesting too deep$"):
        bencode.decode(b"l" * 34 + b"e" * 34)
    with pytest.raises(BencodeError, match=r"^nesting too deep$"):
        bencode.decode(b"d1:a" * 40 + b"e" * 40)
    # far beyond Python's recursion limit: still a BencodeError, quickly
    with pytest.raises(BencodeError, match=r"^nesting too deep$"):
        bencode.decode(b"l" * 100_000)


def _nested(depth: int) -> object:
    value: list[object] = []
    for _ in range(depth - 1):
        value = [value]
    return value


def test_decode_prefix_returns_offset_after_value() -> None:
    data = b"xx4:pingi5etail"
    assert bencode.decode_prefix(data, 2) == ("ping", 8)
    assert bencode.decode_prefix(data, 8) == (5, 11)


def test_non_utf8_survives_round_trip_byte_for_byte() -> None:
    raw = b"v=0\r\ns=\xe9t\xe9 \xff\xfe\r\n"
    wire = b"d3:sdp%d:" % len(raw) + raw + b"e"
    decoded = bencode.decode(wire)
    assert decoded == {"sdp": "v=0\r\ns=\udce9t\udce9 \udcff\udcfe\r\n"}
    assert bencode.encode(decoded) == wire


def test_every_byte_value_round_trips() -> None:
    raw = bytes(range(256))
    wire = b"256:" + raw
    decoded = bencode.decode(wire)
    assert isinstance(decoded, str)
    assert bencode.encode(decoded) == wire


_VALUES = st.recursive(
    st.integers(-(2**70), 2**70) | st.text(st.characters(max_codepoint=127), max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=12,
)
_ALPHABET = b"dlie0123456789:-ab"


@given(
    st.binary(max_size=40).map(lambda b: bytes(_ALPHABET[x % len(_ALPHABET)] for x in b))
    | _VALUES.map(bencode.encode),
    st.integers(0, 255),
    st.integers(0, len(_ALPHABET) - 1),
)
def test_quick_decoder_agrees_with_the_careful_one(wire: bytes, at: int, byte: int) -> None:
    """What the ASCII fast path takes as a whole message, the careful decoder reads alike
    (well-formed values, and the same with one byte changed); what it leaves is the careful
    one's alone."""
    for data in (wire, wire[:at] + _ALPHABET[byte : byte + 1] + wire[at + 1 :]):
        try:
            quick, end = bencode._quick(data.decode("ascii"), 0, 0)
        except (bencode._NotQuick, ValueError, IndexError):
            continue
        if end == len(data):  # else decode() does not take it either
            assert bencode.decode_prefix(data, 0) == (quick, end)


def test_long_strings_beside_the_quick_decoders_table() -> None:
    """Lengths past the quick path's table (an SDP body) are read and checked alike."""
    body = "v=0\r\n" + "a=x\r\n" * 300
    wire = b"d3:sdp%d:%se" % (len(body), body.encode())
    assert bencode.decode(wire) == {"sdp": body}
    with pytest.raises(BencodeError, match=r"^bad string length at offset 6$"):
        bencode.decode(b"d3:sdp0%d:%se" % (len(body), body.encode()))


def test_an_encoded_dictionary_is_copied_as_it_is_and_reads_as_its_value() -> None:
    """:class:`bencode.Encoded`: written as its text (in either pass of the encoder), read as
    the dictionary the text holds."""
    tag = "\u00e9\udce9"  # "é" in UTF-8, then a byte that is not UTF-8
    part = bencode.Encoded(f"d{bencode.string(tag)}li1e{bencode.string('x')}ee")
    assert bencode.string(tag) == f"3:{tag}"
    assert bencode.encode({"a": part, "b": "c"}) == b"d1:ad3:\xc3\xa9\xe9li1e1:xee1:b1:ce"
    wire = b"d1:ad3:\xc3\xa9\xe9li1e1:xee1:b3:\xc3\xa9\xe9e"
    assert bencode.encode({"a": part, "b": tag}) == wire
    assert dict(part) == {tag: [1, "x"]} and part == {tag: [1, "x"]}
    assert list(part) == [tag] and len(part) == 1
