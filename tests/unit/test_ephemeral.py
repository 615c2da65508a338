"""The media port range against the kernel's ephemeral ports (relayd/plane/ephemeral.py)."""

from __future__ import annotations

from pathlib import Path

from relayd.plane.ephemeral import EphemeralOverlap, ephemeral_overlap, parse_ports


def _proc(tmp_path: Path, port_range: str, reserved: str) -> Path:
    (tmp_path / "ip_local_port_range").write_text(port_range + "\n")
    (tmp_path / "ip_local_reserved_ports").write_text(reserved + "\n")
    return tmp_path


def test_reserved_ports_read_as_the_kernel_writes_them() -> None:
    assert parse_ports("30000-30002,31000") == [(30000, 30002), (31000, 31000)]
    assert parse_ports("") == [] and parse_ports("x,5-3,7") == [(7, 7)]


def test_rtpengines_usual_range_overlaps_linuxs_default_ephemeral_ports(tmp_path: Path) -> None:
    proc = _proc(tmp_path, "32768\t60999", "")
    assert ephemeral_overlap(30000, 40000, proc) == EphemeralOverlap(7233, 32768, 60999)
    assert ephemeral_overlap(10000, 20000, proc) is None  # below it: nothing to say


def test_reserving_the_media_range_leaves_nothing_to_say(tmp_path: Path) -> None:
    assert ephemeral_overlap(30000, 40000, _proc(tmp_path, "32768 60999", "30000-40000")) is None
    partly = _proc(tmp_path, "32768 60999", "30000-35000,39999")
    assert ephemeral_overlap(30000, 40000, partly) == EphemeralOverlap(4999, 32768, 60999)


def test_without_the_settings_there_is_nothing_to_say(tmp_path: Path) -> None:
    assert ephemeral_overlap(30000, 40000, tmp_path / "absent") is None
