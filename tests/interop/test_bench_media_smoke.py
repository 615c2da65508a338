"""bench/media.py keeps working: a quick relayd-only run must relay RTP.

The benchmark builds its own namespaces (rbm-caller ⇄ rbm-relay ⇄ rbm-callee),
compiles its C generator and starts relayd; this runs its smallest
configuration (one stream, short trials, about 15 s) so that a change to
relayd's command line, ng replies or worker start-up cannot silently break it.

    sudo .venv/bin/python -m pytest tests/interop/test_bench_media_smoke.py -m interop
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench" / "media.py"

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
    pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler (cc)"),
    pytest.mark.skipif(shutil.which("ip") is None, reason="needs iproute2 (ip)"),
]

ROW = re.compile(r"^\| 1 \| relayd \| 1 \(core [^|]*\) \| (?:≥ )?([\d,]+) \|", re.M)


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def test_quick_relayd_run_relays_rtp(tmp_path: Path) -> None:
    report = tmp_path / "media.json"
    argv = [sys.executable, str(BENCH), "--quick", "--only", "relayd", "--streams", "1"]
    done = subprocess.run(
        [*argv, "--json", str(report)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    if done.returncode == 2 and "another bench/media.py is running" in done.stderr:
        pytest.skip("a media benchmark is running on this machine")
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    row = ROW.search(done.stdout)
    assert row is not None, done.stdout
    assert int(row.group(1).replace(",", "")) > 0
    [result] = json.loads(report.read_text())["rows"]
    assert result["relay"] == "relayd" and result["error"] == ""
    assert result["max_pps"] > 0 and result["cpu_s_per_10k"] > 0
    assert not {name for name in _namespaces() if name.startswith("rbm-")}
