"""A worker's once-a-second report (relayd/worker/loop.py): the sockets that changed, in
messages the link takes however many changed at once (thousands when that many calls
start in the same second)."""

from __future__ import annotations

import itertools
import socket

from relayd import ipc
from relayd.worker.loop import Worker, report_phase
from relayd.worker.session import Leg
from relayd.worker.sockets import MediaSocket


def test_a_report_of_thousands_of_sockets_goes_out_in_messages_the_link_takes() -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    stand_in = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # open: not "closed since"
    try:
        worker = Worker(ours, 0)
        count = 4500
        for n in range(count):
            leg = Leg(f"203.0.113.1 {10000 + n}", endpoint=("198.51.100.7", 20000 + n))
            leg.packets, leg.bytes, leg.confirmed, leg.last_packet = 1, 172, True, 1.0
            worker.active.append(MediaSocket(stand_in, leg, dirty=True))
        worker.report(2.0)
        theirs.setblocking(False)
        reported: list[str] = []
        while True:
            try:
                data = theirs.recv(ipc.MAX_MESSAGE + 1)
            except BlockingIOError:
                break
            assert len(data) <= ipc.MAX_MESSAGE
            message = ipc.decode(data)
            assert isinstance(message, ipc.Stats)
            reported += [s.key for s in message.sockets]
        assert len(reported) == count == len(set(reported))  # every one, once, none dropped
    finally:
        stand_in.close()
        ours.close()
        theirs.close()


def test_a_report_with_nothing_changed_still_goes_out_with_the_cpu_time() -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        Worker(ours, 3).report(2.0)
        theirs.setblocking(False)
        message = ipc.decode(theirs.recv(ipc.MAX_MESSAGE + 1))
        assert isinstance(message, ipc.Stats)
        assert (message.worker, message.sockets, message.now) == (3, (), 2.0)
        try:
            theirs.recv(ipc.MAX_MESSAGE + 1)
            raise AssertionError("a second message")
        except BlockingIOError:
            pass
    finally:
        ours.close()
        theirs.close()


def test_workers_report_at_phases_of_their_own() -> None:
    """Workers started together must not all report in the same instant: relayd reads every
    report, and with many workers on a core, ng waited behind the lot once a second."""
    for count in (2, 4, 24, 64):
        phases = sorted(report_phase(i) for i in range(count))
        assert all(0.0 <= p < 1.0 for p in phases)
        gaps = [b - a for a, b in itertools.pairwise(phases)]
        gaps.append(1.0 + phases[0] - phases[-1])
        assert min(gaps) > 0.3 / count, (count, min(gaps))  # never bunched: near 1/count
