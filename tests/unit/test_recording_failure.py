"""A recording that meets a full disk or a file-size limit stops, whole, and says so once.

Each case runs in a child process: RLIMIT_FSIZE (with SIGXFSZ ignored, or the kernel would kill
the writer) stands for a full disk without root, and a 64 KiB tmpfs, mounted in a private mount
namespace of the child (``unshare -m``, root only) that vanishes with it, for the real thing.
The child reports what it saw as JSON.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]

CHILD = textwrap.dedent(
    """
    import errno, json, os, resource, signal, sys
    from pathlib import Path
    from relayd.recording import CallRecorder, RecordingError, SpoolSettings, prepare
    from relayd.recording import recording_names
    from relayd.recording.pcap import whole_length
    spool_dir, limit, case = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    buffered = case in ("buffered", "sdp")
    settings = SpoolSettings(spool_dir, flush_interval=60 if buffered else 0,
                             flush_bytes=1 << 20 if buffered else 0)
    prepare(settings)
    names = recording_names(settings, "full@disk", tag="0000000000000000")
    rec = CallRecorder(settings, names, started=1796553436.0)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    if limit:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    rtp = bytes([0x80, 0]) + bytes(154)   # records of 16 + 20 + 8 + 156 = 200 bytes
    raised = []
    def attempt(action):
        try:
            action()
        except RecordingError as exc:
            raised.append((exc.errno, str(exc)))
    if case == "sdp":
        for n in range(3):   # waiting in memory when the metadata file fails
            rec.packet(float(n), ("10.0.0.1", 4000), ("10.0.0.2", 30000), rtp)
        attempt(lambda: rec.sdp("offer", "v=0\\r\\n" + "a=x\\r\\n" * 2000))
    elif case == "buffered":
        for n in range(8):
            rec.packet(float(n), ("10.0.0.1", 4000), ("10.0.0.2", 30000), rtp)
        attempt(rec.flush)
    else:
        n = 0
        while not raised and n < 100000:
            attempt(lambda: rec.packet(float(n), ("10.0.0.1", 4000), ("10.0.0.2", 30000), rtp))
            n += 1
    for n in range(3):   # after the failure: no-ops, nothing raised
        attempt(lambda: rec.packet(1e6, ("10.0.0.1", 4000), ("10.0.0.2", 30000), rtp))
        attempt(lambda: rec.sdp("answer", "v=0\\r\\n"))
    pcap = Path(rec.pcap_path).read_bytes()
    final = rec.finish(2e9)
    print(json.dumps({
        "raised": raised, "failed": rec.failed, "packets": rec.packets,
        "pcap_size": len(pcap), "whole": whole_length(pcap),
        "final": final, "metadata": Path(final).read_text() if os.path.exists(final) else None,
        "tmp": os.listdir(os.path.join(spool_dir, "tmp")),
        "done": os.listdir(os.path.join(spool_dir, "metadata")),
    }))
    """
)


def _child(spool: Path, limit: int, case: str, wrap: list[str] | None = None) -> dict[str, Any]:
    args = [sys.executable, "-c", CHILD, str(spool), str(limit), case]
    if wrap:
        args = [*wrap, *args]
    result = subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def _stopped_whole(report: dict[str, Any], errno_name: str) -> None:
    """Raised once, the pcap cut to whole records, the metadata finished and moved."""
    [(code, message)] = report["raised"]
    assert code == getattr(__import__("errno"), errno_name)
    assert f"recording stopped: {report['failed'].rpartition(': ')[2]}: '" in message
    assert report["pcap_size"] == report["whole"] == 24 + 200 * report["packets"]
    assert report["tmp"] == []
    assert report["done"] == [os.path.basename(report["final"])]
    assert "\ncall end time: " in report["metadata"]
    assert (
        "\nTimestamp terminated ms(first monologue): 0.000\n\ncall start time: "
        in (report["metadata"])
    )


def test_file_size_limit_stops_the_recording_at_the_last_whole_packet(tmp_path: Path) -> None:
    # the header and 5 records fit, the 6th is cut half-way by the limit
    report = _child(tmp_path / "spool", 24 + 200 * 5 + 100, "packets")
    assert report["packets"] == 5
    _stopped_whole(report, "EFBIG")
    assert "File too large" in report["failed"]


def test_a_failed_flush_keeps_the_whole_records_it_wrote(tmp_path: Path) -> None:
    report = _child(tmp_path / "spool", 24 + 200 * 3 + 50, "buffered")
    assert report["packets"] == 3
    _stopped_whole(report, "EFBIG")


def test_a_metadata_file_that_cannot_grow_keeps_its_whole_blocks(tmp_path: Path) -> None:
    report = _child(tmp_path / "spool", 4096, "sdp")
    [(code, _message)] = report["raised"]
    assert code == __import__("errno").EFBIG
    assert "rtpengine-meta-" in report["failed"]
    # the head, no part of the SDP block, the tail
    assert report["metadata"].startswith(f"{tmp_path}/spool/pcaps/full%40disk-0000000000000000")
    assert "SDP mode" not in report["metadata"]
    # the packets that waited in memory were written before the recording stopped
    assert report["packets"] == 3
    assert report["pcap_size"] == report["whole"] == 24 + 200 * 3
    assert "call end time: " in report["metadata"]
    assert report["done"] == [os.path.basename(report["final"])]


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="needs root and unshare(1) to mount a tmpfs in a private mount namespace",
)
def test_full_tmpfs_stops_the_recording(tmp_path: Path) -> None:
    mount = tmp_path / "small"
    mount.mkdir()
    wrap = [
        "unshare", "-m", "--propagation", "private", "sh", "-c",
        f'mount -t tmpfs -o size=64k tmpfs "{mount}" && exec "$0" "$@"',
    ]  # fmt: skip
    report = _child(mount / "spool", 0, "packets", wrap)
    assert 200 < report["packets"] < 400  # 64 KiB of 200-byte records, less the metadata's page
    _stopped_whole(report, "ENOSPC")
    assert "No space left on device" in report["failed"]
    assert list(mount.iterdir()) == []  # the tmpfs was the child's alone
