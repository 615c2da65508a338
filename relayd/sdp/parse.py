"""Parse an SDP body (RFC 8866) into :class:`SessionDescription` lines."""

from __future__ import annotations

from relayd.sdp.intern import Recurring, Shared
from relayd.sdp.model import (
    Connection,
    Line,
    MediaDescription,
    Origin,
    SdpError,
    Session,
    SessionDescription,
)

__all__ = ["parse_sdp"]


def parse_sdp(body: str) -> SessionDescription:
    """Split ``body`` into session and media lines (a further ``v=`` starts another session).

    Raises :class:`SdpError` for a body rtpengine would refuse: no ``v=`` line
    first, a line that is not ``<letter>=``, a malformed ``m=``, ``c=`` or ``o=``.
    One pass, ``a=`` lines (most of them) first and the current section's line list at
    hand: this runs for every offer and answer.
    """
    eol = "\r\n" if "\r\n" in body else "\n"
    text = body.replace("\r\n", "\n")
    raw_lines = text.split("\n")
    if "\r" in text:  # a line ending "\r" or "\r\r\n": the "\r" is no part of it
        raw_lines = [raw.rstrip("\r") for raw in raw_lines]
    while raw_lines and raw_lines[-1] == "":
        raw_lines.pop()
    if not raw_lines or not raw_lines[0].startswith("v="):
        raise SdpError("SDP does not start with v=")
    media: list[MediaDescription] = []
    session = Session([], 0, None, None)
    sessions = [session]
    section: Session | MediaDescription = session  # where the lines go now
    add = session.lines.append
    recurring = _RECURRING_LINES.get
    for raw in raw_lines:
        line = recurring(raw)
        if line is not None:  # a=rtpmap:0 PCMU/8000, t=0 0, ...: made before, checked then
            add(line)
            continue
        kind = raw[:1]
        if raw[1:2] != "=" or not kind.isalpha():
            raise SdpError(f"malformed line: {raw!r}")
        if kind == "a" or kind in _RECURRING_KINDS:
            line = Line(kind, raw[2:])
            if kind != "a" or line.attr in _RECURRING_ATTRIBUTES:
                _RECURRING_LINES.add(raw, line)
            add(line)
            continue
        if kind == "m":
            section = _parse_media(raw[2:])
            section.parsed_connection = None
            media.append(section)
            add = section.lines.append
            continue
        line = Line(kind, raw[2:])
        if kind == "c":
            add(line)
            if section.parsed_connection is None:
                section.parsed_connection = Connection.parse(line.value)
            else:
                Connection.parse(line.value)  # a malformed later one fails all the same
        elif kind == "o":
            add(line)
            parsed = Origin.parse(line.value)
            if section is session and session.parsed_origin is None:
                session.parsed_origin = parsed
        elif kind == "v" and session.lines:
            # a further session in the same body (rtpengine takes them): its lines up to its
            # own first m=
            section = session = Session([line], len(media), None, None)
            sessions.append(session)
            add = session.lines.append
        else:
            add(line)
    return SessionDescription(sessions, media, eol)


def _parse_media(value: str) -> MediaDescription:
    parts = value.split()
    if len(parts) < 3:
        raise SdpError(f"bad media line: m={value}")
    port_text, _, count_text = parts[1].partition("/")
    port = _number(port_text)
    count = _number(count_text) if count_text else None
    if port is None or port > 65535 or (count_text and count is None):
        raise SdpError(f"bad media port: m={value}")
    media = MediaDescription(_shared(parts[0]), port, count, _shared(parts[2]), parts[3:])
    media.keep_verbatim(value)
    return media


# Lines that come again in every SDP of a deployment's phones (their codecs, packet time,
# direction, timing) are made once and shared by every SDP that has them (lines are not
# changed once made). Bounded, since lines come from the network: a full table (of lines
# that did not come again, such as an H.264 fmtp unique to a call) starts over. Not the
# lines with addresses, ports, keys or ICE credentials: those differ from call to call.
_RECURRING_ATTRIBUTES = frozenset(
    {
        "rtpmap",
        "fmtp",
        "rtcp-fb",
        "ptime",
        "maxptime",
        "sendrecv",
        "sendonly",
        "recvonly",
        "inactive",
        "rtcp-mux",
        "silenceSupp",
    }
)
_RECURRING_LINES: Recurring[str, Line] = Recurring(4096)

# the other kinds of line made once: timing, and the session name ("s=-" from most phones)
_RECURRING_KINDS = frozenset({"t", "s"})

# media types and transports: a few distinct words every call keeps in its model
_shared = Shared[str](256)


def _number(text: str) -> int | None:
    """ASCII digits only: ``str.isdigit`` also admits "²", which ``int`` refuses."""
    if not (text.isascii() and text.isdigit()) or len(text.lstrip("0")) > 5:
        return None
    return int(text)
