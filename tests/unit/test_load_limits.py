"""Load limits on new calls: max-sessions, max-load, max-cpu, max-bandwidth (relayd/calls/load.py).

Every expectation was asked of rtpengine 10.5 (/usr/bin/rtpengine started with each limit, and
changed through rtpengine-ctl's ``set``): the refusal only of an offer that creates a call, the
limits' order, ``message`` with ``supports: ["load limit"]`` and "Parallel session limit reached"
as the error without it, ``rejectedsessions`` only for max-sessions, no ``errorcount`` for a
``load limit`` reply.
"""

from __future__ import annotations

import pytest

from relayd.calls.commands import Commands
from relayd.calls.load import LoadSample, load_refusal
from relayd.calls.timers import Limits
from tests.unit.calls import B_ADDR, T0, build, req, sdp

BUSY = LoadSample(load=4.07, cpu=52.0, bandwidth=16855.0)


def _offer(cmds: Commands, call_id: str, *, supports: bool = True) -> dict[str, object]:
    keys = {"supports": ["load limit"]} if supports else {}
    return cmds.handle(req("offer", call_id, from_tag="a", sdp=sdp(), **keys), T0)


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        (Limits(max_load=0.01), "Load limit exceeded"),
        (Limits(max_load=2.5), "Load limit exceeded"),  # the average itself, not per core
        (Limits(max_cpu=0.5), "CPU usage limit exceeded"),
        (Limits(max_bandwidth=100), "Bandwidth limit exceeded"),
        (Limits(max_bandwidth=16855), "Bandwidth limit exceeded"),  # at the limit already
        (Limits(max_load=0.01, max_cpu=0.5, max_bandwidth=1), "Load limit exceeded"),
        (Limits(max_cpu=0.5, max_bandwidth=1), "CPU usage limit exceeded"),
    ],
)
def test_each_limit_refuses_a_new_call_with_its_message(limits: Limits, message: str) -> None:
    cmds, binder = build(limits=limits)
    cmds.load = BUSY
    assert _offer(cmds, "c1") == {"result": "load limit", "message": message}
    assert _offer(cmds, "c2", supports=False) == {
        "result": "error",
        "error-reason": "Parallel session limit reached",
    }
    assert cmds.calls == {}
    assert binder.bound == []
    assert cmds.totals.rejected == 0  # only max-sessions counts a rejected session
    assert cmds.totals.errors == 1  # the error reply; the "load limit" reply is none


@pytest.mark.parametrize(
    "limits",
    [
        Limits(),
        Limits(max_load=4.07),  # load and CPU: above the limit only
        Limits(max_cpu=52.0),
        Limits(max_bandwidth=16856),
        Limits(max_load=0, max_cpu=0, max_bandwidth=0),
    ],
)
def test_under_or_without_a_limit_calls_go_on(limits: Limits) -> None:
    cmds, _ = build(limits=limits)
    cmds.load = BUSY
    assert _offer(cmds, "c1")["result"] == "ok"


def test_max_sessions_comes_first_and_counts_as_rejected() -> None:
    cmds, _ = build(limits=Limits(max_sessions=0, max_load=0.01))
    cmds.load = BUSY
    assert _offer(cmds, "c1") == {
        "result": "load limit",
        "message": "Parallel session limit reached",
    }
    assert cmds.totals.rejected == 1
    assert cmds.totals.errors == 0


def test_existing_calls_go_on_under_load() -> None:
    """A re-offer (a re-INVITE), an answer and a query of a call set up before are answered."""
    cmds, _ = build()
    assert _offer(cmds, "c1")["result"] == "ok"
    cmds.set_limits(Limits(max_load=0.01, max_cpu=0.5, max_bandwidth=1))
    cmds.load = BUSY
    answer = req("answer", "c1", from_tag="a", to_tag="b", sdp=sdp(B_ADDR))
    assert cmds.handle(answer, T0 + 1)["result"] == "ok"
    reoffer = req("offer", "c1", from_tag="b", to_tag="a", sdp=sdp(B_ADDR), supports=["load limit"])
    assert cmds.handle(reoffer, T0 + 2)["result"] == "ok"
    assert cmds.handle(req("query", "c1"), T0 + 3)["result"] == "ok"
    assert _offer(cmds, "c2")["result"] == "load limit"


def test_a_sample_under_the_limits_lets_calls_in_again() -> None:
    cmds, _ = build(limits=Limits(max_cpu=50.0))
    cmds.load = BUSY
    assert _offer(cmds, "c1")["result"] == "load limit"
    cmds.load = LoadSample(load=4.07, cpu=12.5, bandwidth=16855.0)
    assert _offer(cmds, "c1")["result"] == "ok"


def test_load_refusal_before_the_first_sample() -> None:
    assert load_refusal(Limits(max_load=0.5, max_cpu=1.0, max_bandwidth=1), LoadSample()) is None
