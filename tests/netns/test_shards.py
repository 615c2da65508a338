"""relayd with ``shards = 2``: the calls split over two supervisor processes, each on the
ng UDP address (``SO_REUSEPORT``; the front is not), with a front for TCP, relayctl and
/metrics (relayd/shards/). Every command of a call reaches the shard that owns it, whichever
client socket sends it and whichever shard receives it; ``list``, ``statistics``,
``relayctl`` and ``/metrics`` see every call; ``ping`` is answered by every shard; a shard
killed with SIGKILL leaves the group (the other answers its clients meanwhile), is started
again and takes its calls back."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from relayd.ng.client import NgClient
from relayd.shards.route import port_slice
from tests.netns.conftest import NG_PORT, PORT_MAX, PORT_MIN, StartRelay, relay_starter
from tests.support.netns import Topology, inside
from tests.support.relayd import RelaydProcess

pytestmark = pytest.mark.netns

SHARDS = 2
HTTP_PORT = 9464
SDP = (
    "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n"
    "m=audio {port} RTP/AVP 0 8\r\na=sendrecv\r\n"
)


def owner(call_id: str) -> int:
    return zlib.crc32(call_id.encode()) % SHARDS


def media_port(reply: dict[str, Any]) -> int:
    line = next(x for x in reply["sdp"].splitlines() if x.startswith("m=audio "))
    return int(line.split()[1])


def ok(reply: dict[str, Any]) -> dict[str, Any]:
    assert reply.get("result") == "ok", reply
    return reply


def set_up(
    offerer: Any, answerer: Any, call_id: str, n: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Offer from ``offerer`` and answer from ``answerer`` (ng clients: the same socket or
    two), the n-th call's ports; both replies, checked ``ok``."""
    offer = ok(
        offerer.call(
            "offer",
            **{"call-id": call_id, "from-tag": "a"},
            sdp=SDP.format(ip="192.0.2.10", port=4000 + 2 * n),
        )
    )
    answer = ok(
        answerer.call(
            "answer",
            **{"call-id": call_id, "from-tag": "a", "to-tag": "b"},
            sdp=SDP.format(ip="192.0.2.20", port=6000 + 2 * n),
        )
    )
    return offer, answer


def local_ports(ng: Any, call_id: str) -> list[int]:
    """Every stream's local port, as ``query`` lists them."""
    reply = ok(ng.call("query", **{"call-id": call_id}))
    return sorted(
        stream["local port"]
        for tag in reply["tags"].values()
        for media in tag["medias"]
        for stream in media["streams"]
    )


