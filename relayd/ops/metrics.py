"""``/metrics``: the Prometheus text exposition of a running relayd. Pure.

Figures rtpengine also exports keep rtpengine's names and labels (its
``statistics.c``, printed with the ``rtpengine_`` prefix by ``websocket.c``),
so dashboards built for rtpengine keep working; the rest is ``relayd_``. The
mapping is listed in docs/operations.md. Rates (offers per second, packets per
second) are left to Prometheus: everything cumulative is a counter.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from relayd import __version__
from relayd.ops.counters import DIRECTIONS, PATHS
from relayd.ops.views import RelayState, port_use, stream_paths, worker_load

__all__ = ["CONTENT_TYPE", "Family", "collect", "render"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Labels = tuple[tuple[str, str], ...]


@dataclass
class Family:
    """One metric: name, type (counter or gauge), help text, and its samples by labels."""

    name: str
    kind: str  # counter, gauge
    help: str
    samples: list[tuple[Labels, float]] = field(default_factory=list)

    def add(self, value: float, **labels: str) -> Family:
        self.samples.append((tuple(labels.items()), value))
        return self


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def render(families: Iterable[Family]) -> str:
    """The families in Prometheus' text exposition format 0.0.4 (``CONTENT_TYPE``): ``# HELP``,
    ``# TYPE``, then one line per sample, label values escaped."""
    lines = []
    for family in families:
        lines.append(f"# HELP {family.name} {family.help}")
        lines.append(f"# TYPE {family.name} {family.kind}")
        for labels, value in family.samples:
            text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
            lines.append(
                f"{family.name}{{{text}}} {_number(value)}"
                if text
                else f"{family.name} {_number(value)}"
            )
    return "\n".join(lines) + "\n"


def _rtpengine(state: RelayState, now: float) -> list[Family]:
    commands = state.commands
    totals = commands.totals
    traffic = state.counters.traffic
    ng = state.counters.ng
    calls = list(commands.calls.values())
    finished = totals.finished
    paths = stream_paths(calls)
    closed = Family("rtpengine_closed_sessions_total", "counter", "Closed sessions, by reason")
    for reason, value in (
        ("rejected", totals.rejected),
        ("timeout", totals.timeouts),
        ("silent_timeout", totals.silent_timeouts),
        ("final_timeout", totals.final_timeouts),
        ("offer_timeout", totals.offer_timeouts),
        ("terminated", totals.regular_terminated),
        ("force_terminated", totals.forced_terminated),
    ):
        closed.add(value, reason=reason)
    families = [
        Family("rtpengine_sessions", "gauge", "Current sessions")
        .add(len(calls), type="own")
        .add(0, type="foreign"),
        Family("rtpengine_sessions_total", "counter", "Total managed sessions").add(totals.managed),
        closed,
        Family("rtpengine_mediastreams", "gauge", "Current media streams, by forwarding path")
        .add(paths["userspace"], type="userspace")
        .add(paths["kernel"], type="kernel")
        .add(paths["mixed"], type="mixed"),
        Family("rtpengine_uptime_seconds", "gauge", "Uptime of relayd").add(
            int(now - commands.started)
        ),
        Family("rtpengine_call_duration_total", "counter", "Total calls duration").add(
            round(totals.call_duration, 6)
        ),
        Family("rtpengine_call_duration_avg", "gauge", "Average call duration").add(
            round(totals.call_duration / finished, 6) if finished else 0
        ),
    ]
    for name, counter, text in (
        ("rtpengine_packets_total", traffic.packets, "Total relayed packets"),
        ("rtpengine_bytes_total", traffic.bytes, "Total relayed bytes"),
        ("rtpengine_packet_errors_total", traffic.errors, "Total relayed packet errors"),
    ):
        family = Family(name, "counter", text)
        for path in PATHS:
            family.add(traffic.total(counter, path), type=path)
        families.append(family)
    requests = Family("rtpengine_requests_total", "counter", "ng requests, by proxy and command")
    seconds = Family("rtpengine_request_seconds_total", "counter", "ng request handling time")
    for (proxy, command), count in sorted(ng.requests.items()):
        requests.add(count, proxy=proxy, request=command)
        seconds.add(round(ng.seconds[(proxy, command)], 6), proxy=proxy, request=command)
    errors = Family("rtpengine_errors_total", "counter", "ng requests answered with an error")
    for proxy, count in sorted(ng.errors.items()):
        errors.add(count, proxy=proxy)
    families += [requests, seconds, errors]
    used = Family("rtpengine_ports_used", "gauge", "Media ports in use")
    free = Family("rtpengine_ports_free", "gauge", "Media ports free")
    total = Family("rtpengine_ports", "gauge", "Media ports")
    for use in port_use(commands):
        used.add(use.used, name=use.interface, address=use.address)
        free.add(use.free, name=use.interface, address=use.address)
        total.add(use.total, name=use.interface, address=use.address)
    return [*families, used, free, total]


