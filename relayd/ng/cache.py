"""Reply cache keyed by cookie, so retransmitted requests get the first reply.

Two generations of ``lifetime`` seconds each, as rtpengine keeps them: a reply
lives between one and two lifetimes. Pure: the caller passes the clock.
"""

from __future__ import annotations

__all__ = ["ReplyCache"]


class ReplyCache:
    def __init__(self, lifetime: float = 30.0) -> None:
        self.lifetime = lifetime
        self._current: dict[str, bytes] = {}
        self._previous: dict[str, bytes] = {}
        self._swapped_at: float | None = None

    def _age(self, now: float) -> None:
        if self._swapped_at is None:
            self._swapped_at = now
        elif now - self._swapped_at >= self.lifetime:
            expired = now - self._swapped_at >= 2 * self.lifetime
            self._previous = {} if expired else self._current
            self._current = {}
            self._swapped_at = now

    def get(self, cookie: str, now: float) -> bytes | None:
        self._age(now)
        reply = self._current.get(cookie)
        if reply is None:
            reply = self._previous.get(cookie)
        return reply

    def put(self, cookie: str, reply: bytes, now: float) -> None:
        self._age(now)
        self._current[cookie] = reply

    def __len__(self) -> int:
        return len(self._current) + len(self._previous)
