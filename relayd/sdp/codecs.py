"""Payload types of a media section (the ng ``codec`` options: relayd.calls.codec_flags)."""

from __future__ import annotations

from collections.abc import Sequence

from relayd.calls.model import Codec
from relayd.sdp.intern import Shared
from relayd.sdp.model import MediaDescription

__all__ = ["CODEC_ATTRIBUTES", "STATIC_PAYLOAD_TYPES", "codecs_of"]

# RFC 3551 §6 static payload types; rtpengine prints an rtpmap for them even when absent.
STATIC_PAYLOAD_TYPES: dict[str, str] = {
    "0": "PCMU/8000",
    "3": "GSM/8000",
    "4": "G723/8000",
    "5": "DVI4/8000",
    "6": "DVI4/16000",
    "7": "LPC/8000",
    "8": "PCMA/8000",
    "9": "G722/8000",
    "10": "L16/44100/2",
    "11": "L16/44100",
    "12": "QCELP/8000",
    "13": "CN/8000",
    "14": "MPA/90000",
    "15": "G728/8000",
    "16": "DVI4/11025",
    "17": "DVI4/22050",
    "18": "G729/8000",
    "25": "CelB/90000",
    "26": "JPEG/90000",
    "28": "nv/90000",
    "31": "H261/90000",
    "32": "MPV/90000",
    "33": "MP2T/90000",
    "34": "H263/90000",
}


# Every call of a deployment offers much the same few codecs: each distinct one is
# kept once and shared by all media that list it (bounded: fmtp lines can be unique).
_shared = Shared[Codec](4096)

CODEC_ATTRIBUTES = frozenset({"rtpmap", "fmtp", "rtcp-fb"})
"""The attributes that describe payload types: :func:`codecs_of` reads their lines."""
# A phone model sends the same payload list every time: the codecs of each distinct
# (formats, rtpmap/fmtp/rtcp-fb lines) are worked out once. Bounded: lines come from
# the network.
_LISTS: dict[tuple[tuple[str, ...], tuple[str, ...]], tuple[Codec, ...]] = {}
_LISTS_LIMIT = 4096


def codecs_of(desc: MediaDescription, lines: tuple[str, ...]) -> tuple[Codec, ...]:
    """The payload types of an RTP media section, with their rtpmap/fmtp/rtcp-fb.

    ``lines``: the values of the section's :data:`CODEC_ATTRIBUTES` lines, in order (the
    caller picks them out in its own pass over the section's lines)."""
    if not desc.protocol.startswith(("RTP/", "UDP/TLS/RTP/")):
        return ()
    key = (tuple(desc.formats), lines)
    known = _LISTS.get(key)
    if known is None:
        known = _codecs(desc.formats, lines)
        if len(_LISTS) < _LISTS_LIMIT:
            _LISTS[key] = known
    return known


def _codecs(formats: Sequence[str], lines: Sequence[str]) -> tuple[Codec, ...]:
    rtpmap: dict[str, str] = {}
    fmtp: dict[str, str] = {}
    feedback: dict[str, list[str]] = {}
    for line in lines:
        attr, _, value = line.partition(":")
        pt, _, rest = value.partition(" ")
        rest = rest.strip()
        if attr == "rtpmap":
            if rest.endswith("/1") and rest.count("/") == 2:
                rest = rest[:-2]  # one channel is the default (RFC 4566 §6); rtpengine drops it
            rtpmap.setdefault(pt, rest)
        elif attr == "fmtp":
            fmtp.setdefault(pt, rest)
        else:
            feedback.setdefault(pt, []).append(rest)
    return tuple(
        _shared(
            Codec(
                pt,
                rtpmap.get(pt) or STATIC_PAYLOAD_TYPES.get(pt, ""),
                fmtp.get(pt, ""),
                tuple(feedback.get(pt, ())),
            )
        )
        for pt in formats
    )
