"""STUN codec (relayd/worker/stun.py) on RFC 5769's test vectors, and the ICE agent
(relayd/worker/ice.py) as an ICE-lite responder.

Replies are checked with aioice.stun, an independent implementation.
"""

from __future__ import annotations

import binascii
import contextlib
import os

import pytest
from aioice import stun as aioice_stun
from hypothesis import given
from hypothesis import strategies as st

from relayd.worker.ice import IceAgent
from relayd.worker.stun import (
    Attr,
    MessageType,
    StunError,
    encode,
    parse,
    unxor_address,
    xor_address,
)

PASSWORD = b"VOkJxbRl1RmTxUk/WvJxBt"
# RFC 5769 §2.1: a Binding request from "evtj:h6vY" with PRIORITY, ICE-CONTROLLED, SOFTWARE
REQUEST = bytes.fromhex(
    "000100582112a442b7e7a701bc34d686fa87dfae802200105354554e207465737420636c69656e74"
    "002400046e0001ff80290008932ff9b151263b36000600096576746a3a6836765920202000080014"
    "9aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a280280004e57a3bcf"
)
# §2.2 and §2.3: its answers, mapped address 192.0.2.1 / 2001:db8:1234:5678:11:2233:4455:6677
RESPONSE_V4 = bytes.fromhex(
    "0101003c2112a442b7e7a701bc34d686fa87dfae8022000b7465737420766563746f722000200008"
    "0001a147e112a643000800142b91f599fd9e90c38c7489f92af9ba53f06be7d780280004c07d4c96"
)
RESPONSE_V6 = bytes.fromhex(
    "010100482112a442b7e7a701bc34d686fa87dfae8022000b7465737420766563746f722000200014"
    "0002a1470113a9faa5d3f179bc25f4b5bed2b9d900080014a382954e4be67bf11784c97c8292c275"
    "bfe3ed4180280004c8fb0b4c"
)
TID = bytes.fromhex("b7e7a701bc34d686fa87dfae")


def test_rfc5769_request_parses_and_verifies() -> None:
    message = parse(REQUEST)
    assert message.message_type == MessageType.BINDING_REQUEST
    assert message.transaction_id == TID
    assert message.get(Attr.USERNAME) == b"evtj:h6vY"
    assert message.get(Attr.SOFTWARE) == b"STUN test client"
    assert message.get(Attr.PRIORITY) == bytes.fromhex("6e0001ff")
    assert message.fingerprint
    assert message.check_integrity(PASSWORD)
    assert not message.check_integrity(b"VOkJxbRl1RmTxUk/WvJxBu")


@pytest.mark.parametrize(
    ("address", "vector"),
    [
        (("192.0.2.1", 32853), RESPONSE_V4),
        (("2001:db8:1234:5678:11:2233:4455:6677", 32853), RESPONSE_V6),
    ],
)
def test_rfc5769_responses_are_reproduced_byte_for_byte(
    address: tuple[str, int], vector: bytes
) -> None:
    attributes: list[tuple[int, bytes]] = [
        (Attr.SOFTWARE, b"test vector"),
        (Attr.XOR_MAPPED_ADDRESS, xor_address(address, TID)),
    ]
    data = encode(MessageType.BINDING_SUCCESS, TID, attributes, key=PASSWORD, padding=b" ")
    assert data == vector
    message = parse(vector)
    assert message.check_integrity(PASSWORD)
    value = message.get(Attr.XOR_MAPPED_ADDRESS)
    assert value is not None
    assert unxor_address(value, TID) == address


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", "shorter than a STUN header"),
        (REQUEST[:19], "shorter than a STUN header"),
        (b"\x80" + REQUEST[1:], "not a STUN message"),
        (REQUEST[:4] + b"\x21\x12\xa4\x43" + REQUEST[8:], "not a STUN message"),
        (REQUEST[:-1], "STUN length does not match"),
        (REQUEST[:-4] + b"\xe5\x7a\x3b\xce", "bad FINGERPRINT"),
        (REQUEST[:2] + b"\x00\x02" + REQUEST[4:20] + b"\x00\x06", "STUN length does not match"),
        (REQUEST[:2] + b"\x00\x04" + REQUEST[4:20] + b"\x00\x06\x00\x09", "truncated attribute"),
    ],
)
def test_malformed_messages(data: bytes, error: str) -> None:
    with pytest.raises(StunError, match=error):
        parse(data)


@given(st.binary(max_size=200))
def test_parse_raises_only_stun_error(data: bytes) -> None:
    with contextlib.suppress(StunError):
        parse(data)


@given(st.binary(max_size=100))
def test_responder_never_raises_and_never_answers_junk(data: bytes) -> None:
    answer = IceAgent("evtj", "VOkJxbRl1RmTxUk/WvJxBt").handle(data, ("192.0.2.1", 1))
    assert answer.reply is None


