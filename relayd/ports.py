"""Media port allocation: RTP on an even port, RTCP on the next one, random order.

Each local address has its own pool over ``port-min``..``port-max`` (sockets
are bound to the address, so every address has the whole range). A pool hands
out *pairs* (an even port and the odd one above it) so that RTP/RTCP always
sit together, as rtpengine does; a stream with rtcp-mux uses only the even port
of its pair. Order is random to make port prediction harder.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field

__all__ = ["PortPool", "PortsExhausted"]


class PortsExhausted(RuntimeError):
    """No free pair is left; the ng reply is "Ran out of ports"."""


@dataclass
class PortPool:
    port_min: int
    port_max: int
    # a PRNG seeded from the OS: unpredictable ports without a system call per pick
    rng: random.Random = field(default_factory=lambda: random.Random(os.urandom(16)))
    _free: list[int] = field(init=False)
    _used: set[int] = field(init=False, default_factory=set)
    # released pairs, handed out again only once every pair in _free has been: their
    # sockets may still be open for a moment in a worker that has not read the call's
    # Drop yet, and binding them then would fail
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

    def release(self, port: int) -> None:
        if port in self._used:
            self._used.remove(port)
            self._cooling.append(port)
