"""SDES-SRTP ↔ plain RTP through the relayd daemon, checked packet by packet with pylibsrtp.

The topology of :mod:`tests.support.netns`; relayd runs in the relay namespace.
The SRTP party's keys are the test's own; relayd's key towards it is read from
the SDP relayd wrote (``a=crypto``), exactly as a SIP endpoint would. pylibsrtp
on the test side is independent of the workers' SRTP code.

* SRTP caller → plain callee: the caller offers ``RTP/SAVP`` with one
  ``a=crypto``; Kamailio asks for ``transport-protocol: RTP/AVP`` towards the
  callee; relayd's answer to the caller carries the same suite with relayd's key.
* Plain caller → SRTP callee: a plain ``RTP/AVP`` offer bridged to ``RTP/SAVP``
  with ``DTLS=off``: relayd offers its keys, the callee picks one line and
  answers with its own key.

Each way: RTP and RTCP (SRTCP) both ways, byte for byte after decryption, with
the authentication tag of the suite on the wire; then tampered and replayed
SRTP and SRTCP packets are sent: none reaches the plain side, each is counted
in the query's ``errors`` of the SRTP party's stream, and media goes on.

Recorded (``record-call``), the SRTP party's packets go into the pcap decrypted, the bad
ones not at all.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from relayd.ng.client import NgClient
from tests.netns.calls import (
    CALLEE_PORT,
    CALLEE_SSRC,
    CALLEE_TAG,
    CALLER_PORT,
    CALLER_SSRC,
    CALLER_TAG,
    Advertised,
    advertised,
    ok,
    sdp,
    stream_of,
    wait_for,
)
from tests.netns.conftest import StartRelay
from tests.support.netns import Host, Topology
from tests.support.pcap import read_pcap_file
from tests.support.rtp_peer import Peer, rtcp_packet, rtp_packet

pytestmark = pytest.mark.netns

pylibsrtp = pytest.importorskip("pylibsrtp")

# libsrtp profile, master key + salt length, SRTP and SRTCP tag lengths (the _32 suites
# keep an 80-bit tag on SRTCP, RFC 4568 §6.2.2)
PROFILES = {
    "AES_CM_128_HMAC_SHA1_80": (pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80, 30, 10, 10),
    "AES_CM_128_HMAC_SHA1_32": (pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_32, 30, 4, 10),
    "AEAD_AES_128_GCM": (pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM, 28, 16, 16),
    "AEAD_AES_256_GCM": (pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_256_GCM, 44, 16, 16),
}
COUNT = 20  # packets each way and per component


def inline(key: bytes) -> str:
    return base64.b64encode(key).decode()


def master(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def savp_sdp(address: str, port: int, crypto: str) -> str:
    return (
        "v=0\r\n"
        f"o=- 1545997027 1 IN IP4 {address}\r\n"
        "s=-\r\n"
        f"c=IN IP4 {address}\r\n"
        "t=0 0\r\n"
        f"m=audio {port} RTP/SAVP 0\r\n"
        "a=rtpmap:0 PCMU/8000\r\n"
        f"a=crypto:{crypto}\r\n"
        "a=sendrecv\r\n"
    )


def crypto_lines(text: str) -> list[tuple[int, str, bytes]]:
    """(tag, suite, master key || salt) of every ``a=crypto`` line."""
    found = []
    for line in text.splitlines():
        if line.startswith("a=crypto:"):
            tag, suite, key = line[len("a=crypto:") :].split()[:3]
            found.append((int(tag), suite, master(key[len("inline:") :].split("|")[0])))
    return found


def protocol(text: str) -> str:
    return next(line for line in text.splitlines() if line.startswith("m=audio ")).split()[2]


@dataclass
class Srtp:
    """The SRTP party's two sessions: what it sends (its key), what it gets (relayd's)."""

    suite: str
    send: Any
    receive: Any

    @classmethod
    def make(cls, suite: str, own: bytes, relays: bytes) -> Srtp:
        profile = PROFILES[suite][0]
        send = pylibsrtp.Session(
            pylibsrtp.Policy(own, pylibsrtp.Policy.SSRC_ANY_OUTBOUND, srtp_profile=profile)
        )
        receive = pylibsrtp.Session(
            pylibsrtp.Policy(relays, pylibsrtp.Policy.SSRC_ANY_INBOUND, srtp_profile=profile)
        )
        return cls(suite, send, receive)

    def tag_size(self, rtcp: bool) -> int:
        return PROFILES[self.suite][3 if rtcp else 2]


class Party:
    """RTP on ``port``, RTCP on ``port + 1``, in ``host``'s namespace."""

    def __init__(self, host: Host, port: int) -> None:
        self.address = host.ip4
        self.rtp = Peer(host.ns, host.ip4, port)
        try:
            self.rtcp = Peer(host.ns, host.ip4, port + 1)
        except OSError:
            self.rtp.close()
            raise

    def close(self) -> None:
        self.rtp.close()
        self.rtcp.close()


