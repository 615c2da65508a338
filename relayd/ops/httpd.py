"""A minimal HTTP/1.1 listener for ``/metrics`` and ``/ping`` on ``listen-http``.

Also on ``prometheus-listen``. GET and HEAD only, one request per connection,
``Connection: close``: what a Prometheus scraper and a health check need, with
no web framework. The body is produced by a plain function called on the event
loop, so a scrape sees a consistent snapshot of the supervisor state; or by a
coroutine (the front of a sharded relayd asks every shard).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Awaitable, Callable

from relayd.log import get_logger

__all__ = ["Page", "Routes", "respond", "serve_http"]

log = get_logger("relayd.http")

Page = tuple[str, str]  # (content type, body)
Routes = dict[str, Callable[[], Page | Awaitable[Page]]]  # path -> the page, or a coroutine

_HEADER_LIMIT = 16384
_TIMEOUT = 5.0
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}


def _response(status: int, content_type: str, body: bytes, head: bool = False) -> bytes:
    lines = [
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Connection: close",
        "",
        "",
    ]
    return "\r\n".join(lines).encode() + (b"" if head else body)


def respond(routes: Routes, request: bytes) -> bytes | Awaitable[bytes]:
    """The whole response to one request head (pure), or a coroutine that makes it when
    the route's page comes from one."""
    line = request.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        return _response(400, "text/plain", b"bad request\n")
    method, target, _ = parts
    if method not in ("GET", "HEAD"):
        return _response(405, "text/plain", b"method not allowed\n")
    handler = routes.get(target.split("?", 1)[0])
    if handler is None:
        return _response(404, "text/plain", b"not found\n", method == "HEAD")
    page = handler()
    head = method == "HEAD"
    if inspect.isawaitable(page):
        return _later(page, head)
    content_type, body = page
    return _response(200, content_type, body.encode(), head)


async def _later(page: Awaitable[Page], head: bool) -> bytes:
    content_type, body = await page
    return _response(200, content_type, body.encode(), head)


async def serve_http(routes: Routes, host: str, port: int) -> asyncio.Server:
    """Listen for HTTP on ``host``:``port``: one request head per connection, answered by
    :func:`respond`, then the connection closed. The head must come within 5 s and 16 KiB."""

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _TIMEOUT)
            answer = respond(routes, head)
            if not isinstance(answer, bytes):
                answer = await answer
            writer.write(answer)
            await writer.drain()
        except (
            TimeoutError,
            ConnectionError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
        ):
            pass
        except Exception:
            log.exception("http.failed")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    return await asyncio.start_server(client, host, port, limit=_HEADER_LIMIT, reuse_address=True)
