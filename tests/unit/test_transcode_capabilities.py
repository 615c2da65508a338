"""``relayd --codecs``: rtpengine's codec list action, as an installation check."""

from __future__ import annotations

import pytest

from relayd import daemon
from relayd.transcode import capabilities
from relayd.transcode.codecs import CodecError


def test_the_four_codecs_and_events_are_fully_supported_the_rest_passed_through() -> None:
    report = dict(capabilities.report())
    for name in ("PCMA", "PCMU", "G722", "opus", "telephone-event", "CN"):
        assert report[name] == "fully supported", name
    for name in ("G729", "speex", "AMR", "iLBC"):
        assert report[name] == "not transcoded: passed through as offered", name
    assert list(report)[:2] == ["PCMA", "PCMU"]  # rtpengine's order


def test_a_codec_the_library_cannot_open_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    real = capabilities.open_encoder

    def no_opus(fmt: capabilities.Format, rate: int, samples: int) -> object:
        if fmt.name == "opus":
            raise CodecError("libopus: encoder not found")
        return real(fmt, rate, samples)

    monkeypatch.setattr(capabilities, "open_encoder", no_opus)
    report = dict(capabilities.report())
    assert report["opus"] == "not available here: libopus: encoder not found"
    assert report["PCMU"] == "fully supported"


def test_relayd_codecs_prints_the_list_and_exits(capsys: pytest.CaptureFixture[str]) -> None:
    assert daemon.main(["--config-file", "none", "--codecs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "                opus: fully supported" in lines
    assert len(lines) == len(capabilities.report())
