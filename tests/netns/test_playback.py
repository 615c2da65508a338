"""``play media`` and ``stop media`` end to end: relayd in the relay namespace plays a WAV file to
a party, which receives it on its own socket and decodes it (issue 16).

The file is a 1.5 s chirp (200 → 1500 Hz, amplitude-modulated, so that only one alignment
fits) written as 16 kHz WAV; what a party receives is decoded with the test's own G.711
tables (tests/support/tone.py) or PyAV's Opus decoder and compared with the chirp computed
at the party's rate: aligned normalised correlation (tests/support/speech.py, windows of
2000 samples) above 0.9. Measured: PCMU 0.9999 (G.711 and resampling 16 → 8 kHz cost next
to nothing), Opus at its default 24 kbit/s 0.995; the chirp played backwards scores 0.04,
so 0.9 leaves room for a codec's loss and none for a wrong rate, lost or misordered
frames, or another signal. Beside the
audio: ``duration``, the pacing (75 packets over 1.5 s), one SSRC with consecutive sequence
numbers and timestamps, the marker on the first packet, the SR to the party's RTCP port;
``stop media`` stops it with a plausible ``last-frame-pos``; an SRTP party gets it under
relayd's SDES key; a party that has only offered gets it at its SDP address.

Namespaces are prefixed ``play`` and the daemon uses ports 47000-47199 inside them.
"""

from __future__ import annotations

import math
import struct
import wave
from array import array
from collections.abc import Iterator
from pathlib import Path

import pytest

from relayd.ng.client import NgClient
from relayd.plane.playback import INLINE_LIMIT
from relayd.transcode.codecs import open_decoder
from relayd.transcode.plan import Format
from relayd.transcode.rtp import RtpPacket, parse
from relayd.worker.srtp import SrtpSession, parse_sdes
from tests.netns.calls import (
    CALLEE_PORT,
    CALLEE_SSRC,
    CALLEE_TAG,
    CALLER_PORT,
    CALLER_TAG,
    advertised,
    ok,
    wait_for,
)
from tests.netns.conftest import StartRelay, relay_interfaces, relay_starter, stopped_after
from tests.netns.test_kernel import KERNEL, both_kernelized, kernelized_call, neither_kernelized
from tests.support.netns import Topology, topology, unavailable
from tests.support.relayd import RelaydProcess
from tests.support.rtp_peer import Peer, Received
from tests.support.speech import segmented_correlation
from tests.support.tone import mulaw_decode

_SKIP = unavailable()
pytestmark = [pytest.mark.netns, pytest.mark.skipif(_SKIP is not None, reason=f"netns: {_SKIP}")]

SECONDS = 1.5
PACKETS = 75  # 20 ms each
CRYPTO = "1 AES_CM_128_HMAC_SHA1_80 inline:eMlRvW8mWU4WodT9JOvAM+pn6I0/EXOhT9n0KeKk"


def chirp(rate: int) -> list[int]:
    """The test signal at ``rate`` Hz: a 200 → 1500 Hz sweep, amplitude-modulated at 3 Hz."""
    out = []
    for n in range(int(SECONDS * rate)):
        t = n / rate
        phase = 2 * math.pi * (200 * t + (1300 / (2 * SECONDS)) * t * t)
        envelope = 0.55 + 0.45 * math.sin(2 * math.pi * 3 * t)
        out.append(int(9000 * envelope * math.sin(phase)))
    return out


def write_wav(path: Path, rate: int = 16000) -> Path:
    with wave.open(str(path), "wb") as file:
        file.setnchannels(1)
        file.setsampwidth(2)
        file.setframerate(rate)
        file.writeframes(array("h", chirp(rate)).tobytes())
    path.chmod(0o644)
    return path


def body(address: str, port: int, media: str, *extra: str) -> str:
    return (
        "v=0\r\n"
        f"o=- 1545997027 1 IN IP4 {address}\r\n"
        "s=-\r\n"
        f"c=IN IP4 {address}\r\n"
        "t=0 0\r\n"
        f"m=audio {port} {media}\r\n" + "".join(f"{line}\r\n" for line in extra) + "a=sendrecv\r\n"
    )


PCMU = ("RTP/AVP 0", "a=rtpmap:0 PCMU/8000")
OPUS = ("RTP/AVP 96", "a=rtpmap:96 opus/48000/2")


@pytest.fixture
def topo() -> Iterator[Topology]:
    with topology(prefix="play") as created:
        yield created


