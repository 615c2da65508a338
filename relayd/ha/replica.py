"""The supervisor's side of Redis: its calls written, a peer's calls held, and their takeover.

Own calls: after each signalling event (and a hand-over that confirmed endpoints) the
supervisor marks the call (:meth:`RedisReplica.save`); every tick (:meth:`flush`) the
marked calls are dumped whole (relayd/calls/snapshot.py, as the journal has them: parties,
SDP state, ports, endpoints, SRTP keys) and handed to the writer thread. A call that ends
is deleted from Redis. When Redis comes back after an outage every call is queued again.

Foreign calls (a standby's, ``subscribe-keyspace``): the peer's calls as its database has
them, their ports reserved here (bound: with the advertised address not local yet, that
needs ``net.ipv4.ip_nonlocal_bind = 1``, as keepalived set-ups have), nothing forwarded,
no timer running; ``query`` answers for them and ``list`` lists them, as 10.5 does.
They are taken over (:meth:`activate`) on ``relayctl active``, on any other ng request
naming one of them, and when an address of
``interface`` becomes local (keepalived moved it here): each becomes an own call at once
(kernel forwards for its confirmed plain streams, its worker for the rest), is written to
this instance's database and deleted from the peer's, so that the peer, restarted, does
not take it back. ``relayctl standby`` turns that automatic takeover off and gives this
instance's own calls up to the peer, their keys left for it.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import psutil
import redis

from relayd.calls.calltree import call_tree
from relayd.calls.model import Call
from relayd.calls.snapshot import dump_call, load_call
from relayd.ha.settings import INDEX_KEY, RedisSettings, call_key, text
from relayd.ha.watcher import KeyspaceWatcher, PeerEvent
from relayd.ha.writer import RedisWriter, client
from relayd.log import get_logger
from relayd.ng.message import Request

__all__ = ["FORMAT", "Host", "RedisReplica", "ReplicaStats", "decode", "encode", "local_addresses"]

log = get_logger("relayd.ha")

FORMAT = 1
"""The version of the stored value: ``{"format": 1, "owner": …, "call": dump_call(…)}``."""
_READ_BATCH = 256
_RETRY_INTERVAL = 1.0  # seconds between tries of the foreign calls whose ports would not bind


def encode(call: Call, owner: str) -> bytes:
    """A call's value in Redis."""
    value = {"format": FORMAT, "owner": owner, "call": dump_call(call)}
    return json.dumps(value, separators=(",", ":")).encode()


def decode(value: dict[str, Any]) -> Call:
    """The call of a value :func:`encode` wrote; raises ValueError, KeyError or TypeError."""
    if value.get("format") != FORMAT:
        raise ValueError(f"unknown format {value.get('format')!r}")
    return load_call(value["call"])


def local_addresses() -> set[str]:
    """Every address of this host's network devices now."""
    return {
        addr.address.split("%")[0]
        for addrs in psutil.net_if_addrs().values()
        for addr in addrs
        if addr.family in (socket.AF_INET, socket.AF_INET6)
    }


def _pairs(call: Call) -> frozenset[tuple[str, int]]:
    return frozenset((m.local.local, m.port) for m in call.all_medias() if m.port and m.local)


class Host(Protocol):
    """The supervisor as the replica uses it."""

    calls: dict[str, Call]

    def claim(self, call: Call) -> bool:
        """Reserve and bind the call's ports; False (nothing kept) when one is taken."""
        ...

    def release(self, call: Call) -> None:
        """Give the call's ports back."""
        ...

    def own(self, call: Call) -> None:
        """Make the call this instance's: registry, timers, kernel forwards, workers."""
        ...

    def disown(self, call: Call) -> None:
        """The call leaves this instance (its media stops here), counted as nothing."""
        ...


@dataclass
class ReplicaStats:
    """For ``/metrics``."""

    takeovers: int = 0  # foreign calls made own
    unclaimed: int = 0  # foreign calls whose ports could not be reserved (each counted once)
    unreadable: int = 0  # values that did not load


