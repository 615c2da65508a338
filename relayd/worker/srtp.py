"""SRTP and SRTCP for one direction of one socket: SDES keys and libsrtp sessions.

Rules:

* An SDES key (RFC 4568 §9.1) arrives as the a=crypto line carries it after its
  tag: ``"<suite> inline:<base64 key||salt>[|<lifetime>][|<MKI>:<length>]
  [<session params>]"``; an optional leading tag is skipped. Base64 padding is
  optional (rtpengine leaves it out). Only the first ``inline:`` key is used:
  libsrtp as pylibsrtp builds it holds one master key per session.
* The lifetime is parsed and checked (``2^n`` or decimal) but not enforced
  beyond libsrtp's own 2^48 (SRTP) / 2^31 (SRTCP) limits.
* An MKI is honoured here, outside libsrtp: on protect the MKI is inserted before
  the authentication tag (after the AEAD ciphertext for GCM, RFC 7714 §8.1), on
  unprotect it must match and is removed. The MKI is never authenticated
  (RFC 3711 §3.1), so this is what libsrtp itself would do.
* Session parameters ``UNENCRYPTED_SRTP``, ``UNENCRYPTED_SRTCP``,
  ``UNAUTHENTICATED_SRTP`` and ``WSH=`` are honoured; ``KDR=`` other than 0 is
  refused (libsrtp has no key derivation rate); others are ignored.
* One :class:`SrtpSession` per direction: inbound sessions accept any SSRC that
  authenticates and keep a replay window per SSRC; outbound sessions allow a
  repeated sequence number, since a relay forwards what the plain side repeats.
* The per-packet calls work in place on a :class:`PacketBuffer` and return the
  new length, or a negative libsrtp status: no bytes objects, no exceptions on
  the hot path.

Suites (rtpengine's names): the libsrtp inside pylibsrtp has AES-128/192/256
counter mode with HMAC-SHA1, AES-128/256 GCM and the NULL cipher. pylibsrtp only
exposes the four DTLS-SRTP profiles, so the others are set by writing libsrtp's
``srtp_crypto_policy_t`` (six ints) directly; a check at import compares that
layout with what libsrtp writes itself and removes them if it differs. F8 is not
in libsrtp 2 and is not supported.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pylibsrtp import ERRORS, ffi, lib

__all__ = [
    "DTLS_PROFILES",
    "SUITES",
    "PacketBuffer",
    "SdesKey",
    "SrtpError",
    "SrtpSession",
    "Suite",
    "parse_sdes",
    "status_text",
]


class SrtpError(ValueError):
    """An SDES key that cannot be used, or a packet that fails SRTP processing."""


# libsrtp 2 srtp_cipher_type_id_t / srtp_auth_type_id_t / srtp_sec_serv_t
_NULL_CIPHER, _AES_ICM_128, _AES_ICM_192, _AES_ICM_256, _AES_GCM_128, _AES_GCM_256 = (
    0,
    1,
    4,
    5,
    6,
    7,
)
_NULL_AUTH, _HMAC_SHA1 = 0, 3
_SEC_CONF, _SEC_AUTH = 1, 2
# libsrtp's srtp_profile_t for the DTLS-SRTP profiles
_CM128_80 = lib.srtp_profile_aes128_cm_sha1_80
_CM128_32 = lib.srtp_profile_aes128_cm_sha1_32
_GCM128 = lib.srtp_profile_aead_aes_128_gcm
_GCM256 = lib.srtp_profile_aead_aes_256_gcm


@dataclass(frozen=True, slots=True)
class Suite:
    """An SRTP crypto suite: key sizes and libsrtp's parameters for it."""

    name: str
    cipher: int
    key_length: int  # master key
    salt_length: int  # master salt
    auth_key_length: int
    rtp_tag: int  # SRTP authentication tag (or AEAD tag) length
    rtcp_tag: int
    profile: int = 0  # the DTLS-SRTP profile libsrtp knows it by, 0: none

    @property
    def aead(self) -> bool:
        return self.cipher in (_AES_GCM_128, _AES_GCM_256)

    @property
    def master_length(self) -> int:
        return self.key_length + self.salt_length

    def policy_ints(self, rtcp: bool) -> tuple[int, int, int, int, int, int]:
        """libsrtp's srtp_crypto_policy_t for RTP or RTCP, field by field."""
        auth = _NULL_AUTH if self.aead else _HMAC_SHA1
        return (
            self.cipher,
            self.master_length,
            auth,
            self.auth_key_length,
            self.rtcp_tag if rtcp else self.rtp_tag,
            _SEC_CONF | _SEC_AUTH,
        )