@pytest.fixture
def parties(topo: Topology) -> Iterator[tuple[Party, Party]]:
    caller = Party(topo.caller, CALLER_PORT)
    try:
        callee = Party(topo.callee, CALLEE_PORT)
    except OSError:
        caller.close()
        raise
    try:
        yield caller, callee
    finally:
        caller.close()
        callee.close()


def check_both_ways(
    srtp: Srtp,
    secure: Party,
    to_secure_side: Advertised,
    plain: Party,
    to_plain_side: Advertised,
    secure_ssrc: int,
    plain_ssrc: int,
) -> None:
    """RTP then RTCP, each way, packet by packet. ``to_secure_side`` is where the SRTP
    party sends (relayd's ports in the SDP it got), ``to_plain_side`` the plain party's."""
    for rtcp in (False, True):
        make = rtcp_packet if rtcp else rtp_packet
        protect = srtp.send.protect_rtcp if rtcp else srtp.send.protect
        unprotect = srtp.receive.unprotect_rtcp if rtcp else srtp.receive.unprotect
        s_sock, p_sock = (secure.rtcp, plain.rtcp) if rtcp else (secure.rtp, plain.rtp)
        s_to = to_secure_side.rtcp_to if rtcp else to_secure_side.rtp_to
        p_to = to_plain_side.rtcp_to if rtcp else to_plain_side.rtp_to
        from_secure = [make(seq, secure_ssrc, 1) for seq in range(COUNT)]
        from_plain = [make(seq, plain_ssrc, 2) for seq in range(COUNT)]
        for a, b in zip(from_secure, from_plain, strict=True):
            s_sock.send(protect(a), s_to)
            p_sock.send(b, p_to)
        what = "RTCP" if rtcp else "RTP"
        # the plain side gets plain packets, exactly what the SRTP side protected
        got = p_sock.receive(COUNT)
        assert [p.data for p in got] == from_secure, f"{what} to the plain side"
        assert {p.source for p in got} == {p_to}
        # the SRTP side gets SRTP under relayd's key: the plain packets once decrypted
        wire = s_sock.receive(COUNT)
        assert len(wire) == COUNT, f"{what}: {len(wire)} of {COUNT} reached the SRTP side"
        assert {p.source for p in wire} == {s_to}
        index = 4 if rtcp else 0  # SRTCP: E flag and index (RFC 3711 §3.4)
        for packet, sent in zip(wire, from_plain, strict=True):
            assert len(packet.data) == len(sent) + index + srtp.tag_size(rtcp), what
            assert packet.data != sent
            assert unprotect(packet.data) == sent, what


def check_bad_packets_dropped(
    ng: NgClient,
    call_id: str,
    srtp: Srtp,
    secure: Party,
    secure_tag: str,
    to_secure_side: Advertised,
    plain: Party,
    secure_ssrc: int,
) -> None:
    """Tampered and replayed SRTP/SRTCP: never forwarded, counted in the SRTP party's
    streams' errors; valid packets after them still pass."""
    base = ok(ng.call("query", call_id=call_id))
    errors_before = [stream_of(base, secure_tag, rtcp)["stats"]["errors"] for rtcp in (False, True)]
    for rtcp in (False, True):
        make = rtcp_packet if rtcp else rtp_packet
        protect = srtp.send.protect_rtcp if rtcp else srtp.send.protect
        s_sock, p_sock = (secure.rtcp, plain.rtcp) if rtcp else (secure.rtp, plain.rtp)
        s_to = to_secure_side.rtcp_to if rtcp else to_secure_side.rtp_to
        # a packet the plain side already had, sent again: a replay
        replayed = protect(make(COUNT, secure_ssrc, 1))
        s_sock.send(replayed, s_to)
        assert [p.data for p in p_sock.receive(1)] == [make(COUNT, secure_ssrc, 1)]
        s_sock.send(replayed, s_to)
        # one bit flipped in the encrypted payload
        tampered = bytearray(protect(make(COUNT + 1, secure_ssrc, 1)))
        tampered[20] ^= 0x01
        s_sock.send(bytes(tampered), s_to)
        # one bit flipped in the authentication tag
        tampered = bytearray(protect(make(COUNT + 2, secure_ssrc, 1)))
        tampered[-1] ^= 0x80
        s_sock.send(bytes(tampered), s_to)
        assert p_sock.drain(quiet=0.3) == [], "a bad packet was forwarded"
        # the session is intact: the next good packet passes
        good = make(COUNT + 3, secure_ssrc, 1)
        s_sock.send(protect(good), s_to)
        assert [p.data for p in p_sock.receive(1)] == [good]

    def counted(reply: dict[str, Any]) -> bool:
        errors = [stream_of(reply, secure_tag, rtcp)["stats"]["errors"] for rtcp in (False, True)]
        return errors == [e + 3 for e in errors_before]

    reply = wait_for(ng, call_id, counted)
    errors = [stream_of(reply, secure_tag, rtcp)["stats"]["errors"] for rtcp in (False, True)]
    assert errors == [e + 3 for e in errors_before], reply["tags"][secure_tag]


