"""SRTP, DTLS-SRTP and ICE-lite through a real relay-worker process, end to end on loopback.

The test plays relayd: it binds the relay sockets, starts ``python -m relayd.worker``
on a SOCK_SEQPACKET link, sends ``Configure`` (with relayd's certificate) and a
``Forward`` whose SocketSpecs carry the crypto fields, and reads ``Stats``.
The peers are independent of the worker's code: pylibsrtp sessions for SRTP,
a pyOpenSSL DTLS endpoint with its own certificate, aioice.stun for checks.

Party X (the WebRTC / SRTP side) talks to relay sockets A; party Y (plain RTP)
to relay sockets B. Loopback only: no namespace, no root needed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import select
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pylibsrtp
import pytest
from aioice import ice as aioice_ice
from aioice import stun as aioice_stun
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL

from relayd.certificate import Certificate, create, fingerprint_of
from relayd.ipc import SocketSpec
from tests.support.worker_link import RelaySocket, WorkerLink, udp

RELAY_CERT = create("relayd")
PEER_CERT = create("peer")
X_SSRC, Y_SSRC = 0x0A0A0A0A, 0x0B0B0B0B
Address = tuple[str, int]

PROFILES = {
    "AES_CM_128_HMAC_SHA1_80": pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    "AES_CM_128_HMAC_SHA1_32": pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_32,
    "AEAD_AES_128_GCM": pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM,
    "AEAD_AES_256_GCM": pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_256_GCM,
}
KEY_SIZES = {  # master key + salt
    "AES_CM_128_HMAC_SHA1_80": 30,
    "AES_CM_128_HMAC_SHA1_32": 30,
    "AEAD_AES_128_GCM": 28,
    "AEAD_AES_256_GCM": 44,
}


def rtp(seq: int, ssrc: int) -> bytes:
    return (
        struct.pack("!BBHII", 0x80, 0, seq, seq * 160, ssrc) + bytes([seq & 0xFF, ssrc & 0xFF]) * 80
    )


def rtcp(seq: int, ssrc: int) -> bytes:
    """A sender report (PT 200) whose NTP timestamp carries ``seq``."""
    return struct.pack("!BBHIIIIII", 0x80, 200, 6, ssrc, seq, 0, seq * 160, seq, seq * 172)


def receive(sock: socket.socket, timeout: float = 2.0) -> tuple[bytes, Address]:
    ready, _, _ = select.select([sock], [], [], timeout)
    assert ready, f"nothing arrived on {sock.getsockname()} within {timeout}s"
    data, source = sock.recvfrom(4096)
    return data, source[:2]


def nothing(sock: socket.socket, timeout: float = 0.3) -> None:
    ready, _, _ = select.select([sock], [], [], timeout)
    assert not ready, f"unexpected packet: {sock.recvfrom(4096)!r}"


def sdes(suite: str, master: bytes) -> str:
    return f"{suite} inline:{base64.b64encode(master).decode().rstrip('=')}"


def sessions(suite: str, send_key: bytes, recv_key: bytes) -> tuple[Any, Any]:
    profile = PROFILES[suite]
    sender = pylibsrtp.Session(
        pylibsrtp.Policy(send_key, pylibsrtp.Policy.SSRC_ANY_OUTBOUND, srtp_profile=profile)
    )
    receiver = pylibsrtp.Session(
        pylibsrtp.Policy(recv_key, pylibsrtp.Policy.SSRC_ANY_INBOUND, srtp_profile=profile)
    )
    return sender, receiver


@dataclass
class Call:
    """Relay sockets A (towards X) and B (towards Y), and the peers' sockets."""

    a_rtp: RelaySocket = field(default_factory=RelaySocket)
    a_rtcp: RelaySocket = field(default_factory=RelaySocket)
    b_rtp: RelaySocket = field(default_factory=RelaySocket)
    b_rtcp: RelaySocket = field(default_factory=RelaySocket)
    x_rtp: socket.socket = field(default_factory=udp)
    x_rtcp: socket.socket = field(default_factory=udp)
    y_rtp: socket.socket = field(default_factory=udp)
    y_rtcp: socket.socket = field(default_factory=udp)

    def addr(self, sock: socket.socket) -> str:
        host, port = sock.getsockname()[:2]
        return f"{host} {port}"

    def forward(
        self, worker: WorkerLink, x: dict[str, Any], *, mux: bool, x_expect: str = ""
    ) -> None:
        """X's relay sockets get the crypto fields ``x``; ``mux``: X sends RTCP to A's RTP port."""
        x_rtp = x_expect or self.addr(self.x_rtp)
        worker.forward(
            "call 0",
            [
                (
                    SocketSpec(
                        "",
                        out=self.b_rtp.key,
                        out_rtcp=self.b_rtcp.key if mux else "",
                        expect=x_rtp,
                        **x,
                    ),
                    self.a_rtp,
                ),
                (
                    SocketSpec(
                        "", out=self.b_rtcp.key, expect=self.addr(self.x_rtcp), rtcp=True, **x
                    ),
                    self.a_rtcp,
                ),
                (SocketSpec("", out=self.a_rtp.key, expect=self.addr(self.y_rtp)), self.b_rtp),
                (
                    SocketSpec(
                        "",
                        out=self.a_rtp.key if mux else self.a_rtcp.key,
                        expect=self.addr(self.y_rtcp),
                        rtcp=True,
                    ),
                    self.b_rtcp,
                ),
            ],
        )

    def close(self) -> None:
        for relay in (self.a_rtp, self.a_rtcp, self.b_rtp, self.b_rtcp):
            relay.sock.close()
        for sock in (self.x_rtp, self.x_rtcp, self.y_rtp, self.y_rtcp):
            sock.close()


