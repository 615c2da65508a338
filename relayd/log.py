"""Structured logging: structlog on top of stdlib logging, rtpengine's levels and facilities.

``log-level`` is syslog's scale as in rtpengine (0 emerg … 7 debug). Output goes
to stderr (``log-stderr`` or foreground) or to syslog with ``log-facility``;
``log-facility-rtcp`` sends the RTCP lines (logger ``relayd.rtcp``) to syslog
under their own facility, as rtpengine does, and ``log-facility-dtmf`` the DTMF
event lines (logger ``relayd.dtmf``). ``log-format``: ``default``
(``event key=value``), ``parsable`` (logfmt, ``key="value"`` throughout) or
``json`` (one JSON object per line). Event names are constant and dotted
(``ng.request``, ``call.teardown``); context such as ``call_id``, ``from_tag``
and ``worker`` is bound per request through contextvars, so every line of a
call carries its call-id.
"""

from __future__ import annotations

import contextvars
import logging
import logging.handlers
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

import structlog

__all__ = [
    "DTMF_LOGGER",
    "FORMATS",
    "RTCP_LOGGER",
    "bind_call",
    "bind_process",
    "configure",
    "get_logger",
    "set_level",
    "unbind_call",
]

FORMATS = ("default", "parsable", "json")
RTCP_LOGGER = "relayd.rtcp"
DTMF_LOGGER = "relayd.dtmf"

# syslog severity → stdlib level; NOTICE (5) sits between INFO and WARNING.
_LEVELS = {
    0: logging.CRITICAL,
    1: logging.CRITICAL,
    2: logging.CRITICAL,
    3: logging.ERROR,
    4: logging.WARNING,
    5: logging.INFO + 5,
    6: logging.INFO,
    7: logging.DEBUG,
}
logging.addLevelName(logging.INFO + 5, "NOTICE")

_FACILITIES = {
    name: getattr(logging.handlers.SysLogHandler, f"LOG_{name.upper()}")
    for name in (
        "daemon",
        "user",
        "local0",
        "local1",
        "local2",
        "local3",
        "local4",
        "local5",
        "local6",
        "local7",
    )
}


def python_level(level: int) -> int:
    return _LEVELS.get(max(0, min(level, 7)), logging.INFO)


def _syslog(facility: str) -> logging.Handler:
    handler = logging.handlers.SysLogHandler(
        address="/dev/log", facility=_FACILITIES.get(facility, _FACILITIES["daemon"])
    )
    handler.ident = "relayd: "
    return handler


def _renderer(fmt: str) -> structlog.typing.Processor:
    if fmt == "json":
        return structlog.processors.JSONRenderer()
    if fmt == "parsable":
        return structlog.processors.LogfmtRenderer(
            key_order=["timestamp", "level", "event", "call_id", "from_tag", "worker"],
            drop_missing=True,
        )
    return structlog.dev.ConsoleRenderer(colors=False)


_PROCESS: dict[str, Any] = {}  # fields on every line of this process (a shard's index)


def bind_process(**fields: Any) -> None:
    """Fields every later line of this process carries (``shard=2``)."""
    _PROCESS.update(fields)


