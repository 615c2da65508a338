"""relayd/recording/recorder.py: a call's pcap and metadata file, as rtpengine 10.5 writes them."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from relayd.recording import (
    CallRecorder,
    RecordingError,
    SpoolSettings,
    prepare,
    recording_names,
)
from tests.support.pcap import read_pcap_file

A = ("192.0.2.10", 4000)  # caller
B = ("2001:db8::20", 5000)  # callee, an IPv6 leg
RELAY_A = ("192.0.2.1", 30000)  # the relay's socket facing the caller
RELAY_B = ("2001:db8::1", 30002)
STARTED = 1796553436.25  # 2026-12-06T10:37:16 UTC
SDP_OFFER = "v=0\r\no=- 1 1 IN IP6 2001:db8::1\r\nm=audio 30002 RTP/AVP 0\r\n"
SDP_ANSWER = "v=0\r\no=- 2 1 IN IP4 192.0.2.1\r\nm=audio 30000 RTP/AVP 0\r\n"


@pytest.fixture(autouse=True)
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The metadata's times are local time: pin the zone."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def _rtp(seq: int) -> bytes:
    return bytes([0x80, 0]) + seq.to_bytes(2, "big") + bytes(8) + bytes([seq & 0xFF]) * 160


def _recorder(tmp_path: Path, **settings: object) -> CallRecorder:
    spool = SpoolSettings(str(tmp_path / "spool"), **settings)  # type: ignore[arg-type]
    prepare(spool)
    names = recording_names(spool, "call-1@host", tag="0123456789abcdef")
    return CallRecorder(spool, names, started=STARTED)


def test_a_whole_call(tmp_path: Path) -> None:
    rec = _recorder(tmp_path, format="eth")
    spool = tmp_path / "spool"
    rec.sdp("offer", SDP_OFFER, started=STARTED + 0.001, label="caller")
    rec.metadata("first")
    rec.packet(STARTED + 1.0, A, RELAY_A, _rtp(1))
    rec.packet(STARTED + 1.01, B, RELAY_B, _rtp(2))
    rec.sdp("answer", SDP_ANSWER, started=STARTED + 0.5)
    rec.packet(STARTED + 1.02, A, RELAY_A, b"\x81\xc8\x00\x01rtcp")
    rec.metadata("second")
    assert rec.packets == 3
    assert rec.metadata_path == str(spool / "tmp/rtpengine-meta-call-1%40host-0123456789abcdef.tmp")
    assert list((spool / "metadata").iterdir()) == []

    final = rec.finish(STARTED + 65.0, terminated=STARTED + 64.5)

    assert final == str(spool / "metadata/rtpengine-meta-call-1%40host-0123456789abcdef.txt")
    assert rec.metadata_path == final
    assert list((spool / "tmp").iterdir()) == []
    pcap = spool / "pcaps/call-1%40host-0123456789abcdef.pcap"
    assert rec.pcap_path == str(pcap)
    assert Path(final).read_bytes().decode() == (
        f"{pcap}\n\n"
        "\nLabel: caller\nTimestamp started ms: 1796553436251.000\nSDP mode: offer"
        f"\nSDP before RTP packet: 1\n\n{SDP_OFFER}"
        "\nTimestamp started ms: 1796553436750.000\nSDP mode: answer"
        f"\nSDP before RTP packet: 3\n\n{SDP_ANSWER}"
        "\nTimestamp terminated ms(first monologue): 1796553500750.000"
        "\n\ncall start time: 2026-12-06T10:37:16\ncall end time: 2026-12-06T10:38:21\n"
        "\n\nsecond\n"
    )
    capture = read_pcap_file(pcap)
    assert capture.linktype == 1
    ends = [(d.source, d.source_port, d.destination, d.destination_port) for d in capture.datagrams]
    assert ends == [
        ("192.0.2.10", 4000, "192.0.2.1", 30000),
        ("2001:db8::20", 5000, "2001:db8::1", 30002),
        ("192.0.2.10", 4000, "192.0.2.1", 30000),
    ]  # fmt: skip
    assert [d.payload for d in capture.datagrams] == [_rtp(1), _rtp(2), b"\x81\xc8\x00\x01rtcp"]
    assert [(d.seconds, d.micros) for d in capture.datagrams] == [
        (1796553437, 250000), (1796553437, 260000), (1796553437, 270000),
    ]  # fmt: skip
    # finished: everything after is ignored
    assert rec.finish(STARTED + 99) == final
    rec.packet(STARTED + 99, A, RELAY_A, _rtp(9))
    rec.sdp("offer", SDP_OFFER)
    assert len(read_pcap_file(pcap).datagrams) == 3
    assert rec.failed is None


def test_no_sdp_no_metadata_no_termination(tmp_path: Path) -> None:
    """A recording stopped by ``stop recording``: terminated prints 0.000, no metadata lines;
    an SDP without ``started`` gets the call's."""
    rec = _recorder(tmp_path)
    rec.sdp("offer", "v=0\r\n")
    final = Path(rec.finish(STARTED))
    assert final.read_bytes().decode() == (
        f"{rec.pcap_path}\n\n"
        "\nTimestamp started ms: 1796553436250.000\nSDP mode: offer\nSDP before RTP packet: 1"
        "\n\nv=0\r\n"
        "\nTimestamp terminated ms(first monologue): 0.000"
        "\n\ncall start time: 2026-12-06T10:37:16\ncall end time: 2026-12-06T10:37:16\n"
    )
    assert read_pcap_file(rec.pcap_path).datagrams == []


