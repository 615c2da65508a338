"""The shards' datagram sockets: each one's on the ng address, and to each other.

Every shard binds the ng UDP address with ``SO_REUSEPORT`` (:func:`reuseport_socket`),
so that the kernel spreads the proxy's sockets over them by the hash of each socket's
address. A message received by one shard for a call another shard owns goes straight
to that shard (not through the front).

Each shard has one inbound ``AF_UNIX`` datagram socket pair, made by the front once
for the daemon's life: the shard reads the receiving end, every shard sends on the
other end. The front keeps both ends open, so that a shard started again after a
death gets the same socket, and nothing outside relayd's processes can reach them
(no name in any namespace). A message carries the client's address with the
datagram as it came, and the cookie and dictionary the sender decoded to route it (the
owner does not read it again); the owner handles it as if it had received it and
answers the client itself, from its own socket of the ng address's ``SO_REUSEPORT``
group (the same address and port: the client sees no difference).

Sends never block: while a shard is down (or far behind), messages for it pile up to
its socket's limit and then are refused, and the sender drops them; the proxy
retransmits, as it would to an overloaded rtpengine. What piled up is dropped by the
shard when it starts again (:func:`discard`): those requests were retransmitted or
given up on long since.
"""

from __future__ import annotations

import pickle
import socket
from typing import Any

__all__ = ["BUFFER", "Mesh", "discard", "forward", "receive", "reuseport_socket"]

BUFFER = 4 << 20
"""Bytes of send buffer asked for each pair (the kernel caps it at ``net.core.wmem_max``,
208 KiB by default: hundreds of messages). What waits is bounded by this buffer alone:
``net.unix.max_dgram_qlen`` does not apply to a connected pair."""
_DATAGRAM = 1 << 17  # the largest message read: an ng datagram (64 KiB) and its address


class Mesh:
    """Every shard's inbound socket pair, by index: ``inbound[i]`` is what shard ``i``
    reads, ``outbound[i]`` what every shard sends to shard ``i`` on."""

    def __init__(self, shards: int) -> None:
        self.inbound: list[socket.socket] = []
        self.outbound: list[socket.socket] = []
        for _ in range(shards):
            sender, receiver = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
            sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, BUFFER)
            for sock in (sender, receiver):
                sock.setblocking(False)  # shared by every shard: none of them may block
            self.outbound.append(sender)
            self.inbound.append(receiver)

    def descriptors(self, index: int) -> tuple[int, list[int]]:
        """What shard ``index`` is given: its inbound descriptor, and every shard's
        outbound one in order of index."""
        return self.inbound[index].fileno(), [s.fileno() for s in self.outbound]

    def close(self) -> None:
        for sock in (*self.inbound, *self.outbound):
            sock.close()


def forward(sock: socket.socket, message: tuple[Any, ...]) -> bool:
    """Send a client's datagram to the shard behind ``sock``; False when it is refused
    (that shard's socket is full: it is down or far behind). ``message`` is the client's
    address, the datagram and what the sender read of it (relayd.shards.shard)."""
    try:
        sock.send(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))
    except (BlockingIOError, ConnectionError):
        return False
    return True


def receive(sock: socket.socket, most: int) -> list[tuple[Any, ...]]:
    """Up to ``most`` messages waiting on an inbound socket, each as :func:`forward` took it."""
    messages: list[tuple[Any, ...]] = []
    while len(messages) < most:
        try:
            data = sock.recv(_DATAGRAM)
        except BlockingIOError:
            break
        messages.append(pickle.loads(data))
    return messages


def discard(sock: socket.socket) -> int:
    """Drop what waits on an inbound socket (a shard starting again); how many."""
    count = 0
    while True:
        try:
            sock.recv(_DATAGRAM)
        except BlockingIOError:
            return count
        count += 1


def reuseport_socket(host: str, port: int) -> socket.socket:
    """A non-blocking UDP socket on the ng address, in its ``SO_REUSEPORT`` group."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock
