"""One shard: a supervisor that serves its share of the calls over its link to the front.

Started by the front (``python -m relayd.shards.shard``) with the daemon's own
arguments after ``--``. It is a whole relayd supervisor (its slice of the port
range, its own workers pinned to its cores, its own journal, the same nftables
table for its forwards), without ng listeners, admin socket or HTTP of its own:
those are the front's, which passes it the requests it owns
(:mod:`relayd.shards.route`). It answers UDP clients itself, on its copy of the
front's ng socket. If the front dies, the kernel sends the shard SIGTERM
(``PR_SET_PDEATHSIG``); its kernel forwards and journal stay, for the next start.
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
from relayd.certificate import load_or_create
from relayd.config import ConfigError, load
from relayd.daemon import GC_THRESHOLDS, start_logging, system_addresses
from relayd.ng.message import NgError, decode_body, parse_request, split_cookie
from relayd.ng.server import NgService
from relayd.ops import admin
from relayd.ops.operations import metrics_page
from relayd.shards.link import Closed, receive, send
from relayd.supervisor import Supervisor

__all__ = ["ShardEnd", "main"]

logger = log.get_logger("relayd.shard")


class ShardEnd:
    """The shard's side of the link: requests in, replies out (UDP ones to the client)."""

    def __init__(self, index: int, count: int, link: socket.socket, udp: socket.socket | None):
        self.index, self.count = index, count
        self.link, self.udp = link, udp
        self._service: NgService | None = None
        self._state: Supervisor | None = None
        self._tasks: set[asyncio.Future[None]] = set()  # answers waiting for a coroutine

    def open(self, service: NgService, state: Supervisor) -> ShardEnd:
        """Serve the link on the running loop; the returned object closes it."""
        self._service, self._state = service, state
        asyncio.get_running_loop().add_reader(self.link.fileno(), self._readable)
        return self

    def close(self) -> None:
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(self.link.fileno())

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
            if tag == 0 and self.udp is not None:
                self._answer_client(payload, source)
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
            self._reply(kind, tag, payload)

    def _answer_client(self, reply: bytes | asyncio.Future[bytes], source: Any) -> None:
        if isinstance(reply, bytes):
            assert self.udp is not None
            with contextlib.suppress(OSError):
                self.udp.sendto(reply, source)
            return
        reply.add_done_callback(
            lambda done: None if done.cancelled() else self._answer_client(done.result(), source)
        )

    async def _reply_later(self, kind: str, tag: int, pending: Awaitable[Any]) -> None:
        try:
            payload = await pending
        except Exception:
            logger.exception("shard.request_failed", kind=kind)
            return  # the front's wait times out; the proxy retransmits
        if kind == "metrics":
            payload = payload[1]  # the text of (content type, text)
        self._reply(kind, tag, payload)

    def _reply(self, kind: str, tag: int, payload: Any) -> None:
        try:
            if not send(self.link, ("reply", tag, payload)):
                logger.warning("shard.link_full", kind=kind)
        except Closed:
            pass  # the front is gone: _readable stops the shard

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
    parser.add_argument("--udp", type=int, default=-1, help="descriptor of the ng UDP socket")
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
    udp = socket.socket(fileno=own.udp) if own.udp >= 0 else None
    if udp is not None:
        udp.setblocking(False)
    end = ShardEnd(own.index, own.shards, link, udp)
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
