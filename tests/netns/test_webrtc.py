"""WebRTC ↔ plain RTP through the relayd daemon, with a real WebRTC stack (aiortc).

The topology of :mod:`tests.support.netns`; relayd runs in the relay namespace
with its ``caller`` and ``callee`` interfaces. The WebRTC party is an aiortc
``RTCPeerConnection`` (full ICE agent, DTLS-SRTP, rtcp-mux) in its own process
inside its namespace (:class:`tests.support.webrtc_peer.WebRtcPeer`); the plain
party is a :class:`~tests.support.rtp_peer.Peer` sending PCMU. The test plays
Kamailio with the flags deployments use:

* plain caller → WebRTC callee: offer ``ICE=force DTLS=passive SDES-off``,
  ``transport-protocol: UDP/TLS/RTP/SAVPF``, ``rtcp-mux: [offer, require]``,
  ``generate-mid``; answer ``ICE=remove DTLS=off SDES-off``, ``RTP/AVP``;
* WebRTC caller → plain callee: offer ``ICE=remove``, ``RTP/AVP``,
  ``rtcp-mux: [demux]``, ``SDES-off``; the answer back to the browser side gets
  DTLS, ICE and rtcp-mux without being asked.

Each side sends a continuous tone, a different one per direction; each side
decodes what it gets and must find the other's tone: media flowed *and* the
SRTP ↔ RTP conversion is right (a wrong key would not decode, a missing
conversion would not even parse as plain RTP at the plain side).
"""

from __future__ import annotations

import itertools
import struct
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from relayd.ng.client import NgClient
from tests.netns.calls import (
    ANSWER_TO_PLAIN,
    CALLEE_TAG,
    CALLER_TAG,
    OFFER_TO_PLAIN,
    OFFER_TO_WEBRTC,
    Advertised,
    advertised,
    ok,
    sdp,
    wait_for,
)
from tests.netns.conftest import PORT_MAX, PORT_MIN, StartRelay
from tests.support.netns import Host, Topology
from tests.support.pcap import read_pcap_file
from tests.support.rtp_peer import Peer, Received
from tests.support.tone import dominant_hz, mulaw_decode, tone_pcmu
from tests.support.webrtc_peer import WebRtcPeer

pytestmark = pytest.mark.netns

pytest.importorskip("aiortc")

PLAIN_HZ = 1000.0  # what the plain party sends
WEBRTC_HZ = 440.0  # what the WebRTC party sends
PLAIN_PORT = 6000
PLAIN_SSRC = 0x5EED5EED
ENOUGH = 50  # frames / packets each way: one second of audio
SR_COUNT = 4242  # the packet count in the plain party's sender reports


@pytest.fixture
def webrtc(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[list[WebRtcPeer]]:
    """aiortc peers started by a test; stopped (killed if need be) afterwards, their
    logs attached to a failing test's report."""
    peers: list[WebRtcPeer] = []
    try:
        yield peers
    finally:
        for peer in peers:
            peer.stop()
            report = getattr(request.node, "rep_call", None)
            if report is not None and report.failed:
                request.node.add_report_section("call", "aiortc log", peer.log())


def sdp_lines(text: str, prefix: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(prefix)]


def rtp_fields(packet: bytes) -> tuple[int, int, int, int]:
    """(version, payload type, sequence number, SSRC)."""
    return (
        packet[0] >> 6,
        packet[1] & 0x7F,
        int.from_bytes(packet[2:4], "big"),
        int.from_bytes(packet[8:12], "big"),
    )


def pcmu_frame(seq: int) -> bytes:
    header = bytes([0x80, 0]) + (seq & 0xFFFF).to_bytes(2, "big")
    header += (seq * 160 & 0xFFFFFFFF).to_bytes(4, "big") + PLAIN_SSRC.to_bytes(4, "big")
    return header + tone_pcmu(PLAIN_HZ, seq)


def sender_report(sent: int) -> bytes:
    """RTCP SR (RFC 3550 §6.4.1) of the plain party, claiming ``sent`` packets."""
    return struct.pack(
        "!BBHIIIIII", 0x80, 200, 6, PLAIN_SSRC, 0xE000_0000, 0, sent * 160, sent, sent * 160
    )


def rtcp_packets(datagram: bytes) -> list[tuple[int, int]]:
    """(packet type, SSRC) of each packet of a compound RTCP datagram; the packets'
    length fields must add up to the datagram exactly (no SRTCP index or tag left)."""
    found = []
    pos = 0
    while pos < len(datagram):
        assert len(datagram) - pos >= 8 and datagram[pos] >> 6 == 2, datagram.hex()
        length = (int.from_bytes(datagram[pos + 2 : pos + 4], "big") + 1) * 4
        found.append((datagram[pos + 1], int.from_bytes(datagram[pos + 4 : pos + 8], "big")))
        pos += length
    assert pos == len(datagram), f"RTCP lengths do not add up: {datagram.hex()}"
    return found


@dataclass
class Heard:
    rtp: list[Received] = field(default_factory=list)
    rtcp: list[Received] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)


