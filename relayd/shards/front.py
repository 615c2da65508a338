"""The front of a sharded relayd (``shards = N``): listeners, routing, the shards' lives.

::

    Kamailio ──ng (UDP/TCP)──> front ──link──> shard 0 … N-1 (each a supervisor with
       ^                        │ admin socket,             its workers, port slice,
       └──── UDP replies ───────┼─ /metrics                journal; one nft table)
             (from each shard, on its copy of the front's socket)

The front reads of each ng message only its command and call-id
(:mod:`relayd.shards.route`) and passes it to the shard that owns the call, which
handles it exactly as a single relayd would (reply cache, Homer, everything) and
answers a UDP client itself. ``list`` and ``statistics`` go to every shard and the
answers are merged (:mod:`relayd.shards.merge`), as are ``relayctl`` requests and
``/metrics``. TCP replies come back through the front, which owns the connection.

A shard that dies is started again (after 0.1 s, doubling up to 5 s while it keeps
dying young, as workers are) and takes its calls back from its journal; its kernel
forwards never stopped. Requests for it meanwhile are dropped: the proxy
retransmits. The front holds no call state, so it has nothing to lose either.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import itertools
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from relayd import log
from relayd.calls.model import host_port
from relayd.config import Config
from relayd.ng.message import (
    FramingError,
    NgError,
    decode_body,
    encode_reply,
    parse_request,
    split_cookie,
)
from relayd.ng.server import serve_tcp
from relayd.ops import admin, metrics
from relayd.ops.httpd import Routes, serve_http
from relayd.plane.workerpool import RESTART_STABLE, restart_delay
from relayd.shards import link
from relayd.shards.merge import merge_admin, merge_list, merge_metrics, merge_statistics
from relayd.shards.route import FAN_OUT, owner, route_of

__all__ = ["Front", "shard_cpus"]

logger = log.get_logger("relayd.front")

_READY_TIMEOUT = 60.0  # seconds a shard may take to restore its journal and start
_ANSWER_TIMEOUT = 5.0  # seconds the front waits for a shard's answer
_PR_SET_PDEATHSIG = 1


def shard_cpus(cpus: list[int], index: int, count: int) -> list[int]:
    """The CPUs shard ``index`` and its workers run on: every ``count``-th of the CPUs
    relayd may use, so N shards on C cores share none while C >= N; all of them else."""
    if count > len(cpus):
        return cpus
    return cpus[index::count]


def _die_with_parent() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Shard:
    """One shard process and the front's end of its link."""

    index: int
    cpus: list[int]
    proc: subprocess.Popen[bytes] | None = None
    link: socket.socket | None = None
    up: bool = False
    spawned_at: float = 0.0
    quick_deaths: int = 0
    dropped: int = 0  # messages refused: shard down or its link full
    restart: asyncio.TimerHandle | None = None
    pending: set[int] = field(default_factory=set)  # tags it owes an answer


