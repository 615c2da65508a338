"""The ng shell on real loopback sockets: cookie cache, in-flight duplicates, UDP and TCP.

No daemon: each test builds :class:`NgService` around a small dispatch function
and serves it on 127.0.0.1, ports 22400-22419 (one per test, never shared).
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Awaitable, Callable
from typing import Any, cast

import pytest

from relayd.ng import bencode
from relayd.ng.message import Request
from relayd.ng.server import NgService, serve_tcp, serve_udp, split_stream

HOST = "127.0.0.1"
TIMEOUT = 2.0
PING = b"d7:command4:pinge"
PONG = b"d6:result4:ponge"


class Recorder:
    """A dispatch function that counts its calls and can be held until released."""

    def __init__(self, reply: Callable[[Request], dict[str, Any]] | None = None) -> None:
        self.calls: list[Request] = []
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.release.set()
        self._reply = reply or (lambda req: {"result": "pong"})

    async def __call__(self, req: Request, source: tuple[Any, ...]) -> dict[str, Any]:
        self.calls.append(req)
        self.entered.set()
        await self.release.wait()
        return self._reply(req)


class UdpClient(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.replies: asyncio.Queue[bytes] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # CPython's selector datagram transport does not subclass DatagramTransport
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.replies.put_nowait(data)

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.sendto(data)

    async def reply(self) -> bytes:
        return await asyncio.wait_for(self.replies.get(), TIMEOUT)


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 10))


async def _udp(service: NgService, port: int) -> tuple[asyncio.DatagramTransport, UdpClient]:
    try:
        server = await serve_udp(service, HOST, port)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        # something else (a benchmark's media ports) holds it: any free port will do
        server = await serve_udp(service, HOST, 0)
    port = server.get_extra_info("sockname")[1]
    _, client = await asyncio.get_running_loop().create_datagram_endpoint(
        UdpClient, remote_addr=(HOST, port)
    )
    return server, client


async def _tcp(service: NgService, port: int) -> tuple[asyncio.Server, int]:
    try:
        server = await serve_tcp(service, HOST, port)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        server = await serve_tcp(service, HOST, 0)
    return server, server.sockets[0].getsockname()[1]


def _close(server: asyncio.DatagramTransport, client: UdpClient) -> None:
    assert client.transport is not None
    client.transport.close()
    server.close()


# --- UDP -----------------------------------------------------------------------


def test_retransmission_gets_cached_reply_without_redispatch() -> None:
    async def test() -> None:
        dispatch = Recorder()
        server, client = await _udp(NgService(dispatch), 22400)
        try:
            client.send(b"c1 " + PING)
            assert await client.reply() == b"c1 " + PONG
            client.send(b"c1 " + PING)
            assert await client.reply() == b"c1 " + PONG
            # same cookie, another body: still the first reply (the key is the cookie only)
            client.send(b"c1 d7:command5:offere")
            assert await client.reply() == b"c1 " + PONG
            assert len(dispatch.calls) == 1
            client.send(b"c2 " + PING)
            assert await client.reply() == b"c2 " + PONG
            assert len(dispatch.calls) == 2
        finally:
            _close(server, client)

    run(test)


def test_duplicate_while_in_flight_waits_for_the_first_reply_udp() -> None:
    async def test() -> None:
        dispatch = Recorder(lambda req: {"result": "ok", "n": len(req.command)})
        dispatch.release.clear()
        server, client = await _udp(NgService(dispatch), 22401)
        try:
            client.send(b"k1 " + PING)
            await asyncio.wait_for(dispatch.entered.wait(), TIMEOUT)
            client.send(b"k1 " + PING)
            await asyncio.sleep(0.1)
            assert client.replies.empty()  # the duplicate is waiting, not answered
            dispatch.release.set()
            first, second = await client.reply(), await client.reply()
            assert first == second == b"k1 d6:result2:ok1:ni4ee"
            assert len(dispatch.calls) == 1
        finally:
            _close(server, client)

    run(test)


def test_duplicate_while_in_flight_waits_direct() -> None:
    async def test() -> None:
        dispatch = Recorder()
        dispatch.release.clear()
        service = NgService(dispatch)
        first = asyncio.ensure_future(service.process(b"d1 " + PING, (HOST, 1)))
        await dispatch.entered.wait()
        second = asyncio.ensure_future(service.process(b"d1 " + PING, (HOST, 2)))
        for _ in range(10):
            await asyncio.sleep(0)
        assert not first.done() and not second.done()
        dispatch.release.set()
        assert await first == await second == b"d1 " + PONG
        assert len(dispatch.calls) == 1

    run(test)


def test_cancelled_waiter_does_not_abort_the_command() -> None:
    async def test() -> None:
        dispatch = Recorder()
        dispatch.release.clear()
        service = NgService(dispatch)
        first = asyncio.ensure_future(service.process(b"x " + PING, (HOST, 1)))
        await dispatch.entered.wait()
        second = asyncio.ensure_future(service.process(b"x " + PING, (HOST, 2)))
        await asyncio.sleep(0)
        first.cancel()
        dispatch.release.set()
        # the command runs to its end once; the duplicate gets its reply
        assert await asyncio.wait_for(second, TIMEOUT) == b"x " + PONG
        assert await service.process(b"x " + PING, (HOST, 3)) == b"x " + PONG
        assert len(dispatch.calls) == 1

    run(test)


def test_cached_reply_expires_with_the_clock() -> None:
    async def test() -> None:
        now = [1000.0]
        dispatch = Recorder()
        service = NgService(dispatch, clock=lambda: now[0])
        assert await service.process(b"t " + PING, (HOST, 1)) == b"t " + PONG
        now[0] += 59.0
        assert await service.process(b"t " + PING, (HOST, 1)) == b"t " + PONG
        assert len(dispatch.calls) == 1
        now[0] += 1.0
        assert await service.process(b"t " + PING, (HOST, 1)) == b"t " + PONG
        assert len(dispatch.calls) == 2

    run(test)


def test_json_request_gets_json_reply() -> None:
    async def test() -> None:
        dispatch = Recorder(lambda req: {"result": "ok", "call-id": req.call_id})
        server, client = await _udp(NgService(dispatch), 22402)
        try:
            client.send(b'j1 {"command": "query", "call-id": "abc"}')
            assert await client.reply() == b'j1 {"result": "ok", "call-id": "abc"}'
            client.send(b'j2 {"command": ')
            assert await client.reply() == (
                b'j2 {"result": "error", "error-reason": "Failed to parse JSON document"}'
            )
        finally:
            _close(server, client)

    run(test)


def test_no_cookie_datagram_gets_no_reply() -> None:
    async def test() -> None:
        dispatch = Recorder()
        server, client = await _udp(NgService(dispatch), 22403)
        try:
            client.send(PING)  # no space: no cookie
            client.send(b" " + PING)  # empty cookie
            client.send(b"after " + PING)
            # the first datagram back answers the third one: the others got nothing
            assert await client.reply() == b"after " + PONG
            await asyncio.sleep(0.05)
            assert client.replies.empty()
            assert len(dispatch.calls) == 1
        finally:
            _close(server, client)

    run(test)


def test_decode_errors_are_answered_with_exact_reasons() -> None:
    async def test() -> None:
        dispatch = Recorder()
        server, client = await _udp(NgService(dispatch), 22404)
        try:
            cases = [
                (b"", b"25:Invalid data (no payload)"),
                (b"d7:command", b"35:Could not decode bencode dictionary"),
                (b"xyz", b"22:Invalid NG data format"),
                (b"d4:calli1ee", b'36:Dictionary contains no key "command"'),
            ]
            for number, (body, reason) in enumerate(cases):
                cookie = b"e%d" % number
                client.send(cookie + b" " + body)
                assert await client.reply() == (
                    cookie + b" d6:result5:error12:error-reason" + reason + b"e"
                )
            assert dispatch.calls == []
        finally:
            _close(server, client)

    run(test)


def test_exception_in_dispatch_gives_generic_error_and_server_keeps_serving() -> None:
    def explode(req: Request) -> dict[str, Any]:
        if req.command == "boom":
            raise RuntimeError("secret detail that must not reach the client")
        if req.command == "unencodable":
            return {"result": "ok", "value": object()}
        return {"result": "pong"}

    async def test() -> None:
        dispatch = Recorder(explode)
        server, client = await _udp(NgService(dispatch), 22405)
        try:
            internal = b"d6:result5:error12:error-reason14:Internal errore"
            client.send(b"b1 d7:command4:boome")
            assert await client.reply() == b"b1 " + internal
            client.send(b"b2 d7:command11:unencodablee")
            assert await client.reply() == b"b2 " + internal
            client.send(b"b3 " + PING)
            assert await client.reply() == b"b3 " + PONG
            # the error reply is cached like any other
            client.send(b"b1 " + PING)
            assert await client.reply() == b"b1 " + internal
            assert len(dispatch.calls) == 3
        finally:
            _close(server, client)

    run(test)


# --- TCP -----------------------------------------------------------------------


async def _read_replies(reader: asyncio.StreamReader, count: int) -> list[bytes]:
    buffer = b""
    replies: list[bytes] = []
    while len(replies) < count:
        chunk = await asyncio.wait_for(reader.read(65536), TIMEOUT)
        assert chunk, f"connection closed after {replies!r}"
        messages, buffer, broken = split_stream(buffer + chunk)
        assert broken is None
        replies.extend(messages)
    assert buffer == b""
    return replies


async def _closed(reader: asyncio.StreamReader) -> bool:
    return await asyncio.wait_for(reader.read(65536), TIMEOUT) == b""


def test_tcp_two_messages_in_one_segment() -> None:
    async def test() -> None:
        dispatch = Recorder(lambda req: {"result": "ok", "call-id": req.call_id})
        server, port = await _tcp(NgService(dispatch), 22410)
        try:
            reader, writer = await asyncio.open_connection(HOST, port)
            writer.write(b"a1 d7:call-id1:x7:command5:querye\na2 d7:call-id1:y7:command5:querye")
            await writer.drain()
            assert await _read_replies(reader, 2) == [
                b"a1 d6:result2:ok7:call-id1:xe",
                b"a2 d6:result2:ok7:call-id1:ye",
            ]
            writer.close()
        finally:
            server.close()
            await server.wait_closed()

    run(test)


def test_tcp_one_message_split_over_several_segments() -> None:
    async def test() -> None:
        dispatch = Recorder(lambda req: {"result": "ok", "limit": req.limit})
        server, port = await _tcp(NgService(dispatch), 22411)
        try:
            reader, writer = await asyncio.open_connection(HOST, port)
            message = b"s1 d7:command4:list5:limiti1234e3:sdp10:v=0\r\ns=-\r\ne"
            # cut inside the cookie, a string length, a string, an integer, and before the end
            cuts = [1, 8, 14, 27, 30, len(message) - 1]
            for start, end in zip([0, *cuts], [*cuts, len(message)], strict=True):
                writer.write(message[start:end])
                await writer.drain()
                await asyncio.sleep(0.02)
            assert await _read_replies(reader, 1) == [b"s1 d6:result2:ok5:limiti1234ee"]
            assert len(dispatch.calls) == 1
            writer.close()
        finally:
            server.close()
            await server.wait_closed()

    run(test)


@pytest.mark.parametrize(
    ("listen", "garbage"),
    [
        (22412, b"this is not ng\n"),
        (22413, b"x" * 2000),  # over 1 KiB without a single space
        (22414, b'j {"command": "ping"}'),  # JSON is not framed on TCP
        (22415, b"c1 i12x"),  # an integer that cannot complete
    ],
)
def test_tcp_garbage_closes_the_connection(listen: int, garbage: bytes) -> None:
    async def test() -> None:
        dispatch = Recorder()
        server, port = await _tcp(NgService(dispatch), listen)
        try:
            reader, writer = await asyncio.open_connection(HOST, port)
            writer.write(b"ok " + PING)
            assert await _read_replies(reader, 1) == [b"ok " + PONG]
            writer.write(garbage)
            await writer.drain()
            assert await _closed(reader)
            writer.close()
            # the listener still serves new connections
            reader, writer = await asyncio.open_connection(HOST, port)
            writer.write(b"again " + PING)
            assert await _read_replies(reader, 1) == [b"again " + PONG]
            writer.close()
        finally:
            server.close()
            await server.wait_closed()

    run(test)


def test_tcp_exception_in_dispatch_keeps_the_connection() -> None:
    def explode(req: Request) -> dict[str, Any]:
        if req.command == "boom":
            raise ValueError("no")
        return {"result": "pong"}

    async def test() -> None:
        server, port = await _tcp(NgService(Recorder(explode)), 22416)
        try:
            reader, writer = await asyncio.open_connection(HOST, port)
            writer.write(b"t1 d7:command4:boome t2 " + PING)
            assert await _read_replies(reader, 2) == [
                b"t1 d6:result5:error12:error-reason14:Internal errore",
                b"t2 " + PONG,
            ]
            writer.close()
        finally:
            server.close()
            await server.wait_closed()

    run(test)


# --- split_stream, the TCP framer, without sockets -------------------------------


def test_split_stream_at_every_cut() -> None:
    stream = b"c1 d3:sdp5:v=0\r\n4:listli-5ei0ee1:dde7:command5:offere  c2 " + PING
    whole = [b"c1 d3:sdp5:v=0\r\n4:listli-5ei0ee1:dde7:command5:offere", b"c2 " + PING]
    assert split_stream(stream) == (whole, b"", None)
    for cut in range(len(stream) + 1):
        first, rest, _ = split_stream(stream[:cut])
        second, left, _ = split_stream(rest + stream[cut:])
        assert first + second == whole, cut
        assert left == b""


def test_split_stream_keeps_incomplete_tail() -> None:
    assert split_stream(b"") == ([], b"", None)
    assert split_stream(b"\r\n  cookie") == ([], b"cookie", None)
    assert split_stream(b"a " + PING + b"b d7:comm") == ([b"a " + PING], b"b d7:comm", None)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"c xyz", "unexpected byte 0x78 at offset 0"),
        (b"c i12x", "bad integer at offset 0"),
        (b"c d01:ae", "bad string length at offset 1"),
        (b'c {"a": 1}', "JSON is not accepted on ng TCP streams"),
    ],
)
def test_split_stream_garbage(data: bytes, reason: str) -> None:
    assert split_stream(data)[2] == reason


def test_split_stream_answers_what_precedes_garbage() -> None:
    messages, _, broken = split_stream(b"a " + PING + b"c xyz")
    assert messages == [b"a " + PING]
    assert broken == "unexpected byte 0x78 at offset 0"


def test_split_stream_messages_are_what_bencode_decodes() -> None:
    message = b"c " + bencode.encode({"command": "offer", "sdp": "v=0\r\n", "flags": ["a b"]})
    assert split_stream(message * 3) == ([message] * 3, b"", None)
