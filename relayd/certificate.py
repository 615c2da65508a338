"""relayd's DTLS certificate: generated at start-up or loaded, and its SDP fingerprint.

rtpengine generates one self-signed certificate per process (EC prime256v1 by
default) and announces it in ``a=fingerprint`` (RFC 8122 §5); relayd does the
same, or loads ``tls-certificate`` / ``tls-private-key`` when both are set.
Workers receive the PEM text over IPC (``ipc.Configure``), so every worker
presents the same certificate and the fingerprint in the SDP matches whichever
worker handles the stream.
"""

from __future__ import annotations

import datetime
import hashlib
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import NameOID

__all__ = [
    "HASHES",
    "Certificate",
    "CertificateError",
    "create",
    "fingerprint_of",
    "load",
    "load_or_create",
    "parse_fingerprint",
]

# RFC 8122 §5 hash function names, as they appear in a=fingerprint
HASHES: dict[str, str] = {
    "sha-1": "sha1",
    "sha-224": "sha224",
    "sha-256": "sha256",
    "sha-384": "sha384",
    "sha-512": "sha512",
}

_VALIDITY = datetime.timedelta(days=365)


class CertificateError(ValueError):
    """A certificate or key that cannot be loaded, or an unknown fingerprint hash."""


def fingerprint_of(der: bytes, hash_name: str = "sha-256") -> str:
    """``AB:CD:…`` (uppercase hex, colons) of a DER certificate, RFC 8122 §5."""
    try:
        algorithm = HASHES[hash_name.lower()]
    except KeyError:
        raise CertificateError(f"unknown fingerprint hash {hash_name!r}") from None
    digest = hashlib.new(algorithm, der).digest()
    return ":".join(f"{byte:02X}" for byte in digest)


def parse_fingerprint(text: str) -> tuple[str, str]:
    """``"sha-256 ab:cd:…"`` → ``("sha-256", "AB:CD:…")``; raises CertificateError."""
    hash_name, _, value = text.strip().partition(" ")
    hash_name = hash_name.lower()
    value = value.strip().upper()
    if hash_name not in HASHES:
        raise CertificateError(f"unknown fingerprint hash {hash_name!r}")
    size = hashlib.new(HASHES[hash_name]).digest_size
    parts = value.split(":")
    if len(parts) != size or not all(
        len(p) == 2 and all(c in "0123456789ABCDEF" for c in p) for p in parts
    ):
        raise CertificateError(f"malformed {hash_name} fingerprint {value!r}")
    return hash_name, value


@dataclass(frozen=True, slots=True)
class Certificate:
    """A certificate and its private key, both PEM text."""

    pem: str
    key_pem: str

    @property
    def der(self) -> bytes:
        return x509.load_pem_x509_certificate(self.pem.encode()).public_bytes(
            serialization.Encoding.DER
        )

    def fingerprint(self, hash_name: str = "sha-256") -> str:
        return fingerprint_of(self.der, hash_name)


def create(common_name: str = "relayd") -> Certificate:
    """A fresh ECDSA P-256 self-signed certificate, as rtpengine makes at start-up."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + _VALIDITY)
        .sign(key, hashes.SHA256())
    )
    return _as_pem(cert, key)


def load(cert_path: str, key_path: str) -> Certificate:
    """Load a PEM certificate and its PEM private key; checks that they belong together."""
    try:
        cert_pem = Path(cert_path).read_bytes()
        key_pem = Path(key_path).read_bytes()
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise CertificateError(f"cannot load {cert_path} / {key_path}: {exc}") from None
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(
        serialization.Encoding.DER, public
    ) != key.public_key().public_bytes(serialization.Encoding.DER, public):
        raise CertificateError(f"{key_path} is not the private key of {cert_path}")
    return _as_pem(cert, key)


def _as_pem(cert: x509.Certificate, key: PrivateKeyTypes) -> Certificate:
    return Certificate(
        cert.public_bytes(serialization.Encoding.PEM).decode(),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode(),
    )


def load_or_create(cert_path: str | None, key_path: str | None) -> Certificate:
    """Load ``tls-certificate``/``tls-private-key`` when both are given, else generate."""
    if cert_path and key_path:
        return load(cert_path, key_path)
    if cert_path or key_path:
        raise CertificateError("tls-certificate and tls-private-key must be given together")
    return create()
