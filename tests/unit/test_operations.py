"""Pure pieces of the operations shell: what a reload applies, how HTTP requests are answered."""

from __future__ import annotations

import asyncio

from relayd.config import load, reloaded
from relayd.ops.httpd import Routes, respond


def test_reload_applies_run_time_keys_and_keeps_the_rest() -> None:
    old = load(["--config-file", "none", "--timeout", "60", "--port-min", "30000"])
    fresh = load(
        [
            "--config-file",
            "none",
            "--timeout",
            "20",
            "--log-level",
            "7",
            "--port-min",
            "31000",
            "--max-sessions",
            "5",
            "--listen-http",
            "127.0.0.1:2225",
        ]
    )
    running, applied, restart = reloaded(old, fresh)
    assert applied == {"log-level": [6, 7], "timeout": [60, 20], "max-sessions": [-1, 5]}
    assert restart == ["port-min", "listen-http"]
    assert (running.timeout, running.log_level, running.max_sessions) == (20, 7, 5)
    assert (running.port_min, running.listen_http) == (30000, ())
    assert reloaded(running, running)[1:] == ({}, [])


def page(request: bytes, routes: Routes | None = None) -> bytes:
    """The response to a request head; a page from a coroutine is awaited."""
    answer = respond(ROUTES if routes is None else routes, request)
    if isinstance(answer, bytes):
        return answer

    async def wait() -> bytes:
        return await answer

    return asyncio.run(wait())


ROUTES: Routes = {
    "/metrics": lambda: ("text/plain; version=0.0.4", "a 1\n"),
    "/ping": lambda: ("text/plain", "pong"),
}


def test_http_get_and_head() -> None:
    assert page(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n") == (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: 4\r\n"
        b"Connection: close\r\n\r\na 1\n"
    )
    assert page(b"HEAD /ping?x=1 HTTP/1.0\r\n\r\n").endswith(
        b"Content-Length: 4\r\nConnection: close\r\n\r\n"
    )


def test_a_page_from_a_coroutine_is_awaited() -> None:
    async def late() -> tuple[str, str]:
        return ("text/plain", "merged")

    routes: Routes = {"/metrics": late}
    assert page(b"GET /metrics HTTP/1.1\r\n\r\n", routes).endswith(b"\r\n\r\nmerged")


def test_http_errors() -> None:
    assert page(b"GET /nope HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 404 Not Found")
    assert page(b"POST /metrics HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 405")
    assert page(b"garbage\r\n\r\n").startswith(b"HTTP/1.1 400 Bad Request")
