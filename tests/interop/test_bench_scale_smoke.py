"""bench/scale.py keeps working: a small run must kernelize every call and measure it.

The benchmark builds bench/media.py's namespaces under its own prefix (``rbs-``,
or the environment's ``RELAYD_BENCH_NETNS``), starts relayd with ``--table 0``,
sets up calls over ng, confirms both ends of every stream, waits until ng
``query`` shows them kernelized, then measures windows with the calls idle and
with a trickle of media. This runs it with 20 calls and one-second windows
(about 20 s per daemon) so that a change to relayd's kernel path, its command
line or its ng replies cannot silently break the benchmark; with two media
addresses (``--addresses 2``: the round-robin pool the 100,000-call run needs),
so that calls spread over addresses are kernelized and relayed too.

    sudo .venv/bin/python -m pytest tests/interop/test_bench_scale_smoke.py -m interop
"""

from __future__ import annotations

import ctypes.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench" / "scale.py"
CALLS = 20
PREFIX = os.environ.get("RELAYD_BENCH_NETNS", "rbs")

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, nftables)"),
    pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler (cc)"),
    pytest.mark.skipif(shutil.which("ip") is None, reason="needs iproute2 (ip)"),
    pytest.mark.skipif(shutil.which("nft") is None, reason="needs nftables (nft)"),
    pytest.mark.skipif(shutil.which("conntrack") is None, reason="needs conntrack-tools"),
    pytest.mark.skipif(ctypes.util.find_library("nftables") is None, reason="needs libnftables1"),
]


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def test_small_scale_run_kernelizes_and_measures(tmp_path: Path) -> None:
    report = tmp_path / "scale.json"
    argv = [sys.executable, str(BENCH), "--calls", str(CALLS), "--only", "relayd"]
    argv += ["--addresses", "2"]
    argv += ["--window", "1", "--ping-window", "1", "--base-window", "1"]
    started = time.monotonic()
    done = subprocess.run(
        [*argv, "--json", str(report)], capture_output=True, text=True, timeout=180, cwd=REPO
    )
    took = time.monotonic() - started
    if done.returncode == 2 and "another benchmark holds" in done.stderr:
        pytest.skip("another bench/scale.py is running on this machine")
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    assert f"### {CALLS:,} calls" in done.stdout, done.stdout
    [row] = json.loads(report.read_text())["rows"]
    assert row["daemon"] == "relayd" and row["error"] == "", row
    assert row["addresses"] == 2 and "(pool 'pub')" in done.stdout, row
    # every call kernelized before and after the media window
    assert row["checked"] == CALLS and row["kernelized"] == CALLS, row
    assert row["kernelized_after"] == CALLS, row
    # the trickle went through both ways, the pinger got answers, the windows ran
    media = row["media"]
    assert media["sent"][0] > 0 and media["sent"][1] > 0, media
    assert media["delivered"] == media["sent"], media
    assert row["idle"]["pings"] > 0 and row["idle"]["pings_lost"] == 0, row["idle"]
    assert row["idle"]["seconds"] >= 1.0, row["idle"]
    # the calls held ports and descriptors while set up, and gave them all back
    base, idle, deleted = row["held_base"], row["held_idle"], row["held_deleted"]
    assert idle["udp_ports"] - base["udp_ports"] >= 2 * CALLS, row
    assert idle["fds_main"] + idle["fds_workers"] > base["fds_main"] + base["fds_workers"]
    assert deleted["udp_ports"] == base["udp_ports"], row
    assert not {name for name in _namespaces() if name.startswith(f"{PREFIX}-")}
    assert took < 120, f"the small run took {took:.0f} s"
