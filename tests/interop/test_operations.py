"""relayd operated as an SBC operator does: relayctl, /metrics, logs, Homer (daemon on loopback).

Calls run in userspace on 127.0.0.1 (the kernel path is covered by
tests/netns/test_operations.py): a caller and a callee socket, offer and
answer over ng, RTP both ways through the relay.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest

from relayd.ng.client import NgClient
from relayd.ops import hep
from tests.netns.calls import advertised, sdp
from tests.support.relayd import REPO, RelaydProcess, running_relayd
from tests.support.rtp_peer import rtp_packet

pytestmark = pytest.mark.interop

NG_PORT = 22380
HTTP_PORT = 22381
PORTS = (45000, 45099)
BASE = ("--endpoint-learning", "immediate", "--num-threads", "2", "--delete-delay", "0")


def relayctl(daemon: RelaydProcess, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "relayd.ops.ctl",
            "--socket",
            str(daemon.admin_socket),
            "--ng",
            f"127.0.0.1:{NG_PORT}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        check=False,
    )


def relayctl_json(daemon: RelaydProcess, *args: str) -> dict[str, Any]:
    result = relayctl(daemon, "--json", *args)
    assert result.returncode == 0, result.stderr
    reply: dict[str, Any] = json.loads(result.stdout)
    return reply


@contextmanager
def relay(tmp_path: Path, *extra: str, config_file: Path | None = None) -> Iterator[RelaydProcess]:
    with running_relayd(
        tmp_path,
        ng_port=NG_PORT,
        port_min=PORTS[0],
        port_max=PORTS[1],
        extra=[*BASE, *extra],
        config_file=config_file,
    ) as daemon:
        yield daemon


class LoopbackCall:
    """A caller and a callee socket on 127.0.0.1, connected through relayd."""

    def __init__(self, ng: NgClient, call_id: str) -> None:
        self.call_id = call_id
        self.caller = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.callee = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for sock in (self.caller, self.callee):
            sock.bind(("127.0.0.1", 0))
            sock.settimeout(1.0)
        offer = ng.call(
            "offer",
            call_id=call_id,
            from_tag=f"{call_id}-a",
            sdp=sdp("127.0.0.1", self.caller.getsockname()[1]),
        )
        assert offer["result"] == "ok", offer
        answer = ng.call(
            "answer",
            call_id=call_id,
            from_tag=f"{call_id}-a",
            to_tag=f"{call_id}-b",
            sdp=sdp("127.0.0.1", self.callee.getsockname()[1]),
        )
        assert answer["result"] == "ok", answer
        self.to_callee = advertised(offer["sdp"])  # where the callee sends
        self.to_caller = advertised(answer["sdp"])  # where the caller sends

    @property
    def relay_ports(self) -> list[int]:
        return [self.to_callee.rtp, self.to_callee.rtcp, self.to_caller.rtp, self.to_caller.rtcp]

    def exchange(self, count: int, first: int = 0) -> int:
        """Both send ``count`` RTP packets; returns how many arrived at the other side."""
        for seq in range(first, first + count):
            self.caller.sendto(rtp_packet(seq, 0x1111, 1), self.to_caller.rtp_to)
            self.callee.sendto(rtp_packet(seq, 0x2222, 2), self.to_callee.rtp_to)
            time.sleep(0.001)
        arrived = 0
        for sock in (self.callee, self.caller):
            for _ in range(count):
                try:
                    sock.recv(2048)
                except TimeoutError:
                    break
                arrived += 1
        return arrived

    def close(self) -> None:
        self.caller.close()
        self.callee.close()


def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)


# -- relayctl -------------------------------------------------------------------------------------


def test_relayctl_read_commands(tmp_path: Path) -> None:
    with relay(tmp_path) as daemon, daemon.client() as ng:
        one, two = LoopbackCall(ng, "ops-1"), LoopbackCall(ng, "ops-2")
        assert one.exchange(10) == 20
        eventually(
            lambda: relayctl_json(daemon, "list", "totals")["traffic"]["userspace"]["packets"] >= 20
        )

        text = relayctl(daemon, "list", "numsessions")
        assert text.returncode == 0
        assert text.stdout.splitlines() == [
            "Current sessions own: 2",
            "Current sessions foreign: 0",
            "Current sessions total: 2",
        ]
        assert relayctl_json(daemon, "list", "numsessions") == {"own": 2, "foreign": 0, "total": 2}

        sessions = relayctl_json(daemon, "list", "sessions")["sessions"]
        assert sorted(s["call_id"] for s in sessions) == ["ops-1", "ops-2"]
        assert {s["call_id"]: s["packets"] for s in sessions} == {"ops-1": 20, "ops-2": 0}
        assert "ops-1" in relayctl(daemon, "list", "sessions").stdout

        detail = relayctl_json(daemon, "list", "callid", "ops-1")
        caller, callee = detail["parties"]
        assert (caller["tag"], caller["role"]) == ("ops-1-a", "caller")
        rtp = caller["medias"][0]["streams"][0]
        assert rtp["local"] == f"127.0.0.1:{one.to_caller.rtp}"
        assert rtp["endpoint"] == f"127.0.0.1:{one.caller.getsockname()[1]}"
        assert rtp["confirmed"] is True
        assert (rtp["path"], rtp["packets"], rtp["bytes"]) == ("userspace", 10, 10 * 172)
        assert callee["medias"][0]["streams"][0]["packets"] == 10
        shown = relayctl(daemon, "list", "callid", "ops-1").stdout
        assert f"127.0.0.1:{one.to_caller.rtp}" in shown and "userspace" in shown

        totals = relayctl(daemon, "list", "totals")
        assert "Total relayed packets (userspace): 20" in totals.stdout
        assert "Total relayed packets (kernel): 0" in totals.stdout

        workers = relayctl_json(daemon, "workers")["workers"]
        assert [w["index"] for w in workers] == [0, 1]
        assert all(w["connected"] and w["pid"] > 0 for w in workers)
        for w in workers:  # the pids are relayd's live worker processes
            assert Path(f"/proc/{w['pid']}/cmdline").read_bytes().count(b"relayd.worker") >= 1
        assert sum(w["streams"] for w in workers) == 8  # two calls, four sockets each
        assert sum(w["packets"] for w in workers) == 20
        assert "PPS" in relayctl(daemon, "workers").stdout

        kernel = relayctl_json(daemon, "kernel")
        assert kernel["enabled"] is False and kernel["forwards"] == []
        assert "Kernel path: disabled" in relayctl(daemon, "kernel").stdout

        config = relayctl_json(daemon, "config")["config"]
        assert config["listen-ng"] == f"127.0.0.1:{NG_PORT}"
        assert (config["port-min"], config["port-max"]) == PORTS
        assert config["admin-socket"] == str(daemon.admin_socket)
        assert f"port-min = {PORTS[0]}" in relayctl(daemon, "config").stdout
        # ng commands keep working through relayctl
        assert relayctl(daemon, "ping").stdout.strip() == "pong"
        assert sorted(relayctl(daemon, "list").stdout.split()) == ["ops-1", "ops-2"]
        for call in (one, two):
            call.close()


def test_relayctl_terminate_stops_media_and_frees_ports(tmp_path: Path) -> None:
    with relay(tmp_path) as daemon, daemon.client() as ng:
        calls = [LoopbackCall(ng, f"end-{n}") for n in range(3)]
        assert calls[0].exchange(5) == 10
        result = relayctl(daemon, "terminate", "end-0")
        assert result.returncode == 0 and result.stdout.strip() == "Terminated 1 call(s): end-0"
        # media stops at once, and the relay's ports are free for anyone to bind
        assert calls[0].exchange(5, first=5) == 0
        for port in calls[0].relay_ports:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                probe.bind(("127.0.0.1", port))
        assert ng.call("query", call_id="end-0")["error-reason"] == "Unknown call-id"
        assert calls[1].exchange(3) == 6  # the others are untouched

        unknown = relayctl(daemon, "terminate", "end-0")
        assert unknown.returncode == 1 and "not found" in unknown.stderr

        assert relayctl_json(daemon, "terminate", "all") == {"terminated": ["end-1", "end-2"]}
        assert ng.call("list")["calls"] == []
        for call in calls[1:]:
            for port in call.relay_ports:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                    probe.bind(("127.0.0.1", port))
        totals = ng.call("statistics")["statistics"]["totalstatistics"]
        assert totals["forcedterminatedsessions"] == 3
        for call in calls:
            call.close()


def test_relayctl_reload(tmp_path: Path) -> None:
    conf = tmp_path / "rtpengine.conf"
    conf.write_text("[rtpengine]\ninterface = 127.0.0.1\ntimeout = 60\nlog-level = 6\n")
    with relay(tmp_path, config_file=conf) as daemon:
        conf.write_text(
            "[rtpengine]\ninterface = 127.0.0.1\ntimeout = 25\nlog-level = 5\n"
            "max-sessions = 1\ntos = 184\n"
        )
        reply = relayctl_json(daemon, "reload")
        assert reply["applied"] == {"timeout": [60, 25], "max-sessions": [-1, 1]}
        assert reply["restart"] == ["tos"]
        config = relayctl_json(daemon, "config")["config"]
        assert (config["timeout"], config["max-sessions"], config["tos"]) == (25, 1, 0)
        # the log level comes from the command line (--log-level 7), which still wins
        assert config["log-level"] == 7
        with daemon.client() as ng:
            LoopbackCall(ng, "first").close()
            refused = ng.call("offer", call_id="second", from_tag="x", sdp=sdp("127.0.0.1", 9))
            assert refused["error-reason"] == "Parallel session limit reached"
        # reloading again applies nothing new; tos still waits for a restart
        text = relayctl(daemon, "reload").stdout
        assert text.splitlines() == [
            "needs a restart: tos (changed in the file, running value kept)"
        ]
        conf.write_text("[rtpengine]\ninterface = 127.0.0.1\ntimeout = lots\n")
        broken = relayctl(daemon, "reload")
        assert broken.returncode == 1 and "'timeout'" in broken.stderr
        assert relayctl_json(daemon, "config")["config"]["timeout"] == 25
        # SIGHUP (systemctl reload) does the same
        conf.write_text("[rtpengine]\ninterface = 127.0.0.1\ntimeout = 40\n")
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGHUP)
        eventually(lambda: relayctl_json(daemon, "config")["config"]["timeout"] == 40)
    assert not daemon.admin_socket.exists()  # removed when relayd stops


def test_relayctl_unreachable(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for command in (["workers"], ["list", "sessions"], ["terminate", "all"], ["--json", "kernel"]):
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "relayd.ops.ctl",
                "--socket",
                str(tmp_path / "none.sock"),
                *command,
            ],
            capture_output=True,
            text=True,
            timeout=20,
            env=env,
            check=False,
        )
        assert result.returncode == 2, command
        assert result.stderr.startswith(
            f"relayctl: relayd is not reachable at {tmp_path / 'none.sock'}: "
        )
        assert result.stdout == ""


def test_admin_socket_permissions(tmp_path: Path) -> None:
    with relay(tmp_path) as daemon:
        assert daemon.admin_socket.stat().st_mode & 0o777 == 0o660


# -- /metrics -------------------------------------------------------------------------------------


def scrape(port: int = HTTP_PORT, path: str = "/metrics") -> tuple[str, str]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    head, _, body = data.decode().partition("\r\n\r\n")
    return head, body


def metric(body: str, sample: str) -> float:
    for line in body.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{sample} not in /metrics")


def test_metrics_count_what_was_relayed(tmp_path: Path) -> None:
    with (
        relay(tmp_path, "--listen-http", f"127.0.0.1:{HTTP_PORT}") as daemon,
        daemon.client() as ng,
    ):
        head, body = scrape()
        assert head.startswith("HTTP/1.1 200 OK") and "text/plain; version=0.0.4" in head
        assert metric(body, 'rtpengine_packets_total{type="userspace"}') == 0
        assert scrape(path="/ping")[1] == "pong"
        assert scrape(path="/nothing")[0].startswith("HTTP/1.1 404")

        call = LoopbackCall(ng, "metered")
        assert call.exchange(25) == 50
        want = 'rtpengine_packets_total{type="userspace"}'
        eventually(lambda: metric(scrape()[1], want) >= 50)
        time.sleep(1.2)  # another worker report: nothing more is counted
        body = scrape()[1]
        assert metric(body, want) == 50
        assert metric(body, 'rtpengine_bytes_total{type="userspace"}') == 50 * 172
        for direction in ("caller_to_callee", "callee_to_caller"):
            labels = f'path="userspace",direction="{direction}"'
            assert metric(body, f"relayd_packets_total{{{labels}}}") == 25
        assert metric(body, 'rtpengine_sessions{type="own"}') == 1
        assert metric(body, 'rtpengine_mediastreams{type="userspace"}') == 4
        assert metric(body, 'rtpengine_requests_total{proxy="127.0.0.1",request="offer"}') == 1
        assert metric(body, 'rtpengine_requests_total{proxy="127.0.0.1",request="answer"}') == 1
        ng.call("query", call_id="nope")
        assert metric(scrape()[1], 'relayd_ng_errors_total{request="query"}') == 1
        assert ng.call("delete", call_id="metered", from_tag="metered-a")["result"] == "ok"
        body = scrape()[1]
        assert metric(body, 'rtpengine_sessions{type="own"}') == 0
        assert metric(body, want) == 50  # counters outlive the call
        assert metric(body, 'rtpengine_closed_sessions_total{reason="terminated"}') == 1
        call.close()


def test_prometheus_listen_needs_prometheus_yes(tmp_path: Path) -> None:
    conf = tmp_path / "rtpengine.conf"
    conf.write_text(
        f"[rtpengine]\ninterface = 127.0.0.1\nprometheus = yes\n"
        f"prometheus-listen = 127.0.0.1:{HTTP_PORT + 1}\n"
    )
    with relay(tmp_path, config_file=conf):
        head, body = scrape(HTTP_PORT + 1)
        assert head.startswith("HTTP/1.1 200") and "rtpengine_sessions_total 0" in body


# -- logs -----------------------------------------------------------------------------------------

# lines about relayd itself, not about a call
_DAEMON_EVENTS = (
    "relayd.",
    "worker.",
    "ng.listening",
    "http.",
    "admin.",
    "config.",
    "kernel.",
    "state.",  # where the call journal is, or why there is none
    "conntrack.",  # a sweep of released ports, batched over the calls that ended
    "ports.budget",  # at start: the sockets each worker may hold
    "ports.ephemeral_overlap",  # at start: the media range is not reserved
)


def test_every_line_of_a_call_carries_its_call_id(tmp_path: Path) -> None:
    with relay(tmp_path, "--log-format", "json", "--offer-timeout", "1") as daemon:
        with daemon.client() as ng:
            call = LoopbackCall(ng, "logged-call")
            assert call.exchange(5) == 10
            time.sleep(1.2)
            assert ng.call("query", call_id="logged-call")["result"] == "ok"
            ng.call("answer", call_id="logged-call", from_tag="logged-call-a", to_tag="x")
            # a call that only a timer ends
            offer = ng.call("offer", call_id="timed-out", from_tag="t", sdp=sdp("127.0.0.1", 9))
            assert offer["result"] == "ok"
            assert (
                ng.call("delete", call_id="logged-call", from_tag="logged-call-a")["result"] == "ok"
            )
            eventually(lambda: "offer timeout" in daemon.log())
            call.close()
        log = daemon.log()
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert len(lines) == len(log.splitlines()), "every line is JSON"
    of_calls: dict[str, list[str]] = {}
    for line in lines:
        event = line["event"]
        assert "." in event, line  # dotted event names
        if event.startswith(_DAEMON_EVENTS) and "call_id" not in line:
            continue
        if event == "ng.request" and line["command"] in ("ping", "list", "statistics"):
            continue
        assert line.get("call_id") in ("logged-call", "timed-out"), line
        assert "worker" in line, line  # the worker that holds the call's sockets
        of_calls.setdefault(line["call_id"], []).append(event)
    logged = of_calls["logged-call"]
    assert logged.count("ng.request") == 4  # offer, answer, query, delete
    assert "ng.failed" in logged  # the answer without SDP
    assert "call.teardown" in logged
    assert of_calls["timed-out"] == ["ng.request", "call.teardown"]
    teardown = next(
        x for x in lines if x["event"] == "call.teardown" and x["call_id"] == "timed-out"
    )
    assert teardown["reason"] == "offer timeout"
    workers = [x for x in lines if x["event"] == "worker.started"]
    assert sorted(x["worker"] for x in workers) == [0, 1]


# -- Homer ----------------------------------------------------------------------------------------


def sender_report(ssrc: int) -> bytes:
    body = struct.pack("!IIIIII", ssrc, 3_900_000_000, 0, 160, 10, 1600)
    return struct.pack("!BBH", 0x80, 200, len(body) // 4) + body


def hep_packets(
    listener: socket.socket, until: Callable[[list[hep.HepPacket]], bool]
) -> list[hep.HepPacket]:
    got: list[hep.HepPacket] = []
    deadline = time.monotonic() + 5
    while not until(got):
        assert time.monotonic() < deadline, [p.protocol for p in got]
        listener.settimeout(max(deadline - time.monotonic(), 0.01))
        with suppress(TimeoutError):
            got.append(hep.decode(listener.recv(65536)))
    return got


@pytest.mark.parametrize("spelling", ["rtpengine", "guide"])
def test_homer_gets_ng_traffic_and_rtcp(tmp_path: Path, spelling: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as listener:
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        conf = tmp_path / "rtpengine.conf"
        if spelling == "guide":
            conf.write_text(
                "[rtpengine]\ninterface = 127.0.0.1\n"
                f"homer-ng = udp:127.0.0.1:{port}\nhomer-protocol = 17\nhomer-id = 2002\n"
            )
        else:
            conf.write_text(
                "[rtpengine]\ninterface = 127.0.0.1\n"
                f"homer = 127.0.0.1:{port}\nhomer-protocol = udp\nhomer-id = 2002\n"
                "homer-enable-ng = yes\nlog-facility-rtcp = local0\n"
            )
        with relay(tmp_path, config_file=conf) as daemon, daemon.client() as ng:
            call = LoopbackCall(ng, "homer-call")
            ng_packets = hep_packets(listener, lambda got: len(got) >= 4)
            # the offer and the answer, each request then its reply; ping is not captured
            assert all(p.protocol == 0x3D and p.capture_id == 2002 for p in ng_packets)
            assert all(p.correlation_id == b"homer-call" for p in ng_packets)
            offer, offer_reply = ng_packets[0], ng_packets[1]
            assert offer.destination == ("127.0.0.1", NG_PORT)
            assert offer_reply.source == ("127.0.0.1", NG_PORT)
            assert offer_reply.destination == offer.source
            cookie, _, body = offer.payload.partition(b" ")
            assert NgClient.decode_body(body)["command"] == "offer"
            reply_cookie, _, reply_body = offer_reply.payload.partition(b" ")
            assert reply_cookie == cookie and NgClient.decode_body(reply_body)["result"] == "ok"
            assert (
                NgClient.decode_body(ng_packets[2].payload.partition(b" ")[2])["command"]
                == "answer"
            )

            # RTCP from the caller to the relay's RTCP port (relayed to the callee's port + 1)
            call.caller.sendto(sender_report(0x1111), call.to_caller.rtcp_to)
            [rtcp] = hep_packets(listener, lambda got: len(got) >= 1)
            assert rtcp.protocol == 5 and rtcp.capture_id == 2002
            assert rtcp.correlation_id == b"homer-call"
            assert rtcp.source == call.caller.getsockname()
            assert rtcp.destination == call.to_caller.rtcp_to
            report = json.loads(rtcp.payload)
            assert report["ssrc"] == 0x1111 and report["type"] == 200
            assert report["sender_information"]["packets"] == 10
            assert abs(rtcp.seconds - time.time()) < 10
            if spelling == "rtpengine":  # and the RTCP log line (stderr here, not syslog)
                [line] = [x for x in daemon.log().splitlines() if "rtcp.packet" in x]
                assert "call_id=homer-call" in line and '"ssrc":4369' in line
            call.close()
