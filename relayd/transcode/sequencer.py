"""Puts a stream's packets back in sequence before they are decoded, as rtpengine 10.5 does.

Rules (learned from rtpengine's packet sequencer, ``lib/codeclib.c``, and its transcoding
scenarios):

* The first packet sets the expected sequence number.
* A packet up to 99 numbers ahead of the expected one is early: it waits in the queue.
  One up to 99 behind (or already queued) is a duplicate: dropped.
* Anything further away is a sequence reset: the queue is emptied and the packet becomes
  the expected one (:meth:`insert` says so, so that the output sequence can run on).
* Packets leave in order. When the expected one is missing, the queue waits until it holds
  10 packets, or until the newest one is 60 ms of the input's clock past the last packet
  that left; then the lowest queued number after the gap goes next (the rest was lost).
"""

from __future__ import annotations

from typing import Generic, TypeVar

__all__ = ["DUPLICATE", "IN_ORDER", "RESET", "Sequencer"]

T = TypeVar("T")

DUPLICATE, IN_ORDER, RESET = -1, 0, 1
_DUPLICATE_WINDOW = 100
_WAIT_PACKETS = 10
_WAIT_MS = 60


class Sequencer(Generic[T]):
    """One input stream's queue; ``rate`` is its RTP clock (for the 60 ms wait)."""

    __slots__ = ("_newest", "expected", "last_ts", "lost", "queue", "wait_ts")

    def __init__(self, rate: int) -> None:
        self.expected = -1
        self.queue: dict[int, tuple[int, T]] = {}  # seq -> (timestamp, item)
        self.last_ts: int | None = None  # timestamp of the last packet that left
        self.wait_ts = rate * _WAIT_MS // 1000
        self.lost = 0
        self._newest = 0  # timestamp of the last packet queued

    def insert(self, seq: int, ts: int, item: T) -> int:
        """Queue a packet: :data:`IN_ORDER` (queued), :data:`DUPLICATE` (dropped) or
        :data:`RESET` (queued as the next one, the queue emptied)."""
        status = IN_ORDER
        if self.expected < 0:
            self.expected = seq
        else:
            ahead = (seq - self.expected) & 0xFFFF
            if ahead >= _DUPLICATE_WINDOW:
                if ahead > 0xFFFF - _DUPLICATE_WINDOW:
                    return DUPLICATE
                self.queue.clear()
                self.expected = seq
                status = RESET
        if seq in self.queue:
            return DUPLICATE
        self.queue[seq] = (ts, item)
        self._newest = ts
        return status

    def pop(self) -> tuple[int, int, T] | None:
        """The next packet to decode (seq, timestamp, item), or None: wait for more."""
        queue = self.queue
        if not queue:
            return None
        found = queue.pop(self.expected, None)
        seq = self.expected
        if found is None:
            if len(queue) < _WAIT_PACKETS and not self._overdue():
                return None
            seq = min(queue, key=lambda s: (s - self.expected) & 0xFFFF)
            self.lost += (seq - self.expected) & 0xFFFF
            found = queue.pop(seq)
        self.expected = (seq + 1) & 0xFFFF
        ts, item = found
        self.last_ts = ts
        return seq, ts, item

    def _overdue(self) -> bool:
        if self.last_ts is None:
            return False
        behind = (self._newest - self.last_ts) & 0xFFFFFFFF
        return 0 < behind < 0x80000000 and behind >= self.wait_ts
