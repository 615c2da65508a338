"""When the supervisor tells the workers: batches after the reply, early forwards later.

A real Supervisor (not started: no ng sockets, no workers) whose media plane records
what it is asked to sync, on a real event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from relayd.certificate import create
from relayd.config import load
from relayd.interfaces import resolve
from relayd.model import Call
from relayd.ng.commands import Teardown
from relayd.supervisor import Supervisor, system_addresses

OPTIONS = [
    "--config-file=none",
    "--interface=127.0.0.1",
    "--table=-1",
    "--port-min=30000",
    "--port-max=30099",
]
CERTIFICATE = create()
# longer than relayd's, so that the event loop's timer granularity does not matter
BATCH = 0.05
EARLY = 0.2


class Recorder:
    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        self.synced: list[tuple[str, float]] = []  # call-id, loop time
        supervisor.media.sync = self._sync  # type: ignore[method-assign]

    def _sync(self, call: Call) -> None:
        self.synced.append((call.call_id, asyncio.get_running_loop().time()))

    def call(self, call_id: str) -> Call:
        call = Call(call_id, 0.0, 0.0)
        self.supervisor.commands.calls[call_id] = call
        return call

    def delete(self, call: Call) -> None:
        del self.supervisor.commands.calls[call.call_id]
        self.supervisor._teardown(Teardown(call, "deleted"))


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorder]:
    monkeypatch.setattr("relayd.supervisor.WORKER_BATCH_DELAY", BATCH)
    monkeypatch.setattr("relayd.supervisor.EARLY_MEDIA_DELAY", EARLY)
    config = load(OPTIONS)
    interfaces = resolve(config.interfaces, system_addresses())
    yield Recorder(Supervisor(config, interfaces, CERTIFICATE, argv=OPTIONS))


def test_a_call_deleted_before_its_batch_leaves_no_extra_batch_behind(
    recorder: Recorder,
) -> None:
    sup = recorder.supervisor

    async def signalling() -> float:
        loop = asyncio.get_running_loop()
        first = recorder.call("c0")
        sup._sync_soon(first)
        recorder.delete(first)  # a short call: never sent
        await asyncio.sleep(BATCH / 2)
        sup._sync_soon(recorder.call("c1"))  # goes with the batch c0 opened
        await asyncio.sleep(BATCH * 0.6)  # that batch has gone out
        signalled = loop.time()
        sup._sync_soon(recorder.call("c2"))  # opens the next one
        await asyncio.sleep(BATCH * 3)
        return signalled

    signalled = asyncio.run(signalling())
    assert [call_id for call_id, _ in recorder.synced] == ["c1", "c2"]
    # c2 waited for its batch: no second timer, started for c1 because c0 had left the
    # batch empty, sent it early (a worker woken once per call instead of per batch)
    assert recorder.synced[1][1] - signalled >= BATCH * 0.9


def test_an_early_forward_waits_and_an_answer_within_it_replaces_it(recorder: Recorder) -> None:
    sup = recorder.supervisor

    async def signalling() -> None:
        answered, ringing = recorder.call("answered"), recorder.call("ringing")
        sup._sync_early(answered)
        sup._sync_early(ringing)
        await asyncio.sleep(BATCH / 2)
        sup._sync_soon(answered)  # its answer, within the early delay
        await asyncio.sleep(EARLY * 2)

    asyncio.run(signalling())
    order = [call_id for call_id, _ in recorder.synced]
    assert order == ["answered", "ringing"]  # each once: the answer's forward, the early one
    (_, answered_at), (_, ringing_at) = recorder.synced
    assert ringing_at - answered_at >= EARLY - BATCH * 2
