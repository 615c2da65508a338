"""Which shard answers an ng request, read off the raw message (pure).

With ``shards = N`` relayd's calls are split over N supervisor processes by a hash
of the call-id, so that offer, answer, delete, query and every re-INVITE of a call
reach the one process holding its state, whichever of the proxy's sockets sent
them. Every shard receives a share of the UDP datagrams (the kernel spreads the
proxy's sockets over them, ``SO_REUSEPORT``) and the front receives the TCP
streams; both read only what routing needs from each message: the command and
the call-id at the top level of the dictionary, spelled as rtpengine accepts them
(``call-id``, ``call_id``, ``Call-ID``…). The hash is CRC-32, the same in every
process and across restarts (Python's ``hash`` of bytes is salted per process).

A message that names a call goes to the call's owner. Of the rest, ``list`` and
``statistics`` are asked of every shard and their replies merged (by the front);
anything else (``ping``, unknown commands, malformed messages) is answered where
it arrived, exactly as a single relayd would answer it.
"""

from __future__ import annotations

import json
import zlib
from typing import Any, NamedTuple

from relayd.ng.message import normalise

__all__ = [
    "FAN_OUT",
    "FRONT",
    "Route",
    "destination",
    "owner",
    "port_slice",
    "route_of",
    "route_of_request",
    "where",
]

FAN_OUT = frozenset({"list", "statistics"})
"""Commands every shard answers, their replies merged (relayd.shards.merge)."""

FRONT = -1
"""The destination of a message every shard answers: the front asks them all."""


class Route(NamedTuple):
    """What routing needs of a message: its command (normalised) and call-id, if any."""

    command: str
    call_id: bytes


def owner(call_id: bytes, shards: int) -> int:
    """The shard that holds a call."""
    return zlib.crc32(call_id) % shards if shards > 1 else 0


def destination(data: bytes, here: int, shards: int) -> int:
    """Where shard ``here`` sends an ng datagram (cookie and body) it received: the
    index of the call's owner (maybe ``here`` itself), FRONT for a
    ``list`` or ``statistics`` of every call, ``here`` for a message without a call-id."""
    cookie, space, body = data.partition(b" ")
    if not space or not cookie:
        return here  # no cookie: ignored where it came in (and logged there)
    return where(route_of(body), here, shards)


def where(route: Route, here: int, shards: int) -> int:
    """Where shard ``here`` sends a message routed as ``route``: see :func:`destination`."""
    command, call_id = route
    if call_id:
        return owner(call_id, shards)
    return FRONT if command in FAN_OUT else here


def _text(value: Any) -> bytes | None:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    return None


def route_of(body: bytes) -> Route:
    """The command and call-id of an ng message body (after the cookie). A body that is
    not a dictionary, or lacks them, routes with empty fields; nothing here raises."""
    try:
        if body[:1] == b"{":
            doc = json.loads(body)
            return route_of_request(doc) if isinstance(doc, dict) else Route("", b"")
        command, call_id = _bencoded(body)
    except (ValueError, IndexError, RecursionError, UnicodeDecodeError):
        return Route("", b"")
    text = normalise(command.decode("utf-8", "surrogateescape")) if command else ""
    return Route(text, call_id)


def route_of_request(doc: dict[str, Any]) -> Route:
    """The command and call-id of a decoded ng dictionary (JSON, or bencode as
    :func:`relayd.ng.message.decode_body` reads it); the last of each spelling in the
    dictionary's order wins, as in the parser."""
    command = ""
    call_id = b""
    for key, value in doc.items():
        if len(key) == 7:  # "call-id" and "command", however spelled, have 7 letters
            name = _NAMES.get(key) or normalise(key)
            if name == "call-id":
                call_id = _text(value) or b""
            elif name == "command":
                command = value if type(value) is str else ""
    return Route(normalise(command) if command else "", call_id)


_NAMES = {"call-id": "call-id", "command": "command"}  # as Kamailio and OpenSIPS spell them


def _bencoded(body: bytes) -> tuple[bytes, bytes]:
    """The command and call-id of a bencoded dictionary, as raw bytes (empty where
    missing; the last of each wins, as in the parser's dictionary).

    One flat walk over the tokens (no recursion, no value built): a string is skipped by
    its length (an SDP body costs a length read), lists and dictionaries by their depth;
    at the top level keys and values alternate, and only a 7-byte key with a string value
    is looked at. Lenient where the parser is strict (leading zeros, signs): a message
    that only parses here is refused by whichever shard answers it, with the same error.
    """
    command = call_id = b""
    if body[:1] != b"d":
        return command, call_id
    index = body.index
    pos, depth = 1, 0
    key: bytes | None = None  # at the top level: the key read, b"" when it is not of interest
    while True:
        head = body[pos]  # IndexError once past the end: truncated
        if 48 <= head <= 57:  # a digit: a string, "<length>:<bytes>"
            colon = index(b":", pos)
            start = colon + 1
            end = start + int(body[pos:colon])
            if end < start:
                raise ValueError("negative length")
            pos = end
            if depth:
                continue
            if key is None:
                key = body[start:end] if end - start == 7 else b""  # call-id, command
                continue
            if key:
                name = _KEYS.get(key) or normalise(key.decode("utf-8", "surrogateescape"))
                if name == "call-id":
                    call_id = body[start:end]
                elif name == "command":
                    command = body[start:end]
            key = None
        elif head == 101:  # "e": the end of a list or dictionary
            if not depth:
                return command, call_id
            depth -= 1
            pos += 1
        elif head == 108 or head == 100 or head == 105:  # "l", "d", "i"
            if not depth:
                if key is None:
                    raise ValueError("a key that is not a string")
                if key:  # call-id or command, not a string: the parser refuses it
                    name = _KEYS.get(key) or normalise(key.decode("utf-8", "surrogateescape"))
                    if name == "call-id":
                        call_id = b""
                    elif name == "command":
                        command = b""
                key = None
            if head == 105:
                pos = index(b"e", pos) + 1
            else:
                depth += 1
                pos += 1
        else:
            raise ValueError("not bencode")


_KEYS = {b"call-id": "call-id", b"command": "command"}  # as Kamailio and OpenSIPS spell them


def port_slice(port_min: int, port_max: int, index: int, shards: int) -> tuple[int, int]:
    """Shard ``index``'s part of the media port range: contiguous, disjoint, even-aligned
    (RTP on even ports, RTCP on the next), the last one taking the rest."""
    if shards <= 1:
        return port_min, port_max
    span = (port_max - port_min + 1) // shards
    span -= span % 2
    if span < 2:
        raise ValueError(f"port range {port_min}-{port_max} too small for {shards} shards")
    first = port_min + index * span
    last = port_max if index == shards - 1 else first + span - 1
    return first, last