_ALL_SUITES = (
    Suite("AEAD_AES_256_GCM", _AES_GCM_256, 32, 12, 0, 16, 16, _GCM256),
    Suite("AEAD_AES_128_GCM", _AES_GCM_128, 16, 12, 0, 16, 16, _GCM128),
    Suite("AES_256_CM_HMAC_SHA1_80", _AES_ICM_256, 32, 14, 20, 10, 10),
    Suite("AES_256_CM_HMAC_SHA1_32", _AES_ICM_256, 32, 14, 20, 4, 10),
    Suite("AES_192_CM_HMAC_SHA1_80", _AES_ICM_192, 24, 14, 20, 10, 10),
    Suite("AES_192_CM_HMAC_SHA1_32", _AES_ICM_192, 24, 14, 20, 4, 10),
    Suite("AES_CM_128_HMAC_SHA1_80", _AES_ICM_128, 16, 14, 20, 10, 10, _CM128_80),
    Suite("AES_CM_128_HMAC_SHA1_32", _AES_ICM_128, 16, 14, 20, 4, 10, _CM128_32),
    # RFC 4568 §6.2: the NULL cipher still takes 128-bit key material for key derivation
    Suite("NULL_HMAC_SHA1_80", _NULL_CIPHER, 16, 14, 20, 10, 10),
    Suite("NULL_HMAC_SHA1_32", _NULL_CIPHER, 16, 14, 20, 4, 10),
)  # fmt: skip


def _set_raw(target: Any, values: Sequence[int]) -> None:
    ints = ffi.cast("int *", target)
    for index, value in enumerate(values):
        ints[index] = value


def _raw_layout_ok() -> bool:
    """Whether writing srtp_crypto_policy_t as six ints matches what libsrtp writes."""
    if ffi.sizeof("srtp_crypto_policy_t") != 6 * ffi.sizeof("int"):
        return False
    policy = ffi.new("srtp_policy_t *")
    for suite in _ALL_SUITES:
        if not suite.profile:
            continue
        for rtcp, setter in (
            (False, lib.srtp_crypto_policy_set_from_profile_for_rtp),
            (True, lib.srtp_crypto_policy_set_from_profile_for_rtcp),
        ):
            target = ffi.addressof(policy.rtcp if rtcp else policy.rtp)
            setter(target, suite.profile)
            ints = ffi.cast("int *", target)
            if tuple(ints[i] for i in range(6)) != suite.policy_ints(rtcp):
                return False
    return True


_RAW_OK = _raw_layout_ok()

#: the suites this build supports, in rtpengine's offer order
SUITES: dict[str, Suite] = {s.name: s for s in _ALL_SUITES if s.profile or _RAW_OK}

#: DTLS-SRTP protection profiles (RFC 5764 §4.1.2, RFC 7714 §14.2) → suite
DTLS_PROFILES: dict[str, str] = {
    "SRTP_AEAD_AES_256_GCM": "AEAD_AES_256_GCM",
    "SRTP_AEAD_AES_128_GCM": "AEAD_AES_128_GCM",
    "SRTP_AES128_CM_SHA1_80": "AES_CM_128_HMAC_SHA1_80",
    "SRTP_AES128_CM_SHA1_32": "AES_CM_128_HMAC_SHA1_32",
}


@dataclass(frozen=True, slots=True)
class SdesKey:
    """One usable SDES key: suite, master key || salt, and the options that shape packets."""

    suite: Suite
    master: bytes = field(repr=False)  # keys stay out of logs
    mki: bytes = b""
    lifetime: int = 0  # 0: not given
    encrypt_rtp: bool = True
    encrypt_rtcp: bool = True
    authenticate_rtp: bool = True
    window: int = 128


def _b64(text: str) -> bytes:
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise SrtpError(f"bad base64 key {text!r}") from None


