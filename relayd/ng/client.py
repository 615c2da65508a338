"""A small blocking ng client (UDP or TCP), used by relayctl, tests and benchmarks."""

from __future__ import annotations

import itertools
import json
import os
import socket
from typing import Any

from relayd.ng import bencode

__all__ = ["NgClient", "NgTimeout"]


class NgTimeout(TimeoutError):
    """No reply arrived within the client's timeout (after its retries)."""


class NgClient:
    """Sends ``cookie SP dict`` requests and returns the decoded reply dict.

    UDP by default, retrying with the same cookie as Kamailio does; ``tcp=True``
    uses one stream connection for all requests.
    """

    def __init__(
        self,
        address: tuple[str, int],
        *,
        timeout: float = 2.0,
        retries: int = 1,
        tcp: bool = False,
        use_json: bool = False,
    ) -> None:
        self.address = address
        self.timeout = timeout
        self.retries = retries
        self.use_json = use_json
        # random, so a new client never reuses a cookie still in the reply cache
        self._prefix = f"{os.getpid()}_{os.urandom(4).hex()}"
        self._counter = itertools.count()
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        kind = socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM
        self._sock = socket.socket(family, kind)
        self._sock.settimeout(timeout)
        self._tcp = tcp
        self._buffer = b""
        if tcp:
            self._sock.connect(address)

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> NgClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def next_cookie(self) -> str:
        return f"{self._prefix}_{next(self._counter)}"

    def call(self, command: str, **keys: Any) -> dict[str, Any]:
        """``call("offer", sdp=..., call_id=...)``: underscores become hyphens."""
        message: dict[str, Any] = {"command": command}
        message.update({k.replace("_", "-"): v for k, v in keys.items()})
        return self.request(message)

    def request(self, message: dict[str, Any], cookie: str | None = None) -> dict[str, Any]:
        cookie = cookie or self.next_cookie()
        raw = self.request_raw(cookie.encode() + b" " + self.encode_body(message), cookie)
        return self.decode_body(raw)

    def encode_body(self, message: dict[str, Any]) -> bytes:
        if self.use_json:
            return json.dumps(message).encode()
        return bencode.encode(message)

    @staticmethod
    def decode_body(body: bytes) -> dict[str, Any]:
        value = json.loads(body) if body[:1] == b"{" else bencode.decode(body)
        if not isinstance(value, dict):
            raise ValueError("reply is not a dictionary")
        return value

    def request_raw(self, datagram: bytes, cookie: str) -> bytes:
        """Send an already framed message; return the reply body for ``cookie``."""
        if self._tcp:
            self._sock.sendall(datagram)
            return self._read_tcp(cookie)
        for _attempt in range(self.retries + 1):
            self._sock.sendto(datagram, self.address)
            try:
                while True:
                    data = self._sock.recv(1 << 20)
                    got, _, body = data.partition(b" ")
                    if got.decode(errors="replace") == cookie:
                        return body
            except TimeoutError:
                continue
        raise NgTimeout(f"no reply from {self.address[0]}:{self.address[1]}")

    def _read_tcp(self, cookie: str) -> bytes:
        while True:
            head, sep, rest = self._buffer.partition(b" ")
            if sep:
                try:
                    _, end = bencode.decode_prefix(rest, 0)
                except bencode.BencodeError:
                    end = -1
                if end >= 0:
                    self._buffer = rest[end:]
                    if head.decode(errors="replace") == cookie:
                        return rest[:end]
                    continue
            try:
                chunk = self._sock.recv(1 << 20)
            except TimeoutError:
                raise NgTimeout(f"no reply from {self.address[0]}:{self.address[1]}") from None
            if not chunk:
                raise ConnectionError("ng connection closed")
            self._buffer += chunk
