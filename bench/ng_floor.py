#!/usr/bin/env python3
"""The Python floor for bench/ng.py: an ng responder that does no ng work.

It makes the system calls that any RTP proxy must make for bench/ng.py's
requests and nothing else: receive the request, bind an RTP/RTCP socket pair
for the offer and another for the answer (socket, one socket option, bind:
relayd sets the receive buffer there, rtpengine the TOS), close all four on
delete, and send a reply (for offer and answer the request's own SDP body
echoed back as ``sdp``, so of about the right size; for delete a bare
``result: ok``, where both daemons send a statistics tree). No bencode
parsing, no SDP, no call model, no media worker: the command is read from the
last bytes of the request, the call from the cookie (bench/ng.py's cookies are
``<call number><o|a|d>``).

bench/ng.py runs it with ``--floor`` as a third "daemon" beside relayd and
rtpengine. Its CPU per cycle is what the interpreter, the event loop and the
kernel cost a Python daemon per offer/answer/delete before it does any of the
work; comparing it with rtpengine's whole cycle shows how much room the design
leaves for that work. It serves only those requests and ``ping``: it is a
measuring instrument, not an ng server.

    .venv/bin/python bench/ng.py --floor --calls 1,1000
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import socket
import sys
import typing

import uvloop

__all__ = ["FloorProtocol", "main"]

TOS_EF = 184
ERROR = b" d6:result5:error12:error-reason10:not servede"


class FloorProtocol(asyncio.DatagramProtocol):
    """One UDP ng socket; per call, the sockets it bound."""

    def __init__(self, host: str, port_min: int, port_max: int) -> None:
        self.host = host
        self.pairs = list(range(port_min + port_min % 2, port_max, 2))  # RTP even, RTCP + 1
        random.shuffle(self.pairs)
        self.calls: dict[bytes, list[socket.socket]] = {}
        self.ports: dict[bytes, list[int]] = {}
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = typing.cast(asyncio.DatagramTransport, transport)  # uvloop's UDPTransport

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        assert self.transport is not None
        cookie, _, body = data.partition(b" ")
        tail = body[-16:]
        if tail.endswith(b"5:offere") or tail.endswith(b"6:answere"):
            reply = self._bind(cookie[:-1], body)
        elif tail.endswith(b"6:deletee"):
            call = cookie[:-1]
            for sock in self.calls.pop(call, ()):
                sock.close()
            self.pairs.extend(self.ports.pop(call, ()))
            reply = b" d6:result2:oke"
        elif tail.endswith(b"4:pinge"):
            reply = b" d6:result4:ponge"
        else:
            reply = ERROR
        self.transport.sendto(cookie + reply, addr)

    def _bind(self, call: bytes, body: bytes) -> bytes:
        start = body.find(b"3:sdp")
        if start < 0:
            return ERROR
        colon = body.index(b":", start + 5)
        size = int(body[start + 5 : colon])
        sdp = body[colon + 1 : colon + 1 + size]
        while self.pairs:  # a pair another process holds is skipped, as relayd and rtpengine do
            port = self.pairs.pop()
            pair = []
            try:
                for offset in (0, 1):
                    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
                    pair.append(sock)
                    sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, TOS_EF)
                    sock.bind((self.host, port + offset))
            except OSError:
                for sock in pair:
                    sock.close()
                continue
            self.calls.setdefault(call, []).extend(pair)
            self.ports.setdefault(call, []).append(port)
            return b" d3:sdp%d:%s6:result2:oke" % (len(sdp), sdp)
        return ERROR


async def serve(listen: tuple[str, int], interface: str, port_min: int, port_max: int) -> None:
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set_result, None)
    transport, _ = await loop.create_datagram_endpoint(
        lambda: FloorProtocol(interface, port_min, port_max), local_addr=listen
    )
    try:
        await stop
    finally:
        transport.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/ng_floor.py", description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:22262", metavar="HOST:PORT")
    parser.add_argument("--interface", default="127.0.0.1", help="address media sockets bind")
    parser.add_argument("--port-min", type=int, default=10000)
    parser.add_argument("--port-max", type=int, default=59999)
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    uvloop.run(serve((host, int(port)), args.interface, args.port_min, args.port_max))
    return 0


if __name__ == "__main__":
    sys.exit(main())