def _lifetime(text: str) -> int:
    if text.startswith("2^") and text[2:].isdigit():
        return 1 << int(text[2:])
    if text.isdigit():
        return int(text)
    raise SrtpError(f"bad key lifetime {text!r}")


def _mki(text: str) -> bytes:
    value, _, length = text.partition(":")
    if not (value.isdigit() and length.isdigit()) or not 1 <= int(length) <= 128:
        raise SrtpError(f"bad MKI {text!r}")
    number, size = int(value), int(length)
    if number >= 1 << (8 * size):
        raise SrtpError(f"MKI {number} does not fit in {size} bytes")
    return number.to_bytes(size, "big")


def parse_sdes(text: str) -> SdesKey:
    """Parse ``"[tag] SUITE inline:KEY[|lifetime][|mki:len][;inline:…] [params]"``."""
    words = text.split()
    if words and words[0].isdigit():
        words = words[1:]  # the a=crypto tag
    if len(words) < 2:
        raise SrtpError(f"bad SDES key {text!r}")
    suite = SUITES.get(words[0].upper())
    if suite is None:
        raise SrtpError(f"unsupported crypto suite {words[0]!r}")
    first = words[1].split(";")[0]
    method, _, info = first.partition(":")
    if method.lower() != "inline":
        raise SrtpError(f"unsupported key method {method!r}")
    parts = info.split("|")
    master = _b64(parts[0])
    if len(master) != suite.master_length:
        raise SrtpError(
            f"{suite.name} needs {suite.master_length} bytes of key and salt, got {len(master)}"
        )
    lifetime, mki = 0, b""
    for part in parts[1:]:
        if ":" in part:
            mki = _mki(part)
        else:
            lifetime = _lifetime(part)
    options: dict[str, Any] = {}
    for param in words[2:]:
        name, _, value = param.partition("=")
        name = name.upper()
        if name == "UNENCRYPTED_SRTP":
            options["encrypt_rtp"] = False
        elif name == "UNENCRYPTED_SRTCP":
            options["encrypt_rtcp"] = False
        elif name == "UNAUTHENTICATED_SRTP":
            options["authenticate_rtp"] = False
        elif name == "WSH":
            if not value.isdigit() or int(value) < 64:
                raise SrtpError(f"bad window size hint {param!r}")
            options["window"] = min(int(value), 0x7FFF)
        elif name == "KDR" and value != "0":
            raise SrtpError("key derivation rate is not supported")
    return SdesKey(suite, master, mki, lifetime, **options)


class PacketBuffer:
    """One worker-wide packet buffer that datagrams are received into and processed in."""

    __slots__ = ("cdata", "length", "view")

    def __init__(self, size: int) -> None:
        # room for the largest SRTCP trailer: index, MKI, tag
        self.cdata = ffi.new("unsigned char[]", size + 4 + 128 + 16)
        self.view = memoryview(ffi.buffer(self.cdata))
        self.length = ffi.new("int *")

    def load(self, data: bytes) -> int:
        self.view[: len(data)] = data
        return len(data)


