"""SRTP, DTLS and ICE towards one party, as rtpengine 10.5 negotiates them in SDP (pure).

Rules (rtpengine 10.5's ng flags for SRTP/DTLS/ICE, checked by the oracle corpus
and rtpengine's own daemon tests); who chooses what is :mod:`relayd.calls.negotiation`:

* Towards an SRTP transport (``…/SAVP``, ``…/SAVPF``, ``UDP/TLS/…``, or RTP/AVP(F)
  carrying SRTP opportunistically, RFC 8643) an offer carries SDES lines for
  every suite rtpengine knows, in its order (the offerer's own lines first, then
  ours numbered on), unless ``SDES-off`` or ``SDES-no-<suite>``; and DTLS
  (``a=setup:actpass`` and our fingerprint) unless ``DTLS=off``.
* An answer towards a DTLS offerer says ``a=setup:active`` (``passive`` with
  ``DTLS=passive`` or ``DTLS-reverse=passive``, or when the offerer is active) and
  our fingerprint; towards an SDES offerer one line: the offerer's first suite we
  support, its tag, a new key of ours. If the answerer took a suite the offerer
  offered, its line goes back under the offerer's tag (pass-through, no crypto in
  between).
* Every a=crypto line is written the way rtpengine writes it: the key decoded and
  encoded again as base64 without padding (``SDES-pad`` / ``pad-crypto``: with it),
  no lifetime (``SDES-lifetime``: ``|2^31`` on every line), the MKI, the session
  parameters rtpengine knows. A line with an unknown suite, a key of the wrong
  length or a bad lifetime is ignored.
* Our fingerprint uses the hash ``DTLS-fingerprint`` asks for, else the party's
  own, else sha-256; once written to a party it stays.
* ICE: our credentials and a host candidate per local address of the party's
  interface, when :mod:`relayd.calls.ice` says we do ICE with the party.
"""

from __future__ import annotations

import base64
import secrets
import string
from dataclasses import dataclass

__all__ = [
    "FINGERPRINT_HASHES",
    "OSRTP_CAPABLE",
    "SUITES",
    "Crypto",
    "is_rtp",
    "is_srtp",
    "new_credentials",
    "new_crypto",
    "parse_crypto",
]

# rtpengine's suites in its order, with their master key + salt lengths (bytes)
SUITES: tuple[tuple[str, int], ...] = (
    ("AEAD_AES_256_GCM", 44),
    ("AEAD_AES_128_GCM", 28),
    ("AES_256_CM_HMAC_SHA1_80", 46),
    ("AES_256_CM_HMAC_SHA1_32", 46),
    ("AES_192_CM_HMAC_SHA1_80", 38),
    ("AES_192_CM_HMAC_SHA1_32", 38),
    ("AES_CM_128_HMAC_SHA1_80", 30),
    ("AES_CM_128_HMAC_SHA1_32", 30),
    ("F8_128_HMAC_SHA1_80", 30),
    ("F8_128_HMAC_SHA1_32", 30),
    ("NULL_HMAC_SHA1_80", 30),
    ("NULL_HMAC_SHA1_32", 30),
)
_KEY_LENGTH = dict(SUITES)


# a=fingerprint hash functions rtpengine knows, its default first (RFC 8122 §5)
FINGERPRINT_HASHES = ("sha-256", "sha-1", "sha-224", "sha-384", "sha-512")

# plain RTP transports that carry SRTP opportunistically (RFC 8643) when their SDP has
# a=crypto or a=fingerprint: the m= line keeps saying RTP/AVP(F)
OSRTP_CAPABLE = frozenset({"RTP/AVP", "RTP/AVPF"})


def is_srtp(protocol: str) -> bool:
    return "/SAVP" in protocol


def is_rtp(protocol: str) -> bool:
    """An RTP transport (``RTP/…``, ``UDP/TLS/RTP/…``): not T.38's udptl, not MSRP."""
    return protocol.startswith(("RTP/", "UDP/TLS/RTP/"))


