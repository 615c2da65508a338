"""STUN (RFC 5389) as ICE needs it: parse and frame-check, MESSAGE-INTEGRITY, encode.

Rules:

* ``parse`` checks the framing (header, lengths, magic cookie) and FINGERPRINT; a
  message that fails is a :class:`StunError`, never another exception.
* Attributes after MESSAGE-INTEGRITY (but FINGERPRINT) are dropped: they are not
  authenticated (RFC 5389 §15.4).
* Short-term credentials only: the key of MESSAGE-INTEGRITY is the ICE password.

What is done with the messages is the ICE agent's (:mod:`relayd.worker.ice`).
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import ipaddress
import struct
from dataclasses import dataclass
from enum import IntEnum

__all__ = [
    "COOKIE",
    "Attr",
    "MessageType",
    "StunError",
    "StunMessage",
    "encode",
    "integrity",
    "parse",
    "unxor_address",
    "xor_address",
]

Address = tuple[str, int]

COOKIE = 0x2112A442
_HEADER = struct.Struct("!HHI12s")
_ATTR = struct.Struct("!HH")
_FINGERPRINT_XOR = 0x5354554E
_INTEGRITY_SIZE = 24  # attribute header + HMAC-SHA1
_FINGERPRINT_SIZE = 8


class StunError(ValueError):
    """Bytes that are not a well-formed STUN message."""


class MessageType(IntEnum):
    """The Binding method in each STUN class: request, indication, success and error response
    (RFC 5389 §6)."""

    BINDING_REQUEST = 0x0001
    BINDING_INDICATION = 0x0011
    BINDING_SUCCESS = 0x0101
    BINDING_ERROR = 0x0111


class Attr(IntEnum):
    """STUN attribute types (RFC 5389 §18.2) and ICE's (RFC 8445 §16.1)."""

    MAPPED_ADDRESS = 0x0001
    USERNAME = 0x0006
    MESSAGE_INTEGRITY = 0x0008
    ERROR_CODE = 0x0009
    XOR_MAPPED_ADDRESS = 0x0020
    PRIORITY = 0x0024
    USE_CANDIDATE = 0x0025
    SOFTWARE = 0x8022
    FINGERPRINT = 0x8028
    ICE_CONTROLLED = 0x8029
    ICE_CONTROLLING = 0x802A


@dataclass(frozen=True, slots=True)
class StunMessage:
    """One parsed message, attributes in order; ``raw`` is kept for the MESSAGE-INTEGRITY check.

    Attributes after MESSAGE-INTEGRITY (but FINGERPRINT) are left out: they are not
    authenticated (RFC 5389 §15.4).
    """

    message_type: int
    transaction_id: bytes
    attributes: tuple[tuple[int, bytes], ...]
    raw: bytes
    integrity_at: int = -1  # offset of MESSAGE-INTEGRITY in raw, -1: absent
    fingerprint: bool = False  # FINGERPRINT present (and checked by parse)

    def get(self, attr: int) -> bytes | None:
        for kind, value in self.attributes:
            if kind == attr:
                return value
        return None

    def check_integrity(self, key: bytes) -> bool:
        """MESSAGE-INTEGRITY (RFC 5389 §15.4) with the short-term ``key``."""
        at = self.integrity_at
        if at < 0:
            return False
        expected = integrity(self.raw[:at], key)
        return hmac.compare_digest(expected, self.raw[at + 4 : at + _INTEGRITY_SIZE])


def _fingerprint(data: bytes) -> int:
    return binascii.crc32(data) ^ _FINGERPRINT_XOR


def integrity(prefix: bytes, key: bytes) -> bytes:
    """HMAC-SHA1 over ``prefix`` (the message before MESSAGE-INTEGRITY), with the
    header's length as if the message ended right after MESSAGE-INTEGRITY."""
    length = len(prefix) - _HEADER.size + _INTEGRITY_SIZE
    data = prefix[:2] + length.to_bytes(2, "big") + prefix[4:]
    return hmac.new(key, data, hashlib.sha1).digest()


