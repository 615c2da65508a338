"""rtpengine's daemon test suite, offline: its recorded ng conversations and how they compare.

``scripts/rtpengine_suite.py --daemon rtpengine --record DIR`` ran every in-scope
scenario of ``t/auto-daemon-tests.pl`` (sipwise/rtpengine at ``mr10.5.3.5``) against
rtpengine 10.5 and wrote what the suite's client sent and what the daemon answered,
one JSON file per scenario (``tests/data/suite/scenarios/``; the format is in
``tests/data/suite/README.md``). This module loads them, sends a scenario's requests
in order through an ``exchange`` callable (``tests/unit/test_suite_corpus.py`` hands
it relayd's ng core in process) and compares the replies with rtpengine's through
``tests/support/oracle.py``'s normalisation.

What is compared, and what not (and why):

* every reply's ``result``, ``error-reason``, ``warning``, ``message`` and the
  encoding, as the oracle corpus does;
* every ``sdp``, line by line, after two steps: line endings are unified first (the
  suite writes its SDPs with LF; rtpengine keeps LF on the lines it copies and writes
  CRLF on those it makes, and the suite itself compares after turning CRLF into LF),
  then the oracle's placeholders replace ports in the daemon's range, ICE
  credentials, candidate foundations, SDES keys, fingerprints and the loop marker;
  ports that a request carries stay literal even inside the range;
* not the rest of ``delete`` (and ``query``) replies: creation time, last signal,
  SSRC and packet statistics depend on the clock and on the RTP the suite sent
  through the live daemon, which the in-process replay does not carry.

Requests are replayed as they were sent. The suite keeps values of earlier replies
(ports, ICE credentials, SDES keys) for the RTP it sends and for its expected SDP
patterns, not for the SDPs it sends at this tag: :func:`replies_fed_back` checks that
no request carries a port or generated value of an earlier reply, which would be
rtpengine's and mean nothing to another daemon.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relayd.ng import bencode
from tests.support.oracle import Exchange, Normaliser, StepResult, compare, decode_reply

__all__ = [
    "INTERFACES",
    "RTPENGINE_PORTS",
    "SCENARIO_DIR",
    "TAG",
    "Scenario",
    "SuiteStep",
    "crlf_sdp",
    "differences",
    "load_scenarios",
    "replay",
    "replies_fed_back",
]

REPO = Path(__file__).resolve().parents[2]
SCENARIO_DIR = REPO / "tests" / "data" / "suite" / "scenarios"
TAG = "mr10.5.3.5"

# The suite's daemon: -i 203.0.113.1 -i 2001:db8:4321::1, rtpengine's default port range.
INTERFACES = ("203.0.113.1", "2001:db8:4321::1")
RTPENGINE_PORTS = (30000, 40000)

_PORT = re.compile(r"^(?:m=\S+ |a=rtcp:)(\d+)|^a=candidate:\S+ \d+ \S+ \d+ \S+ (\d+)|rport (\d+)")


@dataclass(frozen=True, slots=True)
class SuiteStep:
    """One request of a scenario, as sent, and rtpengine's reply to it."""

    command: str | None
    request: Mapping[str, Any] | None  # ``sdp`` joined back into the body that was sent
    raw: str | None
    encoding: str  # of the request: "bencode" or "json"
    expected: StepResult

    def body(self) -> bytes:
        """The ng body (cookie excluded) exactly as the suite's client sent it."""
        if self.raw is not None:
            return self.raw.encode("utf-8", "surrogateescape")
        if self.encoding == "json":
            return json.dumps(self.request).encode()
        return bencode.encode(self.request)

    def sdp(self) -> str | None:
        sdp = (self.request or {}).get("sdp")
        return sdp if isinstance(sdp, str) else None


@dataclass(frozen=True, slots=True)
class Scenario:
    """One scenario of the suite: from one ``new_call`` to the next."""

    number: int
    line: int
    title: str
    klass: str
    passed: bool  # rtpengine's verdict when the scenario was recorded
    steps: tuple[SuiteStep, ...]

    @property
    def id(self) -> str:
        """``NNN-title-in-words``: the test id (number first, so ``-k 054`` finds it)."""
        words = re.sub(r"[^A-Za-z0-9]+", "-", self.title).strip("-")
        return f"{self.number:03d}-{words}"

    def request_sdps(self) -> list[str]:
        """The SDP bodies the scenario sends, CRLF-terminated as the normaliser reads them."""
        return [crlf_sdp(sdp) for step in self.steps if (sdp := step.sdp()) is not None]

    def request_ports(self) -> set[int]:
        """Ports named in the SDPs the scenario sends (m=, a=rtcp:, candidates, rport)."""
        return set().union(*(_ports(sdp) for sdp in self.request_sdps()))