@pytest.fixture
def worker() -> Iterator[WorkerLink]:
    link = WorkerLink(certificate=RELAY_CERT.pem, key=RELAY_CERT.key_pem)
    try:
        yield link
    finally:
        print(link.close())  # the worker's log, shown when a test fails


@pytest.fixture
def call() -> Iterator[Call]:
    made = Call()
    try:
        yield made
    finally:
        made.close()


def check_media(
    call: Call, send: Any, recv: Any, *, mux: bool, count: int = 10, start: int = 0
) -> None:
    """Packet by packet, both ways: X's SRTP/SRTCP arrives at Y as plain RTP/RTCP and back."""
    x_rtcp = call.x_rtp if mux else call.x_rtcp
    a_rtcp = call.a_rtp if mux else call.a_rtcp
    for seq in range(start, start + count):
        call.x_rtp.sendto(send.protect(rtp(seq, X_SSRC)), call.a_rtp.address)
        assert receive(call.y_rtp) == (rtp(seq, X_SSRC), call.b_rtp.address)
        call.y_rtp.sendto(rtp(seq, Y_SSRC), call.b_rtp.address)
        data, source = receive(call.x_rtp)
        assert source == call.a_rtp.address
        assert data != rtp(seq, Y_SSRC)
        assert recv.unprotect(data) == rtp(seq, Y_SSRC)
        x_rtcp.sendto(send.protect_rtcp(rtcp(seq, X_SSRC)), a_rtcp.address)
        assert receive(call.y_rtcp) == (rtcp(seq, X_SSRC), call.b_rtcp.address)
        call.y_rtcp.sendto(rtcp(seq, Y_SSRC), call.b_rtcp.address)
        data, source = receive(x_rtcp)
        assert source == a_rtcp.address
        assert recv.unprotect_rtcp(data) == rtcp(seq, Y_SSRC)


