"""DTLS-SRTP endpoints (relayd/worker/dtls.py) talking to each other in memory, and the certificate.

Two sans-I/O endpoints hand each other their datagrams; nothing touches a socket.
"""

from __future__ import annotations

import datetime
import re
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from relayd.certificate import (
    Certificate,
    CertificateError,
    create,
    fingerprint_of,
    load,
    load_or_create,
    parse_fingerprint,
)
from relayd.worker.dtls import (
    Connected,
    DtlsContext,
    DtlsEndpoint,
    DtlsEvent,
    Failed,
    split_records,
)
from relayd.worker.srtp import SrtpSession

CLIENT_CERT = create("client")
SERVER_CERT = create("server")


def sdp_fingerprint(cert: Certificate) -> str:
    return f"sha-256 {cert.fingerprint('sha-256')}"


def rsa_certificate(bits: int = 4096) -> Certificate:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "a" * 60)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return Certificate(
        cert.public_bytes(serialization.Encoding.PEM).decode(),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode(),
    )


class Pair:
    """An active client and a passive server, and everything they said."""

    def __init__(
        self,
        client_cert: Certificate = CLIENT_CERT,
        server_cert: Certificate = SERVER_CERT,
        *,
        client_expects: str | None = None,
        server_expects: str | None = None,
    ) -> None:
        self.client = DtlsEndpoint(
            DtlsContext(client_cert.pem, client_cert.key_pem),
            "active",
            client_expects if client_expects is not None else sdp_fingerprint(server_cert),
        )
        self.server = DtlsEndpoint(
            DtlsContext(server_cert.pem, server_cert.key_pem),
            "passive",
            server_expects if server_expects is not None else sdp_fingerprint(client_cert),
        )
        self.events: dict[str, list[DtlsEvent]] = {"client": [], "server": []}
        self.datagrams: list[bytes] = []

    def run(self, now: float = 0.0, rounds: int = 10, drop_first_flight: bool = False) -> None:
        self.events["client"] += self.client.start(now)
        for _ in range(rounds):
            to_server = self.client.datagrams()
            if drop_first_flight:
                to_server, drop_first_flight = [], False
            self.datagrams += to_server
            for data in to_server:
                self.events["server"] += self.server.receive(data, now)
            to_client = self.server.datagrams()
            self.datagrams += to_client
            for data in to_client:
                self.events["client"] += self.client.receive(data, now)
            if not to_server and not to_client:
                break


def only(events: list[DtlsEvent]) -> DtlsEvent:
    assert len(events) == 1, events
    return events[0]


def test_handshake_completes_and_the_keys_cross() -> None:
    pair = Pair()
    pair.run()
    assert (pair.client.state, pair.server.state) == ("connected", "connected")
    client, server = only(pair.events["client"]), only(pair.events["server"])
    assert isinstance(client, Connected) and isinstance(server, Connected)
    assert client.profile == server.profile == "SRTP_AEAD_AES_256_GCM"
    assert client.outbound == server.inbound
    assert client.inbound == server.outbound
    assert client.outbound.master != client.inbound.master
    assert len(client.outbound.master) == 32 + 12
    # the keys drive SRTP both ways
    rtp = bytes.fromhex("80001234000000a0deadbeef") + bytes(160)
    sent = SrtpSession(client.outbound, inbound=False).protect_packet(rtp)
    assert SrtpSession(server.inbound, inbound=True).unprotect_packet(sent) == rtp
    back = SrtpSession(server.outbound, inbound=False).protect_packet(rtp)
    assert SrtpSession(client.inbound, inbound=True).unprotect_packet(back) == rtp
    assert pair.client.next_timeout() is None and pair.server.next_timeout() is None
    assert all(len(d) <= 1200 for d in pair.datagrams)
    assert all(20 <= d[0] <= 63 for d in pair.datagrams)  # RFC 7983: DTLS range


def test_wrong_fingerprint_at_the_server_fails_both() -> None:
    other = create("impostor")
    # the client presents a certificate its SDP did not announce
    pair = Pair(other, SERVER_CERT, server_expects=sdp_fingerprint(CLIENT_CERT))
    pair.run()
    server = only(pair.events["server"])
    assert isinstance(server, Failed)
    assert server.reason.startswith("fingerprint mismatch: got sha-256 ")
    assert other.fingerprint() in server.reason
    assert pair.server.state == f"failed: {server.reason}"
    client = only(pair.events["client"])
    assert isinstance(client, Failed)  # the server's alert ends the client too
    assert pair.client.state.startswith("failed: ")


def test_wrong_fingerprint_at_the_client_fails() -> None:
    pair = Pair(client_expects=sdp_fingerprint(create("someone else")))
    pair.run()
    client = only(pair.events["client"])
    assert isinstance(client, Failed)
    assert client.reason.startswith("fingerprint mismatch")
    assert not any(isinstance(e, Connected) for e in pair.events["server"])


