"""KernelPath.settle: the conntrack entries of forwards handed over from the workers are
deleted once more a moment later; forwards adopted at start-up (no worker relayed them)
are left alone.

A real KernelPath whose forwarder only records what it is asked.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import pytest

from relayd.calls.model import Endpoint
from relayd.nft import Counter, Forward, ForwardKey
from relayd.nft.forward import ReconcileResult
from relayd.plane import kernel
from relayd.plane.kernel import KernelLeg, KernelPath

CALLER, CALLEE = Endpoint("192.0.2.10", 6000), Endpoint("198.51.100.20", 7000)
RELAY_A, RELAY_B = Endpoint("203.0.113.1", 30000), Endpoint("203.0.113.1", 30002)
LEGS = [
    KernelLeg("203.0.113.1:30000", CALLER, RELAY_A, RELAY_B, CALLEE),
    KernelLeg("203.0.113.1:30002", CALLEE, RELAY_B, RELAY_A, CALLER),
]


class Forwarder:
    def __init__(self) -> None:
        self.forgotten: list[set[ForwardKey]] = []

    def reconcile(self, wanted: Iterable[Forward]) -> ReconcileResult:
        return ReconcileResult(0, len(list(wanted)), 0)

    def install(self, forwards: Iterable[Forward]) -> None:
        pass

    def counters(self) -> dict[ForwardKey, Counter]:
        return {}

    def forget_flows(self, forwards: Iterable[Forward]) -> None:
        self.forgotten.append({f.key for f in forwards})


def kernel_path() -> tuple[KernelPath, Forwarder]:
    path = KernelPath(0, 0)
    forwarder = Forwarder()
    path.forwarder = forwarder  # type: ignore[assignment]
    path.enabled = True
    return path, forwarder


def test_an_offload_is_settled_after_its_delay() -> None:
    path, forwarder = kernel_path()
    path.sync("c1", LEGS)
    path.settle(path._settling[0][0] + 0.2)
    assert forwarder.forgotten == []
    path.settle(path._settling[0][0] + 0.31)  # not exactly 0.3: (at + 0.3) - at may be less
    assert forwarder.forgotten == [{record.key for record in path.installed["c1"]}]


def test_forwards_adopted_at_start_up_are_not_settled() -> None:
    path, forwarder = kernel_path()
    assert path.adopt({"c1": LEGS}) == {"c1": {leg.socket for leg in LEGS}}
    path.settle(time.monotonic() + 10.0)
    assert forwarder.forgotten == []


def test_forwards_adopted_when_the_kernel_path_comes_back_are_settled() -> None:
    """After a failure the workers relayed every stream until the table came back; one
    may still send a packet from a socket the kernel has just taken over."""
    path, forwarder = kernel_path()
    path.sync("c1", LEGS)
    path._settling.clear()
    path._disable("nft failed: table deleted")
    path.enabled = True  # start() again: the table is back
    assert path.adopt({"c1": LEGS}) == {"c1": {leg.socket for leg in LEGS}}
    [(at, _)] = path._settling
    path.settle(at + 0.2)
    assert forwarder.forgotten == []
    path.settle(at + 0.31)
    assert forwarder.forgotten == [{record.key for record in path.installed["c1"]}]
    path.settle(at + 1.0)
    assert len(forwarder.forgotten) == 1  # once


def test_the_heap_is_given_back_once_a_burst_of_changes_is_over(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """libnftables' transactions leave free room between the heap's lasting blocks: after a
    burst (128 forwards or more added or removed, nothing left to settle) it goes back to
    the system, at most once a second."""
    released: list[float] = []
    monkeypatch.setattr(kernel, "release_heap", lambda: released.append(time.monotonic()))
    path, _ = kernel_path()
    path.forwarder.remove = lambda keys: None  # type: ignore[method-assign]
    for n in range(63):  # 126 forwards: too few
        path.sync(f"c{n}", [_leg(n, 0), _leg(n, 1)])
    at = path._settling[-1][0]
    path.settle(at + 0.31)
    assert released == []
    path.sync("late", [_leg(200, 0), _leg(200, 1)])  # 128 now
    at = path._settling[-1][0]
    path.settle(at + 0.1)  # "late" is not settled yet: the burst goes on
    assert released == []
    path.settle(at + 0.31)
    assert len(released) == 1
    for call_id in [*(f"c{n}" for n in range(63)), "late"]:  # removals count too
        path.drop(call_id)
    path.settle(at + 0.5)  # within the second: not yet
    assert len(released) == 1
    path.settle(at + 1.4)
    assert len(released) == 2
    path.settle(at + 3.0)  # nothing changed since
    assert len(released) == 2


def _leg(n: int, side: int) -> KernelLeg:
    """A direction of call ``n``'s stream, relay ports of its own."""
    a, b = Endpoint("203.0.113.1", 20000 + 4 * n), Endpoint("203.0.113.1", 20002 + 4 * n)
    if side:
        return KernelLeg(f"203.0.113.1 {b.port}", CALLEE, b, a, CALLER)
    return KernelLeg(f"203.0.113.1 {a.port}", CALLER, a, b, CALLEE)
