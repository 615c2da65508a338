"""The kernel path: hand confirmed plain-RTP streams to nftables, and take them back.

The shell around :class:`relayd.nft.KernelForwarder`. Decisions come from
:func:`relayd.plane.offload.kernel_legs` (pure); this module applies them per call,
reads the element counters, and survives nftables failures: the first failure
is logged, every stream returns to the workers, and the table is re-created
when nftables works again.

Counters are read when someone needs them, never on a clock: a call's own forwards
(:meth:`KernelPath.read`: when its timeout comes due, on ``query`` and ``delete``,
before its forwards change), or every forward (:meth:`KernelPath.read_all`: for
``/metrics``, ``statistics`` and ``relayctl``). The kernel keeps the time of each
forward's last packet itself (the counter element's timeout, which every packet
refreshes), so a call that reads silent at its deadline has been silent since then,
and relayd's idle cost does not grow with the number of calls in the kernel.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from relayd.calls.model import Endpoint as ModelEndpoint
from relayd.ipc import socket_key
from relayd.log import get_logger
from relayd.nft import Counter, Endpoint, Forward, ForwardKey, KernelForwarder, NftError
from relayd.nft.elements import ElementCount, wire_key
from relayd.nft.ruleset import ACTIVITY_TIMEOUT, events_target
from relayd.plane.offload import KernelLeg

__all__ = ["Installed", "KernelPath", "Traffic", "table_name"]

log = get_logger("relayd.plane.kernel")

_RETRY_AFTER = 10.0
_IPV4_UDP = 20 + 8
_IPV6_UDP = 40 + 8
_RELEASE_AFTER = 128  # forwards added or removed before the heap's free room is given back
_SETTLE_BATCH = 128  # forwards whose flows are deleted at a time (two each: one ctnetlink batch)


def release_heap() -> None:
    """Give glibc's free heap memory back to the system (``malloc_trim``); nothing where the
    C library has no such call. Costs about a millisecond for a heap of tens of MB."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
    except (OSError, AttributeError, TypeError):
        return None
    return libc


_LIBC = _libc()


def table_name(table: int) -> str:
    """rtpengine's ``table = N``: relayd's nftables table for that number."""
    return "relayd" if table == 0 else f"relayd{table}"


def _ip_forwarding() -> tuple[bool, bool]:
    def read(path: str) -> bool:
        try:
            return Path(path).read_text().strip() == "1"
        except OSError:
            return False

    return (
        read("/proc/sys/net/ipv4/ip_forward"),
        read("/proc/sys/net/ipv6/conf/all/forwarding"),
    )


WireKey = bytes  # a forward's key as the kernel holds it (Installed's ``bytes`` hides the type)


@dataclass(slots=True, eq=False)
class Installed:
    """One forward in the table, as relayd keeps it: ``source → relay`` becomes ``out →
    dest``, and its counter element as last read (packets and IP bytes since it was added).

    There is one per stream direction of every call in the kernel, so it holds the call
    model's own values and makes none: ``source`` and ``dest`` are the streams' endpoints,
    the relay sockets' addresses and ports are the streams' own strings and ints. The
    nftables values (:attr:`forward`, :attr:`key`), the key as the kernel holds it
    (:attr:`wire`) and the socket key are made when asked (a few records per call read,
    or each record once per dump: 16 bytes kept for each would cost 0.2 KB a call).
    """

    source: ModelEndpoint
    relay_address: str
    relay_port: int
    out_address: str
    out_port: int
    dest: ModelEndpoint
    packets: int = 0
    bytes: int = 0

    @classmethod
    def of(cls, leg: KernelLeg) -> Installed:
        source, relay, out = leg.source, leg.relay, leg.out
        return cls(source, relay.address, relay.port, out.address, out.port, leg.dest)

    @property
    def wire(self) -> WireKey:
        """The forward's key as the kernel holds it (what a dump returns)."""
        source = self.source
        return wire_key(source.address, source.port, self.relay_address, self.relay_port)

    @property
    def socket(self) -> str:
        """The key of the relay socket the forward bypasses."""
        return socket_key(self.relay_address, self.relay_port)

    @property
    def forward(self) -> Forward:
        return Forward(
            _nft(self.source),
            Endpoint(self.relay_address, self.relay_port),
            Endpoint(self.out_address, self.out_port),
            _nft(self.dest),
        )

    @property
    def key(self) -> ForwardKey:
        return ForwardKey(_nft(self.source), Endpoint(self.relay_address, self.relay_port))

    def same(self, other: Installed) -> bool:
        """Whether both forward the same way (what they counted aside)."""
        return (
            self.relay_port == other.relay_port
            and self.wire == other.wire
            and self.out_port == other.out_port
            and self.out_address == other.out_address
            and self.dest == other.dest
        )


