"""Conntrack hygiene: a port given back takes its conntrack entries with it.

A call's end leaves conntrack entries towards its relay sockets that relayd's own
deletes (by the tuples of its forwards, relayd/nft/forward.py) never name: those
a stranger's packets made (a spoofer, a scanner, late packets after the call),
and the userspace flows of the call's peers. They would outlive the call until
their timeouts, so a port handed out again would not start clean.

Rules:

* Every port pair the allocator gives back (:meth:`ConntrackSweep.released`: a call's
  end for any reason, a branch's, a re-offer that moves ports) queues its two sockets,
  and the peers they talked to (the streams' learned and advertised endpoints, read
  before the streams are forgotten).
* The queue is swept :data:`SWEEP_DELAY` later, in one thread of its own, never on the
  event loop: one kernel-filtered dump per address family finds the entries nobody
  answered towards or from the sockets (:meth:`relayd.nft.conntrack.Ctnetlink.sweep`), and
  the peers' flows are deleted by tuple, a hash lookup each. So the kernel walks its
  table at most once per family per :data:`SWEEP_DELAY` whatever the number of calls
  ended meanwhile, and what it returns does not grow with the calls that stay up.
* Entries of translated flows are left to the kernel forwarder, whose forwards own them.
* Nothing here fails a teardown: a sweep that fails is logged (the first failure a
  warning, the rest at debug) and the next batch tries again.
* Where conntrack holds no entry at all (not loaded, or nothing tracked: a userspace-only
  host without a stateful firewall) a batch ends at that check: nothing is asked of the
  kernel, and none of its endpoints is made (the thread would hold the GIL about 1 µs per
  socket, 1–2 ms a batch at 800 calls a second, while ng replies wait for it).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol

from relayd.calls.model import Stream
from relayd.ipc import socket_key
from relayd.log import get_logger
from relayd.nft.conntrack import ConntrackError, Ctnetlink, tracked
from relayd.nft.ruleset import Endpoint

__all__ = ["SWEEP_DELAY", "ConntrackSweep", "SweepBackend", "Sweeper"]

log = get_logger("relayd.plane.sweep")

SWEEP_DELAY = 0.25
"""Seconds a released port waits for its sweep, with every other port released meanwhile."""

Flow = tuple[Endpoint, Endpoint]
Place = tuple[str, int]  # an address and port as the call model holds them, not yet checked


class SweepBackend(Protocol):
    """The kernel side of a sweep, called in the sweep's thread (:class:`Sweeper`; a test
    gives a fake)."""

    def idle(self) -> bool:
        """Nothing to sweep on this host now: the batch ends before its endpoints are made."""
        ...

    def __call__(self, sockets: set[Endpoint], flows: set[Flow]) -> int:
        """Delete the entries towards ``sockets`` and of ``flows``; how many went."""
        ...

    def close(self) -> None: ...


class Sweeper:
    """What a sweep does in its thread: the kernel side (a :class:`SweepBackend`)."""

    def __init__(self) -> None:
        self._ct = Ctnetlink()
        with contextlib.suppress(ConntrackError):
            self._ct.open()  # at start-up, not at the first sweep; a failure shows then

    def idle(self) -> bool:
        """Conntrack holds no entry (not loaded, or nothing tracked): nothing to sweep, so
        the batch's endpoints are not even made."""
        return not tracked()

    def __call__(self, sockets: set[Endpoint], flows: set[Flow]) -> int:
        """Sweep a batch (:class:`ConntrackSweep` asks :meth:`idle` first)."""
        deleted = self._ct.sweep(sockets)
        if flows:
            deleted += self._ct.delete_flows(flows)
        return deleted

    def close(self) -> None:
        self._ct.close()


