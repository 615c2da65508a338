"""bench/ng.py's bookkeeping for --concurrency and --daemon-cpus, without daemons: which CPUs
each side gets, how --cycles is shared, the run plan, issue 13's verdicts and the table's shape
(tests/interop/test_bench_smoke.py runs the script itself)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import pytest

from tests.support.scripts import load_script

ng = load_script("bench/ng.py", "bench_ng")


def test_daemon_cpus_default_to_the_first_and_clients_to_the_rest() -> None:
    assert ng.choose_cpus([0, 1], None) == ({0}, {1})
    assert ng.choose_cpus([2, 3, 5], None) == ({2}, {3, 5})
    assert ng.choose_cpus([0], None) == (None, None)


def test_given_daemon_cpus_leave_the_rest_to_the_clients_or_share_all() -> None:
    assert ng.choose_cpus([0, 1, 2, 3], frozenset({0, 1})) == ({0, 1}, {2, 3})
    assert ng.choose_cpus([0, 1], frozenset({0, 1})) == ({0, 1}, {0, 1})
    with pytest.raises(ng.BenchError, match="not within"):
        ng.choose_cpus([0, 1], frozenset({4}))


def test_pinning_is_described_as_before_for_one_client_and_says_when_cpus_are_shared() -> None:
    one, other = frozenset({0}), frozenset({1})
    assert ng.describe_pinning(one, other) == "daemon pinned to CPU 0, client to CPU 1"
    both = frozenset({0, 1})
    text = ng.describe_pinning(both, both, True)
    assert text.startswith("daemon pinned to CPUs 0,1")
    assert "clients to CPUs 0,1 (shared with the daemon" in text


@pytest.mark.parametrize(("cap", "clients"), [(300, 8), (7, 8), (16, 8), (1, 1)])
def test_cycles_cap_is_shared_out_exactly(cap: int, clients: int) -> None:
    limits = ng.client_limits(cap, clients)
    assert len(limits) == clients
    assert sum(limits) == cap
    assert max(limits) - min(limits) <= 1


def test_no_cap_means_each_client_runs_until_the_duration_ends() -> None:
    assert ng.client_limits(None, 3) == [sys.maxsize] * 3


def test_relayd_args_are_appended_to_relayds_command_line() -> None:
    args = ng.parse_args(
        ["--relayd-arg=--state-dir=/tmp/j", "--relayd-args", "--shards 2 --x 'a b'"]
    )
    argv = ng.daemon_specs(args)["relayd"].argv
    assert argv[-5:] == ("--state-dir=/tmp/j", "--shards", "2", "--x", "a b")
    assert "--shards" not in ng.daemon_specs(args)["rtpengine"].argv


def test_plan_runs_every_daemon_at_every_size_and_concurrency() -> None:
    args = argparse.Namespace(only=None, floor=False, calls=[1, 10_000], concurrency=[1, 8])
    planned = ng.plan(args, 20_000)  # 4,936 calls fit: 10,000 is skipped, 4,900 added
    assert [(n, k, d) for n, k, d, _ in planned] == [
        (n, k, d) for n in (1, 4_900, 10_000) for k in (1, 8) for d in ("relayd", "rtpengine")
    ]
    assert all(bool(skip) == (n == 10_000) for n, _, _, skip in planned)


def _result(daemon: str, clients: int, cycles_per_s: float, p99: float) -> Any:
    result = ng.Result(calls=1, daemon=daemon, clients=clients, cycles=100, seconds=1.0)
    result.cycles_per_s = cycles_per_s
    result.cpu_ms_per_cycle = 1.0
    for name in (*ng.COMMANDS, "cycle"):
        result.p50_ms[name] = p99 / 2
        result.p99_ms[name] = p99
    return result


def test_issue_13_targets_compare_with_rtpengine_at_the_same_concurrency() -> None:
    results = [
        _result("relayd", 1, 900, 1.5),
        _result("rtpengine", 1, 2_000, 0.5),
        _result("relayd", 8, 3_000, 9.0),
        _result("rtpengine", 8, 3_500, 9.0),
    ]
    (line,) = ng.concurrency_targets(results)
    assert line.startswith("Issue 13 with 1 call: ")
    assert "1 client: p99 1.500 <= 2 ms: met" in line
    assert "8 clients: cycles/s 3,000 >= rtpengine's 3,500 (0.86x): NOT met" in line
    results[2].cycles_per_s = 3_600
    results[0].p99_ms["cycle"] = 2.5
    (line,) = ng.concurrency_targets(results)
    assert "1 client: p99 2.500 <= 2 ms: NOT met" in line
    assert "(1.03x): met" in line


@pytest.mark.parametrize("concurrent", [False, True])
def test_every_row_of_the_table_has_as_many_cells_as_its_header(concurrent: bool) -> None:
    results = [
        _result("relayd", 1, 900, 1.5),
        ng.Result(calls=10_000, daemon="relayd", clients=1, skipped="needs more open files"),
    ]
    table = ng.render(results, concurrent=concurrent).split("\n\n")[0].splitlines()
    header = "| clients | concurrent calls |" if concurrent else "| concurrent calls | daemon |"
    assert table[0].startswith(header)
    assert len({row.count("|") for row in table}) == 1, table


def test_a_daemon_is_measured_only_once_its_start_up_work_is_over(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A daemon that still burns CPU after its pong (relayd's worker importing its modules)
    is waited for; one idle from the start is not; one never idle is an error."""
    import subprocess

    spec = ng.DaemonSpec("busy", ("127.0.0.1", 1), ())
    busy = "import time\nend = time.monotonic() + 0.8\nwhile time.monotonic() < end: pass\n"
    with subprocess.Popen([sys.executable, "-c", busy + "time.sleep(30)"]) as proc:
        try:
            started = ng.time.monotonic()
            ng._wait_settled(spec, proc)
            assert ng.time.monotonic() - started >= 0.6
            again = ng.time.monotonic()
            ng._wait_settled(spec, proc)
            assert ng.time.monotonic() - again < 2.0
        finally:
            proc.kill()
    monkeypatch.setattr(ng, "SETTLE_LIMIT", 1.0)
    with subprocess.Popen([sys.executable, "-c", busy.replace("0.8", "30")]) as proc:
        try:
            with pytest.raises(ng.BenchError, match="still busy"):
                ng._wait_settled(spec, proc)
        finally:
            proc.kill()