class Front:
    """The front process: it starts the shards, routes ng to them, and merges what every
    shard answers."""

    def __init__(self, config: Config, argv: list[str], ready_fd: int | None = None) -> None:
        self.config, self.argv, self.ready_fd = config, argv, ready_fd
        count = config.shards
        cpus = sorted(os.sched_getaffinity(0))
        self.shards = [Shard(i, shard_cpus(cpus, i, count)) for i in range(count)]
        self.udp: socket.socket | None = None
        self._tags = itertools.count(1)
        self._answers: dict[int, asyncio.Future[Any]] = {}
        self._stop = asyncio.Event()
        self._stopping = False
        self._closers: list[Any] = []

    # -- the shards' lives --------------------------------------------------------------------

    def _spawn(self, shard: Shard) -> None:
        front_end, shard_end = link.pair()
        ready_read, ready_write = os.pipe()
        passed = [shard_end.fileno(), ready_write]
        args = [
            sys.executable,
            "-m",
            "relayd.shards.shard",
            "--index",
            str(shard.index),
            "--shards",
            str(len(self.shards)),
            "--link",
            str(shard_end.fileno()),
            "--ready",
            str(ready_write),
            "--cpus",
            ",".join(map(str, shard.cpus)),
        ]
        if self.udp is not None:
            args += ["--udp", str(self.udp.fileno())]
            passed.append(self.udp.fileno())
        args += ["--", *self.argv]
        shard.proc = subprocess.Popen(args, pass_fds=passed, preexec_fn=_die_with_parent)
        shard.spawned_at = time.monotonic()
        shard_end.close()
        os.close(ready_write)
        shard.link = front_end
        loop = asyncio.get_running_loop()
        loop.add_reader(front_end.fileno(), self._readable, shard)
        loop.add_reader(ready_read, self._ready, shard, ready_read)
        logger.info("shard.spawned", shard=shard.index, pid=shard.proc.pid, cpus=shard.cpus)

    def _ready(self, shard: Shard, fd: int) -> None:
        asyncio.get_running_loop().remove_reader(fd)
        try:
            ready = os.read(fd, 1) == b"1"
        except OSError:
            ready = False
        os.close(fd)
        if ready:
            shard.up = True
            logger.info("shard.ready", shard=shard.index)

    def _readable(self, shard: Shard) -> None:
        sock = shard.link
        if sock is None:
            return
        try:
            messages = link.receive(sock)
        except link.Closed:
            self._died(shard)
            return
        for message in messages:
            if message[0] == "reply":
                shard.pending.discard(message[1])
                future = self._answers.pop(message[1], None)
                if future is not None and not future.done():
                    future.set_result(message[2])

    def _died(self, shard: Shard) -> None:
        loop = asyncio.get_running_loop()
        if shard.link is not None:
            loop.remove_reader(shard.link.fileno())
            shard.link.close()
            shard.link = None
        shard.up = False
        status = None
        if shard.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                status = shard.proc.wait(timeout=1.0)
            if status is None:
                shard.proc.kill()
                status = shard.proc.wait()
        for tag in shard.pending:
            future = self._answers.pop(tag, None)
            if future is not None and not future.done():
                future.set_exception(link.Closed(f"shard {shard.index} died"))
        shard.pending.clear()
        if self._stopping:
            return
        young = time.monotonic() - shard.spawned_at < RESTART_STABLE
        shard.quick_deaths = shard.quick_deaths + 1 if young else 0
        delay = restart_delay(shard.quick_deaths)
        logger.error("shard.died", shard=shard.index, status=status, restart_in=delay)
        shard.restart = loop.call_later(delay, self._spawn, shard)

    async def _all_ready(self) -> bool:
        deadline = time.monotonic() + _READY_TIMEOUT
        while not all(s.up for s in self.shards):
            if time.monotonic() > deadline or self._stop.is_set():
                return False
            await asyncio.sleep(0.05)
        return True

    # -- asking the shards --------------------------------------------------------------------

    def _send(self, shard: Shard, message: tuple[Any, ...]) -> bool:
        if not shard.up or shard.link is None:
            shard.dropped += 1
            return False
        try:
            sent = link.send(shard.link, message)
        except link.Closed:
            sent = False
        if not sent:
            shard.dropped += 1
            logger.warning("shard.refused", shard=shard.index, up=shard.up)
        return sent

    async def _ask(self, shard: Shard, kind: str, *body: Any) -> Any:
        """Send ``(kind, tag, *body)`` and wait for the answer; raises on failure."""
        tag = next(self._tags)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._answers[tag] = future
        if not self._send(shard, (kind, tag, *body)):
            self._answers.pop(tag, None)
            raise link.Closed(f"shard {shard.index} is not up")
        shard.pending.add(tag)
        try:
            return await asyncio.wait_for(future, _ANSWER_TIMEOUT)
        finally:
            self._answers.pop(tag, None)
            shard.pending.discard(tag)

    async def _ask_all(self, kind: str, *body: Any) -> list[Any]:
        return list(await asyncio.gather(*(self._ask(s, kind, *body) for s in self.shards)))

    # -- ng -----------------------------------------------------------------------------------

    def route(self, data: bytes, source: tuple[Any, ...], local: tuple[Any, ...]) -> None:
        """A UDP ng message: to its owner (which answers the client itself), or to every
        shard when all of them must answer."""
        try:
            cookie, body = split_cookie(data)
        except FramingError:
            logger.warning("ng.no_cookie", source=f"{source[0]}:{source[1]}", size=len(data))
            return
        found = route_of(body)
        if found.command in FAN_OUT and not found.call_id:
            task = asyncio.ensure_future(self._fan_out(cookie, body, data, source))
            task.add_done_callback(lambda done: self._reply_udp(done, source))
            return
        self._send(
            self.shards[owner(found.call_id, len(self.shards))], ("ng", 0, source, local, data)
        )

    def _reply_udp(self, done: asyncio.Future[bytes | None], source: tuple[Any, ...]) -> None:
        if done.cancelled() or done.exception() is not None or self.udp is None:
            return
        reply = done.result()
        if reply is not None:
            with contextlib.suppress(OSError):
                self.udp.sendto(reply, source)

    async def _fan_out(
        self, cookie: str, body: bytes, data: bytes, source: tuple[Any, ...]
    ) -> bytes | None:
        """``list`` or ``statistics``: every shard's answer, merged into one reply."""
        try:
            raw, as_json = decode_body(body)
            req = parse_request(raw)
        except NgError as exc:
            return encode_reply(cookie, {"result": "error", "error-reason": exc.reason}, False)
        try:
            replies = await self._ask_all("call", source, data)
        except (link.Closed, TimeoutError):
            return encode_reply(
                cookie, {"result": "error", "error-reason": "Internal error"}, as_json
            )
        if req.command == "list":
            limit = req.limit if req.limit is not None else 32
            merged = merge_list(replies, limit)
        else:
            merged = merge_statistics(replies)
            merged.setdefault("result", "ok")
        return encode_reply(cookie, merged, as_json)

    async def process(
        self, data: bytes, source: tuple[Any, ...], local: tuple[Any, ...] = ()
    ) -> bytes | None:
        """A TCP ng message: the reply, from its owner or merged from every shard."""
        try:
            cookie, body = split_cookie(data)
        except FramingError:
            return None
        found = route_of(body)
        if found.command in FAN_OUT and not found.call_id:
            return await self._fan_out(cookie, body, data, source)
        shard = self.shards[owner(found.call_id, len(self.shards))]
        try:
            reply = await self._ask(shard, "ng", source, local, data)
        except (link.Closed, TimeoutError):
            return None  # the proxy retransmits, or gives up on this instance
        return cast(bytes | None, reply)

    # -- relayctl and /metrics ----------------------------------------------------------------

    async def admin(self, request: Any) -> dict[str, Any]:
        """A ``relayctl`` request: the call's owner, or every shard, merged."""
        if not isinstance(request, dict) or not isinstance(request.get("command"), str):
            return {"result": "error", "error": 'a request is a JSON object with a "command"'}
        command = request["command"]
        args = request.get("args") or []
        if command == "ping":
            return {"result": "ok", "pong": True}
        try:
            single = _call_of(command, args)
            if single is not None:
                shard = self.shards[owner(single, len(self.shards))]
                return cast(dict[str, Any], await self._ask(shard, "admin", request))
            if command == "config":
                reply = cast(dict[str, Any], await self._ask(self.shards[0], "admin", request))
                return {**reply, "shards": len(self.shards)}
            replies = await self._ask_all("admin", request)
        except (link.Closed, TimeoutError) as exc:
            return {"result": "error", "error": f"a shard did not answer: {exc}"}
        return merge_admin(command, [str(a) for a in args], replies)

    async def metrics_page(self) -> tuple[str, str]:
        """``/metrics``: every shard's families, each sample labelled with its shard."""
        try:
            texts = await self._ask_all("metrics")
        except (link.Closed, TimeoutError):
            texts = []
        return metrics.CONTENT_TYPE, merge_metrics(texts) + _own_metrics(self.shards)

    # -- the process ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Start the shards, open the listeners once they are all up, run until SIGTERM (which
        stops the shards too; their kernel forwards stay)."""
        cfg = self.config
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload)
        if cfg.listen_ng:
            self.udp = _udp_socket(*cfg.listen_ng)
        for shard in self.shards:
            self._spawn(shard)
        if not await self._all_ready():
            await self._shutdown()
            raise OSError("the shards did not start (see their log lines)")
        await self._listen()
        logger.info("front.ready", shards=len(self.shards))
        if self.ready_fd is not None:
            os.write(self.ready_fd, b"1")
            os.close(self.ready_fd)
        await self._stop.wait()
        await self._shutdown()

    async def _listen(self) -> None:
        cfg = self.config
        loop = asyncio.get_running_loop()
        if cfg.admin_socket and cfg.admin_socket != "none":
            server = await admin.serve(Path(cfg.admin_socket), self.admin)
            if server is not None:
                self._closers.append(server)
        routes: Routes = {"/metrics": self.metrics_page, "/ping": lambda: ("text/plain", "pong")}
        endpoints = list(dict.fromkeys(cfg.listen_http))
        if cfg.prometheus_listen is not None and cfg.prometheus_listen not in endpoints:
            endpoints.append(cfg.prometheus_listen)
        for host, port in endpoints:
            self._closers.append(await serve_http(routes, host, port))
        if cfg.listen_tcp_ng:
            self._closers.append(await serve_tcp(self, *cfg.listen_tcp_ng))
            logger.info("ng.listening", transport="tcp", address=host_port(cfg.listen_tcp_ng))
        if self.udp is not None and cfg.listen_ng:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _FrontUdp(self), sock=self.udp
            )
            self._closers.append(transport)
            logger.info("ng.listening", transport="udp", address=host_port(cfg.listen_ng))

    def _reload(self) -> None:
        for shard in self.shards:
            if shard.proc is not None and shard.proc.poll() is None:
                shard.proc.send_signal(signal.SIGHUP)

    async def _shutdown(self) -> None:
        self._stopping = True
        for closer in self._closers:
            closer.close()
        for shard in self.shards:
            if shard.restart is not None:
                shard.restart.cancel()
            if shard.proc is not None and shard.proc.poll() is None:
                shard.proc.terminate()
        for shard in self.shards:
            if shard.proc is not None:
                try:
                    await asyncio.to_thread(shard.proc.wait, 15.0)
                except subprocess.TimeoutExpired:
                    shard.proc.kill()
        if self.config.admin_socket and self.config.admin_socket != "none":
            with contextlib.suppress(OSError):
                Path(self.config.admin_socket).unlink()
        logger.info("relayd.stopped", shards=len(self.shards))

    def stop(self) -> None:
        self._stop.set()


class _FrontUdp(asyncio.DatagramProtocol):
    def __init__(self, front: Front) -> None:
        self.front = front
        self.local: tuple[Any, ...] = ()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.local = transport.get_extra_info("sockname") or ()

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.front.route(data, addr, self.local)


def _udp_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.setblocking(False)
    return sock


def _call_of(command: str, args: list[Any]) -> bytes | None:
    """The call a relayctl request is about, if just one."""
    if command == "list" and len(args) >= 2 and args[0] == "callid":
        return str(args[1]).encode("utf-8", "surrogateescape")
    if command == "terminate" and args and args[0] != "all":
        return str(args[0]).encode("utf-8", "surrogateescape")
    return None


def _own_metrics(shards: list[Shard]) -> str:
    lines = [
        "# HELP relayd_shard_up Whether a shard process is up and serving",
        "# TYPE relayd_shard_up gauge",
        *(f'relayd_shard_up{{shard="{s.index}"}} {int(s.up)}' for s in shards),
        "# HELP relayd_shard_dropped_total ng messages the front could not pass to a shard",
        "# TYPE relayd_shard_dropped_total counter",
        *(f'relayd_shard_dropped_total{{shard="{s.index}"}} {s.dropped}' for s in shards),
    ]
    return "\n".join(lines) + "\n"
