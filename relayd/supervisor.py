"""relayd's supervisor: ng listeners, call registry, timers, workers and kernel path.

It owns all call state and never touches a media packet (start-up, from the
configuration to this loop, is :mod:`relayd.daemon`). The pure pieces
(:mod:`relayd.calls.commands`, :mod:`relayd.calls.signalling`, :mod:`relayd.sdp`) do the
work; this module wires them to sockets, signals and the clock. Operations
hang off it too: the admin socket (:mod:`relayd.ops.admin`), ``/metrics``
(:mod:`relayd.ops.metrics`, :mod:`relayd.ops.httpd`) and Homer (:mod:`relayd.ops.homer`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Awaitable, Sequence
from typing import Any, Protocol

from relayd import ipc, log
from relayd.calls.commands import Commands, Teardown
from relayd.calls.interfaces import Interfaces
from relayd.calls.journal import Journal, instance_name, journal_place
from relayd.calls.model import Call, Stream, host_port
from relayd.calls.ports import PortAllocator
from relayd.calls.signalling import Signalling
from relayd.calls.timers import Limits
from relayd.certificate import HASHES, Certificate
from relayd.config import Config, ConfigError, load, reloaded
from relayd.ha.replica import RedisReplica
from relayd.ha.settings import redis_settings
from relayd.ng.message import Request
from relayd.ng.server import NgService, serve_tcp, serve_udp
from relayd.ops.counters import Counters
from relayd.ops.dtmflog import reports_dtmf
from relayd.ops.loadmeter import LoadMeter, measures
from relayd.ops.operations import Operations, copies_rtcp
from relayd.ops.runtime import with_setting
from relayd.plane.ephemeral import ephemeral_overlap
from relayd.plane.forwarding import after_signalling
from relayd.plane.handover import KernelHandover
from relayd.plane.kernel import KernelPath
from relayd.plane.media import MediaPlane
from relayd.plane.offload import events_payload_type, mark_kernelized
from relayd.plane.playback import PlaybackControl
from relayd.plane.sockets import SocketBinder, worker_budget
from relayd.plane.sweep import ConntrackSweep
from relayd.plane.updates import WorkerUpdates
from relayd.plane.workerpool import WorkerSettings
from relayd.recording.control import (
    RecordingControl,
    nflog_base,
    records_now,
    spool_settings,
)
from relayd.shards.route import port_slice

__all__ = ["ShardLink", "Supervisor"]

logger = log.get_logger("relayd")
WARN_EVERY = 60.0  # seconds between two warnings of a worker's full descriptor budget

_TICK = 0.25  # seconds between timer runs
_TICKS_PER_SECOND = 4
_REAP_BATCH = 128  # due calls judged between two looks at the ng sockets
_RECORDING_COMMANDS = frozenset(
    ("start recording", "stop recording", "pause recording", "start forwarding", "stop forwarding")
)
INJECT_TIMEOUT = 2.0
"""Seconds ``play DTMF`` waits for the call's worker to queue its digit."""

_MEDIA_COMMANDS = frozenset(("block media", "unblock media", "silence media", "unsilence media"))
_MEDIA_COMMANDS |= {"block DTMF", "unblock DTMF"}  # a blocked party's DTMF: the workers


class ShardLink(Protocol):
    """Where a shard's requests come from (``shards`` > 1, relayd.shards.shard): its share
    of the ng UDP address, the other shards, and the front over a link."""

    index: int
    count: int

    def open(self, service: NgService, state: Supervisor) -> Any:
        """Serve the link; returns what closes it."""
        ...


