"""rtpengine's Redis keys as relayd takes them (pure): where call state goes and comes from.

``redis = [PW@]HOST:PORT/DB`` is this instance's own database: its calls are restored from
it at start-up and written to it (unless ``redis-write`` names another); ``subscribe-keyspace``
lists the databases of peers whose calls this instance holds as foreign calls (a standby).
The password may also come from ``RTPENGINE_REDIS_AUTH_PW`` / ``RTPENGINE_REDIS_WRITE_AUTH_PW``,
as rtpengine reads them. 10.5 has no TLS to Redis, and neither has relayd.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CALL_PREFIX",
    "INDEX_KEY",
    "RedisSettings",
    "RedisTarget",
    "call_id_of",
    "call_key",
    "parse_target",
    "redis_settings",
    "text",
]

CALL_PREFIX = "relayd:call:"
"""A call's state is the JSON string at ``relayd:call:<call-id>`` in its owner's database."""
INDEX_KEY = "relayd:calls"
"""The set of the call-ids whose state the owner's database holds (a peer reads it whole)."""


def text(value: bytes | str) -> str:
    """A Redis reply's bytes as text (a client may already decode them)."""
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def call_key(call_id: str) -> str:
    return CALL_PREFIX + call_id


def call_id_of(key: str) -> str | None:
    """The call-id of a call's key, None for any other key."""
    return key[len(CALL_PREFIX) :] if key.startswith(CALL_PREFIX) else None


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """One Redis database: ``host``:``port``, database ``db``, with ``password`` if any."""

    host: str
    port: int
    db: int
    password: str = ""

    def with_db(self, db: int) -> RedisTarget:
        return RedisTarget(self.host, self.port, db, self.password)

    def __str__(self) -> str:  # for logs: never the password
        return f"{self.host}:{self.port}/{self.db}"


@dataclass(frozen=True, slots=True)
class RedisSettings:
    """What relayd does with Redis; ``None`` from :func:`redis_settings` when ``redis`` is unset.

    ``own``: the database this instance restores its calls from; ``write``: where it writes
    them (``redis-write``, else ``own``); ``peers``: the databases whose calls it holds as
    foreign (``subscribe-keyspace``); ``expires``: seconds a call's key lives after its last
    write (``redis-expires``); the timeouts in seconds.
    """

    own: RedisTarget
    write: RedisTarget
    peers: tuple[int, ...] = ()
    expires: int = 86400
    connect_timeout: float = 1.0
    command_timeout: float = 1.0

    def peer(self, db: int) -> RedisTarget:
        """A peer's database, on the server of ``own``."""
        return self.own.with_db(db)


_TARGET = re.compile(
    r"^(?:(?P<password>.*)@)?(?P<host>\[[^\]]+\]|[^:/@\[\]]+):(?P<port>\d+)/(?P<db>\d+)$"
)


def parse_target(text: str, password: str = "") -> RedisTarget:
    """``[PW@]HOST:PORT/DB`` (an IPv6 host in brackets); ``password`` applies where the text
    has none. Raises ValueError."""
    match = _TARGET.match(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not [PASSWORD@]HOST:PORT/DB")
    port, db = int(match["port"]), int(match["db"])
    if not 0 < port < 65536:
        raise ValueError(f"invalid port in {text!r}")
    host = match["host"].strip("[]")
    if host == "localhost":
        host = "127.0.0.1"
    return RedisTarget(host, port, db, match["password"] or password)


def _databases(value: Any) -> tuple[int, ...]:
    """``subscribe-keyspace``: database numbers, separated by ``;``, ``,`` or spaces."""
    if isinstance(value, int):
        return (value,)
    numbers = []
    for item in re.split(r"[;,\s]+", str(value).strip()):
        if not item:
            continue
        if not item.isdigit():
            raise ValueError(f"{item!r} is not a database number")
        numbers.append(int(item))
    return tuple(dict.fromkeys(numbers))


def redis_settings(values: Mapping[str, Any], environ: Mapping[str, str]) -> RedisSettings | None:
    """The Redis settings of a configuration's ``values`` (the keys as parsed), or None
    when ``redis`` is unset. Raises ValueError naming the key at fault."""
    if not values.get("redis"):
        for key in ("redis-write", "subscribe-keyspace"):
            if values.get(key):
                raise ValueError(f"'{key}' needs 'redis'")
        return None
    try:
        own = parse_target(str(values["redis"]), environ.get("RTPENGINE_REDIS_AUTH_PW", ""))
    except ValueError as exc:
        raise ValueError(f"invalid value for 'redis': {exc}") from None
    write = own
    if values.get("redis-write"):
        try:
            write = parse_target(
                str(values["redis-write"]), environ.get("RTPENGINE_REDIS_WRITE_AUTH_PW", "")
            )
        except ValueError as exc:
            raise ValueError(f"invalid value for 'redis-write': {exc}") from None
    try:
        peers = _databases(values.get("subscribe-keyspace", ""))
    except ValueError as exc:
        raise ValueError(f"invalid value for 'subscribe-keyspace': {exc}") from None
    if own.db in peers or write.db in peers:
        raise ValueError("'subscribe-keyspace' names this instance's own database")
    expires = int(values.get("redis-expires", 86400))
    if expires <= 0:
        raise ValueError("invalid value for 'redis-expires': must be positive")
    connect = int(values.get("redis-connect-timeout", 1000))
    command = int(values.get("redis-cmd-timeout", 1000))
    if connect <= 0 or command <= 0:
        raise ValueError("invalid value for 'redis-connect-timeout'/'redis-cmd-timeout'")
    return RedisSettings(
        own=own,
        write=write,
        peers=peers,
        expires=expires,
        connect_timeout=connect / 1000,
        command_timeout=command / 1000,
    )