class ConntrackSweep:
    """Queues the sockets of released ports and sweeps their conntrack entries in batches.

    ``streams``: the streams by socket key (the media plane's reports), read for the peers
    of a socket when its port is released.
    """

    def __init__(
        self,
        streams: Mapping[str, Stream],
        sweeper: SweepBackend | None = None,
    ) -> None:
        self.streams = streams
        self._sweeper = sweeper if sweeper is not None else Sweeper()
        # queued as plain tuples: the Endpoints are made in the sweep's thread, not here
        self._sockets: set[Place] = set()
        self._flows: set[tuple[Place, Place]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._running: asyncio.Future[int] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._failed = False
        self.swept = 0  # entries deleted so far

    def released(self, address: str, port: int) -> None:
        """Port pair ``port``/``port + 1`` on ``address`` was given back."""
        for p in (port, port + 1):
            self._sockets.add((address, p))
            stream = self.streams.get(socket_key(address, p))
            if stream is not None:
                for peer in (stream.endpoint, stream.advertised_endpoint):
                    if peer is not None:
                        self._flows.add(((peer.address, peer.port), (address, p)))
        self._schedule()

    def unreported(self, stream: Stream) -> None:
        """A stream no worker reported (a foreign call's, relayd/ha/: the flows of the host's
        previous life): its peers' flows go with its port, released next."""
        for peer in (stream.endpoint, stream.advertised_endpoint):
            if peer is not None and stream.port:
                self._flows.add(((peer.address, peer.port), (stream.local.local, stream.port)))

    def _schedule(self) -> None:
        if self._timer is not None or self._running is not None:
            return  # the pending batch, or the one after the running sweep, takes it
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (a tool, a test): at once
            self._sweep_now()
            return
        self._timer = loop.call_later(SWEEP_DELAY, self._start)

    def _take(self) -> tuple[set[Place], set[tuple[Place, Place]]]:
        batch = self._sockets, self._flows
        self._sockets, self._flows = set(), set()
        return batch

    def _start(self) -> None:
        self._timer = None
        if not self._sockets:
            return
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="conntrack-sweep")
        sockets, flows = self._take()
        loop = asyncio.get_running_loop()
        self._running = loop.run_in_executor(self._executor, self._timed, sockets, flows)
        self._running.add_done_callback(self._done)

    def _timed(self, places: set[Place], pairs: set[tuple[Place, Place]]) -> int:
        if self._sweeper.idle():
            # a host without conntrack entries (userspace only, no nf_conntrack): the thread
            # would hold the GIL ~1 µs per socket for nothing, while ng replies wait for it
            return 0
        started = time.perf_counter()
        sockets = {ep for ep in map(_endpoint, places) if ep is not None}
        flows = set(filter(None, (_flow(peer, sock) for peer, sock in pairs)))
        deleted = self._sweeper(sockets, flows)
        log.debug(
            "conntrack.swept",
            sockets=len(sockets),
            deleted=deleted,
            seconds=round(time.perf_counter() - started, 4),
        )
        return deleted

    def _done(self, future: asyncio.Future[int] | Future[int]) -> None:
        self._running = None
        self._record(future)
        if self._sockets:
            self._schedule()

    def _record(self, future: asyncio.Future[int] | Future[int]) -> None:
        if future.cancelled():
            return
        exc = future.exception()
        if exc is None:
            self.swept += future.result()
        elif not isinstance(exc, ConntrackError | OSError):
            log.error("conntrack.sweep_crashed", error=repr(exc))
        elif not self._failed:
            self._failed = True
            log.warning(
                "conntrack.sweep_failed",
                error=str(exc),
                note="entries towards released ports stay until their timeout; logged once",
            )
        else:
            log.debug("conntrack.sweep_failed", error=str(exc))

    def _sweep_now(self) -> None:
        future: Future[int] = Future()
        try:
            future.set_result(self._timed(*self._take()))
        except Exception as exc:  # recorded, never raised into a teardown
            future.set_exception(exc)
        self._record(future)

    def close(self) -> None:
        """Sweep what is still queued (at most one walk), then let the thread go."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)  # a running sweep finishes
            self._executor = None
        if self._sockets:
            self._sweep_now()
        self._sweeper.close()


def _endpoint(place: Place) -> Endpoint | None:
    try:
        return Endpoint(*place)
    except ValueError:  # no port (0), or not an address
        return None


def _flow(peer: Place, sock: Place) -> Flow | None:
    """The flow between a relay socket and a peer its stream knew (None: not one)."""
    a, b = _endpoint(peer), _endpoint(sock)
    return (a, b) if a is not None and b is not None and a.version == b.version else None