def converse(plain: PlainParty, relay: Advertised, peer: WebRtcPeer, limit: float = 15.0) -> Heard:
    """The plain party talks (PCMU tone, 50 packets/s, an SR every 10 packets) and listens
    until both sides have had ``ENOUGH`` audio and an RTCP report of the other, or
    ``limit`` seconds; returns what the plain side received and aiortc's last report."""
    heard = Heard()
    start = time.monotonic()
    next_report = start
    seq = 0
    while time.monotonic() - start < limit:
        plain.rtp.send(pcmu_frame(seq), relay.rtp_to)
        seq += 1
        if seq % 10 == 0:
            plain.rtcp.send(sender_report(SR_COUNT), relay.rtcp_to)
        heard.rtp += plain.rtp.receive(64, timeout=0.0)
        heard.rtcp += plain.rtcp.receive(64, timeout=0.0)
        if time.monotonic() >= next_report:
            heard.report = peer.report()
            next_report = time.monotonic() + 0.5
            if (
                len(heard.rtp) >= ENOUGH
                and any(p.data[1] == 200 for p in heard.rtcp)
                and heard.report["frames"] >= ENOUGH
                and heard.report["sender_reports"]
            ):
                break
        time.sleep(max(start + seq * 0.02 - time.monotonic(), 0.0))
    return heard


def check_plain_side(heard: Heard, relay: Advertised) -> None:
    """Plain RTP and RTCP (not SRTP/SRTCP) from the relay's ports: PCMU, one SSRC, rising
    sequence numbers, the WebRTC side's tone in the payload, its sender reports."""
    got = heard.rtp
    assert len(got) >= ENOUGH, f"the plain side got {len(got)} packets"
    assert {p.source for p in got} == {relay.rtp_to}
    fields = [rtp_fields(p.data) for p in got]
    assert {(f[0], f[1]) for f in fields} == {(2, 0)}, fields[:5]
    ssrcs = {f[3] for f in fields}
    assert len(ssrcs) == 1, "one SSRC"
    seqs = [f[2] for f in fields]
    assert all((b - a) & 0xFFFF in range(1, 100) for a, b in itertools.pairwise(seqs))
    # 172 bytes: a 12-byte header and 160 samples, no SRTP auth tag left over
    assert {len(p.data) for p in got} == {172}
    samples = [s for p in got[-ENOUGH:] for s in mulaw_decode(p.data[12:])]
    assert dominant_hz(samples) == pytest.approx(WEBRTC_HZ, rel=0.05)
    # RTCP (demuxed from the WebRTC side's rtcp-mux): on the RTCP port, decrypted
    assert heard.rtcp, "no RTCP reached the plain side"
    assert {p.source for p in heard.rtcp} == {relay.rtcp_to}
    reports = [packet for p in heard.rtcp for packet in rtcp_packets(p.data)]
    assert (200, *ssrcs) in reports, reports


def check_webrtc_side(report: dict[str, Any]) -> None:
    """aiortc connected, decoded the plain side's tone, and parsed its sender report."""
    assert report["connection"] == "connected", report
    assert report["frames"] >= ENOUGH, report
    assert report["hz"] == pytest.approx(PLAIN_HZ, rel=0.05), report
    assert report["sender_reports"] == {str(PLAIN_SSRC): SR_COUNT}, report