class Traffic(NamedTuple):
    """What the kernel forwarded from one relay socket since the last read: packets and
    bytes (UDP payload, as the workers and rtpengine count), and how many seconds ago
    the last of them came."""

    packets: int
    bytes: int
    idle: float


def _records(held: Installed | tuple[Installed, ...]) -> tuple[Installed, ...]:
    return held if isinstance(held, tuple) else (held,)


def _nft(ep: ModelEndpoint) -> Endpoint:
    return Endpoint(ep.address, ep.port)


class KernelPath:
    """relayd's nftables table (``relayd`` or ``relayd<N>``) and what each call has in it.

    ``enabled`` says whether the kernel path works now; when not, ``reason`` says why and
    the hand-over (relayd/plane/handover.py) tries again every 10 s (:meth:`retry_due`).
    """

    def __init__(
        self, table: int, tos: int, capacity: int = 65536, owned: tuple[int, int] | None = None
    ) -> None:
        self.name = table_name(table)
        # one counter element per relay socket the kernel forwards to, at most; ``owned``:
        # the relay ports whose forwards are this process's (shards share the table)
        self.forwarder = KernelForwarder(
            self.name, tos=tos or None, size=max(capacity, 1024), owned=owned
        )
        self.enabled = False
        self.reason = "not started"
        self.ipv6 = False
        # by call-id: a tuple, not a dict by key (the lookups are per call, a few records);
        # its keys are the calls with a stream in the kernel (the hand-over's in_kernel)
        self.installed: dict[str, tuple[Installed, ...]] = {}
        # the calls that had forwards when the kernel path last failed: the hand-over gives
        # their streams back to the workers (and empties it)
        self.dropped: list[str] = []
        # the same records by their relay port (the record's own int), a tuple for the rare
        # port that two records share: a dump's elements found by the port in their keys
        # (no key kept per record, see Installed)
        self._by_port: dict[int, Installed | tuple[Installed, ...]] = {}
        self._dumping = False  # a read_all is under way (it yields to the loop)
        self._fresh: set[Installed] = set()  # read by read() since that dump began
        self._failed_at = 0.0
        # forwards installed a moment ago: their conntrack entries are deleted once more
        # after the worker has surely stopped sending from their sockets (see settle)
        # (the records, not their nft values: a burst of offloads would hold a Forward and
        # four Endpoints per direction for that moment, and the heap would keep their room)
        self._settling: list[tuple[float, list[Installed]]] = []
        self._copied_to: set[int] = set()  # nflog groups whose record chain exists
        # forwards added or removed since the heap was last given back (see settle), and
        # the time before which it is not given back again (monotonic)
        self._changed = 0
        self._released = 0.0

    # -- availability ---------------------------------------------------------------------

    def start(self) -> bool:
        """Turn the kernel path on if it can work; returns whether it is on.

        It needs CAP_NET_ADMIN, usable nftables and ctnetlink, and ``net.ipv4.ip_forward`` = 1;
        the table is created, or repaired with its elements kept. IPv6 streams go to the kernel
        only with IPv6 forwarding on. When off, ``reason`` says why (logged once per reason).
        """
        available = self.forwarder.available()
        ipv4, self.ipv6 = _ip_forwarding()
        if available and not ipv4:
            available_reason = "net.ipv4.ip_forward is 0"
        else:
            available_reason = available.reason
        if not available or not ipv4:
            self._disable(available_reason)
            return False
        try:
            self.forwarder.ensure_table()
        except NftError as exc:
            self._disable(f"cannot create table {self.name}: {exc}")
            return False
        self.enabled = True
        self.reason = ""
        self.dropped = []  # (the hand-over adopts every call now)
        log.info("kernel.enabled", table=self.name, ipv6=self.ipv6)
        return True

    def _disable(self, reason: str) -> None:
        if self.enabled or self.reason != reason:
            log.warning(
                "kernel.unavailable",
                table=self.name,
                reason=reason,
                effect="forwarding in userspace",
            )
        self.enabled = False
        self.reason = reason
        self._failed_at = time.monotonic()
        self.dropped.extend(self.installed)
        self.installed.clear()
        self._by_port.clear()
        self._copied_to.clear()

    def check(self) -> bool:
        """Whether the table is still there (someone may have deleted it, or flushed the
        ruleset); when not, the kernel path turns off as after any nftables failure."""
        if not self.enabled:
            return False
        try:
            if self.forwarder.present():
                return True
            reason = f"table {self.name} or its counters are gone"
        except NftError as exc:
            reason = f"nft failed: {exc}"
        self._disable(reason)
        return False

    def retry_due(self) -> bool:
        return not self.enabled and time.monotonic() - self._failed_at >= _RETRY_AFTER

    # -- per call -------------------------------------------------------------------------

    def accepts(self, leg: KernelLeg) -> bool:
        return self.enabled and (self.ipv6 or ":" not in leg.relay.address)

    def sync(self, call_id: str, legs: Iterable[KernelLeg]) -> set[str]:
        """Make the kernel hold exactly ``legs`` for this call; return their socket keys."""
        if not self.enabled:
            return set()
        current = {r.wire: r for r in self.installed.get(call_id, ())}
        wanted: dict[bytes, Installed] = {}
        sockets: set[str] = set()
        for leg in legs:
            if not self.accepts(leg):
                continue
            record = Installed.of(leg)
            kept = current.get(record.wire)
            # a forward already in the table keeps its record (and what it counted)
            if kept is not None and kept.same(record):
                record = kept
            wanted[record.wire] = record
            sockets.add(leg.socket)
        stale = [r for w, r in current.items() if w not in wanted or wanted[w] is not r]
        fresh = [r for w, r in wanted.items() if current.get(w) is not r]
        try:
            if stale:
                self.forwarder.remove([r.key for r in stale])
            if fresh:
                self.forwarder.install([r.forward for r in fresh])
        except NftError as exc:
            self._disable(f"nft failed: {exc}")
            return set()
        self._untrack(stale)
        self._changed += len(stale) + len(fresh)
        if fresh:
            log.info("kernel.offload", call_id=call_id, forwards=len(fresh))
            self._settling.append((time.monotonic(), fresh))
        if stale:
            log.info("kernel.unoffload", call_id=call_id, forwards=len(stale))
        if wanted:
            self.installed[call_id] = tuple(wanted.values())
            self._track(wanted.values())
        else:
            self.installed.pop(call_id, None)
        return sockets

    def drop(self, call_id: str) -> bool:
        """Take every forward of a call out of the kernel; True if there were any."""
        current = self.installed.pop(call_id, None)
        if not current or not self.enabled:
            return False
        try:
            self.forwarder.remove([record.key for record in current])
        except NftError as exc:
            self._disable(f"nft failed: {exc}")
        self._untrack(current)
        self._changed += len(current)
        log.info("kernel.unoffload", call_id=call_id, forwards=len(current))
        return True

    def record(
        self,
        call_id: str,
        group: int | None,
        legs: Iterable[KernelLeg] = (),
        events: int | None = None,
    ) -> None:
        """The kernel copies the packets of the call's forwards, and of ``legs`` (forwards
        about to be installed: marked first, so that their first packet is copied), to nflog
        ``group``; None: it stops. A removed forward takes its mark with it. With ``events``
        (a payload type: the call's telephone-event), only the packets of that payload type
        are copied (the DTMF event log, relayd/nft/ruleset.py)."""
        if not self.enabled or (group is None and not self.forwarder.marking):
            return  # (nothing is marked: the common case, and no key made for it)
        if group is not None and events is not None:
            group = events_target(group, events)
        keys = {record.key for record in self.installed.get(call_id, ())}
        keys.update(Installed.of(leg).key for leg in legs if self.accepts(leg))
        try:
            if group is None:
                self.forwarder.unrecord(keys)
                return
            if group not in self._copied_to:
                self.forwarder.ensure_recording(group)
                self._copied_to.add(group)
            self.forwarder.record(keys, group)
        except NftError as exc:
            self._disable(f"nft failed: {exc}")

    def _track(self, records: Iterable[Installed]) -> None:
        by_port = self._by_port
        for record in records:
            port = record.relay_port
            held = by_port.get(port)
            if held is None:
                by_port[port] = record
                continue
            # another record on this port: one with the same key gives way (the newer
            # record stands for the kernel's element, as a dict by key would keep it)
            wire = record.wire
            others = tuple(r for r in _records(held) if r.wire != wire)
            by_port[port] = (*others, record) if others else record

    def _untrack(self, records: Iterable[Installed]) -> None:
        by_port = self._by_port
        for record in records:
            port = record.relay_port
            held = by_port.get(port)
            if held is record:
                del by_port[port]
            elif isinstance(held, tuple) and record in held:
                others = tuple(r for r in held if r is not record)
                by_port[port] = others if len(others) > 1 else others[0]

    def _tracked(self, wire: bytes) -> Installed | None:
        """The record of a dumped element's key, if relayd holds one."""
        # the relay port: the key's last field (``dport`` and two bytes of padding)
        held = self._by_port.get(int.from_bytes(wire[-4:-2], "big"))
        if held is None:
            return None
        for record in _records(held):
            if record.wire == wire:
                return record
        return None

    def adopt(self, calls: dict[str, list[KernelLeg]]) -> dict[str, set[str]]:
        """After a restart: keep the restored calls' forwards as they are (their media
        never stopped), add what is missing, remove forwards of calls that are gone.
        Returns the sockets in the kernel per call."""
        if not self.enabled:
            return {}
        per_call: dict[str, tuple[Installed, ...]] = {}
        sockets: dict[str, set[str]] = {}
        for call_id, legs in calls.items():
            by_wire: dict[bytes, Installed] = {}
            for leg in legs:
                if self.accepts(leg):
                    record = Installed.of(leg)
                    by_wire[record.wire] = record
                    sockets.setdefault(call_id, set()).add(leg.socket)
            if by_wire:
                per_call[call_id] = tuple(by_wire.values())
        adopted = [r for records in per_call.values() for r in records]
        try:
            result = self.forwarder.reconcile([r.forward for r in adopted])
            counts = self.forwarder.counters()
        except NftError as exc:
            self._disable(f"reconciling the table failed: {exc}")
            return {}
        self.installed = per_call
        self._changed += len(adopted)  # (a listing of the table, a transaction of them all)
        self._by_port.clear()
        for records in per_call.values():
            for record in records:
                # counters already counted before the restart are not counted twice
                record.packets, record.bytes = counts.get(record.key, Counter(0, 0))
            self._track(records)
        if self._failed_at:
            # back after a failure: until now the workers relayed these streams, and one
            # may still send a packet in flight from a socket taken over here, leaving a
            # conntrack entry that would clash with the NAT of the stream's every later
            # packet (see settle), as after an offload. At start-up they relayed nothing.
            self._settling.append((time.monotonic(), adopted))
        log.info("kernel.reconciled", kept=result.kept, added=result.added, removed=result.removed)
        return sockets

    def settle(self, now: float, after: float = 0.3) -> None:
        """Delete again the conntrack entries of forwards installed ``after`` seconds ago.

        A worker may still relay a packet in flight from a socket the kernel has just
        taken over; the entry that packet leaves (relay port → peer, unreplied) would
        make every later NATed packet of the stream clash and be dropped.

        Called every tick; once a burst of changes (128 forwards or more added or removed,
        none left to settle) is over, the heap's free room goes back to the system (at most
        once a second; :func:`release_heap`).
        """
        due = [r for at, records in self._settling if now - at >= after for r in records]
        self._settling = [(at, r) for at, r in self._settling if now - at < after]
        if due and self.enabled:
            self._settle(due)
        if not self._settling and self._changed >= _RELEASE_AFTER and now >= self._released:
            # a burst of changes is over: the heap room that libnftables' transactions
            # (about 8 KB a forward while one runs) left between the blocks that stay goes
            # back to the system
            self._changed, self._released = 0, now + 1.0
            release_heap()

    def _settle(self, due: list[Installed]) -> None:
        # a slice at a time: a burst of offloads (500 calls reported in one second) would
        # otherwise make a Forward, four Endpoints and two flows for each of its thousands
        # of forwards at once, a peak the heap keeps (1 MB more RSS for 1,000 calls)
        for start in range(0, len(due), _SETTLE_BATCH):
            settled = [record.forward for record in due[start : start + _SETTLE_BATCH]]
            try:
                self.forwarder.forget_flows(settled)
            except NftError as exc:
                self._disable(f"conntrack failed: {exc}")
                return
        # the hand-over is complete: from here on only packets make the forwards' entries
        log.debug("kernel.settled", forwards=len(due))

    # -- counters -------------------------------------------------------------------------

    def read(self, call_ids: Iterable[str]) -> dict[str, Traffic]:
        """What the kernel forwarded for these calls since their last read, by bypassed
        socket key: one lookup per forward, whatever the table holds."""
        if not self.enabled:
            return {}
        records = {r.wire: r for cid in call_ids for r in self.installed.get(cid, ())}
        if not records:
            return {}
        try:
            counts = self.forwarder.element_counts(records)
        except NftError as exc:
            self._disable(f"reading counters failed: {exc}")
            return {}
        result: dict[str, Traffic] = {}
        for wire, count in counts.items():
            record = records[wire]
            self._fold(record, count, result)
            if self._dumping:
                self._fresh.add(record)  # newer than what the running dump may bring
        return result

    async def read_all(self) -> dict[str, Traffic]:
        """What the kernel forwarded since the last read, for every forward: one dump of
        each counter set, folded a kernel buffer (a few hundred elements) at a time with
        the event loop free in between, so ng never waits for a large table. A forward
        that :meth:`read` took meanwhile is left to that read (its count is the newer)."""
        if not self.enabled or not self._by_port:
            return {}
        result: dict[str, Traffic] = {}
        self._dumping, self._fresh = True, set()
        try:
            for chunk in self.forwarder.count_chunks():
                for wire, count in chunk:
                    record = self._tracked(wire)
                    if record is not None and record not in self._fresh:
                        self._fold(record, count, result)
                await asyncio.sleep(0)
        except NftError as exc:
            self._disable(f"reading counters failed: {exc}")
            return {}
        finally:
            self._dumping, self._fresh = False, set()
        return result

    @staticmethod
    def _fold(record: Installed, count: ElementCount, result: dict[str, Traffic]) -> None:
        before_packets, before_bytes = record.packets, record.bytes
        if count.packets < before_packets:
            # the element expired after a day without packets, and a packet added it anew
            before_packets = before_bytes = 0
        record.packets, record.bytes = count.packets, count.bytes
        if count.packets == before_packets:
            return
        packets = count.packets - before_packets
        # nft counts IP packets; userspace counters (and rtpengine) count UDP payload
        header = _IPV6_UDP if ":" in record.relay_address else _IPV4_UDP
        size = count.bytes - before_bytes - packets * header
        left = count.expires_ms if count.expires_ms is not None else ACTIVITY_TIMEOUT * 1000
        idle = max(ACTIVITY_TIMEOUT * 1000 - left, 0) / 1000
        key = record.socket
        earlier = result.get(key)
        if earlier is not None:  # two sources towards one socket, both in the kernel
            packets, size = packets + earlier.packets, size + earlier.bytes
            idle = min(idle, earlier.idle)
        result[key] = Traffic(packets, size, idle)

    def forwarded_bytes(self) -> int | None:
        """UDP payload bytes the table forwarded since it was made (its ``relayed4``/
        ``relayed6`` counters, less each packet's IP and UDP headers, as relayd counts
        bytes); None while the kernel path is off or the counters cannot be read."""
        if not self.enabled:
            return None
        try:
            counts = self.forwarder.relayed()
        except NftError as exc:
            log.debug("kernel.relayed_unread", error=str(exc))
            return None
        if not counts:
            return None
        headers = {4: 20 + 8, 6: 40 + 8}
        return sum(c.bytes - headers[v] * c.packets for v, c in counts.items())

    def close(self) -> None:
        self.forwarder.close()
