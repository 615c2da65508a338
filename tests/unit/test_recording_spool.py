"""relayd/recording/spool.py: settings, the spool's directories and the recordings' names."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from relayd.recording.spool import SpoolSettings, escape_call_id, prepare, recording_names


@pytest.fixture
def umask() -> Iterator[None]:
    """A umask that would spoil the modes if relayd let it apply."""
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize(
    ("call_id", "escaped"),
    [
        # as rtpengine 10.5.3.5 named the files of this call-id
        ("rec call/1@host ü", "rec%20call%2F1%40host%20%C3%BC"),
        ("a1B2-._~", "a1B2-._~"),
        ("x:y;z=1?&+%", "x%3Ay%3Bz%3D1%3F%26%2B%25"),
        ("..", ".."),
        (b"\xff\x00", "%FF%00"),
        # relayd's ng layer decodes with surrogateescape: the wire bytes are escaped
        (b"caf\xe9".decode("utf-8", "surrogateescape"), "caf%E9"),
    ],
)
def test_call_id_escaping_matches_glib(call_id: str | bytes, escaped: str) -> None:
    assert escape_call_id(call_id) == escaped


def test_names_follow_rtpengines_layout() -> None:
    settings = SpoolSettings("/var/spool/rec/")
    names = recording_names(settings, "abc@host", tag="0123456789abcdef")
    assert names.prefix == "abc%40host-0123456789abcdef"
    assert names.pcap == "/var/spool/rec/pcaps/abc%40host-0123456789abcdef.pcap"
    assert names.temporary == "/var/spool/rec/tmp/rtpengine-meta-abc%40host-0123456789abcdef.tmp"
    assert names.metadata == (
        "/var/spool/rec/metadata/rtpengine-meta-abc%40host-0123456789abcdef.txt"
    )


def test_relative_directory_stays_relative() -> None:
    names = recording_names(SpoolSettings("spool"), "c", tag="t")
    assert names.pcap == "spool/pcaps/c-t.pcap"


def test_tags_are_16_random_hex_digits() -> None:
    settings = SpoolSettings("/s")
    tags = {recording_names(settings, "c").tag for _ in range(50)}
    assert len(tags) == 50
    assert all(re.fullmatch(r"[0-9a-f]{16}", tag) for tag in tags)


def test_recording_file_places_the_pcap_only() -> None:
    settings = SpoolSettings("/s")
    names = recording_names(
        settings, "c", file="/elsewhere/x.cap", directory="/d", pattern="%c", tag="t"
    )
    assert names.pcap == "/elsewhere/x.cap"
    assert names.metadata == "/s/metadata/rtpengine-meta-c-t.txt"
    assert (names.directory, names.pattern) == ("/d", "%c")
    with pytest.raises(ValueError, match="absolute"):
        recording_names(settings, "c", file="x.pcap")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "proc"}, "only pcap"),
        ({"format": "pcapng"}, "raw or eth"),
        ({"directory": ""}, "empty"),
        ({"flush_bytes": -1}, "negative"),
    ],
)
def test_settings_refuse_what_is_not_built(kwargs: dict[str, object], message: str) -> None:
    values: dict[str, object] = {"directory": "/s", **kwargs}
    with pytest.raises(ValueError, match=message):
        SpoolSettings(**values)  # type: ignore[arg-type]


def test_prepare_creates_the_three_directories_with_dir_mode(tmp_path: Path, umask: None) -> None:
    spool = tmp_path / "spool"
    prepare(SpoolSettings(str(spool), dir_mode=0o2750))
    assert sorted(p.name for p in spool.iterdir()) == ["metadata", "pcaps", "tmp"]
    for path in (spool, spool / "tmp", spool / "pcaps", spool / "metadata"):
        assert _mode(path) == 0o2750, path
    # idempotent, and directories that exist keep the operator's modes
    (spool / "pcaps").chmod(0o755)
    prepare(SpoolSettings(str(spool), dir_mode=0o700))
    assert _mode(spool / "pcaps") == 0o755
    assert _mode(spool / "tmp") == 0o2750


def test_prepare_creates_one_level_only(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"cannot create recording-dir .*/a/b"):
        prepare(SpoolSettings(str(tmp_path / "a" / "b")))


def test_prepare_names_what_is_not_a_directory(tmp_path: Path) -> None:
    (tmp_path / "pcaps").write_text("")
    with pytest.raises(NotADirectoryError, match=r"pcaps/ .* is not a directory"):
        prepare(SpoolSettings(str(tmp_path)))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user")
def test_prepare_reports_an_unwritable_spool() -> None:
    # pytest's tmp_path lies below a directory only root may enter
    with tempfile.TemporaryDirectory() as top:
        Path(top).chmod(0o755)
        _unwritable_spool(Path(top) / "spool")


def _unwritable_spool(spool: Path) -> None:
    prepare(SpoolSettings(str(spool), dir_mode=0o755))
    code = (
        "import os, sys\n"
        "from relayd.recording.spool import SpoolSettings, prepare\n"
        "os.setgid(65534); os.setuid(65534)\n"
        "try:\n    prepare(SpoolSettings(sys.argv[1]))\n"
        "except PermissionError as exc:\n    print(exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(spool)],
        capture_output=True, text=True, timeout=30, cwd=Path(__file__).parents[2],
    )  # fmt: skip
    assert "recording-dir's tmp/" in result.stdout, result.stderr
    assert "is not writable: Permission denied" in result.stdout
    assert list((spool / "tmp").iterdir()) == []