def check_query(
    reply: dict[str, Any], webrtc_tag: str, plain_tag: str, report: dict[str, Any]
) -> None:
    """The query names both parties' transports; the WebRTC stream's endpoint is an
    address aiortc nominated (the relay follows the latest nomination it saw: not
    necessarily the pair aiortc selected, when several were nominated), confirmed;
    packets were counted, none in error."""
    webrtc_media = reply["tags"][webrtc_tag]["medias"][0]
    plain_media = reply["tags"][plain_tag]["medias"][0]
    assert webrtc_media["protocol"] == "UDP/TLS/RTP/SAVPF"
    assert "rtcp-mux" in webrtc_media["flags"]
    assert plain_media["protocol"] == "RTP/AVP"
    rtp = webrtc_media["streams"][0]
    endpoint = [rtp["endpoint"]["address"], rtp["endpoint"]["port"]]
    assert report["pair"][0] in report["checked"], report
    assert endpoint in report["checked"], (rtp, report)
    assert "confirmed" in rtp["flags"]
    assert rtp["stats"]["packets"] >= ENOUGH and rtp["stats"]["errors"] == 0, rtp
    # DTLS and ICE as the worker saw them: handshake done, fingerprint checked
    assert {"DTLS-SRTP", "ICE"} <= set(webrtc_media["flags"]), webrtc_media["flags"]
    assert rtp["DTLS"] == "connected" and "DTLS fingerprint verified" in rtp["flags"], rtp
    assert rtp["ICE"] == "nominated", rtp
    plain_rtp, plain_rtcp = plain_media["streams"]
    assert plain_rtp["stats"]["packets"] >= ENOUGH and plain_rtp["stats"]["errors"] == 0
    assert plain_rtcp["stats"]["packets"] >= 1 and plain_rtcp["stats"]["errors"] == 0


class PlainParty:
    """The plain SIP endpoint: RTP on ``port``, RTCP on ``port + 1`` (no rtcp-mux)."""

    def __init__(self, host: Host, port: int = PLAIN_PORT) -> None:
        self.rtp = Peer(host.ns, host.ip4, port)
        try:
            self.rtcp = Peer(host.ns, host.ip4, port + 1)
        except OSError:
            self.rtp.close()
            raise

    def __enter__(self) -> PlainParty:
        return self

    def __exit__(self, *exc: object) -> None:
        self.rtp.close()
        self.rtcp.close()


def plain_to_webrtc(
    ng: NgClient,
    topo: Topology,
    webrtc: list[WebRtcPeer],
    tmp_path: Path,
    call_id: str,
    *,
    every_pair: bool = False,
    flags: Sequence[str] = (),
) -> tuple[dict[str, Any], str, str, WebRtcPeer]:
    """A plain caller offered to an aiortc callee with the deployment's flags (and
    ``flags`` more), answered: the offer's reply (its SDP for the browser), aiortc's
    answer, the answer's SDP for the plain side, and the aiortc peer."""
    offered = ok(
        ng.call(
            "offer",
            call_id=call_id,
            from_tag=CALLER_TAG,
            sdp=sdp(topo.caller.ip4, PLAIN_PORT),
            direction=["caller", "callee"],
            **{**OFFER_TO_WEBRTC, "flags": [*OFFER_TO_WEBRTC["flags"], *flags]},
        )
    )
    peer = WebRtcPeer(
        topo.callee.ns, "answer", WEBRTC_HZ, tmp_path / "aiortc.log", nominate_every_pair=every_pair
    )
    webrtc.append(peer)
    peer.send({"offer": offered["sdp"]})
    answer = peer.receive()["answer"]
    reply = ok(
        ng.call(
            "answer",
            call_id=call_id,
            from_tag=CALLER_TAG,
            to_tag=CALLEE_TAG,
            sdp=answer,
            **ANSWER_TO_PLAIN,
        )
    )["sdp"]
    return offered, answer, reply, peer


NOMINATION = pytest.mark.parametrize(
    "every_pair",
    [False, True],
    ids=["one-pair-at-a-time", "every-pair-at-once"],
)