class Supervisor:
    """relayd's main process: the call registry and what is wired around it (ng, workers,
    kernel path, journal, timers, operations). It never touches a media packet."""

    def __init__(
        self,
        config: Config,
        interfaces: Interfaces,
        certificate: Certificate,
        *,
        ready_fd: int | None = None,
        argv: Sequence[str] = (),
        shard: ShardLink | None = None,
    ) -> None:
        self.config = config
        self.shard = shard
        index, count = (shard.index, shard.count) if shard is not None else (0, 1)
        # a shard's calls take their ports from its own slice of the range
        port_min, port_max = port_slice(config.port_min, config.port_max, index, count)
        self.argv = list(argv)  # the command line, read again by reload()
        self.ready_fd = ready_fd
        self.counters = Counters()
        # the call registry: Commands adds and removes calls, the rest only read it
        self.calls: dict[str, Call] = {}
        # reads the registry, media plane and counters as a RelayState, when they are used
        self.ops = Operations(config, self)
        self.rtcp_copied = copies_rtcp(config)
        workers = config.num_threads or len(os.sched_getaffinity(0))
        # a port pair given back takes its conntrack entries with it (plane/sweep.py)
        self.sweep: ConntrackSweep  # made once the media plane's streams exist
        binder = SocketBinder(on_release=lambda address, port: self.sweep.released(address, port))
        spool = spool_settings(config)
        # recorded calls may stay in the kernel, which copies their packets to the workers
        copies_from = nflog_base(config, spool, index, events=reports_dtmf(config))
        self.media = MediaPlane(
            binder,
            self.calls,
            workers=workers,
            settings=WorkerSettings(
                config.tos,
                config.log_level,
                config.log_format,
                certificate.pem,
                certificate.key_pem,
                rtcp_capture=self.rtcp_copied,
                recording_dir=spool.directory if spool is not None else "",
                recording_format=spool.format if spool is not None else "raw",
                recording_file_mode=config.recording_file_mode,
                nflog_base=copies_from,
                dtmf_events=reports_dtmf(config),
            ),
            learning=config.endpoint_learning,
            silence_detect=config.silence_detect,
            on_stats=self._stats_reported,
            on_traffic=self.ops.userspace_traffic,
            on_rtcp=self.ops.rtcp_copied,
            on_dtmf=self.ops.dtmf_reported,
        )
        self.sweep = ConntrackSweep(self.media.reports.streams)
        self.recording = RecordingControl(spool, self.media, self.calls)
        self.playback = PlaybackControl(self.media, self.calls, self._to_workers, self._play_ended)
        # a worker holds one descriptor per port of its slice: as many as its limit allows
        budget = worker_budget()
        self._budget_warned: dict[int, float] = {}
        ports = PortAllocator(
            port_min, port_max, workers, binder, budget=budget, on_full=self._worker_full
        )
        logger.info(
            "ports.budget",
            workers=workers,
            sockets_per_worker=budget,
            calls=budget * workers // 4 if budget is not None else None,
        )
        overlap = ephemeral_overlap(port_min, port_max)
        if overlap is not None:
            logger.warning(
                "ports.ephemeral_overlap",
                ports=overlap.ports,
                ephemeral=f"{overlap.low}-{overlap.high}",
                hint=f"net.ipv4.ip_local_reserved_ports = {config.port_min}-{config.port_max} "
                "keeps other sockets' source ports out of the media range (restored and "
                "foreign calls cannot move off a port they find taken)",
            )
        self.signalling = signalling_of(config, interfaces, ports, certificate)
        self.commands = Commands(
            self.signalling,
            limits_of(config, count),
            started=time.time(),
            calls=self.calls,
            place=self.media.least_loaded,
            on_teardown=self._teardown,
            refresh=self._refresh_due,
            recordings=self.recording.recordings,
            playbacks=self.playback.playbacks,
        )
        # the kernel forwards to relay sockets: at most one counter element for each
        local = {address.local for address in interfaces.all}
        capacity = (config.port_max - config.port_min + 1) * max(len(local), 1)
        owned = (port_min, port_max) if count > 1 else None  # the others' forwards: theirs
        self.kernel = (
            KernelPath(config.table, config.tos, capacity, owned) if config.table >= 0 else None
        )
        # the load limits' figures; the kernel's bytes from its table's own counters, which
        # count the host's forwards: with shards (one table) each takes its share, as of
        # max-bandwidth
        kernel = self.kernel
        self.loadmeter = LoadMeter(
            self.counters.traffic,
            kernel_bytes=(lambda: _share(kernel.forwarded_bytes(), count)) if kernel else None,
        )
        if measures(self.commands.limits):  # the load average counts from the first offer on
            self.commands.load = self.loadmeter.sample(time.monotonic())
        place = journal_place(
            config.state_dir, instance_name(config.listen_ng, config.listen_tcp_ng)
        )
        directory = place.directory
        if directory is not None and count > 1:
            directory = directory / f"shard{index}"  # each shard journals its own calls
        self.journal = Journal(directory, place.name) if directory else None
        if self.journal is not None:
            logger.info("state.journal", path=str(self.journal.path))
        else:
            logger.info("state.no_journal", reason=place.why)
        self.handover = KernelHandover(
            self.kernel,
            self.media,
            self._journal_save,
            self._kernel_traffic,
            rtcp_copied=self.rtcp_copied,
            record_group=lambda call: (
                copies_from + call.worker if copies_from >= 0 and records_now(call) else None
            ),
            copies=copies_from >= 0,
            dtmf_events=reports_dtmf(config),
            events_group=lambda call: (
                (copies_from + call.worker, pt)
                if copies_from >= 0 and (pt := events_payload_type(call)) is not None
                else None
            ),
        )
        self.updates = WorkerUpdates(self.calls, self.media.sync)
        # call state in Redis, and a peer's calls held for takeover (relayd/ha/)
        redis = redis_settings(config.values, os.environ)
        self.ha = (
            RedisReplica(
                redis,
                self,
                owner=host_port(config.listen_ng or config.listen_tcp_ng or ("", 0)),
                addresses=local,
            )
            if redis is not None
            else None
        )
        self._stop = asyncio.Event()
        self._closers: list[Any] = []

    def dispatch(
        self, req: Request, source: tuple[Any, ...]
    ) -> dict[str, Any] | Awaitable[dict[str, Any]]:
        """Handle one ng request (the ng service's dispatch) in the call's log context.

        After an offer or answer, or a delete that ended only a branch, the workers' updates are
        scheduled (they go out after the reply); a call the request found or made is
        journalled. Never raises: an unexpected exception is logged and answered "Internal
        error"; every request is counted by source. ``statistics`` with calls in the kernel
        answers once every kernel counter is read (the read lets other requests through);
        everything else answers at once.
        """
        if req.command == "statistics" and self.handover.in_kernel:
            return self._after_counters(req, source)
        if req.command == "play DTMF":
            return self._play_dtmf(req, source)
        return self._handle(req, source)

    async def _play_dtmf(self, req: Request, source: tuple[Any, ...]) -> dict[str, Any]:
        """``play DTMF`` answers once the call's worker has queued the digit, or said why not
        (rtpengine's "No SSRC context present for DTMF injection")."""
        reply = self._handle(req, source)
        pending, self.commands.injections = self.commands.injections, []
        if reply.get("result") != "ok":
            return reply
        for call, message in pending:
            if not message.keys:  # nobody signalled with inject DTMF: "ok", nothing injected
                logger.info("dtmf.inject_unset", call_id=call.call_id)
                continue
            future = self.media.inject_dtmf(call.worker, message)
            try:
                error = await asyncio.wait_for(future, INJECT_TIMEOUT)
            except TimeoutError:
                self.media.forget_injection(future)
                logger.error("dtmf.inject_timeout", call_id=call.call_id, worker=call.worker)
                error = "Internal error"
            if error:
                logger.info("dtmf.inject_failed", call_id=call.call_id, reason=error)
                self.commands.totals.errors += 1
                return {"result": "error", "error-reason": error}
        return reply

    async def _after_counters(self, req: Request, source: tuple[Any, ...]) -> dict[str, Any]:
        try:
            await self.handover.refresh_all()
        except Exception:
            logger.exception("kernel.read_failed")
        return self._handle(req, source)

    def _handle(self, req: Request, source: tuple[Any, ...]) -> dict[str, Any]:
        started = time.perf_counter()
        known = self.calls.get(req.call_id) if req.call_id else None
        token = log.bind_call(
            req.call_id or None,
            req.from_tag or None,
            known.worker if known is not None else None,
        )
        try:
            try:
                reply = self._dispatch(req, source, known)
            except Exception:
                # logged here, inside the call's context: the ng shell would log it without
                logger.exception("ng.internal_error", command=req.command)
                reply = {"result": "error", "error-reason": "Internal error"}
            self.recording.flush()  # what the request started or stopped, to the workers
            self.playback.flush()
            ok = reply.get("result") in ("ok", "pong")
            self.counters.ng.record(str(source[0]), req.command, ok, time.perf_counter() - started)
            return reply
        finally:
            log.unbind_call(token)

    def _dispatch(
        self, req: Request, source: tuple[Any, ...], known: Call | None
    ) -> dict[str, Any]:
        if req.unknown:
            logger.warning("ng.unknown_keys", command=req.command, keys=req.unknown)
        if self.ha is not None and (held := self.ha.intercept(req)) is not None:
            return held  # a foreign call's query or delete
        if req.command in ("query", "delete") and known is not None:
            self.handover.refresh([known])  # the reply's counters as the kernel has them now
        reply = self.commands.handle(req, time.time())
        if self.ha is not None and req.command == "list":
            reply = self.ha.listed(req, reply)
        result = reply.get("result")
        call = self.calls.get(req.call_id) if req.call_id else None
        if call is not None and known is None:
            # undone with the request's own binding
            log.bind_call(req.call_id, req.from_tag or None, call.worker)
        if call is not None and result == "ok" and req.command in ("offer", "answer"):
            # signalling takes the call back to userspace until it is confirmed again
            self.handover.unoffload(call)
            self.media.signalled(call, req.endpoint_learning)
            pending = self.updates.early_pending(call)
            handover = after_signalling(call, req.command, req.to_tag, early_pending=pending)
            self.media.drop_early(call, keep=handover.keep)
            if handover.at_once:
                self.updates.now(call)
            elif handover.early:
                self.updates.early(call)
            else:
                self.updates.soon(call)
        elif call is not None and result == "ok" and req.command in _RECORDING_COMMANDS:
            # a recorded call's media goes through its worker, which writes the pcap
            self.handover.offload(call)
        elif call is not None and result == "ok" and req.command in _MEDIA_COMMANDS:
            # blocked or silenced media leaves the kernel for the workers, which drop or
            # silence it from now on (and it comes back once nothing is left to do)
            self.handover.offload(call)
            self.updates.now(call)
        elif call is not None and req.command == "delete" and call.deleted_at is None:
            # a branch deleted, the call kept (Commands.delete): the workers and the kernel
            # let the branch's sockets go, the rest is planned anew
            self.handover.unoffload(call)
            self.updates.soon(call)
        if call is not None:
            self._journal_save(call)
        if logger.enabled(logging.INFO):
            logger.info(
                "ng.request" if result in ("ok", "pong") else "ng.failed",
                command=req.command,
                source=f"{source[0]}:{source[1]}",
                result=result,
                reason=reply.get("error-reason"),
            )
        return reply

    def _to_workers(self, call: Call) -> None:
        """A call whose worker must act on it now (a play starts): out of the kernel path
        where a party plays (relayd/plane/offload.py), its forward sent at once."""
        self.handover.offload(call)
        self.updates.now(call)

    def _play_ended(self, call: Call) -> None:
        """A party's play ended: the call may go back to the kernel path."""
        self.handover.offload(call)

    def _teardown(self, teardown: Teardown) -> None:
        call = teardown.call
        # also when a timer or relayctl ends the call: its lines carry its call-id
        self.updates.forget(call)
        token = log.bind_call(call.call_id, worker=call.worker)
        try:
            self.recording.flush()  # the call's recording finished, before its sockets go
            self.handover.forget(call)
            self.media.drop(call)
            if self.journal is not None:
                self.journal.forget(call.call_id)
            if self.ha is not None:
                self.ha.forget(call.call_id)
            if logger.enabled(logging.INFO):
                packets = sum(
                    s.stats.packets for p in call.parties() for m in p.medias for s in m.streams
                )
                logger.info(
                    "call.teardown",
                    call_id=call.call_id,
                    reason=teardown.reason.value,  # the text, not the enum's repr
                    duration=round(time.time() - call.created, 3),
                    packets=packets,
                )
        finally:
            log.unbind_call(token)

    async def run(self) -> None:
        """Run relayd until SIGTERM or SIGINT (SIGHUP reloads).

        Takes the journal's calls back, starts the workers and the kernel path, opens the
        listeners, tells the daemon's parent it is ready, and runs the timers. On the way out the
        workers stop, the journal is flushed, and the kernel forwards stay: their media flows on.
        """
        restored = self._restore()
        index, count = (self.shard.index, self.shard.count) if self.shard is not None else (0, 1)
        self.recording.close_leftovers(restored, index, count)
        self.media.start(self.config.worker_socket)
        self.recording.resume(restored)  # before their forwards: those tap the sockets
        if self.kernel is not None:
            self.kernel.start()
        self.handover.adopt(restored)
        self.playback.end_plays(restored)  # their players went with the old workers
        for call in restored:
            self.media.sync(call)
        observe = self.ops.ng_observed if self.ops.homer is not None else None
        service = NgService(self.dispatch, observe=observe)
        if self.shard is not None:
            # a shard: the front owns TCP ng, the admin socket and /metrics
            self._closers.append(self.shard.open(service, self))
        else:
            await self._listen(service)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload_signal)
        reaper = asyncio.ensure_future(self._reap())
        if self.ha is not None:
            self.ha.start(loop)
            for call in restored:
                self.ha.save(call)  # written again: Redis may have lost them meanwhile
        if self.ready_fd is not None:
            os.write(self.ready_fd, b"1")
            os.close(self.ready_fd)
        await self._stop.wait()
        reaper.cancel()
        self.updates.cancel()  # workers are told to stop: nothing more for them
        if self.journal is None:
            # no journal takes the calls back: their recordings are finished now
            self.recording.finish_all(self.calls.values())
        for closer in self._closers:
            closer.close()
        self.ops.close()
        await self.media.stop()
        self.playback.close()
        self.sweep.close()
        if self.ha is not None:
            self.ha.close()
        if self.kernel is not None:
            self.kernel.close()  # kernel forwards stay: their media flows on until we return
        if self.journal is not None:
            self.journal.close()
        logger.info("relayd.stopped", calls=len(self.calls))

    async def _listen(self, service: NgService) -> None:
        """The admin socket, /metrics, and the ng listeners."""
        cfg = self.config
        # UDP last: once ng answers a ping over UDP every other listener is up (the loop
        # serves the UDP socket while a later listener is still being opened)
        self._closers += await self.ops.serve()
        if cfg.listen_tcp_ng:
            notified = self.ops.dtmf_log.ng_clients if cfg.dtmf_log_ng_tcp else None
            server = await serve_tcp(service, *cfg.listen_tcp_ng, notified)
            self._closers.append(server)
            logger.info("ng.listening", transport="tcp", address=host_port(cfg.listen_tcp_ng))
        if cfg.listen_ng:
            transport = await serve_udp(service, *cfg.listen_ng)
            self._closers.append(transport)
            logger.info("ng.listening", transport="udp", address=host_port(cfg.listen_ng))

    async def _reap(self) -> None:
        # Every 250 ms: calls whose deadline came (only those: Commands.reap, in batches
        # with the loop free for ng in between), the journal, conntrack settling, Homer;
        # every second the worker rates and, after an nftables failure, a retry. Nothing
        # here costs more with more calls: what no timer is due for is not looked at.
        tick = 0
        while True:
            await asyncio.sleep(_TICK)
            tick += 1
            try:
                await self._reap_due()
                if self.journal is not None:
                    self.journal.flush()
                if self.ha is not None:
                    self.ha.flush()
                self.handover.settle(time.monotonic())
                self.ops.pump()
                if tick % _TICKS_PER_SECOND == 0:
                    self.handover.tick()
                    self.ops.tick()
                    if measures(self.commands.limits):
                        self.commands.load = self.loadmeter.sample(time.monotonic())
            except Exception:
                logger.exception("timer.failed")

    async def _reap_due(self) -> None:
        """The calls whose deadlines came, _REAP_BATCH at a time (each batch's kernel
        counters read in one netlink exchange), ng requests served between batches."""
        now = time.time()
        self.commands.reap(now, _REAP_BATCH)
        while self.commands.timers.pending(now):
            await asyncio.sleep(0)
            self.commands.reap(now, _REAP_BATCH)

    def _refresh_due(self, calls: list[Call], now: float) -> None:
        self.handover.refresh(calls, now)

    async def refresh_counters(self, call_id: str | None = None) -> None:
        """What the kernel forwarded, folded into the streams: for one call (at once), or
        all of them (``relayctl``, ``/metrics``: read as ng goes on)."""
        if call_id is None:
            await self.handover.refresh_all()
        elif (call := self.calls.get(call_id)) is not None:
            self.handover.refresh([call])

    # -- restart ------------------------------------------------------------------------------

    def _restore(self) -> list[Call]:
        """Take back the journal's calls (with Redis: those of this instance's database, the
        journal only when Redis cannot be read): their ports, sockets and state."""
        saved = self.ha.restore() if self.ha is not None else None
        if saved is None and self.journal is not None:
            saved = self.journal.load()
        elif saved is not None and self.journal is not None:
            # Redis says which calls are ours: one a peer took over is not taken back
            ours = {call.call_id for call in saved}
            for call in self.journal.load():
                if call.call_id not in ours:
                    self.journal.forget(call.call_id)
        restored = []
        for call in saved or []:
            if self._claim(call):
                self.calls[call.call_id] = call
                self.commands.schedule(call)
                restored.append(call)
            else:
                logger.warning(
                    "state.call_dropped",
                    call_id=call.call_id,
                    reason="its ports or addresses are no longer available",
                )
                self._journal_forget(call.call_id)
        if restored:
            logger.info("state.restored", calls=len(restored))
        return restored

    def _journal_forget(self, call_id: str) -> None:
        if self.journal is not None:
            self.journal.forget(call_id)
        if self.ha is not None:
            self.ha.forget(call_id)

    # -- high availability (relayd/ha/replica.py's Host) ------------------------------------

    def claim(self, call: Call) -> bool:
        """A foreign call's ports reserved and bound (nothing forwarded)."""
        return self._claim(call)

    def release(self, call: Call) -> None:
        """A foreign call's ports given back, with its peers' conntrack flows (those of a
        previous life of this host, when it carried the call)."""
        for media in call.all_medias():
            for stream in media.streams:
                self.sweep.unreported(stream)
        self.signalling.release_call(call)

    def own(self, call: Call) -> None:
        """A foreign call taken over: registered and timed as an own call, its confirmed plain
        streams into the kernel, the rest to its worker, at once."""
        self.calls[call.call_id] = call
        self.commands.schedule(call)
        mark_kernelized(call, set())  # as the kernel here has it: nothing yet
        self.handover.offload(call)
        self.media.sync(call)
        self._journal_save(call)

    def disown(self, call: Call) -> None:
        """An own call left to the peer (``relayctl standby``): its media stops here, its ports
        are given back; it counts as no ended call."""
        self.calls.pop(call.call_id, None)
        self.commands.timers.forget(call)
        self.updates.forget(call)
        self.handover.forget(call)
        self.media.drop(call)
        self.signalling.release_call(call)
        if self.journal is not None:
            self.journal.forget(call.call_id)

    def switch(self, mode: str) -> dict[str, Any]:
        """``relayctl active`` / ``standby``."""
        if self.ha is None:
            return {"result": "error", "error": "no 'redis' configured: nothing to switch"}
        if mode == "active":
            taken = self.ha.activate()
            return {"mode": "active", "taken_over": taken}
        return {"mode": "standby", "released": self.ha.go_standby()}

    def ha_status(self) -> dict[str, Any] | None:
        return self.ha.status() if self.ha is not None else None

    def _claim(self, call: Call) -> bool:
        pairs = [(m.local.local, m.port) for m in call.all_medias() if m.port and m.local]
        worker = self.signalling.ports.claim(pairs)
        if worker is None:
            return False
        if pairs:
            call.worker = worker
        return True

    # -- ports ------------------------------------------------------------------------------

    def _worker_full(self, worker: int) -> None:
        """A pair refused because ``worker`` holds as many sockets as its descriptor limit
        allows: said at most once a minute per worker (each refusal is "Ran out of ports")."""
        now = time.monotonic()
        if now - self._budget_warned.get(worker, -WARN_EVERY) >= WARN_EVERY:
            self._budget_warned[worker] = now
            logger.warning(
                "ports.worker_full",
                worker=worker,
                sockets=self.signalling.ports.sockets[worker],
                hint="raise LimitNOFILE (RLIMIT_NOFILE) or num-threads",
            )

    # -- kernel path ------------------------------------------------------------------------

    def _stats_reported(self, stats: ipc.Stats, changed: set[str]) -> None:
        """A worker report confirmed (or lost) endpoints: those calls may change hands."""
        for call_id in changed:
            call = self.calls.get(call_id)
            if call is not None:
                self.handover.offload(call)
                if self.ha is not None:
                    self.ha.save(call)  # its endpoints, confirmed

    def _kernel_traffic(self, stream: Stream, packets: int, size: int) -> None:
        self.ops.traffic("kernel", stream, packets, size)

    def _journal_save(self, call: Call) -> None:
        if self.journal is not None:
            self.journal.save(call)
        if self.ha is not None:
            self.ha.save(call)

    def reload(self) -> dict[str, Any]:
        """``relayctl reload`` and SIGHUP: read the configuration again and apply what can
        change at run time (:data:`relayd.config.RELOADABLE`); the rest waits for a restart."""
        try:
            fresh = load(self.argv)
        except ConfigError as exc:
            return {"result": "error", "error": f"configuration error: {exc}"}
        old = self.config
        self.config, applied, restart = reloaded(old, fresh)
        shards = self.shard.count if self.shard is not None else 1
        self.commands.set_limits(limits_of(self.config, shards))
        if self.config.log_level != old.log_level:
            log.set_level(self.config.log_level)
        logger.info("config.reloaded", source=fresh.source, applied=applied, restart=restart)
        return {"applied": applied, "restart": restart, "source": fresh.source}

    def set_running(self, field: str, value: Any) -> dict[str, Any]:
        """``relayctl set`` (relayd/ops/runtime.py): a limit on new calls changed now, in the
        running configuration (``relayctl config``, ``/metrics``), until a reload or restart."""
        self.config, change = with_setting(self.config, field, value)
        shards = self.shard.count if self.shard is not None else 1
        self.commands.set_limits(limits_of(self.config, shards))
        key = field.replace("_", "-")
        logger.info("config.set", key=key, before=change[0], after=change[1])
        return {"set": {key: change}}

    def _reload_signal(self) -> None:
        result = self.reload()
        if result.get("result") == "error":
            logger.error("config.reload_failed", error=result.get("error"))

    def stop(self) -> None:
        self._stop.set()


