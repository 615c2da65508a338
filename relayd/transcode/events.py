"""RFC 4733 telephone-event payloads carried to another clock rate.

A telephone-event payload is one or more 4-byte blocks: event code, end bit and volume,
and a 16-bit duration in RTP clock units (RFC 4733 §2.3). When the output's
telephone-event runs at another clock than the input's (16 kHz in, 8 kHz out), each
duration is rescaled as rtpengine does (``0x0140`` at 16 kHz is ``0x00a0`` at 8 kHz);
the code, end bit and volume are kept.
"""

from __future__ import annotations

__all__ = ["rescale"]


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
