"""Run rtpengine's own daemon test suite against relayd or rtpengine, a fresh daemon per scenario.

The suite is ``t/auto-daemon-tests.pl`` of github ``sipwise/rtpengine`` at tag
``mr10.5.3.5``, the version Debian bookworm ships. It is one Perl script of about 240
scenarios, each starting at a ``new_call``: ng commands with the SDP that goes in and
a pattern of the SDP that must come out, many also sending RTP/SRTP/STUN/DTLS through
the daemon and checking the bytes that come back. This tool splits it at each
``new_call`` and runs every scenario as its own Perl script against its own daemon,
started fresh with the suite's own command line (ng on ``127.0.0.1:2223``, interfaces
``203.0.113.1`` and ``2001:db8:4321::1``), inside a network namespace of its own in
which the documentation addresses the suite binds to are local. Scenarios run in
parallel, one namespace each; nothing touches the root namespace.

rtpengine runs the suite with an ``LD_PRELOAD`` library that fakes those addresses with
Unix sockets; a namespace with the addresses on its loopback does the same with the
real network stack, for a Python daemon as for a C one.

Fetching the repository is a manual step (CI has no network)::

    git clone https://github.com/sipwise/rtpengine /srv/rtpengine   # or the fetch tool
    sudo .venv/bin/python scripts/rtpengine_suite.py --repo /srv/rtpengine
    sudo .venv/bin/python scripts/rtpengine_suite.py --repo /srv/rtpengine --daemon rtpengine
    sudo .venv/bin/python scripts/rtpengine_suite.py --repo /srv/rtpengine --only 'ICE' -v
    sudo .venv/bin/python scripts/rtpengine_suite.py --repo /srv/rtpengine --daemon rtpengine \
        --record tests/data/suite/scenarios   # the offline corpus, tests/data/suite/README.md

Needs root (namespaces), Perl with the suite's modules (``--install`` installs them
from Debian: libbencode-perl and the rest) and, for ``--daemon rtpengine``, Debian's
rtpengine-daemon. ``docs/compatibility.md`` has the table this prints and the list of
what fails and why.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import difflib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUITE = "t/auto-daemon-tests.pl"
TAG = "mr10.5.3.5"

# The suite's own daemon command line (autotest_start at the top of the file).
SUITE_ARGS = [
    "--config-file=none",
    "-t",
    "-1",
    "-i",
    "203.0.113.1",
    "-i",
    "2001:db8:4321::1",
    "-n",
    "2223",
    "-c",
    "12345",
    "-f",
    "-L",
    "7",
    "-E",
    "-u",
    "2222",
    "--silence-detect=1",
]
# What relayd needs on top, so that parallel daemons share no file: no admin socket
# (a path, shared by every namespace), no call journal.
RELAYD_EXTRA = ["--admin-socket", "none", "--state-dir", "none"]

PERL_PACKAGES = [
    "perl",
    "libbencode-perl",
    "libio-multiplex-perl",
    "libnet-interface-perl",
    "libsocket6-perl",
    "libcrypt-rijndael-perl",
    "libdigest-hmac-perl",
    "libdigest-crc-perl",
    "libcrypt-openssl-rsa-perl",
    "libjson-perl",
]

# Addresses the suite binds its test endpoints to: local in every scenario namespace.
V4_PREFIXES = ["203.0.113.1/24", "198.51.100.1/24", "198.51.101.1/24", "192.0.2.1/24"]
V6_ADDRESSES = ["2001:db8:4321::1/128"]
V6_LOCAL_ROUTE = "2001:db8::/32"

START = re.compile(r"^(\(.*\)\s*=\s*)?new_call\b")
TITLE = re.compile(
    r"""^\s*(?:[$@]\w+\s*=\s*)?(?:\(.*\)\s*=\s*)?"""
    r"""(?:offer|answer|offer_answer|publish|subscribe_request|subscribe_answer)\(\s*['"]([^'"]+)['"]"""
    r"""|rtpe_req\(\s*['"][^'"]+['"]\s*,\s*['"]([^'"]+)['"]""",
    re.M,
)

# Classes, first match wins. The out-of-scope ones (transcoding, DTMF, media playback,
# T.38, and what 10.5 implements elsewhere) come first: a scenario that transcodes is
# a transcoding scenario whatever else it does.
CLASSES: list[tuple[str, bool, re.Pattern[str]]] = [
    ("T.38", False, re.compile(r"T\.?38|udptl", re.I)),
    ("media playback", False, re.compile(r"play media|stop media|RTCP player")),
    (
        "DTMF",
        False,
        re.compile(
            r"play DTMF|block DTMF|unblock DTMF|inject DTMF|DTMF-(?:log|security|inject)"
            r"|dtmf-security|inject-DTMF|DTMF injection|DTMF.*(?:decod|encod|delay)"
        ),
    ),
    (
        "transcoding",
        False,
        re.compile(
            # accept and consume switch rtpengine's transcoding engine on (the answer
            # carries a codec the answerer did not take)
            r"transcode|always.transcode|codec-set|'set'\s*=>|ptime\s*=>|ptime-reverse"
            r"|\b(?:accept|consume)'?\s*=>|codec-(?:accept|consume)"
            r"|'(?:accept|consume)'\s*=>.*\btranscode",
            re.I,
        ),
    ),
    ("subscriptions", False, re.compile(r"subscribe|publish\(")),
    ("recording", False, re.compile(r"record-call|start recording|stop recording")),
    ("DTLS", True, re.compile(r"\bDTLS\b|a=fingerprint")),
    ("ICE", True, re.compile(r"\bICE\b|a=candidate|stun_req|trickle|ice-ufrag")),
    ("SDES / OSRTP", True, re.compile(r"SDES|OSRTP|a=crypto|SAVP")),
    ("codec manipulation", True, re.compile(r"codec|telephone-event|DTMF", re.I)),
    ("rtcp-mux", True, re.compile(r"rtcp-mux", re.I)),
    ("address family / IPv6", True, re.compile(r"address family|address-family|IP6|ipv6", re.I)),
    ("asymmetric / strict source", True, re.compile(r"asymmetric|strict-source|symmetric", re.I)),
    ("plain RTP and the rest", True, re.compile(r".", re.S)),
]


@dataclass
class Scenario:
    number: int
    line: int
    title: str
    klass: str
    in_scope: bool
    body: str


@dataclass
class Result:
    number: int
    line: int
    title: str
    klass: str
    in_scope: bool
    passed: bool
    seconds: float
    failures: list[str] = field(default_factory=list)
    detail: str = ""
    tap: str = field(default="", repr=False)


def classify(body: str) -> tuple[str, bool]:
    for name, in_scope, pattern in CLASSES:
        if pattern.search(body):
            return name, in_scope
    raise AssertionError("the last class matches everything")


HEREDOC = re.compile(r"""<<\s*["']?([A-Z_]+)["']?""")
DISABLED_CLASS = "disabled upstream"
DISABLED = re.compile(r"^\s*if\s*\((?:0|\$amr_tests)\)\s*\{")
DECLARED = re.compile(r"^my\s*\(([^)]*)\)\s*=|^my\s+(\$\w+)")


def code_lines(lines: list[str]) -> list[str]:
    """``lines`` with heredoc bodies and comments blanked: what the brace count reads."""
    out = []
    ending: str | None = None
    for line in lines:
        if ending is not None:
            out.append("")
            if line.rstrip("\n") == ending:
                ending = None
            continue
        code = re.sub(r"(^|\s)#.*$", "", line)
        out.append(code)
        match = HEREDOC.search(code)
        if match:
            ending = match.group(1)
    return out


def split(text: str) -> tuple[str, list[Scenario]]:
    """The suite's header (with the daemon launch replaced by a connect) and its scenarios.

    A scenario runs from one ``new_call`` to the next. The few that sit inside a
    block get the block's opening line before them and its closing braces after;
    those inside ``if (0)`` or ``if ($amr_tests)`` (off in rtpengine's own runs: the
    latter only runs on its author's machine) are marked disabled. Variables that an
    earlier scenario declared at the top level are declared again for later ones.
    """
    lines = text.splitlines(keepends=True)
    code = code_lines(lines)
    starts = [i for i, line in enumerate(lines) if START.match(line)]
    if not starts:
        raise SystemExit(f"{SUITE}: no new_call found")
    header = "".join(lines[: starts[0]])
    launch = re.compile(r"autotest_start\(.*?\)\s*\)?\s*or die;", re.S)
    if not launch.search(header):
        raise SystemExit(f"{SUITE}: no autotest_start(...) or die; in the header")
    header = launch.sub("autotest_init() or die;", header, count=1)
    # the lines that opened the blocks still open at each line
    open_at: list[list[str]] = []
    stack: list[str] = []
    for raw, line in zip(lines, code, strict=True):
        open_at.append(list(stack))
        for char in line:
            if char == "{":
                stack.append(raw)
            elif char == "}" and stack:
                stack.pop()
    scenarios = []
    declared: set[str] = set()
    ends = [*starts[1:], len(lines)]
    for number, (begin, end) in enumerate(zip(starts, ends, strict=True), start=1):
        openers = open_at[begin]
        depth = len(openers)
        for line in code[begin:end]:
            depth += line.count("{") - line.count("}")
        mine: set[str] = set()
        for line in code[begin:end]:
            match = DECLARED.match(line)
            if match:
                names = match.group(1) or match.group(2)
                mine.update(n.strip() for n in names.split(",") if n.strip().startswith("$"))
        inherited = sorted(declared - mine)
        declared |= mine
        body = "".join(
            line
            for line in lines[begin:end]
            if not line.startswith("done_testing") and not line.startswith("#done_testing")
        )
        body = (
            (f"my ({', '.join(inherited)});\n" if inherited else "")
            + "".join(openers)
            + body
            + "}\n" * max(depth, 0)
        )
        match = TITLE.search(body)
        title = (match.group(1) or match.group(2)) if match else "(untitled)"
        if any(DISABLED.match(opener) for opener in openers):
            klass, in_scope = DISABLED_CLASS, False
        else:
            # on the code: a comment at a scenario's end introduces the next one
            klass, in_scope = classify(re.sub(r"^\s*#.*$", "", body, flags=re.M))
        scenarios.append(Scenario(number, begin + 1, title, klass, in_scope, body))
    return header, scenarios


# rcv() with port -1 reads the sender's port out of the fake Unix socket address of
# rtpengine's LD_PRELOAD library; here the address is a real one.
RCV_PORT = "$addr =~ /\\]:(\\d+)/s or die;\n\t\tunshift(@matches, $1);"
RCV_PORT_REAL = (
    "my $rport = Socket::sockaddr_family($addr) == Socket::AF_INET6()"
    " ? (Socket::unpack_sockaddr_in6($addr))[0] : (Socket::unpack_sockaddr_in($addr))[0];\n"
    "\t\tunshift(@matches, $rport);"
)


# sdp_match() also prints the expected pattern and the SDP it got when they differ,
# between markers, for ``-v`` to show as a diff.
SDP_LIKE = """\tlike $crlf, qr/$regexp/s, "$name - output '$cmd' SDP";\n"""
SDP_LIKE_DUMP = SDP_LIKE + (
    '\tprint("#SDP-EXPECTED\\n$exp\\n#SDP-GOT\\n$crlf\\n#SDP-END\\n") if $crlf !~ qr/$regexp/s;\n'
)


def patch_helpers(perl: Path) -> None:
    autotest = perl / "NGCP" / "Rtpengine" / "AutoTest.pm"
    text = autotest.read_text()
    for old, new in ((RCV_PORT, RCV_PORT_REAL), (SDP_LIKE, SDP_LIKE_DUMP)):
        if old not in text:
            raise SystemExit(f"{autotest}: {old!r} not found; update the patch")
        text = text.replace(old, new)
    autotest.write_text(text)


PLACEHOLDERS = [
    ("PORT", r"\d{1,5}"),
    ("ICEBASE", r"[0-9a-zA-Z]{16}"),
    ("ICEUFRAG", r"[0-9a-zA-Z]{8}"),
    ("ICEPWD", r"[0-9a-zA-Z]{26}"),
    ("CRYPTO128S", r"[0-9a-zA-Z/+]{38}"),
    ("CRYPTO128", r"[0-9a-zA-Z/+]{40}"),
    ("CRYPTO192", r"[0-9a-zA-Z/+]{51}"),
    ("CRYPTO256S", r"[0-9a-zA-Z/+]{59}"),
    ("CRYPTO256", r"[0-9a-zA-Z/+]{62}"),
    ("LOOPER", r"[0-9a-f]{12}"),
    ("FINGERPRINT256", r"[0-9a-fA-F:]{95}"),
    ("FINGERPRINT", r"[0-9a-fA-F:]{59}"),
    ("SDP_VERSION", r"\d+ \d+"),
    ("RTPE_VERSION", r"rtpengine-\S+"),
]


def line_pattern(expected: str) -> re.Pattern[str]:
    """One line of an expected SDP as the suite reads it: placeholders, ``?`` any char."""
    out = re.escape(expected)
    out = out.replace(r"\?", ".")
    for name, pattern in PLACEHOLDERS:
        out = out.replace(name, pattern)
    return re.compile(f"^{out}$")


def sdp_diffs(tap: str) -> list[str]:
    """The SDP mismatches a scenario printed, as diffs: ``-`` expected, ``+`` got."""
    out = []
    for expected, got in re.findall(r"#SDP-EXPECTED\n(.*?)\n#SDP-GOT\n(.*?)\n#SDP-END", tap, re.S):
        want, have = expected.splitlines(), got.splitlines()
        same = [
            have[i] if i < len(have) and line_pattern(w).match(have[i]) else w
            for i, w in enumerate(want)
        ]
        diff = difflib.unified_diff(same, have, "expected", "got", n=1, lineterm="")
        out.extend(list(diff)[2:])
        out.append("")
    return out


# --record: each scenario's client talks to a relay on RECORD_PORT that passes every
# datagram on to the daemon's ng port and writes both down (tests/data/suite/).
NG_PORT = 2223
RECORD_PORT = 2224


def ng_proxy(log: Path, listen: int = RECORD_PORT, daemon: int = NG_PORT) -> None:
    """Relay ng datagrams from ``listen`` to ``daemon`` on 127.0.0.1, one at a time.

    Each request and its reply are appended to ``log`` as one JSON line (the bytes as
    latin-1 text, cookie included) before the reply goes back, so nothing answered is
    lost when the relay is killed. The suite's client sends one request and waits for
    its reply, so a plain loop keeps the order. Prints ``ready`` once it listens.
    """
    inbound = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    inbound.bind(("127.0.0.1", listen))
    outbound = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    outbound.connect(("127.0.0.1", daemon))
    outbound.settimeout(30)
    print("ready", flush=True)
    with log.open("a") as out:
        while True:
            request, peer = inbound.recvfrom(65535)
            outbound.send(request)
            try:
                reply: bytes | None = outbound.recv(65535)
            except TimeoutError:
                reply = None
            entry = {
                "request": request.decode("latin-1"),
                "reply": None if reply is None else reply.decode("latin-1"),
            }
            out.write(json.dumps(entry) + "\n")
            out.flush()
            if reply is not None:
                inbound.sendto(reply, peer)


def _ng_body(datagram: str) -> tuple[str, bytes]:
    cookie, _, body = datagram.encode("latin-1").partition(b" ")
    return cookie.decode(), body


def _sdp_lines(sdp: object) -> object:
    """An SDP body as ``sdp.split("\\n")``: a line written with CRLF keeps its ``\\r``."""
    return sdp.split("\n") if isinstance(sdp, str) else sdp


def recorded_steps(log: Path) -> list[dict[str, object]]:
    """The exchanges ``ng_proxy`` wrote to ``log``, decoded into the corpus' step form.

    A request is kept as sent: its ng dictionary (``"encoding": "json"`` when it was
    JSON), or ``"raw"`` when decoding and encoding again would not give the very bytes
    back. ``sdp`` values of requests and replies are lists of lines (:func:`_sdp_lines`):
    the suite writes its SDPs with LF, rtpengine keeps LF on the lines it copies and
    writes CRLF on those it makes, and both must survive.
    """
    if str(ROOT) not in sys.path:  # relayd's codec keeps key order and the exact bytes
        sys.path.insert(0, str(ROOT))
    from relayd.ng import bencode

    steps: list[dict[str, object]] = []
    if not log.exists():
        return steps
    for line in log.read_text().splitlines():
        exchange = json.loads(line)
        _, body = _ng_body(exchange["request"])
        step: dict[str, object] = {}
        request: object
        if body[:1] == b"{":
            request = json.loads(body)
            step["encoding"] = "json"
        else:
            request = bencode.decode(body)
            if bencode.encode(request) != body:
                request = None
        if isinstance(request, dict):
            step["command"] = request.get("command")
            if "sdp" in request:
                request = dict(request, sdp=_sdp_lines(request["sdp"]))
            step["request"] = request
        else:
            step["command"] = None
            step["raw"] = body.decode("utf-8", "surrogateescape")
        if exchange["reply"] is None:
            step["reply"] = None
        else:
            _, reply_body = _ng_body(exchange["reply"])
            if reply_body[:1] == b"{":
                reply = json.loads(reply_body)
                step["reply-encoding"] = "json"
            else:
                reply = bencode.decode(reply_body)
                step["reply-encoding"] = "bencode"
            if isinstance(reply, dict) and "sdp" in reply:
                reply = dict(reply, sdp=_sdp_lines(reply["sdp"]))
            step["reply"] = reply
        steps.append(step)
    return steps


def write_record(directory: Path, result: Result, daemon: str, tag: str, log: Path) -> None:
    """One scenario's conversation as ``directory/scenario-NNN.json``."""
    document = {
        "scenario": result.number,
        "line": result.line,
        "title": result.title,
        "class": result.klass,
        "tag": tag,
        "daemon": daemon,
        "passed": result.passed,
        "steps": recorded_steps(log),
    }
    path = directory / f"scenario-{result.number:03d}.json"
    text = json.dumps(document, indent=1, ensure_ascii=False)
    try:
        text.encode()
    except UnicodeEncodeError:
        # bytes that are not UTF-8 (play media's WAV blob) are surrogates here: written as
        # \udcXX escapes, which json reads back as the same surrogates (and bencode as the bytes)
        text = json.dumps(document, indent=1)
    path.write_text(text + "\n")


def git(repo: Path, *args: str) -> bytes:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True).stdout


def load(repo: Path, tag: str, into: Path) -> str:
    """The suite's text at ``tag``; its Perl helpers extracted under ``into/perl``."""
    archive = git(repo, "archive", "--format=tar", tag, "perl")
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    patch_helpers(into / "perl")
    return git(repo, "show", f"{tag}:{SUITE}").decode()


def netns_up(name: str) -> None:
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    subprocess.run(["ip", "netns", "add", name], check=True)
    commands = [["ip", "link", "set", "lo", "up"]]
    commands += [["ip", "addr", "add", prefix, "dev", "lo"] for prefix in V4_PREFIXES]
    commands += [["ip", "addr", "add", a, "dev", "lo", "nodad"] for a in V6_ADDRESSES]
    commands += [["ip", "-6", "route", "add", "local", V6_LOCAL_ROUTE, "dev", "lo"]]
    commands += [["sysctl", "-qw", "net.ipv6.ip_nonlocal_bind=1"]]
    for command in commands:
        subprocess.run(["ip", "netns", "exec", name, *command], check=True)


def netns_down(name: str) -> None:
    subprocess.run(["ip", "netns", "del", name], capture_output=True)


def ng_ping(namespace: str, deadline: float) -> bool:
    """Whether the daemon in ``namespace`` answers an ng ping before ``deadline``."""
    probe = (
        "import socket,sys\n"
        "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.settimeout(0.2)\n"
        "try:\n"
        " s.sendto(b'x d7:command4:pinge',('127.0.0.1',2223))\n"
        " sys.exit(0 if b'pong' in s.recv(999) else 1)\n"
        "except OSError: sys.exit(1)\n"
    )
    while time.monotonic() < deadline:
        done = subprocess.run(["ip", "netns", "exec", namespace, sys.executable, "-c", probe])
        if done.returncode == 0:
            return True
        time.sleep(0.1)
    return False


NOT_OK = re.compile(r"^not ok \d+ - (.*)$", re.M)
PLAN = re.compile(r"^1\.\.(\d+)$", re.M)


def run_one(
    scenario: Scenario,
    header: str,
    workdir: Path,
    daemon: list[str],
    namespace: str,
    timeout: float,
    record: bool = False,
) -> Result:
    """Run ``scenario`` against a fresh daemon in ``namespace``.

    With ``record`` the client goes through :func:`ng_proxy`, which writes the ng
    conversation to ``scenario-NNN.ng.jsonl`` in ``workdir``.
    """
    script = workdir / f"scenario-{scenario.number:03d}.pl"
    script.write_text(header + scenario.body + "\ndone_testing();\n")
    started = time.monotonic()
    netns_up(namespace)
    log = (workdir / f"scenario-{scenario.number:03d}.daemon.log").open("wb")
    proc = subprocess.Popen(
        ["ip", "netns", "exec", namespace, *daemon],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    proxy: subprocess.Popen[bytes] | None = None
    try:
        if not ng_ping(namespace, time.monotonic() + 20):
            return _result(scenario, False, 0, [], "daemon did not answer ping")
        env = dict(os.environ, RTPE_TEST_NO_LAUNCH="1", PERL5LIB=str(workdir / "perl"))
        if record:
            jsonl = workdir / f"scenario-{scenario.number:03d}.ng.jsonl"
            jsonl.unlink(missing_ok=True)
            proxy = subprocess.Popen(
                ["ip", "netns", "exec", namespace, sys.executable, __file__, "--ng-proxy", jsonl],
                stdout=subprocess.PIPE,
                start_new_session=True,
            )
            assert proxy.stdout is not None
            if proxy.stdout.readline() != b"ready\n":
                return _result(scenario, False, 0, [], "ng recording proxy did not start")
            env["RTPENGINE_PORT"] = str(RECORD_PORT)
        try:
            done = subprocess.run(
                ["ip", "netns", "exec", namespace, "perl", str(script)],
                env=env,
                capture_output=True,
                timeout=timeout,
                cwd=workdir,
            )
            out = done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")
            rc = done.returncode
        except subprocess.TimeoutExpired as exc:
            out = (exc.stdout or b"").decode(errors="replace") + "\n(timed out)"
            rc = -1
        (workdir / f"scenario-{scenario.number:03d}.tap").write_text(out)
        failures = NOT_OK.findall(out)
        passed = rc == 0 and not failures and PLAN.search(out) is not None
        detail = "" if passed else _last_lines(out)
        result = _result(scenario, passed, round(time.monotonic() - started, 1), failures, detail)
        result.tap = out
        return result
    finally:
        if proxy is not None:
            os.killpg(proxy.pid, signal.SIGKILL)
            proxy.wait()
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=5)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
        netns_down(namespace)


def _result(
    scenario: Scenario, passed: bool, seconds: float, failures: list[str], detail: str
) -> Result:
    return Result(
        scenario.number,
        scenario.line,
        scenario.title,
        scenario.klass,
        scenario.in_scope,
        passed,
        seconds,
        failures,
        detail,
    )


def _last_lines(out: str, count: int = 6) -> str:
    lines = [line for line in out.splitlines() if line.strip() and not line.startswith("ok ")]
    return "\n".join(lines[-count:])


def table(results: list[Result]) -> str:
    rows = ["| class | in scope | scenarios | pass | fail |", "|---|---|---:|---:|---:|"]
    order = [name for name, _, _ in CLASSES]
    total = Counter[str]()
    for name in order:
        mine = [r for r in results if r.klass == name]
        if not mine:
            continue
        passed = sum(r.passed for r in mine)
        scope = "yes" if mine[0].in_scope else "no"
        rows.append(f"| {name} | {scope} | {len(mine)} | {passed} | {len(mine) - passed} |")
        key = "in" if mine[0].in_scope else "out"
        total[key + "-all"] += len(mine)
        total[key + "-pass"] += passed
    for key, label in (("in", "**in scope**"), ("out", "out of scope")):
        if total[key + "-all"]:
            all_, ok = total[key + "-all"], total[key + "-pass"]
            rows.append(f"| {label} | | {all_} | {ok} ({100 * ok / all_:.0f} %) | {all_ - ok} |")
    return "\n".join(rows)


def install_perl() -> None:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "install", "-y", "-q", *PERL_PACKAGES], check=True, env=env)


