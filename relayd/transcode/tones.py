"""DTMF tones made from RFC 4733 events, for a receiver that takes no telephone-event.

rtpengine 10.5 turns the telephone-events a sender sends into the tones they stand for
when the receiver's codec is transcoded and it takes no telephone-event (the suite's
"reverse DTMF transcoding - active": event 8 at volume 16 becomes exactly the μ-law bytes
the suite sends elsewhere as the tone "8"). The samples are rtpengine's: the event's two
frequencies (ITU-T Q.23), each sine scaled by ``1 / (2 × 1.122018 ** volume)`` of full
scale (volume is the event's attenuation in dB below 0 dBm0, RFC 4733 §2.3.2: one step is
1 dB of amplitude), summed and cut towards zero to 16 bits; sample ``n`` of the event is
``sin(2π f n / rate)``, so an event's packets join up whatever their sizes.
"""

from __future__ import annotations

import math
import struct

__all__ = ["FREQUENCIES", "tone"]

# (low, high) Hz of events 0-9, * (10), # (11), A-D (12-15)
FREQUENCIES = (
    (941, 1336), (697, 1209), (697, 1336), (697, 1477), (770, 1209), (770, 1336),
    (770, 1477), (852, 1209), (852, 1336), (852, 1477), (941, 1209), (941, 1477),
    (697, 1633), (770, 1633), (852, 1633), (941, 1633),
)  # fmt: skip
_STEP = 1.122018  # rtpengine's amplitude ratio of one volume step (1 dB)


def tone(event: int, volume: int, offset: int, count: int, rate: int, channels: int = 1) -> bytes:
    """Samples ``offset`` to ``offset + count`` of ``event``'s tone at ``volume`` (0-63),
    16-bit native PCM at ``rate``, each sample repeated for ``channels`` channels; silence
    for an event that is no DTMF digit."""
    if not 0 <= event < len(FREQUENCIES):
        return b"\x00\x00" * count * channels
    low, high = FREQUENCIES[event]
    divisor = _STEP**volume * 2.0  # rtpengine's order of operations, for its exact samples
    step_low = low * 2 * math.pi / rate
    step_high = high * 2 * math.pi / rate
    samples = [
        int(
            math.sin(step_low * n) / divisor * 32767.0 + math.sin(step_high * n) / divisor * 32767.0
        )
        for n in range(offset, offset + count)
    ]
    if channels > 1:
        samples = [s for s in samples for _ in range(channels)]
    return struct.pack(f"={len(samples)}h", *samples)
