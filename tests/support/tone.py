"""Test tones for media checks: G.711 μ-law (ITU-T G.711) and a frequency estimate.

A sender fills PCMU packets with a pure sine; a receiver decodes what arrives and
estimates its frequency, so "the audio decodes correctly" is checked by content,
not by the packets' mere existence. Pure Python: no numpy, no audioop.
"""

from __future__ import annotations

import itertools
import math
import struct

__all__ = [
    "alaw_decode",
    "alaw_encode",
    "dominant_hz",
    "mulaw_decode",
    "mulaw_encode",
    "pcm16",
    "tone",
    "tone_pcmu",
]

RATE = 8000
_BIAS = 0x84
_CLIP = 32635


def _encode_sample(sample: int) -> int:
    sign = 0x80 if sample < 0 else 0
    magnitude = min(abs(sample), _CLIP) + _BIAS
    exponent = 7
    mask = 0x4000
    while exponent > 0 and not magnitude & mask:
        exponent -= 1
        mask >>= 1
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def _decode_sample(byte: int) -> int:
    byte = ~byte & 0xFF
    sign, exponent, mantissa = byte & 0x80, (byte >> 4) & 0x07, byte & 0x0F
    magnitude = (((mantissa << 3) + _BIAS) << exponent) - _BIAS
    return -magnitude if sign else magnitude


_DECODE = [_decode_sample(b) for b in range(256)]


def mulaw_encode(samples: list[int]) -> bytes:
    return bytes(_encode_sample(s) for s in samples)


def mulaw_decode(data: bytes) -> list[int]:
    return [_DECODE[b] for b in data]


# G.711 A-law (ITU-T G.711): the segment ends of the 13-bit magnitude
_ALAW_SEGMENT_ENDS = (0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF)


def _alaw_encode_sample(sample: int) -> int:
    value = max(-32768, min(32767, sample)) >> 3
    mask = 0xD5 if value >= 0 else 0x55
    if value < 0:
        value = -value - 1
    segment = next((i for i, end in enumerate(_ALAW_SEGMENT_ENDS) if value <= end), 8)
    if segment >= 8:
        return 0x7F ^ mask
    code = segment << 4 | ((value >> 1 if segment < 2 else value >> segment) & 0x0F)
    return code ^ mask


def _alaw_decode_sample(byte: int) -> int:
    byte ^= 0x55
    magnitude = (byte & 0x0F) << 4
    segment = (byte & 0x70) >> 4
    if segment == 0:
        magnitude += 8
    else:
        magnitude = (magnitude + 0x108) << (segment - 1)
    return magnitude if byte & 0x80 else -magnitude


_ALAW_DECODE = [_alaw_decode_sample(b) for b in range(256)]


def alaw_encode(samples: list[int]) -> bytes:
    return bytes(_alaw_encode_sample(s) for s in samples)


def alaw_decode(data: bytes) -> list[int]:
    return [_ALAW_DECODE[b] for b in data]


def tone(hz: float, first: int, count: int, amplitude: int = 8000, rate: int = RATE) -> list[int]:
    """``count`` samples of a sine at ``hz``, starting at sample number ``first``."""
    return [
        round(amplitude * math.sin(2 * math.pi * hz * (first + i) / rate)) for i in range(count)
    ]


def tone_pcmu(hz: float, frame: int, samples: int = 160) -> bytes:
    """The PCMU payload of 20 ms frame number ``frame`` of a continuous tone."""
    return mulaw_encode(tone(hz, frame * samples, samples))


def pcm16(data: bytes) -> list[int]:
    """Signed 16-bit little-endian samples (an ``s16`` audio plane)."""
    return list(struct.unpack(f"<{len(data) // 2}h", data[: len(data) // 2 * 2]))


def dominant_hz(samples: list[int], rate: int = RATE) -> float:
    """The frequency of a pure tone, from its zero crossings (0.0 for silence)."""
    if len(samples) < 2 or max(abs(s) for s in samples) < 500:
        return 0.0
    crossings = sum(1 for a, b in itertools.pairwise(samples) if (a < 0) != (b < 0))
    return crossings / 2 / (len(samples) / rate)