def _load_limits(state: RelayState) -> list[Family]:
    """The limits on new calls as they run now (``relayctl set``, a reload), and the host's
    figures they compare as last sampled (relayd/calls/load.py; 0 while no limit is on)."""
    limits, load = state.commands.limits, state.commands.load
    return [
        Family("relayd_limit", "gauge", "Limits on new calls now (-1 or 0: none)")
        .add(limits.max_sessions, limit="max-sessions")
        .add(limits.max_load, limit="max-load")
        .add(limits.max_cpu, limit="max-cpu")
        .add(limits.max_bandwidth, limit="max-bandwidth"),
        Family("relayd_load", "gauge", "The host's figures the load limits compare, last sample")
        .add(load.load, measure="load")
        .add(round(load.cpu, 1), measure="cpu")
        .add(round(load.bandwidth), measure="bandwidth"),
    ]


def _relayd(state: RelayState) -> list[Family]:
    traffic = state.counters.traffic
    families = []
    for name, counter, text in (
        ("relayd_packets_total", traffic.packets, "Relayed packets, by path and direction"),
        ("relayd_bytes_total", traffic.bytes, "Relayed bytes (UDP payload), by path and direction"),
        ("relayd_packet_errors_total", traffic.errors, "Packet errors, by path and direction"),
    ):
        family = Family(name, "counter", text)
        for path in PATHS:
            for direction in DIRECTIONS:
                family.add(counter[(path, direction)], path=path, direction=direction)
        families.append(family)
    ng_errors = Family("relayd_ng_errors_total", "counter", "ng requests answered with an error")
    for command, count in sorted(state.counters.ng.command_errors.items()):
        ng_errors.add(count, request=command)
    families.append(ng_errors)
    cpu = Family("relayd_worker_cpu_seconds_total", "counter", "CPU time of each worker")
    packets = Family("relayd_worker_packets_total", "counter", "Packets each worker received")
    streams = Family("relayd_worker_streams", "gauge", "Media sockets held by each worker")
    up = Family("relayd_worker_up", "gauge", "1 while the worker is connected")
    restarts = Family("relayd_worker_restarts_total", "counter", "Worker restarts")
    queued = Family("relayd_worker_ipc_queued_bytes", "gauge", "IPC bytes not yet read")
    for worker in state.media.workers:
        load = worker_load(state.media, worker)
        labels = {"worker": str(load.index), "core": str(load.cpu)}
        cpu.add(round(load.cpu_seconds, 6), **labels)
        packets.add(load.packets, **labels)
        streams.add(load.streams, **labels)
        up.add(int(load.connected), **labels)
        restarts.add(load.restarts, **labels)
        queued.add(load.to_worker, worker=labels["worker"], direction="to_worker")
        queued.add(load.from_worker, worker=labels["worker"], direction="from_worker")
    families += [cpu, packets, streams, up, restarts, queued]
    kernel = state.kernel
    families.append(
        Family("relayd_kernel_enabled", "gauge", "1 while the kernel path forwards").add(
            int(kernel is not None and kernel.enabled)
        )
    )
    families.append(
        Family("relayd_kernel_forwards", "gauge", "Stream directions forwarded by nftables").add(
            sum(len(v) for v in kernel.installed.values()) if kernel is not None else 0
        )
    )
    families.append(
        Family("relayd_homer_packets_total", "counter", "HEP packets for Homer")
        .add(state.counters.homer_sent, result="sent")
        .add(state.counters.homer_dropped, result="dropped")
    )
    families += _load_limits(state)
    recordings = state.commands.recordings
    recording = paused = 0
    for call in state.commands.calls.values():
        if call.recording is not None and call.recording.active:
            if call.recording.paused:
                paused += 1
            else:
                recording += 1
    families.append(
        Family("relayd_recordings", "gauge", "Calls recorded now (docs/recording.md)")
        .add(recording, state="recording")
        .add(paused, state="paused")
    )
    families.append(
        Family("relayd_recordings_started_total", "counter", "Recordings started").add(
            recordings.started
        )
    )
    lost = Family(
        "relayd_recording_copies_lost_total",
        "counter",
        "Kernel copies of recorded packets a worker read too late (nflog): not in the pcap",
    )
    for worker in state.media.workers:
        lost.add(worker.copies_lost, worker=str(worker.index))
    families.append(lost)
    families.append(
        Family(
            "relayd_recording_failures_total",
            "counter",
            "Recordings that stopped on their own (disk full, spool unwritable, no spool)",
        ).add(recordings.failures)
    )
    families += _transcoding(state)
    families.append(
        Family("relayd_build_info", "gauge", "relayd version").add(1, version=__version__)
    )
    return families


