"""Transcoding in a real relay-worker process, fed ``Forward`` messages whose sockets carry
codec plans (relayd/transcode/plan.py), with real UDP sockets on loopback (no namespace,
no root needed).

Party X sends PCMU to relay socket A; the plan on A says what party Y, behind relay
socket B, gets: PCMA or Opus. Y's own media goes back to X untouched (no plan on B), as
in a call where only one direction needs converting. Loss and reordering are injected by
the sender; what Y receives is checked packet by packet (PCMA: exact bytes) or decoded and
compared with the source (Opus).
"""

from __future__ import annotations

import os
import random
import select
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from relayd.ipc import Learning, SocketSpec
from relayd.transcode import g711, rtp
from relayd.transcode.plan import CodecPlan, Format
from relayd.transcode.tones import tone
from tests.netns.test_worker_crypto import sdes, sessions
from tests.support.worker_link import RelaySocket, WorkerLink, udp
from tests.unit.test_transcode_audio import correlation, decode_stream, speechlike

PCMU = Format(0, "PCMU", 8000)
PCMA = Format(8, "PCMA", 8000)
OPUS = Format(96, "opus", 48000, 2)
X_SSRC, Y_SSRC = 0x0A0A0A0A, 0x0B0B0B0B


def receive_all(sock: socket.socket, quiet: float = 0.3) -> list[bytes]:
    """Every datagram until ``quiet`` seconds pass without one."""
    out = []
    while select.select([sock], [], [], quiet)[0]:
        out.append(sock.recv(4096))
    return out


@dataclass
class Call:
    a_rtp: RelaySocket = field(default_factory=RelaySocket)
    a_rtcp: RelaySocket = field(default_factory=RelaySocket)
    b_rtp: RelaySocket = field(default_factory=RelaySocket)
    b_rtcp: RelaySocket = field(default_factory=RelaySocket)
    x_rtp: socket.socket = field(default_factory=udp)
    x_rtcp: socket.socket = field(default_factory=udp)
    y_rtp: socket.socket = field(default_factory=udp)
    y_rtcp: socket.socket = field(default_factory=udp)

    def __post_init__(self) -> None:
        # an RTCP socket's RTP socket is the one a port below it, as relayd binds them
        self.a_rtp.sock.close()
        self.a_rtcp.sock.close()
        self.a_rtp, self.a_rtcp = consecutive()

    @staticmethod
    def key(sock: socket.socket) -> str:
        host, port = sock.getsockname()[:2]
        return f"{host} {port}"

    def forward(
        self,
        worker: WorkerLink,
        plan: CodecPlan | None,
        back: CodecPlan | None = None,
        srtp: tuple[str, str] = ("", ""),
    ) -> None:
        """Plan ``plan`` for X's media (on A), ``back`` for Y's (on B); ``srtp``: the SDES
        keys of X's sockets (in, out)."""
        immediate: Learning = "immediate"
        srtp_in, srtp_out = srtp
        worker.forward(
            "call 0",
            [
                (
                    SocketSpec(
                        "", out=self.b_rtp.key, expect=self.key(self.x_rtp), learning=immediate,
                        codecs=plan.to_text() if plan is not None else "",
                        srtp_in=srtp_in, srtp_out=srtp_out,
                    ),
                    self.a_rtp,
                ),
                (
                    SocketSpec(
                        "", out=self.b_rtcp.key, expect=self.key(self.x_rtcp), rtcp=True,
                        learning=immediate, srtp_in=srtp_in, srtp_out=srtp_out,
                    ),
                    self.a_rtcp,
                ),
                (
                    SocketSpec(
                        "", out=self.a_rtp.key, expect=self.key(self.y_rtp), learning=immediate,
                        codecs=back.to_text() if back is not None else "",
                    ),
                    self.b_rtp,
                ),
                (
                    SocketSpec(
                        "", out=self.a_rtcp.key, expect=self.key(self.y_rtcp), rtcp=True,
                        learning=immediate,
                    ),
                    self.b_rtcp,
                ),
            ],
        )  # fmt: skip

    def close(self) -> None:
        for relay in (self.a_rtp, self.a_rtcp, self.b_rtp, self.b_rtcp):
            relay.sock.close()
        for sock in (self.x_rtp, self.x_rtcp, self.y_rtp, self.y_rtcp):
            sock.close()


def consecutive() -> tuple[RelaySocket, RelaySocket]:
    """An RTP relay socket and its RTCP one on the next port."""
    for _ in range(100):
        rtp_socket = RelaySocket()
        rtcp_socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            rtcp_socket.bind(("127.0.0.1", rtp_socket.address[1] + 1))
        except OSError:
            rtp_socket.sock.close()
            rtcp_socket.close()
            continue
        rtcp_socket.setblocking(False)
        relay = RelaySocket.__new__(RelaySocket)
        relay.sock, relay.address = rtcp_socket, ("127.0.0.1", rtp_socket.address[1] + 1)
        relay.key = f"127.0.0.1 {relay.address[1]}"
        return rtp_socket, relay
    raise AssertionError("no two consecutive free ports")


