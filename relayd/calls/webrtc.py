"""SRTP, DTLS and ICE towards one party, as rtpengine 10.5 negotiates them in SDP (pure).

Rules (rtpengine 10.5's ng flags for SRTP/DTLS/ICE, checked by the oracle corpus):

* The transport towards a party: in an offer, the ``transport-protocol`` asked
  for or the offerer's own; in an answer, what that party offered.
* Towards an SRTP transport (``…/SAVP``, ``…/SAVPF``, ``UDP/TLS/…``) an offer
  carries SDES lines for every suite rtpengine knows, in its order (the
  offerer's own lines first and verbatim, then ours numbered on), unless
  ``SDES-off`` or ``SDES-no-<suite>``; and DTLS (``a=setup:actpass`` and our
  fingerprint) unless ``DTLS=off``.
* An answer towards a DTLS offerer says ``a=setup:active`` (``passive`` with
  ``DTLS=passive``) and our fingerprint; towards an SDES offerer one line: the
  offerer's first suite we support, its tag, a new key of ours. If the answerer
  took one of the offerer's own lines, its line goes back as it is (pass-through,
  no crypto in between), without the lifetime parameter.
* ICE: our credentials and a host candidate per local address of the party's
  interface, when :mod:`relayd.calls.ice` says we do ICE with the party.
"""

from __future__ import annotations

import base64
import dataclasses
import secrets
import string
from dataclasses import dataclass

__all__ = [
    "SUITES",
    "Crypto",
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


def is_srtp(protocol: str) -> bool:
    return "/SAVP" in protocol


@dataclass(frozen=True, slots=True)
class Crypto:
    """One ``a=crypto`` line (RFC 4568 §9.1): tag, suite, key ``inline:`` and the rest."""

    tag: int
    suite: str
    key: str  # base64 of master key || salt, as written
    lifetime_mki: str = ""  # "|2^31|1:1" as written after the key
    session_params: str = ""
    ours: bool = False  # a key relayd made, not one passed through

    def value(self) -> str:
        """The attribute value: ``crypto:TAG SUITE inline:KEY…``."""
        return f"crypto:{self.tag} {self.inline()}"

    def inline(self) -> str:
        """The key part after the tag, as a worker takes it (``SocketSpec.srtp_in``)."""
        text = f"{self.suite} inline:{self.key}{self.lifetime_mki}"
        return f"{text} {self.session_params}" if self.session_params else text

    def without_lifetime(self) -> Crypto:
        """The same key without its lifetime: "|2^31|1:4" → "|1:4" (an MKI stays)."""
        kept = "".join(f"|{p}" for p in self.lifetime_mki.split("|") if ":" in p)
        return dataclasses.replace(self, lifetime_mki=kept)


def parse_crypto(value: str) -> Crypto | None:
    """The value of an ``a=crypto`` attribute (without ``crypto:``); None if malformed."""
    parts = value.split()
    if len(parts) < 3 or not parts[0].isdigit() or not parts[2].startswith("inline:"):
        return None
    key, bar, rest = parts[2][len("inline:") :].partition("|")
    return Crypto(int(parts[0]), parts[1], key, bar + rest, " ".join(parts[3:]))


def new_crypto(tag: int, suite: str) -> Crypto:
    """A fresh key from the CSPRNG, base64 without padding as rtpengine writes it."""
    raw = secrets.token_bytes(_KEY_LENGTH[suite])
    return Crypto(tag, suite, base64.b64encode(raw).decode().rstrip("="), ours=True)


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
