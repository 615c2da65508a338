"""Which shard owns an ng request, read off the raw message (pure).

With ``shards = N`` relayd's calls are split over N supervisor processes by a hash
of the call-id, so that offer, answer, delete, query and every re-INVITE of a call
reach the one process holding its state, whichever of the proxy's sockets sent
them. The front (:mod:`relayd.shards.front`) reads only what routing needs from
each message: the command and the call-id at the top level of the dictionary,
spelled as rtpengine accepts them (``call-id``, ``call_id``, ``Call-ID``…). The
hash is CRC-32, the same in every process and across restarts (Python's ``hash``
of bytes is salted per process).

Commands without a call-id go to every shard and their replies are merged
(``list``, ``statistics``), are answered by the front (``ping``), or go to
shard 0 (anything else, including malformed messages: it answers the error
exactly as a single relayd would).
"""

from __future__ import annotations

import json
import zlib
from typing import Any, NamedTuple

from relayd.ng.message import normalise

__all__ = ["FAN_OUT", "Route", "owner", "port_slice", "route_of"]

FAN_OUT = frozenset({"list", "statistics"})
"""Commands every shard answers, their replies merged (relayd.shards.merge)."""


class Route(NamedTuple):
    """What the front needs of a message: its command (normalised) and call-id, if any."""

    command: str
    call_id: bytes


def owner(call_id: bytes, shards: int) -> int:
    """The shard that holds a call."""
    return zlib.crc32(call_id) % shards if shards > 1 else 0


def _text(value: Any) -> bytes | None:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    return None


def route_of(body: bytes) -> Route:
    """The command and call-id of an ng message body (after the cookie). A body that is
    not a dictionary, or lacks them, routes with empty fields (to shard 0, which answers
    the error); nothing here raises."""
    command = b""
    call_id = b""
    try:
        items: list[tuple[Any, Any]]
        if body[:1] == b"{":
            doc = json.loads(body)
            items = list(doc.items()) if isinstance(doc, dict) else []
        else:
            items = list(_top_level(body))
        for key, value in items:
            if len(key) != 7:  # "call-id" and "command", however spelled, have 7 letters
                continue
            name = normalise(
                key.decode("utf-8", "surrogateescape") if isinstance(key, bytes) else str(key)
            )
            if name == "call-id":
                call_id = _text(value) or b""
            elif name == "command":
                command = _text(value) or b""
    except (ValueError, IndexError, RecursionError, UnicodeDecodeError):
        pass
    text = normalise(command.decode("utf-8", "surrogateescape")) if command else ""
    return Route(text, call_id)


def _string(data: bytes, pos: int) -> tuple[bytes, int]:
    """A bencoded string at ``pos``: its bytes and the offset after it."""
    colon = data.index(b":", pos)
    if not 0 < colon - pos <= 10 or not data[pos:colon].isdigit():
        raise ValueError("not a string")
    end = colon + 1 + int(data[pos:colon])
    if end > len(data):
        raise ValueError("truncated string")
    return data[colon + 1 : end], end


def _skip(data: bytes, pos: int, depth: int = 0) -> int:
    """The offset after the bencoded value at ``pos``, without decoding it."""
    if depth > 64:
        raise ValueError("nested too deep")
    head = data[pos : pos + 1]
    if head == b"i":
        return data.index(b"e", pos) + 1
    if head in (b"l", b"d"):
        pos += 1
        while data[pos : pos + 1] != b"e":
            if pos >= len(data):
                raise ValueError("truncated list")
            pos = _skip(data, pos, depth + 1)
        return pos + 1
    return _string(data, pos)[1]


def _top_level(body: bytes) -> list[tuple[bytes, Any]]:
    """The key/value pairs of a bencoded dictionary whose value is a string (the rest
    skipped over without decoding: an SDP body costs a length read)."""
    if body[:1] != b"d":
        return []
    pairs: list[tuple[bytes, Any]] = []
    pos = 1
    while pos < len(body) and body[pos : pos + 1] != b"e":
        key, pos = _string(body, pos)
        if body[pos : pos + 1].isdigit():
            value, pos = _string(body, pos)
            pairs.append((key, value))
        else:
            pos = _skip(body, pos)
    return pairs


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
