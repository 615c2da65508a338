"""The supervisor's side of the data plane: what each media worker is told.

relayd binds every media socket itself (relayd/plane/sockets.py) and passes a
duplicate to the worker that owns the port's slice, with the call's forwards
(relayd/plane/forwarding.py plans them); what workers report comes back through
relayd/plane/reports.py. The processes themselves are relayd/plane/workerpool.py's: when
one dies, its replacement gets the same sockets and its forwards planned anew,
so media resumes on the same ports and packets that arrived in the meantime
wait in the socket buffers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

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


class MediaPlane:
    """The workers and what each is told: placement, forwards, drops, and their reports.

    ``calls`` is the call registry (read only here): a restarted worker gets its calls'
    forwards planned anew from it. ``on_stats`` hears after each stats report which
    calls' confirmations changed, ``on_traffic`` the traffic folded in, ``on_rtcp`` the
    RTCP the workers copied (Homer, the RTCP log).
    """

    def __init__(
        self,
        binder: SocketBinder,
        calls: Mapping[str, Call],
        *,
        workers: int,
        settings: WorkerSettings | None = None,
        learning: Learning = "delayed",
        on_stats: Callable[[ipc.Stats, set[str]], None] | None = None,
        on_traffic: OnTraffic | None = None,
        on_rtcp: Callable[[ipc.Rtcp], None] | None = None,
    ) -> None:
        self.binder = binder
        self.calls = calls
        self.learning = learning
        self.pool = WorkerPool(self, workers, settings)
        self.reports = Reports()  # the workers' counters, folded into the streams
        self.on_stats = on_stats
        self.on_traffic = on_traffic
        self.on_rtcp = on_rtcp
        # per worker: media key -> the socket keys of the forward it holds. The forwards
        # themselves are not kept: a restarted worker gets them planned anew from ``calls``.
        self.placed: dict[int, dict[str, tuple[str, ...]]] = {}
        # placed sockets the worker only sends from (SocketSpec.listen False): what waits
        # in them came before their port was told, and drop_early discards it
        self.quiet: set[str] = set()

    @property
    def workers(self) -> list[WorkerProcess]:
        return self.pool.workers

    # -- placement ------------------------------------------------------------------------

    def least_loaded(self) -> int:
        return min(self.workers, key=lambda w: (self.medias_on(w), w.index)).index

    def medias_on(self, worker: WorkerProcess) -> int:
        return len(self.placed.get(worker.index, ()))

    def resend(self, worker: WorkerProcess) -> None:
        """Give a (new) worker every socket and forward of its calls again: it starts
        with nothing placed, so each forward carries all its sockets."""
        placed = self.placed.pop(worker.index, {})
        for keys in placed.values():
            self.quiet.difference_update(keys)  # planned anew below, listening or not
        call_ids = dict.fromkeys(key.rpartition(" ")[0] for key in placed)  # "call-id index"
        for call_id in call_ids:
            call = self.calls.get(call_id)
            if call is not None:
                self.sync(call)

    # -- forwarding -----------------------------------------------------------------------

    def signalled(self, call: Call, learning: Learning | None) -> None:
        """A signalling event: learning restarts for every party of the call (each once,
        aliases and unanswered branches included)."""
        mode = learning or self.learning
        after = time.monotonic() + (3.0 if mode in ("delayed", "heuristic") else 0.0)
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
        placed = self.placed.get(call.worker, {})
        read = {
            key
            for index in range(section_count(call))
            for key in placed.get(media_key(call.call_id, index), ())
            if key not in self.quiet
        }
        keys = [
            key
            for key in relay_socket_keys(call, besides=call.monologues.get(keep) if keep else None)
            if key not in read
        ]
        dropped = self.binder.discard_queued(keys) if keys else 0
        if dropped:
            log.debug("media.dropped_early", sockets=keys, packets=dropped)

    def sync(self, call: Call) -> None:
        """Send the call's worker its forwards as planned now, at once (batching is the caller's).

        Each planned section goes as a ``Forward`` (its whole state, with the descriptors of the
        sockets new to the worker); a section the plan no longer has goes as a ``Drop``.
        """
        worker = self.workers[call.worker]
        placed = self.placed.setdefault(worker.index, {})
        by_key = streams_by_socket(call)
        forwards = plan(call)
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
            placed[forward.media] = keys
            for spec in forward.sockets:
                # an ICE alias counts into its primary socket's stream
                if self.reports.track(spec.key, by_key[spec.alias_of or spec.key]):
                    self.binder.share_key(spec.key)
                if spec.listen:
                    self.quiet.discard(spec.key)
                else:
                    self.quiet.add(spec.key)
            self._send_forward(worker, forward, previous)

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

    def _send_forward(
        self, worker: WorkerProcess, forward: ipc.Forward, held: Sequence[str]
    ) -> None:
        """The forward, with the descriptors of its sockets the worker does not hold yet
        (``held``: those of the forward it had for this media section; a worker keeps
        exactly the sockets of its current forwards)."""
        fds: list[int] = []
        index: dict[str, int] = {}
        for spec in forward.sockets:
            if spec.key not in held and spec.key in self.binder.sockets:
                index[spec.key] = len(fds)
                fds.append(self.binder.fileno(spec.key))
        self.pool.transmit(worker, ipc.encode_forward(forward, index), fds)

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
        await self.pool.stop()

    def worker_ready(self, worker: WorkerProcess) -> None:
        self.resend(worker)

    def worker_message(self, worker: WorkerProcess, message: ipc.Message) -> None:
        if isinstance(message, ipc.Stats):
            self._ingest(message)
        elif isinstance(message, ipc.Rtcp) and self.on_rtcp:
            self.on_rtcp(message)
