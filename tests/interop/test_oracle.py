"""relayd against the real rtpengine 10.5: the same ng conversations, the same SDPs.

One rtpengine (ng 127.0.0.1:22230, ports 40000-40999) and one relayd (ng
127.0.0.1:22231, ports 41000-41999) serve the whole module, both with the
interfaces 127.0.0.1 and ::1. Every case of ``tests/data/oracle/cases.json`` is
replayed against both; the normalised replies (see ``tests/support/oracle.py``)
must be equal line for line, and the port rules that normalisation hides are
checked on the raw SDPs. Without an installed rtpengine the recorded replies in
``tests/data/oracle/expected/`` stand in for the live daemon.

    .venv/bin/python -m pytest tests/interop/test_oracle.py -m interop
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from relayd.ng.client import NgTimeout
from tests.support.oracle import (
    CASES_FILE,
    EXPECTED_DIR,
    INTERFACES,
    RELAYD_NG_PORT,
    RELAYD_PORTS,
    RTPENGINE_NG_PORT,
    RTPENGINE_PORTS,
    SDP_DIR,
    Case,
    Normaliser,
    StepResult,
    decode_reply,
    differences,
    encode_step,
    load_cases,
    load_expected,
    port_problems,
    structural_problems,
)
from tests.support.relayd import RelaydProcess, running_relayd
from tests.support.rtpengine import (
    RtpengineProcess,
    rtpengine_installed,
    running_rtpengine,
    udp_port_in_use,
)

CASES = load_cases()
CASE_IDS = [case.name for case in CASES]

Runner = Callable[[Case], list[StepResult]]


def _replay(
    case: Case, daemon: RtpengineProcess | RelaydProcess, timeout: float
) -> list[StepResult]:
    """Run ``case`` against a live daemon; stop at the first unanswered step."""
    results: list[StepResult] = []
    run = uuid.uuid4().hex[:8]
    with daemon.client(timeout=timeout, retries=0) as client:
        for step in case.steps:
            # Unique per request: both daemons answer a known cookie from their
            # retransmission cache (30-60 s) without looking at the body.
            cookie = f"{run}_{len(results)}"
            body = encode_step(step, results)
            try:
                raw = client.request_raw(cookie.encode() + b" " + body, cookie)
            except NgTimeout:
                proc = daemon.proc
                state = (
                    "has exited" if proc is not None and proc.poll() is not None else "is silent"
                )
                pytest.fail(
                    f"step {len(results)} ({step.request and step.request.get('command')}): "
                    f"no reply within {timeout}s, daemon {state}\n{daemon.log()[-3000:]}"
                )
            reply, encoding = decode_reply(raw)
            command = step.request.get("command") if step.request else None
            results.append(StepResult(command=command, reply=reply, encoding=encoding))
    return results


@pytest.fixture(scope="module")
def rtpengine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RtpengineProcess | None]:
    if rtpengine_installed() is None:
        yield None
        return
    with running_rtpengine(
        tmp_path_factory.mktemp("rtpengine"),
        ng_port=RTPENGINE_NG_PORT,
        port_min=RTPENGINE_PORTS[0],
        port_max=RTPENGINE_PORTS[1],
        interface=INTERFACES,
    ) as daemon:
        yield daemon


@pytest.fixture(scope="module")
def oracle(rtpengine: RtpengineProcess | None) -> Runner:
    """rtpengine's replies to a case: live (each case run once) or as recorded."""
    cache: dict[str, list[StepResult]] = {}

    def run(case: Case) -> list[StepResult]:
        if case.name not in cache:
            if rtpengine is None:
                cache[case.name] = load_expected(case)
            else:
                cache[case.name] = _replay(case, rtpengine, timeout=2.0)
        return cache[case.name]

    return run


@pytest.fixture(scope="module")
def relayd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelaydProcess]:
    if udp_port_in_use("127.0.0.1", RELAYD_NG_PORT):
        raise RuntimeError(f"ng port {RELAYD_NG_PORT} is already in use (another test run?)")
    with running_relayd(
        tmp_path_factory.mktemp("relayd"),
        ng_port=RELAYD_NG_PORT,
        port_min=RELAYD_PORTS[0],
        port_max=RELAYD_PORTS[1],
        interface=INTERFACES,
    ) as daemon:
        yield daemon


@pytest.mark.interop
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_relayd_matches_rtpengine(case: Case, oracle: Runner, relayd: RelaydProcess) -> None:
    expected = oracle(case)
    actual = _replay(case, relayd, timeout=1.0)
    problems = differences(
        case, expected, RTPENGINE_PORTS, actual, RELAYD_PORTS, ("rtpengine", "relayd")
    )
    problems += [f"relayd {p}" for p in port_problems(actual, RELAYD_PORTS)]
    assert not problems, f"{case.name}: {case.about}\n\n" + "\n\n".join(problems)


