"""Log output: the three formats, context binding, and the RTCP facility."""

from __future__ import annotations

import json
import logging
import logging.handlers
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
import structlog

from relayd import log


@pytest.fixture(autouse=True)
def _restore() -> Iterator[None]:
    yield
    log.configure(6, stderr=True)
    structlog.contextvars.clear_contextvars()


def test_json_lines_carry_the_bound_call(capsys: pytest.CaptureFixture[str]) -> None:
    log.configure(7, stderr=True, fmt="json", timestamps=False)
    with structlog.contextvars.bound_contextvars(call_id="c-1", from_tag="a", worker=2):
        log.get_logger("relayd").info("ng.request", command="offer")
    log.get_logger("relayd").info("relayd.stopped")
    first, second = (json.loads(line) for line in capsys.readouterr().err.splitlines())
    assert first == {
        "event": "ng.request",
        "command": "offer",
        "call_id": "c-1",
        "from_tag": "a",
        "worker": 2,
        "level": "info",
    }
    assert second == {"event": "relayd.stopped", "level": "info"}


def test_lines_name_the_call_the_request_is_about(capsys: pytest.CaptureFixture[str]) -> None:
    """What the supervisor binds per request (relayd.log.bind_call), and that it is gone
    after: a line outside the request names no call."""
    log.configure(7, stderr=True, fmt="json", timestamps=False)
    token = log.bind_call("c-2", "a", None)
    log.bind_call("c-2", "a", 1)  # the request created the call on worker 1: undone with token
    log.get_logger("relayd").info("ng.request", command="offer")
    log.unbind_call(token)
    log.get_logger("relayd").info("relayd.stopped")
    timer = log.bind_call("c-3", worker=0)
    log.get_logger("relayd").info("call.teardown")
    log.unbind_call(timer)
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert lines == [
        {
            "event": "ng.request",
            "command": "offer",
            "call_id": "c-2",
            "from_tag": "a",
            "worker": 1,
            "level": "info",
        },
        {"event": "relayd.stopped", "level": "info"},
        {"event": "call.teardown", "call_id": "c-3", "worker": 0, "level": "info"},
    ]


def test_parsable_is_logfmt(capsys: pytest.CaptureFixture[str]) -> None:
    log.configure(6, stderr=True, fmt="parsable", timestamps=False)
    with structlog.contextvars.bound_contextvars(call_id="a b"):
        log.get_logger("relayd").warning("call.teardown", reason="offer timeout")
    assert capsys.readouterr().err.strip() == (
        'level=warning event=call.teardown call_id="a b" reason="offer timeout"'
    )


def test_level_filters(capsys: pytest.CaptureFixture[str]) -> None:
    log.configure(4, stderr=True, timestamps=False)
    log.get_logger("relayd").info("ng.request")
    log.get_logger("relayd").warning("ng.unknown_keys")
    assert "ng.request" not in capsys.readouterr().err
    log.set_level(7)
    log.get_logger("relayd").debug("media.dropped_early")
    assert "media.dropped_early" in capsys.readouterr().err


class FakeSyslog(logging.Handler):
    """Stands in for /dev/log: records the facility and the formatted lines."""

    made: ClassVar[list[FakeSyslog]] = []

    def __init__(self, address: Any = None, facility: int = 0) -> None:
        super().__init__()
        self.facility = facility
        self.lines: list[str] = []
        FakeSyslog.made.append(self)

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def test_rtcp_lines_go_to_their_own_facility(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeSyslog.made = []
    real = logging.handlers.SysLogHandler
    monkeypatch.setattr(logging.handlers, "SysLogHandler", FakeSyslog)
    log.configure(6, stderr=False, facility="daemon", rtcp_facility="local0")
    main, rtcp = FakeSyslog.made
    assert main.facility == real.LOG_DAEMON
    assert rtcp.facility == real.LOG_LOCAL0
    log.get_logger(log.RTCP_LOGGER).info("rtcp.packet", call_id="c-1")
    log.get_logger("relayd").info("ng.request", call_id="c-1")
    assert len(rtcp.lines) == 1 and "rtcp.packet" in rtcp.lines[0]
    assert len(main.lines) == 1 and "ng.request" in main.lines[0]


@pytest.mark.parametrize(("level", "shown"), [(7, True), (6, True), (5, False), (4, False)])
def test_every_rtpengine_level_configures(
    level: int, shown: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    # log-level 5 (notice) is not a standard Python level: it must still work, hiding info
    log.configure(level, stderr=True)
    log.get_logger("relayd.test").info("level.check")
    assert ("level.check" in capsys.readouterr().err) is shown
