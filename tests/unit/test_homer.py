"""The Homer sender over real loopback sockets: UDP datagrams, TCP framing, queue and retry."""

from __future__ import annotations

import socket
import time

from relayd.config import HomerSettings
from relayd.ops import hep
from relayd.ops.counters import Counters
from relayd.ops.homer import QUEUE_LIMIT, RETRY_AFTER, HomerSender, ng_capture


def _packet(n: int) -> bytes:
    settings = HomerSettings(("127.0.0.1", 9), capture_id=2002)
    return ng_capture(
        settings,
        f"c{n} d7:command5:offere".encode(),
        f"call-{n}",
        ("127.0.0.1", 5060),
        ("127.0.0.1", 2223),
        1_700_000_000.5,
    )


def test_ng_capture_packet() -> None:
    decoded = hep.decode(_packet(1))
    assert decoded == hep.HepPacket(
        ("127.0.0.1", 5060),
        ("127.0.0.1", 2223),
        1_700_000_000,
        500_000,
        0x3D,
        2002,
        b"call-1",
        b"c1 d7:command5:offere",
    )


def test_udp() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.settimeout(2.0)
        counters = Counters()
        sender = HomerSender(HomerSettings(listener.getsockname()), counters)
        sender.send(_packet(1))
        sender.send(_packet(2))
        assert [hep.decode(listener.recv(65536)).correlation_id for _ in range(2)] == [
            b"call-1",
            b"call-2",
        ]
        assert (counters.homer_sent, counters.homer_dropped) == (2, 0)
        sender.close()


def _read_stream(conn: socket.socket, count: int) -> list[bytes]:
    """HEP packets off a TCP stream: each says its own length."""
    buffer, packets = b"", list[bytes]()
    conn.settimeout(2.0)
    while len(packets) < count:
        buffer += conn.recv(65536)
        while len(buffer) >= 6 and len(buffer) >= int.from_bytes(buffer[4:6], "big"):
            size = int.from_bytes(buffer[4:6], "big")
            packets.append(buffer[:size])
            buffer = buffer[size:]
    return packets


def test_tcp_queues_while_connecting_and_delivers_in_order() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        counters = Counters()
        sender = HomerSender(HomerSettings(listener.getsockname(), "tcp"), counters)
        for n in range(5):
            sender.send(_packet(n))
        conn, _ = listener.accept()
        deadline = time.monotonic() + 2.0
        while (sender.queue or sender.partial or not sender.connected) and (
            time.monotonic() < deadline
        ):
            sender.pump()
            time.sleep(0.01)
        with conn:
            packets = _read_stream(conn, 5)
        assert [hep.decode(p).correlation_id for p in packets] == [
            f"call-{n}".encode() for n in range(5)
        ]
        assert counters.homer_sent == 5
        sender.close()


def test_tcp_server_down_queues_then_drops_and_retries_later() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as closed:
        closed.bind(("127.0.0.1", 0))
        address = closed.getsockname()  # bound, not listening: connections are refused
        now = [100.0]
        counters = Counters()
        sender = HomerSender(HomerSettings(address, "tcp"), counters, clock=lambda: now[0])
        for n in range(QUEUE_LIMIT + 3):
            sender.send(_packet(n))
            sender.pump()
        assert len(sender.queue) == QUEUE_LIMIT
        assert counters.homer_dropped == 3
        assert sender.sock is None and sender.retry_at == now[0] + RETRY_AFTER
        sender.pump()
        assert sender.sock is None  # not before the retry time
        sender.close()