class SrtpSession:
    """libsrtp state for one direction: protect (outbound) or unprotect (inbound)."""

    __slots__ = ("_ctx", "_keep", "_srtp", "key", "mki", "rtcp_tag", "rtp_tag")

    def __init__(self, key: SdesKey, *, inbound: bool) -> None:
        self.key = key
        suite = key.suite
        policy = ffi.new("srtp_policy_t *")
        for rtcp, target in ((False, policy.rtp), (True, policy.rtcp)):
            ints = list(suite.policy_ints(rtcp))
            encrypt = key.encrypt_rtcp if rtcp else key.encrypt_rtp
            authenticate = rtcp or key.authenticate_rtp
            ints[5] = (_SEC_CONF if encrypt else 0) | (_SEC_AUTH if authenticate else 0)
            _set_raw(ffi.addressof(target), ints)
        material = ffi.new("unsigned char[]", key.master)
        policy.key = material
        policy.ssrc.type = lib.ssrc_any_inbound if inbound else lib.ssrc_any_outbound
        policy.window_size = key.window
        policy.allow_repeat_tx = 0 if inbound else 1
        srtp = ffi.new("srtp_t *")
        status = lib.srtp_create(srtp, policy)
        if status != lib.srtp_err_status_ok:
            raise SrtpError(f"libsrtp refused the {suite.name} key (status {status})")
        self._srtp = ffi.gc(srtp, lambda p: lib.srtp_dealloc(p[0]))  # owns the session
        self._ctx = srtp[0]  # the srtp_t itself, looked up once rather than per packet
        self._keep = material  # libsrtp copies the key, but keep it alive until created
        self.mki = key.mki
        self.rtp_tag = suite.rtp_tag if not suite.aead else 0
        self.rtcp_tag = suite.rtcp_tag if not suite.aead else 0

    # -- in place, on the hot path ------------------------------------------------------------

    def protect(self, buf: PacketBuffer, length: int) -> int:
        buf.length[0] = length
        status = _PROTECT(self._ctx, buf.cdata, buf.length)
        if status:
            return -status
        return self._insert_mki(buf, buf.length[0], self.rtp_tag) if self.mki else buf.length[0]

    def protect_rtcp(self, buf: PacketBuffer, length: int) -> int:
        buf.length[0] = length
        status = _PROTECT_RTCP(self._ctx, buf.cdata, buf.length)
        if status:
            return -status
        return self._insert_mki(buf, buf.length[0], self.rtcp_tag) if self.mki else buf.length[0]

    def unprotect(self, buf: PacketBuffer, length: int) -> int:
        if self.mki:
            length = self._remove_mki(buf, length, self.rtp_tag)
            if length < 0:
                return length
        buf.length[0] = length
        status = _UNPROTECT(self._ctx, buf.cdata, buf.length)
        return -status if status else buf.length[0]

    def unprotect_rtcp(self, buf: PacketBuffer, length: int) -> int:
        if self.mki:
            length = self._remove_mki(buf, length, self.rtcp_tag)
            if length < 0:
                return length
        buf.length[0] = length
        status = _UNPROTECT_RTCP(self._ctx, buf.cdata, buf.length)
        return -status if status else buf.length[0]

    def _insert_mki(self, buf: PacketBuffer, length: int, tag: int) -> int:
        mki = self.mki
        at = length - tag
        ffi.memmove(buf.cdata + at + len(mki), buf.cdata + at, tag)
        buf.view[at : at + len(mki)] = mki
        return length + len(mki)

    def _remove_mki(self, buf: PacketBuffer, length: int, tag: int) -> int:
        mki = self.mki
        at = length - tag - len(mki)
        if at < 12 or buf.view[at : at + len(mki)] != mki:
            return -_AUTH_FAIL
        ffi.memmove(buf.cdata + at, buf.cdata + at + len(mki), tag)
        return length - len(mki)

    # -- whole packets, off the hot path ------------------------------------------------------

    def protect_packet(self, packet: bytes, *, rtcp: bool = False) -> bytes:
        """SRTP (or SRTCP) of one RTP (RTCP) packet; raises SrtpError."""
        return self._whole(self.protect_rtcp if rtcp else self.protect, packet)

    def unprotect_packet(self, packet: bytes, *, rtcp: bool = False) -> bytes:
        """The RTP (RTCP) packet inside one SRTP (SRTCP) packet; raises SrtpError."""
        return self._whole(self.unprotect_rtcp if rtcp else self.unprotect, packet)

    @staticmethod
    def _whole(step: Callable[[PacketBuffer, int], int], packet: bytes) -> bytes:
        if len(packet) > _SCRATCH_SIZE:
            raise SrtpError("packet too long")
        length = step(_SCRATCH, _SCRATCH.load(packet))
        if length < 0:
            raise SrtpError(status_text(-length))
        return bytes(_SCRATCH.view[:length])


def status_text(status: int) -> str:
    """libsrtp's words for an srtp_err_status_t."""
    return ERRORS[status] if 0 <= status < len(ERRORS) else f"libsrtp status {status}"


_AUTH_FAIL = 7  # srtp_err_status_auth_fail
_PROTECT = lib.srtp_protect
_PROTECT_RTCP = lib.srtp_protect_rtcp
_UNPROTECT = lib.srtp_unprotect
_UNPROTECT_RTCP = lib.srtp_unprotect_rtcp
_SCRATCH_SIZE = 4096
_SCRATCH = PacketBuffer(_SCRATCH_SIZE)