def srtp_caller_call(
    ng: NgClient, call_id: str, caller: Party, callee: Party, suite: str, flags: Sequence[str] = ()
) -> tuple[Srtp, Advertised, Advertised, dict[str, Any]]:
    """An SDES caller (one ``a=crypto`` of ``suite``, its own key) offered to a plain callee
    as Kamailio asks (``transport-protocol: RTP/AVP``), answered plainly; relayd's answer to
    the caller must carry the same suite with a key of its own. Returns the caller's SRTP
    sessions, where the caller and the callee send, and the offer's reply."""
    caller_key = os.urandom(PROFILES[suite][1])
    offer = ok(
        ng.call(
            "offer",
            call_id=call_id,
            from_tag=CALLER_TAG,
            sdp=savp_sdp(caller.address, CALLER_PORT, f"1 {suite} inline:{inline(caller_key)}"),
            direction=["caller", "callee"],
            flags=list(flags),
            **{"transport-protocol": "RTP/AVP"},
        )
    )
    assert protocol(offer["sdp"]) == "RTP/AVP" and crypto_lines(offer["sdp"]) == []
    answer = ok(
        ng.call(
            "answer",
            call_id=call_id,
            from_tag=CALLER_TAG,
            to_tag=CALLEE_TAG,
            sdp=sdp(callee.address, CALLEE_PORT),
        )
    )["sdp"]
    assert protocol(answer) == "RTP/SAVP"
    [(tag, answered, relay_key)] = crypto_lines(answer)
    assert (tag, answered) == (1, suite)
    assert len(relay_key) == PROFILES[suite][1] and relay_key != caller_key
    srtp = Srtp.make(suite, caller_key, relay_key)
    return srtp, advertised(answer), advertised(offer["sdp"]), offer


@pytest.mark.parametrize("suite", ["AES_CM_128_HMAC_SHA1_80", "AEAD_AES_256_GCM"])
def test_srtp_caller_to_plain_callee(
    topo: Topology, start_relay: StartRelay, parties: tuple[Party, Party], suite: str
) -> None:
    caller, callee = parties
    relay = start_relay()
    call_id = f"sdes-offerer-{suite}"
    with relay.client() as ng:
        srtp, to_caller, to_callee, _offer = srtp_caller_call(ng, call_id, caller, callee, suite)
        check_both_ways(srtp, caller, to_caller, callee, to_callee, CALLER_SSRC, CALLEE_SSRC)
        check_bad_packets_dropped(
            ng, call_id, srtp, caller, CALLER_TAG, to_caller, callee, CALLER_SSRC
        )
        reply = ok(ng.call("query", call_id=call_id))
    assert reply["tags"][CALLER_TAG]["medias"][0]["protocol"] == "RTP/SAVP"
    assert reply["tags"][CALLEE_TAG]["medias"][0]["protocol"] == "RTP/AVP"
    assert stream_of(reply, CALLEE_TAG)["stats"]["errors"] == 0


