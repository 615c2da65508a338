"""Parse an SDP body (RFC 8866) into :class:`SessionDescription` lines."""

from __future__ import annotations

from relayd.sdp.intern import Shared
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
    """
    eol = "\r\n" if "\r\n" in body else "\n"
    raw_lines = body.replace("\r\n", "\n").split("\n")
    while raw_lines and raw_lines[-1] == "":
        raw_lines.pop()
    if not raw_lines or not raw_lines[0].startswith("v="):
        raise SdpError("SDP does not start with v=")
    media: list[MediaDescription] = []
    session = Session([], 0, None, None)
    sessions = [session]
    for raw in raw_lines:
        raw = raw.rstrip("\r")
        if len(raw) < 2 or raw[1] != "=" or not raw[0].isalpha():
            raise SdpError(f"malformed line: {raw!r}")
        line = Line(raw[0], raw[2:])
        if line.kind == "v" and session.lines:
            # a further session in the same body (rtpengine takes them): its lines up to its
            # own first m=
            session = Session([], len(media), None, None)
            sessions.append(session)
        if line.kind == "m":
            desc = _parse_media(line.value)
            desc.parsed_connection = None
            media.append(desc)
        elif len(media) > session.first_media:
            media[-1].lines.append(line)
        else:
            session.lines.append(line)
        if line.kind == "c":
            connection = Connection.parse(line.value)
            if len(media) > session.first_media:
                if media[-1].parsed_connection is None:
                    media[-1].parsed_connection = connection
            elif session.parsed_connection is None:
                session.parsed_connection = connection
        elif line.kind == "o":
            parsed = Origin.parse(line.value)
            if len(media) == session.first_media and session.parsed_origin is None:
                session.parsed_origin = parsed
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
    media = MediaDescription(
        media=_shared(parts[0]),
        port=port,
        port_count=count,
        protocol=_shared(parts[2]),
        formats=parts[3:],
    )
    media.keep_verbatim(value)
    return media


# media types and transports: a few distinct words every call keeps in its model
_shared = Shared[str](256)


def _number(text: str) -> int | None:
    """ASCII digits only: ``str.isdigit`` also admits "²", which ``int`` refuses."""
    if not (text.isascii() and text.isdigit()) or len(text.lstrip("0")) > 5:
        return None
    return int(text)
