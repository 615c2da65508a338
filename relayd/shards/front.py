"""The front of a sharded relayd (``shards = N``): starting the shards, TCP ng, the admin
socket and /metrics.

::

    Kamailio ──ng (UDP)──> shard 0 … N-1 ──(another's call)──> its owner shard
       ^  │                each a supervisor with its workers, port slice, journal;
       │  │                each on the ng address (SO_REUSEPORT); each answers its
       │  │                own calls' clients from its socket there
       │  └──ng (TCP)──> front ──link──> the owner shard
       └── relayctl, /metrics: the front, which asks the shards

UDP ng does not pass through the front: every shard binds the ng address in one
``SO_REUSEPORT`` group (the front is not in it: an unread member would swallow a
share of the datagrams), the kernel spreads the proxy's sockets over the shards, and
a shard passes a message for a call it does not own straight to the owner
(:mod:`relayd.shards.route`, :mod:`relayd.shards.mesh`), which handles it exactly as
a single relayd would (reply cache, Homer, everything) and answers the client from
its own socket of the group. ``list`` and ``statistics`` without a call-id come to
the front from the shard that received them; the front asks every shard and merges
the answers (:mod:`relayd.shards.merge`), as for ``relayctl`` requests and
``/metrics``, and gives the reply back to that shard to send. TCP streams end at the
front, which passes each message to the owner and writes its reply.

The shard processes themselves, their start, death and restart, and the links, are
:mod:`relayd.shards.processes`. A shard that dies leaves the group (the kernel
spreads its clients over the others) and takes its calls back from its journal when
it is started again; its kernel forwards never stopped. Requests for it meanwhile
are dropped: the proxy retransmits. The front holds no call state, so it has nothing
to lose either.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
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
from relayd.shards import link
from relayd.shards.merge import merge_admin, merge_list, merge_metrics, merge_statistics
from relayd.shards.mesh import reuseport_socket
from relayd.shards.processes import Shard, ShardPool
from relayd.shards.route import FAN_OUT, owner, route_of

__all__ = ["Front"]

logger = log.get_logger("relayd.front")


class Front:
    """The front process: it starts the shards, passes them TCP ng, and merges what every
    shard answers (``list`` and ``statistics`` from any transport, relayctl, /metrics)."""

    def __init__(self, config: Config, argv: list[str], ready_fd: int | None = None) -> None:
        self.config, self.ready_fd = config, ready_fd
        self.pool = ShardPool(config.shards, argv)
        self.pool.on_request = self.fan_out
        self._stop = asyncio.Event()
        self._closers: list[Any] = []
        self._tasks: set[asyncio.Future[Any]] = set()  # fan-outs under way

    # -- ng -----------------------------------------------------------------------------------

    def fan_out(self, shard: Shard, message: tuple[Any, ...]) -> None:
        """A shard's request (``("fanout", 0, (client, datagram))``): a ``list`` or
        ``statistics`` of every call, its merged reply given back to that shard to send."""
        if message[0] != "fanout":
            logger.warning("front.unknown_message", kind=message[0], shard=shard.index)
            return
        source, data = message[2]
        try:
            cookie, body = split_cookie(data)
        except FramingError:
            return  # routed by its command: it has a cookie
        task = asyncio.ensure_future(self._fan_out(cookie, body, data, source))
        self._tasks.add(task)
        task.add_done_callback(lambda done: self._give_back(done, shard, source))

    def _give_back(
        self, done: asyncio.Future[bytes | None], shard: Shard, source: tuple[Any, ...]
    ) -> None:
        self._tasks.discard(done)
        if done.cancelled() or done.exception() is not None:
            return
        reply = done.result()
        if reply is not None:
            self.pool.send(shard, ("send", 0, source, reply))

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
            replies = await self.pool.ask_all("call", source, data)
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
        shard = self.pool[owner(found.call_id, len(self.pool))]
        try:
            reply = await self.pool.ask(shard, "ng", source, local, data)
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
                shard = self.pool[owner(single, len(self.pool))]
                return cast(dict[str, Any], await self.pool.ask(shard, "admin", request))
            if command == "config":
                reply = cast(dict[str, Any], await self.pool.ask(self.pool[0], "admin", request))
                return {**reply, "shards": len(self.pool)}
            replies = await self.pool.ask_all("admin", request)
        except (link.Closed, TimeoutError) as exc:
            return {"result": "error", "error": f"a shard did not answer: {exc}"}
        return merge_admin(command, [str(a) for a in args], replies)

    async def metrics_page(self) -> tuple[str, str]:
        """``/metrics``: every shard's families, each sample labelled with its shard."""
        try:
            texts = await self.pool.ask_all("metrics")
        except (link.Closed, TimeoutError):
            texts = []
        return metrics.CONTENT_TYPE, merge_metrics(texts) + self.pool.metrics()

    # -- the process ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Start the shards, open the listeners once they are all up, run until SIGTERM (which
        stops the shards too; their kernel forwards stay)."""
        cfg = self.config
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.pool.signal_all, signal.SIGHUP)
        if cfg.listen_ng:
            # the shards bind it once they are up: fail now if none could
            reuseport_socket(*cfg.listen_ng).close()
        self.pool.start()
        if not await self.pool.all_ready(self._stop):
            await self._shutdown()
            raise OSError("the shards did not start (see their log lines)")
        await self._listen()
        logger.info("front.ready", shards=len(self.pool))
        if self.ready_fd is not None:
            os.write(self.ready_fd, b"1")
            os.close(self.ready_fd)
        await self._stop.wait()
        await self._shutdown()

    async def _listen(self) -> None:
        cfg = self.config
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
        self.pool.serve()  # UDP last: each shard joins the ng address (and logs it)

    async def _shutdown(self) -> None:
        for closer in self._closers:
            closer.close()
        await self.pool.stop()
        if self.config.admin_socket and self.config.admin_socket != "none":
            with contextlib.suppress(OSError):
                Path(self.config.admin_socket).unlink()
        logger.info("relayd.stopped", shards=len(self.pool))

    def stop(self) -> None:
        self._stop.set()


def _call_of(command: str, args: list[Any]) -> bytes | None:
    """The call a relayctl request is about, if just one."""
    if command == "list" and len(args) >= 2 and args[0] == "callid":
        return str(args[1]).encode("utf-8", "surrogateescape")
    if command == "terminate" and args and args[0] != "all":
        return str(args[0]).encode("utf-8", "surrogateescape")
    return None
