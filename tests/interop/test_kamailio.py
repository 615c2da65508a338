"""Kamailio + sipp calls through the media relay, as operators deploy it.

Debian's Kamailio runs the deployment guide's script (rtpengine_offer on the
INVITE, rtpengine_answer on 18x/2xx, rtpengine_delete on BYE/CANCEL) with its
rtpengine module pointed at the relay under test; a sipp UAC calls a sipp UAS
through it.  Each side must receive an SDP rewritten to the relay's address
and ports.  The same tests run against the real rtpengine 10.5, which shows
that the harness itself is right, and against relayd.

Later: RTP both ways (rtp_stream / pcap play in the scenarios' marked places),
20 concurrent calls and 200 calls at a modest rate, through ``place_calls``.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from relayd.ng.client import NgClient, NgTimeout
from tests.support.kamailio import (
    KamailioProcess,
    KamailioSettings,
    kamailio_available,
    new_session_dying_with_parent,
    running_kamailio,
)
from tests.support.relayd import running_relayd
from tests.support.sipp import (
    SdpSummary,
    SippResult,
    running_sipp,
    sipp_available,
    uac_agent,
    uas_agent,
)

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(not kamailio_available(), reason="kamailio with rtpengine.so not installed"),
    pytest.mark.skipif(not sipp_available(), reason="sipp (sip-tester) not installed"),
]

RTPENGINE_BIN = "/usr/bin/rtpengine"
PROXY = ("127.0.0.1", 25060)
UAC = ("127.0.0.10", 25061)
UAS = ("127.0.0.20", 25062)
CONCURRENT_CALLS = 20


@dataclass(frozen=True, slots=True)
class Relay:
    """A media relay under test and what its SDP must say."""

    name: str
    ng_port: int
    port_min: int
    port_max: int
    address: str = "127.0.0.1"

    @property
    def ng_address(self) -> tuple[str, int]:
        return (self.address, self.ng_port)


RELAYS = {
    "rtpengine": Relay("rtpengine", ng_port=22240, port_min=43000, port_max=43999),
    "relayd": Relay("relayd", ng_port=22241, port_min=42000, port_max=42999),
}


@dataclass(frozen=True, slots=True)
class Deployment:
    relay: Relay
    proxy: KamailioProcess

    def ng(self) -> NgClient:
        return NgClient(self.relay.ng_address, timeout=1.0, retries=1)


@dataclass(frozen=True, slots=True)
class CallRun:
    uac: SippResult
    uas: SippResult
    peak_calls: int


@contextmanager
def running_rtpengine(workdir: Path, relay: Relay) -> Iterator[None]:
    """The real rtpengine, userspace only, keeping no deleted call around."""
    log_path = workdir / "rtpengine.log"
    args = [
        RTPENGINE_BIN,
        "--foreground",
        "--config-file=none",
        "--table=-1",
        f"--interface={relay.address}",
        f"--listen-ng={relay.address}:{relay.ng_port}",
        f"--port-min={relay.port_min}",
        f"--port-max={relay.port_max}",
        "--delete-delay=0",
        "--log-stderr",
        "--log-level=7",
        f"--pidfile={workdir / 'rtpengine.pid'}",
    ]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            preexec_fn=new_session_dying_with_parent,
        )
    try:
        _wait_pong(relay, proc, log_path)
        yield
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def _wait_pong(relay: Relay, proc: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + 10.0
    with NgClient(relay.ng_address, timeout=0.2, retries=0) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"rtpengine exited at start-up:\n{log_path.read_text()}")
            try:
                if client.call("ping").get("result") == "pong":
                    return
            except (NgTimeout, ConnectionRefusedError):
                time.sleep(0.05)
    raise RuntimeError(f"rtpengine did not answer ping:\n{log_path.read_text()}")


@pytest.fixture(scope="module", params=sorted(RELAYS))
def deployment(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    relay = RELAYS[request.param]
    workdir = tmp_path_factory.mktemp(f"kamailio-{relay.name}")
    with ExitStack() as stack:
        if relay.name == "rtpengine":
            if shutil.which(RTPENGINE_BIN) is None:
                pytest.skip("rtpengine not installed")
            stack.enter_context(running_rtpengine(workdir, relay))
        else:
            stack.enter_context(
                running_relayd(
                    workdir,
                    ng_port=relay.ng_port,
                    port_min=relay.port_min,
                    port_max=relay.port_max,
                    interface=(relay.address,),
                    extra=("--delete-delay", "0"),
                )
            )
        proxy = stack.enter_context(
            running_kamailio(workdir, KamailioSettings(ng_port=relay.ng_port))
        )
        yield Deployment(relay, proxy)


def place_calls(
    deployment: Deployment,
    workdir: Path,
    *,
    calls: int,
    rate: float,
    call_duration_ms: int,
    timeout_s: float,
) -> CallRun:
    """Run ``calls`` UAC→Kamailio→UAS calls, watching the relay's call count."""
    peak = 0
    with (
        deployment.ng() as ng,
        running_sipp(uas_agent(workdir, calls=calls, local=UAS, timeout_s=timeout_s)) as uas,
        running_sipp(
            uac_agent(
                workdir,
                proxy=PROXY,
                uas=UAS,
                calls=calls,
                rate=rate,
                call_duration_ms=call_duration_ms,
                local=UAC,
                timeout_s=timeout_s,
            )
        ) as uac,
    ):
        deadline = time.monotonic() + timeout_s + 5.0
        while uac.running() and time.monotonic() < deadline:
            peak = max(peak, len(_active_calls(ng) or ()))
            time.sleep(0.05)
        uac_result = uac.wait(timeout=max(0.0, deadline - time.monotonic()))
        uas_result = uas.wait(timeout=3.0)
    return CallRun(uac_result, uas_result, peak)