@pytest.mark.interop
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_rtpengine_matches_recording(
    case: Case, rtpengine: RtpengineProcess | None, oracle: Runner
) -> None:
    """The recorded replies are what this rtpengine says today (else re-record)."""
    if rtpengine is None:
        pytest.skip("rtpengine not installed; the recording is the oracle")
    live = oracle(case)
    problems = differences(
        case, load_expected(case), RTPENGINE_PORTS, live, RTPENGINE_PORTS, ("recorded", "live")
    )
    problems += [f"rtpengine {p}" for p in port_problems(live, RTPENGINE_PORTS)]
    assert not problems, (
        f"{case.name}: re-run `python -m tests.interop.record_oracle {case.name}`?\n\n"
        + "\n\n".join(problems)
    )


_PORT_FIELDS = re.compile(r"^(?:m=\S+ (\d+)|a=rtcp:(\d+)|a=candidate:\S+ \d+ \S+ \d+ \S+ (\d+))")


def test_corpus_is_well_formed() -> None:
    """SDP files use CRLF, their ports stay clear of both daemons' ranges, all are used."""
    files = sorted(SDP_DIR.glob("*.sdp"))
    assert files
    problems = []
    for path in files:
        data = path.read_bytes()
        if not data.endswith(b"\r\n") or data.replace(b"\r\n", b"").count(b"\n"):
            problems.append(f"{path.name}: not CRLF line ends throughout")
        for line in data.decode().split("\r\n"):
            if (m := _PORT_FIELDS.match(line)) is not None:
                port = int(next(group for group in m.groups() if group))
                for low, high in (RTPENGINE_PORTS, RELAYD_PORTS):
                    if low <= port <= high:
                        problems.append(f"{path.name}: port {port} inside {low}-{high}")
    text = CASES_FILE.read_text()
    referenced = set(re.findall(r"@file:([\w.-]+\.sdp)", text))
    problems += [f"missing {name}" for name in sorted(referenced - {p.name for p in files})]
    problems += [f"unused {p.name}" for p in files if p.name not in referenced]
    names = [case.name for case in CASES]
    problems += [f"duplicate case {n}" for n in sorted({n for n in names if names.count(n) > 1})]
    problems += [
        f"no recording for {n}" for n in names if not (EXPECTED_DIR / f"{n}.json").exists()
    ]
    offers = sum(
        1
        for case in CASES
        for s in case.steps
        if s.request and s.request.get("command") in ("offer", "answer")
    )
    assert offers >= 40, offers
    assert not problems, "\n".join(problems)


def test_normaliser_keeps_port_identity() -> None:
    """The same port maps to the same placeholder across steps; other lines stay exact."""
    case = Case(name="t", about="", steps=())
    norm = Normaliser.for_case(case, (40000, 40999))
    first = norm.sdp("v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 40010 RTP/AVP 0\r\na=rtcp:40011\r\n")
    again = norm.sdp("v=0\r\nc=IN IP6 ::1\r\nm=audio 40010 RTP/AVP 0\r\na=rtcp:40011\r\n")
    assert first == ["v=0", "c=IN IP4 127.0.0.1", "m=audio {port1} RTP/AVP 0", "a=rtcp:{port2}", ""]
    assert again == ["v=0", "c=IN IP6 ::1", "m=audio {port3} RTP/AVP 0", "a=rtcp:{port4}", ""]
    assert norm.sdp("m=audio 5004 RTP/AVP 0\r\n") == ["m=audio 5004 RTP/AVP 0", ""]
    assert norm.sdp("c=IN IP4 127.0.0.1\r\nm=audio 40010 RTP/AVP 0") == [
        "c=IN IP4 127.0.0.1",
        "m=audio {port1} RTP/AVP 0",
    ]


def test_structural_rules() -> None:
    sdp = "v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio {} RTP/AVP 0\r\n{}\r\n"
    ok = [(41000, "a=rtcp:41001"), (41001, "a=rtcp:41001\r\na=rtcp-mux"), (41002, "a=sendrecv")]
    for port, extra in ok:
        assert structural_problems(sdp.format(port, extra), RELAYD_PORTS, INTERFACES) == []
    bad = [(41001, "a=rtcp:41002"), (41000, "a=rtcp:41005"), (40000, "a=rtcp:40001")]
    for port, extra in bad:
        assert structural_problems(sdp.format(port, extra), RELAYD_PORTS, INTERFACES)


def test_recordings_are_replayable() -> None:
    """Each recording has one reply per step, and SDP lines join back with CRLF."""
    for case in CASES:
        path: Path = EXPECTED_DIR / f"{case.name}.json"
        if not path.exists():
            continue
        results = load_expected(case)
        assert len(results) == len(case.steps), case.name
        for result in results:
            sdp = result.reply.get("sdp")
            assert sdp is None or sdp.endswith("\r\n"), case.name