def parse(data: bytes) -> StunMessage:
    """Parse and frame-check one message; a wrong FINGERPRINT is a StunError."""
    if len(data) < _HEADER.size:
        raise StunError("shorter than a STUN header")
    message_type, length, cookie, transaction_id = _HEADER.unpack_from(data)
    if message_type & 0xC000 or cookie != COOKIE:
        raise StunError("not a STUN message")
    if length % 4 or len(data) != _HEADER.size + length:
        raise StunError("STUN length does not match")
    attributes: list[tuple[int, bytes]] = []
    integrity_at = -1
    fingerprint = False
    pos = _HEADER.size
    while pos < len(data):
        if fingerprint:
            raise StunError("attribute after FINGERPRINT")
        if pos + 4 > len(data):
            raise StunError("truncated attribute header")
        kind, size = _ATTR.unpack_from(data, pos)
        end = pos + 4 + size
        if end > len(data):
            raise StunError("truncated attribute")
        value = data[pos + 4 : end]
        if kind == Attr.FINGERPRINT:
            if size != 4 or int.from_bytes(value, "big") != _fingerprint(data[:pos]):
                raise StunError("bad FINGERPRINT")
            fingerprint = True
        elif integrity_at >= 0:
            # only FINGERPRINT counts after MESSAGE-INTEGRITY (RFC 5389 §15.4): the rest
            # is not authenticated, so it is not believed
            pos = end + (-size % 4)
            continue
        elif kind == Attr.MESSAGE_INTEGRITY:
            if size != 20:
                raise StunError("bad MESSAGE-INTEGRITY length")
            integrity_at = pos
        attributes.append((kind, value))
        pos = end + (-size % 4)
    return StunMessage(
        message_type, transaction_id, tuple(attributes), data, integrity_at, fingerprint
    )


def encode(
    message_type: int,
    transaction_id: bytes,
    attributes: list[tuple[int, bytes]],
    *,
    key: bytes | None = None,
    fingerprint: bool = True,
    padding: bytes = b"\x00",
) -> bytes:
    """A message with ``attributes``, then MESSAGE-INTEGRITY (if ``key``) and FINGERPRINT."""
    body = bytearray()
    for kind, value in attributes:
        body += _ATTR.pack(kind, len(value)) + value + padding * (-len(value) % 4)
    data = _HEADER.pack(message_type, len(body), COOKIE, transaction_id) + bytes(body)
    if key is not None:
        mac = integrity(data, key)
        data = _with_attribute(data, Attr.MESSAGE_INTEGRITY, mac)
    if fingerprint:
        length = len(data) - _HEADER.size + _FINGERPRINT_SIZE
        crc = _fingerprint(data[:2] + length.to_bytes(2, "big") + data[4:])
        data = _with_attribute(data, Attr.FINGERPRINT, crc.to_bytes(4, "big"))
    return data


def _with_attribute(data: bytes, kind: int, value: bytes) -> bytes:
    length = len(data) - _HEADER.size + 4 + len(value)
    return data[:2] + length.to_bytes(2, "big") + data[4:] + _ATTR.pack(kind, len(value)) + value


def xor_address(address: Address, transaction_id: bytes) -> bytes:
    """XOR-MAPPED-ADDRESS value (RFC 5389 §15.2)."""
    ip = ipaddress.ip_address(address[0])
    port = address[1] ^ (COOKIE >> 16)
    mask = COOKIE.to_bytes(4, "big") + (transaction_id if ip.version == 6 else b"")
    packed = bytes(a ^ b for a, b in zip(ip.packed, mask, strict=False))
    return struct.pack("!BBH", 0, 1 if ip.version == 4 else 2, port) + packed


def unxor_address(value: bytes, transaction_id: bytes) -> Address:
    if len(value) not in (8, 20) or value[1] not in (1, 2):
        raise StunError("bad XOR-MAPPED-ADDRESS")
    port = int.from_bytes(value[2:4], "big") ^ (COOKIE >> 16)
    mask = COOKIE.to_bytes(4, "big") + transaction_id
    packed = bytes(a ^ b for a, b in zip(value[4:], mask, strict=False))
    return str(ipaddress.ip_address(packed)), port
