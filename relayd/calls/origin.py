"""What ``replace`` does to the o= and s= lines we write for a party's SDP (pure).

``username`` and ``session-name`` keep those of the party's first SDP.

``SDP-version``, rules (rtpengine 10.5, t/auto-daemon-tests.pl "SDP version"):

* The first SDP a party sends keeps its own version; from then on the version we write
  for that party is ours: it stays as long as the SDP we write for it is the same, and
  goes up by one when that changes. What the party did to its own version counts for
  nothing; what it changed that we do not pass on (ICE we remove) neither.
* "The same" is the SDP as we write it, but for the version itself: a new port of ours,
  a new o= user or address counts as a change.
* Every session of a body with several gets that one version.
* The first version is read as C's ``strtoull`` reads it (leading digits, a sign, else 0);
  where that gives 0 (Firefox sends 0) or the largest 64-bit value (an overflow), a
  random 64-bit one is used instead. Counting on wraps at 2**64.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from typing import Any

from relayd.calls.model import Monologue
from relayd.ng.message import Request
from relayd.sdp.model import Line, Origin, SessionDescription
from relayd.sdp.write import write_sdp

__all__ = ["origin_fields", "stamp_version"]


def origin_fields(party: Monologue, sdp: SessionDescription, req: Request) -> dict[str, Any]:
    """The :class:`~relayd.calls.rewrite.RewriteOptions` of ``replace: username`` and
    ``session-name``: the o= user and s= of the party's first SDP, remembered here."""
    if party.first_username is None:
        origin = sdp.origin()
        if origin is not None:
            party.first_username = origin.username
            for ln in sdp.session:
                if ln.kind == "s":
                    party.first_session_name = ln.value
                    break
    replace = req.replace
    if not replace:
        return {}
    fields: dict[str, Any] = {}
    if "username" in replace:
        fields["origin_user"] = party.first_username
    if "session-name" in replace:
        fields["session_name"] = party.first_session_name
    return fields


def stamp_version(party: Monologue, sdp: SessionDescription) -> None:
    """Write ``party``'s o= version into ``sdp`` (the SDP we send out for it), counting on
    from what we wrote for it last."""
    origins = [
        (session.lines, at, Origin.parse(line.value))
        for session in sdp.sessions
        for at, line in enumerate(session.lines)
        if line.kind == "o"
    ]
    if not origins:
        return
    _set(origins, "")
    digest = hashlib.blake2b(
        write_sdp(sdp).encode(errors="surrogateescape"), digest_size=16
    ).digest()
    if party.out_version is None:
        party.out_version = _first_version(origins[0][2].version)
    elif digest != party.last_sdp:
        party.out_version = (party.out_version + 1) % _U64
    party.last_sdp = digest
    _set(origins, str(party.out_version))


_U64 = 1 << 64
_LEADING_NUMBER = re.compile(r"\s*([+-]?)([0-9]*)")


def _first_version(text: str) -> int:
    match = _LEADING_NUMBER.match(text)
    assert match is not None  # every part of the pattern may be empty
    sign, digits = match.groups()
    digits = digits.lstrip("0")
    if len(digits) > 20 or (digits and int(digits) >= _U64):
        value = _U64 - 1  # strtoull's overflow
    else:
        value = int(digits or "0")
        if sign == "-":
            value = -value % _U64
    if value in (0, _U64 - 1):
        value = secrets.randbits(64) or 1
    return value


def _set(origins: list[tuple[list[Line], int, Origin]], version: str) -> None:
    for lines, at, origin in origins:
        lines[at] = Line("o", str(origin._replace(version=version)))