# -- (1) SDES ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("suite", "mux"),
    [
        ("AES_CM_128_HMAC_SHA1_80", False),
        ("AEAD_AES_128_GCM", True),
        ("AES_CM_128_HMAC_SHA1_32", False),
    ],
)
def test_sdes_srtp_to_plain_both_ways(
    worker: WorkerLink, call: Call, suite: str, mux: bool
) -> None:
    x_key, relay_key = os.urandom(KEY_SIZES[suite]), os.urandom(KEY_SIZES[suite])
    send, recv = sessions(suite, x_key, relay_key)
    call.forward(
        worker, {"srtp_in": sdes(suite, x_key), "srtp_out": sdes(suite, relay_key)}, mux=mux
    )
    check_media(call, send, recv, mux=mux)

    # tampered, replayed, and wrongly keyed SRTP from elsewhere: dropped, counted, not learned
    tampered = bytearray(send.protect(rtp(100, X_SSRC)))
    tampered[30] ^= 0x40
    call.x_rtp.sendto(bytes(tampered), call.a_rtp.address)
    call.x_rtp.sendto(send.protect(rtp(101, X_SSRC)), call.a_rtp.address)
    assert receive(call.y_rtp)[0] == rtp(101, X_SSRC)
    replay = send.protect(rtp(102, X_SSRC))
    call.x_rtp.sendto(replay, call.a_rtp.address)
    assert receive(call.y_rtp)[0] == rtp(102, X_SSRC)
    call.x_rtp.sendto(replay, call.a_rtp.address)
    spoofer = udp()
    wrong, _ = sessions(suite, os.urandom(KEY_SIZES[suite]), relay_key)
    spoofer.sendto(wrong.protect(rtp(103, X_SSRC)), call.a_rtp.address)
    spoofer.sendto(b"\x80\x00" + bytes(40), call.a_rtp.address)
    nothing(call.y_rtp)
    spoofer.close()
    x_address = call.addr(call.x_rtp)
    stats = worker.stats(call.a_rtp.key, lambda s: s.errors >= 4)
    assert stats.errors == 4
    assert (stats.endpoint, stats.confirmed) == (x_address, True)
    assert stats.packets == 10 + (10 if mux else 0) + 2  # only what authenticated
    assert (stats.dtls, stats.ice) == ("", "")
    # and media still flows in order afterwards
    call.x_rtp.sendto(send.protect(rtp(104, X_SSRC)), call.a_rtp.address)
    assert receive(call.y_rtp)[0] == rtp(104, X_SSRC)


def test_sdes_reinvite_keeps_the_replay_window(worker: WorkerLink, call: Call) -> None:
    """A re-sent Forward with the same keys keeps the SRTP state: old packets stay replays."""
    suite = "AES_CM_128_HMAC_SHA1_80"
    x_key, relay_key = os.urandom(30), os.urandom(30)
    send, _ = sessions(suite, x_key, relay_key)
    keys = {"srtp_in": sdes(suite, x_key), "srtp_out": sdes(suite, relay_key)}
    call.forward(worker, keys, mux=False)
    sent = [send.protect(rtp(seq, X_SSRC)) for seq in range(3)]
    for seq, data in enumerate(sent):
        call.x_rtp.sendto(data, call.a_rtp.address)
        assert receive(call.y_rtp)[0] == rtp(seq, X_SSRC)
    call.forward(worker, keys, mux=False)  # nothing changed
    call.x_rtp.sendto(sent[1], call.a_rtp.address)
    nothing(call.y_rtp)
    # only our key towards X changes: X's key, and its replay window, stay
    relay_key2 = os.urandom(30)
    _, recv2 = sessions(suite, x_key, relay_key2)
    call.forward(worker, {**keys, "srtp_out": sdes(suite, relay_key2)}, mux=False)
    call.x_rtp.sendto(sent[2], call.a_rtp.address)
    nothing(call.y_rtp)
    call.y_rtp.sendto(rtp(1, Y_SSRC), call.b_rtp.address)
    assert recv2.unprotect(receive(call.x_rtp)[0]) == rtp(1, Y_SSRC)
    call.x_rtp.sendto(send.protect(rtp(3, X_SSRC)), call.a_rtp.address)
    assert receive(call.y_rtp)[0] == rtp(3, X_SSRC)
    assert worker.stats(call.a_rtp.key, lambda s: s.errors >= 2).errors == 2
    # new keys (a re-keying re-INVITE) take effect at once
    x_key2 = os.urandom(30)
    send2, _ = sessions(suite, x_key2, relay_key)
    call.forward(
        worker, {"srtp_in": sdes(suite, x_key2), "srtp_out": sdes(suite, relay_key2)}, mux=False
    )
    call.x_rtp.sendto(send2.protect(rtp(4, X_SSRC)), call.a_rtp.address)
    assert receive(call.y_rtp)[0] == rtp(4, X_SSRC)
    call.x_rtp.sendto(send.protect(rtp(5, X_SSRC)), call.a_rtp.address)
    nothing(call.y_rtp)


def test_plain_sockets_stay_plain(worker: WorkerLink, call: Call) -> None:
    """No crypto fields: bytes pass untouched, STUN-looking and DTLS-looking ones too."""
    call.forward(worker, {}, mux=False)
    for data in (rtp(1, X_SSRC), b"\x00\x01\x00\x00" + bytes(16), b"\x16\xfe\xfd" + bytes(20)):
        call.x_rtp.sendto(data, call.a_rtp.address)
        assert receive(call.y_rtp)[0] == data
    call.y_rtp.sendto(rtp(2, Y_SSRC), call.b_rtp.address)
    assert receive(call.x_rtp)[0] == rtp(2, Y_SSRC)


