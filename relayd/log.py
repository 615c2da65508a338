"""Structured logging: structlog on top of stdlib logging, rtpengine's levels and facilities.

``log-level`` is syslog's scale as in rtpengine (0 emerg … 7 debug). Output goes
to stderr (``log-stderr`` or foreground) or to syslog with ``log-facility``.
Context such as ``call_id`` and ``from_tag`` is bound per request through
contextvars, so every line of a call carries its call-id.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys
from typing import Any

import structlog

__all__ = ["configure", "get_logger"]

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


def configure(
    level: int = 6,
    *,
    stderr: bool = True,
    facility: str = "daemon",
    json: bool = False,
    timestamps: bool = True,
) -> None:
    """Set up logging once at start-up (and again on reload)."""
    handler: logging.Handler
    if stderr:
        handler = logging.StreamHandler(sys.stderr)
    else:
        address = "/dev/log"
        handler = logging.handlers.SysLogHandler(
            address=address, facility=_FACILITIES.get(facility, _FACILITIES["daemon"])
        )
        handler.ident = "relayd: "
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
    ]
    if timestamps and stderr:
        processors.append(structlog.processors.TimeStamper(fmt="iso", utc=True))
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(processor=renderer, foreign_pre_chain=processors)
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(python_level(level))
    structlog.configure(
        processors=[*processors, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        # events below the level are dropped before any processor runs: at log-level 3
        # the per-request info events cost nothing
        wrapper_class=structlog.make_filtering_bound_logger(python_level(level)),
        cache_logger_on_first_use=False,
    )


def set_level(level: int) -> None:
    logging.getLogger().setLevel(python_level(level))
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(python_level(level)))


def get_logger(name: str = "relayd") -> Any:
    return structlog.get_logger(name)
