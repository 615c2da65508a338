"""rtpengine's own daemon test suite, offline: its ng conversations replayed against relayd.

CI cannot fetch ``t/auto-daemon-tests.pl`` (sipwise/rtpengine, tag mr10.5.3.5), so
``tests/data/suite/scenarios/`` keeps what its in-scope scenarios sent to rtpengine
10.5 and what rtpengine answered (``scripts/rtpengine_suite.py --daemon rtpengine
--record``; see ``tests/data/suite/README.md``). Each scenario is one test: its
requests go, in order, through relayd's ng core in process (the oracle corpus'
:class:`InProcessRelayd`), configured with the suite's own daemon options
(``SUITE_ARGS`` of the script: interfaces 203.0.113.1 and 2001:db8:4321::1), and the
replies must equal rtpengine's under ``tests/support/suite.py``'s comparison.

Only the port range differs from the suite's daemon: relayd draws from
41000-41999, where no request of the suite names a port, while rtpengine's recorded
ports came from 30000-40000; ports are compared as placeholders anyway, and the
distinct range keeps a random draw from ever matching a port the suite sends.

``DIFFERS`` lists the scenarios where relayd answers differently today, one reason
each; they are strict xfails, so a fix that makes one pass fails the run until its
entry is removed.
"""

from __future__ import annotations

import pytest

from relayd.certificate import Certificate, load_or_create
from relayd.config import Config, load
from tests.support import oracle, suite
from tests.support.scripts import load_script
from tests.support.suite import Scenario
from tests.unit.test_oracle_corpus import InProcessRelayd

HARNESS = load_script("scripts/rtpengine_suite.py", "rtpengine_suite")
PORTS = oracle.RELAYD_PORTS
ARGV = [
    *HARNESS.SUITE_ARGS,
    *HARNESS.RELAYD_EXTRA,
    f"--port-min={PORTS[0]}",
    f"--port-max={PORTS[1]}",
]

SCENARIOS = suite.load_scenarios()

# Scenario number -> why relayd's replies differ from rtpengine's today (the first
# difference; later steps may differ too). Strict xfails: remove the entry with the fix.
# Each is a codec Debian's rtpengine 10.5 transcodes and relayd cannot (relayd's workers
# transcode PCMU, PCMA, G722 and opus): once an offer adds a codec, both strip a codec they
# cannot transcode from it, so relayd's offer lacks it and what follows from it.
_UNSUPPORTED = (
    "relayd cannot transcode {}: it strips it from the offer, as 10.5 strips one it cannot"
)
DIFFERS: dict[int, str] = {
    2: _UNSUPPORTED.format("speex (and so answers with G722, the offerer's first it can)"),
    79: _UNSUPPORTED.format("speex (and so adds no telephone-event/16000)"),
    222: _UNSUPPORTED.format("speex (and so adds no telephone-event/16000)"),
    232: "a delete (kept for delete-delay), then an offer with a new to-tag: 10.5 answers the "
    "offerer with the ports it had before the delete, relayd with new ones (the play media "
    "that follows answers alike)",
}


def _param(scenario: Scenario) -> object:
    marks = []
    if scenario.number in DIFFERS:
        marks.append(pytest.mark.xfail(reason=DIFFERS[scenario.number], strict=True))
    return pytest.param(scenario, id=scenario.id, marks=marks)


@pytest.fixture(scope="module")
def config() -> Config:
    return load(ARGV)


@pytest.fixture(scope="module")
def certificate(config: Config) -> Certificate:
    return load_or_create(config.tls_certificate or None, config.tls_private_key or None)


@pytest.mark.parametrize("scenario", [_param(s) for s in SCENARIOS])
def test_relayd_answers_the_suite_as_rtpengine(
    scenario: Scenario, config: Config, certificate: Certificate
) -> None:
    relayd = InProcessRelayd(config, certificate)
    actual = suite.replay(scenario, relayd.exchange)
    problems = suite.differences(scenario, actual, PORTS)
    problems += [f"relayd {p}" for p in oracle.port_problems(actual, PORTS, suite.INTERFACES)]
    if relayd.crashes:
        problems.append("relayd crashed:\n" + "\n".join(relayd.crashes))
    title = f"#{scenario.number} L{scenario.line} {scenario.title} [{scenario.klass}]"
    assert not problems, title + "\n\n" + "\n\n".join(problems)


def test_corpus_is_the_suites_in_scope_scenarios() -> None:
    """One recording per in-scope scenario, per transcoding one and per media-playback one,
    each passed by rtpengine, none feeding replies back."""
    extra = ("transcoding", "media playback")
    assert len([s for s in SCENARIOS if s.klass not in extra]) == 134
    assert len([s for s in SCENARIOS if s.klass == "transcoding"]) == 54
    assert len([s for s in SCENARIOS if s.klass == "media playback"]) == 9
    assert len({s.number for s in SCENARIOS}) == len(SCENARIOS)
    assert set(DIFFERS) <= {s.number for s in SCENARIOS}
    for scenario in SCENARIOS:
        assert scenario.passed, scenario.id
        assert scenario.steps[0].command == "ping", scenario.id
        assert not suite.replies_fed_back(scenario), scenario.id


def test_replay_config_is_the_suites(config: Config) -> None:
    """relayd runs with the suite daemon's interfaces; only the port range is ours."""
    assert tuple(spec.local for spec in config.interfaces) == suite.INTERFACES
    assert (config.port_min, config.port_max) == PORTS
    assert not set(range(PORTS[0], PORTS[1] + 1)) & set().union(
        *(s.request_ports() for s in SCENARIOS)
    )
