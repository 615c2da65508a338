"""The media port range against the kernel's ephemeral ports.

Any socket on the host that sends without binding first (a DNS lookup, a HEP or syslog
sender, an ng client, a test) gets its source port from ``net.ipv4.ip_local_port_range``
(32768-60999 by default, also for IPv6), skipping only ``net.ipv4.ip_local_reserved_ports``.
rtpengine's usual media range 30000-40000 overlaps it, so such a socket can hold a media
port. A new call then only takes another pair (the allocator skips a port that will not
bind), but a call whose ports are fixed cannot move: one restored from the journal or
Redis, or a peer's call that a standby holds for a takeover. Reserving the media range
keeps the kernel from handing its ports out; relayd's own explicit binds are not affected.
Both settings are per network namespace.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["EphemeralOverlap", "ephemeral_overlap", "parse_ports"]

PROC = Path("/proc/sys/net/ipv4")


@dataclass(frozen=True, slots=True)
class EphemeralOverlap:
    """``ports`` of the media range that the kernel may give out as source ports, whose
    range is ``low``-``high``."""

    ports: int
    low: int
    high: int


def parse_ports(text: str) -> list[tuple[int, int]]:
    """``ip_local_reserved_ports``' list (``"30000-30002,31000"``) as inclusive ranges;
    what does not read as one is skipped."""
    ranges = []
    for item in text.replace("\n", ",").split(","):
        low, _, high = item.strip().partition("-")
        try:
            first = int(low)
            last = int(high) if high else first
        except ValueError:
            continue
        if first <= last:
            ranges.append((first, last))
    return ranges


def ephemeral_overlap(port_min: int, port_max: int, proc: Path = PROC) -> EphemeralOverlap | None:
    """The ports of ``port_min``-``port_max`` in this namespace's ephemeral range and not
    reserved; None when there are none, or the settings cannot be read (not Linux)."""
    try:
        low, high = (int(v) for v in (proc / "ip_local_port_range").read_text().split())
        reserved_text = (proc / "ip_local_reserved_ports").read_text()
    except (OSError, ValueError):
        return None
    first, last = max(port_min, low), min(port_max, high)
    if first > last:
        return None
    taken = set(range(first, last + 1))
    for r_low, r_high in parse_ports(reserved_text):
        taken.difference_update(range(max(r_low, first), min(r_high, last) + 1))
    return EphemeralOverlap(len(taken), low, high) if taken else None
