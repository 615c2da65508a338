"""A worker's players (relayd/worker/player.py) on loopback sockets: what a ``Play`` sends, when,
from which socket, under SRTP, the sender report after the first packet, and the word of its
end (``PlayDone``). The clock is passed in, as the worker's loop passes it."""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from relayd import ipc
from relayd.transcode.player import Received
from relayd.transcode.rtp import parse
from relayd.worker.player import Players, received
from relayd.worker.session import Leg
from relayd.worker.sockets import MediaSocket
from relayd.worker.srtp import PacketBuffer, SrtpSession, parse_sdes

DATA = Path(__file__).parents[1] / "data" / "playback"
WAV = (DATA / "sine-100ms.wav").read_bytes()
PCMA = (DATA / "sine-100ms.pcma").read_bytes()
KEY = "AES_CM_128_HMAC_SHA1_80 inline:DVM+BTeYX2UI1LaA9bgXrcBEDBxoItA9/39fSoRF"


class Harness:
    """The party's RTP and RTCP relay sockets (held by the players' socket map) and the
    party's own two sockets, which receive what the player sends."""

    def __init__(self) -> None:
        self.sockets: dict[str, MediaSocket] = {}
        self.party: list[socket.socket] = []
        self.keys: list[str] = []
        for rtcp in (False, True):
            relay = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            relay.bind(("127.0.0.1", 0))
            party = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            party.bind(("127.0.0.1", 0))
            party.settimeout(1.0)
            key = ipc.socket_key(*relay.getsockname())
            leg = Leg(key, rtcp=rtcp, expect=party.getsockname())
            leg.endpoint = party.getsockname()
            self.sockets[key] = MediaSocket(relay, leg)
            self.party.append(party)
            self.keys.append(key)
        self.sent: list[ipc.Message] = []
        self.players = Players(0, self.sockets, PacketBuffer(4096), self.sent.append)

    def play(self, *, data: bytes = WAV, started: float = 1.0, srtp: str = "") -> ipc.Play:
        return ipc.Play(
            "c1",
            "a",
            self.keys[0],
            self.keys[1],
            json.dumps([8, "PCMA", 8000, 1, "", 20]),
            srtp=srtp,
            data=base64.b64encode(data).decode(),
            started=started,
        )

    def close(self) -> None:
        for ms in self.sockets.values():
            ms.sock.close()
        for party in self.party:
            party.close()


@pytest.fixture
def harness() -> Iterator[Harness]:
    h = Harness()
    try:
        yield h
    finally:
        h.close()


def test_a_play_is_paced_and_sends_the_files_packets_then_an_sr(harness: Harness) -> None:
    players = harness.players
    rtp_leg = harness.sockets[harness.keys[0]].leg
    rtp_leg.ssrc, rtp_leg.last = 0x1234, bytes.fromhex("800803e8") + bytes(168)  # seq 1000
    players.play(harness.play(), now=10.0)
    assert players.next_deadline() == 10.0
    players.fire(10.0)
    assert players.next_deadline() == pytest.approx(10.02)
    players.fire(10.01)  # not due yet: nothing
    for step in range(1, 5):
        players.fire(10.0 + 0.02 * step)
    packets = [parse(harness.party[0].recv(2048)) for _ in range(5)]
    assert b"".join(p.payload for p in packets) == PCMA
    assert [p.marker for p in packets] == [True] + [False] * 4
    assert {p.ssrc for p in packets} == {packets[0].ssrc}
    report = harness.party[1].recv(2048)
    assert report[:4] == b"\x81\xc8\x00\x0c" and report[4:8] == packets[0].ssrc.to_bytes(4, "big")
    assert report[28:32] == b"\x00\x00\x12\x34" and report[36:40] == (1000).to_bytes(4, "big")
    players.fire(10.1)  # the file is done
    assert players.players == {}
    assert harness.sent == [ipc.PlayDone(0, "c1", "a", 1.0, 0, "")]


def test_a_second_play_continues_the_stream_and_a_stop_ends_it(harness: Harness) -> None:
    players = harness.players
    players.play(harness.play(), now=0.0)
    players.fire(0.0)
    first = parse(harness.party[0].recv(2048))
    players.play(harness.play(started=2.0), now=0.5)
    assert harness.sent[0] == ipc.PlayDone(0, "c1", "a", 1.0, 20, "")  # replaced, at 20 ms
    players.fire(0.5)
    second = parse(harness.party[0].recv(2048))
    assert second.marker and second.ssrc == first.ssrc and second.seq == (first.seq + 1) & 0xFFFF
    players.stop(ipc.PlayStop("c1", "a", harness.keys[0]))
    assert players.players == {} and harness.sent[-1].started == 2.0  # type: ignore[union-attr]
    players.forget((harness.keys[0],))
    assert players.streams == {}


def test_srtp_with_the_key_the_message_gives(harness: Harness) -> None:
    players = harness.players
    players.play(harness.play(srtp=KEY), now=0.0)
    players.fire(0.0)
    inbound = SrtpSession(parse_sdes(KEY), inbound=True)
    packet = parse(inbound.unprotect_packet(harness.party[0].recv(2048)))
    assert packet.payload == PCMA[:160]
    report = inbound.unprotect_packet(harness.party[1].recv(2048), rtcp=True)
    assert report[1] == 200


def test_no_endpoint_waits_then_gives_up_and_bad_files_are_reported(harness: Harness) -> None:
    players = harness.players
    harness.sockets[harness.keys[0]].leg.endpoint = None
    players.play(harness.play(), now=0.0)
    players.fire(0.0)
    assert players.players and not harness.sent
    players.fire(5.0)
    assert players.players == {}
    assert harness.sent[-1].error  # type: ignore[union-attr]
    players.play(harness.play(data=b"garbage"), now=6.0)
    assert players.players == {} and harness.sent[-1].error  # type: ignore[union-attr]


SR = bytes.fromhex("80c8000600001234000056789abc0000000000000000000000000000")
RR = bytes.fromhex("80c9000100001234")


def test_received_reads_the_partys_latest_rtp_and_sr() -> None:
    rtp, rtcp = Leg("r"), Leg("c", rtcp=True)
    assert received(rtp, rtcp, 5.0) == Received()
    rtp.ssrc, rtp.last = 0x1234, bytes.fromhex("80080102") + bytes(8)
    rtcp.last, rtcp.last_packet = SR, 3.0
    assert received(rtp, rtcp, 5.0) == Received(0x1234, 0x0102, 0x56789ABC, 2.0)
    rtcp.last = RR  # an RR since: no SR to report on
    assert received(rtp, rtcp, 5.0).lsr == 0
    # under rtcp-mux the RTP socket's latest RTCP, which came after the RTCP socket's
    rtp.last_rtcp, rtp.rtcp_at = SR, 4.5
    assert received(rtp, rtp, 5.0) == Received(0x1234, 0x0102, 0x56789ABC, 0.5)
    # the latest datagram on the RTP socket was RTCP (no mux known): the sequence unknown
    rtp.last = RR
    assert received(rtp, None, 5.0).seq == 0
