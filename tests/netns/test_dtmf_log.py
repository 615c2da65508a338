"""DTMF events out (docs/dtmf.md, "DTMF events"): a real relayd with ``dtmf-log-dest``
sends rtpengine 10.5's JSON to a UDP listener for each digit of a call.

relayd runs in its relay namespace (``dlog-*``: this file's own topology), the listener on
127.0.0.1 there. Covered:

* RFC 4733 events of a plain call through a worker: the events reach the callee untouched,
  and one JSON per digit arrives, as 10.5 sent it for the same packets (its probe:
  docs/dtmf.md), none for the repeated end packets nor for a digit that never ends; the
  same digits as log lines (``log-facility-dtmf``) and as bencoded notifications to an ng
  TCP client (``dtmf-log-ng-tcp``);
* the same with the kernel path on (``--table 0``, immediate learning): the call goes to
  the kernel once both ends are confirmed, and the kernel copies its telephone-event
  packets, only those, to the worker (nflog): the same JSON arrives while no packet of the
  call reaches a socket in the relay namespace;
* a tone in the caller's PCMU where the callee takes telephone-event the caller does not
  send (``codec-transcode-telephone-event``, the suite's "PCM to RFC DTMF transcoding"): the
  callee gets events and the listener the digit, its duration as the detector times it.

The worker-path tests run against rtpengine 10.5 too (``daemon`` ``rtpengine``, skipped
where it is not installed), in the same namespace with the same options: the same
assertions hold for the oracle (but the log line: 10.5 writes it to syslog).
"""

from __future__ import annotations

import contextlib
import json
import math
import select
import socket
import struct
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest

from relayd.ng.client import NgClient
from relayd.transcode import g711
from tests.netns.calls import (
    CALLEE_PORT,
    CALLEE_TAG,
    CALLER_PORT,
    CALLER_TAG,
    advertised,
    kernelized,
    ok,
    udp_delivered,
    wait_for,
)
from tests.netns.conftest import (
    StartRelay,
    Stoppable,
    relay_interfaces,
    relay_starter,
    stopped_after,
)
from tests.support.netns import Topology, inside, topology, unavailable
from tests.support.rtp_peer import Peer
from tests.support.rtpengine import RtpengineProcess, require_rtpengine

NG_PORT = 48450
PORT_MIN, PORT_MAX = 48000, 48099
LOG_PORT = 48490
KERNEL = ("--table", "0", "--endpoint-learning", "immediate")
DTMF_LOG = (f"--dtmf-log-dest=127.0.0.1:{LOG_PORT}",)
OFFLOAD_WAIT = 3.0  # workers report once a second; an offload follows a report


@pytest.fixture
def topo() -> Iterator[Topology]:
    reason = unavailable()
    if reason is not None:
        pytest.skip(reason)
    with topology(uuid.uuid4().hex[:4], prefix="dlog") as created:
        yield created


