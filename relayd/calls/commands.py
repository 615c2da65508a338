"""ng commands on the call registry: pure, the clock passed in.

Each handler takes a :class:`Request` and ``now`` and returns the reply
dictionary (without ``result: ok``, which :meth:`Commands.handle` adds) or
raises :class:`NgError`. Reply keys and error strings are rtpengine 10.5's.
Calls end through :meth:`Commands.delete`, :meth:`Commands.terminate` or their
timers (:mod:`relayd.calls.timers`, run by :meth:`Commands.reap`); whoever
built the registry hears of each through ``on_teardown``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from relayd import ipc
from relayd.calls import dtmf_block
from relayd.calls.calltree import call_tree
from relayd.calls.dtmf_play import injection
from relayd.calls.load import SESSIONS, LoadLimited, LoadSample, load_refusal
from relayd.calls.media_control import control, party_of
from relayd.calls.model import Call
from relayd.calls.parties import detach_branch
from relayd.calls.playback import Playbacks
from relayd.calls.recording import Recordings
from relayd.calls.signalling import Signalling
from relayd.calls.statistics import Totals, statistics_reply
from relayd.calls.timers import Limits, Reason, TimerHeap, expired
from relayd.ng.message import NgError, Request

__all__ = ["Commands", "Teardown"]

CALL_NOT_FOUND = "Call-ID not found or tags didn't match"

_COUNTERS = {  # reason -> the Totals counter it adds to
    Reason.DELETED: "regular_terminated",
    Reason.TERMINATED: "forced_terminated",
    Reason.FINAL_TIMEOUT: "final_timeouts",
    Reason.OFFER_TIMEOUT: "offer_timeouts",
    Reason.TIMEOUT: "timeouts",
    Reason.SILENT_TIMEOUT: "silent_timeouts",
}


@dataclass(frozen=True)
class Teardown:
    """A call that left the registry, and why (for the log line and counters)."""

    call: Call
    reason: Reason


class Commands:
    """The call registry and the ng commands on it.

    ``calls`` is the registry (its owner may share it, read only, with others);
    ``place`` picks the worker a new call goes to; ``on_teardown`` hears of every
    call that leaves the registry, whatever ended it; ``refresh`` brings the media
    counters of calls whose timers came due up to date before they are judged (media
    the kernel forwarded is read only then); ``recordings`` decides what records
    (relayd/calls/recording.py).
    """

    def __init__(
        self,
        signalling: Signalling,
        limits: Limits,
        started: float,
        *,
        calls: dict[str, Call] | None = None,
        place: Callable[[], int] = lambda: 0,
        on_teardown: Callable[[Teardown], None] | None = None,
        refresh: Callable[[list[Call], float], None] | None = None,
        recordings: Recordings | None = None,
        playbacks: Playbacks | None = None,
    ) -> None:
        self.signalling = signalling
        self.limits = limits
        self.started = started
        self.calls: dict[str, Call] = {} if calls is None else calls
        self.totals = Totals()
        self.timers = TimerHeap()
        self.place = place
        self.on_teardown = on_teardown
        self.refresh = refresh
        self.recordings = recordings if recordings is not None else Recordings()
        self.playbacks = playbacks if playbacks is not None else Playbacks()
        # the host's load as the supervisor's timer last sampled it (relayd/calls/load.py)
        self.load = LoadSample()
        self._handlers: dict[str, Callable[[Request, float], dict[str, Any]]] = {
            "ping": self.ping,
            "offer": self.offer,
            "answer": self.answer,
            "delete": self.delete,
            "query": self.query,
            "list": self.list_calls,
            "statistics": self.statistics,
            "start recording": self.start_recording,
            "stop recording": self.stop_recording,
            "pause recording": self.pause_recording,
            "start forwarding": self.forwarding,
            "stop forwarding": self.forwarding,
            "block media": self.media_control,
            "unblock media": self.media_control,
            "silence media": self.media_control,
            "unsilence media": self.media_control,
            "block DTMF": self.dtmf_block,
            "unblock DTMF": self.dtmf_block,
            "play media": self.play_media,
            "stop media": self.stop_media,
            "play DTMF": self.play_dtmf,
        }
        # ``play DTMF``: the digits for the workers, taken by the supervisor after each request
        # (it numbers each, sends it to the call's worker and answers with what it says)
        self.injections: list[tuple[Call, ipc.InjectDtmf]] = []

    def handle(self, req: Request, now: float) -> dict[str, Any]:
        """Run one request; errors become rtpengine's error replies."""
        handler = self._handlers.get(req.command)
        if handler is None:
            self.totals.errors += 1
            return {"result": "error", "error-reason": "Unrecognized command"}
        self.totals.commands[req.command] += 1
        try:
            reply = handler(req, now)
        except LoadLimited as exc:
            if "load-limit" in req.supports:  # no error in errorcount (10.5)
                return {"result": "load limit", "message": exc.message}
            self.totals.errors += 1
            return {"result": "error", "error-reason": exc.reason}
        except NgError as exc:
            self.totals.errors += 1
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
        """ng ``offer``: the SDP for the offer's receiver, the call created on its first offer.

        A new call goes to the worker ``place`` picks; beyond ``max-sessions``, or while the
        host's load is over a load limit, it is refused (relayd/calls/load.py). An offer that
        fails removes the call it created; one with an empty body gets a bare ``ok``
        (rtpengine 10.5). A pending delete is cancelled.
        """
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
                raise LoadLimited(SESSIONS)
            busy = load_refusal(self.limits, self.load)
            if busy is not None:
                raise LoadLimited(busy)
            call = Call(req.call_id, created=now, last_signal=now, worker=self.place())
            self.calls[req.call_id] = call
        call.deleted_at = None
        try:
            sdp = self.signalling.offer(call, req, now)
        except Exception:  # an NgError, or a bug: either way the offer leaves nothing behind
            if created:
                self.signalling.release_call(call)
                del self.calls[req.call_id]
            raise
        if created:
            self.totals.managed += 1
        self.schedule(call)
        return {**self.recordings.signalled(call, req, "offer", sdp, now), "sdp": sdp}

    def answer(self, req: Request, now: float) -> dict[str, Any]:
        """ng ``answer``: the answer's SDP rewritten for the offerer; a pending delete is cancelled.

        Needs a to-tag ("No to-tag in message"); a call that is not there is "Unknown call-id".
        """
        if req.sdp is None:
            raise NgError("No SDP body in message")
        self._require_ids(req, to_tag=True)
        call = self.calls.get(req.call_id)
        if call is None:
            raise NgError("Unknown call-id")
        call.deleted_at = None
        sdp = self.signalling.answer(call, req, now)
        self.schedule(call)
        return {**self.recordings.signalled(call, req, "answer", sdp, now), "sdp": sdp}

    def delete(self, req: Request, now: float) -> dict[str, Any]:
        """ng ``delete``: the call's statistics tree (none with ``fast``), the call removed later.

        Removal comes after ``delete-delay`` (the request's, else the configured one; 0 or less:
        at once); a repeated delete keeps the first deadline. An unknown call-id, or a from-tag
        that names no party nor alias, is only a warning: "Call-ID not found or tags didn't
        match", an error with ``fatal``. A delete at once with ``via-branch`` may end only that
        branch (:meth:`_delete_branch`).
        """
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
        reply = {} if req.has("fast") else call_tree(call)
        delay = req.delete_delay if req.delete_delay is not None else self.limits.delete_delay
        discard = req.has("discard-recording")
        if delay <= 0:
            if not self._delete_branch(call, req):
                self.recordings.finish(call, now, discard=discard, ended=True)
                self._remove(call, Reason.DELETED, now)
        else:
            # the recording ends with the delete, not delete-delay later: collectors get it
            self.recordings.finish(call, now, discard=discard, ended=True)
            if call.deleted_at is None:
                call.deleted_at = now + delay
                self.schedule(call)
        return reply

    def _delete_branch(self, call: Call, req: Request) -> bool:
        """A delete at once from the ``from-tag`` party with a ``via-branch`` ends only that
        branch of a forked offer, as rtpengine 10.5 does, while another party is left: its ports
        go back and the call goes on. False where the whole call is to go."""
        party = call.monologues.get(req.from_tag) if req.from_tag else None
        if party is None or not req.via_branch:
            return False
        medias = detach_branch(call, party, req.via_branch)
        if medias is None:
            return False
        self.signalling.release_medias(medias)
        return True

    def query(self, req: Request, now: float) -> dict[str, Any]:
        if not req.call_id:
            raise NgError("No call-id in message")
        call = self.calls.get(req.call_id)
        if call is None:
            raise NgError("Unknown call-id")
        return call_tree(call)

    def start_recording(self, req: Request, now: float) -> dict[str, Any]:
        """ng ``start recording``: the call records from now on (relayd/calls/recording.py)."""
        self.recordings.start(self._recorded(req), req, now)
        return {}

    def stop_recording(self, req: Request, now: float) -> dict[str, Any]:
        """ng ``stop recording``: the call's recording is finished (a later start: new files)."""
        self.recordings.stop(self._recorded(req), now, req)
        return {}

    def pause_recording(self, req: Request, now: float) -> dict[str, Any]:
        """ng ``pause recording`` (rtpengine 11's; 10.5 answers "Unrecognized command"): no
        packets are written until ``start recording``, the files stay open."""
        self.recordings.pause(self._recorded(req), req)
        return {}

    def forwarding(self, req: Request, now: float) -> dict[str, Any]:
        """ng ``start``/``stop forwarding``: to rtpengine's recording daemon, which the pcap
        method has not; in 10.5 as here they record the call (calls/recording.py)."""
        call = self._selected(req)
        party = None if req.has("all") else party_of(call, req)
        tag = party.tag if party is not None else ""
        if req.command == "start forwarding":
            self.recordings.start_forwarding(call, req, tag, now)
        else:
            self.recordings.stop_forwarding(call, req, tag, now)
        return {}

    def media_control(self, req: Request, now: float) -> dict[str, Any]:
        """ng ``block``, ``unblock``, ``silence``, ``unsilence media`` (calls/media_control.py)."""
        control(self._selected(req), req)
        return {}

    def dtmf_block(self, req: Request, now: float) -> dict[str, Any]:
        """ng ``block DTMF``, ``unblock DTMF`` (calls/dtmf_block.py)."""
        call = self._selected(req)
        (dtmf_block.block if req.command == "block DTMF" else dtmf_block.unblock)(call, req)
        return {}

    def play_media(self, req: Request, now: float) -> dict[str, Any]:
        """ng ``play media`` (calls/playback.py)."""
        return self.playbacks.play(self._selected(req), req, now)

    def stop_media(self, req: Request, now: float) -> dict[str, Any]:
        """ng ``stop media`` (calls/playback.py)."""
        return self.playbacks.stop(self._selected(req), req, now)

    def play_dtmf(self, req: Request, now: float) -> dict[str, Any]:
        """ng ``play DTMF`` (calls/dtmf_play.py): the digit queued for the call's worker."""
        call = self._selected(req)
        self.injections.append((call, injection(call, req)))
        return {}

    def _selected(self, req: Request) -> Call:
        """The call of a command that selects parties as rtpengine's media_block_match."""
        if not req.call_id:
            raise NgError("No call-id in message")
        call = self.calls.get(req.call_id)
        if call is None:
            raise NgError("Unknown call-ID")  # sic: these commands spell it so in 10.5
        return call

    def _recorded(self, req: Request) -> Call:
        if not req.call_id:
            raise NgError("No call-id in message")
        call = self.calls.get(req.call_id)
        if call is None:
            raise NgError("Unknown call-id")
        return call

    def list_calls(self, req: Request, now: float) -> dict[str, Any]:
        limit = req.limit if req.limit is not None else 32
        return {"calls": list(self.calls)[: max(limit, 0)]}

    def statistics(self, req: Request, now: float) -> dict[str, Any]:
        return self.statistics_tree(now)

    def statistics_tree(self, now: float) -> dict[str, Any]:
        """The ``statistics`` reply (also what ``relayctl list totals`` shows)."""
        ports = self.signalling.ports
        return statistics_reply(self.calls, self.totals, ports, self.started, now)

    def terminate(self, call_id: str, now: float) -> Teardown | None:
        """End a call at once (``relayctl terminate``): rtpengine's forced termination."""
        call = self.calls.get(call_id)
        if call is None:
            return None
        return self._remove(call, Reason.TERMINATED, now)

    # -- timers -------------------------------------------------------------------------------

    def reap(self, now: float, limit: int | None = None) -> list[Teardown]:
        """End the calls whose delete-delay ran out, or that hit a timeout (offer, final,
        media); only calls whose earliest deadline has come are looked at, at most
        ``limit`` of them (the rest wait for the next run: :meth:`TimerHeap.pending`)."""
        gone: list[Teardown] = []
        due = list(self.timers.due(now, self.calls, limit))
        if due and self.refresh is not None:
            self.refresh(due, now)
        for call in due:
            teardown = self._expire(call, now)
            if teardown is not None:
                gone.append(teardown)
            else:
                self.schedule(call)
        return gone

    def schedule(self, call: Call) -> None:
        """(Re)compute when the timers look at ``call`` next: after signalling, a restore
        or a change of limits. Media only moves its deadline later, which the look at the
        old deadline finds."""
        self.timers.schedule(call, self.limits, self.calls)

    def set_limits(self, limits: Limits) -> None:
        """New limits (reload): they apply to the calls already set up as well."""
        self.limits = limits
        self.timers.rebuild(self.calls, limits)

    def _expire(self, call: Call, now: float) -> Teardown | None:
        reason = expired(call, self.limits, now)
        return self._remove(call, reason, now) if reason is not None else None

    def _remove(self, call: Call, reason: Reason, now: float) -> Teardown:
        self.calls.pop(call.call_id, None)
        self.timers.forget(call)
        self.recordings.finish(call, now, ended=True)
        self.signalling.release_call(call)
        counter = _COUNTERS[reason]
        setattr(self.totals, counter, getattr(self.totals, counter) + 1)
        self.totals.call_duration += max(now - call.created, 0.0)
        teardown = Teardown(call, reason)
        if self.on_teardown:
            self.on_teardown(teardown)
        return teardown


def _aliases(call: Call) -> set[str]:
    return {alias for mono in call.monologues.values() for alias in mono.aliases}
