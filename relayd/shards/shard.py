"""One shard: a supervisor that serves its share of the calls.

Started by the front (``python -m relayd.shards.shard``) with the daemon's own
arguments after ``--``. It is a whole relayd supervisor (its slice of the port
range, its own workers pinned to its cores, its own journal, the same nftables
table for its forwards) with its own socket on the ng UDP address, one of the
``SO_REUSEPORT`` group the kernel spreads the proxy's sockets over. Of the
datagrams it receives (:mod:`relayd.shards.route`) it answers those of its own
calls and those without a call-id, passes those of another shard's calls straight
to that shard (:mod:`relayd.shards.mesh`), which answers the client from its own
socket of the group, and has the front ask every shard for ``list`` and
``statistics``. TCP ng, the admin socket and HTTP are the front's, which passes
it the requests it owns over its link (:mod:`relayd.shards.link`). If the front
dies, the kernel sends the shard SIGTERM (``PR_SET_PDEATHSIG``); its kernel
forwards and journal stay, for the next start.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import inspect
import os
import socket
import sys
from collections.abc import Awaitable, Sequence
from typing import Any

import uvloop

from relayd import log
from relayd.calls.interfaces import resolve
from relayd.calls.model import host_port
from relayd.certificate import load_or_create
from relayd.config import ConfigError, load
from relayd.daemon import GC_THRESHOLDS, start_logging, system_addresses
from relayd.ng.message import NgError, decode_body, parse_request, split_cookie
from relayd.ng.server import NgService
from relayd.ops import admin
from relayd.ops.operations import metrics_page
from relayd.shards import mesh, route, steer
from relayd.shards.link import Closed, receive, send
from relayd.supervisor import Supervisor

__all__ = ["ShardEnd", "main"]

logger = log.get_logger("relayd.shard")

_BATCH = 64  # datagrams read from one socket before the loop runs anything else
_DATAGRAM = 65536


class ShardEnd:
    """The shard's sockets: ng datagrams from clients and from the other shards in,
    replies out to the clients; requests from the front in, answers out to it."""

    def __init__(
        self,
        index: int,
        count: int,
        link: socket.socket,
        inbound: socket.socket | None = None,
        peers: Sequence[socket.socket] = (),
    ) -> None:
        self.index, self.count = index, count
        self.link, self.inbound, self.peers = link, inbound, list(peers)
        self.udp: socket.socket | None = None
        self.local: tuple[Any, ...] = ()
        self.refused = [0] * len(self.peers)  # datagrams each shard's socket refused
        self.refusing: set[int] = set()  # the shards refusing now (logged once, at the start)
        self._service: NgService | None = None
        self._state: Supervisor | None = None
        self._tasks: set[asyncio.Future[None]] = set()  # answers waiting for a coroutine

    def open(self, service: NgService, state: Supervisor) -> ShardEnd:
        """Serve the link and the inbound socket on the running loop (the ng address once
        the front says so: ``listen``); the returned object closes them."""
        self._service, self._state = service, state
        loop = asyncio.get_running_loop()
        loop.add_reader(self.link.fileno(), self._readable)
        if self.inbound is not None:
            stale = mesh.discard(self.inbound)
            if stale:
                logger.info("shard.stale_dropped", shard=self.index, messages=stale)
            loop.add_reader(self.inbound.fileno(), self._inbound_readable)
        return self

    def listen(self) -> bool:
        """Join the ng address's ``SO_REUSEPORT`` group: from now on the kernel gives this
        shard its share of the clients' datagrams. False when there is none to join (or
        the shard has joined already)."""
        assert self._state is not None
        address = self._state.config.listen_ng
        if address is None or self.udp is not None:
            return False
        self.udp = mesh.reuseport_socket(*address)
        self.local = self.udp.getsockname()
        asyncio.get_running_loop().add_reader(self.udp.fileno(), self._udp_readable)
        logger.info("ng.listening", transport="udp", address=host_port(address))
        return True

    def steer(self, table: list[int | None]) -> None:
        """Give the ng address's group the program that sends each datagram to its call's
        shard, ``table`` being each shard's index in the group (relayd.shards.steer)."""
        if self.udp is None:
            return
        try:
            steer.attach(self.udp, steer.program(table))
        except (OSError, ValueError) as exc:  # no such option here: the hash spreads them
            logger.warning("shard.steer_failed", shard=self.index, error=str(exc))

    def close(self) -> None:
        loop = asyncio.get_running_loop()
        for sock in (self.link, self.inbound, self.udp):
            if sock is not None:
                with contextlib.suppress(Exception):
                    loop.remove_reader(sock.fileno())
        if self.udp is not None:
            self.udp.close()  # out of the group: the kernel gives the others its share
            self.udp = None

    # -- ng over UDP ---------------------------------------------------------------------------

    def _udp_readable(self) -> None:
        udp = self.udp
        if udp is None:
            return
        for _ in range(_BATCH):
            try:
                data, source = udp.recvfrom(_DATAGRAM)
            except OSError:  # BlockingIOError: nothing (more) to read
                return
            try:
                self._route(data, source)
            except Exception:
                logger.exception("shard.request_failed", kind="ng")

    def _route(self, data: bytes, source: tuple[Any, ...]) -> None:
        """Answer a client's datagram, or pass it on to its call's owner (or the front).

        The message is read once: the dictionary decoded here for its call-id is the one
        the owner answers, here or (pickled with the datagram) in the owner's shard. What
        does not decode (no cookie, not a dictionary) is answered here, with the error a
        single relayd would give.
        """
        try:
            cookie, body = split_cookie(data)
            raw, as_json = decode_body(body)
        except Exception:
            self._answer(data, source)
            return
        where = route.where(route.route_of_request(raw), self.index, self.count)
        if where == self.index:
            self._answer_read(source, data, cookie, raw, as_json)
        elif where == route.FRONT:
            self._reply("fanout", 0, (source, data), "fanout")
        elif mesh.forward(self.peers[where], (source, data, cookie, raw, as_json)):
            if where in self.refusing:
                self.refusing.discard(where)
                logger.info("shard.forwarding", to=where, refused=self.refused[where])
        else:
            self.refused[where] += 1
            if where not in self.refusing:
                self.refusing.add(where)
                logger.warning("shard.forward_refused", to=where)

    def _inbound_readable(self) -> None:
        assert self.inbound is not None
        if self.udp is None:  # not on the ng address yet: dropped, as if it were down
            mesh.discard(self.inbound)
            return
        try:
            messages = mesh.receive(self.inbound, _BATCH)
        except Exception:
            logger.exception("shard.request_failed", kind="forwarded")
            return
        for source, data, cookie, raw, as_json in messages:
            try:
                self._answer_read(source, data, cookie, raw, as_json)
            except Exception:
                logger.exception("shard.request_failed", kind="ng")

    def _answer(self, data: bytes, source: tuple[Any, ...]) -> None:
        """Handle a client's datagram as a single relayd would, and answer the client."""
        assert self._service is not None
        reply = self._service.handle(data, source, self.local)
        if reply is not None:
            self._send(reply, source)

    def _answer_read(
        self, source: tuple[Any, ...], data: bytes, cookie: str, raw: dict[str, Any], as_json: bool
    ) -> None:
        """:meth:`_answer` for a datagram read by :meth:`_route` (here or in another shard)."""
        assert self._service is not None
        self._send(
            self._service.handle_decoded(cookie, raw, as_json, data, source, self.local), source
        )

    def _send(self, reply: bytes | asyncio.Future[bytes], source: Any) -> None:
        if not isinstance(reply, bytes):
            reply.add_done_callback(
                lambda done: None if done.cancelled() else self._send(done.result(), source)
            )
        elif self.udp is not None:
            with contextlib.suppress(OSError):
                self.udp.sendto(reply, source)

    # -- the link to the front -----------------------------------------------------------------

    def _readable(self) -> None:
        try:
            messages = receive(self.link)
        except Closed:
            logger.error("shard.front_gone", shard=self.index)
            self.close()
            assert self._state is not None
            self._state.stop()
            return
        for message in messages:
            try:
                self._handle(message)
            except Closed:
                return
            except Exception:
                logger.exception("shard.request_failed", kind=message[0])

    def _handle(self, message: tuple[Any, ...]) -> None:
        service, state = self._service, self._state
        assert service is not None and state is not None
        kind, tag = message[0], message[1]
        payload: Any
        if kind == "ng":
            _, _, source, local, data = message
            payload = service.handle(data, source, local)
            if payload is None:
                return  # no cookie: nothing to answer
        elif kind == "send":
            self._send(message[3], message[2])  # a merged reply, for a client of ours
            return
        elif kind == "listen":
            try:
                joined = self.listen()
            except OSError as exc:  # the front found the address free: try again from scratch
                logger.error("shard.failed", shard=self.index, error=str(exc))
                state.stop()
                return
            self._reply("listening", 0, joined, kind)
            return
        elif kind == "steer":
            self.steer(message[2])
            return
        elif kind == "call":
            _, _, source, data = message
            payload = self._call(state, data, source)
        elif kind == "admin":
            payload = admin.respond(state, message[2])
        elif kind == "metrics":
            payload = metrics_page(state)
        else:
            logger.warning("shard.unknown_message", kind=kind)
            return
        if inspect.isawaitable(payload):
            task = asyncio.ensure_future(self._reply_later(kind, tag, payload))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            self._reply("reply", tag, payload, kind)

    async def _reply_later(self, kind: str, tag: int, pending: Awaitable[Any]) -> None:
        try:
            payload = await pending
        except Exception:
            logger.exception("shard.request_failed", kind=kind)
            return  # the front's wait times out; the proxy retransmits
        if kind == "metrics":
            payload = payload[1] + self.metrics()  # the text of (content type, text)
        self._reply("reply", tag, payload, kind)

    def _reply(self, kind: str, tag: int, payload: Any, about: str) -> None:
        try:
            if not send(self.link, (kind, tag, payload)):
                logger.warning("shard.link_full", kind=about)
        except Closed:
            pass  # the front is gone: _readable stops the shard

    def metrics(self) -> str:
        """The shard's own family: datagrams another shard's socket refused (it was down)."""
        lines = [
            "# HELP relayd_shard_forward_refused_total ng datagrams for another shard's calls "
            "that could not be passed to it (it was restarting, or far behind)",
            "# TYPE relayd_shard_forward_refused_total counter",
            *(
                f'relayd_shard_forward_refused_total{{to="{i}"}} {n}'
                for i, n in enumerate(self.refused)
            ),
        ]
        return "\n".join(lines) + "\n"

    @staticmethod
    def _call(
        state: Supervisor, data: bytes, source: tuple[Any, ...]
    ) -> dict[str, Any] | Awaitable[dict[str, Any]]:
        """A command the front asks every shard (``list``, ``statistics``): the reply
        dictionary, for the front to merge."""
        try:
            _, body = split_cookie(data)
            raw, _ = decode_body(body)
            req = parse_request(raw)
        except NgError as exc:
            return {"result": "error", "error-reason": exc.reason}
        except Exception:
            return {"result": "error", "error-reason": "Internal error"}
        return state.dispatch(req, source)


