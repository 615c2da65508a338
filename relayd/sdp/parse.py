"""Parse an SDP body (RFC 8866) into :class:`SessionDescription` lines."""

from __future__ import annotations

from relayd.sdp.intern import Shared
from relayd.sdp.model import (
    Connection,
    Line,
    MediaDescription,
    Origin,
    SdpError,
    SessionDescription,
)

__all__ = ["parse_sdp"]


def parse_sdp(body: str) -> SessionDescription:
    """Split ``body`` into session and media lines.

    Raises :class:`SdpError` for a body rtpengine would refuse: no ``v=`` line
    first, a line that is not ``<letter>=``, a malformed ``m=``, ``c=`` or ``o=``.
    """
    eol = "\r\n" if "\r\n" in body else "\n"
    raw_lines = body.replace("\r\n", "\n").split("\n")
    while raw_lines and raw_lines[-1] == "":
        raw_lines.pop()
    if not raw_lines or not raw_lines[0].startswith("v="):
        raise SdpError("SDP does not start with v=")
    session: list[Line] = []
    media: list[MediaDescription] = []
    # the first c= of each section and the session's first o=, kept as parsed
    session_c: Connection | None = None
    origin: Origin | None = None
    for raw in raw_lines:
        raw = raw.rstrip("\r")
        if len(raw) < 2 or raw[1] != "=" or not raw[0].isalpha():
            raise SdpError(f"malformed line: {raw!r}")
        line = Line(raw[0], raw[2:])
        if line.kind == "m":
            desc = _parse_media(line.value)
            desc.parsed_connection = None
            media.append(desc)
        elif media:
            media[-1].lines.append(line)
        else:
            session.append(line)
        if line.kind == "c":
            connection = Connection.parse(line.value)
            if media:
                if media[-1].parsed_connection is None:
                    media[-1].parsed_connection = connection
            elif session_c is None:
                session_c = connection
        elif line.kind == "o":
            parsed = Origin.parse(line.value)
            if not media and origin is None:
                origin = parsed
    return SessionDescription(session, media, eol, session_c, origin)


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
