"""ng ``play DTMF``: its digit, duration, volume and pause as rtpengine 10.5 reads them (pure).

rtpengine 10.5 (daemon/call_interfaces.c, call_play_dtmf_ng and the ``code``/``digit`` key):

* **Digit.** ``code`` and ``digit`` are one key. An integer is taken as it is; a string of one
  character is that character; a longer string is read as a decimal integer (anything else
  leaves the key unset). A value 0..15 is an event code; any other value is a character
  ("0"-"9", "*", "#", "A"-"D"), cut to a C ``char`` first. Unset, or neither: the error
  "Out of range 'code' specified". 10.5 plays one digit per command.
* **Duration** (ms): 0 or unset is 250; clamped to 100..5000. **Pause** (ms, between this
  event and the end of the previous one): 0 or unset is 100; clamped to 100..5000.
* **Volume**: unset is 9999; a positive value is negated (dBm0 below full scale, as the
  RFC 4733 volume field counts it).

The participant selection and the "no injection set up" errors belong to the command itself;
this module only turns the request's values into a `DtmfOrder`. What the live 10.5 answered
(2026-12-06, /usr/bin/rtpengine on loopback), in its order (party first, then the digit):
unknown call "Unknown call-ID"; no ``from-tag``/``label`` and no ``all`` flag "No participant
party specified"; unknown tag or label as media_block_match; a bad or missing digit "Out of
range 'code' specified"; a party that has sent no RTP yet "No SSRC context present for DTMF
injection" (the ``all`` flag goes in ``flags``, not a key of its own).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from relayd import ipc
from relayd.calls.media_control import party_of
from relayd.calls.model import Call, Monologue
from relayd.calls.values import integer
from relayd.ng.message import NgError, Request

__all__ = ["CODES", "DtmfOrder", "code_of", "injection", "order_of"]

CODES = "0123456789*#ABCD"
"""RFC 4733's events 0..15 as characters (rtpengine's dtmf_code_to_char)."""

_UNSET = -1
_OUT_OF_RANGE = "Out of range 'code' specified"


@dataclass(frozen=True)
class DtmfOrder:
    """One digit to inject: its event code, duration and pause in ms, volume (<= 0, dBm0)."""

    code: int
    duration: int
    volume: int
    pause: int


def _digit(value: Any) -> int:
    """The ``code``/``digit`` key's value as 10.5 stores it (an integer or a character)."""
    if value is None:
        return _UNSET
    digit = integer(value, _UNSET)
    if isinstance(value, (str, bytes)) and len(value) == 1:
        digit = value[0] if isinstance(value, bytes) else ord(value)
    return digit


def code_of(value: Any) -> int:
    """The event code (0..15) the key's value names; NgError as 10.5 answers otherwise."""
    digit = _digit(value)
    if 0 <= digit <= 15:
        return digit
    char = ((digit + 128) % 256) - 128  # a C char (signed on rtpengine's platforms)
    if char < 0 or chr(char) not in CODES:
        raise NgError(_OUT_OF_RANGE)
    return CODES.index(chr(char))


def _clamped(value: int, default: int) -> int:
    if not value:
        return default
    return min(max(value, 100), 5000)


def order_of(keys: dict[str, Any]) -> DtmfOrder:
    """The order a ``play DTMF`` request's keys (normalised names, in the request's order)
    give; of ``code`` and ``digit`` the later one counts, as in 10.5's dictionary walk."""
    value = None
    for key, item in keys.items():
        if key in ("code", "digit"):
            value = item
    duration = _clamped(integer(keys.get("duration"), 0), 250)
    pause = _clamped(integer(keys.get("pause"), 0), 100)
    volume = integer(keys.get("volume"), 9999)
    if volume > 0:
        volume = -volume
    return DtmfOrder(code_of(value), duration, volume, pause)


def _parties(call: Call, req: Request) -> list[Monologue]:
    """Whose media carries the digit: every party with the ``all`` flag, else the one
    ``label``, ``address`` or ``from-tag`` names (as ``block media`` selects)."""
    if req.has("all"):
        return list(call.parties())
    party = party_of(call, req)
    if party is None:
        raise NgError("No participant party specified")
    return [party]


def injection(call: Call, req: Request) -> ipc.InjectDtmf:
    """The worker's message for a ``play DTMF`` request on ``call`` (its ``request`` number
    0: the supervisor numbers it): the RTP sockets of the chosen parties' media, where what
    they send arrives, and the digit. NgError as 10.5 answers (party first, then the digit)."""
    parties = _parties(call, req)
    order = order_of(req.values)
    # a party signalled without ``inject DTMF`` gets nothing, and no error (as 10.5)
    keys = tuple(
        ipc.socket_key(media.local.local, media.port)
        for party in parties
        if party.inject_dtmf
        for media in party.medias
        if media.local is not None and media.port and not media.rejected
    )
    return ipc.InjectDtmf(0, keys, order.code, order.volume, order.duration, order.pause)
