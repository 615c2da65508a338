"""The host's load for the load limits, sampled once a second off the ng path (a shell).

:class:`LoadMeter` reads what ``max-load``, ``max-cpu`` and ``max-bandwidth`` compare
(relayd/calls/load.py) on the supervisor's one-second timer: the 1-minute load average
(``os.getloadavg``), the CPU use of every core from the first line of ``/proc/stat``
(busy time over all time since the previous sample; idle and iowait are not busy), and the
bytes per second relayd forwarded: the workers' from the traffic counters their
once-a-second reports feed (:class:`relayd.ops.counters.Traffic`), the kernel's from the
table's two ``relayed`` counter objects (``kernel_bytes``: two netlink lookups, whatever the
number of forwards; relayd/nft/relayed.py). An offer only compares the last sample; a
relayd configured with none of the three limits reads nothing at all.

Without the kernel's counters (no kernel path, or a table an older relayd made and nobody
repaired yet) the kernel's bytes count as relayd reads its per-forward counters: when a
call's timer comes due, on ``query``/``delete``, ``statistics`` and ``/metrics``
(docs/kernel.md, "Counters"), so late.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from relayd.calls.load import LoadSample
from relayd.calls.timers import Limits
from relayd.ops.counters import PATHS, Traffic

__all__ = ["LoadMeter", "cpu_times", "measures"]

PROC_STAT = Path("/proc/stat")


def measures(limits: Limits) -> bool:
    """Whether any load limit is on (the meter reads nothing otherwise)."""
    return limits.max_load > 0 or limits.max_cpu > 0 or limits.max_bandwidth > 0


def cpu_times(text: str) -> tuple[int, int] | None:
    """Busy and total jiffies of the ``cpu`` line of ``/proc/stat`` (every core together);
    idle and iowait are the time not busy."""
    for line in text.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            values = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
            total = sum(values)
            idle = values[3] + (values[4] if len(values) > 4 else 0)
            return total - idle, total
    return None


class LoadMeter:
    """Samples the load, CPU and byte rate; :meth:`sample` once a second."""

    def __init__(
        self,
        traffic: Traffic,
        stat: Path = PROC_STAT,
        *,
        kernel_bytes: Callable[[], int | None] | None = None,
    ) -> None:
        self.traffic = traffic
        self.stat = stat
        self.kernel_bytes = kernel_bytes
        self._cpu: tuple[int, int] | None = None
        # when, how many bytes, and whether the kernel's came from its own counters
        self._bytes: tuple[float, int, bool] | None = None
        self.last = LoadSample()

    def _forwarded(self) -> tuple[int, bool]:
        """Bytes forwarded so far, and whether the kernel's share is the table's own count."""
        bytes_ = self.traffic.bytes
        kernel = self.kernel_bytes() if self.kernel_bytes is not None else None
        if kernel is None:
            return sum(self.traffic.total(bytes_, path) for path in PATHS), False
        return self.traffic.total(bytes_, "userspace") + kernel, True

    def sample(self, now: float) -> LoadSample:
        """The figures now (``now``: a monotonic clock); a figure that cannot be read keeps
        its last value."""
        last = self.last
        try:
            load = os.getloadavg()[0]
        except OSError:
            load = last.load
        cpu = last.cpu
        try:
            times = cpu_times(self.stat.read_text())
        except (OSError, ValueError):
            times = None
        if times is not None:
            if self._cpu is not None and times[1] > self._cpu[1]:
                cpu = 100.0 * (times[0] - self._cpu[0]) / (times[1] - self._cpu[1])
            self._cpu = times
        bandwidth = last.bandwidth
        forwarded, own = self._forwarded()
        # the two sources count differently: a change of source starts the rate afresh
        if self._bytes is not None and now > self._bytes[0] and own == self._bytes[2]:
            bandwidth = max(forwarded - self._bytes[1], 0) / (now - self._bytes[0])
        self._bytes = (now, forwarded, own)
        self.last = LoadSample(load=load, cpu=cpu, bandwidth=bandwidth)
        return self.last
