"""Speech for audio-quality checks: synthesised with espeak-ng, compared by aligned correlation.

Nothing binary ships with the tests: the speech is made when a test needs it (espeak-ng, a
Debian package that scripts/test installs) and decoded and resampled to 8 kHz 16-bit mono
with PyAV (FFmpeg). Two signals carry "the same audio" when their normalised correlation,
at the best alignment within a window of lags, is high: a codec's delay and a relay's
timestamp offsets move the signal, loss punches holes in it, and a wrong codec or a
broken transcoder leaves noise that correlates with nothing. A transcoder may also close
the gap a lost packet leaves (rtpengine 10.5 does: its output timestamps run on without
it), which shifts everything after the loss: :func:`segmented_correlation` follows the
shift window by window.
"""

from __future__ import annotations

import math
import operator
import shutil
import subprocess
from array import array
from pathlib import Path

__all__ = ["RATE", "espeak_available", "segmented_correlation", "speech_8k"]

RATE = 8000
TEXT = (
    "Please call Stella. Ask her to bring these things with her from the store: "
    "six spoons of fresh snow peas, five thick slabs of blue cheese."
)


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def speech_8k(workdir: Path, text: str = TEXT) -> list[int]:
    """``text`` spoken by espeak-ng, as 8 kHz signed 16-bit samples."""
    import av  # PyAV: a test dependency (aiortc's), and the transcoder's library

    wav = workdir / "speech.wav"
    subprocess.run(
        ["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(wav), text],
        check=True,
        capture_output=True,
        timeout=30,
    )
    samples = array("h")
    resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
    with av.open(str(wav)) as container:
        for frame in container.decode(audio=0):
            for out in resampler.resample(frame):
                samples.frombytes(bytes(out.planes[0])[: out.samples * 2])
    for out in resampler.resample(None):
        samples.frombytes(bytes(out.planes[0])[: out.samples * 2])
    return samples.tolist()


def _window_correlation(
    reference: list[int], received: list[int], start: int, size: int, lag: int, step: int
) -> float:
    """Normalised correlation of ``reference[start:start + size]`` with ``received`` at
    ``start + lag``."""
    at = start + lag
    if at < 0 or at + size > len(received):
        return 0.0
    x, y = reference[start : start + size : step], received[at : at + size : step]
    dot = sum(map(operator.mul, x, y))
    energy = math.sqrt(sum(map(operator.mul, x, x)) * sum(map(operator.mul, y, y)))
    return dot / energy if energy else 0.0


def segmented_correlation(
    reference: list[int], received: list[int], max_lag: int, window: int = 2000, drift: int = 400
) -> float:
    """How well ``received`` carries ``reference``, window by window: each window of
    ``window`` samples is aligned on its own (the first within ±``max_lag``, each next
    within ±``drift`` of the one before, so a timeline shifted by a closed gap is followed),
    and the windows' correlations are averaged weighted by their energy; near-silent
    windows (under 1 % of the loudest) do not count."""
    starts = range(0, len(reference) - window + 1, window)
    energies = [
        sum(map(operator.mul, reference[s : s + window], reference[s : s + window])) for s in starts
    ]
    loudest = max(energies, default=0)
    lag: int | None = None
    total = weight = 0.0
    for start, energy in zip(starts, energies, strict=True):
        if energy < loudest / 100:
            continue
        span = (
            range(-max_lag, max_lag + 1, 2)
            if lag is None
            else range(lag - drift, lag + drift + 1, 2)
        )
        coarse = max(
            span, key=lambda g: _window_correlation(reference, received, start, window, g, 2)
        )
        lag = max(
            range(coarse - 2, coarse + 3),
            key=lambda g: _window_correlation(reference, received, start, window, g, 1),
        )
        total += energy * _window_correlation(reference, received, start, window, lag, 1)
        weight += energy
    return total / weight if weight else 0.0
