"""A relayd started without ``--state-dir`` journals its calls by default and takes them
back after SIGKILL.

The default directory is pointed into the test's tmp_path through ``RELAYD_STATE_DIR``
(the operators' variable), so the host's /var/lib/relayd is never touched. Namespaces
are ``hyg-<uid>-<role>``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.netns.calls import CALLEE_TAG, CALLER_TAG, ok, set_up_call
from tests.netns.conftest import NG_PORT, PORT_MAX, PORT_MIN, relay_interfaces
from tests.support.netns import Topology, topology, unavailable
from tests.support.relayd import RelaydProcess

_SKIP = unavailable()
pytestmark = [pytest.mark.netns, pytest.mark.skipif(_SKIP is not None, reason=f"netns: {_SKIP}")]

JOURNAL = f"calls-ng-127.0.0.1-{NG_PORT}.sqlite"  # named after the ng listener


@pytest.fixture
def topo() -> Iterator[Topology]:
    with topology(prefix="hyg") as created:
        yield created


def test_the_default_journal_takes_the_calls_back_after_sigkill(
    topo: Topology, tmp_path: Path
) -> None:
    default = tmp_path / "default-state"

    def relayd(name: str) -> RelaydProcess:
        workdir = tmp_path / name
        workdir.mkdir()
        return RelaydProcess(
            workdir,
            ng_port=NG_PORT,
            port_min=PORT_MIN,
            port_max=PORT_MAX,
            interface=relay_interfaces(topo),
            netns=topo.relay,
            state_dir=None,  # no --state-dir: the default
            env={"RELAYD_STATE_DIR": str(default)},
        )

    first = relayd("first")
    second = relayd("second")
    try:
        first.start()
        assert "state.journal" in first.log() and str(default / JOURNAL) in first.log()
        with first.client() as ng:
            legs = set_up_call(ng, topo, call_id="hyg-journalled")
        time.sleep(0.6)  # the journal is written a few times a second
        assert first.proc is not None
        first.proc.kill()  # SIGKILL, as a crash
        first.proc.wait(5.0)
        assert (default / JOURNAL).exists()

        second.start()
        with second.client() as ng:
            reply = ok(ng.call("query", call_id=legs.call_id))
            assert set(reply["tags"]) == {CALLER_TAG, CALLEE_TAG}
            assert [c for c in ok(ng.call("list"))["calls"]] == [legs.call_id]
        assert "state.restored" in second.log()
    finally:
        first.stop()
        second.stop()
