"""relayd's recording spool against rtpengine 10.5's, byte for byte.

rtpengine (Debian's 10.5, ``--recording-method pcap``) records a call in a network namespace
of its own (loopback only): offer with ``record-call=yes``, ``label`` and ``metadata``, answer,
RTP and RTCP both ways, ``stop recording``, packets it must not record, ``start recording``, a
re-offer, ``delete``. relayd's CallRecorder is then fed what the coordinator will feed it for
the same call: the SDPs rtpengine answered with, the datagrams as sent (source, the relay's
socket, payload), the metadata values, the ends. The two spools must hold the same files: pcap
global headers and every record equal but for the record timestamps, metadata text equal but
for tags, spool paths and times. Both formats, IPv4 and IPv6.

Also, without rtpengine: tshark reads relayd's pcaps of either format as two RTP streams with
no loss (``-z rtp,streams``), as the issue's acceptance asks of a recorded call.

Namespaces are ``rec-<hex>``, ports 34000-34599; the daemon and the namespace go in
``finally``.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from relayd.recording import CallRecorder, SpoolSettings, prepare, recording_names
from tests.support.netns import destroy, inside, unavailable
from tests.support.pcap import Capture, read_pcap_file
from tests.support.rtpengine import rtpengine_installed, running_rtpengine

pytestmark = pytest.mark.interop

NG_PORT = 34000
MEDIA_PORTS = (34500, 34599)
CALLER_PORT = 34100
CALLEE_PORT = 34200
CALL_ID = "rec-oracle call/1@host ü"


@dataclass
class Datagram:
    sender: tuple[str, int]
    relay: tuple[str, int]  # the relay's socket it was sent to
    payload: bytes


@dataclass
class Recording:
    """What the coordinator would feed one CallRecorder."""

    sdps: list[tuple[str, str, str, int]] = field(default_factory=list)  # mode, sdp, label, at
    packets: list[Datagram] = field(default_factory=list)
    metadata: str = ""
    terminated: bool = False


def _rtp(seq: int, ssrc: int) -> bytes:
    return struct.pack("!BBHII", 0x80, 0, seq, seq * 160, ssrc) + bytes([seq & 0xFF]) * 160


def _rtcp(ssrc: int) -> bytes:
    return struct.pack("!BBHI", 0x80, 200, 6, ssrc) + bytes(20)


def _sdp(ip: str, port: int, version: int) -> str:
    family = f"IP{version}"
    return (
        f"v=0\r\no=- {port} 1 IN {family} {ip}\r\ns=-\r\nc=IN {family} {ip}\r\nt=0 0\r\n"
        f"m=audio {port} RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n"
    )


def _port(sdp: str) -> int:
    found = re.search(r"^m=audio (\d+) ", sdp, re.MULTILINE)
    assert found, sdp
    return int(found.group(1))


@contextlib.contextmanager
def _namespace() -> Iterator[str]:
    name = f"rec-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, timeout=10)
        yield name
    finally:
        destroy([name])


def _rtpengine_call(
    workdir: Path, spool: Path, record_format: str, host: str, version: int
) -> list[Recording]:
    """Drive rtpengine; return what each of its two recordings was fed."""
    extra = [
        f"--recording-dir={spool}", "--recording-method=pcap",
        f"--recording-format={record_format}", "--delete-delay=0",
    ]  # fmt: skip
    first, second = Recording(), Recording()
    with (
        _namespace() as ns,
        running_rtpengine(
            workdir, ng_port=NG_PORT, port_min=MEDIA_PORTS[0], port_max=MEDIA_PORTS[1],
            netns=ns, interface=(host,), extra=extra,
        ) as daemon,
        daemon.client() as ng,
        contextlib.ExitStack() as sockets,
    ):  # fmt: skip
        family = socket.AF_INET6 if version == 6 else socket.AF_INET
        peers: dict[int, socket.socket] = {}
        with inside(ns):
            for port in (CALLER_PORT, CALLER_PORT + 1, CALLEE_PORT, CALLEE_PORT + 1):
                peers[port] = sockets.enter_context(socket.socket(family, socket.SOCK_DGRAM))
                peers[port].bind((host, port))
        offer = ng.call(
            "offer", call_id=CALL_ID, from_tag="caller-tag", label="caller",
            sdp=_sdp(host, CALLER_PORT, version), record_call="yes", metadata="m1",
        )  # fmt: skip
        assert offer["result"] == "ok", offer
        to_callee = _port(offer["sdp"])
        answer = ng.call(
            "answer", call_id=CALL_ID, from_tag="caller-tag", to_tag="callee-tag",
            sdp=_sdp(host, CALLEE_PORT, version),
        )  # fmt: skip
        assert answer["result"] == "ok", answer
        to_caller = _port(answer["sdp"])
        # what rtpengine says in ng is the path of the pcap it writes
        [pcap_path] = offer["recordings"]
        assert answer["recordings"] == [pcap_path]
        assert pcap_path.startswith(f"{spool}/pcaps/rec-oracle%20call%2F1%40host%20%C3%BC-")
        first.sdps += [("offer", offer["sdp"], "caller", 0), ("answer", answer["sdp"], "", 0)]
        first.metadata = "m1"

        def send(recording: Recording | None, sender: int, payload: bytes) -> None:
            relay_port = to_caller if sender < CALLEE_PORT else to_callee
            relay_port += sender % 2  # RTCP to the RTCP port
            peers[sender].sendto(payload, (host, relay_port))
            if recording is not None:
                recording.packets.append(Datagram((host, sender), (host, relay_port), payload))
            time.sleep(0.01)  # one at a time, so both write them in this order

        for seq in range(3):
            send(first, CALLER_PORT, _rtp(seq, 0xAAAA))
            send(first, CALLEE_PORT, _rtp(100 + seq, 0xBBBB))
        send(first, CALLER_PORT + 1, _rtcp(0xAAAA))
        send(first, CALLEE_PORT + 1, _rtcp(0xBBBB))
        stop = ng.call("stop recording", call_id=CALL_ID, metadata="m2")
        assert stop["result"] == "ok", stop
        first.metadata = "m2"
        send(None, CALLER_PORT, _rtp(50, 0xAAAA))  # between recordings: in neither
        start = ng.call("start recording", call_id=CALL_ID)
        assert start["result"] == "ok", start
        second.metadata = "m2"  # the call's value outlives the first recording
        send(second, CALLER_PORT, _rtp(60, 0xAAAA))
        send(second, CALLEE_PORT, _rtp(160, 0xBBBB))
        reoffer = ng.call(
            "offer", call_id=CALL_ID, from_tag="caller-tag", label="caller",
            sdp=_sdp(host, CALLER_PORT, version),
        )  # fmt: skip
        assert reoffer["result"] == "ok", reoffer
        second.sdps.append(("offer", reoffer["sdp"], "caller", len(second.packets)))
        send(second, CALLER_PORT, _rtp(70, 0xAAAA))
        send(second, CALLEE_PORT + 1, _rtcp(0xBBBB))
        deleted = ng.call("delete", call_id=CALL_ID, from_tag="caller-tag")
        assert deleted["result"] == "ok", deleted
        second.terminated = True
        deadline = time.monotonic() + 3.0
        while len(os.listdir(spool / "metadata")) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    return [first, second]


def _relayd_record(spool: Path, record_format: str, recordings: list[Recording]) -> None:
    settings = SpoolSettings(str(spool), format=record_format)
    prepare(settings)
    started = time.time()
    for recording in recordings:
        rec = CallRecorder(settings, recording_names(settings, CALL_ID), started=started)
        rec.metadata(recording.metadata)
        sdps = list(recording.sdps)
        for index, datagram in enumerate([*recording.packets, None]):
            while sdps and sdps[0][3] == index:
                mode, sdp, label, _at = sdps.pop(0)
                rec.sdp(mode, sdp, started=time.time(), label=label)
            if datagram is not None:
                rec.packet(time.time(), datagram.sender, datagram.relay, datagram.payload)
        now = time.time()
        rec.finish(now, terminated=now if recording.terminated else None)


def _spool_files(spool: Path) -> list[tuple[str, Capture, str]]:
    """(metadata text, its pcap, the pcap's name) per finished recording, in pcap order."""
    assert os.listdir(spool / "tmp") == []
    found = []
    for meta in (spool / "metadata").iterdir():
        assert re.fullmatch(
            r"rtpengine-meta-rec-oracle%20call%2F1%40host%20%C3%BC-[0-9a-f]{16}\.txt", meta.name
        ), meta.name
        text = meta.read_bytes().decode()
        pcap = Path(text.split("\n", 1)[0])
        assert pcap.parent == spool / "pcaps"
        assert pcap.name == meta.name.removeprefix("rtpengine-meta-").replace(".txt", ".pcap")
        found.append((text, read_pcap_file(pcap), pcap.name))
    assert len(found) == 2
    # the first recording is the one with the answer in it
    return sorted(found, key=lambda item: "SDP mode: answer" not in item[0])


def _normalised(text: str, spool: Path) -> str:
    text = text.replace(str(spool), "<spool>")
    text = re.sub(r"-[0-9a-f]{16}\.pcap", "-<tag>.pcap", text)
    text = re.sub(r"\b\d{13}\.\d{3}\b", "<ms>", text)  # a time; 0.000 stays
    return re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", "<time>", text)


@pytest.mark.parametrize(
    ("record_format", "version"), [("raw", 4), ("eth", 4), ("raw", 6), ("eth", 6)]
)
def test_relayd_writes_the_spool_rtpengine_writes(
    tmp_path: Path, record_format: str, version: int
) -> None:
    if rtpengine_installed() is None:
        pytest.skip("rtpengine not installed")
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    host = "::1" if version == 6 else "127.0.0.1"
    theirs, ours = tmp_path / "rtpengine", tmp_path / "relayd"
    recordings = _rtpengine_call(tmp_path, theirs, record_format, host, version)
    _relayd_record(ours, record_format, recordings)

    for (their_text, their_pcap, _), (our_text, our_pcap, _), fed in zip(
        _spool_files(theirs), _spool_files(ours), recordings, strict=True
    ):
        assert _normalised(our_text, ours) == _normalised(their_text, theirs)
        header = (our_pcap.byte_order, our_pcap.version, our_pcap.snaplen, our_pcap.linktype)
        assert header == (
            their_pcap.byte_order, their_pcap.version, their_pcap.snaplen, their_pcap.linktype,
        )  # fmt: skip
        assert len(their_pcap.datagrams) == len(fed.packets)  # received ones only, each once
        assert [(d.caplen, d.length, d.record) for d in our_pcap.datagrams] == [
            (d.caplen, d.length, d.record) for d in their_pcap.datagrams
        ]
        assert their_pcap.trailing == our_pcap.trailing == 0


def _tshark_streams(path: str) -> list[list[str]]:
    result = subprocess.run(
        ["tshark", "-r", path, "-q", "-o", "rtp.heuristic_rtp:TRUE", "-z", "rtp,streams"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return [
        line.split()
        for line in result.stdout.splitlines()
        if re.match(r"\s+\d+\.\d+\s+\d+\.\d+\s", line)
    ]


@pytest.mark.parametrize(
    ("record_format", "caller", "callee", "relay"),
    [
        ("raw", "192.0.2.10", "192.0.2.20", "192.0.2.1"),
        ("eth", "2001:db8::10", "2001:db8::20", "2001:db8::1"),
    ],
)
def test_tshark_reads_relayds_pcaps_as_rtp_streams(
    tmp_path: Path, record_format: str, caller: str, callee: str, relay: str
) -> None:
    if shutil.which("tshark") is None:
        pytest.skip("tshark not installed")
    settings = SpoolSettings(str(tmp_path), format=record_format)
    prepare(settings)
    rec = CallRecorder(settings, recording_names(settings, "tshark@test"), started=1e9)
    for seq in range(50):
        when = 1e9 + seq * 0.02
        rec.packet(when, (caller, 4000), (relay, 30000), _rtp(seq, 0xAAAA))
        rec.packet(when + 0.001, (callee, 5000), (relay, 30002), _rtp(1000 + seq, 0xBBBB))
    rec.finish(1e9 + 1)
    streams = sorted(_tshark_streams(rec.pcap_path), key=lambda row: row[2])
    assert [(row[2], row[3], row[4], row[5]) for row in streams] == [
        (caller, "4000", relay, "30000"),
        (callee, "5000", relay, "30002"),
    ]
    for row in streams:
        assert row[7:10] == ["g711U", "50", "0"], row  # payload type, packets, lost