@pytest.mark.parametrize("expects", ["", "sha-256 00:11", "md5 " + ":".join(["AA"] * 16)])
def test_missing_or_unusable_fingerprint_fails(expects: str) -> None:
    pair = Pair(server_expects=expects)
    pair.run()
    assert isinstance(only(pair.events["server"]), Failed)
    assert pair.server.state.startswith("failed: ")


def test_other_hash_functions_are_accepted() -> None:
    pair = Pair(server_expects=f"sha-1 {CLIENT_CERT.fingerprint('sha-1').lower()}")
    pair.run()
    assert pair.server.state == "connected"


def test_lost_client_hello_is_retransmitted_on_the_timer() -> None:
    """OpenSSL keeps its own clock, so this waits the real first timeout (1 s)."""
    pair = Pair()
    start = time.monotonic()
    pair.client.start(start)
    assert pair.client.datagrams()  # the ClientHello, lost on the way
    deadline = pair.client.next_timeout()
    assert deadline is not None and start + 0.9 <= deadline <= start + 1.01
    assert pair.client.handle_timeout(start + 0.2) == []
    assert pair.client.datagrams() == []
    time.sleep(max(deadline - time.monotonic(), 0) + 0.01)
    pair.client.handle_timeout(time.monotonic())
    again = pair.client.datagrams()
    assert len(again) == 1 and again[0][0] == 22 and again[0][13] == 1  # a ClientHello
    later = pair.client.next_timeout()
    assert later is not None and later >= deadline + 1.5  # back-off doubles
    for data in again:
        pair.server.receive(data, deadline)
    pair.run(deadline)
    assert (pair.client.state, pair.server.state) == ("connected", "connected")


def test_large_certificates_are_fragmented_to_the_mtu() -> None:
    big = rsa_certificate()
    pair = Pair(big, SERVER_CERT)
    pair.run()
    assert pair.server.state == "connected"
    assert max(len(d) for d in pair.datagrams) <= 1200
    assert sum(len(d) for d in pair.datagrams) > 2400  # it did need several datagrams


def test_role_must_be_active_or_passive() -> None:
    context = DtlsContext(SERVER_CERT.pem, SERVER_CERT.key_pem)
    with pytest.raises(ValueError, match="active or passive"):
        DtlsEndpoint(context, "actpass", sdp_fingerprint(CLIENT_CERT))


def test_split_records_packs_whole_records() -> None:
    def record(size: int, fill: int) -> bytes:
        return bytes([22, 0xFE, 0xFD]) + bytes(8) + size.to_bytes(2, "big") + bytes([fill]) * size

    a, b, c = record(500, 1), record(600, 2), record(100, 3)
    assert split_records(a + b + c, 1200) == [a + b, c]
    assert split_records(a + b + c, 1300) == [a + b + c]
    assert split_records(a, 100) == [a]  # one record larger than the MTU goes alone
    assert split_records(b"", 1200) == []


# -- relayd/certificate.py ----------------------------------------------------------------------


def test_generated_certificate_is_ecdsa_p256_with_an_sdp_fingerprint() -> None:
    cert = create()
    parsed = x509.load_pem_x509_certificate(cert.pem.encode())
    assert parsed.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    fingerprint = cert.fingerprint("sha-256")
    assert len(fingerprint) == 95
    assert re.fullmatch(r"([0-9A-F]{2}:){31}[0-9A-F]{2}", fingerprint)
    assert fingerprint == parsed.fingerprint(hashes.SHA256()).hex(":").upper()
    assert fingerprint_of(cert.der, "SHA-1") == parsed.fingerprint(hashes.SHA1()).hex(":").upper()
    assert parse_fingerprint(f"SHA-256 {fingerprint.lower()}") == ("sha-256", fingerprint)


def test_load_or_create(tmp_path: Path) -> None:
    made = load_or_create(None, None)
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_text(made.pem)
    key_path.write_text(made.key_pem)
    loaded = load_or_create(str(cert_path), str(key_path))
    assert loaded.fingerprint() == made.fingerprint()
    assert loaded.key_pem == made.key_pem
    other = create()
    key_path.write_text(other.key_pem)
    with pytest.raises(CertificateError, match="is not the private key of"):
        load(str(cert_path), str(key_path))
    with pytest.raises(CertificateError, match="must be given together"):
        load_or_create(str(cert_path), None)
    with pytest.raises(CertificateError, match="cannot load"):
        load(str(tmp_path / "missing.pem"), str(key_path))


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("sha-256", "malformed"),
        ("sha-256 AB:CD", "malformed"),
        ("sha-256 " + ":".join(["G0"] * 32), "malformed"),
        ("md5 AB", "unknown fingerprint hash 'md5'"),
    ],
)
def test_parse_fingerprint_errors(text: str, error: str) -> None:
    with pytest.raises(CertificateError, match=error):
        parse_fingerprint(text)
