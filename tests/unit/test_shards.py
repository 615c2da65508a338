"""Sharding's parts that need no processes: which shard answers a message
(relayd/shards/route.py) and what a shard does with a datagram it receives
(relayd/shards/shard.py, on the sockets of relayd/shards/mesh.py), the shards' slices of
the port range, and one answer from every shard's (relayd/shards/merge.py). The
processes themselves are tested in tests/netns/test_shards.py."""

from __future__ import annotations

import pickle
import random
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from relayd.config import ConfigError, load
from relayd.ng import bencode
from relayd.ng.message import normalise
from relayd.shards import link, mesh
from relayd.shards.merge import merge_admin, merge_list, merge_metrics, merge_statistics
from relayd.shards.processes import shard_cpus
from relayd.shards.route import (
    FRONT,
    Route,
    destination,
    owner,
    port_slice,
    route_of,
    route_of_request,
)
from relayd.shards.shard import ShardEnd


def body(**keys: Any) -> bytes:
    return bencode.encode(keys)


def test_route_reads_command_and_call_id_in_any_order_and_spelling() -> None:
    sdp = "v=0\r\n7:call-id3:bad\r\n"  # a value that looks like the key: not taken for it
    message = bencode.encode(
        {"sdp": sdp, "flags": ["trust-address"], "call-id": "abc@x", "command": "offer"}
    )
    assert route_of(message) == Route("offer", b"abc@x")
    assert route_of(body(Call_ID="k1", command="Delete")) == Route("delete", b"k1")
    assert route_of(b'{"command": "query", "call_id": "j1"}') == Route("query", b"j1")
    assert route_of(body(command="list")) == Route("list", b"")


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"garbage",
        b"d3:abc",
        b"{not json",
        b"li1ee",
        b"[1]",
        b"d7:call-id-3:abce",  # a negative length must not walk backwards
        b"d7:call-id3:abc7:command",  # truncated
        b"di1e3:abce",  # a key that is not a string
        b"d7:commandl5:offer",
        b"d7:command99999999999:x",
    ],
)
def test_route_of_malformed_input_is_empty_and_never_raises(raw: bytes) -> None:
    assert route_of(raw) == Route("", b"")