def test_a_send_only_socket_leaves_what_arrives_queued_until_it_listens(
    worker: WorkerLink, call: Call
) -> None:
    """The offerer's side of an offer not answered yet (relayd/plane/forwarding.py): the worker
    sends from A (Y's early media reaches X) but does not read A; what X sends meanwhile
    waits in A and goes on once the answer's Forward makes A listen."""
    call.forward(worker, {"listen": False}, mux=False)
    call.y_rtp.sendto(rtp(1, Y_SSRC), call.b_rtp.address)
    assert receive(call.x_rtp) == (rtp(1, Y_SSRC), call.a_rtp.address)
    call.x_rtp.sendto(rtp(2, X_SSRC), call.a_rtp.address)
    nothing(call.y_rtp)

    call.forward(worker, {}, mux=False)
    assert receive(call.y_rtp) == (rtp(2, X_SSRC), call.b_rtp.address)
    call.x_rtp.sendto(rtp(3, X_SSRC), call.a_rtp.address)
    assert receive(call.y_rtp)[0] == rtp(3, X_SSRC)


# -- (2) DTLS-SRTP -----------------------------------------------------------------------------


class DtlsPeer:
    """A DTLS-SRTP peer on a UDP socket (pyOpenSSL memory BIOs, as aiortc does)."""

    def __init__(
        self, sock: socket.socket, cert: Certificate, *, server: bool, profiles: bytes
    ) -> None:
        self.sock = sock
        self.server = server
        ctx = SSL.Context(SSL.DTLS_METHOD)
        ctx.use_certificate(x509.load_pem_x509_certificate(cert.pem.encode()))
        ctx.use_privatekey(serialization.load_pem_private_key(cert.key_pem.encode(), None))  # type: ignore[arg-type]
        ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, lambda *_: True)
        ctx.set_tlsext_use_srtp(profiles)
        self.conn = SSL.Connection(ctx, None)
        self.conn.set_ciphertext_mtu(1200)
        if server:
            self.conn.set_accept_state()
        else:
            self.conn.set_connect_state()

    def handshake(self, relay: Address, timeout: float = 5.0) -> None:
        """Run the handshake with ``relay``; raises SSL.Error if it fails."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.conn.do_handshake()
                done = True
            except SSL.WantReadError:
                done = False
            self._flush(relay)
            if done:
                return
            wait = self.conn.DTLSv1_get_timeout() or 1.0
            ready, _, _ = select.select([self.sock], [], [], min(wait, deadline - time.monotonic()))
            if time.monotonic() >= deadline:
                raise TimeoutError("DTLS handshake timed out")
            if ready:
                data, _ = self.sock.recvfrom(4096)
                self.conn.bio_write(data)
            else:
                self.conn.DTLSv1_handle_timeout()

    def _flush(self, relay: Address) -> None:
        while True:
            try:
                self.sock.sendto(self.conn.bio_read(4096), relay)
            except SSL.WantReadError:
                return

    def peer_fingerprint(self) -> str:
        cert = self.conn.get_peer_certificate(as_cryptography=True)
        assert cert is not None
        return fingerprint_of(cert.public_bytes(serialization.Encoding.DER))

    def srtp(self) -> tuple[str, Any, Any]:
        """(suite, sender, receiver): RFC 5764 §4.2 split, from this peer's point of view."""
        profile = self.conn.get_selected_srtp_profile().decode()
        suite = {
            "SRTP_AES128_CM_SHA1_80": "AES_CM_128_HMAC_SHA1_80",
            "SRTP_AES128_CM_SHA1_32": "AES_CM_128_HMAC_SHA1_32",
            "SRTP_AEAD_AES_128_GCM": "AEAD_AES_128_GCM",
            "SRTP_AEAD_AES_256_GCM": "AEAD_AES_256_GCM",
        }[profile]
        key = {30: 16, 28: 16, 44: 32}[KEY_SIZES[suite]]
        salt = KEY_SIZES[suite] - key
        m = self.conn.export_keying_material(b"EXTRACTOR-dtls_srtp", 2 * (key + salt))
        client = m[:key] + m[2 * key : 2 * key + salt]
        server = m[key : 2 * key] + m[2 * key + salt :]
        mine, theirs = (server, client) if self.server else (client, server)
        send, recv = sessions(suite, mine, theirs)
        return suite, send, recv


