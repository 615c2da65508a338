"""bench/kernel.py keeps working: a quick kernel-path run must relay RTP through nftables.

The benchmark builds bench/media.py's namespaces (rbm-caller ⇄ rbm-relay ⇄
rbm-callee), compiles the C generator, starts relayd with ``--table 0`` and waits
until ng ``query`` shows the stream kernelized; this runs its smallest
configuration (one stream, short trials, no generator check, no kernel-memory
phase: about 20 s) so that a change to relayd's kernel path, its command line or
its ng replies cannot silently break the benchmark.

    sudo .venv/bin/python -m pytest tests/interop/test_bench_kernel_smoke.py -m interop
"""

from __future__ import annotations

import ctypes.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench" / "kernel.py"
BUSY = "another bench/media.py or bench/kernel.py is running"

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, nftables)"),
    pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler (cc)"),
    pytest.mark.skipif(shutil.which("ip") is None, reason="needs iproute2 (ip)"),
    pytest.mark.skipif(shutil.which("nft") is None, reason="needs nftables (nft)"),
    pytest.mark.skipif(shutil.which("conntrack") is None, reason="needs conntrack-tools"),
    pytest.mark.skipif(ctypes.util.find_library("nftables") is None, reason="needs libnftables1"),
]

ROW = re.compile(r"^\| 1 \| relayd-kernel \| (?:≥ )?([\d,]+) [(|]", re.M)


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def test_quick_kernel_run_forwards_in_the_kernel(tmp_path: Path) -> None:
    report = tmp_path / "kernel.json"
    argv = [sys.executable, str(BENCH), "--quick", "--streams", "1", "--relays", "kernel"]
    started = time.monotonic()
    done = subprocess.run(
        [*argv, "--json", str(report)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    took = time.monotonic() - started
    if done.returncode == 2 and BUSY in done.stderr:
        pytest.skip("a media or kernel benchmark is running on this machine")
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    row = ROW.search(done.stdout)
    assert row is not None, done.stdout
    assert int(row.group(1).replace(",", "")) > 0
    [result] = json.loads(report.read_text())["rows"]
    assert result["relay"] == "relayd-kernel" and result["error"] == "", result
    assert result["max_pps"] > 0
    # the stream was in the kernel before and after the search, and no packet of the
    # search reached a socket in the relay's namespace: nftables forwarded all of them
    assert result["kernelized"] == 1 and result["kernelized_after"] == 1, result
    assert result["socket_datagrams"] == 0, result
    assert not {name for name in _namespaces() if name.startswith("rbm-")}
    assert took < 60, f"the quick run took {took:.0f} s"
