"""Supervisor ↔ worker codec: every message type round-trips; anything else is an IpcError."""

from __future__ import annotations

import json

import pytest

from relayd.ipc import (
    MAX_MESSAGE,
    Configure,
    Drop,
    Forward,
    Hello,
    IpcError,
    Message,
    Shutdown,
    SocketSpec,
    SocketStats,
    Stats,
    decode,
    encode,
)

SPECS = (
    SocketSpec(
        "203.0.113.1 30000",
        fd_index=0,
        out="203.0.113.1 30002",
        out_rtcp="203.0.113.1 30003",
        expect="198.51.100.10 5000",
        learning="heuristic",
        learn_after=1234.5,
        asymmetric=True,
        strict=True,
        handover=True,
    ),
    SocketSpec("203.0.113.1 30001", out="203.0.113.1 30003", rtcp=True),
    SocketSpec("2001:db8::1 30002", fd_index=1, expect="2001:db8::20 6000", learning="off"),
)

MESSAGES: list[Message] = [
    Configure(worker=3, tos=184, stats_interval=0.5),
    Configure(worker=0),
    Forward("c1@example.org 0", SPECS),
    Forward("c1@example.org 1"),
    Drop("c1@example.org 0"),
    Shutdown(),
    Hello(worker=2, pid=4242),
    Stats(
        worker=1,
        sockets=(
            SocketStats("203.0.113.1 30000", 10, 1720, 1, 99.25, "198.51.100.10 5000", True, 7),
            SocketStats("203.0.113.1 30001", 0, 0, 0, 0.0),
        ),
        cpu_seconds=0.75,
        now=100.5,
        extra={"dropped": 3, "why": ["no endpoint"]},
    ),
    Stats(worker=0),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_round_trip(message: Message) -> None:
    data = encode(message)
    decoded = decode(data)
    assert decoded == message
    assert type(decoded) is type(message)
    assert encode(decoded) == data


def test_tuples_come_back_as_tuples_of_values() -> None:
    forward = decode(encode(Forward("m 0", SPECS)))
    assert isinstance(forward, Forward)
    assert isinstance(forward.sockets, tuple)
    assert all(isinstance(s, SocketSpec) for s in forward.sockets)
    stats = decode(encode(MESSAGES[7]))
    assert isinstance(stats, Stats)
    assert isinstance(stats.sockets, tuple)
    assert all(isinstance(s, SocketStats) for s in stats.sockets)


def test_wire_form_is_compact_json_with_a_type() -> None:
    assert encode(Drop("c 0")) == b'{"media":"c 0","type":"Drop"}'
    assert encode(Shutdown()) == b'{"type":"Shutdown"}'
    assert json.loads(encode(Hello(1, 2))) == {"worker": 1, "pid": 2, "type": "Hello"}


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        b"\xff\xfe",
        b"[]",
        b'"Drop"',
        b"42",
        b"null",
        b"{}",
        b'{"type": "Nope"}',
        b'{"type": ["Drop"]}',
        b'{"type": "Hello"}',
        b'{"type": "Hello", "worker": 1, "pid": 2, "extra": 1}',
        b'{"type": "Drop", "media": "m", "sockets": []}',
        b'{"type": "Forward", "media": "m", "sockets": 5}',
        b'{"type": "Forward", "media": "m", "sockets": ["x"]}',
        b'{"type": "Forward", "media": "m", "sockets": [{"nokey": 1}]}',
        b'{"type": "Stats", "worker": 1, "sockets": [[1, 2]]}',
        b"[" * 100_000,
    ],
)
def test_garbage_is_an_ipc_error(data: bytes) -> None:
    with pytest.raises(IpcError):
        decode(data)


def test_oversized_message_is_refused() -> None:
    big = encode(Drop("x" * MAX_MESSAGE))
    with pytest.raises(IpcError, match="message too large"):
        decode(big)
    assert issubclass(IpcError, ValueError)
