"""bench/ng.py, its Python floor and bench/ng_inprocess.py still run, so they cannot rot:
quick relayd-only and floor-only runs, and a short in-process run.

Only that it completes and prints its table is checked here, not any figure:
the numbers depend on the machine (docs/performance.md has a full run).
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.relayd import RelaydProcess

pytestmark = pytest.mark.interop

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench" / "ng.py"
# 1,000 ports (500 pairs) hold the 100 calls of --quick; apart from the other interop tests
PORTS = (44000, 44999)


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """A bench script from the repository root, bounded; it must exit 0."""
    done = subprocess.run(
        [sys.executable, script, *args], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_quick_benchmark_prints_its_table(tmp_path: Path) -> None:
    ng_port = _free_udp_port()
    relayd = RelaydProcess(tmp_path, ng_port=ng_port, port_min=PORTS[0], port_max=PORTS[1])
    try:
        relayd.start()
    except RuntimeError as exc:
        pytest.skip(f"relayd cannot start here: {exc}")
    finally:
        relayd.stop()

    out = tmp_path / "bench.json"
    done = _run(
        str(BENCH),
        "--quick",
        "--only",
        "relayd",
        "--relayd-listen",
        f"127.0.0.1:{ng_port}",
        "--port-min",
        str(PORTS[0]),
        "--port-max",
        str(PORTS[1]),
        "--json",
        str(out),
    )
    assert done.stdout.startswith("$ "), done.stdout
    assert "| concurrent calls | daemon | cycles/s | p50 ms | p99 ms |" in done.stdout
    for calls in (1, 100):
        assert re.search(
            rf"^\| {calls} \| relayd \| [\d,]+ \| [\d.]+ \| [\d.]+ \|", done.stdout, re.M
        )
    results = json.loads(out.read_text())["results"]
    assert [(r["calls"], r["daemon"], r["cycles"]) for r in results] == [
        (1, "relayd", 300),
        (100, "relayd", 300),
    ]


def test_concurrent_clients_share_the_cycles(tmp_path: Path) -> None:
    """``--concurrency 1,3``: three client processes run the cycles the cap allows between
    them, and the table gains the clients column and issue 13's verdicts."""
    ng_port = _free_udp_port()
    out = tmp_path / "concurrent.json"
    done = _run(
        str(BENCH),
        "--quick",
        "--only",
        "relayd",
        "--concurrency",
        "1,3",
        "--cycles",
        "90",
        "--relayd-args",
        "--delete-delay 0",
        "--relayd-listen",
        f"127.0.0.1:{ng_port}",
        "--port-min",
        str(PORTS[0]),
        "--port-max",
        str(PORTS[1]),
        "--json",
        str(out),
    )
    assert "| clients | concurrent calls | daemon | cycles/s |" in done.stdout, done.stdout
    assert "with --delete-delay 0, rtpengine" in done.stdout
    assert re.search(r"^Issue 13 with 100 calls: 1 client: p99 ", done.stdout, re.M)
    results = json.loads(out.read_text())["results"]
    assert [(r["calls"], r["clients"], r["cycles"]) for r in results] == [
        (1, 1, 90),
        (1, 3, 90),
        (100, 1, 90),
        (100, 3, 90),
    ]
    assert all(r["client_cpu_ms_per_cycle"] > 0 for r in results)


def test_python_floor_answers_the_benchmark(tmp_path: Path) -> None:
    """bench/ng_floor.py (``--floor``) serves every cycle and frees its ports on delete."""
    out = tmp_path / "floor.json"
    _run(
        str(BENCH),
        "--quick",
        "--only",
        "python-floor",
        "--floor-listen",
        f"127.0.0.1:{_free_udp_port()}",
        "--port-min",
        str(PORTS[0]),
        # 100 open calls and 300 cycles need about 600 pairs: only if deletes free them
        "--port-max",
        str(PORTS[0] + 899),
        "--json",
        str(out),
    )
    results = json.loads(out.read_text())["results"]
    assert [(r["calls"], r["daemon"], r["cycles"]) for r in results] == [
        (1, "python-floor", 300),
        (100, "python-floor", 300),
    ]


def test_in_process_benchmark_prints_the_cost_of_each_command() -> None:
    done = _run(
        str(REPO / "bench" / "ng_inprocess.py"),
        "--cycles",
        "200",
        "--rounds",
        "1",
        "--warmup",
        "20",
        "--port-min",
        str(PORTS[0]),
        "--port-max",
        str(PORTS[1]),
    )
    for step in ("offer", "answer", "delete", r"\*\*cycle\*\*"):
        assert re.search(rf"^\| {step} \| (\*\*)?[1-9]\d*(\*\*)? \|$", done.stdout, re.M), (
            done.stdout
        )
