"""DTMF tones found in decoded audio (ITU-T Q.23/Q.24), to go out as RFC 4733 events.

rtpengine 10.5 runs the audio of a direction whose receiver takes telephone-event that the
sender does not send through a DTMF detector (spandsp's) and sends the digits it hears as
events (the suite's "PCM to RFC DTMF transcoding", "reverse DTMF transcoding - active").
relayd has its own detector, with the usual telephony rules:

* 8 kHz 16-bit mono audio, in blocks of 102 samples (12.75 ms: bins 78 Hz apart, finer
  than the 73 Hz between the closest DTMF frequencies); in each block the power at the 8
  DTMF frequencies (a single-bin DFT, what the Goertzel filter computes).
* A block **hits** a digit when its strongest low (row) and high (column) frequencies are
  each at least -36 dBm0 (:data:`MIN_LEVEL`), each at least 6 dB above every other
  frequency of its group (:data:`RELATIVE_PEAK`), within the twist allowed (the low tone at
  most 8 dB louder than the high one, the high at most 4 dB louder than the low:
  :data:`NORMAL_TWIST`, :data:`REVERSE_TWIST`), and together at least 60 % of the block's
  energy (:data:`TONE_SHARE`: speech and noise spread theirs).
* A digit **starts** when two blocks in a row hit it (at least 25.5 ms of tone; Q.24 asks
  that 40 ms be taken and allows shorter ones to be); it **ends** when two blocks in a row
  do not hit it (a dropout of one block does not split a digit). Each change is dated at
  the end of the block that confirmed it, where it is known (as spandsp's, which
  rtpengine uses, reports them): the suite's timing, two packets of tone before the event
  starts and one packet after the tone before it ends, follows from that.
* Its **volume** (RFC 4733 §2.3.2: the power of the tone, as dBm0 below 0) is measured on
  the block that confirmed it; μ-law's full-scale sine is +3.17 dBm0 (ITU-T G.711).

Positions count samples since the detector's first, gaps included (:meth:`skip`), so that
the engine can place each change on its output timeline.
"""

from __future__ import annotations

import math
import operator
import struct
from dataclasses import dataclass

__all__ = ["BLOCK", "Change", "DtmfDetector", "level"]

RATE = 8000
BLOCK = 102
ROWS = (697, 770, 852, 941)
COLUMNS = (1209, 1336, 1477, 1633)
# event code of (row, column): RFC 4733 §3.2 (0-9, * = 10, # = 11, A-D = 12-15)
_CODES = (
    (1, 2, 3, 12),
    (4, 5, 6, 13),
    (7, 8, 9, 14),
    (10, 0, 11, 15),
)
_FULL_SCALE = 32767.0 * 32767.0 / 2  # mean power of a full-scale sine
_DBM0_FULL_SCALE = 3.17  # dBm0 of a full-scale sine (G.711)
MIN_LEVEL = -36.0  # dBm0, each tone
RELATIVE_PEAK = 10 ** (6 / 10)
NORMAL_TWIST = 10 ** (8 / 10)  # low louder than high
REVERSE_TWIST = 10 ** (4 / 10)  # high louder than low
TONE_SHARE = 0.6
_MIN_POWER = _FULL_SCALE * 10 ** ((MIN_LEVEL - _DBM0_FULL_SCALE) / 10)
_HITS_TO_START = 2
_MISSES_TO_END = 2