def dtls_fields(role: str, fingerprint_of: Certificate) -> dict[str, str]:
    return {"dtls": role, "dtls_fingerprint": f"sha-256 {fingerprint_of.fingerprint()}"}


@pytest.mark.parametrize(
    "profiles", [b"SRTP_AES128_CM_SHA1_80", b"SRTP_AEAD_AES_128_GCM:SRTP_AES128_CM_SHA1_80"]
)
def test_dtls_worker_passive(worker: WorkerLink, call: Call, profiles: bytes) -> None:
    call.forward(worker, dtls_fields("passive", PEER_CERT), mux=True)
    assert worker.stats(call.a_rtp.key).dtls == "connecting"
    # before the handshake nothing reaches X: no keys, and never plain RTP
    call.y_rtp.sendto(rtp(0, Y_SSRC), call.b_rtp.address)
    nothing(call.x_rtp)
    peer = DtlsPeer(call.x_rtp, PEER_CERT, server=False, profiles=profiles)
    peer.handshake(call.a_rtp.address)
    assert peer.peer_fingerprint() == RELAY_CERT.fingerprint()
    suite, send, recv = peer.srtp()
    assert suite == ("AEAD_AES_128_GCM" if b"GCM" in profiles else "AES_CM_128_HMAC_SHA1_80")
    assert worker.stats(call.a_rtp.key, lambda s: s.dtls == "connected").endpoint == call.addr(
        call.x_rtp
    )
    check_media(call, send, recv, mux=True, start=1)


def test_dtls_worker_active(worker: WorkerLink, call: Call) -> None:
    call.forward(worker, dtls_fields("active", PEER_CERT), mux=True)
    peer = DtlsPeer(call.x_rtp, PEER_CERT, server=True, profiles=b"SRTP_AEAD_AES_256_GCM")
    data, source = receive(call.x_rtp)  # the worker's ClientHello, to X's SDP address
    assert source == call.a_rtp.address
    assert data[0] == 22 and data[13] == 1
    peer.conn.bio_write(data)
    peer.handshake(call.a_rtp.address)
    assert peer.peer_fingerprint() == RELAY_CERT.fingerprint()
    suite, send, recv = peer.srtp()
    assert suite == "AEAD_AES_256_GCM"
    worker.stats(call.a_rtp.key, lambda s: s.dtls == "connected")
    check_media(call, send, recv, mux=True)


def test_dtls_wrong_fingerprint_is_refused(worker: WorkerLink, call: Call) -> None:
    call.forward(worker, dtls_fields("passive", PEER_CERT), mux=True)
    impostor = DtlsPeer(
        call.x_rtp, create("impostor"), server=False, profiles=b"SRTP_AES128_CM_SHA1_80"
    )
    with pytest.raises(SSL.Error):
        impostor.handshake(call.a_rtp.address)
    stats = worker.stats(call.a_rtp.key, lambda s: s.dtls.startswith("failed"))
    assert stats.dtls.startswith("failed: fingerprint mismatch: got sha-256 ")
    call.y_rtp.sendto(rtp(1, Y_SSRC), call.b_rtp.address)
    nothing(call.x_rtp)
    call.x_rtp.sendto(rtp(1, X_SSRC), call.a_rtp.address)  # plain RTP is no substitute
    nothing(call.y_rtp)
    # the real party (an impostor may have got in first) still gets through afterwards
    call.x_rtp.setblocking(False)
    with contextlib.suppress(BlockingIOError):
        while True:
            call.x_rtp.recv(4096)
    call.x_rtp.setblocking(True)
    peer = DtlsPeer(call.x_rtp, PEER_CERT, server=False, profiles=b"SRTP_AES128_CM_SHA1_80")
    peer.handshake(call.a_rtp.address)
    _, send, recv = peer.srtp()
    worker.stats(call.a_rtp.key, lambda s: s.dtls == "connected")
    check_media(call, send, recv, mux=True, count=3)


# -- (3) ICE-lite ------------------------------------------------------------------------------

UFRAG, PWD = "RelayUfr", "relay-password-0123456789"