# -- the ICE-lite responder -----------------------------------------------------------------------

UFRAG, PWD, REMOTE = "Lite1234", "0123456789abcdefghijklmn", "Peer"
SOURCE = ("198.51.100.7", 50123)


def check(
    username: str = f"{UFRAG}:{REMOTE}",
    password: str = PWD,
    *,
    use_candidate: bool = False,
    fingerprint: bool = True,
) -> tuple[bytes, bytes]:
    """A connectivity check as a full agent (aioice) sends it."""
    request = aioice_stun.Message(
        aioice_stun.Method.BINDING, aioice_stun.Class.REQUEST, transaction_id=os.urandom(12)
    )
    request.attributes["USERNAME"] = username
    request.attributes["PRIORITY"] = 1853824767
    request.attributes["ICE-CONTROLLING"] = 0x1122334455667788
    if use_candidate:
        request.attributes["USE-CANDIDATE"] = None
    request.add_message_integrity(password.encode())
    if not fingerprint:
        del request.attributes["FINGERPRINT"]
    return bytes(request), request.transaction_id


def test_valid_check_gets_a_verified_answer() -> None:
    responder = IceAgent(UFRAG, PWD, REMOTE)
    data, tid = check()
    answer = responder.handle(data, SOURCE)
    assert answer.error == ""
    assert answer.reply is not None
    assert not answer.nominated
    assert responder.state == "checking"
    reply = aioice_stun.parse_message(answer.reply)  # checks FINGERPRINT
    assert reply.message_method == aioice_stun.Method.BINDING
    assert reply.message_class == aioice_stun.Class.RESPONSE
    assert reply.transaction_id == tid
    assert reply.check_message_integrity(PWD.encode())
    assert not reply.check_message_integrity(b"wrong")
    assert reply.attributes["XOR-MAPPED-ADDRESS"] == SOURCE
    assert list(reply.attributes) == ["XOR-MAPPED-ADDRESS", "MESSAGE-INTEGRITY", "FINGERPRINT"]


def test_use_candidate_nominates_and_the_latest_wins() -> None:
    responder = IceAgent(UFRAG, PWD, REMOTE)
    answer = responder.handle(check(use_candidate=True)[0], SOURCE)
    assert answer.nominated and answer.reply is not None
    assert (responder.state, responder.nominated) == ("nominated", SOURCE)
    other = ("2001:db8::7", 40000)
    answer = responder.handle(check(use_candidate=True)[0], other)
    reply = aioice_stun.parse_message(answer.reply or b"")
    assert reply.attributes["XOR-MAPPED-ADDRESS"] == other
    assert responder.nominated == other
    assert responder.checks == 2


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (check(password="wrong-password-123456789")[0], "bad MESSAGE-INTEGRITY"),
        (check(username=f"Other123:{REMOTE}")[0], "wrong username"),
        (check(username=f"{UFRAG}")[0], "wrong username"),
        (check(fingerprint=False)[0], "without FINGERPRINT"),
        (
            encode(MessageType.BINDING_REQUEST, TID, [(Attr.USERNAME, f"{UFRAG}:x".encode())]),
            "bad MESSAGE-INTEGRITY",
        ),
        (encode(0x0003, TID, [], key=PWD.encode()), "unexpected STUN request 0x0003"),
        (b"\x00\x01\x00\x00junk", "shorter than a STUN header"),
    ],
)
def test_bad_checks_get_no_answer(data: bytes, error: str) -> None:
    responder = IceAgent(UFRAG, PWD, REMOTE)
    answer = responder.handle(data, SOURCE)
    assert answer.reply is None
    assert not answer.nominated
    assert error in answer.error
    assert responder.nominated is None and responder.checks == 0


def test_indications_and_responses_are_ignored_silently() -> None:
    responder = IceAgent(UFRAG, PWD, REMOTE)
    for kind in (MessageType.BINDING_INDICATION, MessageType.BINDING_SUCCESS):
        answer = responder.handle(encode(kind, TID, []), SOURCE)
        assert (answer.reply, answer.error, answer.nominated) == (None, "", False)


def test_attributes_after_message_integrity_are_not_trusted() -> None:
    data, _ = check()
    # USE-CANDIDATE slipped in after MESSAGE-INTEGRITY (and before a new FINGERPRINT)
    body = data[:-8] + b"\x00\x25\x00\x00"
    length = len(body) - 20 + 8
    body = body[:2] + length.to_bytes(2, "big") + body[4:]
    crc = (binascii.crc32(body) ^ 0x5354554E).to_bytes(4, "big")
    forged = body + b"\x80\x28\x00\x04" + crc
    responder = IceAgent(UFRAG, PWD, REMOTE)
    answer = responder.handle(forged, SOURCE)
    assert answer.reply is not None  # integrity still holds over what it covers
    assert not answer.nominated
