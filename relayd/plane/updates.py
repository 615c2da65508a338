"""When the media workers hear about a call: after the reply, in batches.

An ``offer`` or ``answer`` is answered first; the call's forward goes to its
worker with the other updates of the next ``WORKER_BATCH_DELAY``, so the
proxy's next request does not wait for a worker's wake-up and a busy worker
wakes once per batch rather than once per call. An offer that waits for its
answer gets its one-way early forward (relayd/plane/forwarding.py) only after
``EARLY_MEDIA_DELAY``, with the other offers of that moment: an answer within
it makes the early forward needless, and early media that arrives meanwhile
waits in its socket buffer. A call that leaves the registry before its batch
goes out is not sent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

from relayd import log
from relayd.calls.model import Call

__all__ = ["EARLY_MEDIA_DELAY", "WORKER_BATCH_DELAY", "WorkerUpdates"]

logger = log.get_logger("relayd")

# How long updates for the workers (forwards of answered calls here, drops of deleted
# ones in relayd/plane/workerpool.py's outbox) may wait to go out together. A worker wakes
# once per batch instead of once per message, which under load leaves its core to media
# (and, where it shares a core with relayd, relayd's to signalling). Media of a new call
# waits in its socket buffer meanwhile; nothing is lost.
WORKER_BATCH_DELAY = 0.002

# How long an unanswered offer's early forward may wait. Early media that arrives
# meanwhile waits in its socket buffer, nothing is lost; an answer within it makes the
# early forward needless (the answer's own forward goes instead).
EARLY_MEDIA_DELAY = 0.02


class WorkerUpdates:
    """The calls whose workers are told next; ``sync`` tells one call's worker."""

    def __init__(self, calls: Mapping[str, Call], sync: Callable[[Call], None]) -> None:
        self.calls = calls  # the registry: a call no longer in it is not sent
        self.sync = sync
        self._soon: dict[str, Call] = {}
        self._early: dict[str, Call] = {}
        # one timer per batch (a call removed meanwhile leaves its batch, not the timer)
        self._soon_timer: asyncio.TimerHandle | None = None
        self._early_timer: asyncio.TimerHandle | None = None

    def soon(self, call: Call) -> None:
        """With the next batch (``WORKER_BATCH_DELAY``), superseding an early forward."""
        if self._soon_timer is None:
            loop = asyncio.get_running_loop()
            self._soon_timer = loop.call_later(WORKER_BATCH_DELAY, self._send_soon)
        self._soon[call.call_id] = call
        self._early.pop(call.call_id, None)

    def now(self, call: Call) -> None:
        """At once, superseding anything pending for the call (an offer that starts DTLS)."""
        self._soon.pop(call.call_id, None)
        self._early.pop(call.call_id, None)
        self._send({call.call_id: call})

    def early(self, call: Call) -> None:
        """An offer waiting for its answer: after ``EARLY_MEDIA_DELAY``, unless the answer
        (``soon``) comes first."""
        if self._early_timer is None:
            loop = asyncio.get_running_loop()
            self._early_timer = loop.call_later(EARLY_MEDIA_DELAY, self._send_early)
        self._early[call.call_id] = call

    def early_pending(self, call: Call) -> bool:
        """Whether the call's early forward has not gone out yet."""
        return call.call_id in self._early

    def forget(self, call: Call) -> None:
        """The call left the registry: nothing more for its worker."""
        self._soon.pop(call.call_id, None)
        self._early.pop(call.call_id, None)

    def cancel(self) -> None:
        """Shutting down: the workers are told to stop, nothing more goes out."""
        for timer in (self._soon_timer, self._early_timer):
            if timer is not None:
                timer.cancel()
        self._soon_timer = self._early_timer = None
        self._soon.clear()
        self._early.clear()

    def _send_soon(self) -> None:
        self._soon_timer = None
        pending, self._soon = self._soon, {}
        self._send(pending)

    def _send_early(self) -> None:
        self._early_timer = None
        pending, self._early = self._early, {}
        # a call deleted meanwhile (CANCEL) but kept for delete-delay needs no early media
        self._send({k: c for k, c in pending.items() if c.deleted_at is None})

    def _send(self, pending: dict[str, Call]) -> None:
        for call_id, call in pending.items():
            if self.calls.get(call_id) is not call:  # removed in the meantime
                continue
            token = log.bind_call(call_id, worker=call.worker)
            try:
                self.sync(call)
            except Exception:  # one call's failure must not cost the others their forwards
                logger.exception("worker.sync_failed")
            finally:
                log.unbind_call(token)
