"""The totals ng keeps over the calls it served, and the ``statistics`` reply built from them.

The reply is rtpengine 10.5's tree (as ``rtpengine-ctl list jsonstats``). Pure.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from relayd.calls.model import Call
from relayd.calls.ports import PortAllocator

__all__ = ["Totals", "statistics_reply"]


@dataclass
class Totals:
    """What happened to the calls since start-up (rtpengine's ``totalstatistics``)."""

    managed: int = 0
    rejected: int = 0
    offer_timeouts: int = 0
    final_timeouts: int = 0
    timeouts: int = 0
    silent_timeouts: int = 0
    regular_terminated: int = 0
    forced_terminated: int = 0
    call_duration: float = 0.0
    commands: Counter[str] = field(default_factory=Counter)
    errors: int = 0

    @property
    def finished(self) -> int:
        """Calls ended for any reason (the ones ``call_duration`` adds up)."""
        return (
            self.regular_terminated
            + self.forced_terminated
            + self.offer_timeouts
            + self.final_timeouts
            + self.timeouts
            + self.silent_timeouts
        )


_COMMAND_COUNTERS = {
    "ping": "totalpingcount",
    "offer": "totaloffercount",
    "answer": "totalanswercount",
    "delete": "totaldeletecount",
    "query": "totalquerycount",
    "list": "totallistcount",
    "statistics": "totalstatscount",
}


def _fixed(value: float) -> str:
    return f"{value:.6f}"


def statistics_reply(
    calls: Mapping[str, Call], totals: Totals, ports: PortAllocator, started: float, now: float
) -> dict[str, Any]:
    """The ``statistics`` reply: current calls, totals since ``started``, ports in use."""
    sessions = len(calls)
    finished = totals.finished
    average = totals.call_duration / finished if finished else 0.0
    packets = bytes_ = errors = 0
    for call in calls.values():
        for party in call.parties():
            for media in party.medias:
                for stream in media.streams:
                    packets += stream.stats.packets
                    bytes_ += stream.stats.bytes
                    errors += stream.stats.errors
    current = {
        "sessionsown": sessions,
        "sessionsforeign": 0,
        "sessionstotal": sessions,
        "transcodedmedia": 0,
        "packetrate": 0,
        "byterate": 0,
        "errorrate": 0,
    }
    total = {
        "uptime": str(int(now - started)),
        "managedsessions": totals.managed,
        "rejectedsessions": totals.rejected,
        "timeoutsessions": totals.timeouts,
        "silenttimeoutsessions": totals.silent_timeouts,
        "finaltimeoutsessions": totals.final_timeouts,
        "offertimeoutsessions": totals.offer_timeouts,
        "regularterminatedsessions": totals.regular_terminated,
        "forcedterminatedsessions": totals.forced_terminated,
        "relayedpackets": packets,
        "relayedpacketerrors": errors,
        "relayedbytes": bytes_,
        "avgcallduration": _fixed(average),
        "totalcallsduration": _fixed(totals.call_duration),
    }
    control: dict[str, Any] = {
        counter: totals.commands.get(command, 0) for command, counter in _COMMAND_COUNTERS.items()
    }
    control["errorcount"] = totals.errors
    interfaces = []
    for address in dict.fromkeys(address for address, _worker in list(ports.pools)):
        # pools are made per worker on first use; the range is every worker's slice
        pools = [ports.pool(address, worker) for worker in range(ports.workers)]
        capacity = 2 * sum(pool.capacity for pool in pools)
        used = 2 * sum(pool.in_use for pool in pools)
        interfaces.append(
            {
                "address": address,
                "ports": {
                    "min": ports.port_min,
                    "max": ports.port_max,
                    "used": used,
                    "used_pct": f"{100.0 * used / max(capacity, 1):.2f}",
                    "free": capacity - used,
                    "totals": capacity,
                },
            }
        )
    return {
        "statistics": {
            "currentstatistics": current,
            "totalstatistics": total,
            "controlstatistics": control,
            "interfaces": interfaces,
        }
    }