def ice_check(
    sock: socket.socket, relay: Address, password: str = PWD, *, nominate: bool = True
) -> bytes:
    request = aioice_stun.Message(aioice_stun.Method.BINDING, aioice_stun.Class.REQUEST)
    request.attributes["USERNAME"] = f"{UFRAG}:peer"
    request.attributes["PRIORITY"] = 1853824767
    request.attributes["ICE-CONTROLLING"] = 0x0102030405060708
    if nominate:
        request.attributes["USE-CANDIDATE"] = None
    request.add_message_integrity(password.encode())
    sock.sendto(bytes(request), relay)
    return request.transaction_id


def test_ice_lite_answers_and_latches(worker: WorkerLink, call: Call) -> None:
    decoy = udp()  # X's SDP address: media goes there until a check nominates X
    ice = {"ice_ufrag": UFRAG, "ice_pwd": PWD, "ice_remote_ufrag": "peer"}
    call.forward(worker, ice, mux=True, x_expect=call.addr(decoy))
    assert worker.stats(call.a_rtp.key).ice == "checking"
    call.y_rtp.sendto(rtp(1, Y_SSRC), call.b_rtp.address)
    assert receive(decoy)[0] == rtp(1, Y_SSRC)

    tid = ice_check(call.x_rtp, call.a_rtp.address)
    data, source = receive(call.x_rtp)
    assert source == call.a_rtp.address
    reply = aioice_stun.parse_message(data)  # checks FINGERPRINT
    assert reply.message_class == aioice_stun.Class.RESPONSE
    assert reply.transaction_id == tid
    assert reply.check_message_integrity(PWD.encode())
    assert reply.attributes["XOR-MAPPED-ADDRESS"] == call.x_rtp.getsockname()
    stats = worker.stats(call.a_rtp.key, lambda s: s.ice == "nominated")
    assert (stats.endpoint, stats.confirmed) == (call.addr(call.x_rtp), True)
    call.y_rtp.sendto(rtp(2, Y_SSRC), call.b_rtp.address)
    assert receive(call.x_rtp)[0] == rtp(2, Y_SSRC)

    # a wrong password gets no answer, is counted, and moves nothing
    intruder = udp()
    ice_check(intruder, call.a_rtp.address, "wrong-password-0123456789")
    nothing(intruder)
    stats = worker.stats(call.a_rtp.key, lambda s: s.errors >= 1)
    assert (stats.errors, stats.endpoint) == (1, call.addr(call.x_rtp))
    call.y_rtp.sendto(rtp(3, Y_SSRC), call.b_rtp.address)
    assert receive(call.x_rtp)[0] == rtp(3, Y_SSRC)
    nothing(decoy)
    # a re-sent Forward (a re-INVITE) keeps the nomination
    call.forward(worker, ice, mux=True, x_expect=call.addr(decoy))
    call.y_rtp.sendto(rtp(4, Y_SSRC), call.b_rtp.address)
    assert receive(call.x_rtp)[0] == rtp(4, Y_SSRC)
    intruder.close()
    decoy.close()


def test_webrtc_like_ice_then_dtls_then_srtp(worker: WorkerLink, call: Call) -> None:
    """What a browser does on one muxed port: checks, DTLS (worker passive), SRTP."""
    decoy = udp()
    fields = {"ice_ufrag": UFRAG, "ice_pwd": PWD, **dtls_fields("passive", PEER_CERT)}
    call.forward(worker, fields, mux=True, x_expect=call.addr(decoy))
    ice_check(call.x_rtp, call.a_rtp.address, nominate=False)
    assert aioice_stun.parse_message(receive(call.x_rtp)[0]).check_message_integrity(PWD.encode())
    ice_check(call.x_rtp, call.a_rtp.address)
    receive(call.x_rtp)
    peer = DtlsPeer(call.x_rtp, PEER_CERT, server=False, profiles=b"SRTP_AEAD_AES_128_GCM")
    peer.handshake(call.a_rtp.address)
    _, send, recv = peer.srtp()
    stats = worker.stats(call.a_rtp.key, lambda s: (s.dtls, s.ice) == ("connected", "nominated"))
    assert stats.endpoint == call.addr(call.x_rtp)
    check_media(call, send, recv, mux=True)
    nothing(decoy)
    decoy.close()


# -- (4) a real WebRTC stack ----------------------------------------------------------------------


