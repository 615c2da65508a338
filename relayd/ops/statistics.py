"""The ``statistics`` reply, in rtpengine 10.5's tree (as ``rtpengine-ctl list jsonstats``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from relayd.calls.commands import Commands

__all__ = ["statistics_reply"]

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


def statistics_reply(commands: Commands, now: float) -> dict[str, Any]:
    totals = commands.totals
    sessions = len(commands.calls)
    finished = totals.finished
    average = totals.call_duration / finished if finished else 0.0
    packets = bytes_ = errors = 0
    for call in commands.calls.values():
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
        "uptime": str(int(now - commands.started)),
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
    ports = commands.signalling.ports
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
