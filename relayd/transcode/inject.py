"""DTMF injection (ng ``play DTMF``): where a digit's event or tone goes in a stream (pure).

A direction whose plan has ``inject`` (relayd/transcode/plan.py) keeps an
:class:`Injector`: the digits ``play DTMF`` queued, and the one playing. The engine asks it,
for each packet it sends on, what the packet's span of the stream (its timestamp and
length, in the stream's clock) must carry instead of the audio. The rules are rtpengine
10.5's, read from the suite's "DTMF injection" scenarios (#163–#168) and from the live
daemon:

* A digit starts with the first packet sent after it was queued (its start: that packet's
  timestamp). It lasts ``duration`` ms, then ``pause`` ms (the gap before the next digit);
  the next digit starts with the first packet at or after the end of the pause.
* As RFC 4733 events (the receiver takes telephone-event): every packet that starts before
  the end of the digit is replaced by an event packet (the first marked), all with the
  digit's start as timestamp and as duration the span from the start to the packet's end;
  the first packet after that is replaced by the end packet (E bit, its duration counted the
  same way), sent three times; the rest of the pause is audio again. The volume field is
  the order's volume without its sign, at most 63.
* As tones (no telephone-event towards the receiver): the samples of the digit are its
  tone (relayd/transcode/tones.py), those of the pause silence, sample by sample: a packet
  that straddles the end of the tone or of the pause carries both.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

__all__ = ["Digit", "Injector", "Span"]

MAX_VOLUME = 63  # RFC 4733's volume field is six bits


@dataclass(frozen=True, slots=True)
class Digit:
    """One digit queued by ``play DTMF``: its event code (0–15), volume (dBm0, <= 0), and
    its duration and the pause after it, in ms."""

    code: int
    volume: int
    duration: int
    pause: int

    @property
    def level(self) -> int:
        """The RFC 4733 volume field: the attenuation below 0 dBm0, 0..63."""
        return min(abs(self.volume), MAX_VOLUME)


@dataclass(frozen=True, slots=True)
class Span:
    """What one packet's span must carry (all counts in the stream's clock ticks).

    ``tone``: the part of the packet (``offset``, ``count`` from its start) that is the
    digit's tone, ``tone_at`` ticks into the tone; ``silence``: the part that is pause,
    (offset, count). ``event``: the packet is replaced by an event packet (``end``: the
    digit's end packet, sent three times; ``first``: the digit's first, marked), starting at
    ``start`` and lasting ``duration``."""

    digit: Digit
    start: int  # the digit's first timestamp
    tone: tuple[int, int] = (0, 0)
    tone_at: int = 0
    silence: tuple[int, int] = (0, 0)
    event: bool = False
    end: bool = False
    first: bool = False
    duration: int = 0


@dataclass(slots=True)
class _Playing:
    digit: Digit
    start: int  # timestamp of the digit's first tick
    clock: int
    ended: bool = False  # its event end packet went out
    began: bool = False  # its first event packet went out

    @property
    def tone_end(self) -> int:
        return self.start + self.digit.duration * self.clock // 1000

    @property
    def pause_end(self) -> int:
        return self.tone_end + self.digit.pause * self.clock // 1000


def _after(a: int, b: int) -> int:
    """``a - b`` for 32-bit RTP timestamps that may wrap."""
    diff = (a - b) & 0xFFFFFFFF
    return diff - (1 << 32) if diff & 0x80000000 else diff


class Injector:
    """The digits of one direction, queued and playing (see the module's rules)."""

    def __init__(self) -> None:
        self.queue: deque[Digit] = deque()
        self.playing: _Playing | None = None

    def add(self, digit: Digit) -> None:
        self.queue.append(digit)

    @property
    def idle(self) -> bool:
        return self.playing is None and not self.queue

    def reset(self) -> None:
        """A new input stream: a digit under way is abandoned (its timeline was the old
        stream's); queued ones wait for the new stream's packets."""
        self.playing = None

    def span(self, ts: int, ticks: int, clock: int, events: bool) -> Span | None:
        """What the packet of ``ticks`` starting at timestamp ``ts`` (``clock`` Hz) must carry;
        None: its own audio. ``events``: the receiver takes telephone-event."""
        playing = self.playing
        if playing is not None and _after(ts, playing.pause_end) >= 0:
            playing = self.playing = None
        if playing is None:
            if not self.queue:
                return None
            playing = self.playing = _Playing(self.queue.popleft(), ts & 0xFFFFFFFF, clock)
        digit, start = playing.digit, playing.start
        into = _after(ts, start)  # ticks of the digit before this packet
        tone_ticks = playing.tone_end - start
        pause_ticks = playing.pause_end - start
        if events:
            if into < tone_ticks:
                first = not playing.began
                playing.began = True
                return Span(digit, start, event=True, first=first, duration=into + ticks)
            if not playing.ended:
                playing.ended = True
                return Span(digit, start, event=True, end=True, duration=into + ticks)
            return None
        tone = (0, max(0, min(ticks, tone_ticks - into)))
        silence_from = max(0, tone_ticks - into)
        silence = (silence_from, max(0, min(ticks, pause_ticks - into) - silence_from))
        return Span(digit, start, tone=tone, tone_at=max(0, into), silence=silence)