def _arguments(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="relayd-shard")
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--shards", type=int, required=True)
    parser.add_argument("--link", type=int, required=True, help="descriptor of the link")
    parser.add_argument("--inbound", type=int, default=-1, help="descriptor: from other shards")
    parser.add_argument("--peers", default="", help="descriptors: to each shard, by index")
    parser.add_argument("--ready", type=int, default=-1, help="descriptor told when ready")
    parser.add_argument("--cpus", default="", help="CPUs this shard and its workers run on")
    args = list(argv)
    split = args.index("--") if "--" in args else len(args)
    return parser.parse_args(args[:split]), args[split + 1 :]


def main(argv: Sequence[str] | None = None) -> int:
    """Run one shard until SIGTERM (or the front's death); 78 for a bad configuration."""
    own, rest = _arguments(sys.argv[1:] if argv is None else argv)
    if own.cpus:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {int(c) for c in own.cpus.split(",")})
    try:
        config = load(rest)
    except ConfigError as exc:
        print(f"relayd shard {own.index}: configuration error: {exc}", file=sys.stderr)
        return 78
    start_logging(config)
    log.bind_process(shard=own.index)

    try:
        interfaces = resolve(config.interfaces, system_addresses())
        certificate = load_or_create(config.tls_certificate or None, config.tls_private_key or None)
    except (ValueError, OSError) as exc:
        logger.error("shard.failed", shard=own.index, error=str(exc))
        return 78
    link = socket.socket(fileno=own.link)
    link.setblocking(False)
    inbound = socket.socket(fileno=own.inbound) if own.inbound >= 0 else None
    peers = [socket.socket(fileno=int(fd)) for fd in own.peers.split(",") if fd]
    for sock in (inbound, *peers):
        if sock is not None:
            sock.setblocking(False)
    end = ShardEnd(own.index, own.shards, link, inbound, peers)
    try:
        supervisor = Supervisor(
            config,
            interfaces,
            certificate,
            ready_fd=own.ready if own.ready >= 0 else None,
            argv=rest,
            shard=end,
        )
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
        uvloop.run(supervisor.run())
    except OSError as exc:
        logger.error("shard.failed", shard=own.index, error=str(exc))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
