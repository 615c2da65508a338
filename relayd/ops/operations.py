"""The supervisor's operations side: counters, Homer capture, the admin socket, /metrics, reload.

Everything here hangs off one :class:`Supervisor` and runs on its event loop:
the media plane and the kernel path report traffic here, the ng service
reports each request and reply, and the listeners (admin socket, HTTP) are
started from here. The figures themselves are computed by the pure modules
(:mod:`relayd.ops.counters`, :mod:`relayd.ops.metrics`, :mod:`relayd.ops.admin`,
:mod:`relayd.rtcp`, :mod:`relayd.ops.hep`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relayd import ipc, log
from relayd.calls.commands import Limits
from relayd.calls.model import Stream, host_port
from relayd.config import Config, ConfigError, load
from relayd.ipc import parse_key
from relayd.ng.message import Request
from relayd.ops import admin, metrics
from relayd.ops.counters import direction_of
from relayd.ops.homer import HomerSender, ng_capture, rtcp_capture
from relayd.ops.httpd import serve_http
from relayd.rtcp import homer_json

if TYPE_CHECKING:
    from relayd.supervisor import Supervisor

__all__ = ["RELOADABLE", "Operations", "limits_of", "plan_reload"]

logger = log.get_logger("relayd")
rtcp_logger = log.get_logger(log.RTCP_LOGGER)

# what ``relayctl reload`` (and SIGHUP) can change in a running relayd
RELOADABLE = (
    "log_level",
    "timeout",
    "silent_timeout",
    "offer_timeout",
    "final_timeout",
    "delete_delay",
    "max_sessions",
)


def plan_reload(old: Config, fresh: Config) -> tuple[Config, dict[str, list[Any]], list[str]]:
    """The configuration to run with after a reload, what changed in it, and what changed
    in the file but needs a restart (those keep their running values). Pure."""
    applied: dict[str, list[Any]] = {}
    restart: list[str] = []
    for item in dataclasses.fields(Config):
        if item.name in ("values", "source"):
            continue
        before, after = getattr(old, item.name), getattr(fresh, item.name)
        if before == after:
            continue
        key = item.name.replace("_", "-")
        if item.name in RELOADABLE:
            applied[key] = [before, after]
        else:
            restart.append(key)
    running = dataclasses.replace(old, **{name: getattr(fresh, name) for name in RELOADABLE})
    return running, applied, restart


class Operations:
    def __init__(self, supervisor: Supervisor) -> None:
        self.sup = supervisor
        config = supervisor.config
        homer = config.homer
        self.homer = HomerSender(homer, supervisor.counters) if homer is not None else None
        self.capture_rtcp = bool(homer is not None and homer.rtcp)
        self.log_rtcp = bool(config.log_facility_rtcp)
        self.admin_path: Path | None = None

    @property
    def copies_rtcp(self) -> bool:
        """Workers copy RTCP to relayd (and separate RTCP streams stay out of the kernel)."""
        return self.capture_rtcp or self.log_rtcp

    # -- traffic ------------------------------------------------------------------------------

    def traffic(self, path: str, stream: Stream, packets: int, size: int, errors: int = 0) -> None:
        call = self.sup.commands.calls.get(stream.call_id)
        direction = direction_of(call, stream) if call is not None else "caller_to_callee"
        self.sup.counters.traffic.add(path, direction, packets, size, errors)

    def userspace_traffic(self, stream: Stream, packets: int, size: int, errors: int) -> None:
        self.traffic("userspace", stream, packets, size, errors)

    def tick(self) -> None:
        """Every second: worker rates sampled."""
        now = time.monotonic()
        rates = self.sup.counters.rates
        for worker in self.sup.media.workers:
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
        homer = self.sup.config.homer
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
        homer = self.sup.config.homer
        for packet in message.packets:
            stream = self.sup.media.reports.streams.get(packet.key)
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

    # -- listeners ----------------------------------------------------------------------------

    async def serve(self) -> list[Any]:
        """The admin socket and the HTTP listeners (``/metrics``, ``/ping``); their closers."""
        sup, cfg = self.sup, self.sup.config
        closers: list[Any] = []
        if cfg.admin_socket and cfg.admin_socket != "none":
            try:
                server = await admin.serve(
                    Path(cfg.admin_socket), lambda req: admin.handle(sup, req, time.time())
                )
            except OSError as exc:
                logger.error("admin.unavailable", socket=cfg.admin_socket, error=str(exc))
            else:
                if server is not None:
                    closers.append(server)
                    self.admin_path = Path(cfg.admin_socket)
        routes = {
            "/metrics": lambda: (metrics.CONTENT_TYPE, metrics.render(metrics.collect(sup))),
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

    # -- reload -------------------------------------------------------------------------------

    def reload(self) -> dict[str, Any]:
        """Read the configuration again; apply what can change at run time (``RELOADABLE``)."""
        sup = self.sup
        try:
            fresh = load(sup.argv)
        except ConfigError as exc:
            return {"result": "error", "error": f"configuration error: {exc}"}
        old = sup.config
        sup.config, applied, restart = plan_reload(old, fresh)
        sup.commands.limits = limits_of(fresh)
        sup.commands.reschedule()
        if fresh.log_level != old.log_level:
            log.set_level(fresh.log_level)
        logger.info("config.reloaded", source=fresh.source, applied=applied, restart=restart)
        return {"applied": applied, "restart": restart, "source": fresh.source}

    def reload_signal(self) -> None:
        result = self.reload()
        if result.get("result") == "error":
            logger.error("config.reload_failed", error=result.get("error"))


def limits_of(config: Config) -> Limits:
    """The call limits and timers a configuration sets (at start-up and on reload)."""
    return Limits(
        max_sessions=config.max_sessions,
        delete_delay=config.delete_delay,
        offer_timeout=config.offer_timeout,
        final_timeout=config.final_timeout,
        timeout=config.timeout,
        silent_timeout=config.silent_timeout,
    )