@pytest.fixture
def start_relay(
    topo: Topology, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[StartRelay]:
    with relay_starter(
        topo, tmp_path, request, ng_port=NG_PORT, port_min=PORT_MIN, port_max=PORT_MAX
    ) as start:
        yield start


class Daemon(Stoppable, Protocol):
    def client(self, **kwargs: object) -> NgClient: ...


StartDaemon = Callable[..., Daemon]


@pytest.fixture(params=["relayd", "rtpengine"])
def start_daemon(
    request: pytest.FixtureRequest, topo: Topology, start_relay: StartRelay, tmp_path: Path
) -> Iterator[StartDaemon]:
    """relayd, or rtpengine 10.5 in the same namespace on the same interfaces and ports,
    with the options given (both take these spellings)."""
    if request.param == "relayd":
        yield start_relay
        return
    require_rtpengine()
    with stopped_after(request, "rtpengine") as started:

        def start(*extra: str) -> RtpengineProcess:
            daemon = RtpengineProcess(
                tmp_path,
                ng_port=NG_PORT,
                port_min=PORT_MIN,
                port_max=PORT_MAX,
                interface=relay_interfaces(topo),
                extra=extra,
                netns=topo.relay,
            )
            started.append(daemon)
            daemon.start()
            return daemon

        yield start


@pytest.fixture
def listener(topo: Topology) -> Iterator[socket.socket]:
    """The UDP socket ``dtmf-log-dest`` names, in the relay's namespace."""
    with inside(topo.relay):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind(("127.0.0.1", LOG_PORT))
        yield sock
    finally:
        sock.close()


def _sdp(address: str, port: int, events: int | None) -> str:
    formats = "0" if events is None else f"0 {events}"
    lines = [
        "v=0",
        f"o=- 1 1 IN IP4 {address}",
        "s=-",
        f"c=IN IP4 {address}",
        "t=0 0",
        f"m=audio {port} RTP/AVP {formats}",
        "a=rtpmap:0 PCMU/8000",
    ]
    if events is not None:
        lines += [f"a=rtpmap:{events} telephone-event/8000", f"a=fmtp:{events} 0-15"]
    return "\r\n".join([*lines, "a=sendrecv"]) + "\r\n"


def _call(
    ng: NgClient, topo: Topology, call_id: str, caller_events: bool, **offer: Any
) -> tuple[tuple[str, int], tuple[str, int], int]:
    """Offer from the caller (with telephone-event 101 or without), answer from the callee
    with the telephone-event relayd offered it; where each side sends, and that PT."""
    reply = ok(
        ng.call(
            "offer",
            call_id=call_id,
            from_tag=CALLER_TAG,
            sdp=_sdp(topo.caller.ip4, CALLER_PORT, 101 if caller_events else None),
            direction=["caller", "callee"],
            **offer,
        )
    )
    pt = next(
        int(line.split()[0].split(":")[1])
        for line in reply["sdp"].splitlines()
        if "telephone-event" in line
    )
    to_callee = advertised(reply["sdp"])
    answered = ok(
        ng.call(
            "answer",
            call_id=call_id,
            from_tag=CALLER_TAG,
            to_tag=CALLEE_TAG,
            sdp=_sdp(topo.callee.ip4, CALLEE_PORT, pt),
        )
    )
    return advertised(answered["sdp"]).rtp_to, to_callee.rtp_to, pt


def _rtp(pt: int, seq: int, ts: int, payload: bytes, marker: bool = False) -> bytes:
    return struct.pack("!BBHII", 0x80, pt | (0x80 if marker else 0), seq, ts, 0x1234) + payload


def _event(code: int, end: bool, volume: int, duration: int) -> bytes:
    return bytes((code, (0x80 if end else 0) | volume)) + struct.pack("!H", duration)


def _reports(sock: socket.socket, count: int, timeout: float = 3.0) -> list[dict[str, Any]]:
    """Up to ``count`` JSON datagrams, then whatever else comes in the next 0.5 s."""
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        wait = deadline - time.monotonic() if len(got) < count else 0.5
        if not select.select([sock], [], [], max(wait, 0))[0]:
            if len(got) >= count:
                break
            continue
        got.append(json.loads(sock.recv(4096)))
    return got


def _rfc_digits(caller: Peer, to: tuple[str, int]) -> list[bytes]:
    """Audio, "8" (its end three times), audio, "5" (its end twice), "#" with no end, audio:
    what 10.5 was sent in the probe. Returns the event packets sent."""
    sent: list[bytes] = []
    seq, ts = 1000, 3000

    def send(pt: int, stamp: int, payload: bytes, marker: bool = False) -> None:
        nonlocal seq
        packet = _rtp(pt, seq, stamp, payload, marker)
        caller.send(packet, to)
        if pt == 101:
            sent.append(packet)
        seq += 1
        time.sleep(0.02)

    for _ in range(3):
        send(0, ts, b"\xff" * 160)
        ts += 160
    send(101, ts, _event(8, False, 10, 160), True)
    for duration in (320, 480, 640):
        send(101, ts, _event(8, False, 10, duration))
    for _ in range(3):
        send(101, ts, _event(8, True, 10, 800))
    ts += 800
    send(0, ts, b"\xff" * 160)
    ts += 160
    send(101, ts, _event(5, False, 20, 160), True)
    send(101, ts, _event(5, True, 20, 480))
    send(101, ts, _event(5, True, 20, 480))
    ts += 480
    send(101, ts, _event(11, False, 12, 160), True)
    send(101, ts, _event(11, False, 12, 320))
    ts += 320
    for _ in range(3):
        send(0, ts, b"\xff" * 160)
        ts += 160
    return sent


def _expected(
    topo: Topology, call_id: str, event: int, duration: int, volume: int
) -> dict[str, Any]:
    return {
        "callid": call_id,
        "source_tag": CALLER_TAG,
        "tags": sorted([CALLER_TAG, CALLEE_TAG]),
        "type": "DTMF",
        "source_ip": topo.caller.ip4,
        "event": event,
        "duration": duration,
        "volume": volume,
    }


def _rfc_reported(
    topo: Topology, listener: socket.socket, caller: Peer, callee: Peer, to: tuple[str, int]
) -> None:
    """The digits sent, forwarded as they came, reported as 10.5 reports them."""
    start = time.time()
    events = _rfc_digits(caller, to)
    reports = _reports(listener, 2)
    received = [p.data for p in callee.drain() if p.data[1] & 0x7F == 101]
    assert received == events  # forwarded as they came
    for report in reports:
        assert start - 1 <= report.pop("timestamp") <= time.time()
        report["tags"] = sorted(report["tags"])  # 10.5 lists its tag table in hash order
    assert reports == [
        _expected(topo, "dlog-rfc", 8, 100, 10),
        _expected(topo, "dlog-rfc", 5, 60, 20),
    ]


def test_rfc_events_through_a_worker_reported(
    topo: Topology, start_daemon: StartDaemon, listener: socket.socket
) -> None:
    """Also the log line (``log-facility-dtmf``; relayd logs to a file here, so the line
    goes there) and the ng TCP notification (``dtmf-log-ng-tcp``) of each digit."""
    tcp_ng = ("127.0.0.1", NG_PORT + 1)
    relay = start_daemon(
        *DTMF_LOG,
        "--log-facility-dtmf=local5",
        "--dtmf-log-ng-tcp",
        f"--listen-tcp-ng={tcp_ng[0]}:{tcp_ng[1]}",
    )
    with inside(topo.relay):
        client = socket.create_connection(tcp_ng, timeout=2.0)
    with (
        client,
        Peer(topo.caller.ns, topo.caller.ip4, CALLER_PORT) as caller,
        Peer(topo.callee.ns, topo.callee.ip4, CALLEE_PORT) as callee,
        relay.client() as ng,
    ):
        to_caller, to_callee, pt = _call(ng, topo, "dlog-rfc", caller_events=True)
        assert pt == 101
        callee.send(_rtp(0, 1, 100, b"\xff" * 160), to_callee)
        _rfc_reported(topo, listener, caller, callee, to_caller)
        notified = b""
        deadline = time.monotonic() + 2.0
        while notified.count(b"onDTMF") < 2 and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                notified += client.recv(65536)
        assert notified.count(b"d6:notify6:onDTMF4:datad4:tagsl") == 2, notified
        assert b"6:callid8:dlog-rfc10:source_tag10:caller-tag" in notified
        assert b"5:eventi8e8:durationi100e6:volumei10e" in notified
        assert b"5:eventi5e8:durationi60e6:volumei20e" in notified
    if isinstance(relay, RtpengineProcess):
        return  # 10.5 writes the line to syslog, whatever its log-stderr
    lines = [line for line in relay.log().splitlines() if "dtmf.event" in line]
    assert len(lines) == 2, lines
    assert '"source_tag":"caller-tag"' in lines[0] and '"event":8,"duration":100' in lines[0]
    assert '"event":5,"duration":60,"volume":20}' in lines[1]


def test_rfc_events_of_a_kernel_forwarded_call_reported(
    topo: Topology, start_relay: StartRelay, listener: socket.socket
) -> None:
    relay = start_relay(*KERNEL, *DTMF_LOG)
    with (
        Peer(topo.caller.ns, topo.caller.ip4, CALLER_PORT) as caller,
        Peer(topo.callee.ns, topo.callee.ip4, CALLEE_PORT) as callee,
        relay.client() as ng,
    ):
        to_caller, to_callee, _ = _call(ng, topo, "dlog-rfc", caller_events=True)
        caller.send(_rtp(0, 1, 100, b"\xff" * 160), to_caller)
        callee.send(_rtp(0, 1, 100, b"\xff" * 160), to_callee)
        reply = wait_for(
            ng, "dlog-rfc", lambda r: kernelized(r, CALLER_TAG), timeout=OFFLOAD_WAIT * 2
        )
        assert kernelized(reply, CALLER_TAG) and kernelized(reply, CALLEE_TAG)
        time.sleep(0.6)  # the hand-over's conntrack settling (tests/netns/test_kernel.py)
        callee.drain(quiet=0.2)
        delivered = udp_delivered(topo.relay)
        _rfc_reported(topo, listener, caller, callee, to_caller)
        assert udp_delivered(topo.relay) == delivered + 2  # the two JSON datagrams, no media


def _tone(start: int, count: int) -> bytes:
    """μ-law of the digit "8" (852 + 1336 Hz), each at amplitude 6000, from sample ``start``."""
    table = g711.encoder_table("PCMU")
    step = 2 * math.pi / 8000
    return bytes(
        table[int(6000 * (math.sin(852 * n * step) + math.sin(1336 * n * step))) & 0xFFFF]
        for n in range(start, start + count)
    )


def test_tone_heard_in_audio_reported(
    topo: Topology, start_daemon: StartDaemon, listener: socket.socket
) -> None:
    relay = start_daemon(*DTMF_LOG)
    with (
        Peer(topo.caller.ns, topo.caller.ip4, CALLER_PORT) as caller,
        Peer(topo.callee.ns, topo.callee.ip4, CALLEE_PORT) as callee,
        relay.client() as ng,
    ):
        to_caller, to_callee, pt = _call(
            ng, topo, "dlog-tone", caller_events=False, codec={"transcode": ["telephone-event"]}
        )
        callee.send(_rtp(0, 1, 100, b"\xff" * 160), to_callee)
        ts = 3000
        payloads = [b"\xff" * 160] * 2 + [_tone(160 * i, 160) for i in range(6)]
        for seq, payload in enumerate(payloads + [b"\xff" * 160] * 6):
            caller.send(_rtp(0, 500 + seq, ts, payload), to_caller)
            ts += 160
            time.sleep(0.02)
        reports = _reports(listener, 1)
        got = callee.drain()
        assert {p.data[12] for p in got if p.data[1] & 0x7F == pt} == {8}
        assert len(reports) == 1, reports
        report = reports[0]
        duration, volume = report.pop("duration"), report.pop("volume")
        assert 100 <= duration <= 130  # 120 ms of tone (10.5: 114)
        assert 0 < volume < 20
        del report["timestamp"]
        report["tags"] = sorted(report["tags"])
        expected = _expected(topo, "dlog-tone", 8, 0, 0)
        del expected["duration"], expected["volume"]
        assert report == expected
