"""DTLS-SRTP for one socket, without I/O: datagrams in, datagrams and events out.

Rules (RFC 5763, RFC 5764):

* Our role comes from the SDP (``a=setup``): ``active`` is the DTLS client and
  sends the ClientHello from :meth:`DtlsEndpoint.start`; ``passive`` is the
  server and waits. Both present relayd's certificate and demand the peer's.
* The peer's certificate is accepted only if its hash equals the fingerprint
  the peer put in its SDP (RFC 5763 §5); a mismatch aborts the handshake with an
  alert and the endpoint ends ``failed``. No CA is involved.
* On completion the negotiated protection profile and 2·(key + salt) bytes of
  ``EXTRACTOR-dtls_srtp`` give the SRTP keys (RFC 5764 §4.2): client write key
  and salt protect what the client sends, server write key and salt what the
  server sends.
* Records leave in datagrams of at most ``mtu`` bytes (1200, as rtpengine):
  OpenSSL's memory BIO runs a flight's records together, so they are split at
  record boundaries and packed again.
* Timers: :meth:`next_timeout` gives the retransmission deadline (OpenSSL's
  doubling back-off), :meth:`handle_timeout` retransmits a flight. OpenSSL
  keeps its own clock, so ``now`` must be a real clock (CLOCK_MONOTONIC); a
  timeout handled a little early is simply re-armed for the rest. After
  completion records are still read, so a peer that lost our last flight gets
  it again, and a close_notify ends the association.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL

from relayd.certificate import CertificateError, fingerprint_of, parse_fingerprint
from relayd.worker.srtp import DTLS_PROFILES, SUITES, SdesKey

__all__ = [
    "Closed",
    "Connected",
    "DtlsContext",
    "DtlsEndpoint",
    "DtlsEvent",
    "Failed",
    "Phase",
    "Role",
    "split_records",
]

Phase = Literal["connecting", "connected", "closed", "failed"]
Role = Literal["active", "passive"]
_ROLES: dict[str, Role] = {"active": "active", "passive": "passive"}

_PROFILES = b":".join(p.encode() for p in DTLS_PROFILES if DTLS_PROFILES[p] in SUITES)
_DTLS1_2 = 0xFEFD
_RECORD_HEADER = 13
_EXPORTER_LABEL = b"EXTRACTOR-dtls_srtp"


@dataclass(frozen=True, slots=True)
class Connected:
    """The handshake completed: ``inbound`` unprotects what the peer sends, ``outbound``
    protects what we send."""

    profile: str
    inbound: SdesKey
    outbound: SdesKey


@dataclass(frozen=True, slots=True)
class Failed:
    reason: str


@dataclass(frozen=True, slots=True)
class Closed:
    """The peer sent close_notify."""


DtlsEvent = Connected | Failed | Closed


def split_records(data: bytes, mtu: int) -> list[bytes]:
    """Pack the DTLS records in ``data`` into datagrams of at most ``mtu`` bytes."""
    datagrams: list[bytes] = []
    current = b""
    pos = 0
    while pos < len(data):
        if pos + _RECORD_HEADER > len(data):
            record = data[pos:]  # not a whole record: let the peer judge it
        else:
            size = int.from_bytes(data[pos + 11 : pos + 13], "big")
            record = data[pos : pos + _RECORD_HEADER + size]
        pos += len(record)
        if current and len(current) + len(record) > mtu:
            datagrams.append(current)
            current = b""
        current += record
    if current:
        datagrams.append(current)
    return datagrams


class DtlsContext:
    """relayd's certificate and DTLS settings, shared by every endpoint of a worker."""

    def __init__(self, certificate_pem: str, private_key_pem: str) -> None:
        try:
            cert = x509.load_pem_x509_certificate(certificate_pem.encode())
            key = serialization.load_pem_private_key(private_key_pem.encode(), password=None)
        except ValueError as exc:
            raise CertificateError(f"bad DTLS certificate or key: {exc}") from None
        ctx = SSL.Context(SSL.DTLS_METHOD)
        ctx.use_certificate(cert)
        ctx.use_privatekey(key)  # type: ignore[arg-type]
        ctx.check_privatekey()
        ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, _verify)
        ctx.set_tlsext_use_srtp(_PROFILES)
        with contextlib.suppress(SSL.Error, ValueError, AttributeError):
            ctx.set_max_proto_version(_DTLS1_2)  # WebRTC speaks DTLS 1.2
        self.ctx = ctx
        self.fingerprint = fingerprint_of(cert.public_bytes(serialization.Encoding.DER))


def _verify(conn: SSL.Connection, cert: Any, _errno: int, depth: int, _ok: int) -> bool:
    """Accept the peer's certificate chain only if its end certificate has the SDP hash."""
    if depth:
        return True  # intermediate certificates mean nothing here: only the hash counts
    endpoint: DtlsEndpoint = conn.get_app_data()
    return endpoint._check_peer(cert)


