"""Serialise a :class:`SessionDescription` back to text."""

from __future__ import annotations

from relayd.sdp.model import SessionDescription

__all__ = ["write_sdp"]


def write_sdp(sdp: SessionDescription) -> str:
    sessions = sdp.sessions
    media = sdp.media
    if len(sessions) == 1:  # nearly every body: its lines, then each section's
        out = [line.text for line in sessions[0].lines]
        for desc in media:
            out.append("m=" + desc.m_value())
            out += [line.text for line in desc.lines]
        out.append("")  # the last line's end
        return sdp.eol.join(out)
    out = []
    for at, session in enumerate(sessions):
        out += [line.text for line in session.lines]
        end = sessions[at + 1].first_media if at + 1 < len(sessions) else len(media)
        for desc in media[session.first_media : end]:
            out.append("m=" + desc.m_value())
            out += [line.text for line in desc.lines]
    eol = sdp.eol
    return eol.join(out) + eol
