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
* **Triggers**: ``trigger`` (digits), ``trigger-end`` (or ``end-trigger``),
  ``trigger-end-time`` (ms), ``trigger-end-digits`` (a count; also ``end-trigger-time``,
  ``end-trigger-digits``), ``DTMF-security-trigger`` (the mode once triggered; none
  given: none, 10.5 blocks nothing then either), ``DTMF-security-trigger-end`` (the mode
  after the end; none given: none): a :class:`~relayd.transcode.plan.DtmfTrigger` on the
  party (``Monologue.dtmf_block_trigger``; the call's ``Call.dtmf_block_trigger``), kept
  in force beside the block (``Monologue.dtmf_trigger``). A request with a ``trigger``
  sets them, one without clears them; ``unblock DTMF`` clears them with the block. The
  trigger digits are watched in the engine (relayd/transcode/dtmftrigger.py). Digits are
  written ``0``-``9``, ``*``, ``#``, ``A``-``D`` (case aside; other characters never match).
* relayd does not delay media (``delay-buffer``, ``DTMF-delay``): it replaces DTMF as 10.5
  does with a delay buffer, without the delay (docs/dtmf.md, "Blocking DTMF").

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
from relayd.calls.values import integer
from relayd.log import get_logger
from relayd.ng.message import NgError, Request
from relayd.transcode.plan import SECURITY_MODES, DtmfSecurity, DtmfTrigger

__all__ = ["block", "refresh", "security_of", "trigger_of", "unblock"]

log = get_logger("relayd.calls.dtmf_block")

_DEFAULT_FREQUENCY = 400
_DEFAULT_VOLUME = 10


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return value if isinstance(value, str) else ""


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
    if not mode:
        mode = "" if triggered else "drop"
    return _security(mode, values)


def _security(mode: str, values: dict[str, Any]) -> DtmfSecurity | None:
    """The block of ``mode`` ("": none) with the request's tone parameters."""
    if not mode:
        return None
    frequency = integer(values.get("frequency"), 0)  # 0: unset, as any other not above 0
    volume = integer(values.get("volume"), 0)
    if -63 <= volume < 0:
        volume = -volume
    if not 0 < volume <= 63:
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
        frequency if frequency > 0 else _DEFAULT_FREQUENCY,
        volume,
    )


def _digits(value: Any) -> str:
    return _text(value).strip().upper()


def _first(values: dict[str, Any], *keys: str) -> Any:
    return next((values[k] for k in keys if k in values), None)


def trigger_of(values: dict[str, Any]) -> DtmfTrigger | None:
    """The triggers a ``block DTMF`` request's values set (module rules); None: no
    ``trigger``."""
    start = _digits(values.get("trigger"))
    if not start:
        return None
    # 10.5 reads both as bencode_get_integer_str (relayd/calls/values.py)
    end_ms = integer(_first(values, "trigger-end-time", "end-trigger-time"), 0)
    end_digits = integer(_first(values, "trigger-end-digits", "end-trigger-digits"), 0)
    return DtmfTrigger(
        start=start,
        end=_digits(_first(values, "trigger-end", "end-trigger")),
        on=_security(_mode(values.get("dtmf-security-trigger")), values),
        off=_security(_mode(values.get("dtmf-security-trigger-end")), values),
        end_ms=max(end_ms, 0),
        end_digits=max(end_digits, 0),
    )


def block(call: Call, req: Request) -> None:
    """ng ``block DTMF`` on ``call``; NgError for rtpengine's errors (module rules)."""
    party = None if req.has("all") else party_of(call, req)
    security = security_of(req.values)
    trigger = trigger_of(req.values)
    if party is not None:
        party.dtmf_block, party.dtmf_block_trigger = security, trigger
    else:
        call.dtmf_block, call.dtmf_block_trigger = security, trigger
    log.info(
        "dtmf.block",
        tag=party.tag if party is not None else None,
        mode=security.mode if security is not None else "off",
        trigger=trigger.start if trigger is not None else None,
    )
    refresh(call)


def unblock(call: Call, req: Request) -> None:
    """ng ``unblock DTMF`` on ``call``; NgError for rtpengine's errors (module rules)."""
    party = None if req.has("all") else party_of(call, req)
    if party is not None:
        party.dtmf_block = party.dtmf_block_trigger = None
    else:
        call.dtmf_block = call.dtmf_block_trigger = None
        if req.has("all"):
            for each in call.parties():
                each.dtmf_block = each.dtmf_block_trigger = None
    log.info("dtmf.unblock", tag=party.tag if party is not None else None)
    refresh(call)


def refresh(call: Call) -> None:
    """Each party's ``dtmf_security`` and ``dtmf_trigger``: the call's block and triggers
    where the call has either, else its own."""
    whole = call.dtmf_block is not None or call.dtmf_block_trigger is not None
    for party in call.parties():
        if whole:
            party.dtmf_security, party.dtmf_trigger = call.dtmf_block, call.dtmf_block_trigger
        else:
            party.dtmf_security, party.dtmf_trigger = party.dtmf_block, party.dtmf_block_trigger