def webrtc_answer(port: int, ufrag: str, pwd: str, fingerprint: str, setup: str) -> str:
    """What the SDP side will write for ICE=force: ice-lite, our candidate and fingerprint."""
    return "\r\n".join(
        [
            "v=0",
            "o=- 1 1 IN IP4 127.0.0.1",
            "s=-",
            "t=0 0",
            "a=ice-lite",
            "a=group:BUNDLE 0",
            f"m=audio {port} UDP/TLS/RTP/SAVPF 0",
            "c=IN IP4 127.0.0.1",
            "a=mid:0",
            "a=sendrecv",
            "a=rtcp-mux",
            "a=rtpmap:0 PCMU/8000",
            f"a=ice-ufrag:{ufrag}",
            f"a=ice-pwd:{pwd}",
            f"a=fingerprint:sha-256 {fingerprint}",
            f"a=setup:{setup}",
            f"a=candidate:1 1 UDP 2130706431 127.0.0.1 {port} typ host",
            "a=end-of-candidates",
            "",
        ]
    )


def sdp_value(sdp: str, name: str) -> str:
    for line in sdp.splitlines():
        if line.startswith(f"a={name}:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no a={name} in {sdp}")


@pytest.mark.parametrize("role", ["passive", "active"])
def test_aiortc_peer_connection(worker: WorkerLink, call: Call, role: str) -> None:
    """aiortc (full ICE agent, DTLS, SRTP) ↔ worker ↔ plain RTP, audio both ways.

    The worker's DTLS ``role`` is what its answer's a=setup says."""
    aiortc = pytest.importorskip("aiortc")
    from aiortc.mediastreams import AudioStreamTrack

    if not [a for a in aioice_ice.get_host_addresses(True, False)]:
        pytest.skip("aiortc gathers no non-loopback IPv4 address here")

    async def scenario() -> tuple[list[bytes], int, str]:
        pc = aiortc.RTCPeerConnection()
        frames: list[object] = []
        tasks: list[asyncio.Task[None]] = []

        @pc.on("track")
        def on_track(track: Any) -> None:
            async def consume() -> None:
                while True:
                    try:
                        frames.append(await track.recv())
                    except Exception:
                        return

            tasks.append(asyncio.ensure_future(consume()))

        pc.addTrack(AudioStreamTrack())
        await pc.setLocalDescription(await pc.createOffer())
        offer = pc.localDescription.sdp
        fields = {
            "ice_ufrag": UFRAG,
            "ice_pwd": PWD,
            "ice_remote_ufrag": sdp_value(offer, "ice-ufrag"),
            "dtls": role,
            "dtls_fingerprint": sdp_value(offer, "fingerprint"),
        }
        call.forward(worker, fields, mux=True, x_expect="127.0.0.1 9")
        answer = webrtc_answer(call.a_rtp.address[1], UFRAG, PWD, RELAY_CERT.fingerprint(), role)
        await pc.setRemoteDescription(aiortc.RTCSessionDescription(answer, "answer"))
        loop = asyncio.get_running_loop()
        y = call.y_rtp
        y.setblocking(False)
        arrived: list[bytes] = []
        deadline = loop.time() + 15
        seq = 0
        while (len(arrived) < 25 or len(frames) < 25) and loop.time() < deadline:
            # Y talks PCMU at 50 packets/s, and collects what the browser-like side sends
            y.sendto(
                struct.pack("!BBHII", 0x80, 0, seq, seq * 160, Y_SSRC) + b"\xff" * 160,
                call.b_rtp.address,
            )
            seq += 1
            await asyncio.sleep(0.02)
            while True:
                try:
                    data, source = y.recvfrom(4096)
                except BlockingIOError:
                    break
                assert source[:2] == call.b_rtp.address
                arrived.append(data)
        state = pc.connectionState
        await pc.close()
        return arrived, len(frames), state

    arrived, frames, state = asyncio.run(scenario())
    assert state == "connected"
    assert len(arrived) >= 25 and frames >= 25, (len(arrived), frames)
    # plain RTP at Y: version 2, PCMU, 20 ms, decrypted (aiortc sends SRTP only)
    assert all(p[0] >> 6 == 2 and p[1] & 0x7F == 0 and len(p) == 172 for p in arrived)
    # aiortc's close() sent close_notify: the worker ends the association
    stats = worker.stats(call.a_rtp.key, lambda s: (s.dtls, s.ice) == ("closed", "nominated"))
    assert stats.confirmed and stats.errors == 0
