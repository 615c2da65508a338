"""Call timers: when a call ends if nothing happens, and the heap that finds the due ones (pure).

Rules (rtpengine 10.5's timers, its once-a-second kill-calls check):

* ``delete-delay``: a deleted call lingers that long (answers ``query``, takes a
  re-offer), then goes.
* ``final-timeout``: a call goes that long after it was created, whatever happens.
* ``offer-timeout``: an offer nobody answered goes that long after its last signal.
* ``timeout`` / ``silent-timeout``: an answered call goes when no media came for
  that long (``silent-timeout`` while a party holds: a zero address or a
  direction that is not ``sendrecv``), counted from the last signal or packet.
* A limit of 0 is off. When several deadlines have come, the first in the order
  above names the reason.

The heap keeps ``(deadline, call-id)`` entries; ``Call.reap_at`` says which entry
of a call counts, so a rescheduled call leaves its old entry behind as stale.
Media only moves a call's deadline later, which the look at the old deadline
finds. The clock is the caller's: every function takes ``now``.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum

from relayd.calls.model import Call

__all__ = ["Limits", "Reason", "TimerHeap", "deadlines", "expired"]

# stale entries tolerated before the heap is rebuilt, at least (else one per live call)
_COMPACT_FLOOR = 1024


class Reason(StrEnum):
    """Why a call left the registry: the log line's ``reason`` and the counter it adds to."""

    DELETED = "deleted"
    TERMINATED = "terminated"  # relayctl terminate: rtpengine's forced termination
    FINAL_TIMEOUT = "final timeout"
    OFFER_TIMEOUT = "offer timeout"
    TIMEOUT = "timeout"
    SILENT_TIMEOUT = "silent timeout"


@dataclass
class Limits:
    """The numbers from the configuration that bound calls: how many, and for how long.

    ``max_load``, ``max_cpu`` and ``max_bandwidth`` refuse new calls while the host is busy
    (0: no limit; :mod:`relayd.calls.load`)."""

    max_sessions: int = -1
    max_load: float = 0.0
    max_cpu: float = 0.0
    max_bandwidth: int = 0
    delete_delay: int = 30
    offer_timeout: int = 3600
    final_timeout: int = 0
    timeout: int = 60
    silent_timeout: int = 3600


def deadlines(call: Call, limits: Limits) -> list[tuple[float, Reason]]:
    """When the call ends if nothing happens meanwhile, and why; by precedence, so that of
    two deadlines that have both come the first names the reason. The one place both
    :func:`expired` and the timer heap read them from."""
    found = []
    if call.deleted_at is not None:
        found.append((call.deleted_at, Reason.DELETED))
    if limits.final_timeout:
        found.append((call.created + limits.final_timeout, Reason.FINAL_TIMEOUT))
    if not call.answered:
        if limits.offer_timeout:
            found.append((call.last_signal + limits.offer_timeout, Reason.OFFER_TIMEOUT))
    elif (media := _media_deadline(call, limits)) is not None:
        found.append(media)
    return found


def expired(call: Call, limits: Limits, now: float) -> Reason | None:
    """The reason the call ends at ``now``, or None while none of its deadlines has come."""
    for when, reason in deadlines(call, limits):
        if now >= when:
            return reason
    return None


def _media_deadline(call: Call, limits: Limits) -> tuple[float, Reason] | None:
    """When the call times out without media: ``timeout``, or ``silent timeout`` for a
    call on hold; None when that limit is off."""
    last = call.last_signal
    held = False
    for party in call.parties():
        for media in party.medias:
            held = held or not (media.send and media.recv) or media.zero_address
            for stream in media.streams:
                last = max(last, stream.stats.last_packet)
    if held:
        limit, reason = limits.silent_timeout, Reason.SILENT_TIMEOUT
    else:
        limit, reason = limits.timeout, Reason.TIMEOUT
    return (last + limit, reason) if limit else None


class TimerHeap:
    """Calls by the moment their timers must look at them next.

    With thousands of calls a timer run costs what is due, not a scan of all.
    """

    def __init__(self) -> None:
        self.entries: list[tuple[float, str]] = []  # (when, call-id), a heap
        self._stale = 0  # entries that no longer match their call's reap_at

    def schedule(self, call: Call, limits: Limits, calls: Mapping[str, Call]) -> None:
        """(Re)compute when the timers look at ``call`` next: after signalling, a restore
        or a change of limits."""
        found = deadlines(call, limits)
        when = min(w for w, _ in found) if found else None
        if call.reap_at:
            self._stale += 1  # its earlier entry no longer counts
        call.reap_at = when if when is not None else 0.0
        if when is not None:
            heapq.heappush(self.entries, (when, call.call_id))
        if self._stale > max(len(calls), _COMPACT_FLOOR):
            self._compact(calls)

    def forget(self, call: Call) -> None:
        """The call left the registry: its entry waits in the heap as a stale one."""
        if call.reap_at:
            self._stale += 1
            call.reap_at = 0.0

    def due(
        self, now: float, calls: Mapping[str, Call], limit: int | None = None
    ) -> Iterator[Call]:
        """Pop the calls whose moment has come (at most ``limit``); each must be expired or
        scheduled again."""
        entries = self.entries
        left = -1 if limit is None else limit
        while entries and entries[0][0] <= now and left != 0:
            when, call_id = heapq.heappop(entries)
            call = calls.get(call_id)
            if call is None or call.reap_at != when:
                self._stale = max(self._stale - 1, 0)
                continue  # gone, or rescheduled since (its newer entry counts)
            call.reap_at = 0.0
            left -= 1
            yield call

    def pending(self, now: float) -> bool:
        """Whether an entry's moment has come (stale ones included: popping them is cheap)."""
        return bool(self.entries) and self.entries[0][0] <= now

    def rebuild(self, calls: Mapping[str, Call], limits: Limits) -> None:
        """Limits changed (reload): every call's deadline anew."""
        for call in calls.values():
            call.reap_at = 0.0
        self.entries.clear()
        self._stale = 0
        for call in calls.values():
            self.schedule(call, limits, calls)

    def _compact(self, calls: Mapping[str, Call]) -> None:
        """Entries of calls that were rescheduled or removed wait in the heap for their
        time (an offer's is an hour away): once they outnumber the calls, the heap is
        built anew from the calls' own deadlines."""
        self.entries = [(c.reap_at, c.call_id) for c in calls.values() if c.reap_at]
        heapq.heapify(self.entries)
        self._stale = 0
