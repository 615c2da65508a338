"""Logical interfaces: name → local addresses (with advertised addresses), by family.

Round-robin pools, as rtpengine's: interfaces named ``BASE:SUFFIX`` (``pub:1``, ``pub:2``)
can still be named each on its own, and ``BASE`` (``pub``) names them all: a party that asks
for ``pub`` gets the next of them in turn that has a free port pair on each of its addresses,
and keeps it for the rest of the call. Where the first interface configured has such a name,
a party that names none takes its pool too. ``round-robin-calls`` (rtpengine's legacy
keyword) is a pool of every interface. That is how an operator spreads more calls than one
address has ports over several addresses.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from relayd.calls.model import LocalAddress
from relayd.config import InterfaceSpec

__all__ = ["ROUND_ROBIN_CALLS", "Interfaces", "resolve"]

ROUND_ROBIN_CALLS = "round-robin-calls"
"""rtpengine's legacy ``direction`` keyword: the round-robin pool of every interface."""


class Interfaces:
    """The configured logical interfaces; the first one named is the default."""

    def __init__(self, addresses: Sequence[LocalAddress]) -> None:
        if not addresses:
            raise ValueError("no usable interface address")
        self.by_name: dict[str, list[LocalAddress]] = {}
        for addr in addresses:
            self.by_name.setdefault(addr.interface, []).append(addr)
        self.default = addresses[0].interface
        self.all = list(addresses)
        # round-robin pools: base name → its interfaces in configuration order, and where
        # each pool's turn is (the index of the interface tried first next time)
        self.pools: dict[str, list[str]] = {}
        for name in self.by_name:
            base, colon, _ = name.partition(":")
            if colon and base:
                self.pools.setdefault(base, []).append(name)
        self.pools[ROUND_ROBIN_CALLS] = list(self.by_name)
        base, colon, _ = self.default.partition(":")
        self._default_pool = base if colon and base else None
        # each pool's turn per address family: the index of the member tried first next time
        self._turn: dict[tuple[str, str], int] = {}

    def select(self, name: str, family: str) -> LocalAddress:
        """The address of interface ``name`` (default if unknown) in ``family`` if it has one."""
        candidates = self.by_name.get(name) or self.by_name[self.default]
        for addr in candidates:
            if addr.family == family:
                return addr
        return candidates[0]

    def has(self, name: str) -> bool:
        """``name`` is an interface or a round-robin pool (what ``direction`` may name)."""
        return name in self.by_name or name in self.pools

    def pool_of(self, name: str) -> str | None:
        """The round-robin pool that ``name`` asks for: its own (a base name, or
        ``round-robin-calls``), or, for no name, the default interface's where that is
        named ``BASE:SUFFIX``; None where ``name`` is one interface."""
        if not name:
            return self._default_pool
        if name in self.by_name:
            return None
        return name if name in self.pools else None

    def member(self, name: str, interface: str) -> bool:
        """``interface`` is what ``name`` (an interface, a pool, or none: the default) asks for:
        a party that has it keeps it."""
        pool = self.pool_of(name)
        if pool is None:
            return interface == (name if name in self.by_name else self.default)
        return interface in self.pools[pool]

    def choose(
        self,
        name: str,
        family: str,
        room: Callable[[LocalAddress], bool],
        *,
        take_turn: bool = True,
    ) -> LocalAddress:
        """The address in ``family`` (or the first) of the interface ``name`` asks for: the
        interface itself, or the next of its round-robin pool in turn whose addresses all
        have ``room`` (a free port pair), among those with an address in ``family`` where
        any has one (each family takes its turns on its own). Where none has room, the one
        whose turn it is all the same (its allocation then runs out of ports, as it must).
        ``take_turn=False`` only looks: the pool's turn stays where it is."""
        pool = self.pool_of(name)
        if pool is None:
            return self.select(name or self.default, family)
        members = self.pools[pool]
        in_family = [m for m in members if any(a.family == family for a in self.by_name[m])]
        members = in_family or members
        start = self._turn.get((pool, family), 0)
        for step in range(len(members)):
            candidate = members[(start + step) % len(members)]
            if all(room(a) for a in self.by_name[candidate]):
                if take_turn:
                    self._turn[pool, family] = (start + step + 1) % len(members)
                return self.select(candidate, family)
        return self.select(members[start % len(members)], family)

    def families(self, name: str) -> set[str]:
        return {a.family for a in self.by_name.get(name) or self.by_name[self.default]}


def resolve(specs: Sequence[InterfaceSpec], devices: Mapping[str, Sequence[str]]) -> Interfaces:
    """Turn ``interface`` lines into addresses; device names are looked up in ``devices``."""
    addresses: list[LocalAddress] = []
    for spec in specs:
        if spec.local == "any":
            # every address of every device, loopback and IPv6 link-local excepted
            found = [
                a
                for name, addrs in devices.items()
                if name != "lo"
                for a in addrs
                if not a.startswith("fe80:") and not a.startswith("127.") and a != "::1"
            ]
            if not found:
                raise ValueError("interface 'any' found no address")
            addresses.extend(LocalAddress(spec.name, a, spec.advertised or a) for a in found)
        elif spec.is_device:
            # an IPv6 link-local address cannot be bound without its scope
            named = [a for a in devices.get(spec.local, ()) if not a.startswith("fe80:")]
            if not named:
                raise ValueError(f"interface {spec.local!r} has no address")
            addresses.extend(LocalAddress(spec.name, a, spec.advertised or a) for a in named)
        else:
            addresses.append(LocalAddress(spec.name, spec.local, spec.advertised or spec.local))
    return Interfaces(addresses)