class DtlsEndpoint:
    """One DTLS-SRTP association (one socket, one peer)."""

    def __init__(
        self, context: DtlsContext, role: str, fingerprint: str, *, mtu: int = 1200
    ) -> None:
        known = _ROLES.get(role)
        if known is None:
            raise ValueError(f"DTLS role must be active or passive, not {role!r}")
        self.role = known
        self.mtu = mtu
        self.phase: Phase = "connecting"
        self.failure = ""  # why, once the phase is "failed"
        self.started = False
        self._deadline: float | None = None
        self._out: list[bytes] = []
        self._mismatch = ""
        try:
            self._hash, self._expected = parse_fingerprint(fingerprint)
        except CertificateError as exc:
            self._hash, self._expected = "", ""
            self._mismatch = str(exc) if fingerprint else "no peer fingerprint"
        conn = SSL.Connection(context.ctx, None)
        conn.set_app_data(self)
        conn.set_ciphertext_mtu(mtu)
        if role == "active":
            conn.set_connect_state()
        else:
            conn.set_accept_state()
        self._conn = conn

    @property
    def state(self) -> str:
        """The phase as reported to relayd: ``connecting``, ``connected``, ``closed`` or
        ``failed: <reason>``."""
        return f"failed: {self.failure}" if self.phase == "failed" else self.phase

    # -- inputs ------------------------------------------------------------------------------

    def start(self, now: float) -> list[DtlsEvent]:
        """Begin the handshake; the ClientHello is in :meth:`datagrams` for an active role."""
        if self.started or self.phase != "connecting":
            return []
        self.started = True
        return self._step(now)

    def receive(self, data: bytes, now: float) -> list[DtlsEvent]:
        """One datagram of DTLS records from the peer."""
        if self.phase in ("failed", "closed"):
            return []
        self.started = True
        try:
            self._conn.bio_write(data)
        except SSL.Error as exc:
            return self._fail(_reason(exc), now)
        if self.phase == "connected":
            return self._read(now)
        return self._step(now)

    def next_timeout(self) -> float | None:
        """When :meth:`handle_timeout` must be called (our clock), None: no timer."""
        return self._deadline

    def handle_timeout(self, now: float) -> list[DtlsEvent]:
        """Once the timer is due, let OpenSSL retransmit its last flight (RFC 6347 §4.2.4), found
        then in :meth:`datagrams`; an OpenSSL error fails the handshake."""
        if self._deadline is None or now < self._deadline:
            return []
        try:
            self._conn.DTLSv1_handle_timeout()
        except SSL.Error as exc:
            return self._fail(_reason(exc), now)
        self._flush(now)
        return []

    # -- outputs -----------------------------------------------------------------------------

    def datagrams(self) -> list[bytes]:
        """The datagrams to send to the peer since the last call."""
        out, self._out = self._out, []
        return out

    # -- internals ---------------------------------------------------------------------------

    def _check_peer(self, cert: Any) -> bool:
        if not self._expected:
            return False
        der = cert.to_cryptography().public_bytes(serialization.Encoding.DER)
        actual = fingerprint_of(der, self._hash)
        if actual != self._expected:
            self._mismatch = f"fingerprint mismatch: got {self._hash} {actual}"
            return False
        return True

    def _step(self, now: float) -> list[DtlsEvent]:
        try:
            self._conn.do_handshake()
        except SSL.WantReadError:
            self._flush(now)
            return []
        except SSL.Error as exc:
            return self._fail(self._mismatch or _reason(exc), now)
        event = self._connected()
        self._flush(now)
        return [event]

    def _connected(self) -> DtlsEvent:
        profile = self._conn.get_selected_srtp_profile().decode()
        suite = SUITES.get(DTLS_PROFILES.get(profile, ""))
        if suite is None:
            self.phase, self.failure = "failed", f"no SRTP profile negotiated ({profile or 'none'})"
            return Failed(self.failure)
        k, s = suite.key_length, suite.salt_length
        material = self._conn.export_keying_material(_EXPORTER_LABEL, 2 * (k + s))
        client = SdesKey(suite, material[:k] + material[2 * k : 2 * k + s])
        server = SdesKey(suite, material[k : 2 * k] + material[2 * k + s :])
        self.phase = "connected"
        if self.role == "active":
            return Connected(profile, inbound=server, outbound=client)
        return Connected(profile, inbound=client, outbound=server)

    def _read(self, now: float) -> list[DtlsEvent]:
        try:
            while True:
                self._conn.recv(2048)  # application data has no meaning here
        except SSL.WantReadError:
            self._flush(now)
            return []
        except SSL.ZeroReturnError:
            self.phase = "closed"
            self._flush(now)
            return [Closed()]
        except SSL.Error:
            self._flush(now)
            return []  # a damaged record after completion: the keys stand

    def _fail(self, reason: str, now: float) -> list[DtlsEvent]:
        self.phase, self.failure = "failed", reason
        self._flush(now)  # the alert, if OpenSSL wrote one
        self._deadline = None
        return [Failed(reason)]

    def _flush(self, now: float) -> None:
        data = b""
        while True:
            try:
                data += self._conn.bio_read(65536)
            except SSL.WantReadError:
                break
        if data:
            self._out.extend(split_records(data, self.mtu))
        remaining = self._conn.DTLSv1_get_timeout() if self.phase == "connecting" else None
        self._deadline = None if remaining is None else now + remaining


def _reason(exc: SSL.Error) -> str:
    for item in exc.args[0] if exc.args and isinstance(exc.args[0], list) else ():
        if isinstance(item, tuple) and item:
            return str(item[-1])
    return str(exc) or type(exc).__name__
