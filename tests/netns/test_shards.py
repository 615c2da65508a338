"""relayd with ``shards = 2``: the calls split over two supervisor processes behind one
front (relayd/shards/). Every command of a call reaches the shard that owns it, whichever
client socket sends it; ``list``, ``statistics``, ``relayctl`` and ``/metrics`` see every
call; a shard killed with SIGKILL is started again and takes its calls back."""

from __future__ import annotations

import json
import socket
import time
import urllib.request
import zlib
from typing import Any

import psutil
import pytest

from relayd.shards.route import port_slice
from tests.netns.conftest import PORT_MAX, PORT_MIN, StartRelay
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


def local_ports(ng: Any, call_id: str) -> list[int]:
    """Every stream's local port, as ``query`` lists them."""
    reply = ok(ng.call("query", **{"call-id": call_id}))
    return sorted(
        stream["local port"]
        for tag in reply["tags"].values()
        for media in tag["medias"]
        for stream in media["streams"]
    )


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
            ok(
                ng.call(
                    "offer",
                    **{"call-id": call_id, "from-tag": "a"},
                    sdp=SDP.format(ip="192.0.2.10", port=4000 + 2 * n),
                )
            )
            answer = ok(
                ng.call(
                    "answer",
                    **{"call-id": call_id, "from-tag": "a", "to-tag": "b"},
                    sdp=SDP.format(ip="192.0.2.20", port=6000 + 2 * n),
                )
            )
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
        for call_id in call_ids:
            reply = ng.call("query", **{"call-id": call_id})
            assert reply["result"] == "ok", (call_id, owner(call_id), reply)
        listed = ok(ng.call("list", limit=100))["calls"]
        assert sorted(listed) == sorted(call_ids)
        # the restored calls kept their ports
        assert {c: local_ports(ng, c) for c in call_ids} == before_ports
    assert "shard.died" in relay.log()