def _active_calls(ng: NgClient) -> list[object] | None:
    """The relay's ``list`` of call-ids; None when it gives no proper answer."""
    try:
        reply = ng.call("list")
    except NgTimeout:
        return None
    calls = reply.get("calls")
    if reply.get("result") != "ok" or not isinstance(calls, list):
        return None
    return calls


def assert_no_calls_left(deployment: Deployment) -> None:
    """Every offer was deleted again (the relay runs with delete-delay 0)."""
    with deployment.ng() as ng:
        deadline = time.monotonic() + 2.0
        left = _active_calls(ng)
        while left != [] and time.monotonic() < deadline:
            time.sleep(0.1)
            left = _active_calls(ng)
    assert left is not None, f"{deployment.relay.name} gave no proper answer to ng list"
    assert left == [], f"{deployment.relay.name} still holds calls {left}"


def assert_completed(run: CallRun, deployment: Deployment, calls: int) -> None:
    for result in (run.uac, run.uas):
        assert not result.timed_out, result.describe()
        assert result.returncode == 0, result.describe()
        assert result.successful_calls == calls, result.describe()
        assert result.failed_calls == 0, result.describe()
    assert deployment.proxy.failures() == [], deployment.proxy.log()[-4000:]


def assert_rewritten(sdp: SdpSummary, relay: Relay, *, hidden: Sequence[str]) -> int:
    """``sdp`` points at the relay only; returns its audio port."""
    assert sdp.origin_address == relay.address, sdp.text  # replace-origin
    assert sdp.session_connection == relay.address, sdp.text  # replace-session-connection
    assert len(sdp.media) == 1, sdp.text
    audio = sdp.media[0]
    assert audio.media == "audio", sdp.text
    assert audio.protocol == "RTP/AVP", sdp.text
    assert audio.formats == ("0", "101"), sdp.text
    assert audio.connection == relay.address, sdp.text
    assert relay.port_min <= audio.port <= relay.port_max, sdp.text
    assert audio.rtcp_port == audio.port + 1, sdp.text
    for address in hidden:
        assert address not in sdp.text, sdp.text
    return audio.port


def test_one_call(deployment: Deployment, tmp_path: Path) -> None:
    run = place_calls(deployment, tmp_path, calls=1, rate=10, call_duration_ms=200, timeout_s=10)
    assert_completed(run, deployment, calls=1)

    (call_id,) = {m.call_id for m in run.uac.messages}
    assert [m.method for m in run.uas.received(call_id)] == ["INVITE", "ACK", "BYE"]
    replies = [(m.status, m.method) for m in run.uac.received(call_id)]
    assert (180, "INVITE") in replies
    assert replies[-2:] == [(200, "INVITE"), (200, "BYE")]
    # Kamailio's Record-Route brought ACK and BYE through the proxy.
    for message in run.uas.received(call_id):
        assert (message.header("Via") or "").startswith(f"SIP/2.0/UDP {PROXY[0]}:{PROXY[1]}")

    offer = run.uas.received_sdp()[call_id]
    answer = run.uac.received_sdp()[call_id]
    offer_port = assert_rewritten(offer, deployment.relay, hidden=(UAC[0],))
    answer_port = assert_rewritten(answer, deployment.relay, hidden=(UAS[0],))
    assert offer_port != answer_port
    assert run.peak_calls <= 1
    assert_no_calls_left(deployment)


def test_concurrent_calls(deployment: Deployment, tmp_path: Path) -> None:
    run = place_calls(
        deployment,
        tmp_path,
        calls=CONCURRENT_CALLS,
        rate=50,
        call_duration_ms=2000,
        timeout_s=20,
    )
    assert_completed(run, deployment, calls=CONCURRENT_CALLS)

    offers = run.uas.received_sdp()
    answers = run.uac.received_sdp()
    assert len(offers) == len(answers) == CONCURRENT_CALLS
    assert offers.keys() == answers.keys()
    ports = [assert_rewritten(sdp, deployment.relay, hidden=(UAC[0],)) for sdp in offers.values()]
    ports += [assert_rewritten(sdp, deployment.relay, hidden=(UAS[0],)) for sdp in answers.values()]
    assert len(set(ports)) == 2 * CONCURRENT_CALLS, sorted(ports)
    # All calls were up in the relay at once (the UAC's rate and hold overlap them).
    assert run.peak_calls == CONCURRENT_CALLS
    assert_no_calls_left(deployment)