def signalling_of(
    config: Config, interfaces: Interfaces, ports: PortAllocator, certificate: Certificate
) -> Signalling:
    """Offer/answer as the configuration sets it up, with the certificate's fingerprints
    (sha-256 by default, the others for ``DTLS-fingerprint``)."""
    return Signalling(
        interfaces,
        ports,
        sip_source_default=config.sip_source,
        fingerprint=f"sha-256 {certificate.fingerprint('sha-256')}",
        fingerprints={name: f"{name} {certificate.fingerprint(name)}" for name in HASHES},
        dtls_passive=config.dtls_passive,
    )


def _share(total: int | None, shards: int) -> int | None:
    return None if total is None else total // max(shards, 1)


def limits_of(config: Config, shards: int = 1) -> Limits:
    """The call limits and timers a configuration sets (at start-up and on reload). Of
    ``max-sessions`` and ``max-bandwidth`` (the host's) each of ``shards`` shards takes its
    share, rounded up; ``max-load`` and ``max-cpu`` are the host's figures, the same for all."""
    max_sessions, max_bandwidth = config.max_sessions, config.max_bandwidth
    if shards > 1 and max_sessions > 0:
        max_sessions = -(-max_sessions // shards)
    if shards > 1 and max_bandwidth > 0:
        max_bandwidth = -(-max_bandwidth // shards)
    return Limits(
        max_sessions=max_sessions,
        max_load=config.max_load,
        max_cpu=config.max_cpu,
        max_bandwidth=max_bandwidth,
        delete_delay=config.delete_delay,
        offer_timeout=config.offer_timeout,
        final_timeout=config.final_timeout,
        timeout=config.timeout,
        silent_timeout=config.silent_timeout,
    )
