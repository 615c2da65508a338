"""One shared copy of values that every call holds again (pure).

Calls of one deployment keep the same few codecs, media types and transports;
a table of the distinct ones lets all calls point at one copy. Bounded, since
the values come from the network: past the limit a new value is used as it is
(:class:`Shared`), or the table starts over (:class:`Recurring`, values made
from a key: SDP lines, the rewrite's own lines, a codec's lines).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

__all__ = ["Recurring", "Shared"]

T = TypeVar("T", bound=Hashable)
K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Shared(Generic[T]):
    __slots__ = ("_limit", "_table")

    def __init__(self, limit: int) -> None:
        self._table: dict[T, T] = {}
        self._limit = limit

    def __call__(self, value: T) -> T:
        """The copy of ``value`` that is kept (``value`` itself the first time)."""
        known = self._table.get(value)
        if known is not None:
            return known
        if len(self._table) < self._limit:
            self._table[value] = value
        return value


class Recurring(Generic[K, V]):
    """Values made once from a key and shared (SDP lines are never changed once made), at
    most ``limit`` of them: when full the table starts over, so keys that do not come again
    (another call's address, a transcoded call's own codecs, lines from the network) cannot
    fill it for good. ``get`` is the dictionary's own: it is asked for every line of every
    SDP."""

    __slots__ = ("_values", "get", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._values: dict[K, V] = {}
        self.get = self._values.get

    def add(self, key: K, value: V) -> V:
        """Keep ``value`` for ``key``; returns it."""
        if len(self._values) >= self.limit:
            self._values.clear()  # the same dictionary: ``get`` stays bound to it
        self._values[key] = value
        return value

    def __len__(self) -> int:
        return len(self._values)
