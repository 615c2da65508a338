"""The program that steers ng datagrams to their call's shard, run by the kernel on a
real ``SO_REUSEPORT`` group on loopback, and the front's idea of the group's order."""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Iterator

import pytest

from relayd.ng import bencode
from relayd.shards import steer
from relayd.shards.route import owner

_BPF_MAXINSNS = 4096


@pytest.fixture
def group() -> Iterator[tuple[list[socket.socket], socket.socket]]:
    """Three sockets in one group on a free loopback port, and a client."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    address = probe.getsockname()
    probe.close()
    members = []
    for _ in range(3):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.setblocking(False)
        members.append(sock)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.connect(address)
    yield members, client
    for sock in (*members, client):
        sock.close()


def _receiver(members: list[socket.socket], client: socket.socket, data: bytes) -> int:
    """Which member the kernel gives ``data`` to."""
    client.send(data)
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        for index, sock in enumerate(members):
            try:
                assert sock.recv(65536) == data
            except BlockingIOError:
                continue
            return index
        time.sleep(0.0005)
    raise AssertionError("not received")


def _offer(call_id: str, sdp_lines: int) -> bytes:
    # Kamailio's order: the SDP first, the call-id near the end
    return b"5_17 " + bencode.encode(
        {
            "supports": ["load limit"],
            "sdp": "v=0\r\na=rtpmap:0 PCMU/8000\r\n" * sdp_lines,
            "flags": ["trust-address"],
            "replace": ["origin", "session-connection"],
            "call-id": call_id,
            "received-from": ["IP4", "192.0.2.10"],
            "from-tag": "call-all-7:ca",
            "command": "offer",
        }
    )


def test_each_call_goes_to_its_owners_socket_whatever_the_order(
    group: tuple[list[socket.socket], socket.socket],
) -> None:
    members, client = group
    rng = random.Random(5)
    # shard i's socket is the group's order[i]: any order, as restarts leave it
    for order in ([0, 1, 2], [2, 0, 1]):
        table: list[int | None] = list(order)
        program = steer.program(table)
        assert len(program) <= _BPF_MAXINSNS
        steer.attach(members[order[0]], program)  # any member attaches it for the group
        for n in range(90):
            size = rng.randint(1, steer.LONGEST)
            # values after the key may hold some of its bytes: "call", "all-", ":cal"
            call_id = rng.choice([f"{rng.getrandbits(128):032x}", f"call-{n}:cal-all-@x"])
            call_id = (call_id * 3)[:size]
            data = _offer(call_id, rng.randint(0, 40)) if n % 2 else _delete(call_id)
            assert _receiver(members, client, data) == order[owner(call_id.encode(), 3)]


def _delete(call_id: str) -> bytes:
    return b"c2 " + bencode.encode({"call-id": call_id, "command": "delete"})


def test_what_it_cannot_read_is_left_to_the_hash(
    group: tuple[list[socket.socket], socket.socket],
) -> None:
    members, client = group
    call_id = next(f"c{n}" for n in range(100) if owner(f"c{n}".encode(), 3) == 1)
    steer.attach(members[0], steer.program([None, None, None]))  # nobody's index known
    hashed = _receiver(members, client, _delete(call_id))  # one client: one socket by hash
    steer.attach(members[0], steer.program([0, 1, 2]))
    assert _receiver(members, client, _delete(call_id)) == 1
    unreadable = [
        b"p1 d7:command4:pinge",  # no call-id
        b"x " + bencode.encode({"call-id": "k" * (steer.LONGEST + 1), "command": "query"}),
        b"x " + bencode.encode({"call-id": "", "command": "query"}),
        b"x " + bencode.encode({"call_id": call_id, "command": "query"}),  # spelled otherwise
        b"x d7:call-id",  # truncated
        b"x d7:call-idi5e7:command5:querye",  # not a string
        b"x " + bencode.encode({"call-id": call_id, "sdp": "v=0\r\n" * 100}),  # far from the end
        b"",
        b"7:call-id",
    ]
    for data in unreadable:
        assert _receiver(members, client, data) == hashed, data


def test_the_group_order_follows_joins_and_deaths() -> None:
    group = steer.Group(4)
    for shard in (2, 0, 1, 3):
        group.joined(shard)
    assert group.table() == [1, 2, 0, 3]
    assert group.left(0)  # the last socket takes the place of the one that left
    assert group.order == [2, 3, 1]
    assert group.table() == [None, 2, 0, 1]
    assert not group.left(0)
    group.joined(0)
    assert group.left(0) and group.order == [2, 3, 1]
    assert group.left(1) and group.order == [2, 3]
