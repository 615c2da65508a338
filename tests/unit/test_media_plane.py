"""What the supervisor tells a worker about a call: forwards, drops, send-only sockets.

The media plane talks to a worker over a SOCK_SEQPACKET socket pair here, with a
binder that holds no sockets (so forwards carry no descriptors) and records what
``drop_early`` discards. Calls come from the real signalling (tests/unit/calls.py).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from relayd import ipc
from relayd.calls.commands import Commands
from relayd.calls.model import Call
from relayd.plane import media as media_module
from relayd.plane.media import MediaPlane
from tests.unit.calls import B_ADDR, T0, FakeBinder, build, pair_keys, req, sdp


@dataclass
class Plane:
    media: MediaPlane
    binder: FakeBinder
    worker_end: socket.socket
    cmds: Commands

    def messages(self) -> list[ipc.Message]:
        """What the worker has been sent so far."""
        got = []
        while True:
            try:
                got.extend(ipc.decode_all(self.worker_end.recv(1 << 20, socket.MSG_DONTWAIT)))
            except BlockingIOError:
                return got

    def signal(self, command: str, **keys: Any) -> Call:
        """An ng request, then the worker told (as relayd/plane/updates.py does)."""
        reply = self.cmds.handle(req(command, from_tag="a", **keys), T0)
        assert reply["result"] == "ok", reply
        call = self.cmds.calls["c1"]
        self.media.sync(call)
        return call


@pytest.fixture
def plane() -> Iterator[Plane]:
    cmds, binder = build()
    media = MediaPlane(binder, cmds.calls, workers=1)  # type: ignore[arg-type]
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    media.workers[0].link = ours
    try:
        yield Plane(media, binder, theirs, cmds)
    finally:
        ours.close()
        theirs.close()


def test_the_offerer_sockets_are_send_only_until_the_answer(plane: Plane) -> None:
    call = plane.signal("offer", sdp=sdp())
    (early,) = plane.messages()
    assert isinstance(early, ipc.Forward)
    offerer = pair_keys(call, "a")
    assert {s.key for s in early.sockets if not s.listen} == offerer
    assert plane.media.quiet == offerer

    plane.signal("answer", to_tag="b", sdp=sdp(B_ADDR, 6000))
    (final,) = plane.messages()
    assert isinstance(final, ipc.Forward) and final.media == early.media
    assert all(s.listen for s in final.sockets)
    assert plane.media.quiet == set()


def test_before_the_answer_reply_the_offerers_unread_sockets_are_drained(plane: Plane) -> None:
    plane.signal("offer", sdp=sdp())  # the early forward: the worker only sends from A's
    plane.cmds.handle(req("answer", from_tag="a", to_tag="b", sdp=sdp(B_ADDR, 6000)), T0)
    call = plane.cmds.calls["c1"]

    plane.media.drop_early(call)

    # A's ports go out with this reply: what waits there came before anyone knew them;
    # the worker reads B's already (early media), nothing waits there
    assert set(plane.binder.discarded) == pair_keys(call, "a")


def test_early_media_waiting_for_a_quick_answer_survives_it(plane: Plane) -> None:
    # the answer comes before the early forward went out: nothing is placed yet
    plane.cmds.handle(req("offer", from_tag="a", sdp=sdp()), T0)
    plane.cmds.handle(req("answer", from_tag="a", to_tag="b", sdp=sdp(B_ADDR, 6000)), T0)
    call = plane.cmds.calls["c1"]

    plane.media.drop_early(call, keep="b")

    assert set(plane.binder.discarded) == pair_keys(call, "a")  # B's early media is kept


def test_a_ringing_backlog_nobody_read_is_dropped_at_the_answer(plane: Plane) -> None:
    # an SRTP offer gets no early forward: what B sent while ringing was never read
    plane.signal("offer", sdp=sdp(), transport_protocol="RTP/SAVP")
    assert plane.messages() == []
    plane.cmds.handle(req("answer", from_tag="a", to_tag="b", sdp=sdp(B_ADDR, 6000)), T0)
    call = plane.cmds.calls["c1"]

    plane.media.drop_early(call)

    assert set(plane.binder.discarded) == pair_keys(call, "a") | pair_keys(call, "b")


def test_at_the_offer_every_socket_of_the_call_is_drained(plane: Plane) -> None:
    plane.cmds.handle(req("offer", from_tag="a", sdp=sdp()), T0)
    call = plane.cmds.calls["c1"]

    plane.media.drop_early(call)

    assert set(plane.binder.discarded) == pair_keys(call, "") | pair_keys(call, "a")


def test_a_section_the_plan_no_longer_has_is_dropped_and_forgotten(plane: Plane) -> None:
    plane.signal("offer", via_branch="z1", sdp=sdp())
    plane.messages()
    # the offer goes out again on another branch, this time as SRTP: no early media
    plane.signal("offer", via_branch="z2", sdp=sdp(), transport_protocol="RTP/SAVP")
    assert plane.messages() == [ipc.Drop("c1 0")]
    assert plane.media.quiet == set()
    assert plane.media.placed[0] == {}


def test_a_restarted_worker_gets_send_only_sockets_planned_anew(plane: Plane) -> None:
    call = plane.signal("offer", via_branch="z1", sdp=sdp())
    plane.messages()
    plane.media.resend(plane.media.workers[0])
    (again,) = plane.messages()
    assert isinstance(again, ipc.Forward)
    assert plane.media.quiet == pair_keys(call, "a")

    # the plan changes while the worker is away: nothing stays quiet for a section gone
    plane.cmds.handle(
        req("offer", from_tag="a", via_branch="z2", sdp=sdp(), transport_protocol="RTP/SAVP"),
        T0,
    )
    plane.media.resend(plane.media.workers[0])
    assert plane.messages() == []
    assert plane.media.quiet == set()


def test_a_deleted_call_leaves_nothing_quiet(plane: Plane) -> None:
    call = plane.signal("offer", sdp=sdp())
    plane.messages()

    async def delete() -> None:
        plane.media.drop(call)
        await asyncio.sleep(0.01)  # drops go out batched, after the reply

    asyncio.run(delete())
    assert plane.messages() == [ipc.Drop("c1 0")]
    assert plane.media.quiet == set()


def test_a_restarted_worker_with_many_calls_is_fed_in_batches_between_loop_turns(
    plane: Plane, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(media_module, "RESEND_BATCH", 2)
    calls = [f"batch-{n}" for n in range(5)]
    for call_id in calls:
        plane.cmds.handle(req("offer", call_id, from_tag="a", sdp=sdp()), T0)
        plane.media.sync(plane.cmds.calls[call_id])
    plane.messages()
    turns: list[int] = []

    async def restart() -> None:
        plane.media.resend(plane.media.workers[0])
        turns.append(len(plane.messages()))  # the first batch at once
        while sum(turns) < len(calls):
            await asyncio.sleep(0)
            turns.append(len(plane.messages()))

    asyncio.run(restart())
    assert turns[0] == 2  # two calls' forwards before the loop ran again
    assert sum(turns) == 5 and len([t for t in turns if t]) == 3  # 2 + 2 + 1

    # a second restart while batches are pending: only the newer resend goes on
    async def twice() -> None:
        plane.media.resend(plane.media.workers[0])
        plane.media.resend(plane.media.workers[0])
        for _ in range(10):
            await asyncio.sleep(0)

    plane.messages()
    asyncio.run(twice())
    assert len(plane.messages()) == 5 + 2  # the first resend's first batch, then all of the second
