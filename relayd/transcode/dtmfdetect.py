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

The arithmetic is numpy's: each block's powers at the eight frequencies are one product
of the block with a table of their cosines and sines (what eight Goertzel filters compute),
for all the blocks a packet completes at once; the rules above then look at eight numbers a
block. In pure Python the same took 45–85 µs per 20 ms packet of speech or tone, a third of
a transcoded stream's whole cost; numpy is imported by the first detector a process makes,
so workers that never detect do not carry it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

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
_BASIS: list[Any] = []  # the table of cosines and sines, made by the first detector


def _basis() -> Any:
    """The cosines then the sines of the eight frequencies over a block: a (16, BLOCK) array."""
    np = _numpy()
    n = np.arange(BLOCK)
    steps = 2 * np.pi * np.array(ROWS + COLUMNS, dtype=np.float64) / RATE
    return np.concatenate([np.cos(np.outer(steps, n)), np.sin(np.outer(steps, n))])


def _numpy() -> Any:
    import numpy  # here, not at the top: see the module's docstring

    return numpy


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


def _classify(energy: float, powers: list[float]) -> tuple[int, int]:
    """The digit a block hits (-1: none) and its volume, from its mean ``energy`` and the
    mean powers at the eight frequencies (rows, then columns)."""
    if energy < 2 * _MIN_POWER:
        return -1, 0
    rows, columns = powers[:4], powers[4:]
    row = max(range(4), key=rows.__getitem__)
    low = rows[row]
    if low < _MIN_POWER or any(rows[i] * RELATIVE_PEAK > low for i in range(4) if i != row):
        return -1, 0
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

    __slots__ = ("basis", "buffer", "candidate", "current", "hits", "misses", "np", "position")

    def __init__(self) -> None:
        self.np = _numpy()
        if not _BASIS:
            _BASIS.append(_basis())
        self.basis = _BASIS[0]
        self.buffer = bytearray()  # 16-bit native samples not yet in a block
        self.position = 0  # of the buffer's first sample
        self.current = -1  # the digit on, -1: none
        self.candidate = -1  # the digit the last block hit
        self.hits = 0
        self.misses = 0

    def push(self, pcm: bytes | bytearray) -> list[Change]:
        """8 kHz 16-bit native mono samples in; the changes the blocks they complete show."""
        buffer = self.buffer
        buffer += pcm[: len(pcm) // 2 * 2]
        count = len(buffer) // (2 * BLOCK)
        changes: list[Change] = []
        if not count:
            return changes
        np = self.np
        size = count * BLOCK * 2
        blocks = np.frombuffer(buffer, dtype=np.int16, count=count * BLOCK).astype(np.float64)
        del buffer[:size]
        blocks = blocks.reshape(count, BLOCK)
        energies = np.einsum("ij,ij->i", blocks, blocks) / BLOCK
        if energies.max() < 2 * _MIN_POWER:  # too quiet for a tone (silence): no products
            for _ in range(count):
                self._block(-1, 0, changes)
                self.position += BLOCK
            return changes
        sums = blocks @ self.basis.T  # (count, 16): each frequency's cosine and sine sums
        powers = (sums[:, :8] ** 2 + sums[:, 8:] ** 2) * (2.0 / (BLOCK * BLOCK))
        for energy, block_powers in zip(energies.tolist(), powers.tolist(), strict=True):
            self._block(*_classify(energy, block_powers), changes)
            self.position += BLOCK
        return changes

    def skip(self, count: int) -> list[Change]:
        """``count`` samples are missing (lost packets): no tone heard in them."""
        changes: list[Change] = []
        if count <= 0:
            return changes
        self.buffer += bytes(2 * count)
        while len(self.buffer) >= 2 * BLOCK:
            del self.buffer[: 2 * BLOCK]
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
