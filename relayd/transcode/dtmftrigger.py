"""ng ``block DTMF``'s triggers: which block a sender's digit gets, as its digits go by (pure).

rtpengine 10.5 switches a party's DTMF blocking on when the party's digits end with the
``trigger`` sequence (to ``DTMF-security-trigger``'s mode) and off again (to
``DTMF-security-trigger-end``'s, none by default) when its digits after that end with
``trigger-end``, or after ``trigger-end-digits`` digits, or ``trigger-end-time`` ms. relayd
does what 10.5 does with a delay buffer, without delaying (docs/dtmf.md, "Blocking DTMF"):
a digit's block is decided when the digit starts, from the digits before it, and holds for
the whole digit, so that no digit goes out in part:

* the digit that completes the trigger is blocked already (10.5 with a delay buffer holds
  it until it knows; without one it lets the digit's first event packet through);
* the digits while triggered are blocked, the one completing ``trigger-end`` included, and
  so is the one that reaches ``trigger-end-digits`` (counting those after the trigger);
  the next digit gets the end mode;
* ``trigger-end-time`` counts from the start of the digit that completed the trigger, in
  the sender's own RTP clock (its timestamps, as the engine times everything); a digit that
  starts later gets the end mode, one under way keeps its block;
* once ended, the watch starts again: the trigger sequence blocks the digits after it anew;
* the digits that count are those the sender sends as RFC 4733 events and, where the
  engine decodes the audio, those the detector hears (relayd/transcode/dtmfdetect.py).
"""

from __future__ import annotations

from relayd.transcode.plan import DtmfSecurity, DtmfTrigger

__all__ = ["CODES", "TriggerWatch"]

CODES = "0123456789*#ABCD"
"""The characters of the event codes 0-15 (RFC 4733), as triggers are written."""


def _char(code: int) -> str:
    return CODES[code] if 0 <= code < len(CODES) else "?"


def _ticks_after(ts: int, since: int) -> int:
    """``ts - since`` for 32-bit RTP timestamps that may wrap."""
    diff = (ts - since) & 0xFFFFFFFF
    return diff - (1 << 32) if diff & 0x80000000 else diff


class TriggerWatch:
    """One sender's digits against a :class:`DtmfTrigger` (module rules): :meth:`start` for
    each digit as it begins, :meth:`end` as it ends."""

    def __init__(self, trigger: DtmfTrigger, base: DtmfSecurity | None) -> None:
        self.trigger = trigger
        self.base = base
        self.restart()

    def restart(self) -> None:
        """A new stream: nothing seen yet, the block before the trigger."""
        self.current: DtmfSecurity | None = self.base
        self.triggered = False
        self.seen = ""  # the digits since the watch (re)started or was triggered
        self.since = 0  # timestamp of the digit that completed the trigger
        self.count = 0  # digits started since the trigger
        self.ending = False  # the digit under way ends the triggered block

    def start(self, code: int, ts: int, rate: int) -> DtmfSecurity | None:
        """A digit of event ``code`` begins at timestamp ``ts`` (``rate`` Hz): its block."""
        trigger = self.trigger
        if self.ending:  # the last one ended without our hearing its end
            self.end()
        elapsed = _ticks_after(ts, self.since) * 1000
        if self.triggered and trigger.end_ms > 0 and elapsed >= trigger.end_ms * rate:
            self._switch_off()
        self.seen = (self.seen + _char(code))[-64:]
        if not self.triggered:
            if trigger.start and self.seen.endswith(trigger.start):
                self.triggered, self.since, self.count, self.seen = True, ts, 0, ""
                self.current = trigger.on
            return self.current
        self.count += 1
        if (trigger.end and self.seen.endswith(trigger.end)) or (
            trigger.end_digits > 0 and self.count >= trigger.end_digits
        ):
            self.ending = True
        return self.current

    def end(self) -> None:
        """The digit under way has ended."""
        if self.ending:
            self._switch_off()

    def _switch_off(self) -> None:
        self.triggered, self.ending, self.seen = False, False, ""
        self.current = self.trigger.off
