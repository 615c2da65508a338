"""Serialise a :class:`SessionDescription` back to text."""

from __future__ import annotations

from relayd.sdp.model import SessionDescription

__all__ = ["write_sdp"]


def write_sdp(sdp: SessionDescription) -> str:
    out: list[str] = []
    sessions = sdp.sessions
    media = sdp.media
    for at, session in enumerate(sessions):
        out += [line.text for line in session.lines]
        end = sessions[at + 1].first_media if at + 1 < len(sessions) else len(media)
        for desc in media[session.first_media : end]:
            out.append("m=" + desc.m_value())
            out += [line.text for line in desc.lines]
    eol = sdp.eol
    return eol.join(out) + eol
