"""The host's load for the load limits, sampled once a second off the ng path (a shell).

:class:`LoadMeter` reads what ``max-load``, ``max-cpu`` and ``max-bandwidth`` compare
(relayd/calls/load.py) on the supervisor's one-second timer: the 1-minute load average
(``os.getloadavg``), the CPU use of every core from the first line of ``/proc/stat``
(busy time over all time since the previous sample; idle and iowait are not busy), and the
bytes per second relayd forwarded, from the traffic counters the workers' once-a-second
reports feed (:class:`relayd.ops.counters.Traffic`). An offer only compares the last
sample; a relayd configured with none of the three limits reads nothing at all.

The bytes the kernel forwards (plain legs offloaded to nftables) count only as they are read,
when a call's timer comes due, on ``query``/``delete``, ``statistics`` and ``/metrics``
(docs/kernel.md, "Counters"): reading them every second would cost a netlink dump that grows
with the calls, so ``max-bandwidth`` sees the userspace media at once and kernel media late.
"""

from __future__ import annotations

import os
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

    def __init__(self, traffic: Traffic, stat: Path = PROC_STAT) -> None:
        self.traffic = traffic
        self.stat = stat
        self._cpu: tuple[int, int] | None = None
        self._bytes: tuple[float, int] | None = None
        self.last = LoadSample()

    def _forwarded(self) -> int:
        return sum(self.traffic.total(self.traffic.bytes, path) for path in PATHS)

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
        forwarded = self._forwarded()
        if self._bytes is not None and now > self._bytes[0]:
            bandwidth = max(forwarded - self._bytes[1], 0) / (now - self._bytes[0])
        self._bytes = (now, forwarded)
        self.last = LoadSample(load=load, cpu=cpu, bandwidth=bandwidth)
        return self.last