def test_files_get_file_mode_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        rec = _recorder(tmp_path, file_mode=0o640)
        meta = Path(rec.finish(STARTED))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(rec.pcap_path).st_mode) == 0o640
    assert stat.S_IMODE(meta.stat().st_mode) == 0o640


def test_buffered_packets_are_written_whole_when_due(tmp_path: Path) -> None:
    rec = _recorder(tmp_path, flush_bytes=1000, flush_interval=0.5)
    assert rec.next_timeout() is None
    rec.packet(10.0, A, RELAY_A, _rtp(1))
    assert rec.next_timeout() == 10.5
    assert read_pcap_file(rec.pcap_path).datagrams == []  # waits in memory
    rec.flush_due(10.4)
    assert read_pcap_file(rec.pcap_path).datagrams == []
    rec.flush_due(10.5)
    assert len(read_pcap_file(rec.pcap_path).datagrams) == 1
    assert rec.next_timeout() is None
    # by age, checked as packets come
    rec.packet(11.0, A, RELAY_A, _rtp(2))
    rec.packet(11.6, A, RELAY_A, _rtp(3))
    assert len(read_pcap_file(rec.pcap_path).datagrams) == 3
    # by size: 5 records of 200 bytes reach 1000
    for seq in range(4, 9):
        rec.packet(12.0, A, RELAY_A, _rtp(seq))
    capture = read_pcap_file(rec.pcap_path)
    assert (len(capture.datagrams), capture.trailing) == (8, 0)
    rec.packet(12.1, A, RELAY_A, _rtp(9))
    rec.flush()
    assert len(read_pcap_file(rec.pcap_path).datagrams) == 9
    assert rec.packets == 9


def test_unbuffered_file_reads_whole_after_every_packet(tmp_path: Path) -> None:
    rec = _recorder(tmp_path, flush_interval=0)
    for seq in range(1, 6):
        rec.packet(float(seq), B, RELAY_B, _rtp(seq))
        capture = read_pcap_file(rec.pcap_path)
        assert (len(capture.datagrams), capture.trailing) == (seq, 0)
        assert rec.next_timeout() is None


def test_abandon_removes_what_was_written(tmp_path: Path) -> None:
    rec = _recorder(tmp_path)
    rec.packet(1.0, A, RELAY_A, _rtp(1))
    rec.abandon()
    spool = tmp_path / "spool"
    assert [list((spool / d).iterdir()) for d in ("tmp", "pcaps", "metadata")] == [[], [], []]
    rec.packet(2.0, A, RELAY_A, _rtp(2))  # a no-op now
    assert not os.path.exists(rec.pcap_path)


def test_abandon_after_finish_removes_the_finished_files(tmp_path: Path) -> None:
    rec = _recorder(tmp_path)
    final = rec.finish(STARTED)
    rec.abandon()
    assert not os.path.exists(final)
    assert not os.path.exists(rec.pcap_path)


def test_a_name_taken_is_not_overwritten_nor_removed(tmp_path: Path) -> None:
    spool = SpoolSettings(str(tmp_path / "spool"))
    prepare(spool)
    names = recording_names(spool, "c", tag="t")
    Path(names.pcap).write_bytes(b"someone else's")
    with pytest.raises(RecordingError, match="cannot start recording: File exists") as caught:
        CallRecorder(spool, names, started=STARTED)
    assert caught.value.filename == names.pcap
    assert Path(names.pcap).read_bytes() == b"someone else's"
    assert not os.path.exists(names.temporary)


def test_recording_file_outside_the_spool(tmp_path: Path) -> None:
    spool = SpoolSettings(str(tmp_path / "spool"))
    prepare(spool)
    names = recording_names(spool, "c", file=str(tmp_path / "here.pcap"), tag="t")
    rec = CallRecorder(spool, names, started=STARTED)
    rec.packet(1.0, A, RELAY_A, _rtp(1))
    final = Path(rec.finish(2.0))
    assert final.read_text().startswith(f"{tmp_path / 'here.pcap'}\n\n")
    assert len(read_pcap_file(tmp_path / "here.pcap").datagrams) == 1


def test_a_spool_that_vanished_fails_at_start(tmp_path: Path) -> None:
    spool = SpoolSettings(str(tmp_path / "gone"))
    names = recording_names(spool, "c", tag="t")
    with pytest.raises(RecordingError, match="No such file") as caught:
        CallRecorder(spool, names, started=STARTED)
    assert isinstance(caught.value, OSError)


def test_the_api_the_coordinator_codes_against(tmp_path: Path) -> None:
    """The names and keywords of issue 14's brief, called as the coordinator may call them."""
    settings = SpoolSettings(
        directory=str(tmp_path / "spool"), method="pcap", format="raw", file_mode=0o640,
        dir_mode=0o750,
    )  # fmt: skip
    prepare(settings=settings)
    names = recording_names(settings, call_id="c", directory=None, pattern=None, file=None)
    rec = CallRecorder(settings=settings, names=names, started=STARTED)
    rec.packet(when=STARTED, source=A, destination=RELAY_A, payload=_rtp(1))
    rec.sdp(mode="offer", sdp=SDP_OFFER)
    rec.metadata(text="m")
    assert (rec.packets, rec.pcap_path, rec.failed) == (1, names.pcap, None)
    path: str = rec.finish(ended=STARTED + 1)
    assert path == names.metadata
    assert isinstance(RecordingError(5, "x"), OSError)
    other = CallRecorder(settings, recording_names(settings, "d"), started=STARTED)
    other.abandon()
