"""Redis high availability (relayd/ha/): settings, the writer thread against a fake Redis,
and the replica's own and foreign calls with a fake supervisor. The real Redis and two
relayd hosts: tests/netns/test_ha_redis.py."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis

from relayd.calls.model import Call
from relayd.config import ConfigError, load
from relayd.ha.replica import RedisReplica, decode, encode
from relayd.ha.settings import INDEX_KEY, RedisTarget, call_key, parse_target, redis_settings
from relayd.ha.watcher import PeerEvent
from relayd.ha.writer import RedisWriter
from relayd.ng.message import parse_request
from tests.unit.calls import B_ADDR, LOCAL4, build, req, sdp

# -- settings -----------------------------------------------------------------------------------


def test_targets_parse_as_rtpengine_writes_them() -> None:
    assert parse_target("10.0.0.5:6379/3") == RedisTarget("10.0.0.5", 6379, 3)
    assert parse_target("secret@10.0.0.5:6379/0") == RedisTarget("10.0.0.5", 6379, 0, "secret")
    assert parse_target("p@ss@[2001:db8::1]:6380/2") == RedisTarget("2001:db8::1", 6380, 2, "p@ss")
    assert parse_target("localhost:6379/1", password="env") == RedisTarget(
        "127.0.0.1", 6379, 1, "env"
    )
    assert str(parse_target("pw@h:1/2")) == "h:1/2"  # no password in logs
    for bad in ("10.0.0.5:6379", "10.0.0.5/1", "h:0/1", "h:99999/1"):
        with pytest.raises(ValueError):
            parse_target(bad)


def test_settings_from_the_configuration_keys() -> None:
    assert redis_settings({}, {}) is None
    settings = redis_settings(
        {"redis": "10.0.0.5:6379/1", "subscribe-keyspace": "2;3", "redis-expires": 60},
        {"RTPENGINE_REDIS_AUTH_PW": "pw"},
    )
    assert settings is not None
    assert settings.own == settings.write == RedisTarget("10.0.0.5", 6379, 1, "pw")
    assert settings.peers == (2, 3) and settings.expires == 60
    assert settings.peer(2) == RedisTarget("10.0.0.5", 6379, 2, "pw")
    split = redis_settings({"redis": "h:1/1", "redis-write": "w:2/4"}, {})
    assert split is not None and split.write == RedisTarget("w", 2, 4)
    with pytest.raises(ValueError, match="own database"):
        redis_settings({"redis": "h:1/1", "subscribe-keyspace": "1"}, {})
    with pytest.raises(ValueError, match="needs 'redis'"):
        redis_settings({"subscribe-keyspace": "2"}, {})


def test_a_bad_redis_key_stops_start_up_and_shards_do_not_combine() -> None:
    base = ["--config-file", "none"]
    assert load([*base, "--redis", "127.0.0.1:6379/1", "-k", "2"]).values["redis"]
    with pytest.raises(ConfigError, match="redis"):
        load([*base, "--redis", "127.0.0.1:6379"])
    with pytest.raises(ConfigError, match="shards"):
        load([*base, "--redis", "127.0.0.1:6379/1", "--shards", "2", "--port-max", "30100"])


# -- a fake Redis -------------------------------------------------------------------------------


@dataclass
class Server:
    """The databases of one fake server; ``down`` makes every command fail."""

    dbs: dict[int, dict[str, Any]] = field(default_factory=dict)
    down: bool = False
    run_id: str = "one"
    commands: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def db(self, n: int) -> dict[str, Any]:
        return self.dbs.setdefault(n, {})


class Pipeline:
    def __init__(self, conn: Client) -> None:
        self.conn = conn
        self.ops: list[tuple[str, tuple[Any, ...]]] = []

    def set(self, key: str, value: bytes, ex: int) -> None:
        self.ops.append(("set", (key, value, ex)))

    def sadd(self, key: str, member: str) -> None:
        self.ops.append(("sadd", (key, member)))

    def delete(self, key: str) -> None:
        self.ops.append(("delete", (key,)))

    def srem(self, key: str, member: str) -> None:
        self.ops.append(("srem", (key, member)))

    def execute(self) -> None:
        server = self.conn.server
        with server.lock:
            server.commands += 1
            if server.down:
                raise redis.ConnectionError("Connection refused")
            data = server.db(self.conn.n)
            for op, args in self.ops:
                if op == "set":
                    data[args[0]] = (args[1], args[2])
                elif op == "sadd":
                    data.setdefault(args[0], set()).add(args[1])
                elif op == "delete":
                    data.pop(args[0], None)
                else:
                    data.get(args[0], set()).discard(args[1])


class Client:
    def __init__(self, server: Server, target: RedisTarget) -> None:
        self.server, self.n = server, target.db

    def _check(self) -> None:
        if self.server.down:
            raise redis.ConnectionError("Connection refused")

    def pipeline(self, transaction: bool) -> Pipeline:
        return Pipeline(self)

    def info(self, section: str) -> dict[str, str]:
        self._check()
        return {"run_id": self.server.run_id}

    def smembers(self, key: str) -> set[bytes]:
        self._check()
        return {m.encode() for m in self.server.db(self.n).get(key, set())}

    def mget(self, keys: list[str]) -> list[bytes | None]:
        self._check()
        data = self.server.db(self.n)
        return [data[k][0] if k in data else None for k in keys]

    def close(self) -> None:
        pass


def _value(server: Server, db: int, call_id: str) -> dict[str, Any] | None:
    entry = server.db(db).get(call_key(call_id))
    return json.loads(entry[0]) if entry else None


# -- the writer ---------------------------------------------------------------------------------


def _writer(server: Server) -> RedisWriter:
    writer = RedisWriter(
        RedisTarget("h", 1, 1),
        60,
        connect=lambda target: Client(server, target),  # type: ignore[arg-type,return-value]
    )
    writer.start()
    return writer


def test_writes_coalesce_and_deletes_take_the_index_entry() -> None:
    server = Server()
    writer = _writer(server)
    try:
        for n in range(5):
            writer.put("c1", f'{{"n": {n}}}'.encode())
        writer.put("c2", b"{}")
        assert writer.idle(5.0)
        assert server.db(1)[call_key("c1")] == (b'{"n": 4}', 60)  # the newest, with its expiry
        assert server.db(1)[INDEX_KEY] == {"c1", "c2"}
        assert writer.stats.writes <= 6 and writer.stats.connected
        writer.put("c1", None)
        writer.put("c3", b"{}", db=2)  # another database (a peer's)
        assert writer.idle(5.0)
        assert call_key("c1") not in server.db(1) and server.db(1)[INDEX_KEY] == {"c2"}
        assert server.db(2)[INDEX_KEY] == {"c3"}
    finally:
        writer.close()


def test_an_outage_costs_nothing_but_retries_and_redis_back_is_said_once() -> None:
    server = Server(down=True)
    writer = _writer(server)
    try:
        writer.put("c1", b"1")
        writer.put("c2", b"2")
        assert not writer.idle(0.5)  # nothing written while Redis is away
        assert writer.stats.errors >= 1 and not writer.stats.connected
        writer.put("c1", b"newer")  # queued meanwhile: the newer value wins
        server.down = False
        assert writer.idle(5.0)
        assert server.db(1)[call_key("c1")][0] == b"newer"
        assert server.db(1)[call_key("c2")][0] == b"2"
        assert writer.take_recovered() and not writer.take_recovered()
    finally:
        writer.close()


def test_a_restarted_server_found_idle_counts_as_recovered() -> None:
    server = Server()
    writer = _writer(server)
    try:
        writer.put("c1", b"1")
        assert writer.idle(5.0)
        writer._probe()
        assert not writer.take_recovered()
        server.run_id = "two"
        deadline = threading.Event()
        for _ in range(40):  # the thread's own probe (PROBE_INTERVAL) finds it
            if writer.take_recovered():
                break
            deadline.wait(0.1)
        else:
            pytest.fail("a new run_id was not taken as a recovery")
    finally:
        writer.close()


# -- the replica --------------------------------------------------------------------------------


@dataclass
class Host:
    """The supervisor as the replica sees it, with the ports it holds."""

    calls: dict[str, Call] = field(default_factory=dict)
    claimed: dict[str, frozenset[tuple[str, int]]] = field(default_factory=dict)
    refuse: set[str] = field(default_factory=set)
    owned: list[str] = field(default_factory=list)
    disowned: list[str] = field(default_factory=list)

    def claim(self, call: Call) -> bool:
        if call.call_id in self.refuse:
            return False
        ports = frozenset((m.local.local, m.port) for m in call.all_medias() if m.local)
        self.claimed[call.call_id] = ports
        return True

    def release(self, call: Call) -> None:
        del self.claimed[call.call_id]

    def own(self, call: Call) -> None:
        self.calls[call.call_id] = call
        self.owned.append(call.call_id)

    def disown(self, call: Call) -> None:
        del self.calls[call.call_id]
        self.disowned.append(call.call_id)


def _call(call_id: str = "c1") -> Call:
    cmds, _ = build()
    assert cmds.handle(req("offer", call_id, from_tag="a", sdp=sdp()), 0.0)["result"] == "ok"
    answer = req("answer", call_id, from_tag="a", to_tag="b", sdp=sdp(B_ADDR))
    assert cmds.handle(answer, 0.0)["result"] == "ok"
    return cmds.calls[call_id]


def _replica(
    server: Server,
    host: Host,
    local: set[str] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[RedisReplica, set[str]]:
    addresses = set() if local is None else local
    settings = redis_settings({"redis": "h:1/1", "subscribe-keyspace": "2"}, {})
    assert settings is not None
    replica = RedisReplica(
        settings,
        host,
        owner="10.0.0.1:2223",
        addresses=[LOCAL4],
        connect=lambda target: Client(server, target),  # type: ignore[arg-type,return-value]
        local=lambda: set(addresses),
        clock=clock,
    )
    replica.writer.start()
    return replica, addresses


def test_a_call_round_trips_through_its_redis_value() -> None:
    call = _call()
    back = decode(json.loads(encode(call, "me")))
    assert back == call
    with pytest.raises(ValueError):
        decode({"format": 99, "call": {}})


def test_own_calls_are_written_after_signalling_and_deleted_at_their_end() -> None:
    server, host = Server(), Host()
    replica, _ = _replica(server, host)
    try:
        call = _call()
        host.calls["c1"] = call
        replica.save(call)
        replica.save(_call("not-ours"))  # not in the registry: not written
        replica.flush()
        assert replica.writer.idle(5.0)
        value = _value(server, 1, "c1")
        assert value is not None and value["owner"] == "10.0.0.1:2223"
        assert decode(value) == call
        assert _value(server, 1, "not-ours") is None
        replica.forget("c1")
        replica.flush()
        assert replica.writer.idle(5.0)
        assert _value(server, 1, "c1") is None
    finally:
        replica.writer.close()


def test_every_call_is_written_again_once_redis_is_back() -> None:
    server, host = Server(), Host()
    replica, _ = _replica(server, host)
    try:
        host.calls = {c: _call(c) for c in ("c1", "c2")}
        for call in host.calls.values():
            replica.save(call)
        replica.flush()
        assert replica.writer.idle(5.0)
        for _ in range(40):  # the thread's first look at the server
            if replica.writer._run_id:
                break
            threading.Event().wait(0.05)
        server.dbs.clear()  # Redis restarted empty
        server.run_id = "two"
        for _ in range(40):
            replica.flush()  # every tick
            if _value(server, 1, "c1") and _value(server, 1, "c2"):
                break
            threading.Event().wait(0.1)
        assert server.db(1)[INDEX_KEY] == {"c1", "c2"}
    finally:
        replica.writer.close()


def test_restore_reads_this_instances_database() -> None:
    server, host = Server(), Host()
    call = _call()
    server.db(1)[call_key("c1")] = (encode(call, "me"), 60)
    server.db(1)[INDEX_KEY] = {"c1", "expired"}
    replica, _ = _replica(server, host)
    try:
        assert replica.restore() == [call]
        server.down = True
        assert replica.restore() is None  # the journal then
    finally:
        server.down = False
        replica.writer.close()


def test_foreign_calls_are_held_answered_and_dropped() -> None:
    server, host = Server(), Host()
    replica, _ = _replica(server, host)
    try:
        call = _call()
        value = json.loads(encode(call, "peer"))
        replica.apply(PeerEvent(2, {"c1": value, "c2": value | {"format": 0}}, snapshot=True))
        assert set(replica.foreign) == {"c1"} and replica.stats.unreadable == 1
        assert "c1" in host.claimed and host.calls == {}
        reply = replica.intercept(parse_request({"command": "query", "call-id": "c1"}))
        assert reply is not None and reply["result"] == "ok" and set(reply["tags"]) == {"a", "b"}
        assert replica.intercept(parse_request({"command": "query", "call-id": "x"})) is None
        listing = parse_request({"command": "list"})
        assert replica.listed(listing, {"calls": ["own"]}) == {"calls": ["own", "c1"]}
        full = parse_request({"command": "list", "limit": 1})
        assert replica.listed(full, {"calls": ["own"]}) == {"calls": ["own"]}
        replica.apply(PeerEvent(2, {"c1": None}))  # the peer deleted it
        assert replica.foreign == {} and host.claimed == {}
        host.refuse.add("c1")  # its ports are taken here
        replica.apply(PeerEvent(2, {"c1": value}))
        assert replica.foreign == {} and replica.stats.unclaimed == 1
    finally:
        replica.writer.close()


def test_a_foreign_call_whose_ports_are_taken_is_tried_again_every_second() -> None:
    server, host = Server(), Host()
    now = [100.0]
    replica, local = _replica(server, host, clock=lambda: now[0])
    try:
        value = json.loads(encode(_call(), "peer"))
        host.refuse.add("c1")  # a socket of this host has one of its ports as source port
        replica.apply(PeerEvent(2, {"c1": value}))
        assert replica.foreign == {} and set(replica.unclaimed_calls) == {"c1"}
        replica.flush()  # tried again at once: still taken
        replica.apply(PeerEvent(2, {"c1": value}))  # the peer wrote it again
        status = replica.status()
        assert status["unclaimed"] == 1 and status["unclaimed_calls"] == 1  # counted once
        host.refuse.clear()  # that socket is gone
        now[0] += 0.5
        replica.flush()
        assert replica.foreign == {}  # not before a second has passed
        now[0] += 0.5
        replica.flush()
        assert set(replica.foreign) == {"c1"} and replica.unclaimed_calls == {}
        assert "c1" in host.claimed and replica.status()["unclaimed_calls"] == 0
        # unclaimed when the address arrives: taken over as soon as its ports bind
        replica.apply(PeerEvent(2, {"c1": None}))
        host.refuse.add("c2")
        replica.apply(PeerEvent(2, {"c2": json.loads(encode(_call("c2"), "peer"))}))
        local.add(LOCAL4)
        replica.flush()
        assert host.owned == [] and set(replica.unclaimed_calls) == {"c2"}
        host.refuse.clear()
        now[0] += 1.0
        replica.flush()
        assert host.owned == ["c2"] and replica.unclaimed_calls == {} and replica.foreign == {}
        # the peer's snapshot or delete forgets an unclaimed call
        host.refuse.update({"c3", "c4"})
        for call_id in ("c3", "c4"):
            replica.apply(PeerEvent(2, {call_id: json.loads(encode(_call(call_id), "peer"))}))
        replica.apply(PeerEvent(2, {"c4": None}))
        assert set(replica.unclaimed_calls) == {"c3"}
        replica.apply(PeerEvent(2, {}, snapshot=True))
        assert replica.unclaimed_calls == {}
        # an offer for an unclaimed call makes it ours here: the peer's copy is not held
        host.refuse.add("c5")
        replica.apply(PeerEvent(2, {"c5": json.loads(encode(_call("c5"), "peer"))}))
        host.calls["c5"] = _call("c5")
        host.refuse.clear()
        now[0] += 1.0
        replica.flush()
        assert replica.unclaimed_calls == {} and replica.foreign == {} and "c5" not in host.claimed
    finally:
        replica.writer.close()


def test_a_snapshot_drops_what_ended_while_the_watcher_was_away() -> None:
    server, host = Server(), Host()
    replica, _ = _replica(server, host)
    try:
        value = json.loads(encode(_call(), "peer"))
        replica.apply(PeerEvent(2, {"c1": value}))
        replica.apply(PeerEvent(2, {}, snapshot=True))
        assert replica.foreign == {} and host.claimed == {}
    finally:
        replica.writer.close()


def test_takeover_makes_calls_own_and_moves_them_between_databases() -> None:
    server, host = Server(), Host()
    replica, _ = _replica(server, host)
    try:
        call = _call()
        server.db(2)[call_key("c1")] = (encode(call, "peer"), 60)
        server.db(2)[INDEX_KEY] = {"c1"}
        replica.apply(PeerEvent(2, {"c1": json.loads(encode(call, "peer"))}))
        assert replica.activate() == 1
        assert host.owned == ["c1"] and replica.foreign == {} and replica.stats.takeovers == 1
        assert replica.writer.idle(5.0)
        assert _value(server, 1, "c1") is not None  # ours now
        assert _value(server, 2, "c1") is None and server.db(2)[INDEX_KEY] == set()
        # the peer's delete of it, heard back, is no news for an own call
        replica.apply(PeerEvent(2, {"c1": None}))
        assert "c1" in host.calls
    finally:
        replica.writer.close()


def test_another_request_for_a_foreign_call_takes_it_over_first() -> None:
    server, host = Server(), Host()
    replica, _ = _replica(server, host)
    try:
        replica.apply(PeerEvent(2, {"c1": json.loads(encode(_call(), "peer"))}))
        offer = parse_request({"command": "offer", "call-id": "c1", "from-tag": "a"})
        assert replica.intercept(offer) is None  # handled as usual, by its owner now
        assert host.owned == ["c1"]
    finally:
        replica.writer.close()


def test_the_advertised_address_arriving_takes_its_calls_over_unless_standby() -> None:
    server, host = Server(), Host()
    replica, local = _replica(server, host)
    try:
        value = json.loads(encode(_call(), "peer"))
        replica.apply(PeerEvent(2, {"c1": value}))
        replica.standby = True
        local.add(LOCAL4)
        replica.flush()
        assert host.owned == [] and "c1" in replica.foreign  # standby: the operator decides
        local.discard(LOCAL4)
        replica.flush()
        replica.standby = False
        local.add(LOCAL4)  # keepalived moved the address here
        replica.flush()
        assert host.owned == ["c1"]
        # with the address already here, a call the peer writes is taken at once
        replica.apply(PeerEvent(2, {"c2": json.loads(encode(_call("c2"), "peer"))}))
        assert host.owned == ["c1", "c2"]
    finally:
        replica.writer.close()


def test_standby_leaves_own_calls_to_the_peer_with_their_state_kept() -> None:
    server, host = Server(), Host()
    replica, _ = _replica(server, host)
    try:
        host.calls["c1"] = _call()
        replica.save(host.calls["c1"])
        replica.flush()
        assert replica.writer.idle(5.0)
        assert replica.go_standby() == 1
        replica.flush()
        assert replica.writer.idle(5.0)
        assert host.disowned == ["c1"] and replica.standby
        assert _value(server, 1, "c1") is not None  # for the peer to take over
        assert replica.status()["mode"] == "standby"
    finally:
        replica.writer.close()
