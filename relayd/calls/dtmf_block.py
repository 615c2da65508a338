"""ng ``block DTMF`` and ``unblock DTMF`` (pure): whose DTMF is blocked, and how.

rtpengine 10.5's rules (learned from its answers and the packets it sends, 2026-12-06,
/usr/bin/rtpengine 10.5.3.5; its suite's block-DTMF scenarios are in
``t/auto-daemon-tests-delay-buffer.pl``):

* **Whom**, and the **errors**: as ``block media`` (media_block_match,
  relayd/calls/media_control.py :func:`party_of`): the flag ``all``, else ``label``,
  ``address``, ``from-tag``, else the whole call. A party's DTMF is what it *sends*.
* **Mode** (the ``DTMF-security`` key): ``drop``, ``silence``, ``tone``, ``random``,
  ``zero``, ``DTMF`` (or ``dtmf``), spelled exactly so. ``off``, a mode 10.5 does not know
  (it logs a warning and answers ok) and no key at all are the default: ``drop``, or, when
  the request names a ``trigger`` or a ``DTMF-security-trigger``, ``off``. Blocking with
  ``off`` clears the block it names, as 10.5 does.
* **Tone parameters**: ``frequency`` (Hz, > 0; default 400) of ``tone``; ``volume``
  (0..63, or -63..-1 for the same attenuation; 0 or unset: 10 dB) of the tone, DTMF and
  random digits; ``digit``/``code`` of ``DTMF`` (as ``play DTMF`` reads it; ``zero`` is 0).
* **Which applies**: the call's block if it has one, else the party's own
  (``Monologue.dtmf_security``, kept by :func:`refresh` after each command; a party that
  joins later starts with the whole call's: relayd/calls/parties.py).
* **Undoing**: ``unblock DTMF`` of one party clears its own block; of the whole call, the
  call's, and with ``all`` every party's too.
* **Triggers** (``trigger``, ``trigger-end``, ``trigger-end-time``, ``trigger-end-digits``,
  ``DTMF-security-trigger``, ``DTMF-security-trigger-end``) are read as 10.5 reads them for
  the default mode, but not acted on: relayd does not watch for trigger digits (logged).
  Nor does it delay media (``delay-buffer``, ``DTMF-delay``): it replaces DTMF as 10.5 does
  with a delay buffer, without the delay (docs/dtmf.md, "Blocking DTMF").

What blocking does to packets is the engine's (relayd/transcode/dtmfsecurity.py); the
party's direction gets a plan carrying the mode (relayd/calls/codec_plans.py
:func:`~relayd.calls.codec_plans.party_plan`), so a blocked party's media runs in the
workers, and goes back to the kernel path once unblocked.
"""

from __future__ import annotations

from typing import Any

from relayd.calls.dtmf_play import code_of
from relayd.calls.media_control import party_of
from relayd.calls.model import Call
from relayd.log import get_logger
from relayd.ng.message import NgError, Request
from relayd.transcode.plan import SECURITY_MODES, DtmfSecurity

__all__ = ["block", "refresh", "security_of", "unblock"]

log = get_logger("relayd.calls.dtmf_block")

_TRIGGERS = (
    "trigger",
    "trigger-end",
    "trigger-end-time",
    "trigger-end-digits",
    "dtmf-security-trigger",
    "dtmf-security-trigger-end",
)
_DEFAULT_FREQUENCY = 400
_DEFAULT_VOLUME = 10


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return value if isinstance(value, str) else ""


def _integer(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    text = _text(value).strip()
    try:
        return int(text, 10)
    except ValueError:
        return None


def _mode(value: Any) -> str:
    """The mode a ``DTMF-security`` value names, "" for none (unset, ``off``, unknown)."""
    if value is None:
        return ""
    text = _text(value)
    if text == "dtmf":
        text = "DTMF"
    if text == "off":
        return ""
    if text not in SECURITY_MODES:
        log.warning("dtmf.unknown_security_mode", mode=text)
        return ""
    return text


def security_of(values: dict[str, Any]) -> DtmfSecurity | None:
    """The block a ``block DTMF`` request's values ask for (module rules); None: ``off``."""
    mode = _mode(values.get("dtmf-security"))
    triggered = bool(_text(values.get("trigger"))) or bool(
        _mode(values.get("dtmf-security-trigger"))
    )
    if any(key in values for key in _TRIGGERS):
        log.warning("dtmf.trigger_unsupported", keys=[k for k in _TRIGGERS if k in values])
    if not mode:
        mode = "" if triggered else "drop"
    if not mode:
        return None
    frequency = _integer(values.get("frequency"))
    volume = _integer(values.get("volume"))
    if volume is not None and -63 <= volume < 0:
        volume = -volume
    if volume is None or not 0 < volume <= 63:
        volume = _DEFAULT_VOLUME
    digit = 0
    if mode == "DTMF":
        value = None
        for key, item in values.items():  # of code and digit the later one (dtmf_play)
            if key in ("code", "digit"):
                value = item
        if value is not None:
            try:
                digit = code_of(value)
            except NgError:
                log.warning("dtmf.bad_block_digit", digit=str(value))
    return DtmfSecurity(
        mode,
        digit,
        frequency if frequency is not None and frequency > 0 else _DEFAULT_FREQUENCY,
        volume,
    )


def block(call: Call, req: Request) -> None:
    """ng ``block DTMF`` on ``call``; NgError for rtpengine's errors (module rules)."""
    party = None if req.has("all") else party_of(call, req)
    security = security_of(req.values)
    if party is not None:
        party.dtmf_block = security
    else:
        call.dtmf_block = security
    log.info(
        "dtmf.block",
        tag=party.tag if party is not None else None,
        mode=security.mode if security is not None else "off",
    )
    refresh(call)


def unblock(call: Call, req: Request) -> None:
    """ng ``unblock DTMF`` on ``call``; NgError for rtpengine's errors (module rules)."""
    party = None if req.has("all") else party_of(call, req)
    if party is not None:
        party.dtmf_block = None
    else:
        call.dtmf_block = None
        if req.has("all"):
            for each in call.parties():
                each.dtmf_block = None
    log.info("dtmf.unblock", tag=party.tag if party is not None else None)
    refresh(call)


def refresh(call: Call) -> None:
    """Each party's ``dtmf_security``: the call's block, else its own."""
    for party in call.parties():
        party.dtmf_security = call.dtmf_block or party.dtmf_block
