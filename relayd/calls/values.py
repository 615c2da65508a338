"""ng values as rtpengine 10.5 reads them (pure): the commands that take numbers in any
spelling (``play DTMF``, ``play media``) read them alike."""

from __future__ import annotations

import re
from typing import Any

__all__ = ["integer"]

_STRTOLL = re.compile(r"[ \t\n\r\f\v]*([+-]?[0-9]+)")  # what strtoll reads, wholly


def integer(value: Any, default: int) -> int:
    """rtpengine's bencode_get_integer_str: an integer, or a string that is wholly one
    (leading white space and a sign allowed); anything else is ``default``."""
    if isinstance(value, bool):
        return default
    if isinstance(value, int):
        return value
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if not isinstance(value, str) or not value:
        return default
    match = _STRTOLL.fullmatch(value)
    return int(match.group(1), 10) if match else default