@NOMINATION
def test_plain_caller_to_webrtc_callee(
    topo: Topology,
    start_relay: StartRelay,
    webrtc: list[WebRtcPeer],
    tmp_path: Path,
    every_pair: bool,
) -> None:
    relay = start_relay()
    call_id = "webrtc-callee"
    with relay.client() as ng, PlainParty(topo.caller) as plain:
        offered, answer, reply, peer = plain_to_webrtc(
            ng, topo, webrtc, tmp_path, call_id, every_pair=every_pair
        )
        offer = offered["sdp"]
        # what a browser needs, as rtpengine 10.5 writes it
        assert sdp_lines(offer, "m=audio ")[0].split()[2] == "UDP/TLS/RTP/SAVPF"
        assert sdp_lines(offer, "a=setup:") == ["a=setup:actpass"]
        assert sdp_lines(offer, "a=fingerprint:sha-256 ")
        assert sdp_lines(offer, "a=rtcp-mux") and sdp_lines(offer, "a=mid:")
        assert not sdp_lines(offer, "a=crypto:")
        candidates = sdp_lines(offer, "a=candidate:")
        assert {c.split()[4] for c in candidates} == {topo.callee.relay4, topo.callee.relay6}
        assert all(PORT_MIN <= int(c.split()[5]) <= PORT_MAX for c in candidates)
        assert sdp_lines(answer, "a=setup:") == ["a=setup:active"]
        assert sdp_lines(reply, "m=audio ")[0].split()[2:] == ["RTP/AVP", "0"]
        for gone in ("a=candidate:", "a=ice-", "a=fingerprint:", "a=setup:", "a=crypto:"):
            assert not sdp_lines(reply, gone), gone
        to_relay = advertised(reply)
        assert to_relay.address == topo.caller.relay4

        heard = converse(plain, to_relay, peer)
        during = wait_for(ng, call_id, lambda r: _counted(r, CALLER_TAG))
        final = peer.close()

    check_webrtc_side(heard.report)
    check_plain_side(heard, to_relay)
    check_query(during, CALLEE_TAG, CALLER_TAG, heard.report)
    assert final["dtls"] == "closed"


@NOMINATION
def test_webrtc_caller_to_plain_callee(
    topo: Topology,
    start_relay: StartRelay,
    webrtc: list[WebRtcPeer],
    tmp_path: Path,
    every_pair: bool,
) -> None:
    relay = start_relay()
    call_id = "webrtc-caller"
    peer = WebRtcPeer(
        topo.caller.ns,
        "offer",
        WEBRTC_HZ,
        tmp_path / "aiortc.log",
        nominate_every_pair=every_pair,
    )
    webrtc.append(peer)
    offer = peer.receive()["offer"]
    # a browser's offer: BUNDLE, mid, rtcp-mux, ssrc, ICE, DTLS
    for feature in ("a=group:BUNDLE", "a=mid:", "a=rtcp-mux", "a=ssrc:", "a=candidate:"):
        assert sdp_lines(offer, feature), feature
    with relay.client() as ng, PlainParty(topo.callee) as plain:
        to_plain = ok(
            ng.call(
                "offer",
                call_id=call_id,
                from_tag=CALLER_TAG,
                sdp=offer,
                direction=["caller", "callee"],
                **OFFER_TO_PLAIN,
            )
        )["sdp"]
        assert sdp_lines(to_plain, "m=audio ")[0].split()[2] == "RTP/AVP"
        for gone in ("a=candidate:", "a=ice-", "a=fingerprint:", "a=setup:", "a=rtcp-mux"):
            assert not sdp_lines(to_plain, gone), gone
        # kept for the plain side as rtpengine keeps them: the source description, the mid
        assert sdp_lines(to_plain, "a=ssrc:") == sdp_lines(offer, "a=ssrc:")
        assert sdp_lines(to_plain, "a=mid:") == sdp_lines(offer, "a=mid:")
        to_relay = advertised(to_plain)
        assert to_relay.address == topo.callee.relay4 and to_relay.rtcp == to_relay.rtp + 1
        answer = ok(
            ng.call(
                "answer",
                call_id=call_id,
                from_tag=CALLER_TAG,
                to_tag=CALLEE_TAG,
                sdp=sdp(topo.callee.ip4, PLAIN_PORT),
            )
        )["sdp"]
        assert sdp_lines(answer, "m=audio ")[0].split()[2:] == ["UDP/TLS/RTP/SAVPF", "0"]
        assert sdp_lines(answer, "a=setup:") == ["a=setup:active"]
        assert sdp_lines(answer, "a=rtcp-mux") and sdp_lines(answer, "a=ice-ufrag:")
        assert sdp_lines(answer, "a=mid:") == sdp_lines(offer, "a=mid:")
        peer.send({"answer": answer})

        heard = converse(plain, to_relay, peer)
        during = wait_for(ng, call_id, lambda r: _counted(r, CALLEE_TAG))
        final = peer.close()

    check_webrtc_side(heard.report)
    check_plain_side(heard, to_relay)
    check_query(during, CALLER_TAG, CALLEE_TAG, heard.report)
    assert final["dtls"] == "closed"


