"""What the admin commands and the metrics read from a running supervisor.

:class:`RelayState` names the parts of the supervisor they use (the call
registry, the media plane, the kernel path, the cumulative counters), so both
are plain functions of it, testable with the real pieces and no daemon. The
helpers here are the figures both need: streams by path, port use per
address, per-worker load.
"""

from __future__ import annotations

import fcntl
import socket
import struct
import termios
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from relayd.calls.commands import Commands
from relayd.calls.model import Call, Media, Monologue, Stream
from relayd.config import Config
from relayd.ops.counters import Counters
from relayd.plane.kernel import KernelPath
from relayd.plane.media import MediaPlane
from relayd.plane.workerpool import WorkerProcess

__all__ = [
    "PortUse",
    "RelayState",
    "WorkerLoad",
    "port_use",
    "stream_paths",
    "streams_of",
    "worker_load",
]


class RelayState(Protocol):
    """The supervisor as the admin socket and ``/metrics`` see it."""

    config: Config
    commands: Commands
    media: MediaPlane
    kernel: KernelPath | None
    counters: Counters

    def reload(self) -> dict[str, Any]: ...

    def set_running(self, field: str, value: Any) -> dict[str, Any]:
        """``relayctl set``: one limit of the running configuration changed
        (relayd/ops/runtime.py); the reply names it with its value before and after."""
        ...

    def switch(self, mode: str) -> dict[str, Any]:
        """``relayctl active`` / ``standby`` (relayd/ha/replica.py)."""
        ...

    def ha_status(self) -> dict[str, Any] | None:
        """Redis and the foreign calls (relayd/ha/replica.py), None without ``redis``."""
        ...

    async def refresh_counters(self, call_id: str | None = None) -> None:
        """Fold what the kernel forwarded into the streams (one call, or all): kernel
        counters are read when someone looks, not on a clock."""
        ...


def streams_of(call: Call) -> Iterator[tuple[Monologue, Media, Stream]]:
    """Every stream of the call's current dialogues (earlier forks left out), once."""
    for party in call.parties():
        for media in party.medias:
            if media.rejected or not media.port:
                continue
            for stream in media.streams:
                yield party, media, stream


def stream_paths(calls: Iterable[Call]) -> dict[str, int]:
    """Current streams by forwarding path (rtpengine's ``mediastreams`` types)."""
    counts = {"userspace": 0, "kernel": 0, "mixed": 0}
    for call in calls:
        for _, _, stream in streams_of(call):
            counts["kernel" if stream.kernelized else "userspace"] += 1
    return counts


@dataclass(frozen=True, slots=True)
class PortUse:
    """The ports of one local address over every worker's slice; ``total`` and ``used`` count
    RTP and RTCP ports alike, as rtpengine does."""

    interface: str
    address: str
    total: int  # ports, RTP and RTCP, as rtpengine counts them
    used: int

    @property
    def free(self) -> int:
        return self.total - self.used


def port_use(commands: Commands) -> list[PortUse]:
    """Port use per local address, over every worker's slice of the range."""
    signalling = commands.signalling
    ports = signalling.ports
    result = []
    for address in signalling.interfaces.all:
        pools = [ports.pool(address.local, worker) for worker in range(ports.workers)]
        total = 2 * sum(pool.capacity for pool in pools)
        used = 2 * sum(pool.in_use for pool in pools)
        result.append(PortUse(address.interface, address.local, total, used))
    return result


def _queued(link: socket.socket | None, request: int) -> int:
    if link is None:
        return 0
    try:
        raw = fcntl.ioctl(link.fileno(), request, struct.pack("i", 0))
    except OSError:
        return 0
    value: int = struct.unpack("i", raw)[0]
    return value


@dataclass(frozen=True, slots=True)
class WorkerLoad:
    """One worker as ``relayctl workers`` and ``/metrics`` show it (:func:`worker_load`)."""

    index: int
    cpu: int
    pid: int
    medias: int
    streams: int
    packets: int
    cpu_seconds: float
    restarts: int
    connected: bool
    to_worker: int  # bytes of IPC the worker has not read yet (SIOCOUTQ)
    from_worker: int  # bytes of IPC relayd has not read yet (SIOCINQ)


def worker_load(media: MediaPlane, worker: WorkerProcess) -> WorkerLoad:
    """One worker's figures: media sections, relay sockets (``streams``: ICE candidates too),
    packets counted from its reports since relayd started, CPU time as last reported by the
    current process, and the bytes waiting on its link either way."""
    placed = media.placed.get(worker.index, {})
    return WorkerLoad(
        index=worker.index,
        cpu=worker.cpu,
        pid=worker.pid,
        medias=media.medias_on(worker),
        streams=sum(len(sockets) for sockets in placed.values()),
        packets=worker.packets,
        cpu_seconds=worker.cpu_seconds,
        restarts=worker.restarts,
        connected=worker.link is not None,
        to_worker=_queued(worker.link, termios.TIOCOUTQ),
        from_worker=_queued(worker.link, termios.FIONREAD),
    )
