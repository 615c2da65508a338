"""The call journal: call state in an SQLite file, so a restart keeps its calls.

relayd writes a call after each signalling event and kernel hand-over (in
batches, a few times a second: SQLite commits cost more than an ng request)
and deletes it when the call ends. On start it reads the journal back; with
the kernel path, established calls keep flowing in nftables while relayd is
down and are picked up again. Counters are restored as last written.

Where it lives (:func:`journal_place`): ``state-dir`` set, ``calls.sqlite`` in that
directory; ``state-dir = none``, nowhere. Unset, the journal is on wherever relayd can
create its directory: ``$RELAYD_STATE_DIR`` if set, else ``/var/lib/relayd`` for root
(mode 0750) and ``$XDG_STATE_HOME/relayd`` (``~/.local/state/relayd``, mode 0700) for
anyone else. The default file is named after the instance's ng listener
(``calls-ng-127.0.0.1-2223.sqlite``): two relayd on one host cannot listen on one ng
address, so they never share a default journal, and a restarted instance finds its own.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from relayd.calls.model import Call
from relayd.calls.snapshot import dump_call, load_call
from relayd.log import get_logger

__all__ = [
    "ENVIRONMENT",
    "SYSTEM_DIRECTORY",
    "Journal",
    "Placement",
    "default_directory",
    "instance_name",
    "journal_place",
]

log = get_logger("relayd.calls.journal")

_SCHEMA = "CREATE TABLE IF NOT EXISTS calls (call_id TEXT PRIMARY KEY, data TEXT NOT NULL)"
ENVIRONMENT = "RELAYD_STATE_DIR"
"""The default state directory, when ``state-dir`` is unset (for root and others alike)."""
SYSTEM_DIRECTORY = Path("/var/lib/relayd")
"""root's default state directory (systemd's ``StateDirectory=relayd``)."""
_NAME = "calls.sqlite"  # in a state-dir that was set; once the default directory's too


class Journal:
    """The call journal: one JSON row per call in ``calls.sqlite`` under ``state-dir`` (WAL).

    :meth:`save` and :meth:`forget` only mark a call; :meth:`flush` (every supervisor tick)
    writes what was marked in one transaction, since a commit costs more than an ng request.
    """

    def __init__(self, directory: Path, name: str = _NAME) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / name
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


@dataclass(frozen=True, slots=True)
class Placement:
    """Where the journal goes (``directory``/``name``), or, ``directory`` None, why nowhere."""

    directory: Path | None
    name: str = _NAME
    why: str = ""

    @property
    def path(self) -> Path | None:
        return self.directory / self.name if self.directory is not None else None


def default_directory(environ: Mapping[str, str], euid: int, home: Path) -> Path:
    """The state directory of a relayd whose ``state-dir`` is unset."""
    chosen = environ.get(ENVIRONMENT, "")
    if chosen:
        return Path(chosen)
    if euid == 0:
        return SYSTEM_DIRECTORY
    xdg = environ.get("XDG_STATE_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else home / ".local" / "state"
    return base / "relayd"


def instance_name(listen_ng: tuple[str, int] | None, listen_tcp_ng: tuple[str, int] | None) -> str:
    """The default journal's file name, after the ng listener (UDP, else TCP)."""
    listener = listen_ng or listen_tcp_ng
    if listener is None:
        return "calls-no-ng.sqlite"
    host, port = listener
    return f"calls-ng-{re.sub(r'[^A-Za-z0-9.-]', '_', host)}-{port}.sqlite"


def journal_place(
    state_dir: str,
    instance: str,
    *,
    environ: Mapping[str, str] | None = None,
    euid: int | None = None,
    home: Path | None = None,
) -> Placement:
    """Where the journal of a relayd with ``state-dir = state_dir`` goes; the default
    directory is created (0750 for root, 0700 for others) and a journal the default
    directory held before files were per instance (``calls.sqlite``) becomes this
    instance's. Never raises: a directory that cannot be made means no journal, and why."""
    if state_dir == "none":
        return Placement(None, why="state-dir = none")
    if state_dir:
        return Placement(Path(state_dir))
    environ = os.environ if environ is None else environ
    euid = os.geteuid() if euid is None else euid
    directory = default_directory(environ, euid, Path.home() if home is None else home)
    try:
        directory.mkdir(mode=0o750 if euid == 0 else 0o700, parents=True, exist_ok=True)
    except OSError as exc:
        return Placement(None, why=f"cannot create {directory}: {exc.strerror or exc}")
    if not os.access(directory, os.W_OK | os.X_OK):
        return Placement(None, why=f"{directory} is not writable")
    _adopt(directory, instance)
    return Placement(directory, instance)


def _adopt(directory: Path, instance: str) -> None:
    """The shared default journal of earlier releases becomes this instance's (once)."""
    old, new = directory / _NAME, directory / instance
    if not old.exists() or new.exists():
        return
    try:
        old.rename(new)  # atomic: of two instances starting together, one takes it
        for suffix in ("-wal", "-shm"):  # SQLite's write-ahead log goes with it
            side = directory / (_NAME + suffix)
            if side.exists():
                side.rename(directory / (instance + suffix))
    except OSError as exc:
        log.warning("state.journal_not_adopted", path=str(old), error=str(exc))
        return
    log.info("state.journal_adopted", path=str(new), was=str(old))