class RedisReplica:
    """Own calls to Redis, foreign calls from it; see the module's docstring."""

    def __init__(
        self,
        settings: RedisSettings,
        host: Host,
        owner: str,
        addresses: Iterable[str],
        *,
        connect: Callable[[Any], redis.Redis] | None = None,
        local: Callable[[], set[str]] = local_addresses,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.host = host
        self.owner = owner  # written with each call: who wrote it (its ng address)
        self._connect = connect or (
            lambda target: client(target, settings.connect_timeout, settings.command_timeout)
        )
        self.writer = RedisWriter(settings.write, settings.expires, connect=self._connect)
        self.watcher: KeyspaceWatcher | None = None
        self.foreign: dict[str, Call] = {}
        self.foreign_db: dict[str, int] = {}
        # foreign calls whose ports would not bind here (a socket of this host had one as
        # its source port): tried again every second until they do or the peer drops them
        self.unclaimed_calls: dict[str, tuple[Call, int]] = {}
        self._retry_at = 0.0
        self._clock = clock
        self.standby = False  # relayctl standby: no automatic takeover
        self.stats = ReplicaStats()
        self._dirty: set[str] = set()
        self._gone: set[str] = set()
        self._configured = set(addresses)
        self._local_now = local
        self._local = self._configured & local()
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- start-up ----------------------------------------------------------------------------

    def restore(self) -> list[Call] | None:
        """This instance's calls as its own database has them (blocking: start-up only), or
        None when Redis cannot be read (the journal is used instead)."""
        try:
            conn = self._connect(self.settings.own)
            try:
                members = sorted(text(m) for m in conn.smembers(INDEX_KEY))
                calls = []
                for start in range(0, len(members), _READ_BATCH):
                    chunk = members[start : start + _READ_BATCH]
                    values = conn.mget([call_key(c) for c in chunk])
                    for call_id, raw in zip(chunk, values, strict=True):
                        if raw is None:  # expired: the index forgets it
                            self.writer.put(call_id, None, self.settings.own.db)
                            continue
                        try:
                            calls.append(decode(json.loads(raw)))
                        except (ValueError, KeyError, TypeError) as exc:
                            self.stats.unreadable += 1
                            log.error("redis.unreadable_call", call_id=call_id, error=str(exc))
                return calls
            finally:
                conn.close()
        except redis.RedisError as exc:
            log.warning("redis.restore_failed", target=str(self.settings.own), error=str(exc))
            return None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """The writer thread, and the watcher of the peers' databases (a standby)."""
        self._loop = loop
        self.writer.start()
        if self.settings.peers:
            self.watcher = KeyspaceWatcher(
                self.settings.own, self.settings.peers, self._delivered, connect=self._connect
            )
            self.watcher.start()

    def close(self) -> None:
        """relayd stops: what is marked is written (for up to 2 s); the foreign calls' sockets
        close with the process."""
        self.flush()
        if self.watcher is not None:
            self.watcher.close()
        self.writer.close()

    # -- own calls ---------------------------------------------------------------------------

    def save(self, call: Call) -> None:
        if call.call_id in self.host.calls:
            self._dirty.add(call.call_id)
            self._gone.discard(call.call_id)

    def forget(self, call_id: str) -> None:
        self._dirty.discard(call_id)
        self._gone.add(call_id)

    def flush(self) -> None:
        """Every tick: the marked calls to the writer, all of them after a Redis outage, and a
        look at the local addresses (a takeover when one of ours appeared)."""
        if self.writer.take_recovered():
            log.info("redis.rewrite_all", calls=len(self.host.calls))
            self._dirty.update(self.host.calls)
        for call_id in self._gone:
            self.writer.put(call_id, None)
        self._gone.clear()
        for call_id in self._dirty:
            call = self.host.calls.get(call_id)
            if call is not None:
                self.writer.put(call_id, encode(call, self.owner))
        self._dirty.clear()
        self._watch_addresses()
        if self.unclaimed_calls:
            self._claim_again()

    # -- foreign calls -----------------------------------------------------------------------

    def _delivered(self, event: PeerEvent) -> None:  # the watcher's thread
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.apply, event)

    def apply(self, event: PeerEvent) -> None:
        """A peer database's change: foreign calls added, updated or dropped."""
        if event.snapshot:
            held = [c for c, db in self.foreign_db.items() if db == event.db]
            held += [c for c, (_, db) in self.unclaimed_calls.items() if db == event.db]
            for call_id in held:
                if call_id not in event.calls:
                    self._drop_foreign(call_id)
        for call_id, value in event.calls.items():
            if call_id in self.host.calls:
                self.unclaimed_calls.pop(call_id, None)
                continue  # ours (taken over, or never theirs): what the peer says is stale
            if value is None:
                self._drop_foreign(call_id)
                continue
            try:
                call = decode(value)
            except (ValueError, KeyError, TypeError) as exc:
                self.stats.unreadable += 1
                log.error("redis.unreadable_call", call_id=call_id, db=event.db, error=str(exc))
                continue
            self._hold(call, event.db)
        if self._local and not self.standby:
            # the peer wrote calls on an address that is already ours: take them now
            self._take_on(self._local, event.calls)

    def _hold(self, call: Call, db: int) -> None:
        old = self.foreign.get(call.call_id)
        if old is not None and _pairs(old) == _pairs(call):
            call.worker = old.worker
        else:
            if old is not None:
                self.host.release(old)
                del self.foreign[call.call_id]
            if not self.host.claim(call):
                if call.call_id not in self.unclaimed_calls:
                    self.stats.unclaimed += 1
                    log.warning(
                        "ha.foreign_unclaimed",
                        call_id=call.call_id,
                        reason="a port is taken or cannot be bound (net.ipv4.ip_nonlocal_bind? "
                        "net.ipv4.ip_local_reserved_ports?); tried again every second",
                    )
                self.unclaimed_calls[call.call_id] = (call, db)
                self.foreign_db.pop(call.call_id, None)
                return
        if self.unclaimed_calls.pop(call.call_id, None) is not None:
            log.info("ha.foreign_claimed", call_id=call.call_id)
        self.foreign[call.call_id] = call
        self.foreign_db[call.call_id] = db

    def _claim_again(self) -> None:
        """The unclaimed foreign calls tried again, once a second (from :meth:`flush`); one
        whose address is ours already is taken over at once, as :meth:`apply` would."""
        now = self._clock()
        if now < self._retry_at:
            return
        self._retry_at = now + _RETRY_INTERVAL
        tried = list(self.unclaimed_calls.values())
        for call, db in tried:
            if call.call_id in self.host.calls:  # an offer made it ours meanwhile
                del self.unclaimed_calls[call.call_id]
            else:
                self._hold(call, db)
        if self._local and not self.standby:
            self._take_on(self._local, [call.call_id for call, _ in tried])

    def _drop_foreign(self, call_id: str) -> None:
        self.unclaimed_calls.pop(call_id, None)
        call = self.foreign.pop(call_id, None)
        self.foreign_db.pop(call_id, None)
        if call is not None:
            self.host.release(call)

    def listed(self, req: Request, reply: dict[str, Any]) -> dict[str, Any]:
        """ng ``list``: 10.5 lists the foreign calls after the own ones, within the limit."""
        calls = reply.get("calls")
        if isinstance(calls, list):
            limit = req.limit if req.limit is not None else 32
            room = max(limit, 0) - len(calls)
            if room > 0:
                reply["calls"] = calls + list(self.foreign)[:room]
        return reply

    def intercept(self, req: Request) -> dict[str, Any] | None:
        """An ng request about a foreign call: ``query`` answered from its state, ``delete``
        drops it here; any other request takes it over first (the peer's clients talk to us
        now). None: handle the request as usual."""
        call = self.foreign.get(req.call_id) if req.call_id else None
        if call is None:
            return None
        if req.command == "query":
            return {"result": "ok", **call_tree(call)}
        if req.command == "delete":
            reply = {"result": "ok", **call_tree(call)}
            self._drop_foreign(call.call_id)
            return reply
        self.activate([call.call_id])
        return None

    def activate(self, call_ids: Iterable[str] | None = None) -> int:
        """Take these foreign calls over (all: ``relayctl active``, which also turns the
        automatic takeover back on); how many were."""
        if call_ids is None:
            self.standby = False
            call_ids = list(self.foreign)
        taken = 0
        started = time.monotonic()
        for call_id in call_ids:
            call = self.foreign.pop(call_id, None)
            db = self.foreign_db.pop(call_id, None)
            if call is None or db is None:
                continue
            self.host.own(call)
            self.save(call)
            self.writer.put(call_id, None, db)  # the peer's copy: it must not take it back
            taken += 1
        if taken:
            self.stats.takeovers += taken
            log.info("ha.takeover", calls=taken, ms=round((time.monotonic() - started) * 1000, 1))
            self.flush()
        return taken

    def go_standby(self) -> int:
        """``relayctl standby``: no automatic takeover; this instance's calls leave it, their
        state left in Redis for the peer to take over. How many calls left."""
        self.standby = True
        calls = list(self.host.calls.values())
        for call in calls:
            self._dirty.discard(call.call_id)
            self.host.disown(call)
        self._gone.difference_update(c.call_id for c in calls)
        log.info("ha.standby", calls=len(calls))
        return len(calls)

    def _watch_addresses(self) -> None:
        if not self._configured or not self.settings.peers:
            return
        now = self._configured & self._local_now()
        appeared = now - self._local
        self._local = now
        if appeared:
            log.info("ha.address_appeared", addresses=sorted(appeared), standby=self.standby)
            if not self.standby:
                self._take_on(appeared, self.foreign)

    def _take_on(self, addresses: set[str], call_ids: Iterable[str]) -> None:
        """Take over the foreign calls among ``call_ids`` with media on these addresses."""
        chosen = [
            call_id
            for call_id in call_ids
            if (call := self.foreign.get(call_id)) is not None
            and any(m.local is not None and m.local.local in addresses for m in call.all_medias())
        ]
        if chosen:
            self.activate(chosen)

    def status(self) -> dict[str, Any]:
        """``relayctl`` and ``/metrics``: the mode, the calls held, the writer's counters."""
        w = self.writer.stats
        return {
            "mode": "standby" if self.standby else "active",
            "own_calls": len(self.host.calls),
            "foreign_calls": len(self.foreign),
            "redis_connected": w.connected,
            "redis_writes": w.writes,
            "redis_deletes": w.deletes,
            "redis_errors": w.errors,
            "redis_queued": self.writer.queued,
            "redis_last_error": w.last_error,
            "watch_errors": self.watcher.errors if self.watcher is not None else 0,
            "takeovers": self.stats.takeovers,
            "unclaimed": self.stats.unclaimed,
            "unclaimed_calls": len(self.unclaimed_calls),
            "unreadable": self.stats.unreadable,
        }
