"""A real browser through relayd: headless Chromium (WebRTC) ↔ relayd ↔ plain RTP.

Chromium (Debian's ``chromium``, fake microphone) runs in the browser's
namespace and loads ``tests/data/browser/webrtc.html`` from a small HTTP server
the test runs in the same namespace (on its loopback). The test plays Kamailio
with the flags deployments use:

* browser caller (``?role=offer``): the page POSTs its offer; the test sends it
  to relayd with ``ICE=remove``, ``transport-protocol: RTP/AVP``,
  ``rtcp-mux: [demux]``, ``SDES-off``, answers with the plain endpoint's SDP
  through relayd and returns relayd's answer to the page;
* browser callee (``?role=answer``): the plain caller's offer goes through relayd
  with ``ICE=force DTLS=passive SDES-off``, ``UDP/TLS/RTP/SAVPF``,
  ``rtcp-mux: [offer, require]``, ``generate-mid``; the page GETs it and POSTs
  its answer, which goes back through relayd with ``ICE=remove DTLS=off
  SDES-off``, ``RTP/AVP``. Here the browser starts as the controlled ICE agent.

The page reports its ``getStats()`` every 250 ms (POST /stats). Passes when the
browser is connected (ICE and DTLS), its ``inbound-rtp`` counts PCMU packets
whose decoded audio peaks at the plain side's tone (decrypted from the SRTP
relayd made), it parsed the plain side's RTCP sender report, and the plain
endpoint received the browser's audio as plain RTP PCMU from relayd's port.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from relayd.ng.client import NgClient
from tests.netns.calls import (
    ANSWER_TO_PLAIN,
    CALLEE_TAG,
    CALLER_TAG,
    OFFER_TO_PLAIN,
    OFFER_TO_WEBRTC,
    Advertised,
    advertised,
    ok,
    sdp,
)
from tests.netns.conftest import StartRelay
from tests.support.netns import Topology, exec_args, inside
from tests.support.process import new_session_dying_with_parent
from tests.support.rtp_peer import Peer, Received
from tests.support.tone import tone_pcmu

pytestmark = pytest.mark.netns

PAGE_DIR = Path(__file__).resolve().parents[1] / "data" / "browser"
PLAIN_PORT = 6000
PLAIN_SSRC = 0x5EED5EED
PLAIN_HZ = 1000.0  # the tone the plain side sends
SR_COUNT = 4242
ENOUGH = 50  # one second of audio each way
LIMIT = 40.0  # seconds for the whole call, browser start-up included

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
]


def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    return path


def chromium_runs(binary: str, tmp_path: Path) -> str | None:
    """Why Chromium cannot run here (None when it renders a page)."""
    page = tmp_path / "probe.html"
    page.write_text("<html><body><p>probe-ok</p></body></html>")
    try:
        proc = subprocess.run(
            [binary, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'probe'}", "--dump-dom",
             page.as_uri()],
            capture_output=True,
            text=True,
            timeout=60,
            preexec_fn=new_session_dying_with_parent,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"chromium does not run here: {exc}"
    if "probe-ok" not in proc.stdout:
        return f"chromium does not run here (exit {proc.returncode}): {proc.stderr[-500:]}"
    return None


class Signalling:
    """Kamailio's part, for a browser caller (``role`` offer) or callee (answer)."""

    def __init__(self, ng: NgClient, topo: Topology, role: str) -> None:
        self.ng = ng
        self.topo = topo
        self.role = role
        self.call_id = f"browser-{role}"
        # the plain party: the callee when the browser calls, else the caller
        self.plain = topo.callee if role == "offer" else topo.caller
        self.browser = topo.caller if role == "offer" else topo.callee
        self.to_browser = ""  # relayd's SDP for the browser
        self.from_browser = ""  # the browser's SDP
        self.to_plain = ""  # relayd's SDP for the plain party
        self.answered = threading.Event()
        self.stats: dict[str, Any] = {}
        self.errors: list[str] = []

    def plain_offer(self) -> None:
        """The plain caller's offer, through relayd, for the browser to fetch."""
        self.to_browser = ok(
            self.ng.call(
                "offer",
                call_id=self.call_id,
                from_tag=CALLER_TAG,
                sdp=sdp(self.plain.ip4, PLAIN_PORT),
                direction=["caller", "callee"],
                **OFFER_TO_WEBRTC,
            )
        )["sdp"]

    def browser_offer(self, offer: str) -> str:
        self.from_browser = offer
        self.to_plain = ok(
            self.ng.call(
                "offer",
                call_id=self.call_id,
                from_tag=CALLER_TAG,
                sdp=offer,
                direction=["caller", "callee"],
                **OFFER_TO_PLAIN,
            )
        )["sdp"]
        self.to_browser = ok(
            self.ng.call(
                "answer",
                call_id=self.call_id,
                from_tag=CALLER_TAG,
                to_tag=CALLEE_TAG,
                sdp=sdp(self.plain.ip4, PLAIN_PORT),
            )
        )["sdp"]
        self.answered.set()
        return self.to_browser

    def browser_answer(self, answer: str) -> None:
        self.from_browser = answer
        self.to_plain = ok(
            self.ng.call(
                "answer",
                call_id=self.call_id,
                from_tag=CALLER_TAG,
                to_tag=CALLEE_TAG,
                sdp=answer,
                **ANSWER_TO_PLAIN,
            )
        )["sdp"]
        self.answered.set()