def main() -> int:
    if sys.argv[1:2] == ["--ng-proxy"]:  # run_one's recording relay, inside a namespace
        ng_proxy(Path(sys.argv[2]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, required=True, help="rtpengine git clone")
    parser.add_argument("--tag", default=TAG)
    parser.add_argument("--daemon", choices=["relayd", "rtpengine"], default="relayd")
    parser.add_argument("--only", help="regex over scenario number, line, title, class")
    parser.add_argument("--all", action="store_true", help="out-of-scope scenarios too")
    parser.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 2) - 0))
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per scenario")
    parser.add_argument("--netns-prefix", default="rsuite")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--keep", type=Path, help="keep scripts, TAP and daemon logs here")
    parser.add_argument(
        "--record",
        type=Path,
        metavar="DIR",
        help="write each scenario's ng requests and replies to DIR/scenario-NNN.json",
    )
    parser.add_argument("--install", action="store_true", help="apt-get the Perl modules first")
    parser.add_argument("--list", action="store_true", help="list the scenarios, run nothing")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    if args.install:
        install_perl()

    workdir = Path(tempfile.mkdtemp(prefix="rtpengine-suite-"))
    try:
        header, scenarios = split(load(args.repo, args.tag, workdir))
        # inside if (0) / if ($amr_tests): nothing of them runs in rtpengine's own runs either
        disabled = [s for s in scenarios if s.klass == DISABLED_CLASS]
        chosen = [s for s in scenarios if s.in_scope or (args.all and s not in disabled)]
        if args.only:
            pattern = re.compile(args.only)
            chosen = [
                s for s in chosen if pattern.search(f"#{s.number} L{s.line} {s.title} [{s.klass}]")
            ]
        if args.list:
            for s in chosen:
                print(f"#{s.number:3d} L{s.line:5d} [{s.klass}] {s.title}")
            print(f"{len(chosen)} of {len(scenarios)} scenarios")
            return 0
        if os.geteuid() != 0:
            raise SystemExit("needs root: every scenario runs in a network namespace of its own")
        if args.daemon == "relayd":
            daemon = [sys.executable, "-m", "relayd", *SUITE_ARGS, *RELAYD_EXTRA]
        else:
            daemon = [shutil.which("rtpengine") or "/usr/bin/rtpengine", *SUITE_ARGS]

        if args.record:
            args.record.mkdir(parents=True, exist_ok=True)
        slots = [f"{args.netns_prefix}{i}" for i in range(args.jobs)]
        free = list(slots)
        lock = threading.Lock()
        results: list[Result] = []

        def work(scenario: Scenario) -> Result:
            with lock:
                namespace = free.pop()
            try:
                result = run_one(
                    scenario, header, workdir, daemon, namespace, args.timeout, bool(args.record)
                )
                if args.record:
                    jsonl = workdir / f"scenario-{scenario.number:03d}.ng.jsonl"
                    write_record(args.record, result, args.daemon, args.tag, jsonl)
                return result
            finally:
                with lock:
                    free.append(namespace)

        with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
            for result in pool.map(work, chosen):
                results.append(result)
                mark = "ok  " if result.passed else "FAIL"
                print(
                    f"{mark} #{result.number:3d} L{result.line:5d} [{result.klass}] "
                    f"{result.title} ({result.seconds} s)",
                    flush=True,
                )
                if args.verbose and not result.passed:
                    for line in result.failures[:5] or result.detail.splitlines():
                        print(f"        {line}")
                    for line in sdp_diffs(result.tap):
                        print(f"          {line}")
        print()
        print(f"{SUITE} at {args.tag} against {args.daemon}:")
        print(table(results))
        print(
            f"not run: {len(disabled)} scenarios rtpengine's own runs skip too"
            " (inside if (0) or if ($amr_tests))"
        )
        if args.json:
            args.json.write_text(
                json.dumps(
                    [{k: v for k, v in asdict(r).items() if k != "tap"} for r in results], indent=1
                )
                + "\n"
            )
        return 0 if all(r.passed for r in results) else 1
    finally:
        if args.keep:
            shutil.copytree(workdir, args.keep, dirs_exist_ok=True)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
