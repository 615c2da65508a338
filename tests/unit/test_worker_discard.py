"""A worker's ``Discard`` (relayd/worker/loop.py): relayd decides before its reply what
queued on a send-only socket is stale; the worker may read the message after the reply,
when the party's first packets for the next forward have arrived too. Only what the
kernel stamped before relayd's decision is dropped."""

from __future__ import annotations

import socket
import time

import pytest

from relayd import ipc
from relayd.plane.sockets import _open
from relayd.worker.loop import Worker


def test_discard_drops_only_what_arrived_before_relayds_decision() -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    relay = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, 0, _open("127.0.0.1", 0))
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        key = ipc.socket_key(*relay.getsockname()[:2])
        worker = Worker(ours, 0)
        worker.parked[key] = relay  # held, not read: as a send-only socket is
        time.sleep(0.05)  # the kernel switches timestamping on a moment after the first socket
        for n in range(3):
            peer.sendto(b"ringing %d" % n, relay.getsockname())
        time.sleep(0.02)
        decided = time.time()  # relayd's Discard, before its reply
        time.sleep(0.02)
        peer.sendto(b"answer media", relay.getsockname())  # after the reply
        time.sleep(0.02)
        worker._discard((key,), decided)
        relay.setblocking(False)
        assert relay.recv(100) == b"answer media"  # kept for the forward that follows
        worker._discard((key,), 0.0)  # no time given: all of it (nothing left here)

    finally:
        for sock in (relay, peer, ours, theirs):
            sock.close()


def test_a_datagram_stamped_only_when_read_counts_as_old() -> None:
    """No arrival time (the kernel stamps it at the read): dropped, as before the change."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    plain = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # no SO_TIMESTAMPNS at all
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        plain.bind(("127.0.0.1", 0))
        plain.setblocking(False)
        key = ipc.socket_key(*plain.getsockname()[:2])
        worker = Worker(ours, 0)
        worker.parked[key] = plain
        peer.sendto(b"late", plain.getsockname())
        time.sleep(0.02)
        worker._discard((key,), time.time() - 60)
        with pytest.raises(BlockingIOError):
            plain.recv(100)
    finally:
        for sock in (plain, peer, ours, theirs):
            sock.close()


def test_a_discard_message_carries_relayds_time() -> None:
    message = ipc.Discard(("203.0.113.1 30000",), 1.5)
    assert ipc.decode(ipc.encode(message)) == message
    bare = ipc.decode(ipc.encode(ipc.Discard(("203.0.113.1 30000",))))
    assert isinstance(bare, ipc.Discard) and bare.before == 0.0