def handler(signalling: Signalling) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _reply(self, code: int, body: bytes, kind: str = "text/plain") -> None:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path == "/offer" and signalling.role == "answer":
                self._reply(200, signalling.to_browser.encode(), "application/sdp")
                return
            name = self.path.lstrip("/").split("?")[0] or "webrtc.html"
            path = PAGE_DIR / name
            if "/" in name or not path.is_file():
                self._reply(404, b"not found")
                return
            kind = "text/html" if name.endswith(".html") else "text/javascript"
            self._reply(200, path.read_bytes(), kind)

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
            if self.path in ("/offer", "/answer"):
                try:
                    if self.path == "/offer" and signalling.role == "offer":
                        reply = signalling.browser_offer(body)
                    elif self.path == "/answer" and signalling.role == "answer":
                        signalling.browser_answer(body)
                        reply = ""
                    else:
                        raise ValueError(f"unexpected {self.path} as {signalling.role}")
                except Exception as exc:  # reported to the test through errors
                    signalling.errors.append(f"signalling: {exc!r}")
                    self._reply(500, str(exc).encode())
                    return
                self._reply(200, reply.encode(), "application/sdp")
            elif self.path == "/stats":
                signalling.stats = json.loads(body)
                self._reply(204, b"")
            elif self.path == "/error":
                signalling.errors.append(f"page: {body}")
                self._reply(204, b"")
            else:
                self._reply(404, b"not found")

    return Handler


