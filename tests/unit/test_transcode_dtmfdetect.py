"""The DTMF detector (relayd/transcode/dtmfdetect.py) on generated tones: every digit, the
telephony limits on level, twist and duration, and audio that is no DTMF."""

from __future__ import annotations

import math
import random
import struct

import pytest

from relayd.transcode.dtmfdetect import BLOCK, COLUMNS, ROWS, Change, DtmfDetector, level
from relayd.transcode.tones import FREQUENCIES, tone

RATE = 8000
SILENCE = b"\x00\x00"


def two_tones(low: float, high: float, low_db: float, high_db: float, count: int) -> bytes:
    """``count`` samples of two sines at the given levels (dBm0 each)."""

    def amplitude(db: float) -> float:
        return 32767.0 * 10 ** ((db - 3.17) / 20)

    a, b = amplitude(low_db), amplitude(high_db)
    samples = [
        int(
            a * math.sin(2 * math.pi * low * n / RATE) + b * math.sin(2 * math.pi * high * n / RATE)
        )
        for n in range(count)
    ]
    return struct.pack(f"={count}h", *samples)


def detect(*parts: bytes) -> list[Change]:
    detector = DtmfDetector()
    changes: list[Change] = []
    for part in parts:
        changes += detector.push(part)
    return changes


def digits(changes: list[Change]) -> list[int]:
    return [c.event for c in changes if c.event >= 0]


@pytest.mark.parametrize("event", range(16))
def test_every_digit_found_once(event: int) -> None:
    changes = detect(SILENCE * 400, tone(event, 10, 0, 800, RATE), SILENCE * 800)
    assert [c.event for c in changes] == [event, -1]
    start, end = changes[0].position, changes[1].position
    # two blocks of tone to start, two without to end
    assert 400 + BLOCK < start <= 400 + 3 * BLOCK
    assert 1200 + BLOCK < end <= 1200 + 3 * BLOCK


def test_frequencies_are_q23s() -> None:
    assert {low for low, _ in FREQUENCIES} == set(ROWS)
    assert {high for _, high in FREQUENCIES} == set(COLUMNS)


def test_volume_is_the_tones_power() -> None:
    """RFC 4733 volume: the power of the two tones together, as dBm0 below 0. rtpengine's
    tone at volume 16 is heard at volume 16; two tones at -10 dBm0 each are -7 dBm0."""
    assert detect(tone(8, 16, 0, 800, RATE))[0].volume == 16
    assert detect(two_tones(852, 1336, -10, -10, 800))[0].volume == 7
    assert round(level(32767.0**2 / 2)) == 3  # a full-scale sine: +3.17 dBm0


def test_level_limit() -> None:
    assert digits(detect(two_tones(770, 1336, -33, -33, 800))) == [5]
    assert digits(detect(two_tones(770, 1336, -40, -40, 800))) == []


def test_twist_limits() -> None:
    """The low tone may be up to 8 dB louder than the high one, the high one up to 4 dB
    louder than the low one."""
    assert digits(detect(two_tones(697, 1209, -10, -17, 800))) == [1]
    assert digits(detect(two_tones(697, 1209, -10, -20, 800))) == []
    assert digits(detect(two_tones(697, 1209, -13, -10, 800))) == [1]
    assert digits(detect(two_tones(697, 1209, -16, -10, 800))) == []


def test_duration_limits() -> None:
    """A tone of one block's length is not a digit; a pause of one block does not split one."""
    assert digits(detect(SILENCE * 400, tone(3, 10, 0, 130, RATE), SILENCE * 800)) == []
    one = detect(
        SILENCE * 400, tone(3, 10, 0, 400, RATE), SILENCE * 90, tone(3, 10, 490, 400, RATE)
    )
    assert digits(one) == [3]
    two = detect(SILENCE * 400, tone(3, 10, 0, 400, RATE), SILENCE * 400, tone(3, 10, 0, 400, RATE))
    assert digits(two) == [3, 3]


def test_one_frequency_or_noise_is_no_digit() -> None:
    single = struct.pack(
        "=1600h", *(int(8000 * math.sin(2 * math.pi * 852 * n / RATE)) for n in range(1600))
    )
    assert detect(single) == []
    rng = random.Random(7)
    noise = struct.pack("=1600h", *(rng.randint(-8000, 8000) for _ in range(1600)))
    assert detect(noise) == []
    # a digit under loud noise: the tones are not the block's energy
    mixed = struct.pack(
        "=1600h",
        *(
            max(-32768, min(32767, a + b))
            for a, b in zip(
                struct.unpack("=1600h", tone(8, 20, 0, 1600, RATE)),
                struct.unpack("=1600h", noise),
                strict=True,
            )
        ),
    )
    assert detect(mixed) == []


def test_gaps_count_as_no_tone() -> None:
    detector = DtmfDetector()
    changes = detector.push(tone(9, 10, 0, 600, RATE))
    assert digits(changes) == [9]
    changes = detector.skip(400)
    assert [c.event for c in changes] == [-1]
    assert changes[0].position % BLOCK == 0
    # a tone split into odd pieces is found the same
    pieces = tone(9, 10, 0, 800, RATE)
    split = detect(pieces[: 2 * 37], pieces[2 * 37 : 2 * 500], pieces[2 * 500 :], SILENCE * 400)
    assert split == detect(pieces, SILENCE * 400)
