"""Logical interfaces: name → local addresses (with advertised addresses), by family."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from relayd.calls.model import LocalAddress
from relayd.config import InterfaceSpec

__all__ = ["Interfaces", "resolve"]


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

    def select(self, name: str, family: str) -> LocalAddress:
        """The address of interface ``name`` (default if unknown) in ``family`` if it has one."""
        candidates = self.by_name.get(name) or self.by_name[self.default]
        for addr in candidates:
            if addr.family == family:
                return addr
        return candidates[0]

    def has(self, name: str) -> bool:
        return name in self.by_name

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
