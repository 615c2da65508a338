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
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Any

from relayd.calls.model import Monologue
from relayd.ng.message import Request
from relayd.sdp.model import Line, Origin, SessionDescription
from relayd.sdp.write import write_sdp

__all__ = ["origin_fields", "stamp_version"]


def origin_fields(party: Monologue, sdp: SessionDescription, req: Request) -> dict[str, Any]:
    """The :class:`~relayd.calls.rewrite.RewriteOptions` of ``replace: username`` and
    ``session-name``: the o= user and s= of the party's first SDP, remembered here."""
    origin = sdp.origin()
    name = next((ln.value for ln in sdp.session if ln.kind == "s"), None)
    if party.first_username is None and origin is not None:
        party.first_username = origin.username
        party.first_session_name = name
    fields: dict[str, Any] = {}
    if "username" in req.replace:
        fields["origin_user"] = party.first_username
    if "session-name" in req.replace:
        fields["session_name"] = party.first_session_name
    return fields


def stamp_version(party: Monologue, sdp: SessionDescription) -> None:
    """Write ``party``'s o= version into ``sdp`` (the SDP we send out for it), counting on
    from what we wrote for it last. An o= version that is not a number is left alone."""
    origins = [
        (session.lines, at, Origin.parse(line.value))
        for session in sdp.sessions
        for at, line in enumerate(session.lines)
        if line.kind == "o"
    ]
    if not origins or not origins[0][2].version.isdigit():
        return
    _set(origins, "")
    digest = hashlib.blake2b(
        write_sdp(sdp).encode(errors="surrogateescape"), digest_size=16
    ).digest()
    if party.out_version is None:
        party.out_version = int(origins[0][2].version)
    elif digest != party.last_sdp:
        party.out_version += 1
    party.last_sdp = digest
    _set(origins, str(party.out_version))


def _set(origins: list[tuple[list[Line], int, Origin]], version: str) -> None:
    for lines, at, origin in origins:
        lines[at] = Line("o", str(replace(origin, version=version)))
