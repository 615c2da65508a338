"""Reply cache keyed by cookie, so retransmitted requests get the first reply.

Two generations of ``lifetime`` seconds each, as rtpengine keeps them: a reply
lives between one and two lifetimes. Pure: the caller passes the clock.
"""

from __future__ import annotations

__all__ = ["ReplyCache"]


class ReplyCache:
    """The replies of the last one to two ``lifetime`` periods, by cookie: a retransmitted
    request gets its first reply again instead of running a second time."""

    def __init__(self, lifetime: float = 30.0) -> None:
        self.lifetime = lifetime
        self._current: dict[str, bytes] = {}
        self._previous: dict[str, bytes] = {}
        self._swapped_at: float | None = None

    def _age(self, now: float) -> None:
        if self._swapped_at is None:
            self._swapped_at = now
            return
        elapsed = now - self._swapped_at
        if elapsed >= self.lifetime:
            self._previous = {} if elapsed >= 2 * self.lifetime else self._current
            self._current = {}
            # Swap on the generation boundary, not at ``now``: a swap that only
            # happens when the next request arrives must not extend the lives
            # of the replies it moves to the old generation.
            self._swapped_at += (elapsed // self.lifetime) * self.lifetime

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
