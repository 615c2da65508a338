"""Fixtures for the namespace tier: a fresh caller ⇄ relay ⇄ callee topology per test.

``topo`` builds the namespaces (see :mod:`tests.support.netns`) and removes them
afterwards, whatever happened; ``start_relay`` runs relayd inside the relay
namespace with two logical interfaces, ``caller`` and ``callee``, each with an
IPv4 and an IPv6 address, and stops it before the namespaces go. relayd's log
is attached to the report of a failing test.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Protocol

import pytest

from tests.netns.calls import CALLEE_PORT, CALLER_PORT
from tests.support.netns import Topology, topology, unavailable
from tests.support.relayd import RelaydProcess
from tests.support.rtp_peer import Peer

NG_PORT = 2223
PORT_MIN = 30000
PORT_MAX = 30099

StartRelay = Callable[..., RelaydProcess]


class Stoppable(Protocol):
    def stop(self) -> object: ...

    def log(self) -> str: ...


@contextlib.contextmanager
def stopped_after(request: pytest.FixtureRequest, name: str) -> Iterator[list[Stoppable]]:
    """A list for the daemons a test starts: each is stopped when the test ends, and a
    failing test's report gets its log (the last 20,000 characters)."""
    started: list[Stoppable] = []
    try:
        yield started
    finally:
        for daemon in started:
            daemon.stop()
            report = getattr(request.node, "rep_call", None)
            if report is not None and report.failed:
                request.node.add_report_section("call", f"{name} log", daemon.log()[-20000:])


def relay_interfaces(topo: Topology) -> list[str]:
    return [
        f"caller/{topo.caller.relay4}",
        f"caller/{topo.caller.relay6}",
        f"callee/{topo.callee.relay4}",
        f"callee/{topo.callee.relay6}",
    ]


@pytest.fixture
def topo() -> Iterator[Topology]:
    reason = unavailable()
    if reason is not None:
        pytest.skip(reason)
    with topology() as created:
        yield created


@pytest.fixture
def peers(topo: Topology) -> Iterator[tuple[Peer, Peer]]:
    """The caller's and the callee's RTP sockets (tests/netns/calls.py's ports)."""
    with (
        Peer(topo.caller.ns, topo.caller.ip4, CALLER_PORT) as caller,
        Peer(topo.callee.ns, topo.callee.ip4, CALLEE_PORT) as callee,
    ):
        yield caller, callee


@contextlib.contextmanager
def relay_starter(
    topo: Topology,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    *,
    ng_port: int = NG_PORT,
    port_min: int = PORT_MIN,
    port_max: int = PORT_MAX,
    nofile: int | None = None,
) -> Iterator[StartRelay]:
    """What the ``start_relay`` fixtures hand out: start relayd in the relay namespace with
    these ports (and the options given), every one stopped, its log attached, at the end."""
    with stopped_after(request, "relayd") as started:

        def start(*extra: str) -> RelaydProcess:
            workdir = tmp_path / f"relayd-{len(started)}"
            workdir.mkdir()
            daemon = RelaydProcess(
                workdir,
                ng_port=ng_port,
                port_min=port_min,
                port_max=port_max,
                interface=relay_interfaces(topo),
                extra=extra,
                netns=topo.relay,
                nofile=nofile,
            )
            started.append(daemon)
            daemon.start()
            return daemon

        yield start


@pytest.fixture
def start_relay(
    topo: Topology, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[StartRelay]:
    with relay_starter(topo, tmp_path, request) as start:
        yield start


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Keep each phase's report on the item, so fixtures can tell a failed test."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