def _value(rng: random.Random, depth: int) -> Any:
    kind = rng.choice("ssiild" if depth < 3 else "ssi")
    if kind == "s":
        return rng.choice(
            ["", "offer", "call-id", "7:call-id3:bad", "e", "l", "d", "i1e", "x" * 40]
        )
    if kind == "i":
        return rng.randint(-5, 500)
    if kind == "l":
        return [_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {rng.choice(["call-id", "command", "sdp", "x"]): _value(rng, depth + 1)}


def test_route_of_agrees_with_the_parser_on_well_formed_messages() -> None:
    rng = random.Random(13)
    for _ in range(500):
        message = {
            rng.choice(["sdp", "flags", "Call-ID", "call_id", "COMMAND", "replace", "command"]): (
                _value(rng, 0)
            )
            for _ in range(rng.randint(0, 6))
        }
        keys = {normalise(k): v for k, v in message.items()}  # as parse_request reads them
        command, call_id = keys.get("command"), keys.get("call-id")
        expected = Route(
            normalise(command) if isinstance(command, str) and command else "",
            call_id.encode() if isinstance(call_id, str) else b"",
        )
        assert route_of(bencode.encode(message)) == expected, message
        # a shard routes the dictionary it decoded: the same route
        decoded = bencode.decode(bencode.encode(message))
        assert isinstance(decoded, dict)
        assert route_of_request(decoded) == expected, message


def _owned_by(shard: int, shards: int = 2) -> str:
    return next(f"c{n}" for n in range(100) if owner(f"c{n}".encode(), shards) == shard)


def test_destination_of_a_datagram_received_by_a_shard() -> None:
    mine, theirs = _owned_by(0), _owned_by(1)

    def datagram(**keys: Any) -> bytes:
        return b"cookie1 " + bencode.encode(keys)

    assert destination(datagram(command="offer", **{"call-id": mine}), 0, 2) == 0
    assert destination(datagram(command="delete", **{"call-id": theirs}), 0, 2) == 1
    assert destination(datagram(command="query", **{"call-id": mine}), 1, 2) == 0
    # every call: the front asks every shard; one call's list goes to its owner
    assert destination(datagram(command="list"), 1, 2) == FRONT
    assert destination(datagram(command="Statistics"), 0, 2) == FRONT
    assert destination(datagram(command="list", **{"call-id": theirs}), 0, 2) == 1
    # no call-id, or nothing readable: answered where it came in, as a single relayd would
    assert destination(datagram(command="ping"), 1, 2) == 1
    assert destination(datagram(command="no such command"), 0, 2) == 0
    assert destination(b"cookie1 garbage", 1, 2) == 1
    assert destination(b"no-cookie", 1, 2) == 1
    assert (
        destination(b'cookie1 {"command": "answer", "call-id": "%s"}' % theirs.encode(), 0, 2) == 1
    )
    assert destination(datagram(command="offer", **{"call-id": theirs}), 0, 1) == 0


class _Service:
    """What a shard's NgService does, as far as routing sees it: a reply for a request."""

    def __init__(self) -> None:
        self.handled: list[tuple[bytes, tuple[Any, ...]]] = []

    def handle(self, data: bytes, source: tuple[Any, ...], local: tuple[Any, ...]) -> bytes:
        self.handled.append((data, source))
        return data.split(b" ", 1)[0] + b" d6:result4:ponge"

    def handle_decoded(
        self,
        cookie: str,
        raw: dict[str, Any],
        as_json: bool,
        data: bytes,
        source: tuple[Any, ...],
        local: tuple[Any, ...],
    ) -> bytes:
        assert (cookie, raw, as_json) == (data.split(b" ", 1)[0].decode(), _body(data), False)
        return self.handle(data, source, local)


def _body(data: bytes) -> Any:
    return bencode.decode(data.split(b" ", 1)[1])


@pytest.fixture
def udp_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A shard's ng socket and a client's."""
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    client.bind(("127.0.0.1", 0))
    client.settimeout(2)
    yield server, client
    server.close()
    client.close()


def test_a_shard_answers_its_calls_passes_the_others_on_and_asks_the_front_for_lists(
    udp_pair: tuple[socket.socket, socket.socket],
) -> None:
    server, client = udp_pair
    sockets = mesh.Mesh(2)
    front, link_end = link.pair()
    shard, service = ShardEnd(0, 2, link_end, sockets.inbound[0], sockets.outbound), _Service()
    shard._service, shard.udp = service, server  # type: ignore[assignment]
    source = client.getsockname()
    mine = b"c1 " + bencode.encode({"command": "query", "call-id": _owned_by(0)})
    theirs = b"c2 " + bencode.encode({"command": "query", "call-id": _owned_by(1)})
    listing = b"c3 " + bencode.encode({"command": "list"})
    ping = b"c4 " + bencode.encode({"command": "ping"})
    try:
        shard._route(mine, source)
        shard._route(ping, source)
        assert service.handled == [(mine, source), (ping, source)]
        assert client.recv(100).startswith(b"c1 ") and client.recv(100).startswith(b"c4 ")
        shard._route(theirs, source)  # straight to its owner's socket, with the client
        # with what the shard read of it: the owner does not decode it again
        passed = (source, theirs, "c2", _body(theirs), False)
        assert mesh.receive(sockets.inbound[1], 10) == [passed]
        shard._route(listing, source)  # the front asks every shard
        assert link.receive(front) == [("fanout", 0, (source, listing))]
        assert len(service.handled) == 2
        # the owner's side: a passed-on datagram is handled and answered from its socket
        owner_end, owner_service = ShardEnd(1, 2, link_end, sockets.inbound[1]), _Service()
        owner_end._service = owner_service  # type: ignore[assignment]
        assert mesh.forward(sockets.outbound[1], passed)
        owner_end._inbound_readable()  # not on the ng address yet: dropped, not handled
        assert owner_service.handled == []
        owner_end.udp = server
        assert mesh.forward(sockets.outbound[1], passed)
        owner_end._inbound_readable()
        assert owner_service.handled == [(theirs, source)]
        assert client.recv(100).startswith(b"c2 ")
    finally:
        sockets.close()
        front.close()
        link_end.close()


def test_a_shard_down_refuses_once_its_socket_is_full_and_drops_the_backlog_on_start() -> None:
    sockets = mesh.Mesh(2)
    try:
        sent = 0
        while mesh.forward(sockets.outbound[1], (("192.0.2.1", 5060), b"c1 d7:command4:pinge")):
            sent += 1
            assert sent < 1_000_000
        assert sent > 100  # hundreds wait: a short stall loses nothing
        assert mesh.discard(sockets.inbound[1]) == sent
        assert mesh.receive(sockets.inbound[1], 10) == []
        assert mesh.forward(sockets.outbound[1], (("192.0.2.1", 5060), b"again"))
        assert pickle.loads(sockets.inbound[1].recv(1000)) == (("192.0.2.1", 5060), b"again")
    finally:
        sockets.close()


def test_owner_is_stable_and_spreads_calls() -> None:
    owners = [owner(f"call-{n}".encode(), 4) for n in range(400)]
    assert owners == [owner(f"call-{n}".encode(), 4) for n in range(400)]  # deterministic
    assert owner(b"call-1", 4) == 3661210240 % 4  # CRC-32: the same in every process
    assert all(owners.count(i) > 60 for i in range(4))
    assert owner(b"anything", 1) == 0


def test_port_slices_are_disjoint_even_aligned_and_cover_the_range() -> None:
    slices = [port_slice(30000, 40000, i, 3) for i in range(3)]
    assert slices == [(30000, 33331), (33332, 36663), (36664, 40000)]
    assert all(first % 2 == 0 for first, _ in slices)
    assert port_slice(30000, 40000, 0, 1) == (30000, 40000)
    with pytest.raises(ValueError):
        port_slice(30000, 30002, 1, 4)


def test_shard_cpus_share_none_while_there_are_enough() -> None:
    assert [shard_cpus([0, 1, 2, 3], i, 2) for i in range(2)] == [[0, 2], [1, 3]]
    assert shard_cpus([0, 1], 1, 4) == [0, 1]


def test_list_merges_and_keeps_its_limit() -> None:
    replies = [{"result": "ok", "calls": ["a", "b"]}, {"result": "ok", "calls": ["c"]}]
    assert merge_list(replies, 32) == {"result": "ok", "calls": ["a", "b", "c"]}
    assert merge_list(replies, 2)["calls"] == ["a", "b"]
    failed = {"result": "error", "error-reason": "x"}
    assert merge_list([replies[0], failed]) == failed


def _stats(
    sessions: int, finished: int, duration: float, used: int, port_min: int, port_max: int
) -> dict[str, Any]:
    capacity = port_max - port_min + 1
    return {
        "statistics": {
            "currentstatistics": {"sessionsown": sessions, "sessionstotal": sessions},
            "totalstatistics": {
                "uptime": str(10 + sessions),
                "managedsessions": sessions + finished,
                "regularterminatedsessions": finished,
                "timeoutsessions": 0,
                "relayedpackets": 100 * sessions,
                "avgcallduration": f"{duration / max(finished, 1):.6f}",
                "totalcallsduration": f"{duration:.6f}",
            },
            "controlstatistics": {"totaloffercount": sessions, "totalstatscount": 3},
            "interfaces": [
                {
                    "address": "203.0.113.1",
                    "ports": {
                        "min": port_min,
                        "max": port_max,
                        "used": used,
                        "used_pct": f"{100 * used / capacity:.2f}",
                        "free": capacity - used,
                        "totals": capacity,
                    },
                }
            ],
        },
        "result": "ok",
    }


def test_statistics_add_up_and_averages_are_recomputed() -> None:
    merged = merge_statistics(
        [_stats(3, 1, 10.0, 12, 30000, 34999), _stats(1, 3, 50.0, 4, 35000, 40000)]
    )
    tree = merged["statistics"]
    assert merged["result"] == "ok"
    assert tree["currentstatistics"] == {"sessionsown": 4, "sessionstotal": 4}
    total = tree["totalstatistics"]
    assert total["managedsessions"] == 8
    assert total["relayedpackets"] == 400
    assert total["uptime"] == "13"  # the oldest shard's
    assert total["totalcallsduration"] == "60.000000"
    assert total["avgcallduration"] == "15.000000"  # 60 s over 4 finished calls
    assert tree["controlstatistics"] == {"totaloffercount": 4, "totalstatscount": 3}
    ports = tree["interfaces"][0]["ports"]
    assert ports == {
        "min": 30000,
        "max": 40000,
        "used": 16,
        "used_pct": "0.16",
        "free": 10001 - 16,
        "totals": 10001,
    }


def test_admin_replies_merge_per_command() -> None:
    assert merge_admin(
        "list", ["numsessions"], [{"own": 2, "foreign": 0, "total": 2}, {"own": 1, "total": 1}]
    ) == {"result": "ok", "own": 3, "foreign": 0, "total": 3}
    sessions = merge_admin(
        "list", ["sessions"], [{"sessions": [{"call_id": "a"}]}, {"sessions": [{"call_id": "b"}]}]
    )
    assert [s["call_id"] for s in sessions["sessions"]] == ["a", "b"]
    workers = merge_admin("workers", [], [{"workers": [{"index": 0}]}, {"workers": [{"index": 0}]}])
    assert workers["workers"] == [{"index": 0, "shard": 0}, {"index": 0, "shard": 1}]
    kernel = merge_admin(
        "kernel",
        [],
        [
            {"enabled": True, "reason": "", "kernel_streams": 2, "forwards": [1, 2]},
            {"enabled": False, "reason": "nft failed", "kernel_streams": 0, "forwards": []},
        ],
    )
    assert (kernel["enabled"], kernel["reason"], kernel["kernel_streams"]) == (
        False,
        "nft failed",
        2,
    )
    assert kernel["forwards"] == [1, 2]
    assert merge_admin("terminate", ["all"], [{"terminated": ["a"]}, {"terminated": []}]) == {
        "result": "ok",
        "terminated": ["a"],
    }
    error = {"result": "error", "error": "call-id 'x' not found"}
    assert merge_admin("list", ["sessions"], [{"sessions": []}, error]) == error


def test_metrics_get_a_shard_label_and_one_head_per_family() -> None:
    shard = (
        '# HELP relayd_calls Calls\n# TYPE relayd_calls gauge\nrelayd_calls{{state="a b"}} {n}\n'
        "# HELP relayd_up Up\n# TYPE relayd_up gauge\nrelayd_up {n}\n"
    )
    text = merge_metrics([shard.format(n=3), shard.format(n=5)])
    assert text.splitlines() == [
        "# HELP relayd_calls Calls",
        "# TYPE relayd_calls gauge",
        'relayd_calls{shard="0",state="a b"} 3',
        'relayd_calls{shard="1",state="a b"} 5',
        "# HELP relayd_up Up",
        "# TYPE relayd_up gauge",
        'relayd_up{shard="0"} 3',
        'relayd_up{shard="1"} 5',
    ]


def test_shards_in_the_configuration(tmp_path: Path) -> None:
    assert load(["--config-file", "none"]).shards == 1
    assert load(["--config-file", "none", "--shards", "2"]).shards == 2
    conf = tmp_path / "rtpengine.conf"
    conf.write_text("[rtpengine]\nshards = 3\n")
    assert load(["--config-file", str(conf)]).shards == 3
    with pytest.raises(ConfigError, match="shards"):
        load(["--config-file", "none", "--shards", "0"])
    with pytest.raises(ConfigError, match="ports"):
        load(
            ["--config-file", "none", "--shards", "4", "--port-min", "30000", "--port-max", "30010"]
        )
    with pytest.raises(ConfigError, match="worker-socket"):
        load(["--config-file", "none", "--shards", "2", "--worker-socket", str(tmp_path / "w")])


def test_max_sessions_is_the_hosts_each_shard_takes_its_share() -> None:
    from relayd.supervisor import limits_of

    config = load(["--config-file", "none", "--max-sessions", "1001", "--shards", "4"])
    assert limits_of(config, 4).max_sessions == 251
    assert limits_of(config, 1).max_sessions == 1001
    drained = load(["--config-file", "none", "--max-sessions", "0"])
    assert limits_of(drained, 4).max_sessions == 0
    unlimited = load(["--config-file", "none"])
    assert limits_of(unlimited, 4).max_sessions == -1
