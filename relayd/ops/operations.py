"""The supervisor's operations side: traffic counters, Homer capture, the admin socket, /metrics.

Runs on the supervisor's event loop and sees the supervisor only as a
:class:`relayd.ops.views.RelayState` (the call registry, the media plane, the
kernel path, the counters): the media plane and the kernel path report traffic
here, the ng service reports each request and reply, and the listeners (admin
socket, HTTP) are started from here. The figures themselves are computed by
the pure modules (:mod:`relayd.ops.counters`, :mod:`relayd.ops.metrics`,
:mod:`relayd.ops.admin`, :mod:`relayd.rtcp`, :mod:`relayd.ops.hep`).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

from relayd import ipc, log
from relayd.calls.model import Stream, host_port
from relayd.config import Config
from relayd.ipc import parse_key
from relayd.ng.message import Request
from relayd.ops import admin, metrics
from relayd.ops.counters import TrafficPath, direction_of
from relayd.ops.dtmflog import DtmfLog, dtmf_report
from relayd.ops.homer import HomerSender, ng_capture, rtcp_capture
from relayd.ops.httpd import Routes, serve_http
from relayd.ops.views import RelayState
from relayd.rtcp import homer_json

__all__ = ["Operations", "copies_rtcp", "metrics_page", "metrics_text"]

logger = log.get_logger("relayd")
rtcp_logger = log.get_logger(log.RTCP_LOGGER)


def copies_rtcp(config: Config) -> bool:
    """Workers copy RTCP to relayd (Homer, the RTCP log), so separate RTCP streams stay
    out of the kernel."""
    return bool(config.homer is not None and config.homer.rtcp) or bool(config.log_facility_rtcp)


class Operations:
    """The supervisor's operations side: traffic counters, Homer capture, the RTCP log, and the
    admin and HTTP listeners. ``config`` is the start-up one: a reload changes nothing here."""

    def __init__(self, config: Config, state: RelayState) -> None:
        self.config = config  # as at start-up: nothing read here changes on reload
        self.state = state
        homer = config.homer
        self.homer = HomerSender(homer, state.counters) if homer is not None else None
        self.log_rtcp = bool(config.log_facility_rtcp)
        self.dtmf_log = DtmfLog(config)
        self.admin_path: Path | None = None

    # -- traffic ------------------------------------------------------------------------------

    def traffic(
        self, path: TrafficPath, stream: Stream, packets: int, size: int, errors: int = 0
    ) -> None:
        call = self.state.commands.calls.get(stream.call_id)
        direction = direction_of(call, stream) if call is not None else "caller_to_callee"
        self.state.counters.traffic.add(path, direction, packets, size, errors)

    def userspace_traffic(self, stream: Stream, packets: int, size: int, errors: int) -> None:
        self.traffic("userspace", stream, packets, size, errors)

    def tick(self) -> None:
        """Every second: worker rates sampled."""
        now = time.monotonic()
        rates = self.state.counters.rates
        for worker in self.state.media.workers:
            rates.sample(f"worker:{worker.index}:packets", worker.packets, now)
            rates.sample(f"worker:{worker.index}:cpu", worker.cpu_seconds, now)

    def pump(self) -> None:
        if self.homer is not None:
            self.homer.pump()

    # -- Homer and the RTCP log ---------------------------------------------------------------

    def ng_observed(
        self,
        request: bytes,
        reply: bytes,
        source: tuple[Any, ...],
        local: tuple[Any, ...],
        req: Request,
    ) -> None:
        """ng capture for Homer: the request and its reply, as rtpengine sends them."""
        homer = self.config.homer
        if self.homer is None or homer is None or not homer.ng or req.command == "ping":
            return
        here = (str(local[0]), int(local[1])) if len(local) >= 2 else ("0.0.0.0", 0)
        there = (str(source[0]), int(source[1]))
        if ":" in here[0] and ":" not in there[0]:
            here = (here[0].removeprefix("::ffff:"), here[1])
        now = time.time()
        for data, src, dst in ((request, there, here), (reply, here, there)):
            try:
                packet = ng_capture(homer, data, req.call_id, src, dst, now)
            except ValueError as exc:
                logger.debug("homer.skipped", call_id=req.call_id or None, reason=str(exc))
                return
            self.homer.send(packet)

    def rtcp_copied(self, message: ipc.Rtcp) -> None:
        """RTCP the workers relayed: to Homer as rtpengine's JSON, and to the RTCP log."""
        offset = time.time() - message.now
        homer = self.config.homer
        for packet in message.packets:
            stream = self.state.media.reports.streams.get(packet.key)
            if stream is None:
                continue
            call_id = stream.call_id
            source, local = parse_key(packet.source), parse_key(packet.key)
            try:
                text = homer_json(bytes.fromhex(packet.data))
            except ValueError:
                continue
            if text is None or source is None or local is None:
                continue
            if self.log_rtcp:
                rtcp_logger.info("rtcp.packet", call_id=call_id, source=packet.source, json=text)
            if self.homer is None or homer is None or not homer.rtcp:
                continue
            try:
                capture = rtcp_capture(homer, text, call_id, source, local, packet.at + offset)
            except ValueError:
                continue
            self.homer.send(capture)

    def dtmf_reported(self, message: ipc.Dtmf) -> None:
        """A DTMF digit a worker saw end: to the DTMF event log (relayd/ops/dtmflog.py)."""
        state = self.state
        report = dtmf_report(
            message, state.media.reports.streams, state.commands.calls, time.time()
        )
        if report is not None:
            self.dtmf_log.write(report)

    # -- listeners ----------------------------------------------------------------------------

    async def serve(self) -> list[Any]:
        """The admin socket and the HTTP listeners (``/metrics``, ``/ping``); their closers."""
        state, cfg = self.state, self.config
        closers: list[Any] = []
        if cfg.admin_socket and cfg.admin_socket != "none":
            try:
                server = await admin.serve(
                    Path(cfg.admin_socket), lambda req: admin.respond(state, req)
                )
            except OSError as exc:
                logger.error("admin.unavailable", socket=cfg.admin_socket, error=str(exc))
            else:
                if server is not None:
                    closers.append(server)
                    self.admin_path = Path(cfg.admin_socket)
        routes: Routes = {
            "/metrics": lambda: metrics_page(state),
            "/ping": lambda: ("text/plain", "pong"),
        }
        endpoints = list(dict.fromkeys(cfg.listen_http))
        if cfg.prometheus_listen is not None and cfg.prometheus_listen not in endpoints:
            endpoints.append(cfg.prometheus_listen)
        prometheus = cfg.values.get("prometheus", False)
        if prometheus and not endpoints:
            reason = "prometheus = yes without prometheus-listen or listen-http"
            logger.warning("metrics.not_served", reason=reason)
        if "prometheus-listen" in cfg.values and not prometheus:
            reason = "prometheus-listen without prometheus = yes"
            logger.warning("metrics.not_served", reason=reason)
        for host, port in endpoints:
            closers.append(await serve_http(routes, host, port))
            logger.info("http.listening", address=host_port((host, port)), paths=sorted(routes))
        return closers

    def close(self) -> None:
        if self.admin_path is not None:
            with contextlib.suppress(OSError):
                self.admin_path.unlink()
        if self.homer is not None:
            self.homer.close()
        self.dtmf_log.close()


async def metrics_page(state: RelayState) -> tuple[str, str]:
    """``/metrics``: the kernel counters read (ng goes on meanwhile), then the text."""
    try:
        await state.refresh_counters()
    except Exception:
        logger.exception("metrics.counters_failed")
    return metrics.CONTENT_TYPE, metrics_text(state)


def metrics_text(state: RelayState) -> str:
    """``/metrics`` as Prometheus text, from the counters as they are (a shard's, for the
    front to merge, after :func:`metrics_page`'s read)."""
    return metrics.render(metrics.collect(state, time.time()))