def _joined(value: object) -> object:
    """A stored ``sdp`` (``body.split("\\n")``) back to the body."""
    return "\n".join(value) if isinstance(value, list) else value


def _load(path: Path) -> Scenario:
    document = json.loads(path.read_text())
    steps = []
    for step in document["steps"]:
        request = step.get("request")
        if request is not None and "sdp" in request:
            request = dict(request, sdp=_joined(request["sdp"]))
        reply = dict(step["reply"])
        if "sdp" in reply:
            reply["sdp"] = _joined(reply["sdp"])
        steps.append(
            SuiteStep(
                command=step.get("command"),
                request=request,
                raw=step.get("raw"),
                encoding=step.get("encoding", "bencode"),
                expected=StepResult(step.get("command"), reply, step["reply-encoding"]),
            )
        )
    return Scenario(
        number=document["scenario"],
        line=document["line"],
        title=document["title"],
        klass=document["class"],
        passed=document["passed"],
        steps=tuple(steps),
    )


def load_scenarios(directory: Path = SCENARIO_DIR) -> list[Scenario]:
    """Every recorded scenario, by number."""
    return sorted(
        (_load(path) for path in directory.glob("scenario-*.json")), key=lambda s: s.number
    )


def replay(scenario: Scenario, exchange: Exchange) -> list[StepResult]:
    """Send the scenario's requests through ``exchange`` in order; the replies."""
    results = []
    for step in scenario.steps:
        reply, encoding = decode_reply(exchange(step.body()))
        results.append(StepResult(step.command, reply, encoding))
    return results


def crlf_sdp(sdp: str) -> str:
    """``sdp`` with every line ending CRLF: the suite compares SDPs regardless of them."""
    return sdp.replace("\r\n", "\n").replace("\n", "\r\n")


def _unified(results: Sequence[StepResult]) -> list[StepResult]:
    out = []
    for result in results:
        sdp = result.reply.get("sdp")
        reply = dict(result.reply, sdp=crlf_sdp(sdp)) if isinstance(sdp, str) else result.reply
        out.append(StepResult(result.command, reply, result.encoding))
    return out


def differences(
    scenario: Scenario, actual: Sequence[StepResult], actual_range: tuple[int, int]
) -> list[str]:
    """Every step on which ``actual`` differs from rtpengine's recorded replies."""
    sdps, literal = scenario.request_sdps(), scenario.request_ports()
    return compare(
        _unified([step.expected for step in scenario.steps]),
        Normaliser.for_sdps(sdps, RTPENGINE_PORTS, literal),
        _unified(actual),
        Normaliser.for_sdps(sdps, actual_range, literal),
        ("rtpengine", "relayd"),
    )


_GENERATED = re.compile(r"^a=ice-(?:ufrag|pwd):(\S+)$|^a=fingerprint:\S+ (\S+)$|inline:([\w+/=]+)")


def _ports(sdp: str) -> set[int]:
    return {
        int(next(group for group in match.groups() if group))
        for line in crlf_sdp(sdp).split("\r\n")
        for match in _PORT.finditer(line)
    }


def _values(sdp: str) -> set[str]:
    """ICE credentials, fingerprints and SDES keys in ``sdp``: what a daemon makes up."""
    return {
        next(group for group in match.groups() if group)
        for line in crlf_sdp(sdp).split("\r\n")
        for match in _GENERATED.finditer(line)
    }


def replies_fed_back(scenario: Scenario) -> list[str]:
    """Requests that carry a port or made-up value that only an earlier reply had."""
    sent_ports: set[int] = set()
    sent_values: set[str] = set()
    reply_ports: set[int] = set()
    reply_values: set[str] = set()
    problems = []
    for index, step in enumerate(scenario.steps):
        if (sdp := step.sdp()) is not None:
            ports, values = _ports(sdp), _values(sdp)
            problems += [
                f"step {index}: port {port} of an earlier reply"
                for port in sorted((ports & reply_ports) - sent_ports)
            ]
            problems += [
                f"step {index}: {value!r} of an earlier reply"
                for value in sorted((values & reply_values) - sent_values)
            ]
            sent_ports |= ports
            sent_values |= values
        if isinstance(sdp_out := step.expected.reply.get("sdp"), str):
            low, high = RTPENGINE_PORTS
            reply_ports |= {port for port in _ports(sdp_out) if low <= port <= high}
            reply_values |= _values(sdp_out)
    return problems
