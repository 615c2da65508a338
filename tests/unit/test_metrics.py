"""/metrics: the exposition text, rtpengine's metric names, and counters that only grow."""

from __future__ import annotations

import re

from relayd.calls.model import CallRecording
from relayd.ops.counters import Counters, Traffic, direction_of
from relayd.ops.metrics import Family, collect, render
from relayd.plane.reports import CodecTotals
from tests.unit.calls import LOCAL4, LOCAL6, T0
from tests.unit.test_admin import _state

SAMPLE = re.compile(r"^(?P<name>[a-z_]+)(\{(?P<labels>[^}]*)\})? (?P<value>-?[0-9.e+]+)$")


def parse(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Sample lines by (name, labels); checks every family is announced before its samples."""
    announced: dict[str, str] = {}
    samples = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            assert kind in ("counter", "gauge") and name not in announced, line
            announced[name] = kind
            continue
        if line.startswith("# HELP "):
            continue
        match = SAMPLE.match(line)
        assert match, f"not a sample line: {line!r}"
        assert match["name"] in announced, line
        labels = frozenset(re.findall(r'([a-z_]+)="([^"]*)"', match["labels"] or ""))
        samples[(match["name"], labels)] = float(match["value"])
    return samples


def value(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], metric: str, **labels: str
) -> float:
    return samples[(metric, frozenset(labels.items()))]


def test_render_escapes_and_formats() -> None:
    text = render(
        [
            Family("x_total", "counter", "Things").add(3, who='a"b\\c'),
            Family("y", "gauge", "Other").add(0.25),
        ]
    )
    assert text == (
        "# HELP x_total Things\n# TYPE x_total counter\n"
        'x_total{who="a\\"b\\\\c"} 3\n'
        "# HELP y Other\n# TYPE y gauge\ny 0.25\n"
    )


def test_rtpengine_figures() -> None:
    state, _ = _state(2)
    commands = state.commands
    commands.terminate("call-1", T0 + 5)
    traffic = state.counters.traffic
    traffic.add("userspace", "caller_to_callee", 3, 516)
    traffic.add("kernel", "caller_to_callee", 50, 8600)
    traffic.add("kernel", "callee_to_caller", 49, 8428)
    state.counters.ng.record("127.0.0.1", "offer", True, 0.002)
    state.counters.ng.record("127.0.0.1", "offer", False, 0.001)
    call = commands.calls["call-0"]
    call.monologues["a"].medias[0].streams[0].kernelized = True
    samples = parse(render(collect(state, now=T0 + 100)))
    assert value(samples, "rtpengine_sessions", type="own") == 1
    assert value(samples, "rtpengine_sessions_total") == 2
    assert value(samples, "rtpengine_closed_sessions_total", reason="force_terminated") == 1
    assert value(samples, "rtpengine_closed_sessions_total", reason="timeout") == 0
    assert value(samples, "rtpengine_mediastreams", type="kernel") == 1
    assert value(samples, "rtpengine_mediastreams", type="userspace") == 3
    assert value(samples, "rtpengine_packets_total", type="kernel") == 99
    assert value(samples, "rtpengine_packets_total", type="userspace") == 3
    assert value(samples, "rtpengine_bytes_total", type="kernel") == 8600 + 8428
    assert value(samples, "rtpengine_uptime_seconds") == 100
    assert value(samples, "rtpengine_requests_total", proxy="127.0.0.1", request="offer") == 2
    assert value(samples, "rtpengine_errors_total", proxy="127.0.0.1") == 1
    assert value(samples, "relayd_ng_errors_total", request="offer") == 1
    assert value(samples, "rtpengine_call_duration_total") == 5
    # one call (two parties, RTP and RTCP pairs) holds 2 ports per party on each address used
    assert value(samples, "rtpengine_ports_used", name="default", address=LOCAL4) == 4
    assert value(samples, "rtpengine_ports_used", name="default", address=LOCAL6) == 0
    total = value(samples, "rtpengine_ports", name="default", address=LOCAL4)
    assert value(samples, "rtpengine_ports_free", name="default", address=LOCAL4) == total - 4


def test_relayd_figures() -> None:
    state, _ = _state(1)
    state.counters.traffic.add("kernel", "callee_to_caller", 10, 1720)
    worker = state.media.workers[0]
    worker.cpu_seconds, worker.packets = 1.5, 77
    samples = parse(render(collect(state, now=T0)))
    labels = {"path": "kernel", "direction": "callee_to_caller"}
    assert value(samples, "relayd_packets_total", **labels) == 10
    assert value(samples, "relayd_bytes_total", **labels) == 1720
    assert value(samples, "relayd_packets_total", path="kernel", direction="caller_to_callee") == 0
    assert (
        value(samples, "relayd_worker_cpu_seconds_total", worker="0", core=str(worker.cpu)) == 1.5
    )
    assert value(samples, "relayd_worker_packets_total", worker="0", core=str(worker.cpu)) == 77
    assert value(samples, "relayd_worker_ipc_queued_bytes", worker="0", direction="to_worker") == 0
    assert value(samples, "relayd_kernel_enabled") == 0


def test_counters_survive_the_call() -> None:
    state, _ = _state(1)
    state.counters.traffic.add("userspace", "caller_to_callee", 5, 860)
    state.commands.terminate("call-0", T0 + 1)
    samples = parse(render(collect(state, now=T0 + 2)))
    assert value(samples, "rtpengine_packets_total", type="userspace") == 5
    assert value(samples, "rtpengine_sessions", type="own") == 0


def test_direction_is_who_sent_the_packets() -> None:
    state, _ = _state(1)
    call = state.commands.calls["call-0"]
    caller = call.monologues["a"].medias[0].streams[0]
    callee = call.monologues["b"].medias[0].streams[0]
    assert direction_of(call, caller) == "caller_to_callee"
    assert direction_of(call, callee) == "callee_to_caller"


def test_traffic_ignores_negative_deltas() -> None:
    traffic = Traffic()
    traffic.add("userspace", "caller_to_callee", -3, -10, -1)
    assert traffic.total(traffic.packets, "userspace") == 0
    assert Counters().homer_sent == 0


def test_recording_figures() -> None:
    state, _ = _state(3)
    calls = list(state.commands.calls.values())
    calls[0].recording = CallRecording(names=("n",), pcap="p")
    calls[1].recording = CallRecording(names=("n",), pcap="p", paused=True)
    calls[2].recording = CallRecording(metadata="only metadata")  # not recording
    state.commands.recordings.started, state.commands.recordings.failures = 4, 1
    state.media.workers[0].copies_lost = 12
    samples = parse(render(collect(state, now=T0)))
    assert value(samples, "relayd_recordings", state="recording") == 1
    assert value(samples, "relayd_recordings", state="paused") == 1
    assert value(samples, "relayd_recordings_started_total") == 4
    assert value(samples, "relayd_recording_failures_total") == 1
    assert value(samples, "relayd_recording_copies_lost_total", worker="0") == 12


def test_transcoding_figures() -> None:
    state, _ = _state(1)
    reports = state.media.reports
    reports.codecs["192.0.2.1 30000"] = ("PCMU->opus", (50, 50, 0))
    reports.codecs["192.0.2.1 30002"] = ("opus->PCMU", (48, 48, 2))
    reports.codecs["192.0.2.1 30004"] = ("failed: no decoder for AMR", (0, 0, 0))
    totals = CodecTotals()
    totals.frames, totals.sent, totals.errors = 148, 140, 2
    reports.codec_totals["opus->PCMU"] = totals
    samples = parse(render(collect(state, now=T0)))
    assert value(samples, "relayd_transcoding_streams", codecs="PCMU->opus") == 1
    assert value(samples, "relayd_transcoding_streams", codecs="opus->PCMU") == 1
    assert value(samples, "relayd_transcoding_failed_streams") == 1
    assert value(samples, "relayd_transcoding_frames_total", codecs="opus->PCMU") == 148
    assert value(samples, "relayd_transcoding_packets_total", codecs="opus->PCMU") == 140
    assert value(samples, "relayd_transcoding_errors_total", codecs="opus->PCMU") == 2


def test_redis_figures() -> None:
    """Redis high availability's families, from relayctl ha's status; none without Redis."""
    state, _ = _state(1)
    assert not any(f.name.startswith("relayd_redis") for f in collect(state, now=T0))
    state.ha = {
        "redis_connected": True,
        "redis_writes": 12,
        "redis_deletes": 3,
        "redis_errors": 2,
        "redis_queued": 1,
        "watch_errors": 0,
        "foreign_calls": 50,
        "unclaimed_calls": 1,
        "takeovers": 4,
        "mode": "standby",
    }
    samples = parse(render(collect(state, now=T0)))
    assert value(samples, "relayd_redis_up") == 1
    assert value(samples, "relayd_redis_writes_total") == 12
    assert value(samples, "relayd_redis_deletes_total") == 3
    assert value(samples, "relayd_redis_errors_total") == 2
    assert value(samples, "relayd_redis_queued") == 1
    assert value(samples, "relayd_redis_watch_errors_total") == 0
    assert value(samples, "relayd_foreign_sessions") == 50
    assert value(samples, "relayd_foreign_unclaimed") == 1
    assert value(samples, "relayd_takeovers_total") == 4
    assert value(samples, "relayd_standby") == 1
