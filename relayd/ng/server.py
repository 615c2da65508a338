"""The ng listeners: UDP datagrams and TCP streams of ``cookie SP dict``.

The shell around :class:`NgService`, which turns one framed message into one
framed reply: reply cache by cookie (a retransmission that arrives while the
first copy is still being handled waits for that reply), decoding, dispatch,
and the conversion of every failure into an error reply. Nothing escapes to
the event loop.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, cast

from relayd.log import get_logger
from relayd.ng import bencode
from relayd.ng.cache import ReplyCache
from relayd.ng.message import (
    FramingError,
    NgError,
    Request,
    decode_body,
    encode_reply,
    parse_request,
    split_cookie,
)

__all__ = ["NgService", "Processor", "serve_tcp", "serve_udp"]

log = get_logger("relayd.ng")

Dispatch = Callable[[Request, tuple[Any, ...]], dict[str, Any] | Awaitable[dict[str, Any]]]
# a request and its reply as on the wire (cookie SP body each), for capture (Homer):
# request, reply, the request's source, our local address, the parsed request
Observe = Callable[[bytes, bytes, tuple[Any, ...], tuple[Any, ...], Request], None]

# rtpengine closes a TCP connection once this much unparseable data piles up
_TCP_GARBAGE_LIMIT = 1024
_TCP_MESSAGE_LIMIT = 1 << 20


class Processor(Protocol):
    """What answers a TCP stream's messages: an :class:`NgService`, or the front of a
    sharded relayd, which asks the shard that owns the call."""

    async def process(
        self, data: bytes, source: tuple[Any, ...], local: tuple[Any, ...] = ()
    ) -> bytes | None: ...


class NgService:
    """One framed message in, one framed reply out (or None: dropped).

    ``dispatch`` may be a plain function (relayd's is: a reply goes out before
    the next datagram is read, with no task per request) or a coroutine; with a
    coroutine, a retransmission that arrives while the first copy is being
    handled waits for that reply instead of running the command again.
    """

    def __init__(
        self,
        dispatch: Dispatch,
        clock: Callable[[], float] = time.monotonic,
        observe: Observe | None = None,
    ) -> None:
        self.dispatch = dispatch
        self.clock = clock
        self.observe = observe
        self.cache = ReplyCache()
        self._inflight: dict[str, asyncio.Future[bytes]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def process(
        self, data: bytes, source: tuple[Any, ...], local: tuple[Any, ...] = ()
    ) -> bytes | None:
        reply = self.handle(data, source, local)
        if isinstance(reply, asyncio.Future):
            return await asyncio.shield(reply)
        return reply

    def handle(
        self, data: bytes, source: tuple[Any, ...], local: tuple[Any, ...] = ()
    ) -> bytes | asyncio.Future[bytes] | None:
        """The reply now, or a future for it when the dispatcher is a coroutine."""
        try:
            cookie, body = split_cookie(data)
        except FramingError:
            log.warning("ng.no_cookie", source=_peer(source), size=len(data))
            return None
        earlier = self._earlier(cookie, source)
        if earlier is not None:
            return earlier
        try:
            raw, as_json = decode_body(body)
        except Exception as exc:
            return self._finish(cookie, self._failure(exc, source), body[:1] == b"{")
        return self._answer(cookie, raw, as_json, data, source, local)

    def handle_decoded(
        self,
        cookie: str,
        raw: dict[str, Any],
        as_json: bool,
        data: bytes,
        source: tuple[Any, ...],
        local: tuple[Any, ...] = (),
    ) -> bytes | asyncio.Future[bytes]:
        """:meth:`handle` for a message whose cookie and dictionary were read already
        (``split_cookie``, ``decode_body``: a shard reads them to route it), with the same
        reply; ``data`` is the message as it came."""
        earlier = self._earlier(cookie, source)
        if earlier is not None:
            return earlier
        return self._answer(cookie, raw, as_json, data, source, local)

    def _earlier(
        self, cookie: str, source: tuple[Any, ...]
    ) -> bytes | asyncio.Future[bytes] | None:
        """A retransmission's reply: the first copy's, or a future for it while it runs."""
        cached = self.cache.get(cookie, self.clock())
        if cached is not None:
            log.debug("ng.retransmission", cookie=cookie, source=_peer(source))
            return cached
        return self._inflight.get(cookie)

    def _answer(
        self,
        cookie: str,
        raw: dict[str, Any],
        as_json: bool,
        data: bytes,
        source: tuple[Any, ...],
        local: tuple[Any, ...],
    ) -> bytes | asyncio.Future[bytes]:
        req: Request | None = None
        try:
            req = parse_request(raw)
            result = self.dispatch(req, source)
        except Exception as exc:
            reply = self._finish(cookie, self._failure(exc, source), as_json)
            if req is not None:
                self._observe(data, reply, source, local, req)
            return reply
        if type(result) is dict or not inspect.isawaitable(result):
            reply = self._finish(cookie, result, as_json)
            if self.observe is not None:
                self._observe(data, reply, source, local, req)
            return reply
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._inflight[cookie] = future
        task = asyncio.ensure_future(self._complete(cookie, result, as_json, source, future))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return future

    async def _complete(
        self,
        cookie: str,
        pending: Awaitable[dict[str, Any]],
        as_json: bool,
        source: tuple[Any, ...],
        future: asyncio.Future[bytes],
    ) -> None:
        try:
            try:
                reply = self._finish(cookie, await pending, as_json)
            except Exception as exc:
                reply = self._finish(cookie, self._failure(exc, source), as_json)
            future.set_result(reply)
        finally:
            del self._inflight[cookie]
            if not future.done():  # cancelled: duplicates waiting on it must not hang
                future.cancel()

    def _observe(
        self,
        data: bytes,
        reply: bytes,
        source: tuple[Any, ...],
        local: tuple[Any, ...],
        req: Request,
    ) -> None:
        if self.observe is None:
            return
        try:
            self.observe(data, reply, source, local, req)
        except Exception:
            log.exception("ng.observe_failed")

    @staticmethod
    def _failure(exc: Exception, source: tuple[Any, ...]) -> dict[str, Any]:
        if isinstance(exc, NgError):
            log.warning("ng.error", reason=exc.reason, source=_peer(source))
            return {"result": "error", "error-reason": exc.reason}
        log.error("ng.internal_error", source=_peer(source), exc_info=exc)
        return {"result": "error", "error-reason": "Internal error"}

    def _finish(self, cookie: str, reply: dict[str, Any], as_json: bool) -> bytes:
        try:
            data = encode_reply(cookie, reply, as_json)
        except Exception as exc:  # a reply that cannot be encoded is an internal error too
            data = encode_reply(cookie, self._failure(exc, ("?", 0)), as_json)
        self.cache.put(cookie, data, self.clock())
        return data


def _peer(source: tuple[Any, ...]) -> str:
    return f"{source[0]}:{source[1]}" if len(source) >= 2 else str(source)


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, service: NgService) -> None:
        self.service = service
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        local = self.transport.get_extra_info("sockname") if self.transport else ()
        reply = self.service.handle(data, addr, local or ())
        if isinstance(reply, asyncio.Future):
            reply.add_done_callback(lambda done: self._send(done, addr))
        elif reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)

    def _send(self, done: asyncio.Future[bytes], addr: tuple[Any, ...]) -> None:
        if not done.cancelled() and self.transport is not None:
            self.transport.sendto(done.result(), addr)


async def serve_udp(service: NgService, host: str, port: int) -> asyncio.DatagramTransport:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: _UdpProtocol(service), local_addr=(host, port), reuse_port=True
    )
    return transport


def split_stream(buffer: bytes) -> tuple[list[bytes], bytes, str | None]:
    """Cut complete ``cookie SP bencode`` messages off the front of a TCP buffer.

    Returns the messages, the unconsumed rest, and why the stream is broken (or
    None): messages before the garbage are still answered, then the connection closes.
    """
    messages: list[bytes] = []
    while True:
        stripped = buffer.lstrip(b"\r\n\t ")
        cookie, space, rest = stripped.partition(b" ")
        if not space:
            return messages, stripped, None
        if rest[:1] == b"{":
            return messages, stripped, "JSON is not accepted on ng TCP streams"
        try:
            _, end = bencode.decode_prefix(rest, 0)
        except bencode.BencodeError as exc:
            if str(exc) == "truncated data":
                return messages, stripped, None
            return messages, stripped, str(exc)
        messages.append(cookie + b" " + rest[:end])
        buffer = rest[end:]


async def serve_tcp(
    service: Processor,
    host: str,
    port: int,
    clients: set[asyncio.StreamWriter] | None = None,
) -> asyncio.Server:
    """Listen for ng over TCP (``listen-tcp-ng``, ``SO_REUSEPORT``); each message answered in turn.

    A connection is closed on JSON or broken bencode (once what came before is answered), on
    more than 1 KiB without a space (no cookie; rtpengine's limit), or on 1 MiB not a message.
    ``clients``, where given, holds the open connections' writers (for notifications relayd
    sends unasked: ``dtmf-log-ng-tcp``).
    """

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("?", 0)
        local = writer.get_extra_info("sockname") or ()
        buffer = b""
        if clients is not None:
            clients.add(writer)
        try:
            while chunk := await reader.read(65536):
                buffer += chunk
                messages, buffer, broken = split_stream(buffer)
                for message in messages:
                    reply = await service.process(message, peer, local)
                    if reply is not None:
                        writer.write(reply)
                await writer.drain()
                if broken is not None:
                    log.warning("ng.tcp_garbage", source=_peer(peer), reason=broken)
                    break
                if len(buffer) > _TCP_MESSAGE_LIMIT or (
                    not messages and len(buffer) > _TCP_GARBAGE_LIMIT and b" " not in buffer
                ):
                    log.warning("ng.tcp_garbage", source=_peer(peer), size=len(buffer))
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            if clients is not None:
                clients.discard(writer)
            writer.close()

    return await asyncio.start_server(client, host, port, reuse_port=True)
