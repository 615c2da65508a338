"""A peer's calls as Redis has them, followed through keyspace notifications (a thread).

For each database of ``subscribe-keyspace`` the watcher subscribes to the keyspace events
of the calls' keys (``__keyspace@DB__:relayd:call:*``), then reads the whole index once:
subscribed first, so that nothing written in between is missed. A ``set`` is read back
and delivered as the call's new state, a ``del`` or ``expired`` as its end. After a lost
connection it connects again and delivers a full snapshot of the database, so that the
owner can drop what ended meanwhile. Deliveries go to the event loop
(``loop.call_soon_threadsafe``); the thread never touches a call.

Redis sends keyspace events only with ``notify-keyspace-events`` holding ``K`` and the
classes of the commands used (``$`` strings, ``g`` generic, ``x`` expired): the watcher
adds them with ``CONFIG SET`` where they are missing, and logs it when it may not.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from relayd.ha.settings import CALL_PREFIX, INDEX_KEY, RedisTarget, call_id_of, call_key, text
from relayd.ha.writer import MAX_BACKOFF, PROBE_INTERVAL
from relayd.log import get_logger

__all__ = ["KeyspaceWatcher", "PeerEvent", "ensure_notifications"]

log = get_logger("relayd.ha.watcher")

_NEEDED = "K$gx"
_READ_BATCH = 256


@dataclass(frozen=True, slots=True)
class PeerEvent:
    """What changed in peer database ``db``: ``calls`` (call-id to its state, None: ended);
    ``snapshot`` True when ``calls`` is the whole database (others it held are gone)."""

    db: int
    calls: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    snapshot: bool = False


def ensure_notifications(conn: redis.Redis) -> None:
    """Turn on the keyspace events the watcher needs, keeping those already on."""
    try:
        current = str(conn.config_get("notify-keyspace-events").get("notify-keyspace-events", ""))
        flags = current
        for flag in _NEEDED:
            if flag not in flags and not ("A" in flags and flag in "$gx"):
                flags += flag
        if flags != current:
            conn.config_set("notify-keyspace-events", flags)
            log.info("redis.notifications_on", flags=flags, were=current)
    except redis.ResponseError as exc:  # CONFIG renamed or forbidden
        log.warning("redis.notifications_unchanged", error=str(exc), needed=_NEEDED)


def _decode(raw: bytes | str | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


class KeyspaceWatcher:
    """Follows the calls of the peer databases ``dbs`` on ``target``'s server and hands each
    change to ``deliver`` (called in this thread: it must only hand over to the loop)."""

    def __init__(
        self,
        target: RedisTarget,
        dbs: tuple[int, ...],
        deliver: Callable[[PeerEvent], None],
        *,
        connect: Callable[[RedisTarget], redis.Redis],
    ) -> None:
        self.target, self.dbs, self.deliver = target, dbs, deliver
        self._connect = connect
        self._stop = threading.Event()
        self.connected = False
        self.errors = 0
        self._threads = [
            threading.Thread(target=self._follow, args=(db,), name=f"redis-watch-{db}", daemon=True)
            for db in dbs
        ]
        self._pubsubs: dict[int, Any] = {}

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def close(self) -> None:
        self._stop.set()
        for pubsub in list(self._pubsubs.values()):
            with contextlib.suppress(Exception):  # a connection that already failed
                pubsub.close()
        for thread in self._threads:
            thread.join(2.0)

    def _follow(self, db: int) -> None:
        backoff = 0.1
        while not self._stop.is_set():
            try:
                self._session(db)
            except (redis.RedisError, OSError, ValueError) as exc:
                if self._stop.is_set():
                    return
                self.errors += 1
                self.connected = False
                log.warning("redis.watch_failed", db=db, error=str(exc))
                self._stop.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
            else:
                backoff = 0.1

    def _session(self, db: int) -> None:
        conn = self._connect(self.target.with_db(db))
        try:
            ensure_notifications(conn)
            pubsub = conn.pubsub(ignore_subscribe_messages=True)
            self._pubsubs[db] = pubsub
            pubsub.psubscribe(f"__keyspace@{db}__:{CALL_PREFIX}*")
            self.deliver(PeerEvent(db, self._read_all(conn), snapshot=True))
            self.connected = True
            log.info("redis.watching", db=db, target=str(self.target.with_db(db)))
            prefix = f"__keyspace@{db}__:"
            run_id = self._run_id(conn)
            looked = time.monotonic()
            while not self._stop.is_set():
                message = pubsub.get_message(timeout=0.5)
                if time.monotonic() - looked >= PROBE_INTERVAL:
                    # the client subscribes again by itself after a lost connection; what
                    # was missed meanwhile (a server restarted empty) comes as a snapshot
                    looked = time.monotonic()
                    now = self._run_id(conn)
                    if now != run_id:
                        run_id = now
                        log.info("redis.watch_resync", db=db)
                        self.deliver(PeerEvent(db, self._read_all(conn), snapshot=True))
                if message is None:
                    continue
                channel = text(message["channel"])
                call_id = call_id_of(channel[len(prefix) :])
                if call_id is None:
                    continue
                event = text(message["data"])
                if event in ("del", "expired", "evicted"):
                    self.deliver(PeerEvent(db, {call_id: None}))
                elif event == "set":
                    self.deliver(PeerEvent(db, {call_id: _decode(conn.get(call_key(call_id)))}))
        finally:
            self._pubsubs.pop(db, None)
            conn.close()

    @staticmethod
    def _run_id(conn: redis.Redis) -> str:
        return str(conn.info("server").get("run_id", ""))

    def _read_all(self, conn: redis.Redis) -> dict[str, dict[str, Any] | None]:
        """Every call of the database (the index's members whose key is there)."""
        members = sorted(text(m) for m in conn.smembers(INDEX_KEY))
        calls: dict[str, dict[str, Any] | None] = {}
        for start in range(0, len(members), _READ_BATCH):
            chunk = members[start : start + _READ_BATCH]
            for call_id, raw in zip(chunk, conn.mget([call_key(c) for c in chunk]), strict=True):
                state = _decode(raw)
                if state is not None:
                    calls[call_id] = state
        return calls
