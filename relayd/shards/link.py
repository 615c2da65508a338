"""The link between the front and one shard: a ``SOCK_SEQPACKET`` socket pair, one
pickled tuple per message (both ends are relayd's own processes).

Front to shard:

``("ng", tag, source, local, data)``
    an ng message from a TCP stream, as it came (cookie and body): the shard sends
    the reply back.
``("call", tag, source, data)``
    a command every shard answers (``list``, ``statistics``): the reply dictionary
    comes back, for :mod:`relayd.shards.merge`.
``("admin", tag, request)``, ``("metrics", tag)``
    a ``relayctl`` request; the ``/metrics`` text.
``("listen", 0)``
    join the ng UDP address (the front serves: relayd.shards.mesh), and say so.
``("steer", 0, table)``
    attach the program for the ng address's group, ``table`` being each shard's index in
    the group (relayd.shards.steer).
``("send", 0, source, reply)``
    a merged reply to a ``fanout``, for the shard to send to its client.

Shard to front: ``("reply", tag, payload)``; ``("fanout", 0, (source, data))``, a
UDP ``list`` or ``statistics`` the shard received, for the front to ask every shard;
``("listening", 0, joined)``, after ``listen``: whether it joined the ng address.

Sends never block the sender's loop: a link whose buffer is full (its shard far
behind) refuses the message, which the caller counts as dropped; the proxy
retransmits as it would to an overloaded rtpengine.
"""

from __future__ import annotations

import pickle
import socket
from typing import Any

__all__ = ["BUFFER", "Closed", "pair", "receive", "send"]

BUFFER = 8 << 20
"""Bytes of socket buffer each way: thousands of ng messages."""
_MESSAGE = 1 << 21  # the largest message read (a TCP ng message is at most 1 MiB)


class Closed(ConnectionError):
    """The other end is gone (its process died)."""


def pair() -> tuple[socket.socket, socket.socket]:
    """The front's end and the shard's end, non-blocking, with large buffers."""
    front, shard = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for sock in (front, shard):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, BUFFER)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BUFFER)
        sock.setblocking(False)
    return front, shard


def send(sock: socket.socket, message: tuple[Any, ...]) -> bool:
    """Send one message; False when the link's buffer is full (nothing was sent)."""
    try:
        sock.send(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))
    except BlockingIOError:
        return False
    except (BrokenPipeError, ConnectionResetError) as exc:
        raise Closed(str(exc)) from exc
    return True


def receive(sock: socket.socket) -> list[tuple[Any, ...]]:
    """Every message waiting on the link (maybe none); Closed once the other end is gone."""
    messages: list[tuple[Any, ...]] = []
    while True:
        try:
            data = sock.recv(_MESSAGE)
        except BlockingIOError:
            return messages
        except ConnectionResetError as exc:
            raise Closed(str(exc)) from exc
        if not data:
            if messages:
                return messages  # the rest next time, which reports the end
            raise Closed("end of link")
        messages.append(pickle.loads(data))
