"""Media port allocation: RTP on an even port, RTCP on the next one, random order.

Each local address has its own pool over ``port-min``..``port-max`` (sockets
are bound to the address, so every address has the whole range). A pool hands
out *pairs* (an even port and the odd one above it) so that RTP/RTCP always
sit together, as rtpengine does; a stream with rtcp-mux uses only the even port
of its pair. Order is random to make port prediction harder.
:class:`PortAllocator` cuts the range into one slice per worker and binds each
pair it hands out through a :class:`Binder` (relayd's binds real sockets). A
pair whose bind fails because another program holds it stays out of use; one whose
bind fails because our own socket there is still closing (a worker has not read
the ``Close`` of the call that had it) goes back to cool off and is tried again.

Each worker holds the sockets of its slice, one descriptor per port, so a worker can
hold only as many as its descriptor limit allows: with a ``budget`` (sockets per
worker), a pair that would take a worker past it is refused as "Ran out of ports",
and so is one whose bind finds no descriptor left (:class:`DescriptorsExhausted`), the
pair going back to the pool rather than out of use: a host that reaches its limit
answers the calls beyond it and keeps every other one.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["Binder", "DescriptorsExhausted", "PortAllocator", "PortPool", "PortsExhausted"]


class PortsExhausted(RuntimeError):
    """No free pair is left; the ng reply is "Ran out of ports"."""


class DescriptorsExhausted(PortsExhausted):
    """A socket could not be made for want of descriptors (the process's or the system's
    limit), not because another program holds the port: the pair stays in the pool."""


@dataclass
class PortPool:
    """The port pairs of one local address in one worker's slice, handed out in random order.

    Released pairs cool off until every free one has been handed out (see ``_cooling``).
    """

    port_min: int
    port_max: int
    # a PRNG seeded from the OS: unpredictable ports without a system call per pick
    rng: random.Random = field(default_factory=lambda: random.Random(os.urandom(16)))
    _free: list[int] = field(init=False)
    _used: set[int] = field(init=False, default_factory=set)
    # released pairs, handed out again only once every pair in _free has been: their
    # sockets may still be open for a moment in a worker that has not read their
    # Close yet (and a port not reused at once makes stray late packets less likely)
    _cooling: list[int] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        first = self.port_min + (self.port_min & 1)
        self._free = list(range(first, self.port_max, 2))  # p and p+1 both <= port_max
        self.rng.shuffle(self._free)

    @property
    def capacity(self) -> int:
        return len(self._free) + len(self._cooling) + len(self._used)

    @property
    def in_use(self) -> int:
        return len(self._used)

    @property
    def free(self) -> int:
        """Pairs that can still be handed out (those cooling off included)."""
        return len(self._free) + len(self._cooling)

    def allocate(self) -> int:
        """Reserve a pair; return its even (RTP) port."""
        if not self._free:
            if not self._cooling:
                raise PortsExhausted("Ran out of ports")
            self._free, self._cooling = self._cooling, []
            self.rng.shuffle(self._free)
        # popping from a shuffled list is O(1) and keeps the order random
        port = self._free.pop()
        self._used.add(port)
        return port

    def reserve(self, port: int) -> bool:
        """Take a specific pair (a restored call); False if it is not free."""
        if port in self._used or not self.port_min <= port < self.port_max or port & 1:
            return False
        for pairs in (self._free, self._cooling):
            if port in pairs:
                pairs.remove(port)
                self._used.add(port)
                return True
        return False

    def take_free(self, port: int) -> bool:
        """Take a specific pair if it is free, not while it cools down after a release."""
        if port in self._used or port not in self._free:
            return False
        self._free.remove(port)
        self._used.add(port)
        return True

    def release(self, port: int) -> bool:
        """Give a pair back (it cools off); False if it was not handed out."""
        if port not in self._used:
            return False
        self._used.remove(port)
        self._cooling.append(port)
        return True


class Binder(Protocol):
    """Opens the sockets of a port pair (the shell binds real sockets)."""

    def bind(self, address: str, port: int) -> bool:
        """True when both are bound; False when the port is taken (another pair is tried);
        raises :class:`DescriptorsExhausted` when no descriptor is left for them."""
        ...

    def busy(self, address: str, port: int) -> bool:
        """A bind of the pair failed on a socket of our own that is still being closed."""
        ...

    def release(self, address: str, port: int) -> None: ...


class PortAllocator:
    """Port pairs per local address, the range cut into one disjoint slice per worker.

    With a :class:`Binder`, a pair whose sockets cannot be bound (the port is
    taken by another program) is skipped and kept out of use; one that is still
    ``busy`` with our own closing socket is skipped and given back to cool off.
    ``budget``: the most sockets (two per pair) one worker's slice may have handed out
    at once, its descriptor limit less what the worker needs besides (None: no limit);
    ``on_full(worker)`` hears of each pair refused for it.
    """

    def __init__(
        self,
        port_min: int,
        port_max: int,
        workers: int = 1,
        binder: Binder | None = None,
        *,
        budget: int | None = None,
        on_full: Callable[[int], None] | None = None,
    ) -> None:
        self.port_min = port_min
        self.port_max = port_max
        self.workers = max(workers, 1)
        self.binder = binder
        first = port_min + (port_min & 1)
        pairs = max((port_max - first + 1) // 2, 0)
        share, extra = divmod(pairs, self.workers)
        self.slices: list[tuple[int, int]] = []
        start = first
        for w in range(self.workers):
            count = share + (1 if w < extra else 0)
            self.slices.append((start, start + 2 * count - 1))
            start += 2 * count
        self.pools: dict[tuple[str, int], PortPool] = {}
        self.budget = budget
        self.on_full = on_full
        self.sockets = [0] * self.workers  # per worker slice: sockets handed out (2 a pair)

    def pool(self, address: str, worker: int = 0) -> PortPool:
        key = (address, worker % self.workers)
        pool = self.pools.get(key)
        if pool is None:
            low, high = self.slices[key[1]]
            pool = self.pools[key] = PortPool(low, high)
        return pool

    def has_free(self, address: str, worker: int = 0) -> bool:
        """``address`` has a pair left to hand out in ``worker``'s slice."""
        return self.pool(address, worker).free > 0

    def worker_of(self, port: int) -> int:
        for index, (low, high) in enumerate(self.slices):
            if low <= port <= high:
                return index
        return 0

    def _room(self, worker: int) -> int:
        """``worker``'s slice; PortsExhausted if one more pair would take it past the budget."""
        slot = worker % self.workers
        if self.budget is not None and self.sockets[slot] + 2 > self.budget:
            if self.on_full is not None:
                self.on_full(slot)
            raise PortsExhausted("descriptor budget")
        return slot

    def allocate(self, address: str, worker: int = 0) -> int:
        slot = self._room(worker)
        pool = self.pool(address, worker)
        binder = self.binder
        if binder is None:
            port = pool.allocate()
            self.sockets[slot] += 2
            return port
        closing: list[int] = []  # given back once this allocation is done, not retried in it
        try:
            while True:
                port = pool.allocate()  # raises PortsExhausted
                try:
                    bound = binder.bind(address, port)
                except DescriptorsExhausted:
                    closing.append(port)  # no fault of the port's: back with the others
                    raise
                if bound:
                    self.sockets[slot] += 2
                    return port
                if binder.busy(address, port):
                    closing.append(port)
                # else left reserved: a port another program holds is not retried
        finally:
            for port in closing:
                pool.release(port)

    def allocate_like(self, address: str, port: int, worker: int = 0) -> int:
        """A pair on ``address`` with the same number as ``port`` (rtpengine binds one port
        number on every address of a logical interface), else any free pair."""
        slot = self._room(worker)
        pool = self.pool(address, worker)
        if pool.take_free(port):
            try:
                bound = self.binder is None or self.binder.bind(address, port)
            except DescriptorsExhausted:
                pool.release(port)
                raise
            if bound:
                self.sockets[slot] += 2
                return port
            if self.binder is not None and self.binder.busy(address, port):
                pool.release(port)
        return self.allocate(address, worker)

    def claim(self, pairs: Iterable[tuple[str, int]]) -> int | None:
        """Take these pairs back (a call restored from the journal): each reserved in its
        pool and bound. All or nothing: None (and nothing kept) when one is taken, will not
        bind or would take its worker past the budget; else the worker whose slice they
        are in."""
        claimed: list[tuple[str, int]] = []
        worker = 0
        for address, port in pairs:
            worker = self.worker_of(port)
            pool = self.pool(address, worker)
            reserved = ok = False
            try:
                self._room(worker)
                reserved = ok = pool.reserve(port)  # False: another call has it
                if ok and self.binder is not None:
                    ok = self.binder.bind(address, port)
            except PortsExhausted:  # the budget, or no descriptor for the bind
                ok = False
            if not ok:
                if reserved:
                    pool.release(port)
                for done in claimed:
                    self.release(*done)
                return None
            self.sockets[worker] += 2
            claimed.append((address, port))
        return worker

    def release(self, address: str, port: int) -> None:
        if self.binder is not None:
            self.binder.release(address, port)
        worker = self.worker_of(port)
        if self.pool(address, worker).release(port):
            self.sockets[worker] -= 2
