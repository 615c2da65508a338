"""Supervisor ↔ worker codec: every message type round-trips; anything else is an IpcError."""

from __future__ import annotations

import json

import pytest

from relayd.ipc import (
    MAX_MESSAGE,
    Close,
    Configure,
    Discard,
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
    decode_all,
    encode,
    join,
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
    ),
    Stats(worker=0),
    # WebRTC bridging: crypto fields of a socket, the DTLS certificate, DTLS/ICE state
    Configure(
        worker=1,
        certificate="-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        private_key="-----BEGIN PRIVATE KEY-----\nMIGH\n-----END PRIVATE KEY-----\n",
    ),
    Forward(
        "c1@example.org 2",
        (
            SocketSpec(
                "203.0.113.1 30004",
                fd_index=0,
                out="203.0.113.1 30006",
                srtp_in="AES_CM_128_HMAC_SHA1_80 inline:d0RmdmcmVCspeEc3QGZiNWpVLFJhQX1cfHAwJSoj",
                srtp_out="AEAD_AES_128_GCM inline:MTIzNDU2Nzg5MDEyMzQ1Njc4OTAxMjM0",
                dtls="passive",
                dtls_fingerprint="sha-256 " + ":".join(["AB"] * 32),
                ice_ufrag="Abcd1234",
                ice_pwd="0123456789abcdefghijklmn",
                ice_remote_ufrag="xyZ9",
            ),
        ),
    ),
    Stats(
        worker=2,
        sockets=(
            SocketStats("203.0.113.1 30004", 3, 300, 2, 5.0, dtls="connected", ice="nominated"),
            SocketStats("203.0.113.1 30006", 0, 0, 1, 0.0, dtls="failed: fingerprint mismatch"),
        ),
    ),
    # one holder per socket: ports given back, backlogs dropped
    Close(("203.0.113.1 30000", "203.0.113.1 30001")),
    Discard(("2001:db8::1 30002",)),
    Close(),
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


def test_messages_without_the_crypto_fields_decode_to_plain_defaults() -> None:
    configure = decode(b'{"type":"Configure","worker":1}')
    assert configure == Configure(1, certificate="", private_key="")
    forward = decode(b'{"type":"Forward","media":"m","sockets":[{"key":"192.0.2.1 30000"}]}')
    assert isinstance(forward, Forward)
    spec = forward.sockets[0]
    assert (spec.srtp_in, spec.srtp_out, spec.dtls, spec.dtls_fingerprint) == ("", "", "", "")
    assert (spec.ice_ufrag, spec.ice_pwd, spec.ice_remote_ufrag) == ("", "", "")
    stats = decode(
        b'{"type":"Stats","worker":0,"sockets":[{"key":"k","packets":1,'
        b'"bytes":2,"errors":0,"last_packet":1.5}]}'
    )
    assert isinstance(stats, Stats)
    assert (stats.sockets[0].dtls, stats.sockets[0].ice) == ("", "")


def test_oversized_message_is_refused() -> None:
    big = encode(Drop("x" * MAX_MESSAGE))
    with pytest.raises(IpcError, match="message too large"):
        decode(big)
    assert issubclass(IpcError, ValueError)


def test_a_packet_carries_several_messages_in_order() -> None:
    """relayd joins what waits for a worker into one packet; one message is sent as itself."""
    messages: list[Message] = [Close(("192.0.2.1 30000", "192.0.2.1 30001")), Drop("c1 0")]
    packet = join([encode(m) for m in messages])
    assert decode_all(packet) == messages
    assert join([encode(Drop("c1 0"))]) == encode(Drop("c1 0"))
    assert decode_all(encode(Drop("c1 0"))) == [Drop("c1 0")]


@pytest.mark.parametrize(
    "data",
    [b'[{"type":"Drop","media":"m"},{"type":"Nope"}]', b"[1]", b"[[]]", b'"Drop"'],
)
def test_a_packet_with_a_bad_message_is_refused_whole(data: bytes) -> None:
    with pytest.raises(IpcError):
        decode_all(data)
