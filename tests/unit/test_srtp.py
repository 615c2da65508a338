"""SDES key parsing and the libsrtp sessions of relayd/worker/srtp.py, on exact bytes.

The reference packets are libsrtp's own validation vectors (test/srtp_driver.c,
``srtp_validate`` and ``srtp_validate_aes_256``): key, RTP packet and the SRTP
packet it must become.
"""

from __future__ import annotations

import base64
import contextlib
import struct

import pylibsrtp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from relayd.worker.srtp import (
    SUITES,
    PacketBuffer,
    SdesKey,
    SrtpError,
    SrtpSession,
    parse_sdes,
    status_text,
)

PLAIN = bytes.fromhex("800f1234decafbadcafebabe" + "ab" * 16)
KEY_128 = bytes.fromhex("e1f97a0d3e018be0d64fa32c06de41390ec675ad498afeebb6960b3aabe6")
SRTP_128 = bytes.fromhex(
    "800f1234decafbadcafebabe4e55dc4ce79978d88ca4d215949d2402b78d6acc99ea179b8dbb"
)
KEY_256 = bytes.fromhex(
    "f0f04914b513f2763a1b1fa130f10e2998f6f6e43e4309d1e622a0e332b9f1b63b04803de51ee7c96423ab5b78d2"
)
SRTP_256 = bytes.fromhex(
    "800f1234decafbadcafebabef1d9de17ff251ff1aa007774b0b4b40da08d9d9a5b3a55d8873b"
)


def b64(data: bytes, pad: bool = False) -> str:
    text = base64.b64encode(data).decode()
    return text if pad else text.rstrip("=")


def key_for(suite: str, **params: str) -> str:
    master = bytes(range(SUITES[suite].master_length))
    return f"{suite} inline:{b64(master)}"


def rtp(seq: int, ssrc: int = 0x11223344, size: int = 160) -> bytes:
    return struct.pack("!BBHII", 0x80, 0, seq, seq * 160, ssrc) + bytes([seq & 0xFF]) * size


def rtcp(ssrc: int = 0x11223344) -> bytes:
    # a sender report with no report blocks (RFC 3550 §6.4.1)
    return struct.pack("!BBHIIIIII", 0x80, 200, 6, ssrc, 1, 2, 3, 4, 5)


# -- suites ---------------------------------------------------------------------------------------


def test_supported_suites_in_rtpengine_order() -> None:
    assert list(SUITES) == [
        "AEAD_AES_256_GCM",
        "AEAD_AES_128_GCM",
        "AES_256_CM_HMAC_SHA1_80",
        "AES_256_CM_HMAC_SHA1_32",
        "AES_192_CM_HMAC_SHA1_80",
        "AES_192_CM_HMAC_SHA1_32",
        "AES_CM_128_HMAC_SHA1_80",
        "AES_CM_128_HMAC_SHA1_32",
        "NULL_HMAC_SHA1_80",
        "NULL_HMAC_SHA1_32",
    ]


# -- SDES key parsing -----------------------------------------------------------------------------


def test_parse_sdes_key_lifetime_mki_and_unpadded_base64() -> None:
    key = parse_sdes(f"AES_CM_128_HMAC_SHA1_80 inline:{b64(KEY_128)}|2^20|1:4")
    assert key.suite.name == "AES_CM_128_HMAC_SHA1_80"
    assert key.master == KEY_128
    assert key.lifetime == 1 << 20
    assert key.mki == b"\x00\x00\x00\x01"
    # padded base64, a leading a=crypto tag, lower-case suite, MKI without lifetime
    key = parse_sdes(f"3 aes_cm_128_hmac_sha1_32 inline:{b64(KEY_128, pad=True)}|7:1")
    assert key.suite.name == "AES_CM_128_HMAC_SHA1_32"
    assert (key.master, key.mki, key.lifetime) == (KEY_128, b"\x07", 0)


def test_parse_sdes_session_parameters() -> None:
    key = parse_sdes(
        f"AES_CM_128_HMAC_SHA1_80 inline:{b64(KEY_128)} UNENCRYPTED_SRTP "
        "UNENCRYPTED_SRTCP UNAUTHENTICATED_SRTP WSH=256 FEC_ORDER=FEC_SRTP KDR=0"
    )
    assert (key.encrypt_rtp, key.encrypt_rtcp, key.authenticate_rtp) == (False, False, False)
    assert key.window == 256