def _merge_process(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key, value in _PROCESS.items():
        event.setdefault(key, value)
    return event


def configure(
    level: int = 6,
    *,
    stderr: bool = True,
    facility: str = "daemon",
    fmt: str = "default",
    timestamps: bool = True,
    rtcp_facility: str = "",
    dtmf_facility: str = "",
) -> None:
    """Set up logging once at start-up (and again on reload)."""
    handler = logging.StreamHandler(sys.stderr) if stderr else _syslog(facility)
    processors: list[structlog.typing.Processor] = [
        _merge_process,
        _merge_call,
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
    ]
    if timestamps and stderr:
        processors.append(structlog.processors.TimeStamper(fmt="iso", utc=True))
    formatter = structlog.stdlib.ProcessorFormatter(
        processor=_renderer(fmt), foreign_pre_chain=processors
    )
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(python_level(level))
    # asyncio's own debug chatter ("Using selector: …") is not relayd's to report
    logging.getLogger("asyncio").setLevel(max(python_level(level), logging.INFO))
    for name, own_facility in ((RTCP_LOGGER, rtcp_facility), (DTMF_LOGGER, dtmf_facility)):
        own_logger = logging.getLogger(name)
        own_logger.handlers[:] = []
        own_logger.propagate = True
        if own_facility and not stderr:
            own = _syslog(own_facility)
            own.setFormatter(formatter)
            own_logger.handlers[:] = [own]
            own_logger.propagate = False
    structlog.configure(
        processors=[*processors, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        # events below the level are dropped before any processor runs: at log-level 3
        # the per-request info events cost nothing
        wrapper_class=structlog.make_filtering_bound_logger(_filter_level(level)),
        cache_logger_on_first_use=False,
    )
    _reconfigured(level)


def _filter_level(level: int) -> int:
    """structlog filters on the standard levels only: NOTICE (5) hides info, as in rtpengine."""
    wanted = python_level(level)
    return min(
        (
            lvl
            for lvl in (
                logging.DEBUG,
                logging.INFO,
                logging.WARNING,
                logging.ERROR,
                logging.CRITICAL,
            )
            if lvl >= wanted
        ),
        default=logging.CRITICAL,
    )


def set_level(level: int) -> None:
    logging.getLogger().setLevel(python_level(level))
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(_filter_level(level)))
    _reconfigured(level)


def get_logger(name: str = "relayd") -> Any:
    return Logger(name)


CallContext = tuple[str | None, str | None, int | None]  # call-id, from-tag, worker

# The call the current request (or timer) is about: on every line logged meanwhile.
# One variable for the three values, so a request costs one set and one reset.
_CALL: contextvars.ContextVar[CallContext | None] = contextvars.ContextVar(
    "relayd_call", default=None
)


def bind_call(
    call_id: str | None, from_tag: str | None = None, worker: int | None = None
) -> contextvars.Token[CallContext | None]:
    """Name the call of the lines that follow; undo with :func:`unbind_call`."""
    return _CALL.set((call_id, from_tag, worker))


def unbind_call(token: contextvars.Token[CallContext | None]) -> None:
    _CALL.reset(token)


def _merge_call(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> Mapping[str, Any]:
    call = _CALL.get()
    if call is not None:
        event.setdefault("call_id", call[0])
        if call[1] is not None:
            event.setdefault("from_tag", call[1])
        event.setdefault("worker", call[2])
    return event


_generation = 0  # bumped by every (re)configuration: loggers rebuild what they cache
_threshold = logging.INFO  # the lowest stdlib level that is written


class Logger:
    """A module's logger: structlog's filtering logger for ``name``, built once per
    configuration. structlog's lazy proxy would build it again on every call, which
    costs more than the event itself on the request path (most events are filtered)."""

    __slots__ = ("_bound", "_generation", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self._bound: Any = None
        self._generation = -1

    def _logger(self) -> Any:
        if self._generation != _generation:
            self._bound = structlog.get_logger(self.name).bind()
            self._generation = _generation
        return self._bound

    def enabled(self, level: int) -> bool:
        """Whether an event at stdlib ``level`` is written: for lines on the request path
        whose fields cost something to work out."""
        return level >= _threshold

    def debug(self, event: str, **kw: Any) -> None:
        self._logger().debug(event, **kw)

    def info(self, event: str, **kw: Any) -> None:
        self._logger().info(event, **kw)

    def warning(self, event: str, **kw: Any) -> None:
        self._logger().warning(event, **kw)

    def error(self, event: str, **kw: Any) -> None:
        self._logger().error(event, **kw)

    def exception(self, event: str, **kw: Any) -> None:
        self._logger().exception(event, **kw)

    def critical(self, event: str, **kw: Any) -> None:
        self._logger().critical(event, **kw)


def _reconfigured(level: int) -> None:
    global _generation, _threshold
    _generation += 1
    _threshold = _filter_level(level)
