"""ng ``block media``, ``unblock media``, ``silence media`` and ``unsilence media`` (pure).

rtpengine 10.5's rules (daemon/call_interfaces.c, media_block_match):

* **Whom.** With the flag ``all``, the whole call. Otherwise the party named by ``label``,
  else the party whose first stream's SDP address is ``address``, else the party
  ``from-tag`` names; with none of these, the whole call. ``to-tag`` and ``directional``
  select nothing more in 10.5: a party's media is what it *sends*, to everyone.
* **Errors**, byte for byte: "No call-id in message", "Unknown call-ID" (sic: not the
  "Unknown call-id" of the other commands), "No monologue matching the given label",
  "Failed to parse network address", "Failed to match address to any tag",
  "From-tag given, but no such tag exists".
* **Undoing.** ``unblock``/``unsilence`` of one party clears that party; of the whole call,
  the call's own flag, and with ``all`` every party's as well: a party blocked by its tag
  stays blocked after a whole-call unblock without ``all``.

What it does to media (relayd/plane/forwarding.py plans it, the workers do it): what a
blocked party sends is read and dropped; what a silenced party sends goes on with its RTP
payload overwritten by its codec's silence (PCMU 0xFF, PCMA 0xD5, G.722 0xFA, one byte
repeated; other payload types and RTCP unchanged), as rtpengine does. Either takes the
party's streams out of the kernel while it lasts (relayd/plane/offload.py), so nothing
reaches the other side around the workers.
"""

from __future__ import annotations

import ipaddress

from relayd.calls.model import Call, Media, MediaControl, Monologue
from relayd.log import get_logger
from relayd.ng.message import NgError, Request

__all__ = ["SILENCE", "control", "party_of", "silence_patterns"]

log = get_logger("relayd.calls.media_control")

SILENCE = {"PCMU": 0xFF, "PCMA": 0xD5, "G722": 0xFA}
"""A codec's silence: the byte its payload is filled with (rtpengine's codec table)."""

_COMMANDS = {
    "block media": ("block", True),
    "unblock media": ("block", False),
    "silence media": ("silence", True),
    "unsilence media": ("silence", False),
}


def control(call: Call, req: Request) -> None:
    """Apply ``req`` (one of the four commands) to ``call``; NgError for rtpengine's errors."""
    what, on = _COMMANDS[req.command]
    party = None if req.has("all") else party_of(call, req)
    state = call.control if call.control is not None else MediaControl()
    tags = state.blocked if what == "block" else state.silenced
    if party is not None:
        if on:
            tags.add(party.tag)
        else:
            tags.discard(party.tag)
        log.info(f"media.{req.command.replace(' ', '_')}", tag=party.tag)
    else:
        setattr(state, what, on)
        if not on and req.has("all"):
            tags.clear()
        log.info(f"media.{req.command.replace(' ', '_')}", tag=None)
    call.control = None if state.idle else state


def silence_patterns(media: Media) -> str:
    """The silence of each of the party's payload types that has one, by its codecs:
    ``"0=ff 8=d5"`` (what the worker's socket for that party is told)."""
    found = []
    for codec in media.codecs:
        fill = SILENCE.get(codec.name.upper())
        if fill is not None:
            found.append(f"{codec.payload_type}={fill:02x}")
    return " ".join(found)


def party_of(call: Call, req: Request) -> Monologue | None:
    """The party ``req`` names (``label``, ``address``, ``from-tag``; rtpengine's order and
    errors), None for the whole call."""
    if req.label:
        for party in call.parties():
            if party.label == req.label:
                return party
        raise NgError("No monologue matching the given label")
    if req.address:
        try:
            wanted = ipaddress.ip_address(req.address.strip())
        except ValueError:
            raise NgError("Failed to parse network address") from None
        for party in call.parties():
            for media in party.medias:
                endpoint = media.remote_rtp
                if endpoint is None:
                    continue
                if _same(endpoint.address, wanted):  # each media's first stream (rtpengine)
                    return party
        raise NgError("Failed to match address to any tag")
    if req.from_tag:
        tagged = call.monologues.get(req.from_tag)
        if tagged is None:
            raise NgError("From-tag given, but no such tag exists")
        return tagged
    return None


def _same(address: str, wanted: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    try:
        return ipaddress.ip_address(address) == wanted
    except ValueError:
        return False
