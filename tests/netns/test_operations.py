"""Operations on the kernel path: relayctl shows offloaded streams, /metrics counts them.

relayd runs in the relay namespace with ``--table 0`` (see test_kernel.py for the
topology and why its packet counts are exact); relayctl talks to it over its
admin socket (a path in the file system, reachable from any namespace) and the
test scrapes ``/metrics`` from inside the relay namespace.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from relayd.ops import hep
from tests.netns.calls import (
    CALLEE_PORT,
    CALLEE_SSRC,
    CALLEE_TAG,
    CALLER_PORT,
    CALLER_SSRC,
    CALLER_TAG,
    EF,
    bind_free,
    element_counters,
    kernel_counted,
    ok,
    set_up_call,
    table_elements,
)
from tests.netns.conftest import StartRelay
from tests.netns.test_kernel import (
    RTP_SIZE,
    USER_CALLEE,
    USER_CALLER,
    confirm_both,
    kernel_exchange,
    keys,
    offloaded,
)
from tests.support.netns import Topology, inside, unavailable
from tests.support.relayd import REPO, RelaydProcess
from tests.support.rtp_peer import Peer

_SKIP = unavailable()
pytestmark = [pytest.mark.netns, pytest.mark.skipif(_SKIP is not None, reason=f"netns: {_SKIP}")]

HTTP = ("127.0.0.1", 2225)
KERNEL = (
    "--table",
    "0",
    "--endpoint-learning",
    "immediate",
    "--tos",
    str(EF),
    "--listen-http",
    f"{HTTP[0]}:{HTTP[1]}",
)


@pytest.fixture
def peers(topo: Topology) -> Iterator[tuple[Peer, Peer]]:
    with (
        Peer(topo.caller.ns, topo.caller.ip4, CALLER_PORT) as caller,
        Peer(topo.callee.ns, topo.callee.ip4, CALLEE_PORT) as callee,
    ):
        yield caller, callee


def relayctl(relay: RelaydProcess, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "relayd.ops.ctl", "--socket", str(relay.admin_socket), *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        check=False,
    )


def relayctl_json(relay: RelaydProcess, *args: str) -> dict[str, Any]:
    result = relayctl(relay, "--json", *args)
    assert result.returncode == 0, result.stderr
    reply: dict[str, Any] = json.loads(result.stdout)
    return reply


def scrape(ns: str) -> dict[str, float]:
    """``/metrics`` from inside ``ns``: sample line (name and labels) -> value."""
    with inside(ns):
        conn = socket.create_connection(HTTP, timeout=5)
    with conn:
        conn.sendall(b"GET /metrics HTTP/1.1\r\nHost: relay\r\n\r\n")
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    head, _, body = data.decode().partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 200 OK"), head
    samples = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


USER = 'rtpengine_packets_total{type="userspace"}'
KERN = 'rtpengine_packets_total{type="kernel"}'
KERN_BYTES = 'rtpengine_bytes_total{type="kernel"}'
FORWARD = 'relayd_packets_total{path="kernel",direction="caller_to_callee"}'
BACKWARD = 'relayd_packets_total{path="kernel",direction="callee_to_caller"}'


def test_kernel_streams_in_relayctl_and_metrics(
    topo: Topology, start_relay: StartRelay, peers: tuple[Peer, Peer]
) -> None:
    relay = start_relay(*KERNEL)
    caller, callee = peers
    read = lambda: scrape(topo.relay)  # noqa: E731
    with relay.client() as ng:
        before = read()
        assert before[USER] == before[KERN] == 0
        assert before["relayd_kernel_enabled"] == 1
        legs = set_up_call(ng, topo)
        assert legs.to_caller is not None
        confirm_both(caller, callee, legs)
        offloaded(ng, legs.call_id)

        # relayctl: the kernel path and the call's streams
        kernel = relayctl_json(relay, "kernel")
        assert (kernel["enabled"], kernel["table"], kernel["reason"]) == (True, "relayd", "")
        assert kernel["kernel_streams"] == 2
        to_callee, to_caller = keys(legs, caller, callee)
        shown = {(f["source"], f["relay"]): f for f in kernel["forwards"]}
        assert set(shown) == {
            (f"{to_callee[0]}:{to_callee[1]}", f"{to_callee[2]}:{to_callee[3]}"),
            (f"{to_caller[0]}:{to_caller[1]}", f"{to_caller[2]}:{to_caller[3]}"),
        }
        assert all(f["call_id"] == legs.call_id for f in kernel["forwards"])
        text = relayctl(relay, "kernel").stdout
        assert "Kernel path: enabled, table inet relayd, 2 stream(s) offloaded" in text
        detail = relayctl_json(relay, "list", "callid", legs.call_id)
        paths = {
            (party["tag"], stream["component"]): stream["path"]
            for party in detail["parties"]
            for stream in party["medias"][0]["streams"]
        }
        assert paths == {
            (CALLER_TAG, "rtp"): "kernel",
            (CALLER_TAG, "rtcp"): "userspace",
            (CALLEE_TAG, "rtp"): "kernel",
            (CALLEE_TAG, "rtcp"): "userspace",
        }
        assert "kernel" in relayctl(relay, "list", "callid", legs.call_id).stdout
        [session] = relayctl_json(relay, "list", "sessions")["sessions"]
        assert session["kernel_streams"] == 2

        # /metrics: the userspace phase, then the kernel phase, packet for packet
        userspace = USER_CALLER + USER_CALLEE
        # the worker report that confirmed the second end (and so made the offload) has
        # counted the userspace phase: no wait needed for it (a count off by a report would
        # fail below, not pass); the kernel has forwarded nothing yet, and relayd has read
        # it so (kernel_counted returns at once unless a stray packet went through)
        kernel_counted(relay, topo.relay)
        start = read()
        assert start[USER] == userspace and start[KERN] == 0
        assert start['rtpengine_mediastreams{type="kernel"}'] == 2
        assert start['rtpengine_mediastreams{type="userspace"}'] == 2
        count = 50
        kernel_exchange(topo.relay, caller, callee, legs, count, first=100)
        kernel_counted(relay, topo.relay)  # a kernel tick has read the exchange's packets
        after = read()
        assert after[KERN] - start[KERN] == 2 * count
        assert after[KERN_BYTES] - start[KERN_BYTES] == 2 * count * RTP_SIZE
        assert after[FORWARD] - start[FORWARD] == count
        assert after[BACKWARD] - start[BACKWARD] == count
        assert after[USER] == userspace  # not one kernel packet counted twice
        # relayctl reads the same nft counters
        forwards = relayctl_json(relay, "kernel")["forwards"]
        assert sorted(f["packets"] for f in forwards) == [count, count]
        totals = relayctl_json(relay, "list", "totals")["traffic"]
        assert totals["kernel"]["packets"] == 2 * count
        assert totals["userspace"]["packets"] == userspace

        # terminate: forwards gone, media stops, ports free
        done = relayctl(relay, "terminate", legs.call_id)
        assert done.returncode == 0, done.stderr
        elements = table_elements(topo.relay)
        assert elements is not None and all(v == [] for v in elements.values()), elements
        assert element_counters(topo.relay) == {}
        caller.send_rtp(legs.to_caller.rtp_to, 3, first=300, ssrc=CALLER_SSRC, tag=1)
        callee.send_rtp(legs.to_callee.rtp_to, 3, first=300, ssrc=CALLEE_SSRC, tag=2)
        assert callee.drain(quiet=0.3) == []
        assert caller.drain(quiet=0.0) == []
        bind_free(topo.relay, topo.caller.relay4, [legs.to_caller.rtp, legs.to_caller.rtcp])
        bind_free(topo.relay, topo.callee.relay4, [legs.to_callee.rtp, legs.to_callee.rtcp])
        assert relayctl_json(relay, "kernel")["forwards"] == []
        assert ok(ng.call("list"))["calls"] == []
        final = read()
        assert final['rtpengine_closed_sessions_total{reason="force_terminated"}'] == 1
        assert final[KERN] == after[KERN]  # counters outlive the call


def sender_report(ssrc: int, packets: int) -> bytes:
    body = struct.pack("!IIIIII", ssrc, 3_900_000_000, 0, 160 * packets, packets, 160 * packets)
    return struct.pack("!BBH", 0x80, 200, len(body) // 4) + body


def test_homer_gets_rtcp_while_rtp_is_in_the_kernel(
    topo: Topology, start_relay: StartRelay, peers: tuple[Peer, Peer]
) -> None:
    """With Homer on, RTCP stays with the workers (which copy it) while RTP is offloaded."""
    with inside(topo.relay):
        listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with listener:
        listener.bind(("127.0.0.1", 9060))
        relay = start_relay(*KERNEL, "--homer", "127.0.0.1:9060", "--homer-id", "7")
        caller, callee = peers
        with (
            relay.client() as ng,
            Peer(topo.caller.ns, topo.caller.ip4, CALLER_PORT + 1) as caller_rtcp,
            Peer(topo.callee.ns, topo.callee.ip4, CALLEE_PORT + 1) as callee_rtcp,
        ):
            legs = set_up_call(ng, topo)
            assert legs.to_caller is not None
            confirm_both(caller, callee, legs)
            # both RTCP ends confirmed too: without Homer they would go to the kernel
            caller_rtcp.send(sender_report(CALLER_SSRC, 3), legs.to_caller.rtcp_to)
            assert len(callee_rtcp.receive(1)) == 1
            callee_rtcp.send(sender_report(CALLEE_SSRC, 1), legs.to_callee.rtcp_to)
            assert len(caller_rtcp.receive(1)) == 1
            offloaded(ng, legs.call_id)
            time.sleep(1.2)  # a worker report: RTCP confirmed, still not offloaded
            detail = relayctl_json(relay, "list", "callid", legs.call_id)
            rtcp = [
                s
                for party in detail["parties"]
                for s in party["medias"][0]["streams"]
                if s["component"] == "rtcp"
            ]
            assert [(s["confirmed"], s["path"]) for s in rtcp] == [(True, "userspace")] * 2
            kernel_exchange(topo.relay, caller, callee, legs, 5, first=10)

            got: dict[int, hep.HepPacket] = {}
            listener.settimeout(5.0)
            while len(got) < 2:
                packet = hep.decode(listener.recv(65536))
                assert packet.protocol == 5, packet  # no ng capture without homer-enable-ng
                got[json.loads(packet.payload)["ssrc"]] = packet
            from_caller, from_callee = got[CALLER_SSRC], got[CALLEE_SSRC]
            assert from_caller.source == (topo.caller.ip4, CALLER_PORT + 1)
            assert from_caller.destination == legs.to_caller.rtcp_to
            assert from_callee.source == (topo.callee.ip4, CALLEE_PORT + 1)
            assert from_callee.destination == legs.to_callee.rtcp_to
            for packet in (from_caller, from_callee):
                assert packet.correlation_id == legs.call_id.encode()
                assert packet.capture_id == 7
            assert json.loads(from_caller.payload)["sender_information"]["packets"] == 3