@pytest.mark.parametrize("suite", ["AES_CM_128_HMAC_SHA1_32", "AEAD_AES_128_GCM"])
def test_plain_caller_to_srtp_callee(
    topo: Topology, start_relay: StartRelay, parties: tuple[Party, Party], suite: str
) -> None:
    caller, callee = parties
    relay = start_relay()
    call_id = f"sdes-answerer-{suite}"
    callee_key = os.urandom(PROFILES[suite][1])
    with relay.client() as ng:
        offer = ok(
            ng.call(
                "offer",
                call_id=call_id,
                from_tag=CALLER_TAG,
                sdp=sdp(caller.address, CALLER_PORT),
                direction=["caller", "callee"],
                DTLS="off",
                **{"transport-protocol": "RTP/SAVP"},
            )
        )["sdp"]
        assert protocol(offer) == "RTP/SAVP"
        assert not [line for line in offer.splitlines() if line.startswith("a=fingerprint")]
        offered = {s: (tag, key) for tag, s, key in crypto_lines(offer)}
        assert suite in offered, offer
        tag, relay_key = offered[suite]
        answer = ok(
            ng.call(
                "answer",
                call_id=call_id,
                from_tag=CALLER_TAG,
                to_tag=CALLEE_TAG,
                sdp=savp_sdp(
                    callee.address, CALLEE_PORT, f"{tag} {suite} inline:{inline(callee_key)}"
                ),
            )
        )["sdp"]
        assert protocol(answer) == "RTP/AVP" and crypto_lines(answer) == []
        srtp = Srtp.make(suite, callee_key, relay_key)

        to_callee, to_caller = advertised(offer), advertised(answer)
        check_both_ways(srtp, callee, to_callee, caller, to_caller, CALLEE_SSRC, CALLER_SSRC)
        check_bad_packets_dropped(
            ng, call_id, srtp, callee, CALLEE_TAG, to_callee, caller, CALLEE_SSRC
        )
        reply = ok(ng.call("query", call_id=call_id))
    assert reply["tags"][CALLEE_TAG]["medias"][0]["protocol"] == "RTP/SAVP"
    assert reply["tags"][CALLER_TAG]["medias"][0]["protocol"] == "RTP/AVP"
    assert stream_of(reply, CALLER_TAG)["stats"]["errors"] == 0


def test_a_recorded_srtp_call_is_recorded_in_clear(
    topo: Topology,
    start_relay: StartRelay,
    parties: tuple[Party, Party],
    tmp_path: Path,
) -> None:
    """Issue 14: SRTP legs are recorded decrypted (what the plain side hears), RTP and RTCP,
    each party's packets as they arrived; tampered and replayed packets are not recorded."""
    caller, callee = parties
    spool = tmp_path / "spool"
    relay = start_relay(f"--recording-dir={spool}")
    suite = "AES_CM_128_HMAC_SHA1_80"
    call_id = "sdes-recorded"
    with relay.client() as ng:
        srtp, to_caller, to_callee, offer = srtp_caller_call(
            ng, call_id, caller, callee, suite, flags=["record-call"]
        )
        [pcap] = offer["recordings"]
        check_both_ways(srtp, caller, to_caller, callee, to_callee, CALLER_SSRC, CALLEE_SSRC)
        check_bad_packets_dropped(
            ng, call_id, srtp, caller, CALLER_TAG, to_caller, callee, CALLER_SSRC
        )
        ok(ng.call("delete", call_id=call_id, delete_delay=0))
    capture = read_pcap_file(pcap)
    by_sender: dict[tuple[str, int], list[bytes]] = {}
    for datagram in capture.datagrams:
        sender = (datagram.source, datagram.source_port)
        by_sender.setdefault(sender, []).append(datagram.payload)
    # the SRTP caller: what it protected, in clear; the three bad packets of each
    # component are not there, the good ones around them are
    for component, make in ((0, rtp_packet), (1, rtcp_packet)):
        got = by_sender[(caller.address, CALLER_PORT + component)]
        expected = [make(seq, CALLER_SSRC, 1) for seq in range(COUNT)]
        expected += [make(COUNT, CALLER_SSRC, 1), make(COUNT + 3, CALLER_SSRC, 1)]
        assert got == expected, f"component {component}"
    # the plain callee: as it sent them
    for component, make in ((0, rtp_packet), (1, rtcp_packet)):
        got = by_sender[(callee.address, CALLEE_PORT + component)]
        assert got == [make(seq, CALLEE_SSRC, 2) for seq in range(COUNT)], f"component {component}"
    assert sorted(by_sender) == sorted(
        (address, port + component)
        for address, port in ((caller.address, CALLER_PORT), (callee.address, CALLEE_PORT))
        for component in (0, 1)
    )
