"""One shared copy of values that every call holds again (pure).

Calls of one deployment keep the same few codecs, media types and transports;
a table of the distinct ones lets all calls point at one copy. Bounded, since
the values come from the network: past the limit a new value is used as it is.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

__all__ = ["Shared"]

T = TypeVar("T", bound=Hashable)


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
