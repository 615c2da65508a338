"""One holder per media socket: relayd until a worker takes it, then the worker alone.

Real UDP sockets on 127.0.0.1 (ports 42000-42999) and real descriptor passing over a
SOCK_SEQPACKET pair standing in for the worker link: relayd's copy closes once the
descriptor is sent, a given-back port is tried again once the worker closed it (never
lost for good), a dead worker's ports are bound again, and the worker keeps a socket
that leaves its forwards until ``Close``.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from relayd import ipc
from relayd.calls.commands import Commands
from relayd.calls.interfaces import Interfaces
from relayd.calls.model import Call, LocalAddress
from relayd.calls.ports import PortAllocator, PortsExhausted
from relayd.calls.signalling import Signalling
from relayd.calls.timers import Limits
from relayd.ipc import socket_key
from relayd.plane.media import MediaPlane
from relayd.plane.sockets import SocketBinder
from relayd.worker.loop import Worker
from tests.unit.calls import T0, req, sdp

HOST = "127.0.0.1"
PORT = 42010  # a free even port of this test's range


def bound_port(fd: int) -> int:
    """The local port of a socket descriptor (fstat'd through a temporary dup)."""
    sock = socket.socket(fileno=os.dup(fd))
    try:
        return int(sock.getsockname()[1])
    finally:
        sock.close()


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def can_bind(port: int) -> bool:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind((HOST, port))
    except OSError:
        return False
    finally:
        sock.close()
    return True


@pytest.fixture
def link() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        yield ours, theirs
    finally:
        ours.close()
        theirs.close()


def hand(
    binder: SocketBinder, keys: list[str], link: tuple[socket.socket, socket.socket]
) -> list[int]:
    """Send ``keys``' descriptors as the media plane does, then let relayd's copies go;
    returns the worker's descriptors."""
    ours, theirs = link
    socket.send_fds(ours, [b"x"], [binder.fileno(k) for k in keys])
    binder.handed_over(keys, 0)
    _data, fds, _flags, _addr = socket.recv_fds(theirs, 16, 16)
    return fds


def test_a_handed_socket_has_one_descriptor_the_workers(
    link: tuple[socket.socket, socket.socket],
) -> None:
    binder = SocketBinder()
    assert binder.bind(HOST, PORT)
    keys = [socket_key(HOST, PORT), socket_key(HOST, PORT + 1)]
    ours = [binder.fileno(k) for k in keys]
    socket.send_fds(link[0], [b"x"], ours)
    binder.handed_over(keys, 0)
    assert not any(is_open(fd) for fd in ours)  # relayd's copies are closed
    _data, theirs, _flags, _addr = socket.recv_fds(link[1], 16, 16)
    try:
        assert binder.sockets == {} and binder.handed == dict.fromkeys(keys, 0)
        # the socket lives on in the worker, bound as before
        assert [bound_port(fd) for fd in theirs] == [PORT, PORT + 1]
        assert not can_bind(PORT)
        assert binder.holder(keys[0]) == 0
    finally:
        for fd in theirs:
            os.close(fd)


def test_a_given_back_port_waits_for_the_worker_then_is_used_again(
    link: tuple[socket.socket, socket.socket],
) -> None:
    binder = SocketBinder()
    asked: list[tuple[int, tuple[str, ...]]] = []
    binder.on_close = lambda worker, keys: asked.append((worker, keys))
    ports = PortAllocator(PORT, PORT + 1, 1, binder)  # one pair only
    assert ports.allocate(HOST) == PORT
    theirs = hand(binder, [socket_key(HOST, PORT), socket_key(HOST, PORT + 1)], link)

    ports.release(HOST, PORT)
    assert asked == [(0, (socket_key(HOST, PORT), socket_key(HOST, PORT + 1)))]
    assert binder.busy(HOST, PORT)
    # the worker has not closed it yet: not the port's end, only not now
    with pytest.raises(PortsExhausted):
        ports.allocate(HOST)
    for fd in theirs:
        os.close(fd)  # the worker read its Close
    assert ports.allocate(HOST) == PORT
    assert not binder.busy(HOST, PORT)
    ports.release(HOST, PORT)
    assert binder.sockets == {} and can_bind(PORT)


def test_a_port_another_program_holds_stays_out_of_use() -> None:
    binder = SocketBinder()
    ports = PortAllocator(PORT, PORT + 3, 1, binder)  # PORT and PORT + 2
    stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stranger.bind((HOST, PORT + 2))
    try:
        assert ports.allocate(HOST) == PORT
        with pytest.raises(PortsExhausted):
            ports.allocate(HOST)
        ports.release(HOST, PORT)
        assert ports.allocate(HOST) == PORT  # PORT + 2 is not tried again
        ports.release(HOST, PORT)
    finally:
        stranger.close()
    assert ports.pool(HOST).in_use == 1 and not binder.busy(HOST, PORT + 2)


def test_a_dead_workers_ports_are_bound_again_as_they_were(
    link: tuple[socket.socket, socket.socket],
) -> None:
    binder = SocketBinder()
    assert binder.bind(HOST, PORT)
    keys = [socket_key(HOST, PORT), socket_key(HOST, PORT + 1)]
    theirs = hand(binder, keys, link)
    # still running: its sockets are open, nothing can be bound yet
    assert binder.lost(0) == [] and set(binder.unbound) == set(keys)
    for fd in theirs:
        os.close(fd)  # it has exited
    assert sorted(binder.rebind_pending()) == keys
    assert binder.unbound == {} and binder.handed == {}
    assert [bound_port(binder.fileno(k)) for k in keys] == [PORT, PORT + 1]
    binder.release(HOST, PORT)
    assert binder.sockets == {} and can_bind(PORT)


def test_a_port_given_back_while_unbound_is_not_bound_again(
    link: tuple[socket.socket, socket.socket],
) -> None:
    binder = SocketBinder()
    assert binder.bind(HOST, PORT)
    keys = [socket_key(HOST, PORT), socket_key(HOST, PORT + 1)]
    theirs = hand(binder, keys, link)
    binder.lost(0)
    binder.release(HOST, PORT)  # the call ended meanwhile
    for fd in theirs:
        os.close(fd)
    assert binder.rebind_pending() == [] and binder.sockets == {}


# -- the worker's side ----------------------------------------------------------------------


def spec(port: int, fd_index: int = -1, out: int = 0) -> ipc.SocketSpec:
    return ipc.SocketSpec(
        socket_key(HOST, port), fd_index, out=socket_key(HOST, out) if out else ""
    )


def test_a_worker_applies_a_packets_messages_in_order_and_closes_descriptors_left_over(
    link: tuple[socket.socket, socket.socket],
) -> None:
    """A packet of several messages (relayd/plane/workerpool.py joins what waits): the closes
    of one call, then the forward of another with its descriptors; one sent that no forward
    names is closed, not leaked."""
    binder = SocketBinder()
    assert binder.bind(HOST, PORT) and binder.bind(HOST, PORT + 2)
    keys = [socket_key(HOST, p) for p in (PORT, PORT + 1, PORT + 2, PORT + 3)]
    worker_link, relay_link = link
    worker = Worker(worker_link, 0)
    try:
        first = ipc.Forward("c1 0", (spec(PORT, 0), spec(PORT + 1, 1)))
        socket.send_fds(relay_link, [ipc.encode(first)], [binder.fileno(k) for k in keys[:2]])
        binder.handed_over(keys[:2], 0)
        worker._read_link()
        assert set(worker.by_key) == set(keys[:2])
        packet = ipc.join(
            [
                ipc.encode(ipc.Close(tuple(keys[:2]))),
                ipc.encode(ipc.Drop("c1 0")),
                ipc.encode(ipc.Forward("c2 0", (spec(PORT + 2, 0),))),
            ]
        )
        extra = binder.fileno(keys[3])  # sent, named by no forward
        socket.send_fds(relay_link, [packet], [binder.fileno(keys[2]), extra])
        binder.handed_over(keys[2:], 0)
        worker._read_link()
        assert set(worker.by_key) == {keys[2]} and worker.parked == {}
        assert "c1 0" not in worker.medias
        assert can_bind(PORT) and can_bind(PORT + 1)  # closed by the Close
        assert can_bind(PORT + 3)  # the descriptor no forward took was closed
        assert not can_bind(PORT + 2)
    finally:
        for ms in list(worker.by_key.values()):
            worker._close(ms)
        for sock in worker.parked.values():
            sock.close()


def test_a_worker_keeps_a_socket_left_out_of_its_forwards_until_close(
    link: tuple[socket.socket, socket.socket],
) -> None:
    binder = SocketBinder()
    assert binder.bind(HOST, PORT) and binder.bind(HOST, PORT + 2)
    keys = [socket_key(HOST, p) for p in (PORT, PORT + 1, PORT + 2, PORT + 3)]
    fds = [os.dup(binder.fileno(k)) for k in keys]
    for key in keys:
        os.close(binder.sockets.pop(key))
    worker_link, relay_link = link
    worker = Worker(worker_link, 0)
    try:
        specs = tuple(spec(PORT + i, i) for i in range(4))
        worker._apply(ipc.Forward("c1 0", specs), fds, set())
        assert set(worker.by_key) == set(keys)
        # the plan drops the second pair: the worker keeps it, idle
        worker._apply(ipc.Forward("c1 0", (spec(PORT), spec(PORT + 1))), [], set())
        assert set(worker.parked) == set(keys[2:]) and not can_bind(PORT + 2)
        # the section is dropped: all idle, none closed
        worker._apply(ipc.Drop("c1 0"), [], set())
        assert set(worker.parked) == set(keys) and worker.by_key == {}
        # named again, with no descriptor: the worker has it
        worker._apply(ipc.Forward("c1 0", (spec(PORT), spec(PORT + 1))), [], set())
        assert set(worker.by_key) == set(keys[:2])
        # what waits on an idle socket is dropped on relayd's word
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sender.sendto(b"old", (HOST, PORT + 2))
        sender.close()
        worker._apply(ipc.Discard((keys[2],)), [], set())
        with pytest.raises(BlockingIOError):
            worker.parked[keys[2]].recv(16)
        worker._apply(ipc.Close(tuple(keys)), [], set())
        assert worker.by_key == {} and worker.parked == {}
        assert all(can_bind(p) for p in (PORT, PORT + 1, PORT + 2, PORT + 3))
        del relay_link
    finally:
        for ms in list(worker.by_key.values()):
            worker._close(ms)
        for sock in worker.parked.values():
            sock.close()
        worker.epoll.close()


# -- the media plane -------------------------------------------------------------------------


@dataclass
class Plane:
    media: MediaPlane
    binder: SocketBinder
    cmds: Commands
    worker_end: socket.socket

    def received(self) -> list[tuple[ipc.Message, list[int]]]:
        got: list[tuple[ipc.Message, list[int]]] = []
        self.worker_end.setblocking(False)  # (recv_fds ignores its flags)
        while True:
            try:
                data, fds, _f, _a = socket.recv_fds(self.worker_end, 1 << 20, 64)
            except BlockingIOError:
                return got
            # a packet's descriptors come with its last message (relayd/plane/workerpool.py)
            messages = ipc.decode_all(data)
            got.extend((m, fds if m is messages[-1] else []) for m in messages)


@pytest.fixture
def plane(link: tuple[socket.socket, socket.socket]) -> Iterator[Plane]:
    binder = SocketBinder()
    ports = PortAllocator(42100, 42199, 1, binder)
    interfaces = Interfaces([LocalAddress("default", HOST, HOST)])
    signalling = Signalling(interfaces, ports, instance_id="0123456789ab")
    cmds = Commands(signalling, Limits(), started=T0)
    media = MediaPlane(binder, cmds.calls, workers=1)
    ours, theirs = link
    media.workers[0].link = ours
    try:
        yield Plane(media, binder, cmds, theirs)
    finally:
        for fd in binder.sockets.values():
            os.close(fd)


def answered(plane: Plane) -> Call:
    offer = sdp(HOST, 5000)
    for command, keys in (("offer", {}), ("answer", {"to_tag": "b"})):
        reply = plane.cmds.handle(req(command, from_tag="a", sdp=offer, **keys), T0)
        assert reply["result"] == "ok", reply
    return plane.cmds.calls["c1"]


def test_the_worker_gets_each_socket_once_and_relayd_keeps_none(plane: Plane) -> None:
    call = answered(plane)
    held = set(plane.binder.sockets)
    assert len(held) == 4  # two parties, RTP and RTCP
    plane.media.sync(call)
    [(forward, fds)] = plane.received()
    assert isinstance(forward, ipc.Forward) and len(fds) == 4
    assert plane.binder.sockets == {} and set(plane.binder.handed) == held
    plane.media.sync(call)  # the same plan again: no descriptor travels twice
    [(_again, none)] = plane.received()
    assert none == []
    for fd in fds:
        os.close(fd)


def test_a_dead_workers_calls_keep_their_ports(plane: Plane) -> None:
    call = answered(plane)
    plane.media.sync(call)
    [(_forward, fds)] = plane.received()
    ports = sorted(bound_port(fd) for fd in fds)
    for fd in fds:
        os.close(fd)  # the worker died

    async def restart() -> list[tuple[ipc.Message, list[int]]]:
        plane.media.worker_lost(plane.media.workers[0])
        assert plane.binder.handed == {} and len(plane.binder.sockets) == 4
        plane.media.worker_ready(plane.media.workers[0])
        return plane.received()

    [(forward, again)] = asyncio.run(restart())
    assert isinstance(forward, ipc.Forward)
    assert sorted(bound_port(fd) for fd in again) == ports  # same ports: the SDP holds
    assert plane.binder.sockets == {}
    for fd in again:
        os.close(fd)


def test_a_deleted_calls_worker_is_asked_to_close_its_sockets(plane: Plane) -> None:
    call = answered(plane)
    plane.media.sync(call)
    [(_forward, fds)] = plane.received()
    keys = set(plane.binder.handed)

    async def delete() -> list[ipc.Message]:
        reply = plane.cmds.handle(req("delete", from_tag="a", delete_delay=0), T0)
        assert reply["result"] == "ok", reply
        plane.media.drop(call)
        await asyncio.sleep(0.05)  # the batch after the reply
        return [m for m, _ in plane.received()]

    messages = asyncio.run(delete())
    closed = {k for m in messages if isinstance(m, ipc.Close) for k in m.keys}
    assert closed == keys and set(plane.binder.closing) == keys
    assert any(isinstance(m, ipc.Drop) for m in messages)
    for fd in fds:
        os.close(fd)


def test_ports_a_replaced_worker_still_holds_follow_once_it_exits(plane: Plane) -> None:
    # a unit replaced while it runs (worker-socket): its sockets are open until it exits
    call = answered(plane)
    plane.media.sync(call)
    [(_forward, fds)] = plane.received()

    async def replaced() -> tuple[list[int], list[int]]:
        plane.media.worker_lost(plane.media.workers[0])
        assert len(plane.binder.unbound) == 4 and plane.binder.sockets == {}
        plane.media.worker_ready(plane.media.workers[0])  # the new unit connected
        [(first, without)] = plane.received()
        assert isinstance(first, ipc.Forward)
        for fd in fds:
            os.close(fd)  # the old process exits
        for _ in range(100):
            await asyncio.sleep(0.01)
            if not plane.binder.unbound:
                break
        [(again, late)] = plane.received()
        assert isinstance(again, ipc.Forward) and again.media == first.media
        return without, late

    without, late = asyncio.run(replaced())
    assert without == [] and len(late) == 4
    assert plane.binder.sockets == {} and len(plane.binder.handed) == 4
    for fd in late:
        os.close(fd)
