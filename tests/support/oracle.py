"""The rtpengine oracle: the case corpus, how it is replayed, how replies compare.

The cases (``tests/data/oracle/cases.json``) are ng conversations as Kamailio
sends them. Each step is one request; ``"sdp"`` values of the form
``@file:NAME.sdp`` name a body in ``tests/data/sdp/``, and ``@reply:N`` reuses the
SDP that the *same daemon* returned for step N (loop protection). A step may ask
for a JSON body (``"encoding": "json"``) or carry a ``"raw"`` body sent verbatim.

Replies are compared after normalisation. What differs between two correct
daemons is replaced by placeholders, everything else must match byte for byte,
line order included:

* ports inside the daemon's own port range (``m=``, ``a=rtcp:``, our
  ``a=candidate:`` lines, ``local port`` in query replies) become ``{portN}``,
  numbered by first appearance and keyed by (address family, port), so a port
  that re-appears (RTCP, a re-INVITE keeping its ports) gets the same number;
* values a daemon generates, i.e. values not present in any SDP the case sends:
  ``a=ice-ufrag``, ``a=ice-pwd``, the foundation of our candidates, SDES keys,
  ``a=fingerprint`` and the ``a=rtpengine:`` loop marker become
  ``{kindN/LENGTH}``; the length stays visible because it is part of the format.

A case passes when :func:`differences` and :func:`port_problems` find nothing.

Pure code: the only I/O is reading the corpus files. Sockets live in the tests
and in ``tests/interop/record_oracle.py``, which hand :func:`run_case` an
``exchange`` callable; ``tests/unit/test_oracle_corpus.py`` hands it relayd's
ng core in process. Shared by both tiers.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from relayd.ng import bencode

__all__ = [
    "CASES_FILE",
    "EXPECTED_DIR",
    "INTERFACES",
    "RELAYD_NG_PORT",
    "RELAYD_PORTS",
    "RTPENGINE_NG_PORT",
    "RTPENGINE_PORTS",
    "SDP_DIR",
    "Case",
    "Exchange",
    "Normaliser",
    "Step",
    "StepResult",
    "comparable",
    "compare",
    "decode_reply",
    "differences",
    "encode_step",
    "load_cases",
    "load_expected",
    "port_problems",
    "run_case",
    "sdp_from_lines",
    "sdp_to_lines",
    "structural_problems",
]

REPO = Path(__file__).resolve().parents[2]
SDP_DIR = REPO / "tests" / "data" / "sdp"
ORACLE_DIR = REPO / "tests" / "data" / "oracle"
CASES_FILE = ORACLE_DIR / "cases.json"
EXPECTED_DIR = ORACLE_DIR / "expected"

# Both daemons run with the same interfaces; only ng port and port range differ.
INTERFACES = ("127.0.0.1", "::1")
RTPENGINE_NG_PORT = 22230
RTPENGINE_PORTS = (40000, 40999)
RELAYD_NG_PORT = 22231
RELAYD_PORTS = (41000, 41999)

Exchange = Callable[[bytes], bytes]
"""Sends one ng body (without cookie) and returns the reply body."""


@dataclass(frozen=True, slots=True)
class Step:
    """One ng request of a case, as stored in ``cases.json``."""

    request: Mapping[str, Any] | None
    raw: str | None = None
    encoding: str = "bencode"


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    about: str
    steps: tuple[Step, ...]

    def literal_sdps(self) -> list[str]:
        """Every SDP body the case sends that does not come from a daemon."""
        bodies = []
        for step in self.steps:
            sdp = (step.request or {}).get("sdp")
            if isinstance(sdp, str) and not sdp.startswith("@reply:"):
                bodies.append(_resolve_file(sdp))
        return bodies


@dataclass(frozen=True, slots=True)
class StepResult:
    """What one daemon answered to one step."""

    command: str | None
    reply: dict[str, Any]
    encoding: str  # of the reply body: "bencode" or "json"


def load_cases(path: Path = CASES_FILE) -> list[Case]:
    document = json.loads(path.read_text())
    cases = []
    for item in document["cases"]:
        steps = tuple(
            Step(
                request=step.get("request"),
                raw=step.get("raw"),
                encoding=step.get("encoding", "bencode"),
            )
            for step in item["steps"]
        )
        cases.append(Case(name=item["name"], about=item.get("about", ""), steps=steps))
    return cases


def _resolve_file(sdp: str) -> str:
    if sdp.startswith("@file:"):
        return (SDP_DIR / sdp.removeprefix("@file:")).read_bytes().decode()
    return sdp


def _resolve_request(step: Step, results: Sequence[StepResult]) -> dict[str, Any]:
    assert step.request is not None
    request = dict(step.request)
    sdp = request.get("sdp")
    if isinstance(sdp, str):
        if sdp.startswith("@reply:"):
            earlier = results[int(sdp.removeprefix("@reply:"))].reply
            request["sdp"] = earlier.get("sdp", "")
        else:
            request["sdp"] = _resolve_file(sdp)
    return request


def encode_step(step: Step, results: Sequence[StepResult]) -> bytes:
    """The ng body (cookie excluded) that ``step`` sends."""
    if step.raw is not None:
        return step.raw.encode()
    request = _resolve_request(step, results)
    if step.encoding == "json":
        return json.dumps(request).encode()
    return bencode.encode(request)


def decode_reply(body: bytes) -> tuple[dict[str, Any], str]:
    """Decode a reply body; return the dictionary and its encoding."""
    if body[:1] == b"{":
        value: Any = json.loads(body)
        encoding = "json"
    else:
        value = bencode.decode(body)
        encoding = "bencode"
    if not isinstance(value, dict):
        raise ValueError(f"reply is not a dictionary: {body[:80]!r}")
    return value, encoding


def run_case(case: Case, exchange: Exchange) -> list[StepResult]:
    """Send every step of ``case`` through ``exchange``, in order."""
    results: list[StepResult] = []
    for step in case.steps:
        reply, encoding = decode_reply(exchange(encode_step(step, results)))
        command = step.request.get("command") if step.request else None
        results.append(StepResult(command=command, reply=reply, encoding=encoding))
    return results


def sdp_to_lines(sdp: str) -> list[str]:
    """The storage form of an SDP in ``expected/*.json``: ``sdp.split("\\r\\n")``."""
    return sdp.split("\r\n")


def sdp_from_lines(lines: Sequence[str]) -> str:
    return "\r\n".join(lines)


def load_expected(case: Case, directory: Path = EXPECTED_DIR) -> list[StepResult]:
    """rtpengine's recorded replies for ``case`` (written by ``record_oracle.py``)."""
    document = json.loads((directory / f"{case.name}.json").read_text())
    results = []
    for step in document["steps"]:
        reply = dict(step["reply"])
        if isinstance(reply.get("sdp"), list):
            reply["sdp"] = sdp_from_lines(reply["sdp"])
        results.append(
            StepResult(command=step.get("command"), reply=reply, encoding=step["reply-encoding"])
        )
    return results


# --------------------------------------------------------------------------- normalisation

_M_LINE = re.compile(r"^m=(\S+) (\d+)(/\d+)? (.*)$")
_C_LINE = re.compile(r"^c=IN (IP[46]) (\S+)")
_RTCP = re.compile(r"^a=rtcp:(\d+)(?: IN (IP[46]) (\S+))?$")
_CANDIDATE = re.compile(r"^a=candidate:(\S+) (\d+) (\S+) (\d+) (\S+) (\d+) typ (\S+)(.*)$")
_RPORT = re.compile(r"(raddr \S+ rport )(\d+)")
_ICE_VALUE = re.compile(r"^a=(ice-ufrag|ice-pwd):(\S+)$")
_CRYPTO_KEY = re.compile(r"(inline:)([A-Za-z0-9+/=]+)")
_FINGERPRINT = re.compile(r"^(a=fingerprint:\S+ )(\S+)$")
_MARKER = re.compile(r"^a=rtpengine:(\S+)$")


def _generated_candidates(sdps: Iterable[str]) -> dict[str, set[str]]:
    """Values of generated-looking attributes present in the case's own SDPs."""
    known: dict[str, set[str]] = {
        "ufrag": set(),
        "pwd": set(),
        "foundation": set(),
        "key": set(),
        "fingerprint": set(),
        "instance": set(),
    }
    for sdp in sdps:
        for line in sdp.split("\r\n"):
            if m := _ICE_VALUE.match(line):
                known["ufrag" if m[1] == "ice-ufrag" else "pwd"].add(m[2])
            elif m := _CANDIDATE.match(line):
                known["foundation"].add(m[1])
            elif line.startswith("a=crypto:"):
                known["key"].update(k[2] for k in _CRYPTO_KEY.finditer(line))
            elif m := _FINGERPRINT.match(line):
                known["fingerprint"].add(m[2])
            elif m := _MARKER.match(line):
                known["instance"].add(m[1])
    return known


def _family_of(address: str) -> str:
    return "IP6" if ":" in address else "IP4"


@dataclass
class Normaliser:
    """Per case and per daemon: turns replies into comparable values.

    Placeholder numbers are assigned by first appearance, so two daemons that
    behave alike produce identical normalised output.
    """

    port_range: tuple[int, int]
    known: dict[str, set[str]] = field(default_factory=dict)
    # ports the requests carry: never the daemon's, even inside its range (the oracle's
    # SDPs keep out of both ranges; rtpengine's suite has a few inside its range)
    literal_ports: frozenset[int] = frozenset()
    _ports: dict[tuple[str, int], str] = field(default_factory=dict)
    _values: dict[tuple[str, str], str] = field(default_factory=dict)

    @classmethod
    def for_case(cls, case: Case, port_range: tuple[int, int]) -> Normaliser:
        return cls.for_sdps(case.literal_sdps(), port_range)

    @classmethod
    def for_sdps(
        cls,
        sdps: Sequence[str],
        port_range: tuple[int, int],
        literal_ports: Iterable[int] = (),
    ) -> Normaliser:
        """For a conversation whose requests sent ``sdps`` (CRLF bodies)."""
        return cls(
            port_range=port_range,
            known=_generated_candidates(sdps),
            literal_ports=frozenset(literal_ports),
        )

    def ours(self, port: int) -> bool:
        return self.port_range[0] <= port <= self.port_range[1] and port not in self.literal_ports

    def port(self, family: str, port: int) -> str:
        if not self.ours(port):
            return str(port)
        key = (family, port)
        if key not in self._ports:
            self._ports[key] = f"{{port{len(self._ports) + 1}}}"
        return self._ports[key]

    def value(self, kind: str, value: str) -> str:
        if value in self.known.get(kind, ()):
            return value
        key = (kind, value)
        if key not in self._values:
            count = sum(1 for k in self._values if k[0] == kind) + 1
            self._values[key] = f"{{{kind}{count}/{len(value)}}}"
        return self._values[key]

    def sdp(self, sdp: str) -> list[str]:
        """Normalised lines of ``sdp`` (split on CRLF, so a stray LF shows)."""
        lines = sdp.split("\r\n")
        families = _media_families(lines)
        out = []
        media = -1
        for line in lines:
            if line.startswith("m="):
                media += 1
            family = families[media] if media >= 0 else families[-1]
            out.append(self._line(line, family))
        return out

    def _line(self, line: str, family: str) -> str:
        if m := _M_LINE.match(line):
            return f"m={m[1]} {self.port(family, int(m[2]))}{m[3] or ''} {m[4]}"
        if m := _RTCP.match(line):
            fam = m[2] or family
            rest = f" IN {m[2]} {m[3]}" if m[2] else ""
            return f"a=rtcp:{self.port(fam, int(m[1]))}{rest}"
        if m := _CANDIDATE.match(line):
            port = int(m[6])
            if not self.ours(port):
                return line
            fam = _family_of(m[5])
            tail = _RPORT.sub(lambda r: r[1] + self.port(fam, int(r[2])), m[8])
            foundation = self.value("foundation", m[1])
            return (
                f"a=candidate:{foundation} {m[2]} {m[3]} {m[4]} {m[5]} "
                f"{self.port(fam, port)} typ {m[7]}{tail}"
            )
        if m := _ICE_VALUE.match(line):
            kind = "ufrag" if m[1] == "ice-ufrag" else "pwd"
            return f"a={m[1]}:{self.value(kind, m[2])}"
        if line.startswith("a=crypto:"):
            return _CRYPTO_KEY.sub(lambda k: k[1] + self.value("key", k[2]), line)
        if m := _FINGERPRINT.match(line):
            return m[1] + self.value("fingerprint", m[2])
        if m := _MARKER.match(line):
            return "a=rtpengine:" + self.value("instance", m[1])
        return line

    def query(self, reply: Mapping[str, Any]) -> dict[str, Any]:
        """The parts of a query reply that describe call state, not time or traffic."""
        tags: dict[str, Any] = {}
        for key, tag in sorted(reply.get("tags", {}).items()):
            medias = []
            for media in tag.get("medias", []):
                streams = []
                for stream in media.get("streams", []):
                    family = "IP6" if stream.get("family") == "IPv6" else "IP4"
                    streams.append(
                        {
                            "local port": self.port(family, int(stream.get("local port", 0))),
                            "local address": stream.get("local address"),
                            "family": stream.get("family"),
                            "endpoint": stream.get("endpoint"),
                            "advertised endpoint": stream.get("advertised endpoint"),
                            "flags": stream.get("flags"),
                        }
                    )
                medias.append(
                    {
                        "index": media.get("index"),
                        "type": media.get("type"),
                        "protocol": media.get("protocol"),
                        "flags": media.get("flags"),
                        "streams": streams,
                    }
                )
            tags[key] = {
                "tag": tag.get("tag"),
                "via-branch": tag.get("via-branch"),
                "medias": medias,
            }
        return tags


def _media_families(lines: Sequence[str]) -> list[str]:
    """Address family of each media section's connection; the last entry is the session's."""
    session = "IP4"
    families: list[str] = []
    current: str | None = None
    in_media = False
    for line in lines:
        if line.startswith("m="):
            if in_media:
                families.append(current or session)
            in_media, current = True, None
        elif m := _C_LINE.match(line):
            if in_media:
                current = m[1]
            else:
                session = m[1]
    if in_media:
        families.append(current or session)
    return [*families, session]


_COMPARED_KEYS = ("result", "error-reason", "warning", "message")


def comparable(result: StepResult, normaliser: Normaliser) -> dict[str, Any]:
    """What must be equal between rtpengine and relayd for one step."""
    reply = result.reply
    out: dict[str, Any] = {"encoding": result.encoding}
    out.update({key: reply[key] for key in _COMPARED_KEYS if key in reply})
    if "sdp" in reply:
        out["sdp"] = normaliser.sdp(reply["sdp"])
    if result.command == "query" and reply.get("result") == "ok":
        out["tags"] = normaliser.query(reply)
    return out


# --------------------------------------------------------------------------- structure


def structural_problems(
    sdp: str, port_range: tuple[int, int], local_addresses: Iterable[str]
) -> list[str]:
    """Port rules that normalisation hides: RTP even, RTCP = RTP+1, ports in range.

    An RTP port must be even when a separate RTCP port goes with it
    (``a=rtcp:`` differs from the RTP port, or is absent without ``a=rtcp-mux``).
    With rtcp-mux in force rtpengine allocates a single port of any parity.
    """
    local = set(local_addresses)
    low, high = port_range
    problems = []
    for index, section in enumerate(_media_sections(sdp.split("\r\n"))):
        head = _M_LINE.match(section[0])
        if not head:
            continue
        rtp = int(head[2])
        if rtp == 0:
            continue
        if not low <= rtp <= high:
            problems.append(f"media {index}: port {rtp} outside {low}-{high}")
        rtcp = [int(m[1]) for line in section if (m := _RTCP.match(line))]
        if head[4].startswith("udptl"):
            continue
        if rtcp and rtcp[0] != rtp and rtcp[0] != rtp + 1:
            problems.append(f"media {index}: a=rtcp:{rtcp[0]} is not RTP+1 ({rtp + 1})")
        muxed = rtcp[0] == rtp if rtcp else "a=rtcp-mux" in section
        if not muxed and rtp % 2:
            problems.append(f"media {index}: RTP port {rtp} is odd but RTCP is separate")
        for line in section:
            cand = _CANDIDATE.match(line)
            if cand and cand[5] in local and not low <= int(cand[6]) <= high:
                problems.append(f"media {index}: candidate port {cand[6]} outside {low}-{high}")
    return problems


def _media_sections(lines: Sequence[str]) -> list[list[str]]:
    sections: list[list[str]] = []
    for line in lines:
        if line.startswith("m="):
            sections.append([line])
        elif sections:
            sections[-1].append(line)
    return sections


# --------------------------------------------------------------------------- verdict


def differences(
    case: Case,
    expected: Sequence[StepResult],
    expected_range: tuple[int, int],
    actual: Sequence[StepResult],
    actual_range: tuple[int, int],
    labels: tuple[str, str],
) -> list[str]:
    """Every step on which the two normalised reply sequences differ."""
    left = Normaliser.for_case(case, expected_range)
    right = Normaliser.for_case(case, actual_range)
    return compare(expected, left, actual, right, labels)


def compare(
    expected: Sequence[StepResult],
    left: Normaliser,
    actual: Sequence[StepResult],
    right: Normaliser,
    labels: tuple[str, str],
) -> list[str]:
    """:func:`differences` with the two normalisers given: one per daemon, fresh."""
    problems = []
    for index, (want, got) in enumerate(zip(expected, actual, strict=True)):
        a, b = comparable(want, left), comparable(got, right)
        where = f"step {index} ({want.command})"
        sdp_a, sdp_b = a.pop("sdp", None), b.pop("sdp", None)
        if a != b:
            left_text = json.dumps(a, indent=1, sort_keys=True).splitlines()
            right_text = json.dumps(b, indent=1, sort_keys=True).splitlines()
            diff = difflib.unified_diff(left_text, right_text, *labels, lineterm="", n=3)
            problems.append(f"{where}: reply differs\n" + "\n".join(diff))
        if sdp_a != sdp_b:
            diff = difflib.unified_diff(
                sdp_a or [], sdp_b or [], labels[0], labels[1], lineterm="", n=2
            )
            problems.append(f"{where}: SDP differs\n" + "\n".join(diff))
    return problems


def port_problems(
    results: Sequence[StepResult],
    port_range: tuple[int, int],
    interfaces: Iterable[str] = INTERFACES,
) -> list[str]:
    """:func:`structural_problems` of every reply SDP, and query ports outside the range."""
    problems = []
    local = tuple(interfaces)
    for index, result in enumerate(results):
        sdp = result.reply.get("sdp")
        if isinstance(sdp, str):
            problems += [
                f"step {index} ({result.command}): {problem}"
                for problem in structural_problems(sdp, port_range, local)
            ]
        for tag in result.reply.get("tags", {}).values() if result.command == "query" else ():
            for media in tag.get("medias", []):
                for stream in media.get("streams", []):
                    port = int(stream.get("local port", 0))
                    if not port_range[0] <= port <= port_range[1]:
                        problems.append(f"step {index} (query): local port {port} out of range")
    return problems
