"""When the media workers are told (relayd/plane/updates.py): batches after the reply, early
forwards later, nothing for calls that are gone. On a real event loop; what would be
sent is recorded with the loop's time."""

from __future__ import annotations

import asyncio

import pytest

from relayd.calls.model import Call
from relayd.plane.updates import WorkerUpdates

# longer than relayd's, so that the event loop's timer granularity does not matter
BATCH = 0.05
EARLY = 0.2


class Recorder:
    def __init__(self) -> None:
        self.calls: dict[str, Call] = {}
        self.synced: list[tuple[str, float]] = []  # call-id, loop time
        self.updates = WorkerUpdates(self.calls, self._sync)

    def _sync(self, call: Call) -> None:
        if call.call_id == "broken":
            raise RuntimeError("a bug in one call's plan")
        self.synced.append((call.call_id, asyncio.get_running_loop().time()))

    def call(self, call_id: str) -> Call:
        call = self.calls[call_id] = Call(call_id, 0.0, 0.0)
        return call

    def delete(self, call: Call) -> None:
        del self.calls[call.call_id]
        self.updates.forget(call)

    @property
    def order(self) -> list[str]:
        return [call_id for call_id, _ in self.synced]


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    monkeypatch.setattr("relayd.plane.updates.WORKER_BATCH_DELAY", BATCH)
    monkeypatch.setattr("relayd.plane.updates.EARLY_MEDIA_DELAY", EARLY)
    return Recorder()


def test_a_call_deleted_before_its_batch_leaves_no_extra_batch_behind(
    recorder: Recorder,
) -> None:
    updates = recorder.updates

    async def signalling() -> float:
        loop = asyncio.get_running_loop()
        first = recorder.call("c0")
        updates.soon(first)
        recorder.delete(first)  # a short call: never sent
        await asyncio.sleep(BATCH / 2)
        updates.soon(recorder.call("c1"))  # goes with the batch c0 opened
        await asyncio.sleep(BATCH * 0.6)  # that batch has gone out
        signalled = loop.time()
        updates.soon(recorder.call("c2"))  # opens the next one
        await asyncio.sleep(BATCH * 3)
        return signalled

    signalled = asyncio.run(signalling())
    assert recorder.order == ["c1", "c2"]
    # c2 waited for its batch: no second timer, started for c1 because c0 had left the
    # batch empty, sent it early (a worker woken once per call instead of per batch)
    assert recorder.synced[1][1] - signalled >= BATCH * 0.9


def test_an_early_forward_waits_and_an_answer_within_it_replaces_it(recorder: Recorder) -> None:
    updates = recorder.updates

    async def signalling() -> None:
        answered, ringing = recorder.call("answered"), recorder.call("ringing")
        updates.early(answered)
        updates.early(ringing)
        assert updates.early_pending(answered)
        await asyncio.sleep(BATCH / 2)
        updates.soon(answered)  # its answer, within the early delay
        assert not updates.early_pending(answered)
        await asyncio.sleep(EARLY * 2)

    asyncio.run(signalling())
    assert recorder.order == ["answered", "ringing"]  # each once: the answer's, the early one
    (_, answered_at), (_, ringing_at) = recorder.synced
    assert ringing_at - answered_at >= EARLY - BATCH * 2


def test_no_early_forward_for_a_call_cancelled_but_kept_for_delete_delay(
    recorder: Recorder,
) -> None:
    async def signalling() -> None:
        cancelled = recorder.call("cancelled")
        recorder.updates.early(cancelled)
        cancelled.deleted_at = 1.0  # delete received; the registry keeps it a while
        await asyncio.sleep(EARLY * 1.5)

    asyncio.run(signalling())
    assert recorder.synced == []


def test_one_calls_failure_does_not_cost_the_rest_of_its_batch(recorder: Recorder) -> None:
    async def signalling() -> None:
        for call_id in ("a", "broken", "b"):
            recorder.updates.soon(recorder.call(call_id))
        await asyncio.sleep(BATCH * 2)

    asyncio.run(signalling())
    assert recorder.order == ["a", "b"]


def test_nothing_goes_out_after_cancel(recorder: Recorder) -> None:
    async def signalling() -> None:
        recorder.updates.soon(recorder.call("a"))
        recorder.updates.early(recorder.call("b"))
        recorder.updates.cancel()
        await asyncio.sleep(EARLY * 1.5)

    asyncio.run(signalling())
    assert recorder.synced == []
