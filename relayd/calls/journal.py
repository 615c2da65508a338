"""The call journal: call state in an SQLite file, so a restart keeps its calls.

relayd writes a call after each signalling event and kernel hand-over (in
batches, a few times a second: SQLite commits cost more than an ng request)
and deletes it when the call ends. On start it reads the journal back; with
the kernel path, established calls keep flowing in nftables while relayd is
down and are picked up again. Counters are restored as last written.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from relayd.calls.model import Call
from relayd.calls.snapshot import dump_call, load_call
from relayd.log import get_logger

__all__ = ["Journal"]

log = get_logger("relayd.calls.journal")

_SCHEMA = "CREATE TABLE IF NOT EXISTS calls (call_id TEXT PRIMARY KEY, data TEXT NOT NULL)"


class Journal:
    """The call journal: one JSON row per call in ``calls.sqlite`` under ``state-dir`` (WAL).

    :meth:`save` and :meth:`forget` only mark a call; :meth:`flush` (every supervisor tick)
    writes what was marked in one transaction, since a commit costs more than an ng request.
    """

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / "calls.sqlite"
        self._db = sqlite3.connect(self.path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(_SCHEMA)
        self._dirty: dict[str, Call | None] = {}

    def load(self) -> list[Call]:
        """The journalled calls, for a restart; a row that no longer loads is logged and
        deleted at the next flush."""
        calls = []
        for call_id, data in self._db.execute("SELECT call_id, data FROM calls"):
            try:
                calls.append(load_call(json.loads(data)))
            except (ValueError, KeyError, TypeError) as exc:
                log.error("state.unreadable_call", call_id=call_id, error=str(exc))
                self._dirty[call_id] = None
        return calls

    def save(self, call: Call) -> None:
        self._dirty[call.call_id] = call

    def forget(self, call_id: str) -> None:
        self._dirty[call_id] = None

    def flush(self) -> int:
        """Write the calls saved, delete those forgotten since the last flush: one transaction.

        Returns how many calls it wrote or deleted (0: nothing was marked).
        """
        if not self._dirty:
            return 0
        dirty, self._dirty = self._dirty, {}
        rows = [
            (cid, json.dumps(dump_call(c), separators=(",", ":")))
            for cid, c in dirty.items()
            if c is not None
        ]
        gone = [(cid,) for cid, c in dirty.items() if c is None]
        with self._db:
            self._db.execute("BEGIN")
            if rows:
                self._db.executemany("INSERT OR REPLACE INTO calls VALUES (?, ?)", rows)
            if gone:
                self._db.executemany("DELETE FROM calls WHERE call_id = ?", gone)
        return len(dirty)

    def close(self) -> None:
        self.flush()
        self._db.close()