def _tables(frequency: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    step = 2 * math.pi * frequency / RATE
    return (
        tuple(math.cos(step * n) for n in range(BLOCK)),
        tuple(math.sin(step * n) for n in range(BLOCK)),
    )


_ROW_TABLES = tuple(_tables(f) for f in ROWS)
_COLUMN_TABLES = tuple(_tables(f) for f in COLUMNS)


def _power(samples: tuple[int, ...], tables: tuple[tuple[float, ...], tuple[float, ...]]) -> float:
    """Mean power of one frequency in the block (a sine of amplitude A: A² / 2)."""
    re = sum(map(operator.mul, samples, tables[0]))
    im = sum(map(operator.mul, samples, tables[1]))
    return 2 * (re * re + im * im) / (BLOCK * BLOCK)


def level(power: float) -> float:
    """dBm0 of a mean power of 16-bit samples."""
    return 10 * math.log10(max(power, 1e-9) / _FULL_SCALE) + _DBM0_FULL_SCALE


@dataclass(frozen=True, slots=True)
class Change:
    """A digit starting (``event`` 0-15, its ``volume``) or ending (``event`` -1) at
    ``position`` (samples since the detector's first)."""

    position: int
    event: int
    volume: int = 0


def _classify(samples: tuple[int, ...]) -> tuple[int, int]:
    """The digit the block hits (-1: none) and its volume."""
    energy = sum(map(operator.mul, samples, samples)) / BLOCK
    if energy < 2 * _MIN_POWER:
        return -1, 0
    # the low group first: most audio that is no DTMF fails there, half the work saved
    rows = [_power(samples, t) for t in _ROW_TABLES]
    row = max(range(4), key=rows.__getitem__)
    low = rows[row]
    if low < _MIN_POWER or any(rows[i] * RELATIVE_PEAK > low for i in range(4) if i != row):
        return -1, 0
    columns = [_power(samples, t) for t in _COLUMN_TABLES]
    column = max(range(4), key=columns.__getitem__)
    high = columns[column]
    others = (columns[i] for i in range(4) if i != column)
    if high < _MIN_POWER or any(power * RELATIVE_PEAK > high for power in others):
        return -1, 0
    if low > high * NORMAL_TWIST or high > low * REVERSE_TWIST:
        return -1, 0
    if low + high < TONE_SHARE * energy:
        return -1, 0
    volume = min(63, max(0, round(-level(low + high))))
    return _CODES[row][column], volume


class DtmfDetector:
    """One stream's detector: audio in, digit changes out (see the module's rules)."""

    __slots__ = ("buffer", "candidate", "current", "hits", "misses", "position")

    def __init__(self) -> None:
        self.buffer: list[int] = []
        self.position = 0  # of the buffer's first sample
        self.current = -1  # the digit on, -1: none
        self.candidate = -1  # the digit the last block hit
        self.hits = 0
        self.misses = 0

    def push(self, pcm: bytes | bytearray) -> list[Change]:
        """8 kHz 16-bit native mono samples in; the changes the blocks they complete show."""
        self.buffer.extend(struct.unpack(f"={len(pcm) // 2}h", pcm[: len(pcm) // 2 * 2]))
        changes: list[Change] = []
        buffer = self.buffer
        while len(buffer) >= BLOCK:
            block = tuple(buffer[:BLOCK])
            del buffer[:BLOCK]
            self._block(*_classify(block), changes)
            self.position += BLOCK
        return changes

    def skip(self, count: int) -> list[Change]:
        """``count`` samples are missing (lost packets): no tone heard in them."""
        changes: list[Change] = []
        if count <= 0:
            return changes
        self.buffer.extend([0] * count)
        while len(self.buffer) >= BLOCK:
            del self.buffer[:BLOCK]
            self._block(-1, 0, changes)
            self.position += BLOCK
        return changes

    def _block(self, hit: int, volume: int, changes: list[Change]) -> None:
        start = self.position
        if hit >= 0 and hit == self.candidate:
            self.hits += 1
        else:
            self.hits = 1 if hit >= 0 else 0
        self.candidate = hit
        if self.current >= 0:
            if hit == self.current:
                self.misses = 0
                return
            self.misses += 1
            if self.misses < _MISSES_TO_END:
                return
            changes.append(Change(start + BLOCK, -1))
            self.current = -1
            self.misses = 0
        if hit >= 0 and self.hits >= _HITS_TO_START:
            self.current = hit
            changes.append(Change(start + BLOCK, hit, volume))