@pytest.fixture
def start_wide(
    topo: Topology, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[StartRelay]:
    """relayd with 400 media ports: 50 calls a shard."""
    with relay_starter(topo, tmp_path, request, port_max=PORT_MIN + 399) as start:
        yield start


def start_sharded(start_relay: StartRelay) -> RelaydProcess:
    return start_relay("--shards", str(SHARDS), "--listen-http", f"127.0.0.1:{HTTP_PORT}")


def shard_processes(relay: RelaydProcess) -> dict[int, psutil.Process]:
    """The shard processes under relayd's front, by index."""
    front = psutil.Process(int((relay.workdir / "relayd.pid").read_text()))
    found = {}
    for child in front.children():
        cmdline = child.cmdline()
        if "relayd.shards.shard" in cmdline:
            found[int(cmdline[cmdline.index("--index") + 1])] = child
    return found


def udp_ng_sockets(process: psutil.Process) -> int:
    """How many UDP sockets a process has on the ng port (its namespace's table, read
    through its own /proc entry, against its descriptors)."""
    table = Path(f"/proc/{process.pid}/net/udp").read_text().splitlines()[1:]
    on_port = {f.split()[9] for f in table if int(f.split()[1].split(":")[1], 16) == NG_PORT}
    held = set()
    for fd in Path(f"/proc/{process.pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            link = os.readlink(fd)
            if link.startswith("socket:["):
                held.add(link[8:-1])
    return len(on_port & held)


def requests_by_shard(topo: Topology, command: str) -> dict[int, int]:
    """``/metrics``: how many ``command`` requests each shard answered."""
    with inside(topo.relay):
        text = urllib.request.urlopen(f"http://127.0.0.1:{HTTP_PORT}/metrics", timeout=5).read()
    counts: dict[int, int] = {}
    for line in text.decode().splitlines():
        if line.startswith("rtpengine_requests_total{") and f'request="{command}"' in line:
            shard = int(line.split('shard="', 1)[1].split('"', 1)[0])
            counts[shard] = counts.get(shard, 0) + int(float(line.rsplit(" ", 1)[1]))
    return counts


def admin(relay: RelaydProcess, topo: Topology, command: str, *args: str) -> dict[str, Any]:
    with inside(topo.relay), socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(str(relay.admin_socket))
        sock.sendall(json.dumps({"command": command, "args": list(args)}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            assert chunk, "admin socket closed"
            data += chunk
    reply: dict[str, Any] = json.loads(data)
    return reply


def test_every_command_of_a_call_reaches_its_owner_from_any_socket(
    topo: Topology, start_relay: StartRelay
) -> None:
    relay = start_sharded(start_relay)
    clients = [relay.client() for _ in range(4)]  # as Kamailio's children: a socket each
    try:
        call_ids = [f"shard-call-{n}@example.net" for n in range(10)]
        assert {owner(c) for c in call_ids} == {0, 1}, "both shards must own some"
        for n, call_id in enumerate(call_ids):
            offer = ok(
                clients[n % 4].call(
                    "offer",
                    **{"call-id": call_id, "from-tag": "a"},
                    sdp=SDP.format(ip="192.0.2.10", port=4000 + 2 * n),
                )
            )
            answer = ok(
                clients[(n + 1) % 4].call(
                    "answer",
                    **{"call-id": call_id, "from-tag": "a", "to-tag": "b"},
                    sdp=SDP.format(ip="192.0.2.20", port=6000 + 2 * n),
                )
            )
            # both ports from the owner's slice of the range: its state answered
            first, last = port_slice(PORT_MIN, PORT_MAX, owner(call_id), SHARDS)
            assert first <= media_port(offer) <= last
            assert first <= media_port(answer) <= last
            query = ok(clients[(n + 2) % 4].call("query", **{"call-id": call_id}))
            assert set(query["tags"]) == {"a", "b"}
        # a re-INVITE from yet another socket keeps the call's ports
        again = ok(
            clients[3].call(
                "offer",
                **{"call-id": call_ids[0], "from-tag": "a"},
                sdp=SDP.format(ip="192.0.2.10", port=4000),
            )
        )
        first, last = port_slice(PORT_MIN, PORT_MAX, owner(call_ids[0]), SHARDS)
        assert first <= media_port(again) <= last

        listed = ok(clients[0].call("list", limit=100))["calls"]
        assert sorted(listed) == sorted(call_ids)
        stats = ok(clients[1].call("statistics"))["statistics"]
        assert stats["currentstatistics"]["sessionstotal"] == len(call_ids)
        assert stats["controlstatistics"]["totaloffercount"] == len(call_ids) + 1
        assert stats["controlstatistics"]["totalstatscount"] == 1  # once, not once per shard
        ports = stats["interfaces"][0]["ports"]
        assert (ports["min"], ports["max"]) == (PORT_MIN, PORT_MAX)
        assert ports["used"] == 4 * len(call_ids)

        assert admin(relay, topo, "list", "numsessions")["total"] == len(call_ids)
        sessions = admin(relay, topo, "list", "sessions")["sessions"]
        assert sorted(s["call_id"] for s in sessions) == sorted(call_ids)
        detail = admin(relay, topo, "list", "callid", call_ids[3])
        assert detail["call_id"] == call_ids[3]
        with inside(topo.relay):
            page = urllib.request.urlopen(f"http://127.0.0.1:{HTTP_PORT}/metrics", timeout=5)
            text = page.read().decode()
        owned = {i: sum(1 for c in call_ids if owner(c) == i) for i in range(SHARDS)}
        for index, count in owned.items():
            assert f'rtpengine_sessions{{shard="{index}",type="own"}} {count}' in text
        assert text.count("# TYPE rtpengine_sessions gauge") == 1

        for n, call_id in enumerate(call_ids):
            ok(clients[(n + 3) % 4].call("delete", **{"call-id": call_id, "from-tag": "a"}))
        missing = clients[0].call("query", **{"call-id": "nobody"})
        assert missing["error-reason"] == "Unknown call-id"  # as a single relayd answers
    finally:
        for client in clients:
            client.close()


def test_a_killed_shard_comes_back_with_its_calls(topo: Topology, start_relay: StartRelay) -> None:
    relay = start_sharded(start_relay)
    with relay.client() as ng:
        call_ids = [f"restart-{n}" for n in range(8)]
        for n, call_id in enumerate(call_ids):
            _, answer = set_up(ng, ng, call_id, n)
            assert media_port(answer)
        victim = 1
        before_ports = {c: local_ports(ng, c) for c in call_ids}
        before = shard_processes(relay)
        assert set(before) == {0, 1}
        time.sleep(0.6)  # the journal is written in batches (every 250 ms)
        before[victim].kill()
        deadline = time.monotonic() + 10
        while True:
            now = shard_processes(relay)
            if victim in now and now[victim].pid != before[victim].pid:
                break
            assert time.monotonic() < deadline, "the shard was not started again"
            time.sleep(0.1)
        assert now[0].pid == before[0].pid  # the other shard never noticed
        deadline = time.monotonic() + 10
        while "state.restored" not in relay.log().split("shard.died", 1)[-1]:
            assert time.monotonic() < deadline, "the new shard did not restore its calls"
            time.sleep(0.1)
        while udp_ng_sockets(now[victim]) != 1:  # what reaches it before then is dropped
            assert time.monotonic() < deadline, "the new shard did not join the ng address"
            time.sleep(0.05)
        for call_id in call_ids:
            reply = ng.call("query", **{"call-id": call_id})
            assert reply["result"] == "ok", (call_id, owner(call_id), reply)
        listed = ok(ng.call("list", limit=100))["calls"]
        assert sorted(listed) == sorted(call_ids)
        # the restored calls kept their ports
        assert {c: local_ports(ng, c) for c in call_ids} == before_ports
    assert "shard.died" in relay.log()


def test_udp_ng_is_spread_over_the_shards_and_each_call_handled_by_its_owner(
    topo: Topology, start_wide: StartRelay
) -> None:
    relay = start_wide(
        "--shards",
        "2",
        "--listen-http",
        f"127.0.0.1:{HTTP_PORT}",
        "--delete-delay",
        "0",
        "--listen-tcp-ng",
        f"127.0.0.1:{NG_PORT + 1}",
    )
    front = psutil.Process(int((relay.workdir / "relayd.pid").read_text()))
    # every shard is in the ng address's group, the front is not (it would swallow a share)
    assert udp_ng_sockets(front) == 0
    assert {i: udp_ng_sockets(p) for i, p in shard_processes(relay).items()} == {0: 1, 1: 1}

    pairs = 8  # 16 client sockets, as Kamailio's children: each thread sends from two
    calls = 5  # per pair: 40 calls
    clients = [relay.client() for _ in range(2 * pairs)]
    failures: list[BaseException] = []

    def run(pair: int) -> None:
        first, second = clients[2 * pair], clients[2 * pair + 1]
        try:
            for n in range(calls):
                call_id = f"spread-{pair}-{n}@example.net"
                # offer from one socket, answer from the other: one of them likely reaches
                # the shard that does not own the call, which passes it on
                offer, answer = set_up(first, second, call_id, n)
                first_port, last_port = port_slice(PORT_MIN, PORT_MIN + 399, owner(call_id), 2)
                assert first_port <= media_port(offer) <= last_port
                assert first_port <= media_port(answer) <= last_port
                for client in (first, second):
                    query = ok(client.call("query", **{"call-id": call_id}))
                    assert set(query["tags"]) == {"a", "b"}
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    try:
        threads = [threading.Thread(target=run, args=(p,)) for p in range(pairs)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not failures, failures
        call_ids = [f"spread-{p}-{n}@example.net" for p in range(pairs) for n in range(calls)]
        assert {owner(c) for c in call_ids} == {0, 1}
        # each call exactly once, in its owner: every shard's list, merged, from any socket
        for client in clients[:3]:
            assert sorted(ok(client.call("list", limit=1000))["calls"]) == sorted(call_ids)
        stats = ok(clients[5].call("statistics"))["statistics"]
        assert stats["currentstatistics"]["sessionstotal"] == len(call_ids)
        assert stats["controlstatistics"]["totaloffercount"] == len(call_ids)
        assert stats["controlstatistics"]["totalanswercount"] == len(call_ids)
        assert stats["controlstatistics"]["totalstatscount"] == 1
        # TCP ng ends at the front, which asks the owner (or every shard)
        with inside(topo.relay):
            tcp = NgClient(("127.0.0.1", NG_PORT + 1), tcp=True)
        with tcp:
            for call_id in call_ids[:4]:
                assert set(ok(tcp.call("query", **{"call-id": call_id}))["tags"]) == {"a", "b"}
            assert sorted(ok(tcp.call("list", limit=1000))["calls"]) == sorted(call_ids)
            assert tcp.call("ping")["result"] == "pong"

        # ping: answered by whichever shard received it, and the kernel gave both some
        # of the 16 sockets (all on one: 1 in 2^15)
        for client in clients:
            assert client.call("ping")["result"] == "pong"
        pings = requests_by_shard(topo, "ping")
        assert set(pings) == {0, 1} and sum(pings.values()) >= len(clients), pings

        for n, call_id in enumerate(call_ids):
            deleted = ok(clients[-1 - n % len(clients)].call("delete", **{"call-id": call_id}))
            assert "created" in deleted
        assert ok(clients[7].call("list", limit=1000))["calls"] == []
        missing = clients[9].call("query", **{"call-id": call_ids[0]})
        assert missing["error-reason"] == "Unknown call-id"
    finally:
        for client in clients:
            client.close()


def test_a_killed_shards_clients_are_answered_by_the_other_meanwhile(
    topo: Topology, start_relay: StartRelay
) -> None:
    relay = start_sharded(start_relay)
    clients = [relay.client(timeout=1.0, retries=2) for _ in range(8)]
    try:
        call_ids = [f"kept-{n}" for n in range(8)]
        for n, call_id in enumerate(call_ids):
            ok(
                clients[n].call(
                    "offer",
                    **{"call-id": call_id, "from-tag": "a"},
                    sdp=SDP.format(ip="192.0.2.10", port=4000 + 2 * n),
                )
            )
        victim = 1
        survivor_calls = [c for c in call_ids if owner(c) != victim]
        assert survivor_calls
        time.sleep(0.6)  # the journal is written in batches (every 250 ms)
        shards = shard_processes(relay)
        shards[victim].kill()
        shards[victim].wait(5)
        # its socket left the group: every client is answered by the other shard now
        # (the victim is started again meanwhile, and joins again once it is ready)
        for client in clients:
            assert client.call("ping")["result"] == "pong"
            for call_id in survivor_calls:
                assert ok(client.call("query", **{"call-id": call_id}))["created"]
        deadline = time.monotonic() + 15
        while True:
            now = shard_processes(relay)
            if victim in now and udp_ng_sockets(now[victim]) == 1:
                break
            assert time.monotonic() < deadline, "the shard did not come back to the ng address"
            time.sleep(0.1)
        # back: every call from every socket, whichever shard the kernel gives it to now
        for client in clients:
            assert sorted(ok(client.call("list", limit=100))["calls"]) == sorted(call_ids)
            for call_id in call_ids:
                assert ok(client.call("query", **{"call-id": call_id}))["created"]
    finally:
        for client in clients:
            client.close()
