"""``relayctl set``: the limits on new calls changed in a running relayd (pure).

rtpengine-ctl's ``set maxsessions N`` is how operators drain an rtpengine behind Kamailio:
``0`` refuses every new call with the ``load limit`` answer (Kamailio moves the call to the
next instance) while the calls already there, and their in-dialog requests, go on; ``-1``
lifts the limit. The same names work here (``maxsessions``, ``maxload``, ``maxcpu``,
``maxbw``), and the configuration keys too (``max-sessions`` …).

A value set here is the running configuration's (``relayctl config``, ``/metrics``) until
the next ``set``, reload or restart: a reload (``relayctl reload``, SIGHUP) puts back the
configuration file's value and lists the change under ``applied``. A drain that must
survive reloads and restarts belongs in the file (``max-sessions = 0``).

Unlike rtpengine-ctl, whose ``set maxbw N`` stores N × 100 (10.5: ``list maxbw`` then shows
``100000`` after ``set maxbw 1000``), ``maxbw`` takes bytes per second as ``max-bandwidth``
does.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from relayd.config import Config

__all__ = ["SETTINGS", "SettingError", "parse_setting", "with_setting"]

# relayctl's name (rtpengine-ctl's, or the configuration key) -> the Config field
SETTINGS = {
    "maxsessions": "max_sessions",
    "max-sessions": "max_sessions",
    "maxload": "max_load",
    "max-load": "max_load",
    "maxcpu": "max_cpu",
    "max-cpu": "max_cpu",
    "maxbw": "max_bandwidth",
    "max-bandwidth": "max_bandwidth",
}


class SettingError(ValueError):
    """A ``set`` that cannot be applied; the text says why."""


def parse_setting(name: str, text: str) -> tuple[str, int | float]:
    """The Config field and its value for ``relayctl set NAME VALUE``."""
    field = SETTINGS.get(name.lower())
    if field is None:
        known = ", ".join(k for k in SETTINGS if "-" not in k)
        raise SettingError(f"set what? {known}")
    try:
        value: int | float = float(text) if field in ("max_load", "max_cpu") else int(text)
    except ValueError:
        raise SettingError(f"{name}: not a number: {text!r}") from None
    if field == "max_sessions" and value < -1:
        raise SettingError(f"{name}: -1 (no limit), 0 (drain) or a number of calls")
    if field != "max_sessions" and value < 0:
        raise SettingError(f"{name}: 0 (no limit) or more")
    return field, value


def with_setting(config: Config, field: str, value: Any) -> tuple[Config, list[Any]]:
    """The configuration with ``field`` set, and ``[before, after]``."""
    before = getattr(config, field)
    return dataclasses.replace(config, **{field: value}), [before, value]
