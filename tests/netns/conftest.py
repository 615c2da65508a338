"""Fixtures for the namespace tier: a fresh caller ⇄ relay ⇄ callee topology per test.

``topo`` builds the namespaces (see :mod:`tests.support.netns`) and removes them
afterwards, whatever happened; ``start_relay`` runs relayd inside the relay
namespace with two logical interfaces, ``caller`` and ``callee``, each with an
IPv4 and an IPv6 address, and stops it before the namespaces go. relayd's log
is attached to the report of a failing test.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import pytest

from tests.support.netns import Topology, topology, unavailable
from tests.support.relayd import RelaydProcess

NG_PORT = 2223
PORT_MIN = 30000
PORT_MAX = 30099

StartRelay = Callable[..., RelaydProcess]


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
def start_relay(
    topo: Topology, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[StartRelay]:
    started: list[RelaydProcess] = []

    def start(*extra: str) -> RelaydProcess:
        workdir = tmp_path / f"relayd-{len(started)}"
        workdir.mkdir()
        daemon = RelaydProcess(
            workdir,
            ng_port=NG_PORT,
            port_min=PORT_MIN,
            port_max=PORT_MAX,
            interface=relay_interfaces(topo),
            extra=extra,
            netns=topo.relay,
        )
        started.append(daemon)
        daemon.start()
        return daemon

    try:
        yield start
    finally:
        for daemon in started:
            daemon.stop()
            report = getattr(request.node, "rep_call", None)
            if report is not None and report.failed:
                request.node.add_report_section("call", "relayd log", daemon.log()[-20000:])


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Keep each phase's report on the item, so fixtures can tell a failed test."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
