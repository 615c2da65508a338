"""ng commands on the call registry: pure, the clock passed in.

Each handler takes a :class:`Request` and ``now`` and returns the reply
dictionary (without ``result: ok``, which :meth:`Commands.handle` adds) or
raises :class:`NgError`. Reply keys and error strings are rtpengine 10.5's.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from relayd.calls.calltree import call_tree
from relayd.calls.model import Call
from relayd.calls.signalling import Signalling
from relayd.ng.message import NgError, Request

__all__ = ["Commands", "Limits", "Teardown"]

CALL_NOT_FOUND = "Call-ID not found or tags didn't match"


@dataclass
class Limits:
    max_sessions: int = -1
    delete_delay: int = 30
    offer_timeout: int = 3600
    final_timeout: int = 0
    timeout: int = 60
    silent_timeout: int = 3600


_TIMEOUT_COUNTERS = {  # reason -> the Totals counter it adds to (a delete counts in _remove)
    "final timeout": "final_timeouts",
    "offer timeout": "offer_timeouts",
    "timeout": "timeouts",
    "silent timeout": "silent_timeouts",
}


@dataclass(frozen=True)
class Teardown:
    """A call that left the registry, and why (for the log line and counters)."""

    call: Call
    reason: str  # "deleted", "terminated", "offer timeout", "final timeout", …


@dataclass
class Totals:
    managed: int = 0
    rejected: int = 0
    offer_timeouts: int = 0
    final_timeouts: int = 0
    timeouts: int = 0
    silent_timeouts: int = 0
    regular_terminated: int = 0
    forced_terminated: int = 0
    call_duration: float = 0.0
    commands: Counter[str] = field(default_factory=Counter)
    errors: int = 0

    @property
    def finished(self) -> int:
        """Calls ended for any reason (the ones ``call_duration`` adds up)."""
        return (
            self.regular_terminated
            + self.forced_terminated
            + self.offer_timeouts
            + self.final_timeouts
            + self.timeouts
            + self.silent_timeouts
        )


class Commands:
    def __init__(self, signalling: Signalling, limits: Limits, started: float) -> None:
        self.signalling = signalling
        self.limits = limits
        self.started = started
        self.calls: dict[str, Call] = {}
        self.totals = Totals()
        # calls by the time the timers must look at them: (when, call-id); an entry counts
        # while it matches its call's reap_at, the rest (_stale of them) are skipped
        self._due: list[tuple[float, str]] = []
        self._stale = 0
        self.on_teardown: Callable[[Teardown], None] | None = None
        self.place: Callable[[], int] = lambda: 0  # the worker a new call goes to
        self._handlers: dict[str, Callable[[Request, float], dict[str, Any]]] = {
            "ping": self.ping,
            "offer": self.offer,
            "answer": self.answer,
            "delete": self.delete,
            "query": self.query,
            "list": self.list_calls,
            "statistics": self.statistics,
        }

    def handle(self, req: Request, now: float) -> dict[str, Any]:
        """Run one request; errors become rtpengine's error replies."""
        handler = self._handlers.get(req.command)
        if handler is None:
            self.totals.errors += 1
            return {"result": "error", "error-reason": "Unrecognized command"}
        self.totals.commands[req.command] += 1
        try:
            reply = handler(req, now)
        except NgError as exc:
            self.totals.errors += 1
            if exc.reason == "Parallel session limit reached" and "load-limit" in req.supports:
                return {"result": "load limit", "message": exc.reason}
            return {"result": "error", "error-reason": exc.reason}
        reply.setdefault("result", "ok")
        return reply

    # -- commands -----------------------------------------------------------------------------

    def ping(self, req: Request, now: float) -> dict[str, Any]:
        return {"result": "pong"}

    def _require_ids(self, req: Request, *, to_tag: bool = False) -> None:
        if not req.call_id:
            raise NgError("No call-id in message")
        if not req.from_tag:
            raise NgError("No from-tag in message")
        if to_tag and not req.to_tag:
            raise NgError("No to-tag in message")

    def offer(self, req: Request, now: float) -> dict[str, Any]:
        if req.sdp is None:
            raise NgError("No SDP body in message")
        self._require_ids(req)
        if req.sdp == "":
            return {}  # rtpengine 10.5 answers an empty body with a bare "ok"
        call = self.calls.get(req.call_id)
        created = call is None
        if call is None:
            limit = self.limits.max_sessions
            if 0 <= limit <= len(self.calls):
                self.totals.rejected += 1
                raise NgError("Parallel session limit reached")
            call = Call(req.call_id, created=now, last_signal=now, worker=self.place())
            self.calls[req.call_id] = call
        call.deleted_at = None
        try:
            sdp = self.signalling.offer(call, req, now)
        except NgError:
            if created:
                self.signalling.release_call(call)
                del self.calls[req.call_id]
            raise
        if created:
            self.totals.managed += 1
        self.schedule(call)
        return {"sdp": sdp}

    def answer(self, req: Request, now: float) -> dict[str, Any]:
        if req.sdp is None:
            raise NgError("No SDP body in message")
        self._require_ids(req, to_tag=True)
        call = self.calls.get(req.call_id)
        if call is None:
            raise NgError("Unknown call-id")
        call.deleted_at = None
        sdp = self.signalling.answer(call, req, now)
        self.schedule(call)
        return {"sdp": sdp}

    def delete(self, req: Request, now: float) -> dict[str, Any]:
        if not req.call_id:
            raise NgError("No call-id in message")
        call = self.calls.get(req.call_id)
        if call is None or (
            req.from_tag
            and req.from_tag not in call.monologues
            and req.from_tag not in _aliases(call)
        ):
            if req.has("fatal"):
                raise NgError(CALL_NOT_FOUND)
            return {"warning": CALL_NOT_FOUND}
        reply = {} if req.has("fast") else self._stats(call)
        delay = req.delete_delay if req.delete_delay is not None else self.limits.delete_delay
        if delay <= 0:
            self._remove(call, "deleted", now)
        elif call.deleted_at is None:
            call.deleted_at = now + delay
            self.schedule(call)
        return reply

    def query(self, req: Request, now: float) -> dict[str, Any]:
        if not req.call_id:
            raise NgError("No call-id in message")
        call = self.calls.get(req.call_id)
        if call is None:
            raise NgError("Unknown call-id")
        return self._stats(call)

    def list_calls(self, req: Request, now: float) -> dict[str, Any]:
        limit = req.limit if req.limit is not None else 32
        return {"calls": list(self.calls)[: max(limit, 0)]}

    def statistics(self, req: Request, now: float) -> dict[str, Any]:
        from relayd.ops.statistics import statistics_reply

        return statistics_reply(self, now)

    def terminate(self, call_id: str, now: float) -> Teardown | None:
        """End a call at once (``relayctl terminate``): rtpengine's forced termination."""
        call = self.calls.get(call_id)
        if call is None:
            return None
        self.totals.forced_terminated += 1
        return self._remove(call, "terminated", now)

    # -- timers -------------------------------------------------------------------------------

    def reap(self, now: float) -> list[Teardown]:
        """Free calls whose delete-delay ran out, or that hit a timeout (offer, final, media).

        Only calls whose earliest deadline has come are looked at (a heap by deadline),
        so with thousands of calls a timer run costs what is due, not a scan of all.
        """
        gone: list[Teardown] = []
        due = self._due
        while due and due[0][0] <= now:
            when, call_id = heapq.heappop(due)
            call = self.calls.get(call_id)
            if call is None or call.reap_at != when:
                self._stale = max(self._stale - 1, 0)
                continue  # gone, or rescheduled since (its newer entry counts)
            call.reap_at = 0.0
            teardown = self._expire(call, now)
            if teardown is not None:
                gone.append(teardown)
            else:
                self.schedule(call)
        return gone

    def schedule(self, call: Call) -> None:
        """(Re)compute when the timers must look at ``call`` next: after signalling, a
        restore or a change of limits. Media only moves its deadline later, which the
        look at the old deadline finds."""
        when = self._next_deadline(call)
        if call.reap_at:
            self._stale += 1  # its earlier entry no longer counts
        call.reap_at = when if when is not None else 0.0
        if when is not None:
            heapq.heappush(self._due, (when, call.call_id))
        if self._stale > max(len(self.calls), 1024):
            self._compact()

    def reschedule(self) -> None:
        """Limits changed (reload): every call's deadline anew."""
        for call in self.calls.values():
            call.reap_at = 0.0
        self._due.clear()
        self._stale = 0
        for call in self.calls.values():
            self.schedule(call)

    def _compact(self) -> None:
        """Entries of calls that were rescheduled or removed wait in the heap for their
        time (an offer's is an hour away): once they outnumber the calls, the heap is
        built anew from the calls' own deadlines."""
        self._due = [(c.reap_at, c.call_id) for c in self.calls.values() if c.reap_at]
        heapq.heapify(self._due)
        self._stale = 0

    def _expire(self, call: Call, now: float) -> Teardown | None:
        """The call's first deadline that has come (in :meth:`_deadlines` order) ends it."""
        for when, reason in self._deadlines(call):
            if now >= when:
                counter = _TIMEOUT_COUNTERS.get(reason)
                if counter is not None:
                    setattr(self.totals, counter, getattr(self.totals, counter) + 1)
                return self._remove(call, reason, now)
        return None

    def _next_deadline(self, call: Call) -> float | None:
        deadlines = self._deadlines(call)
        return min(when for when, _ in deadlines) if deadlines else None

    def _deadlines(self, call: Call) -> list[tuple[float, str]]:
        """When the call ends if nothing happens meanwhile, and why; by precedence, so
        that of two deadlines that have both come the first names the reason. The one
        place both :meth:`_expire` and the timer heap read them from."""
        limits = self.limits
        deadlines = []
        if call.deleted_at is not None:
            deadlines.append((call.deleted_at, "deleted"))
        if limits.final_timeout:
            deadlines.append((call.created + limits.final_timeout, "final timeout"))
        if not call.answered:
            if limits.offer_timeout:
                deadlines.append((call.last_signal + limits.offer_timeout, "offer timeout"))
        elif (media := self._media_deadline(call)) is not None:
            deadlines.append(media)
        return deadlines

    def _media_deadline(self, call: Call) -> tuple[float, str] | None:
        """When the call times out without media: ``timeout``, or ``silent timeout`` for
        a call on hold; None when that limit is off."""
        last = call.last_signal
        held = False
        for party in call.parties():
            for media in party.medias:
                held = held or not (media.send and media.recv) or media.zero_address
                for stream in media.streams:
                    last = max(last, stream.stats.last_packet)
        if held:
            limit, reason = self.limits.silent_timeout, "silent timeout"
        else:
            limit, reason = self.limits.timeout, "timeout"
        return (last + limit, reason) if limit else None

    def _remove(self, call: Call, reason: str, now: float) -> Teardown:
        self.calls.pop(call.call_id, None)
        if call.reap_at:
            self._stale += 1  # its timer entry is left in the heap
            call.reap_at = 0.0
        self.signalling.release_call(call)
        if reason == "deleted":
            self.totals.regular_terminated += 1
        self.totals.call_duration += max(now - call.created, 0.0)
        teardown = Teardown(call, reason)
        if self.on_teardown:
            self.on_teardown(teardown)
        return teardown

    # -- stats trees --------------------------------------------------------------------------

    def _stats(self, call: Call) -> dict[str, Any]:
        return call_tree(call)


def _aliases(call: Call) -> set[str]:
    return {alias for mono in call.monologues.values() for alias in mono.aliases}
