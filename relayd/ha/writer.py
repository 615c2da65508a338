"""Call state to Redis from a thread of its own, so that no write ever holds signalling up.

The event loop hands over finished values (:meth:`RedisWriter.put`: a call's JSON, or None
to delete it), which only takes a lock: what is queued is one entry per call and database,
the newest, so a call signalled many times while Redis is slow is written once. The thread
writes each batch in one pipeline (``SET key value EX expires`` and ``SADD`` into the index,
or ``DEL`` and ``SREM``). When Redis fails the batch goes back under anything newer, the
error is counted and the thread tries again after a pause (growing to
:data:`MAX_BACKOFF`); once a write succeeds again :meth:`RedisWriter.take_recovered` says
so once, and the owner queues every call again: a Redis that came back empty gets the
whole state. With nothing to write the thread looks at the server every
:data:`PROBE_INTERVAL`: an outage is found without a write, and so is a server that
restarted (a new ``run_id``): either way every call is written again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from relayd.ha.settings import INDEX_KEY, RedisTarget, call_key
from relayd.log import get_logger

__all__ = ["MAX_BACKOFF", "PROBE_INTERVAL", "RedisWriter", "WriterStats", "client"]

log = get_logger("relayd.ha.writer")

MAX_BACKOFF = 2.0
"""Seconds at most between two tries while Redis does not answer."""
_BATCH = 512  # calls per pipeline
PROBE_INTERVAL = 1.0
"""Seconds of no writes after which the writer looks at the server (up, restarted)."""


def client(target: RedisTarget, connect_timeout: float, command_timeout: float) -> redis.Redis:
    """A client of ``target`` (hiredis parses the replies where installed). The client's own
    retries are off (its default retries a failed command with pauses of seconds): the
    writer and the watcher retry themselves, and count each failure."""
    return redis.Redis(
        host=target.host,
        port=target.port,
        db=target.db,
        password=target.password or None,
        socket_connect_timeout=connect_timeout,
        socket_timeout=command_timeout,
        retry=Retry(NoBackoff(), 0),
    )


@dataclass
class WriterStats:
    """What the writer did (read by ``/metrics``; ints written by one thread only)."""

    writes: int = 0  # calls written
    deletes: int = 0  # calls deleted
    errors: int = 0  # pipelines that failed
    connected: bool = False  # the last try reached Redis
    last_error: str = ""


Key = tuple[int, str]  # database, call-id


class RedisWriter:
    """The writer thread of one Redis server: ``put`` from the loop, pipelines in the thread.

    ``connect`` makes the client of a database (tests give a fake one).
    """

    def __init__(
        self,
        target: RedisTarget,
        expires: int,
        *,
        connect_timeout: float = 1.0,
        command_timeout: float = 1.0,
        connect: Callable[[RedisTarget], redis.Redis] | None = None,
    ) -> None:
        self.target = target
        self.expires = expires
        self._connect = connect or (lambda t: client(t, connect_timeout, command_timeout))
        self._clients: dict[int, redis.Redis] = {}
        self._pending: dict[Key, bytes | None] = {}
        self._cond = threading.Condition()
        self._closing = False
        self._failed = False  # since the last success
        self._recovered = False
        self._busy = False
        self._run_id = ""  # the server's, as the last probe found it
        self.stats = WriterStats()
        self._thread = threading.Thread(target=self._run, name="redis-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def put(self, call_id: str, data: bytes | None, db: int | None = None) -> None:
        """Queue ``data`` as the call's state in ``db`` (default: the target's), or its
        deletion (``data`` None). The newest value of a call replaces one not written yet."""
        with self._cond:
            self._pending[(self.target.db if db is None else db, call_id)] = data
            self._cond.notify()

    @property
    def queued(self) -> int:
        return len(self._pending)

    def take_recovered(self) -> bool:
        """True once after Redis answers again following a failure."""
        with self._cond:
            recovered, self._recovered = self._recovered, False
            return recovered

    def idle(self, timeout: float) -> bool:
        """Wait until everything queued is written (tests, shutdown); whether it was."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.05))
            return True

    def close(self, timeout: float = 2.0) -> None:
        """Write what is queued (for at most ``timeout`` seconds) and stop the thread."""
        self.idle(timeout)
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)
        for conn in self._clients.values():
            conn.close()

    # -- the thread -----------------------------------------------------------------------------

    def _run(self) -> None:
        backoff = 0.1
        try:
            self._probe()  # the server as it is now: a later restart is told by its run_id
            self.stats.connected = True
        except redis.RedisError as exc:
            self._failed = True  # nothing written yet; once Redis answers, all is
            self.stats.errors += 1
            self.stats.last_error = str(exc)
            log.warning("redis.unavailable", target=str(self.target), error=str(exc))
        while True:
            with self._cond:
                if not self._pending and not self._closing:
                    self._cond.wait(PROBE_INTERVAL)
                if self._closing and (not self._pending or self._failed):
                    return
                batch = dict(list(self._pending.items())[:_BATCH])
                for key in batch:
                    del self._pending[key]
                self._busy = True
            try:
                if batch:
                    self._write(batch)
                else:
                    self._probe()  # idle: is Redis there, and still the same server?
            except redis.RedisError as exc:
                with self._cond:
                    # back under what came since: a newer value of a call wins
                    self._pending = {**batch, **self._pending}
                    self._busy = False
                    self._failed = True
                    self.stats.errors += 1
                    self.stats.connected = False
                    if self.stats.last_error != str(exc):
                        log.warning("redis.write_failed", target=str(self.target), error=str(exc))
                    self.stats.last_error = str(exc)
                    self._cond.wait(backoff)  # a close cuts the pause short
                backoff = min(backoff * 2, MAX_BACKOFF)
                continue
            backoff = 0.1
            with self._cond:
                self._busy = False
                self.stats.connected = True
                if self._failed:
                    self._failed = False
                    self._recovered = True
                    log.info("redis.write_recovered", target=str(self.target))
                self._cond.notify_all()

    def _conn(self, db: int) -> redis.Redis:
        conn = self._clients.get(db)
        if conn is None:
            conn = self._clients[db] = self._connect(self.target.with_db(db))
        return conn

    def _probe(self) -> None:
        """A look at the server when nothing was written for a while: one that restarted
        (a new ``run_id``) may have lost every call, so it counts as recovered."""
        run_id = str(self._conn(self.target.db).info("server").get("run_id", ""))
        if self._run_id and run_id != self._run_id:
            log.info("redis.restarted", target=str(self.target))
            self._failed = True  # the success that follows makes it recovered
        self._run_id = run_id

    def _write(self, batch: dict[Key, bytes | None]) -> None:
        by_db: dict[int, list[tuple[str, bytes | None]]] = {}
        for (db, call_id), data in batch.items():
            by_db.setdefault(db, []).append((call_id, data))
        for db, items in by_db.items():
            pipe = self._conn(db).pipeline(transaction=False)
            writes = deletes = 0
            for call_id, data in items:
                if data is None:
                    pipe.delete(call_key(call_id))
                    pipe.srem(INDEX_KEY, call_id)
                    deletes += 1
                else:
                    pipe.set(call_key(call_id), data, ex=self.expires)
                    pipe.sadd(INDEX_KEY, call_id)
                    writes += 1
            pipe.execute()
            self.stats.writes += writes
            self.stats.deletes += deletes
