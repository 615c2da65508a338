"""The load limits' sampler (relayd/ops/loadmeter.py): /proc/stat's busy share, the byte rate."""

from __future__ import annotations

from pathlib import Path

from relayd.calls.timers import Limits
from relayd.ops.counters import Traffic
from relayd.ops.loadmeter import LoadMeter, cpu_times, measures

STAT = "cpu  {user} 0 {system} {idle} {iowait} 0 0 0 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\nintr 1 2\n"


def _stat(path: Path, user: int, system: int, idle: int, iowait: int = 0) -> None:
    path.write_text(STAT.format(user=user, system=system, idle=idle, iowait=iowait))


def test_cpu_times_are_busy_and_total_of_every_core() -> None:
    assert cpu_times(STAT.format(user=100, system=50, idle=800, iowait=50)) == (150, 1000)
    assert cpu_times("intr 1 2\n") is None


def test_sample_cpu_share_and_byte_rate(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    traffic = Traffic()
    meter = LoadMeter(traffic, stat)
    _stat(stat, user=1000, system=0, idle=1000)
    first = meter.sample(100.0)
    assert (first.cpu, first.bandwidth) == (0.0, 0.0)  # no earlier sample to compare with
    assert first.load >= 0.0
    # one core of two busy for a second: 100 jiffies busy, 100 idle
    _stat(stat, user=1100, system=0, idle=1080, iowait=20)
    traffic.add("userspace", "caller_to_callee", 50, 8600)
    traffic.add("kernel", "callee_to_caller", 50, 8600)
    second = meter.sample(101.0)
    assert second.cpu == 50.0
    assert second.bandwidth == 17200.0
    # nothing forwarded, /proc/stat unreadable: the CPU figure stays, the rate drops to 0
    stat.unlink()
    third = meter.sample(103.0)
    assert (third.cpu, third.bandwidth) == (50.0, 0.0)


def test_measures_only_when_a_load_limit_is_on() -> None:
    assert not measures(Limits(max_sessions=10))
    assert measures(Limits(max_load=1.5))
    assert measures(Limits(max_cpu=80))
    assert measures(Limits(max_bandwidth=1_000_000))


def test_kernel_bytes_from_the_tables_own_counters(tmp_path: Path) -> None:
    """With the table's counters the kernel's share is theirs (the per-forward figures, read
    late, are not added again); a change of source starts the rate afresh."""
    traffic = Traffic()
    kernel: list[int | None] = [1000]
    meter = LoadMeter(traffic, tmp_path / "stat", kernel_bytes=lambda: kernel[0])
    meter.sample(10.0)
    traffic.add("userspace", "caller_to_callee", 10, 1720)
    traffic.add("kernel", "caller_to_callee", 99, 99_999)  # read late: not counted here
    kernel[0] = 1000 + 17_200
    assert meter.sample(11.0).bandwidth == 1720 + 17_200
    kernel[0] = None  # the kernel path went off: the next rate starts from this sample
    assert meter.sample(12.0).bandwidth == 1720 + 17_200
    traffic.add("userspace", "caller_to_callee", 10, 1720)
    assert meter.sample(13.0).bandwidth == 1720