@dataclass(frozen=True, slots=True)
class Crypto:
    """One ``a=crypto`` line (RFC 4568 §9.1) as rtpengine holds it: tag, suite, the key
    (master key || salt, canonical base64 without padding), MKI, session parameters.

    A key lifetime is checked when parsed and then dropped: rtpengine writes none, or
    ``|2^31`` for every line with ``SDES-lifetime``."""

    tag: int
    suite: str
    key: str  # base64 of master key || salt, without "=" padding
    mki: str = ""  # "|1:4" as written after the key (value:length), "" when none
    session_params: str = ""  # the ones rtpengine knows, in its order
    ours: bool = False  # a key relayd made, not one passed through

    def value(self, *, pad: bool = False, lifetime: bool = False) -> str:
        """The attribute value: ``crypto:TAG SUITE inline:KEY…``; ``pad`` puts the base64
        padding back (``SDES-pad``, ``pad crypto``), ``lifetime`` adds ``|2^31``."""
        key = self.key + "=" * (-len(self.key) % 4) if pad else self.key
        text = f"crypto:{self.tag} {self.suite} inline:{key}"
        text += f"|2^31{self.mki}" if lifetime else self.mki
        return f"{text} {self.session_params}" if self.session_params else text

    def inline(self) -> str:
        """The key part after the tag, as a worker takes it (``SocketSpec.srtp_in``)."""
        text = f"{self.suite} inline:{self.key}{self.mki}"
        return f"{text} {self.session_params}" if self.session_params else text


# the session parameters rtpengine understands, in the order it writes them
_SESSION_PARAMS = ("UNENCRYPTED_SRTP", "UNENCRYPTED_SRTCP", "UNAUTHENTICATED_SRTP")
_MAX_LIFETIME = 1 << 48  # RFC 3711 §9.2: SRTP's limit; rtpengine refuses a longer one


def _lifetime_ok(text: str) -> bool:
    if text.startswith("2^"):
        exponent = text[2:]
        return exponent.isascii() and exponent.isdigit() and 0 < int(exponent) <= 48
    return text.isascii() and text.isdigit() and 0 < int(text) <= _MAX_LIFETIME


def _mki_ok(text: str) -> bool:
    value, colon, length = text.partition(":")
    return bool(colon) and value.isdigit() and length.isdigit() and 0 < int(length) <= 128


def parse_crypto(value: str) -> Crypto | None:
    """The value of an ``a=crypto`` attribute (without ``crypto:``); None where rtpengine
    ignores the line: a suite it does not know, a key of the wrong length, a bad
    lifetime or MKI. The key is decoded and written again the way rtpengine writes it."""
    parts = value.split()
    if len(parts) < 3 or not (parts[0].isascii() and parts[0].isdigit()):
        return None
    suite = parts[1].upper()
    method, _, params = parts[2].partition(":")
    if suite not in _KEY_LENGTH or method.lower() != "inline":
        return None
    text, *rest = params.split("|")
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except ValueError:  # binascii.Error
        return None
    if len(raw) != _KEY_LENGTH[suite] or len(rest) > 2:
        return None
    mki = ""
    if rest and ":" in rest[-1]:
        mki = rest.pop()
        if not _mki_ok(mki):
            return None
        mki = f"|{mki}"
    if rest and not _lifetime_ok(rest[0]):
        return None
    known = {p.upper() for p in parts[3:]}
    session = " ".join(p for p in _SESSION_PARAMS if p in known)
    return Crypto(int(parts[0]), suite, _b64(raw), mki, session)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode().rstrip("=")


def new_crypto(tag: int, suite: str) -> Crypto:
    """A fresh key from the CSPRNG, base64 without padding as rtpengine writes it."""
    return Crypto(tag, suite, _b64(secrets.token_bytes(_KEY_LENGTH[suite])), ours=True)


_ICE_CHARS = string.ascii_letters + string.digits


def new_credentials() -> tuple[str, str]:
    """ICE ufrag (8 characters) and password (26), as rtpengine makes them."""
    pick = secrets.choice
    return "".join(pick(_ICE_CHARS) for _ in range(8)), "".join(pick(_ICE_CHARS) for _ in range(26))


def new_foundation() -> str:
    return "".join(secrets.choice(_ICE_CHARS) for _ in range(16))


def allowed_suites(sdes: set[str]) -> list[str]:
    """rtpengine's suites minus ``SDES-no-…``; ``SDES-only-…`` is unknown to 10.5."""
    refused = {flag[3:].upper().replace("-", "_") for flag in sdes if flag.startswith("no-")}
    return [name for name, _ in SUITES if name not in refused]
