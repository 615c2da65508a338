"""Cumulative counters that outlive calls: relayed traffic, ng requests, worker rates. Pure.

Stream counters live in the call model and go with the call; Prometheus
counters must only ever grow. The supervisor feeds these at the moment a
figure changes (a worker's stats report, a kernel counter read, an ng reply),
so a call that ends takes nothing away.

*Path* is ``userspace`` (a worker forwarded it) or ``kernel`` (nftables did).
*Direction* names who sent the packets: ``caller_to_callee`` for the party
that made the first offer, ``callee_to_caller`` for the party that answered.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Literal, get_args

from relayd.calls.model import Call, Stream

__all__ = [
    "DIRECTIONS",
    "PATHS",
    "Counters",
    "Direction",
    "NgStats",
    "RateMeter",
    "Traffic",
    "TrafficPath",
    "direction_of",
]

TrafficPath = Literal["userspace", "kernel"]
Direction = Literal["caller_to_callee", "callee_to_caller"]
PATHS: tuple[TrafficPath, ...] = get_args(TrafficPath)
DIRECTIONS: tuple[Direction, ...] = get_args(Direction)


def direction_of(call: Call, stream: Stream) -> Direction:
    """Which way the packets arriving on ``stream`` go."""
    for party in call.parties():
        for media in [*party.medias, *(m for ms in party.other_dialogues.values() for m in ms)]:
            if any(s is stream for s in media.streams):
                return "callee_to_caller" if party.answerer else "caller_to_callee"
    return "caller_to_callee"


@dataclass
class Traffic:
    """Packets, bytes and errors per (path, direction)."""

    packets: Counter[tuple[TrafficPath, Direction]] = field(default_factory=Counter)
    bytes: Counter[tuple[TrafficPath, Direction]] = field(default_factory=Counter)
    errors: Counter[tuple[TrafficPath, Direction]] = field(default_factory=Counter)

    def add(
        self, path: TrafficPath, direction: Direction, packets: int, size: int, errors: int = 0
    ) -> None:
        key = (path, direction)
        self.packets[key] += max(packets, 0)
        self.bytes[key] += max(size, 0)
        self.errors[key] += max(errors, 0)

    def total(self, counter: Counter[tuple[TrafficPath, Direction]], path: TrafficPath) -> int:
        return sum(v for (p, _), v in counter.items() if p == path)


@dataclass
class NgStats:
    """ng requests per (proxy, command) with their handling time, errors per proxy and command."""

    requests: Counter[tuple[str, str]] = field(default_factory=Counter)
    seconds: dict[tuple[str, str], float] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)  # by proxy
    command_errors: Counter[str] = field(default_factory=Counter)  # by command

    def record(self, proxy: str, command: str, ok: bool, seconds: float) -> None:
        self.requests[(proxy, command)] += 1
        self.seconds[(proxy, command)] = self.seconds.get((proxy, command), 0.0) + seconds
        if not ok:
            self.errors[proxy] += 1
            self.command_errors[command] += 1


@dataclass
class RateMeter:
    """Per-second rates from cumulative values sampled by a timer."""

    last: dict[str, tuple[float, float]] = field(default_factory=dict)
    rates: dict[str, float] = field(default_factory=dict)

    def sample(self, name: str, value: float, now: float) -> None:
        previous = self.last.get(name)
        self.last[name] = (now, value)
        if previous is not None and now > previous[0]:
            self.rates[name] = max(value - previous[1], 0.0) / (now - previous[0])

    def rate(self, name: str) -> float:
        return self.rates.get(name, 0.0)


@dataclass
class Counters:
    """relayd's cumulative figures since start: traffic, ng requests, rates, Homer."""

    traffic: Traffic = field(default_factory=Traffic)
    ng: NgStats = field(default_factory=NgStats)
    rates: RateMeter = field(default_factory=RateMeter)
    homer_sent: int = 0
    homer_dropped: int = 0