@pytest.fixture
def worker() -> Iterator[WorkerLink]:
    link = WorkerLink()
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


def pcmu_stream(values: list[int]) -> list[bytes]:
    codes = bytes(g711.encoder_table("PCMU")[v & 0xFFFF] for v in values)
    return [
        rtp.build(0, False, 5000 + i, 80000 + 160 * i, X_SSRC, codes[160 * i : 160 * (i + 1)])
        for i in range(len(codes) // 160)
    ]


def lossy(packets: list[bytes], seed: int) -> list[bytes]:
    """About 8 % dropped (never the first or the last three: a packet after a hole waits for
    the next ones, as in rtpengine, and at the end there are none), neighbours swapped every
    9th packet."""
    rng = random.Random(seed)
    last = len(packets) - 3
    kept = [p for i, p in enumerate(packets) if not 0 < i < last or rng.random() > 0.08]
    for i in range(3, len(kept) - 1, 9):
        kept[i], kept[i + 1] = kept[i + 1], kept[i]
    return kept


def test_pcmu_to_pcma_with_loss_and_reordering(worker: WorkerLink, call: Call) -> None:
    call.forward(worker, CodecPlan(decode=(PCMU,), encode=PCMA))
    source = speechlike(1.0)
    packets = pcmu_stream(source)
    sent = lossy(packets, 15)
    for packet in sent:
        call.x_rtp.sendto(packet, call.a_rtp.address)
    got = [rtp.parse(d) for d in receive_all(call.y_rtp)]
    table = g711.transcode_table("PCMU", "PCMA")
    by_seq = {rtp.parse(p).seq: rtp.parse(p) for p in sent}
    assert len(got) == len(by_seq)
    assert len({p.ssrc for p in got}) == 1 and got[0].ssrc != X_SSRC
    for out in got:
        original = by_seq[out.seq]  # same ptime: numbers and timestamps as the input's
        assert (out.pt, out.ts) == (8, original.ts)
        assert out.payload == original.payload.translate(table)
    assert [p.seq for p in got] == sorted(p.seq for p in got)
    # the other way: no plan, forwarded as it is
    back = rtp.build(0, False, 1, 1, Y_SSRC, b"\xff" * 160)
    call.y_rtp.sendto(back, call.b_rtp.address)
    assert receive_all(call.x_rtp) == [back]
    stats = worker.stats(call.a_rtp.key, until=lambda s: s.frames == len(by_seq))
    assert (stats.codec, stats.codec_sent, stats.codec_errors) == ("PCMU->PCMA", len(got), 0)


def test_pcmu_to_opus_with_loss_and_reordering(worker: WorkerLink, call: Call) -> None:
    call.forward(worker, CodecPlan(decode=(PCMU,), encode=OPUS))
    source = speechlike(2.0)
    packets = pcmu_stream(source)
    for packet in lossy(packets, 16):
        call.x_rtp.sendto(packet, call.a_rtp.address)
    data = receive_all(call.y_rtp)
    got = [rtp.parse(d) for d in data]
    assert {p.pt for p in got} == {96} and len(got) > len(packets) * 0.8
    first = got[0]
    assert all((p.ts - first.ts) == (p.seq - first.seq) * 960 for p in got)  # no drift
    assert correlation(source, decode_stream(data, OPUS)) > 0.6


def test_rtcp_of_the_transcoded_stream_names_its_new_ssrc(worker: WorkerLink, call: Call) -> None:
    call.forward(worker, CodecPlan(decode=(PCMU,), encode=PCMA))
    for packet in pcmu_stream(speechlike(0.2)):
        call.x_rtp.sendto(packet, call.a_rtp.address)
    new_ssrc = {rtp.parse(d).ssrc for d in receive_all(call.y_rtp)}.pop()
    sender = struct.pack("!IIIII", 7, 8, 80000, 10, 1600)
    report = struct.pack("!BBHI", 0x80, 200, 6, X_SSRC) + sender
    call.x_rtcp.sendto(report, call.a_rtcp.address)
    (relayed,) = receive_all(call.y_rtcp)
    ssrc, _ntp1, _ntp2, _ts, packets = struct.unpack_from("!IIIII", relayed, 4)
    assert (ssrc, packets) == (new_ssrc, 10)


def test_a_plan_with_a_codec_nobody_can_open_drops_that_direction(
    worker: WorkerLink, call: Call
) -> None:
    call.forward(worker, CodecPlan(decode=(PCMU,), encode=Format(97, "AMR-WB", 16000)))
    for packet in pcmu_stream(speechlike(0.1)):
        call.x_rtp.sendto(packet, call.a_rtp.address)
    assert receive_all(call.y_rtp) == []
    stats = worker.stats(call.a_rtp.key, until=lambda s: s.errors == 5)
    assert stats.codec.startswith("failed: ")
    # a later forward without the plan forwards again
    call.forward(worker, None)
    call.x_rtp.sendto(pcmu_stream(speechlike(0.02))[0], call.a_rtp.address)
    assert len(receive_all(call.y_rtp)) == 1


def test_srtp_leg_transcoded_both_ways(worker: WorkerLink, call: Call) -> None:
    """X speaks SDES-SRTP and PCMU, Y plain PCMA: X's packets are decrypted before the
    engine, Y's are transcoded and then encrypted towards X."""
    suite = "AES_CM_128_HMAC_SHA1_80"
    x_key, relay_key = os.urandom(30), os.urandom(30)
    send, recv = sessions(suite, x_key, relay_key)
    keys = (sdes(suite, x_key), sdes(suite, relay_key))
    call.forward(
        worker,
        CodecPlan(decode=(PCMU,), encode=PCMA),
        CodecPlan(decode=(PCMA,), encode=PCMU),
        keys,
    )
    to_pcma = g711.transcode_table("PCMU", "PCMA")
    to_pcmu = g711.transcode_table("PCMA", "PCMU")
    packets = pcmu_stream(speechlike(0.2))
    for packet in packets:
        call.x_rtp.sendto(send.protect(packet), call.a_rtp.address)
    got = [rtp.parse(d) for d in receive_all(call.y_rtp)]
    assert [(p.pt, p.payload) for p in got] == [
        (8, rtp.parse(p).payload.translate(to_pcma)) for p in packets
    ]
    back = [
        rtp.build(8, False, 300 + i, 160 * i, Y_SSRC, bytes([0xD5 ^ i]) * 160) for i in range(10)
    ]
    for packet in back:
        call.y_rtp.sendto(packet, call.b_rtp.address)
    heard = [rtp.parse(recv.unprotect(d)) for d in receive_all(call.x_rtp)]
    assert [(p.pt, p.seq, p.payload) for p in heard] == [
        (0, 300 + i, bytes([0xD5 ^ i]).translate(to_pcmu) * 160) for i in range(10)
    ]
    assert {p.ssrc for p in heard} != {Y_SSRC}


def test_dtmf_and_comfort_noise_both_ways(worker: WorkerLink, call: Call) -> None:
    """The suite's "PCM to RFC DTMF transcoding" and "add CN" through a real worker: X's
    in-band tone "8" reaches Y as telephone-events (start, going on, end three times) and
    X's silence as CN; Y's telephone-event reaches X as the tone, Y's CN as noise in PCMU."""
    te = Format(96, "telephone-event", 8000, fmtp="0-15")
    cn = Format(13, "CN", 8000)
    forward = CodecPlan(decode=(PCMU,), encode=PCMU, dtmf_out=te, cn_out=cn, silence_detect=1)
    back = CodecPlan(passthrough=(0,), dtmf=(te,), cn=(cn,))
    call.forward(worker, forward, back)
    z = b"\x00" * 160
    eight = bytes(
        g711.encoder_table("PCMU")[v & 0xFFFF]
        for v in memoryview(tone(8, 16, 0, 480, 8000)).cast("h")
    )
    payloads = [z, z, eight[:160], eight[160:320], eight[320:], z, z, z, b"\xff" * 160]
    for i, payload in enumerate(payloads):
        call.x_rtp.sendto(
            rtp.build(0, False, 1000 + i, 3000 + 160 * i, X_SSRC, payload), call.a_rtp.address
        )
    got = [rtp.parse(d) for d in receive_all(call.y_rtp)]
    assert [(p.pt, p.marker, p.seq, p.ts) for p in got] == [
        (0, False, 1000, 3000), (0, False, 1001, 3160), (0, False, 1002, 3320),
        (0, False, 1003, 3480), (96, True, 1004, 3640), (96, False, 1005, 3640),
        (96, False, 1006, 3640), (96, False, 1007, 3640), (96, False, 1008, 3640),
        (0, False, 1009, 4120), (13, False, 1010, 4280),
    ]  # fmt: skip
    assert [p.payload for p in got[4:]] == [
        b"\x08\x10\x00\xa0", b"\x08\x10\x01\x40", *[b"\x08\x90\x01\xe0"] * 3, z, b"\x20",
    ]  # fmt: skip
    # Y to X: PCMU passed, the event made a tone, CN made noise, all under one new SSRC
    back_packets = [
        rtp.build(0, False, 2000, 4000, Y_SSRC, z),
        rtp.build(96, True, 2001, 4160, Y_SSRC, b"\x08\x10\x00\xa0"),
        rtp.build(96, False, 2002, 4160, Y_SSRC, b"\x08\x90\x01\x40"),
        rtp.build(13, False, 2003, 4480, Y_SSRC, b"\x12\x23\x23\x34\x56"),
    ]
    for packet in back_packets:
        call.y_rtp.sendto(packet, call.b_rtp.address)
    came = [rtp.parse(d) for d in receive_all(call.x_rtp)]
    assert [(p.pt, p.seq, p.ts) for p in came] == [
        (0, 2000, 4000),
        (0, 2001, 4160),
        (0, 2002, 4320),
        (0, 2003, 4480),
    ]
    assert len({p.ssrc for p in came}) == 1 and came[0].ssrc != Y_SSRC
    assert [p.payload for p in came[1:3]] == [eight[:160], eight[160:320]]
    assert len(came[3].payload) == 160 and came[3].payload != z