def _transcoding(state: RelayState) -> list[Family]:
    """The workers' codec engines (docs/transcoding.md), by codec pair ("PCMU->PCMA")."""
    reports = state.media.reports
    active, failed = reports.transcoding()
    streams = Family(
        "relayd_transcoding_streams", "gauge", "Stream directions transcoded now, by codecs"
    )
    for codecs, count in sorted(active.items()):
        streams.add(count, codecs=codecs)
    frames = Family("relayd_transcoding_frames_total", "counter", "Payloads decoded, by codecs")
    sent = Family("relayd_transcoding_packets_total", "counter", "Packets encoded, by codecs")
    errors = Family(
        "relayd_transcoding_errors_total",
        "counter",
        "Packets that did not parse, decode or encode, by codecs",
    )
    for codecs, totals in sorted(reports.codec_totals.items()):
        frames.add(totals.frames, codecs=codecs)
        sent.add(totals.sent, codecs=codecs)
        errors.add(totals.errors, codecs=codecs)
    failures = Family(
        "relayd_transcoding_failed_streams",
        "gauge",
        "Stream directions whose codec plan a worker could not open (their media is dropped)",
    ).add(failed)
    return [streams, frames, sent, errors, failures]


# Redis high availability's families: name, type, help, and the key of relayctl ha's status
_REDIS = (
    ("relayd_redis_writes_total", "counter", "Calls written to Redis", "redis_writes"),
    ("relayd_redis_deletes_total", "counter", "Calls deleted from Redis", "redis_deletes"),
    (
        "relayd_redis_errors_total",
        "counter",
        "Writes to Redis that failed (retried)",
        "redis_errors",
    ),
    ("relayd_redis_queued", "gauge", "Calls waiting to be written to Redis", "redis_queued"),
    ("relayd_redis_watch_errors_total", "counter", "Lost keyspace subscriptions", "watch_errors"),
    ("relayd_foreign_sessions", "gauge", "A peer's calls held (standby)", "foreign_calls"),
    (
        "relayd_foreign_unclaimed",
        "gauge",
        "A peer's calls whose ports would not bind here (tried again every second)",
        "unclaimed_calls",
    ),
    ("relayd_takeovers_total", "counter", "Foreign calls taken over", "takeovers"),
)


def _redis(state: RelayState) -> list[Family]:
    """Redis high availability (relayd/ha/): the writer's counters, the calls held."""
    status = state.ha_status()
    if status is None:
        return []
    up = 1 if status["redis_connected"] else 0
    standby = 1 if status["mode"] == "standby" else 0
    return [
        Family("relayd_redis_up", "gauge", "1 while the last write to Redis succeeded").add(up),
        *(Family(name, kind, text).add(status[key]) for name, kind, text, key in _REDIS),
        Family("relayd_standby", "gauge", "1 while relayctl standby holds takeovers off").add(
            standby
        ),
    ]


def collect(state: RelayState, now: float) -> list[Family]:
    return _rtpengine(state, now) + _relayd(state) + _redis(state)
