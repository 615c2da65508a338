"""Serialise a :class:`SessionDescription` back to text."""

from __future__ import annotations

from relayd.sdp.model import SessionDescription

__all__ = ["write_sdp"]


def write_sdp(sdp: SessionDescription) -> str:
    out: list[str] = []
    for session in sdp.sessions:
        out.extend(str(line) for line in session.lines)
        for media in sdp.media_of(session):
            out.append(f"m={media.m_value()}")
            out.extend(str(line) for line in media.lines)
    return sdp.eol.join(out) + sdp.eol