def test_parse_sdes_takes_the_first_of_several_keys() -> None:
    other = bytes(30)
    key = parse_sdes(f"AES_CM_128_HMAC_SHA1_80 inline:{b64(KEY_128)}|1:2;inline:{b64(other)}|2:2")
    assert (key.master, key.mki) == (KEY_128, b"\x00\x01")


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("", "bad SDES key"),
        ("AES_CM_128_HMAC_SHA1_80", "bad SDES key"),
        ("F8_128_HMAC_SHA1_80 inline:" + b64(KEY_128), "unsupported crypto suite 'F8_128"),
        ("AES_CM_128_HMAC_SHA1_80 uri:http://x", "unsupported key method 'uri'"),
        (
            "AES_CM_128_HMAC_SHA1_80 inline:" + b64(KEY_128[:29]),
            "needs 30 bytes of key and salt, got 29",
        ),
        (
            "AES_256_CM_HMAC_SHA1_80 inline:" + b64(KEY_128),
            "needs 46 bytes of key and salt, got 30",
        ),
        ("AES_CM_128_HMAC_SHA1_80 inline:@@@@", "bad base64 key"),
        ("AES_CM_128_HMAC_SHA1_80 inline:" + b64(KEY_128) + "|2^x", "bad key lifetime"),
        ("AES_CM_128_HMAC_SHA1_80 inline:" + b64(KEY_128) + "|1:0", "bad MKI"),
        ("AES_CM_128_HMAC_SHA1_80 inline:" + b64(KEY_128) + "|256:1", "does not fit in 1 bytes"),
        ("AES_CM_128_HMAC_SHA1_80 inline:" + b64(KEY_128) + " KDR=1", "key derivation rate"),
        ("AES_CM_128_HMAC_SHA1_80 inline:" + b64(KEY_128) + " WSH=10", "bad window size hint"),
    ],
)
def test_parse_sdes_errors(text: str, error: str) -> None:
    with pytest.raises(SrtpError, match=error.replace("(", r"\(").replace("^", r"\^")):
        parse_sdes(text)


@given(st.text(max_size=120))
def test_parse_sdes_raises_only_srtp_error(text: str) -> None:
    with contextlib.suppress(SrtpError):
        parse_sdes(text)


# -- reference packets ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("suite", "master", "srtp"),
    [
        ("AES_CM_128_HMAC_SHA1_80", KEY_128, SRTP_128),
        ("AES_256_CM_HMAC_SHA1_80", KEY_256, SRTP_256),
    ],
)
def test_reference_packets(suite: str, master: bytes, srtp: bytes) -> None:
    key = parse_sdes(f"{suite} inline:{b64(master)}")
    assert SrtpSession(key, inbound=False).protect_packet(PLAIN) == srtp
    assert SrtpSession(key, inbound=True).unprotect_packet(srtp) == PLAIN


@pytest.mark.parametrize(
    ("suite", "profile"),
    [
        ("AES_CM_128_HMAC_SHA1_80", pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80),
        ("AES_CM_128_HMAC_SHA1_32", pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_32),
        ("AEAD_AES_128_GCM", pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM),
        ("AEAD_AES_256_GCM", pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_256_GCM),
    ],
)
def test_same_bytes_as_pylibsrtp_session(suite: str, profile: int) -> None:
    """Our policy written field by field equals pylibsrtp's own, for RTP and RTCP."""
    master = bytes(range(SUITES[suite].master_length))
    theirs = pylibsrtp.Session(
        pylibsrtp.Policy(master, pylibsrtp.Policy.SSRC_ANY_OUTBOUND, srtp_profile=profile)
    )
    ours = SrtpSession(SdesKey(SUITES[suite], master), inbound=False)
    for seq in range(3):
        assert ours.protect_packet(rtp(seq)) == theirs.protect(rtp(seq))
    assert ours.protect_packet(rtcp(), rtcp=True) == theirs.protect_rtcp(rtcp())


# -- every suite: round trip, tamper, replay ----------------------------------------------------


@pytest.mark.parametrize("suite", list(SUITES))
def test_round_trip_tamper_and_replay(suite: str) -> None:
    key = parse_sdes(key_for(suite))
    sender = SrtpSession(key, inbound=False)
    receiver = SrtpSession(key, inbound=True)
    packets = [sender.protect_packet(rtp(seq)) for seq in range(5)]
    overhead = SUITES[suite].rtp_tag
    assert all(len(p) == 12 + 160 + overhead for p in packets)
    if not suite.startswith("NULL"):
        assert packets[0][12:] != rtp(0)[12:]  # encrypted
    assert [receiver.unprotect_packet(p) for p in packets] == [rtp(seq) for seq in range(5)]
    with pytest.raises(SrtpError, match=r"replay check failed \(bad index\)"):
        receiver.unprotect_packet(packets[2])
    tampered = bytearray(sender.protect_packet(rtp(9)))
    tampered[20] ^= 1
    with pytest.raises(SrtpError, match="authentication failure"):
        receiver.unprotect_packet(bytes(tampered))
    assert receiver.unprotect_packet(sender.protect_packet(rtp(10))) == rtp(10)
    srtcp = sender.protect_packet(rtcp(), rtcp=True)
    assert len(srtcp) == len(rtcp()) + 4 + SUITES[suite].rtcp_tag  # E|index, tag
    assert receiver.unprotect_packet(srtcp, rtcp=True) == rtcp()
    with pytest.raises(SrtpError, match="replay check failed"):
        receiver.unprotect_packet(srtcp, rtcp=True)