def _counted(reply: dict[str, Any], plain_tag: str) -> bool:
    """The workers' counters (reported once a second) include the plain side's RTCP and
    a second of audio from each side."""
    tags = reply["tags"]
    plain = tags[plain_tag]["medias"][0]["streams"]
    webrtc = next(t for key, t in tags.items() if key != plain_tag)["medias"][0]["streams"]
    return (
        len(plain) > 1
        and plain[1]["stats"]["packets"] > 0
        and plain[0]["stats"]["packets"] >= ENOUGH
        and webrtc[0]["stats"]["packets"] >= ENOUGH
    )


def test_a_recorded_webrtc_call_is_recorded_in_clear(
    topo: Topology, start_relay: StartRelay, webrtc: list[WebRtcPeer], tmp_path: Path
) -> None:
    """Issue 14: a WebRTC ↔ plain call recorded; the browser side's DTLS-SRTP packets are in
    the pcap decrypted (plain RTP, its tone in the payload, no auth tag), and no STUN or
    DTLS record is (rtpengine records RTP and RTCP only)."""
    spool = tmp_path / "spool"
    relay = start_relay(f"--recording-dir={spool}")
    call_id = "webrtc-recorded"
    with relay.client() as ng, PlainParty(topo.caller) as plain:
        offered, _answer, reply, peer = plain_to_webrtc(
            ng, topo, webrtc, tmp_path, call_id, flags=["record-call"]
        )
        [pcap] = offered["recordings"]
        heard = converse(plain, advertised(reply), peer)
        peer.close()
        ok(ng.call("delete", call_id=call_id, delete_delay=0))
    check_webrtc_side(heard.report)
    deadline = time.monotonic() + 5
    while not list((spool / "metadata").iterdir()):
        assert time.monotonic() < deadline, "the recording was not finished"
        time.sleep(0.05)
    from_browser = [
        d.payload
        for d in read_pcap_file(pcap).datagrams
        if d.source in (topo.callee.ip4, topo.callee.ip6)
    ]
    rtp = [p for p in from_browser if len(p) > 1 and not 200 <= p[1] <= 204]
    assert all(128 <= p[0] <= 191 for p in from_browser), "a STUN or DTLS record was recorded"
    assert len(rtp) >= ENOUGH, f"{len(rtp)} RTP packets of the WebRTC side recorded"
    assert {len(p) for p in rtp} == {172}  # 12 + 160: decrypted, no SRTP auth tag
    samples = [s for p in rtp[-ENOUGH:] for s in mulaw_decode(p[12:])]
    assert dominant_hz(samples) == pytest.approx(WEBRTC_HZ, rel=0.05)


def test_a_pcmu_carrier_leg_to_an_opus_browser_is_transcoded(
    topo: Topology, start_relay: StartRelay, webrtc: list[WebRtcPeer], tmp_path: Path
) -> None:
    """Issue 15, the WebRTC gateway's usual case: the plain side speaks PCMU only, the browser
    is offered Opus only (``codec-mask-PCMU codec-transcode-opus``). The worker decrypts,
    transcodes and encrypts: aiortc decodes Opus (48 kHz frames) carrying the plain side's
    tone, the plain side gets PCMU carrying the browser's, under the transcoder's one SSRC,
    and the browser's sender reports reach it rewritten to that SSRC."""
    relay = start_relay()
    call_id = "webrtc-transcoded"
    with relay.client() as ng, PlainParty(topo.caller) as plain:
        offered, _answer, reply, peer = plain_to_webrtc(
            ng,
            topo,
            webrtc,
            tmp_path,
            call_id,
            flags=["codec-mask-PCMU", "codec-transcode-opus"],
        )
        formats = sdp_lines(offered["sdp"], "m=audio ")[0].split()[3:]
        rtpmaps = {
            line.split()[0].removeprefix("a=rtpmap:"): line.split()[1]
            for line in sdp_lines(offered["sdp"], "a=rtpmap:")
        }
        assert [rtpmaps[pt].split("/")[0] for pt in formats] == ["opus"], offered["sdp"]
        assert sdp_lines(reply, "m=audio ")[0].split()[2:] == ["RTP/AVP", "0"]
        to_relay = advertised(reply)
        heard = converse(plain, to_relay, peer)
        final = peer.close()

    report = heard.report
    assert report["connection"] == "connected", report
    assert report["rate"] == 48000, report  # Opus, as aiortc decodes it
    assert report["frames"] >= ENOUGH, report
    assert report["hz"] == pytest.approx(PLAIN_HZ, rel=0.05), report
    assert report["sender_reports"], report
    check_plain_side(heard, to_relay)
    assert final["dtls"] == "closed"