@contextlib.contextmanager
def page_server(ns: str, signalling: Signalling) -> Iterator[int]:
    """The test page and the signalling endpoints on ``ns``'s loopback; yields the port."""
    with inside(ns):
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler(signalling))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    thread.daemon = True
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@contextlib.contextmanager
def browser(ns: str, binary: str, url: str, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Headless Chromium in ``ns`` on ``url``; killed with all its processes afterwards."""
    log = open(tmp_path / "chromium.log", "wb")  # noqa: SIM115 (closed below)
    args = [binary, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", url]
    proc = subprocess.Popen(
        exec_args(ns, args),
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=new_session_dying_with_parent,
    )
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the browser and its helpers: one group
        proc.wait(10)
        log.close()


def pcmu_frame(seq: int) -> bytes:
    header = bytes([0x80, 0]) + (seq & 0xFFFF).to_bytes(2, "big")
    header += (seq * 160 & 0xFFFFFFFF).to_bytes(4, "big") + PLAIN_SSRC.to_bytes(4, "big")
    return header + tone_pcmu(PLAIN_HZ, seq)


def sender_report() -> bytes:
    return (
        bytes([0x80, 200, 0, 6])
        + PLAIN_SSRC.to_bytes(4, "big")
        + bytes(8)
        + (SR_COUNT * 160).to_bytes(4, "big")
        + SR_COUNT.to_bytes(4, "big")
        + (SR_COUNT * 160).to_bytes(4, "big")
    )


def done(stats: dict[str, Any], got: list[Received]) -> bool:
    inbound = stats.get("inbound") or {}
    return (
        len(got) >= ENOUGH
        and inbound.get("packetsReceived", 0) >= ENOUGH
        and inbound.get("totalAudioEnergy", 0) > 0
        and abs(stats.get("peakHz", 0) - PLAIN_HZ) < 30
        and (stats.get("remoteOutbound") or {}).get("packetsSent") == SR_COUNT
    )


@pytest.mark.parametrize("role", ["offer", "answer"], ids=["browser-caller", "browser-callee"])
def test_chromium_and_plain_rtp(
    topo: Topology,
    start_relay: StartRelay,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    role: str,
) -> None:
    binary = chromium()
    reason = chromium_runs(binary, tmp_path)
    if reason is not None:
        pytest.skip(reason)
    relay = start_relay()
    plain_host = topo.callee if role == "offer" else topo.caller
    browser_tag, plain_tag = (
        (CALLER_TAG, CALLEE_TAG) if role == "offer" else (CALLEE_TAG, CALLER_TAG)
    )
    with (
        relay.client() as ng,
        Peer(plain_host.ns, plain_host.ip4, PLAIN_PORT) as plain,
        Peer(plain_host.ns, plain_host.ip4, PLAIN_PORT + 1) as plain_rtcp,
    ):
        signalling = Signalling(ng, topo, role)
        if role == "answer":
            signalling.plain_offer()
        got: list[Received] = []
        url_of = "http://127.0.0.1:{}/webrtc.html?role=" + role
        try:
            with (
                page_server(signalling.browser.ns, signalling) as port,
                browser(signalling.browser.ns, binary, url_of.format(port), tmp_path),
            ):
                start = time.monotonic()
                while not signalling.answered.wait(0.1):
                    assert not signalling.errors, signalling.errors
                    assert time.monotonic() - start < LIMIT, "no signalling from the page"
                # the plain party sends where relayd's SDP for it says
                to_relay: Advertised = advertised(signalling.to_plain)
                for seq in itertools.count():
                    plain.send(pcmu_frame(seq), to_relay.rtp_to)
                    if seq % 10 == 0:
                        plain_rtcp.send(sender_report(), to_relay.rtcp_to)
                    got += plain.receive(64, timeout=0.0)
                    if done(signalling.stats, got) or signalling.errors:
                        break
                    if time.monotonic() - start > LIMIT:
                        break
                    time.sleep(max(start + (seq + 1) * 0.02 - time.monotonic(), 0.0))
                during = ok(ng.call("query", call_id=signalling.call_id))
        finally:
            log = tmp_path / "chromium.log"
            report = getattr(request.node, "rep_call", None)
            if log.exists() and (report is None or report.failed):
                request.node.add_report_section("call", "chromium log", log.read_text()[-8000:])

    stats = signalling.stats
    assert not signalling.errors, signalling.errors
    # what the browser got from relayd, and what relayd made of the browser's SDP
    to_browser, from_browser = signalling.to_browser, signalling.from_browser
    for feature in ("a=mid:", "a=rtcp-mux", "a=fingerprint:", "a=ice-ufrag:", "a=candidate:"):
        assert feature in to_browser and feature in from_browser, feature
    assert "UDP/TLS/RTP/SAVPF" in to_browser
    assert ("a=setup:active" if role == "offer" else "a=setup:actpass") in to_browser
    m_line = next(ln for ln in signalling.to_plain.splitlines() if ln.startswith("m=audio "))
    assert m_line.split()[2] == "RTP/AVP", m_line
    assert "a=fingerprint" not in signalling.to_plain
    # the browser: connected, decrypting PCMU, the plain side's tone in the decoded audio,
    # the plain side's sender report parsed
    assert stats.get("connection") == "connected", stats
    assert (stats.get("transport") or {}).get("dtlsState") == "connected", stats
    inbound = stats.get("inbound") or {}
    assert inbound.get("codec") == "audio/PCMU", stats
    assert inbound.get("packetsReceived", 0) >= ENOUGH, stats
    assert inbound.get("totalAudioEnergy", 0) > 0, stats
    assert stats.get("peakHz") == pytest.approx(PLAIN_HZ, abs=30), stats
    assert (stats.get("remoteOutbound") or {}).get("packetsSent") == SR_COUNT, stats
    # the plain endpoint: plain RTP PCMU from relayd's port, one SSRC, in order
    assert len(got) >= ENOUGH, f"the plain side got {len(got)} packets; browser: {stats}"
    assert {p.source for p in got} == {to_relay.rtp_to}
    assert {(p.data[0] >> 6, p.data[1] & 0x7F) for p in got} == {(2, 0)}
    assert len({p.data[8:12] for p in got}) == 1
    seqs = [int.from_bytes(p.data[2:4], "big") for p in got]
    assert all((b - a) & 0xFFFF in range(1, 100) for a, b in itertools.pairwise(seqs))
    assert {len(p.data) for p in got} == {172}  # 20 ms of PCMU, no SRTP tag left over
    # query: the browser's media is UDP/TLS/RTP/SAVPF with rtcp-mux, media counted
    media = during["tags"][browser_tag]["medias"][0]
    assert media["protocol"] == "UDP/TLS/RTP/SAVPF" and "rtcp-mux" in media["flags"]
    assert during["tags"][plain_tag]["medias"][0]["protocol"] == "RTP/AVP"
    assert media["streams"][0]["stats"]["errors"] == 0