def test_a_different_key_fails_authentication() -> None:
    sender = SrtpSession(parse_sdes(key_for("AES_CM_128_HMAC_SHA1_80")), inbound=False)
    other = SdesKey(SUITES["AES_CM_128_HMAC_SHA1_80"], bytes(30))
    with pytest.raises(SrtpError, match="authentication failure"):
        SrtpSession(other, inbound=True).unprotect_packet(sender.protect_packet(rtp(1)))


def test_outbound_allows_a_repeated_packet() -> None:
    sender = SrtpSession(parse_sdes(key_for("AES_CM_128_HMAC_SHA1_80")), inbound=False)
    assert sender.protect_packet(rtp(1)) == sender.protect_packet(rtp(1))


def test_garbage_is_refused_not_crashed() -> None:
    receiver = SrtpSession(parse_sdes(key_for("AEAD_AES_128_GCM")), inbound=True)
    for junk in (b"", b"\x80", b"\x80\x00\x00\x01", bytes(11), b"\x80" * 40):
        with pytest.raises(SrtpError):
            receiver.unprotect_packet(junk)
    with pytest.raises(SrtpError, match="packet too long"):
        receiver.unprotect_packet(bytes(5000))


# -- MKI and session parameters -------------------------------------------------------------------


@pytest.mark.parametrize("suite", ["AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32"])
def test_mki_sits_before_the_authentication_tag(suite: str) -> None:
    master = bytes(range(30))
    with_mki = SrtpSession(parse_sdes(f"{suite} inline:{b64(master)}|2^31|258:2"), inbound=False)
    without = SrtpSession(parse_sdes(f"{suite} inline:{b64(master)}"), inbound=False)
    tag = SUITES[suite].rtp_tag
    plain = without.protect_packet(rtp(1))
    assert with_mki.protect_packet(rtp(1)) == plain[:-tag] + b"\x01\x02" + plain[-tag:]
    srtcp = without.protect_packet(rtcp(), rtcp=True)
    mki_srtcp = with_mki.protect_packet(rtcp(), rtcp=True)
    assert mki_srtcp == srtcp[:-10] + b"\x01\x02" + srtcp[-10:]
    receiver = SrtpSession(parse_sdes(f"{suite} inline:{b64(master)}|258:2"), inbound=True)
    assert receiver.unprotect_packet(with_mki.protect_packet(rtp(2))) == rtp(2)
    assert receiver.unprotect_packet(mki_srtcp, rtcp=True) == rtcp()
    wrong = SrtpSession(parse_sdes(f"{suite} inline:{b64(master)}|259:2"), inbound=True)
    with pytest.raises(SrtpError, match="authentication failure"):
        wrong.unprotect_packet(with_mki.protect_packet(rtp(3)))


def test_mki_with_gcm_follows_the_ciphertext() -> None:
    master = bytes(range(28))
    with_mki = SrtpSession(parse_sdes(f"AEAD_AES_128_GCM inline:{b64(master)}|5:1"), inbound=False)
    without = SrtpSession(parse_sdes(f"AEAD_AES_128_GCM inline:{b64(master)}"), inbound=False)
    assert with_mki.protect_packet(rtp(1)) == without.protect_packet(rtp(1)) + b"\x05"
    receiver = SrtpSession(parse_sdes(f"AEAD_AES_128_GCM inline:{b64(master)}|5:1"), inbound=True)
    assert receiver.unprotect_packet(with_mki.protect_packet(rtp(2))) == rtp(2)


def test_unencrypted_srtp_leaves_the_payload_readable() -> None:
    text = key_for("AES_CM_128_HMAC_SHA1_80") + " UNENCRYPTED_SRTP"
    sender = SrtpSession(parse_sdes(text), inbound=False)
    packet = sender.protect_packet(rtp(1))
    assert packet[:-10] == rtp(1)
    assert SrtpSession(parse_sdes(text), inbound=True).unprotect_packet(packet) == rtp(1)


def test_in_place_calls_return_negative_status() -> None:
    key = parse_sdes(key_for("AES_CM_128_HMAC_SHA1_80"))
    buf = PacketBuffer(2048)
    sender, receiver = SrtpSession(key, inbound=False), SrtpSession(key, inbound=True)
    length = sender.protect(buf, buf.load(rtp(1)))
    assert length == 182
    assert receiver.unprotect(buf, length) == 172
    assert bytes(buf.view[:172]) == rtp(1)
    buf.load(b"\x80" * 30)
    status = receiver.unprotect(buf, 30)
    assert status < 0
    assert status_text(-status) == "authentication failure"
