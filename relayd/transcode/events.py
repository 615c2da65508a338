"""RFC 4733 telephone-event payloads: read, and carried to another clock rate.

A telephone-event payload is one or more 4-byte blocks: event code, end bit and volume,
and a 16-bit duration in RTP clock units (RFC 4733 §2.3). When the output's
telephone-event runs at another clock than the input's (16 kHz in, 8 kHz out), each
duration is rescaled as rtpengine does (``0x0140`` at 16 kHz is ``0x00a0`` at 8 kHz);
the code, end bit and volume are kept. :func:`parse` reads a payload's first block, which
is what rtpengine reads of an event packet (the DTMF event log: relayd/worker/dtmf.py).
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["Event", "parse", "rescale"]


class Event(NamedTuple):
    """One telephone-event block (RFC 4733 §2.3): the event code (0-9, * = 10, # = 11, A-D =
    12-15, others for other tones), whether it is the event's end, its volume (the power as
    dBm0 below 0, 0-63) and its duration so far, in RTP clock units."""

    code: int
    end: bool
    volume: int
    duration: int


def parse(payload: bytes | bytearray | memoryview) -> Event | None:
    """The first block of a telephone-event payload; None when it is shorter than one."""
    if len(payload) < 4:
        return None
    flags = payload[1]
    return Event(payload[0], bool(flags & 0x80), flags & 0x3F, payload[2] << 8 | payload[3])


def rescale(payload: bytes, rate_in: int, rate_out: int) -> bytes:
    """``payload`` with its durations from ``rate_in`` to ``rate_out`` (capped at 0xffff);
    a trailing partial block is kept as it is."""
    if rate_in == rate_out:
        return payload
    out = bytearray(payload)
    for offset in range(0, len(out) - 3, 4):
        duration = int.from_bytes(out[offset + 2 : offset + 4], "big") * rate_out // rate_in
        out[offset + 2 : offset + 4] = min(duration, 0xFFFF).to_bytes(2, "big")
    return bytes(out)
