"""Calls' streams between the workers and the kernel path: the policy of plane/offload applied.

The supervisor calls in at the moments that matter: a worker report that confirmed
endpoints (:meth:`KernelHandover.offload`), signalling (:meth:`unoffload`), the end
of a call (:meth:`forget`), start-up after a restart (:meth:`adopt`), a reader of
a call's counters (:meth:`refresh`: its timeout due, ``query``, ``delete``) or of
all of them (:meth:`refresh_all`: ``/metrics``, ``statistics``, ``relayctl``), and
once a second (:meth:`tick`: retries after an nftables failure, nothing per call).
Rules:

* The workers hear first that a stream is kernelized (they stop relaying on its
  sockets), then the forwards go in: a packet sent from a socket the kernel had
  already taken over would leave a conntrack entry that clashes with its NAT.
* A stream is marked kernelized exactly while its forward is in the table.
* After an nftables failure every stream goes back to the workers; once nftables
  works again the table is made to hold exactly the calls' kernel legs.
* What the kernel counted is folded into the streams before their forwards leave
  the table, so no packet goes uncounted.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from collections.abc import Set as AbstractSet

from relayd.calls.model import Call, Stream
from relayd.plane.kernel import KernelPath, Traffic
from relayd.plane.media import MediaPlane
from relayd.plane.offload import KernelLeg, back_to_userspace, kernel_legs, mark_kernelized

__all__ = ["KernelHandover", "OnKernelTraffic"]

OnKernelTraffic = Callable[[Stream, int, int], None]  # stream, packets, bytes


class KernelHandover:
    """Moves streams between the workers and nftables; without a kernel path, does nothing.

    The calls are the media plane's registry (read only here); ``on_changed`` hears of a
    call whose streams changed hands (the journal saves it); ``on_traffic`` of the packets
    the kernel forwarded since the last read. ``rtcp_copied``: separate RTCP streams stay
    with the workers, which copy RTCP (Homer, the RTCP log).
    """

    def __init__(
        self,
        kernel: KernelPath | None,
        media: MediaPlane,
        on_changed: Callable[[Call], None],
        on_traffic: OnKernelTraffic,
        *,
        rtcp_copied: bool,
        record_group: Callable[[Call], int | None] = lambda call: None,
        copies: bool = False,
        dtmf_events: bool = False,
        events_group: Callable[[Call], tuple[int, int] | None] = lambda call: None,
    ) -> None:
        self.kernel, self.media = kernel, media
        # a recorded call's nflog group, where the kernel copies its packets for its worker
        # (None: not recorded, or the kernel cannot copy: then it stays with the workers)
        self.record_group = record_group
        # the kernel may carry recorded calls: it copies their packets to their workers
        self.copies = copies
        self.on_changed, self.on_traffic = on_changed, on_traffic
        self.rtcp_copied = rtcp_copied
        # DTMF reported: sections with telephone-event stay with the workers, unless the
        # kernel copies their event packets to them (``events_group``: the call's nflog
        # group and telephone-event payload type, None where it cannot)
        self.dtmf_events = dtmf_events
        self.events_group = events_group
        self._refreshing: asyncio.Future[None] | None = None  # refresh_all under way

    @property
    def in_kernel(self) -> AbstractSet[str]:
        """The call-ids with a stream in the kernel: the kernel path's own map of them
        (exactly the calls whose sync or adopt installed something, until they are dropped
        or nftables fails), not a set of its own."""
        return frozenset() if self.kernel is None else self.kernel.installed.keys()

    @property
    def calls(self) -> Mapping[str, Call]:
        return self.media.calls

    def legs(self, call: Call) -> list[KernelLeg]:
        """The call's directions the kernel may carry now."""
        return kernel_legs(
            call,
            rtcp=not self.rtcp_copied,
            copies=self.copies,
            dtmf=self.dtmf_events,
            events_copied=self.events_group(call) is not None,
        )

    def _mark(self, call: Call, legs: list[KernelLeg]) -> bool:
        """Mark the call's forwards (and ``legs``, about to go in) for the kernel's copies:
        all its packets to a recording, or its event packets to the DTMF event log; whether
        any mark was asked for."""
        assert self.kernel is not None
        group = self.record_group(call)
        if group is not None:
            self.kernel.record(call.call_id, group, legs)
            return True
        events = self.events_group(call) if self.dtmf_events else None
        if events is not None:
            self.kernel.record(call.call_id, events[0], legs, events=events[1])
            return True
        return False

    def adopt(self, calls: list[Call]) -> list[Call]:
        """Make the table hold exactly these calls' kernel legs, keeping forwards that are
        already right (their media never stopped) and removing any other: a previous run's
        or those of calls that ended while nftables failed. With the kernel path off, every
        stream is in userspace. Returns the calls whose streams changed hands."""
        adopted: dict[str, set[str]] = {}
        if self.kernel is not None and self.kernel.enabled:
            # also with no call at all: whatever the table holds is stale then
            adopted = self.kernel.adopt({c.call_id: self.legs(c) for c in calls})
            for call in calls:  # the kernel copies what the restored calls need
                if not self._mark(call, []):
                    self.kernel.record(call.call_id, None)
        changed = []
        for call in calls:
            if mark_kernelized(call, adopted.get(call.call_id, set())):
                changed.append(call)
                self.on_changed(call)
        return changed

    def offload(self, call: Call) -> None:
        """Put the call's confirmed plain streams in the kernel (and the rest back out)."""
        kernel = self.kernel
        if kernel is None or not kernel.enabled:
            return
        if call.call_id in self.in_kernel:
            self.refresh([call])  # its forwards may change: what they counted first
        legs = [leg for leg in self.legs(call) if kernel.accepts(leg)]
        changed = mark_kernelized(call, {leg.socket for leg in legs})
        if changed:
            self.media.sync(call)  # the workers first
        # marked before the first packet passes
        marked = self._mark(call, legs) if legs else False
        in_kernel = kernel.sync(call.call_id, legs)
        if not marked:
            kernel.record(call.call_id, None)
        if mark_kernelized(call, in_kernel):
            self.media.sync(call)
            changed = True
        if changed:
            self.on_changed(call)
        self._after_change()

    def unoffload(self, call: Call) -> None:
        """Signalling: the call's streams return to the workers, which learn anew."""
        self.forget(call)
        back_to_userspace(call)
        self._after_change()

    def forget(self, call: Call) -> None:
        """The call's forwards leave the table (it ended, or is signalled again), what they
        counted folded into its streams first."""
        if call.call_id not in self.in_kernel:
            return
        self.refresh([call])
        if self.kernel is not None:
            self.kernel.drop(call.call_id)

    def refresh(self, calls: Iterable[Call], wall: float | None = None) -> None:
        """Fold what the kernel forwarded for these calls since their last read into their
        streams (``wall``: now, for ``last_packet``); calls with nothing in the kernel cost
        nothing."""
        kernel = self.kernel
        if kernel is None:
            return
        wanted = [call.call_id for call in calls if call.call_id in self.in_kernel]
        if wanted:
            self._fold(kernel.read(wanted), time.time() if wall is None else wall)
            self._after_change()

    async def refresh_all(self) -> None:
        """Fold what the kernel forwarded since the last read, for every call. The read
        yields to the loop as it goes; callers that come while one runs wait for it (the
        deltas are folded once)."""
        if self.kernel is None or not self.in_kernel:
            return
        if self._refreshing is None:
            self._refreshing = asyncio.ensure_future(self._refresh_all(self.kernel))
        await asyncio.shield(self._refreshing)

    async def _refresh_all(self, kernel: KernelPath) -> None:
        try:
            traffic = await kernel.read_all()
            self._fold(traffic, time.time())
            self._after_change()
        finally:
            self._refreshing = None

    def _fold(self, traffic: Mapping[str, Traffic], wall: float) -> None:
        streams = self.media.reports.streams
        for key, count in traffic.items():
            stream = streams.get(key)
            if stream is None:
                continue
            stats = stream.stats
            stats.packets += count.packets
            stats.bytes += count.bytes
            stats.last_packet = max(stats.last_packet, wall - count.idle)
            self.on_traffic(stream, count.packets, count.bytes)

    def settle(self, now: float) -> None:
        """Conntrack entries of recent hand-overs deleted once more (see plane/kernel.py)."""
        if self.kernel is not None:
            self.kernel.settle(now)

    def tick(self) -> None:
        """Once a second: a look that the table is still there while it carries streams,
        and after an nftables failure, a new try (every 10 s). Nothing here is per call:
        counters are read when someone needs them."""
        kernel = self.kernel
        if kernel is None:
            return
        if self.in_kernel:
            kernel.check()
        if kernel.retry_due() and kernel.start():
            self._resume(kernel)
        self._after_change()

    def _resume(self, kernel: KernelPath) -> None:
        """nftables works again (the table was re-created): the calls' streams go back to
        the kernel in the order of :meth:`offload`, the workers told first, since they are
        relaying every one of them meanwhile."""
        calls = list(self.calls.values())
        for call in calls:
            sockets = {leg.socket for leg in self.legs(call) if kernel.accepts(leg)}
            if mark_kernelized(call, sockets):
                self.media.sync(call)
                self.on_changed(call)
        for call in self.adopt(calls):
            self.media.sync(call)  # what did not go in after all

    def _after_change(self) -> None:
        """After an nftables failure every stream goes back to the workers."""
        kernel = self.kernel
        if kernel is None or kernel.enabled or not kernel.dropped:
            return
        dropped, kernel.dropped = kernel.dropped, []
        for call_id in dropped:
            call = self.calls.get(call_id)
            if call is not None and mark_kernelized(call, set()):
                self.media.sync(call)
