"""Workers as separate units: relay-worker processes that connect to relayd's worker socket,
as ``relay-worker@N.service`` runs them, and the systemd units themselves."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.process import new_session_dying_with_parent
from tests.support.relayd import REPO, running_relayd

pytestmark = pytest.mark.interop

NG_PORT = 22370


def _sdp(port: int) -> str:
    return (
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        f"m=audio {port} RTP/AVP 0\r\n"
    )


def _worker(path: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen(
        [sys.executable, "-m", "relayd.worker", "--worker", "0", "--connect", str(path)],
        env=env,
        preexec_fn=new_session_dying_with_parent,
    )


def _peer() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    return sock


def _relayed(sender: socket.socket, receiver: socket.socket, to: int, deadline: float) -> bool:
    packet = bytes([0x80, 0, 0, 1, 0, 0, 0, 0, 1, 2, 3, 4]) + b"x" * 160
    while time.monotonic() < deadline:
        sender.sendto(packet, ("127.0.0.1", to))
        try:
            if receiver.recv(2048) == packet:
                return True
        except TimeoutError:
            continue
    return False


def test_external_worker_connects_and_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "workers.sock"
    extra = ["--worker-socket", str(path), "--num-threads", "1", "--endpoint-learning", "off"]
    with running_relayd(
        tmp_path, ng_port=NG_PORT, port_min=42300, port_max=42399, extra=extra
    ) as daemon:
        first = _worker(path)
        caller, callee = _peer(), _peer()
        try:
            with daemon.client() as ng:
                offer = ng.call(
                    "offer", sdp=_sdp(caller.getsockname()[1]), call_id="u1", from_tag="A"
                )
                answer = ng.call(
                    "answer",
                    sdp=_sdp(callee.getsockname()[1]),
                    call_id="u1",
                    from_tag="A",
                    to_tag="B",
                )
            to_a = int(re.search(r"m=audio (\d+)", answer["sdp"]).group(1))  # type: ignore[union-attr]
            to_b = int(re.search(r"m=audio (\d+)", offer["sdp"]).group(1))  # type: ignore[union-attr]
            assert _relayed(caller, callee, to_a, time.monotonic() + 5)
            # the unit dies; systemd would start it again: the new one gets the same sockets
            first.send_signal(signal.SIGKILL)
            first.wait(5)
            second = _worker(path)
            try:
                assert _relayed(callee, caller, to_b, time.monotonic() + 5)
                assert _relayed(caller, callee, to_a, time.monotonic() + 5)
            finally:
                second.terminate()
                second.wait(5)
            log = daemon.log()
            assert "worker.waiting" in log and log.count("worker.connected") == 2
        finally:
            caller.close()
            callee.close()
            if first.poll() is None:
                first.kill()
                first.wait(5)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_systemd_units_verify(tmp_path: Path) -> None:
    venv_bin = Path(sys.executable).parent
    for unit in ("relayd.service", "relay-worker@.service"):
        text = (REPO / "systemd" / unit).read_text()
        (tmp_path / unit).write_text(text.replace("/opt/relayd/venv/bin", str(venv_bin)))
    shutil.copy(tmp_path / "relay-worker@.service", tmp_path / "relay-worker@0.service")
    result = subprocess.run(
        ["systemd-analyze", "verify", "relayd.service", "relay-worker@0.service"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    worker = (REPO / "systemd" / "relay-worker@.service").read_text()
    assert "CPUAffinity=%i" in worker and "--worker %i" in worker