@pytest.fixture
def start_relay(
    topo: Topology, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[StartRelay]:
    with relay_starter(
        topo, tmp_path, request, ng_port=47000, port_min=47100, port_max=47199
    ) as start:
        yield start


@pytest.fixture
def caller(topo: Topology) -> Iterator[tuple[Peer, Peer]]:
    """The caller's RTP and RTCP sockets."""
    with (
        Peer(topo.caller.ns, topo.caller.ip4, CALLER_PORT) as rtp,
        Peer(topo.caller.ns, topo.caller.ip4, CALLER_PORT + 1) as rtcp,
    ):
        yield rtp, rtcp


def call(
    ng: NgClient,
    topo: Topology,
    media: tuple[str, ...],
    *,
    answer: bool = True,
    offer: dict[str, object] | None = None,
) -> tuple[str, str]:
    """Offer (and answer): the SDPs relayd wrote to the callee and to the caller."""
    offered = ok(
        ng.call(
            "offer",
            call_id="play",
            from_tag=CALLER_TAG,
            sdp=body(topo.caller.ip4, CALLER_PORT, *media),
            direction=["caller", "callee"],
            **(offer or {}),
        )
    )["sdp"]
    if not answer:
        return offered, ""
    answered = ok(
        ng.call(
            "answer",
            call_id="play",
            from_tag=CALLER_TAG,
            to_tag=CALLEE_TAG,
            sdp=body(topo.callee.ip4, CALLEE_PORT, *PCMU),
        )
    )["sdp"]
    return offered, answered


def received_rtp(peer: Peer, count: int = PACKETS) -> tuple[list[Received], list[RtpPacket]]:
    got = peer.receive(count, timeout=SECONDS + 2)
    assert len(got) == count, f"{len(got)} of {count} packets came"
    return got, [parse(packet.data) for packet in got]


def check_stream(got: list[Received], packets: list[RtpPacket], pt: int, step: int) -> None:
    """One SSRC, consecutive sequence numbers and timestamps, the marker first, real time."""
    first = packets[0]
    assert [p.pt for p in packets] == [pt] * len(packets)
    assert [p.marker for p in packets] == [True] + [False] * (len(packets) - 1)
    assert {p.ssrc for p in packets} == {first.ssrc}
    assert [p.seq for p in packets] == [(first.seq + i) & 0xFFFF for i in range(len(packets))]
    assert [p.ts for p in packets] == [
        (first.ts + step * i) & 0xFFFFFFFF for i in range(len(packets))
    ]
    span = got[-1].at - got[0].at
    assert 0.85 * SECONDS < span < 1.3 * SECONDS, f"{len(packets)} packets in {span:.2f} s"


def pcm(data: bytes) -> list[int]:
    return array("h", data).tolist()


def test_play_a_wav_to_a_pcmu_party_then_stop(
    topo: Topology, start_relay: StartRelay, caller: tuple[Peer, Peer], tmp_path: Path
) -> None:
    wav = write_wav(tmp_path / "chirp.wav")
    rtp, rtcp = caller
    relay = start_relay()
    with relay.client() as ng:
        _, answered = call(ng, topo, PCMU)
        to_caller = advertised(answered)
        reply = ok(ng.call("play media", call_id="play", from_tag=CALLER_TAG, file=str(wav)))
        assert reply["duration"] == 1500
        got, packets = received_rtp(rtp)
        assert {packet.source for packet in got} == {to_caller.rtp_to}
        check_stream(got, packets, 0, 160)
        audio = mulaw_decode(b"".join(p.payload for p in packets))
        score = segmented_correlation(chirp(8000), audio, max_lag=400)
        assert score > 0.9, f"PCMU correlation {score:.3f}"
        # the sender report after the first packet, to the caller's RTCP port
        report = rtcp.receive(1, timeout=1.0)
        assert report and report[0].data[1] == 200 and report[0].source == to_caller.rtcp_to
        assert struct.unpack("!I", report[0].data[4:8])[0] == packets[0].ssrc
        # once more, repeated, stopped half-way through the first play
        ok(
            ng.call(
                "play media", call_id="play", from_tag=CALLER_TAG, file=str(wav), repeat_times=5
            )
        )
        rtp.receive(25, timeout=2.0)
        reply = ok(ng.call("stop media", call_id="play", from_tag=CALLER_TAG))
        assert 300 <= reply["last-frame-pos"] <= 900, reply
        late = rtp.drain(quiet=0.3)
        assert len(late) <= 3, f"{len(late)} packets after stop media"
        again = parse(late[-1].data) if late else packets[-1]
        assert again.ssrc == packets[0].ssrc  # the same stream across plays
        assert ng.call("stop media", call_id="play", from_tag=CALLEE_TAG) == {
            "result": "error",
            "error-reason": "Not currently playing media",
        }


def test_play_to_an_opus_party(
    topo: Topology, start_relay: StartRelay, caller: tuple[Peer, Peer], tmp_path: Path
) -> None:
    wav = write_wav(tmp_path / "chirp.wav")
    rtp, _ = caller
    relay = start_relay()
    with relay.client() as ng:
        call(ng, topo, OPUS)
        ok(ng.call("play media", call_id="play", from_tag=CALLER_TAG, file=str(wav)))
        got, packets = received_rtp(rtp)
        check_stream(got, packets, 96, 960)
        decoder = open_decoder(Format(96, "opus", 48000, 2), channels=1)
        audio = b"".join(bytes(decoder.decode(p.payload)) for p in packets)
        score = segmented_correlation(chirp(48000), pcm(audio), max_lag=2400)
        assert score > 0.9, f"Opus correlation {score:.3f}"


def test_play_to_an_srtp_party(
    topo: Topology, start_relay: StartRelay, caller: tuple[Peer, Peer], tmp_path: Path
) -> None:
    wav = write_wav(tmp_path / "chirp.wav")
    rtp, _ = caller
    relay = start_relay()
    with relay.client() as ng:
        media = ("RTP/SAVP 0", "a=rtpmap:0 PCMU/8000", f"a=crypto:{CRYPTO}")
        _, answered = call(ng, topo, media, offer={"transport-protocol": "RTP/AVP"})
        line = next(x for x in answered.splitlines() if x.startswith("a=crypto:"))
        inbound = SrtpSession(parse_sdes(line[len("a=crypto:") :]), inbound=True)
        ok(ng.call("play media", call_id="play", from_tag=CALLER_TAG, file=str(wav)))
        got = rtp.receive(PACKETS, timeout=SECONDS + 2)
        assert len(got) == PACKETS
        packets = [parse(inbound.unprotect_packet(packet.data)) for packet in got]
        check_stream(got, packets, 0, 160)
        audio = mulaw_decode(b"".join(p.payload for p in packets))
        assert segmented_correlation(chirp(8000), audio, max_lag=400) > 0.9


def test_play_to_a_party_that_has_only_offered(
    topo: Topology, start_relay: StartRelay, caller: tuple[Peer, Peer], tmp_path: Path
) -> None:
    wav = write_wav(tmp_path / "chirp.wav")
    rtp, _ = caller
    relay = start_relay()
    with relay.client() as ng:
        call(ng, topo, PCMU, answer=False)
        ok(ng.call("play media", call_id="play", from_tag=CALLER_TAG, file=str(wav)))
        got, packets = received_rtp(rtp)
        check_stream(got, packets, 0, 160)
        audio = mulaw_decode(b"".join(p.payload for p in packets))
        assert segmented_correlation(chirp(8000), audio, max_lag=400) > 0.9


def test_a_kernel_path_call_leaves_the_kernel_while_it_plays(
    topo: Topology, start_relay: StartRelay, caller: tuple[Peer, Peer], tmp_path: Path
) -> None:
    """The played-to party's streams leave nftables for the workers (the player sends from
    its relay socket); what the other party sends goes on reaching it, interleaved with the
    play under its own SSRC (as 10.5 does); once the play ends the kernel takes them back."""
    wav = write_wav(tmp_path / "chirp.wav")
    rtp, _ = caller
    relay = start_relay(*KERNEL)
    with relay.client() as ng, Peer(topo.callee.ns, topo.callee.ip4, CALLEE_PORT) as callee:
        legs = kernelized_call(ng, topo, rtp, callee)
        ok(ng.call("play media", call_id=legs.call_id, from_tag=CALLER_TAG, file=str(wav)))
        assert neither_kernelized(ok(ng.call("query", call_id=legs.call_id)))
        sent = callee.send_rtp(
            legs.to_callee.rtp_to, 10, first=500, ssrc=CALLEE_SSRC, interval=0.02
        )
        got = [parse(packet.data) for packet in rtp.receive(PACKETS + len(sent), timeout=4.0)]
        assert [p.seq for p in got if p.ssrc == CALLEE_SSRC] == list(range(500, 510))
        played = [p for p in got if p.ssrc != CALLEE_SSRC]
        assert len(played) == PACKETS and played[0].marker
        reply = wait_for(ng, legs.call_id, both_kernelized, timeout=4.0)
        assert both_kernelized(reply)


def test_a_large_blob_goes_through_a_private_file(
    topo: Topology, caller: tuple[Peer, Peer], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A blob over the inline limit (the chirp at 48 kHz: 144 KB) reaches the worker in a file
    of relayd's own private directory under ``$RUNTIME_DIRECTORY``, which the worker removes
    once it has read it; the party hears it all the same."""
    wav = write_wav(tmp_path / "chirp48.wav", rate=48000).read_bytes()
    assert len(wav) > INLINE_LIMIT
    rtp, _ = caller
    run = tmp_path / "run"
    run.mkdir()
    workdir = tmp_path / "relayd"
    workdir.mkdir()
    with stopped_after(request, "relayd") as started:
        relay = RelaydProcess(
            workdir,
            ng_port=47000,
            port_min=47100,
            port_max=47199,
            interface=relay_interfaces(topo),
            netns=topo.relay,
            env={"RUNTIME_DIRECTORY": str(run)},
            extra=("--listen-tcp-ng", "127.0.0.1:47000"),  # a blob this size needs TCP
        )
        started.append(relay)
        relay.start()
        with relay.client(tcp=True) as ng:
            call(ng, topo, PCMU)
            reply = ok(ng.call("play media", call_id="play", from_tag=CALLER_TAG, blob=wav))
            assert reply["duration"] == 1500
            got, packets = received_rtp(rtp)
            check_stream(got, packets, 0, 160)
            audio = mulaw_decode(b"".join(p.payload for p in packets))
            assert segmented_correlation(chirp(8000), audio, max_lag=400) > 0.9
            [private] = list(run.iterdir())
            assert private.stat().st_mode & 0o777 == 0o700
            assert list(private.iterdir()) == []  # read and removed by the worker
