"""The supervisor's side of the data plane: what each media worker is told.

relayd binds every media socket itself (relayd/plane/sockets.py) and hands it to
the worker that owns the port's slice with the first forward that names it
(relayd/plane/forwarding.py plans them), keeping no copy: each port is held by one
process. What workers report comes back through relayd/plane/reports.py. The
processes themselves are relayd/plane/workerpool.py's: when one dies, its sockets
close with it; relayd binds the same ports again at once and holds them (what
arrives from then on waits in their buffers) until the replacement gets them with
its forwards planned anew, so media resumes on the same ports. What arrived
between the death and the new bind, or waited unread in the dead worker's
sockets, is lost (docs/architecture.md, "The worker link").
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Mapping

from relayd import ipc
from relayd.calls.model import Call
from relayd.ipc import Learning
from relayd.log import get_logger
from relayd.plane.forwarding import (
    media_key,
    paired,
    plan,
    relay_socket_keys,
    section_count,
    streams_by_socket,
)
from relayd.plane.reports import OnTraffic, Reports
from relayd.plane.sockets import SocketBinder
from relayd.plane.workerpool import WorkerPool, WorkerProcess, WorkerSettings

__all__ = ["MediaPlane"]

log = get_logger("relayd.plane.media")

# a dead worker's port that cannot be bound again at once (its process still exiting, as a
# unit replaced while it runs): tried again after this, doubling up to REBIND_RETRY_MAX
REBIND_RETRY_FIRST = 0.01
REBIND_RETRY_MAX = 1.0
RESEND_BATCH = 256
"""Calls planned anew for a restarted worker between two turns of the event loop."""


class MediaPlane:
    """The workers and what each is told: placement, forwards, drops, and their reports.

    ``calls`` is the call registry (read only here): a restarted worker gets its calls'
    forwards planned anew from it. The binder asks, through its ``on_close``, that a worker
    close the sockets of ports given back (``ipc.Close``). ``on_stats`` hears after each
    stats report which calls' confirmations changed, ``on_traffic`` the traffic folded in,
    ``on_rtcp`` the RTCP the workers copied (Homer, the RTCP log).
    """

    def __init__(
        self,
        binder: SocketBinder,
        calls: Mapping[str, Call],
        *,
        workers: int,
        settings: WorkerSettings | None = None,
        learning: Learning = "delayed",
        silence_detect: float = 0.0,
        on_stats: Callable[[ipc.Stats, set[str]], None] | None = None,
        on_traffic: OnTraffic | None = None,
        on_rtcp: Callable[[ipc.Rtcp], None] | None = None,
        on_dtmf: Callable[[ipc.Dtmf], None] | None = None,
    ) -> None:
        self.binder = binder
        self.calls = calls
        self.learning = learning
        self.silence_detect = silence_detect  # into the codec plans (plane/forwarding.py)
        self.pool = WorkerPool(self, workers, settings)
        self.reports = Reports()  # the workers' counters, folded into the streams
        self.on_stats = on_stats
        self.on_traffic = on_traffic
        self.on_rtcp = on_rtcp
        # the DTMF event log (relayd/ops/dtmflog.py): the workers report digits, and the
        # forwards name each socket's telephone-event payload types
        self.on_dtmf = on_dtmf
        self.dtmf_events = self.pool.settings.dtmf_events
        # recording (relayd/recording/control.py): a worker's recording that failed, and a
        # (re)started worker, told of its calls' recordings before their forwards come
        self.on_record_failed: Callable[[ipc.RecordFailed], None] | None = None
        self.on_worker_ready: Callable[[int], None] | None = None
        # media playback (relayd/plane/playback.py): a worker's play came to its end
        self.on_play_done: Callable[[ipc.PlayDone], None] | None = None
        # per worker: media key -> the socket keys of the forward it holds. The forwards
        # themselves are not kept: a restarted worker gets them planned anew from ``calls``.
        self.placed: dict[int, dict[str, tuple[str, ...]]] = {}
        # placed sockets the worker only sends from (SocketSpec.listen False): what waits
        # in them came before their port was told, and drop_early discards it
        self.quiet: set[str] = set()
        binder.on_close = self._close_handed
        self._rebind_timer: asyncio.TimerHandle | None = None
        # worker -> the calls its resend has still to plan (fed in batches)
        self._resending: dict[int, list[str]] = {}
        self._rebind_delay = REBIND_RETRY_FIRST
        # ng play DTMF: the injections sent to workers, by request number, awaiting their answer
        self._injections: dict[int, asyncio.Future[str]] = {}
        self._next_request = 1

    @property
    def workers(self) -> list[WorkerProcess]:
        return self.pool.workers

    # -- placement ------------------------------------------------------------------------

    def least_loaded(self) -> int:
        workers = self.workers
        if len(workers) == 1:  # one worker (num-threads 1, or one CPU): nothing to weigh
            return workers[0].index
        return min(workers, key=lambda w: (self.medias_on(w), w.index)).index

    def medias_on(self, worker: WorkerProcess) -> int:
        return len(self.placed.get(worker.index, ()))

    def resend(self, worker: WorkerProcess) -> None:
        """Give a (new) worker every socket and forward of its calls again: it starts
        with nothing placed, so each forward carries all its sockets. In batches of
        ``RESEND_BATCH`` calls with the event loop free in between, so that ng is not held
        up while a worker with tens of thousands of calls is fed (a call signalled
        meanwhile is planned then, and again with its batch: the same forward twice)."""
        placed = self.placed.pop(worker.index, {})
        for keys in placed.values():
            self.quiet.difference_update(keys)  # planned anew below, listening or not
        # "call-id index" -> call-id; with the calls an earlier resend had not reached yet
        # (the worker restarted again meanwhile: they are in no worker's placed map)
        waiting = self._resending.pop(worker.index, [])
        call_ids = list(dict.fromkeys([*(k.rpartition(" ")[0] for k in placed), *waiting]))
        self._resending[worker.index] = call_ids
        self._resend_batch(worker.index, call_ids)

    def _resend_batch(self, index: int, call_ids: list[str]) -> None:
        if self._resending.get(index) is not call_ids:
            return  # the worker restarted again: a newer resend took the rest over
        batch = call_ids[:RESEND_BATCH]
        del call_ids[:RESEND_BATCH]
        for call_id in batch:
            call = self.calls.get(call_id)
            if call is not None:
                self.sync(call)
        if call_ids:
            asyncio.get_running_loop().call_soon(self._resend_batch, index, call_ids)
        else:
            del self._resending[index]

    # -- forwarding -----------------------------------------------------------------------

    def signalled(self, call: Call, learning: Learning | None) -> None:
        """A signalling event: learning restarts for every party of the call (each once,
        aliases and unanswered branches included)."""
        mode = learning or self.learning
        after = ipc.learning_window(mode, time.monotonic())
        for party in call.parties():
            party.learning, party.learn_after = mode, after

    def drop_early(self, call: Call, keep: str = "") -> None:
        """Before the reply to an offer or answer: what waits on a socket no worker reads
        yet (not handed over, or only sent from) came before anyone was told its port,
        or while nobody read it (ringing on a call with no early forward); it is dropped,
        not forwarded late once the worker reads the socket. ``keep``: a party (tag)
        whose sockets are left alone, an answerer that answers before its offer's early
        forward went out, so that its early media follows the answer's forward."""
        if not paired(call):
            return  # nothing to forward yet: no worker gets the sockets
        placed = self.placed.get(call.worker)
        read: set[str] = set()  # the sockets of the call's forwards that the worker reads
        if placed:
            for index in range(section_count(call)):
                read.update(placed.get(media_key(call.call_id, index), ()))
            read -= self.quiet
        here: list[str] = []  # held here
        there: list[str] = []  # held by the call's worker, unread
        holder = self.binder.holder
        for key in relay_socket_keys(call, besides=call.monologues.get(keep) if keep else None):
            if key not in read:
                worker = holder(key)
                if worker is None:
                    here.append(key)
                elif worker == call.worker:
                    there.append(key)
        dropped = self.binder.discard_queued(here) if here else 0
        if dropped:
            log.debug("media.dropped_early", sockets=here, packets=dropped)
        # those the worker holds (send-only, or idle): it drops their backlog, at once,
        # so what comes after this reply is kept as it would be here
        if there:
            # the worker may read this after the reply, and what arrives after the reply
            # is the party's answer media: only what the kernel stamped before now goes
            self.pool.send(self.workers[call.worker], ipc.Discard(tuple(there), time.time()))

    def sync(self, call: Call) -> None:
        """Send the call's worker its forwards as planned now, at once (batching is the caller's).

        Each planned section goes as a ``Forward`` (its whole state, with the descriptors of the
        sockets new to the worker); a section the plan no longer has goes as a ``Drop``.
        """
        worker = self.workers[call.worker]
        placed = self.placed.setdefault(worker.index, {})
        by_key = streams_by_socket(call)
        forwards = plan(call, self.silence_detect, dtmf_events=self.dtmf_events)
        planned = {forward.media for forward in forwards}
        for index in range(section_count(call)):
            # a section the plan no longer has (an early forward whose offer went on to
            # SRTP or ICE, or to another branch): the worker lets its sockets go
            key = media_key(call.call_id, index)
            if key not in planned and key in placed:
                self._unplace(worker, placed, key, send=self.pool.send)
        for forward in forwards:
            keys = tuple(spec.key for spec in forward.sockets)
            previous = placed.get(forward.media, ())
            # sockets left out of the new plan are closed by the worker: a later plan
            # that brings them back (a fork answering again) must send them anew
            for key in previous:
                if key not in keys:
                    self.reports.forget(key)
                    self.quiet.discard(key)
            # the tuple already kept when unchanged: its keys are the strings the reports and
            # the binder hold (a new plan's are equal copies, one more per socket)
            placed[forward.media] = previous if keys == previous else keys
            for spec in forward.sockets:
                # an ICE alias counts into its primary socket's stream
                if self.reports.track(spec.key, by_key[spec.alias_of or spec.key]):
                    self.binder.share_key(spec.key)
                if spec.listen:
                    self.quiet.discard(spec.key)
                else:
                    self.quiet.add(spec.key)
            self._send_forward(worker, forward)

    def drop(self, call: Call) -> None:
        worker = self.workers[call.worker]
        placed = self.placed.get(worker.index, {})
        for key in (media_key(call.call_id, index) for index in range(section_count(call))):
            if key in placed:
                self._unplace(worker, placed, key, send=self.pool.send_later)

    def _unplace(
        self,
        worker: WorkerProcess,
        placed: dict[str, tuple[str, ...]],
        key: str,
        *,
        send: Callable[[WorkerProcess, ipc.Message], None],
    ) -> None:
        """The worker gives up media section ``key`` and closes its sockets."""
        for socket_key_ in placed.pop(key):
            self.reports.forget(socket_key_)
            self.quiet.discard(socket_key_)
        send(worker, ipc.Drop(key))

    def _send_forward(self, worker: WorkerProcess, forward: ipc.Forward) -> None:
        """The forward, with the descriptors of its sockets relayd still holds (the worker
        holds the others: it keeps every socket it was given until its ``Close``). Once
        sent they are the worker's, and relayd's copies close."""
        fds: list[int] = []
        index: dict[str, int] = {}
        held = self.binder.sockets
        for spec in forward.sockets:
            fd = held.get(spec.key)
            if fd is not None:
                index[spec.key] = len(fds)
                fds.append(fd)
        if self.pool.transmit(worker, ipc.encode_forward(forward, index), fds) and index:
            self.binder.handed_over(index, worker.index)

    def _close_handed(self, worker: int, keys: tuple[str, ...]) -> None:
        """Ports given back whose sockets a worker holds: it closes them, after the reply
        (with the call's ``Drop``)."""
        self.pool.send_later(self.workers[worker], ipc.Close(keys))

    # -- a worker's death ---------------------------------------------------------------------

    def worker_lost(self, worker: WorkerProcess) -> None:
        """The worker's sockets closed with it: bind their ports again now, before its
        replacement starts, so the calls keep their ports (and SDP)."""
        started = time.perf_counter()
        bound = self.binder.lost(worker.index)
        log.info(
            "worker.sockets_bound_again",
            worker=worker.index,
            sockets=len(bound),
            waiting=len(self.binder.unbound),
            ms=round((time.perf_counter() - started) * 1000, 2),
        )
        if self.binder.unbound:
            self._rebind_delay = REBIND_RETRY_FIRST
            self._schedule_rebind()

    def _schedule_rebind(self) -> None:
        if self._rebind_timer is None:
            loop = asyncio.get_running_loop()
            self._rebind_timer = loop.call_later(self._rebind_delay, self._rebind)

    def _rebind(self) -> None:
        """Try the ports not bound again yet; the calls whose worker is up get them now."""
        self._rebind_timer = None
        bound = set(self.binder.rebind_pending())
        if bound:
            log.info("worker.sockets_bound_again", sockets=len(bound), late=True)
            for worker in self.workers:
                if worker.link is None:
                    continue  # it gets them with its calls when it comes (worker_ready)
                placed = self.placed.get(worker.index, {})
                call_ids = {
                    media.rpartition(" ")[0]
                    for media, keys in placed.items()
                    if not bound.isdisjoint(keys)
                }
                for call_id in call_ids:
                    if (call := self.calls.get(call_id)) is not None:
                        self.sync(call)
        if self.binder.unbound:
            if self._rebind_delay >= REBIND_RETRY_MAX:
                log.warning("worker.sockets_waiting", sockets=len(self.binder.unbound))
            self._rebind_delay = min(self._rebind_delay * 2, REBIND_RETRY_MAX)
            self._schedule_rebind()

    # -- stats ----------------------------------------------------------------------------

    def _ingest(self, stats: ipc.Stats) -> None:
        packets, changed = self.reports.fold(stats, self.on_traffic, time.time())
        self.workers[stats.worker].packets += packets
        if self.on_stats:
            self.on_stats(stats, changed)

    # -- the worker processes ---------------------------------------------------------------

    def start(self, worker_socket: str = "") -> None:
        self.pool.start(worker_socket)

    async def stop(self) -> None:
        if self._rebind_timer is not None:
            self._rebind_timer.cancel()
            self._rebind_timer = None
        await self.pool.stop()

    def worker_ready(self, worker: WorkerProcess) -> None:
        if self.on_worker_ready is not None:
            self.on_worker_ready(worker.index)
        self.resend(worker)

    def inject_dtmf(self, worker: int, message: ipc.InjectDtmf) -> asyncio.Future[str]:
        """Send a ``play DTMF`` digit to worker ``worker``: its answer (an error reason, or
        "") comes in the future; the caller bounds the wait and calls :meth:`forget_injection`
        if it gives up."""
        request = self._next_request
        self._next_request += 1
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._injections[request] = future
        self.pool.send(self.workers[worker], dataclasses.replace(message, request=request))
        return future

    def forget_injection(self, future: asyncio.Future[str]) -> None:
        for request, waiting in list(self._injections.items()):
            if waiting is future:
                del self._injections[request]

    def worker_message(self, worker: WorkerProcess, message: ipc.Message) -> None:
        if isinstance(message, ipc.DtmfInjected):
            future = self._injections.pop(message.request, None)
            if future is not None and not future.done():
                future.set_result(message.error)
        elif isinstance(message, ipc.Stats):
            self._ingest(message)
        elif isinstance(message, ipc.Rtcp) and self.on_rtcp:
            self.on_rtcp(message)
        elif isinstance(message, ipc.Dtmf) and self.on_dtmf:
            self.on_dtmf(message)
        elif isinstance(message, ipc.RecordFailed) and self.on_record_failed:
            self.on_record_failed(message)
        elif isinstance(message, ipc.PlayDone) and self.on_play_done:
            self.on_play_done(message)
