"""The supervisor tells workers at the right time: an offer's early forward later, an
answer's or a re-offer's with the next batch, nothing for a deleted call; and an answer
that beats its offer's early forward keeps the answerer's queued media.

A real Supervisor, not started (no ng sockets, no worker processes), whose binder only
records and whose media plane records what it would sync; requests go through
``Supervisor.dispatch`` as the ng server hands them over.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from relayd.calls.interfaces import resolve
from relayd.calls.model import Call
from relayd.certificate import create
from relayd.config import load
from relayd.daemon import system_addresses
from relayd.supervisor import Supervisor
from tests.unit.calls import FakeBinder, pair_keys, req, sdp

OPTIONS = [
    "--config-file=none",
    "--interface=127.0.0.1",
    "--table=-1",
    "--port-min=30000",
    "--port-max=30099",
    "--delete-delay=0",
    "--state-dir=none",  # never the default journal of this host
]
CERTIFICATE = create()
BATCH = 0.05  # longer than relayd's, so that the event loop's timer granularity does not matter
EARLY = 0.2
SOURCE = ("127.0.0.1", 5060)


class Harness:
    def __init__(self) -> None:
        config = load(OPTIONS)
        interfaces = resolve(config.interfaces, system_addresses())
        self.sup = Supervisor(config, interfaces, CERTIFICATE, argv=OPTIONS)
        self.binder = FakeBinder()
        self.sup.signalling.ports.binder = self.binder
        self.sup.media.binder = self.binder  # type: ignore[assignment]
        self.synced: list[str] = []
        self.sup.updates.sync = self._sync

    def _sync(self, call: Call) -> None:
        self.synced.append(call.call_id)

    def ng(self, command: str, **keys: Any) -> dict[str, Any]:
        reply = self.sup.dispatch(req(command, from_tag="a", **keys), SOURCE)
        assert isinstance(reply, dict)  # only statistics with calls in the kernel waits
        assert reply["result"] == "ok", reply
        return reply

    def ports_of(self, tag: str) -> set[str]:
        return pair_keys(self.sup.commands.calls["c1"], tag, "127.0.0.1")


@pytest.fixture
def harness(monkeypatch: pytest.MonkeyPatch) -> Harness:
    monkeypatch.setattr("relayd.plane.updates.WORKER_BATCH_DELAY", BATCH)
    monkeypatch.setattr("relayd.plane.updates.EARLY_MEDIA_DELAY", EARLY)
    return Harness()


def test_a_ringing_offer_is_told_after_the_early_delay(harness: Harness) -> None:
    async def ringing() -> list[str]:
        harness.ng("offer", sdp=sdp())
        await asyncio.sleep(BATCH * 2)
        before = list(harness.synced)
        await asyncio.sleep(EARLY)
        return before

    assert asyncio.run(ringing()) == []  # not with the batch
    assert harness.synced == ["c1"]


def test_a_quick_answer_goes_with_the_batch_and_keeps_the_answerers_media(
    harness: Harness,
) -> None:
    async def answered() -> list[str]:
        harness.ng("offer", sdp=sdp())
        harness.binder.discarded.clear()
        harness.ng("answer", to_tag="b", sdp=sdp("198.51.100.20", 6000))
        await asyncio.sleep(BATCH * 2)
        after_batch = list(harness.synced)
        await asyncio.sleep(EARLY)
        return after_batch

    assert asyncio.run(answered()) == ["c1"]
    assert harness.synced == ["c1"]  # once: the early forward was superseded
    # the offerer's ports go out with this answer: drained; the answerer's kept
    assert set(harness.binder.discarded) == harness.ports_of("a")


def test_a_late_answer_drains_what_nobody_read(harness: Harness) -> None:
    async def late() -> None:
        harness.ng("offer", sdp=sdp(), transport_protocol="RTP/SAVP")  # no early forward
        await asyncio.sleep(EARLY * 1.5)
        harness.binder.discarded.clear()
        harness.ng("answer", to_tag="b", sdp=sdp("198.51.100.20", 6000))

    asyncio.run(late())
    assert set(harness.binder.discarded) == harness.ports_of("a") | harness.ports_of("b")


def test_without_early_media_a_quick_answer_drains_what_nobody_read_too(
    harness: Harness,
) -> None:
    # an SRTP offer has no early plan: its answer drains the same whenever it comes
    async def quick() -> None:
        harness.ng("offer", sdp=sdp(), transport_protocol="RTP/SAVP")
        harness.binder.discarded.clear()
        harness.ng("answer", to_tag="b", sdp=sdp("198.51.100.20", 6000))

    asyncio.run(quick())
    assert set(harness.binder.discarded) == harness.ports_of("a") | harness.ports_of("b")


def test_a_re_offer_within_the_dialogue_goes_with_the_batch(harness: Harness) -> None:
    async def reinvite() -> list[str]:
        harness.ng("offer", sdp=sdp())
        harness.ng("answer", to_tag="b", sdp=sdp("198.51.100.20", 6000))
        await asyncio.sleep(BATCH * 2)
        harness.synced.clear()
        harness.ng("offer", to_tag="b", sdp=sdp(direction="sendonly"))  # hold
        await asyncio.sleep(BATCH * 2)
        return list(harness.synced)

    assert asyncio.run(reinvite()) == ["c1"]


def test_a_call_deleted_before_its_forward_is_never_told(harness: Harness) -> None:
    async def cancelled() -> None:
        harness.ng("offer", sdp=sdp())
        harness.ng("delete")
        await asyncio.sleep(EARLY * 1.5)

    asyncio.run(cancelled())
    assert harness.synced == []
