"""Silence found in the audio a direction encodes, to go out as comfort noise instead.

rtpengine 10.5 with ``--silence-detect=PERCENT``, on a direction whose receiver takes CN
its sender does not send, marks decoded samples whose magnitude is at most PERCENT of full
scale as silent, and sends an encoded packet whose whole span is silent as a CN packet
carrying its ``--cn-payload`` (default one byte, ``0x20``: noise at -32 dBov, RFC 3389 §3)
in its place: same sequence number and timestamp (the suite's "add CN": 160 μ-law
``0xff`` go out as PT 13 ``"\\x20"``).

The test is made on the audio the encoder takes, packet by packet (a packet is silence
when all its samples are); where the engine translates G.711 code by code, on the codes
(a table of the codes that are silent).

Here relayd differs from rtpengine 10.5 on purpose: rtpengine's 16-bit test compares
each sample with the upper bound but the frame's second sample with the lower one (a slip
in ``__silence_detect_int16_t``); relayd compares every sample with both.
"""

from __future__ import annotations

from relayd.transcode import g711

__all__ = ["CN_PAYLOAD", "SilenceDetector", "threshold"]

CN_PAYLOAD = b"\x20"  # rtpengine's default --cn-payload


def threshold(percent: float) -> int:
    """The 16-bit sample magnitude ``percent`` of full scale allows, as rtpengine computes
    it (``percent / 100 * 0xffffffff`` as a 32-bit level, its upper 16 bits)."""
    return int(percent / 100.0 * 0xFFFFFFFF) >> 16


class SilenceDetector:
    """Tells silent packets: 16-bit PCM, or the G.711 codes of ``law`` ("PCMU", "PCMA")."""

    __slots__ = ("law_silent", "limit")

    def __init__(self, limit: int, law: str | None = None) -> None:
        self.limit = limit
        self.law_silent: bytes | None = None
        if law is not None:
            linear = g711.linear(law)
            self.law_silent = bytes(c for c in range(256) if abs(linear[c]) <= limit)

    def silent(self, audio: bytes | bytearray) -> bool:
        """Whether every sample of ``audio`` (one packet's) is within the limit."""
        if not audio:
            return False
        if self.law_silent is not None:
            return not bytes(audio).translate(None, self.law_silent)
        samples = memoryview(audio).cast("h")
        return max(samples) <= self.limit and min(samples) >= -self.limit
