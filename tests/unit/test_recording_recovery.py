"""relayd/recording/recovery.py and ``CallRecorder(resume=True)``: what a killed relayd left."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from relayd.recording import (
    CallRecorder,
    RecordingError,
    SpoolSettings,
    close_leftover,
    leftovers,
    prepare,
    recording_names,
)
from relayd.recording.pcap import GLOBAL_HEADER_LEN
from tests.support.pcap import read_pcap_file

REPO = Path(__file__).resolve().parents[2]
A = ("192.0.2.10", 4000)
RELAY_A = ("192.0.2.1", 30000)
PAYLOAD = bytes([0x80, 0]) + bytes(154)  # records of 200 bytes (raw IPv4)


@pytest.fixture(autouse=True)
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def _settings(tmp_path: Path, **kwargs: object) -> SpoolSettings:
    settings = SpoolSettings(str(tmp_path / "spool"), **kwargs)  # type: ignore[arg-type]
    prepare(settings)
    return settings


def test_sigkill_leaves_nothing_a_collector_takes_for_complete(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    child = textwrap.dedent(
        """
        import os, signal, sys
        from relayd.recording import CallRecorder, SpoolSettings, recording_names
        settings = SpoolSettings(sys.argv[1], flush_bytes=1000, flush_interval=60)
        rec = CallRecorder(settings, recording_names(settings, "killed@x"), started=1e9)
        rec.sdp("offer", "v=0\\r\\n")
        for n in range(12):   # 10 go out in two writes of 5, 2 wait in memory
            rec.packet(1e9 + n, ("192.0.2.10", 4000), ("192.0.2.1", 30000), bytes(156))
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", child, settings.directory], cwd=REPO, timeout=30, check=False
    )
    assert result.returncode == -signal.SIGKILL
    spool = Path(settings.directory)
    assert list((spool / "metadata").iterdir()) == []
    [left] = leftovers(settings)
    capture = read_pcap_file(left.names.pcap)
    assert (len(capture.datagrams), capture.trailing) == (10, 0)
    assert left.names.temporary == str(next((spool / "tmp").iterdir()))
    assert left.names.prefix.startswith("killed%40x-")
    assert left.names.metadata == f"{spool}/metadata/rtpengine-meta-{left.names.prefix}.txt"

    final = close_leftover(settings, left, ended=1e9 + 20)

    assert final == left.names.metadata
    assert leftovers(settings) == []
    text = Path(final).read_bytes().decode()
    assert text.startswith(f"{left.names.pcap}\n\n\nTimestamp started ms: 1000000000000.000\n")
    assert text.endswith(
        "\nTimestamp terminated ms(first monologue): 0.000"
        "\n\ncall start time: 2001-09-09T01:46:40\ncall end time: 2001-09-09T01:47:00\n"
    )


def test_a_torn_last_record_is_cut_when_closed(tmp_path: Path) -> None:
    settings = _settings(tmp_path, flush_interval=0)
    rec = CallRecorder(settings, recording_names(settings, "c", tag="t"), started=50.0)
    for n in range(3):
        rec.packet(100.0 + n, A, RELAY_A, PAYLOAD)
    with open(rec.pcap_path, "ab") as file:
        # a record header and a part of the packet, as a write the crash cut short
        file.write(struct.pack("<IIII", 103, 0, 200, 200) + PAYLOAD[:54])
    [left] = leftovers(settings)
    close_leftover(settings, left, ended=200.0, started=50.0)
    capture = read_pcap_file(rec.pcap_path)
    assert (len(capture.datagrams), capture.trailing) == (3, 0)
    assert "call start time: 1970-01-01T00:00:50\n" in Path(left.names.metadata).read_text()


def test_resume_goes_on_numbering_and_appending(tmp_path: Path) -> None:
    settings = _settings(tmp_path, flush_interval=0)
    names = recording_names(settings, "c", tag="t")
    first = CallRecorder(settings, names, started=50.0)
    first.sdp("offer", "v=0\r\n", started=50.0)
    for n in range(3):
        first.packet(100.0 + n, A, RELAY_A, PAYLOAD)
    del first  # the process died here

    again = CallRecorder(settings, names, started=50.0, resume=True)
    assert (again.packets, again.first_packet) == (3, 100.0)
    again.sdp("answer", "v=0\r\n", started=51.0)
    again.packet(110.0, A, RELAY_A, PAYLOAD)
    final = Path(again.finish(120.0))

    capture = read_pcap_file(names.pcap)
    assert [d.seconds for d in capture.datagrams] == [100, 101, 102, 110]
    assert capture.trailing == 0
    text = final.read_bytes().decode()
    assert "SDP mode: offer\nSDP before RTP packet: 1\n" in text
    assert "SDP mode: answer\nSDP before RTP packet: 4\n" in text


def test_resume_keeps_the_format_the_file_was_started_in(tmp_path: Path) -> None:
    raw = _settings(tmp_path, format="raw", flush_interval=0)
    names = recording_names(raw, "c", tag="t")
    CallRecorder(raw, names, started=1.0).packet(2.0, A, RELAY_A, PAYLOAD)
    eth = SpoolSettings(raw.directory, format="eth", flush_interval=0)
    again = CallRecorder(eth, names, started=1.0, resume=True)
    again.packet(3.0, A, RELAY_A, PAYLOAD)
    again.finish(4.0)
    capture = read_pcap_file(names.pcap)
    assert capture.linktype == 101
    assert [d.ethernet for d in capture.datagrams] == [None, None]


def test_resume_rewrites_a_torn_global_header(tmp_path: Path) -> None:
    settings = _settings(tmp_path, format="eth", flush_interval=0)
    names = recording_names(settings, "c", tag="t")
    CallRecorder(settings, names, started=1.0)
    os.truncate(names.pcap, GLOBAL_HEADER_LEN - 4)
    again = CallRecorder(settings, names, started=1.0, resume=True)
    again.packet(3.0, A, RELAY_A, PAYLOAD)
    assert (again.packets, again.first_packet) == (1, None)
    capture = read_pcap_file(names.pcap)
    assert (capture.linktype, len(capture.datagrams)) == (1, 1)


def test_resume_of_a_finished_recording_is_refused(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    names = recording_names(settings, "c", tag="t")
    CallRecorder(settings, names, started=1.0).finish(2.0)
    with pytest.raises(RecordingError, match="cannot resume recording: No such file"):
        CallRecorder(settings, names, started=1.0, resume=True)


def test_leftovers_ignores_what_is_not_a_metadata_file(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    tmp = Path(settings.directory) / "tmp"
    (tmp / "something-else.tmp").write_text("x")
    (tmp / "rtpengine-meta-dir.tmp").mkdir()
    assert leftovers(settings) == []


def test_resume_after_a_torn_record_appends_after_the_whole_ones(tmp_path: Path) -> None:
    settings = _settings(tmp_path, flush_interval=0)
    names = recording_names(settings, "c", tag="t")
    first = CallRecorder(settings, names, started=1.0)
    first.packet(100.0, A, RELAY_A, PAYLOAD)
    with open(names.pcap, "ab") as file:
        file.write(struct.pack("<IIII", 101, 0, 200, 200) + PAYLOAD[:54])
    again = CallRecorder(settings, names, started=1.0, resume=True)
    again.packet(102.0, A, RELAY_A, PAYLOAD)
    capture = read_pcap_file(names.pcap)  # while still recording
    assert [d.seconds for d in capture.datagrams] == [100, 102]
    assert capture.trailing == 0
