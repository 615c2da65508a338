"""Kamailio + sipp calls through the media relay, as operators deploy it.

Debian's Kamailio runs the deployment guide's script (rtpengine_offer on the
INVITE, rtpengine_answer on 18x/2xx, rtpengine_delete on BYE/CANCEL) with its
rtpengine module pointed at the relay under test; a sipp UAC calls a sipp UAS
through it.  Each side must receive an SDP rewritten to the relay's address
and ports.  The same tests run against the real rtpengine 10.5, which shows
that the harness itself is right, and against relayd.

Media: in every call both agents play 2 s of PCMU (100 RTP packets) from the
call's own port to the relay's address in the SDP they received.  dumpcap
records every packet to or from the relay's port range on ``lo``; per call the
test then requires both directions end to end: each agent sent its 100
packets to the relay port it was given, and the relay delivered (nearly) all of
them, unchanged, to the other agent's port, sending from the port it gave that
agent (symmetric RTP), and nothing to anyone else.  The relay's own ng
``query`` of each running call must count RTP received from both parties.
Calls: one, 20 at once, and 200 at 20 per second (about 60 at once).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from relayd.ng.client import NgClient, NgTimeout
from tests.support.kamailio import (
    KamailioProcess,
    KamailioSettings,
    kamailio_available,
    running_kamailio,
)
from tests.support.process import new_session_dying_with_parent
from tests.support.relayd import running_relayd
from tests.support.sipp import (
    SCENARIOS,
    TONE_PACKETS,
    TONE_PCAP,
    PacketCapture,
    SdpSummary,
    SippResult,
    auto_media_port,
    capture_available,
    running_capture,
    running_sipp,
    sipp_available,
    uac_agent,
    uas_agent,
)

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(not kamailio_available(), reason="kamailio with rtpengine.so not installed"),
    pytest.mark.skipif(not sipp_available(), reason="sipp (sip-tester) not installed"),
    pytest.mark.skipif(
        not capture_available(), reason="needs root and dumpcap (raw sockets, capture on lo)"
    ),
]

RTPENGINE_BIN = "/usr/bin/rtpengine"
PROXY = ("127.0.0.1", 25060)
UAC = ("127.0.0.10", 25061)
UAS = ("127.0.0.20", 25062)
# Base of each agent's [auto_media_port]: call n uses base + 4 (n - 1).
UAC_MEDIA_PORT = 26000
UAS_MEDIA_PORT = 28000
CONCURRENT_CALLS = 20
MANY_CALLS = 200
MANY_CALLS_RATE = 20.0
# Each call holds longer than its 2 s of audio, so both players finish.
HOLD_MS = 3000
# Share of each direction's packets the relay must deliver.  On loopback the
# relay should lose none; the margin only covers the first packets of a call
# that can race the answer into the relay.
MIN_DELIVERED = 0.95
# How often the test asks the relay about each running call.
QUERY_INTERVAL_S = 0.5


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


Address = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Leg:
    """One direction of one call's RTP, as captured on the wire."""

    sender: Address
    relay_in: Address  # where the sender was told to send (the relay, from its SDP)
    relay_out: Address  # where the relay must send from (the port it gave the receiver)
    receiver: Address
    sent: int  # sender → relay_in
    delivered: int  # relay_out → receiver
    altered: int  # delivered packets whose bytes the sender never sent
    payload_types: frozenset[int] = frozenset()  # of the delivered RTP packets
    audio: bytes = b""  # the delivered packets' RTP payloads, one after the other
    rtp: tuple[bytes, ...] = ()  # the delivered RTP packets themselves

    def describe(self) -> str:
        return (
            f"{self.sender[0]}:{self.sender[1]} -> relay {self.relay_in[1]}: {self.sent} sent; "
            f"relay {self.relay_out[1]} -> {self.receiver[0]}:{self.receiver[1]}: "
            f"{self.delivered} delivered ({self.altered} altered)"
        )


@dataclass(frozen=True, slots=True)
class CallMedia:
    call_id: str
    to_uas: Leg
    to_uac: Leg


@dataclass(frozen=True, slots=True)
class MediaReport:
    """What one run's capture shows, call by call."""

    calls: Mapping[str, CallMedia]
    stray: Mapping[tuple[Address, Address], int]  # relay packets to no expected peer
    captured: int
    dropped: int | None


@dataclass(frozen=True, slots=True)
class CallRun:
    uac: SippResult
    uas: SippResult
    peak_calls: int
    media: MediaReport
    # The relay's last ng ``query`` of each call: RTP packets it received, per tag.
    relay_rtp: Mapping[str, Mapping[str, int]]


@contextmanager
def running_rtpengine(workdir: Path, relay: Relay, extra: Sequence[str] = ()) -> Iterator[None]:
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
        *extra,
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


def start_relay(stack: ExitStack, workdir: Path, relay: Relay, extra: Sequence[str] = ()) -> None:
    """The relay under test for as long as ``stack`` lasts: rtpengine 10.5 (skipped where it
    is not installed) or relayd (keeping no deleted call), with ``extra`` options."""
    if relay.name == "rtpengine":
        if shutil.which(RTPENGINE_BIN) is None:
            pytest.skip("rtpengine not installed")
        stack.enter_context(running_rtpengine(workdir, relay, extra))
    else:
        stack.enter_context(
            running_relayd(
                workdir,
                ng_port=relay.ng_port,
                port_min=relay.port_min,
                port_max=relay.port_max,
                interface=(relay.address,),
                extra=("--delete-delay", "0", *extra),
            )
        )


@pytest.fixture(scope="module", params=sorted(RELAYS))
def deployment(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    relay = RELAYS[request.param]
    workdir = tmp_path_factory.mktemp(f"kamailio-{relay.name}")
    with ExitStack() as stack:
        start_relay(stack, workdir, relay)
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
    uas_scenario: Path = SCENARIOS / "uas.xml",
    uas_media: Sequence[str] = (TONE_PCAP,),
    uac_scenario: Path = SCENARIOS / "uac.xml",
    uac_media: Sequence[str] = (TONE_PCAP,),
    on_call: Callable[[NgClient, str], None] | None = None,
) -> CallRun:
    """Run ``calls`` UAC→Kamailio→UAS calls with RTP both ways, watching the relay.

    dumpcap captures every packet to or from the relay's media ports while the
    calls run; meanwhile the relay's ``list`` gives the peak of concurrent calls
    and a ``query`` of each running call (every ``QUERY_INTERVAL_S``) its own
    packet counters. ``on_call`` is called once for each call as it first shows in ``list``
    (an ng request of the test's own, e.g. ``block DTMF``).
    """
    relay = deployment.relay
    peak = 0
    relay_rtp: dict[str, dict[str, int]] = {}
    queried: dict[str, float] = {}
    with (
        running_capture(workdir, bpf=_relay_media_filter(relay)) as capture,
        deployment.ng() as ng,
        running_sipp(
            uas_agent(
                workdir,
                calls=calls,
                local=UAS,
                media_port=UAS_MEDIA_PORT,
                scenario=uas_scenario,
                media_files=uas_media,
                timeout_s=timeout_s,
            )
        ) as uas,
        running_sipp(
            uac_agent(
                workdir,
                proxy=PROXY,
                uas=UAS,
                calls=calls,
                rate=rate,
                call_duration_ms=call_duration_ms,
                local=UAC,
                media_port=UAC_MEDIA_PORT,
                scenario=uac_scenario,
                media_files=uac_media,
                timeout_s=timeout_s,
            )
        ) as uac,
    ):
        deadline = time.monotonic() + timeout_s + 5.0
        while uac.running() and time.monotonic() < deadline:
            active = _active_calls(ng) or []
            peak = max(peak, len(active))
            now = time.monotonic()
            for call_id in active:
                if on_call is not None and isinstance(call_id, str) and call_id not in queried:
                    on_call(ng, call_id)
                if isinstance(call_id, str) and now - queried.get(call_id, 0.0) >= QUERY_INTERVAL_S:
                    queried[call_id] = now
                    counts = _query_rtp_packets(ng, call_id)
                    if counts is not None:
                        relay_rtp[call_id] = counts
            time.sleep(0.05)
        uac_result = uac.wait(timeout=max(0.0, deadline - time.monotonic()))
        uas_result = uas.wait(timeout=3.0)
        # Let the last forwarded packets reach the capture before stopping it.
        time.sleep(0.2)
    media = _media_report(capture, uac_result, uas_result, relay)
    return CallRun(uac_result, uas_result, peak, media, relay_rtp)


def _relay_media_filter(relay: Relay) -> str:
    """BPF for UDP between the agents and the relay's media ports (RTP and RTCP).

    Naming the agents' addresses keeps out other loopback traffic whose
    ephemeral ports happen to fall into the relay's range.
    """
    ports = f"{relay.port_min}-{relay.port_max + 1}"
    agents = f"host {UAC[0]} or host {UAS[0]}"
    return (
        f"udp and ({agents}) and ((src host {relay.address} and src portrange {ports}) or "
        f"(dst host {relay.address} and dst portrange {ports}))"
    )


def _query_rtp_packets(ng: NgClient, call_id: str) -> dict[str, int] | None:
    """RTP packets the relay received from each party (tag) of a call, per ``query``.

    rtpengine's reply lists, per tag, its medias and their packet streams;
    each stream's ``stats`` counts what arrived from that party.  RTCP streams
    (odd local ports) are left out.
    """
    try:
        reply = ng.call("query", **{"call-id": call_id})
    except NgTimeout:
        return None
    tags = reply.get("tags")
    if reply.get("result") != "ok" or not isinstance(tags, dict):
        return None
    counts: dict[str, int] = {}
    for tag, info in tags.items():
        total = 0
        for media in _dicts(info.get("medias") if isinstance(info, dict) else None):
            for stream in _dicts(media.get("streams")):
                port = stream.get("local port")
                stats = stream.get("stats")
                if isinstance(port, int) and port % 2 == 0 and isinstance(stats, dict):
                    packets = stats.get("packets")
                    total += packets if isinstance(packets, int) else 0
        counts[str(tag)] = total
    return counts


def _dicts(value: object) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _media_report(
    capture: PacketCapture, uac: SippResult, uas: SippResult, relay: Relay
) -> MediaReport:
    """Match the capture against each call's four media endpoints (from the SDPs)."""
    packets = capture.packets()
    flows: dict[tuple[Address, Address], list[bytes]] = defaultdict(list)
    for packet in packets:
        flows[(packet.src, packet.dst)].append(packet.payload)
    uac_offers, uac_answers = uac.sent_sdp(), uac.received_sdp()
    uas_answers, uas_offers = uas.sent_sdp(), uas.received_sdp()
    calls: dict[str, CallMedia] = {}
    expected: set[tuple[Address, Address]] = set()
    for call_id, offer in uac_offers.items():
        if not all(call_id in sdps for sdps in (uac_answers, uas_answers, uas_offers)):
            continue
        uac_media = _audio_address(offer)
        uas_media = _audio_address(uas_answers[call_id])
        relay_for_uac = _audio_address(uac_answers[call_id])  # where the UAC sends
        relay_for_uas = _audio_address(uas_offers[call_id])  # where the UAS sends
        calls[call_id] = CallMedia(
            call_id,
            to_uas=_leg(flows, uac_media, relay_for_uac, relay_for_uas, uas_media),
            to_uac=_leg(flows, uas_media, relay_for_uas, relay_for_uac, uac_media),
        )
        expected |= {(relay_for_uas, uas_media), (relay_for_uac, uac_media)}
    stray = {
        flow: len(payloads)
        for flow, payloads in flows.items()
        if flow[0][0] == relay.address and flow not in expected
    }
    return MediaReport(calls, stray, len(packets), capture.dropped())


def _audio_address(sdp: SdpSummary) -> Address:
    audio = sdp.media[0]
    assert audio.connection is not None, sdp.text
    return (audio.connection, audio.port)


def _leg(
    flows: Mapping[tuple[Address, Address], list[bytes]],
    sender: Address,
    relay_in: Address,
    relay_out: Address,
    receiver: Address,
) -> Leg:
    sent = flows.get((sender, relay_in), [])
    delivered = flows.get((relay_out, receiver), [])
    originals = set(sent)
    rtp = [p for p in delivered if len(p) > 12 and p[0] >> 6 == 2 and not 72 <= p[1] & 0x7F <= 76]
    return Leg(
        sender,
        relay_in,
        relay_out,
        receiver,
        sent=len(sent),
        delivered=len(delivered),
        altered=sum(1 for payload in delivered if payload not in originals),
        payload_types=frozenset(p[1] & 0x7F for p in rtp),
        audio=b"".join(p[12 + 4 * (p[0] & 0x0F) :] for p in rtp),
        rtp=tuple(rtp),
    )


def _active_calls(ng: NgClient) -> list[object] | None:
    """The relay's ``list`` of call-ids; None when it gives no proper answer."""
    try:
        reply = ng.call("list", limit=MANY_CALLS * 2)
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


def assert_media_both_ways(run: CallRun, calls: int, *, transcoded: bool = False) -> None:
    """Every call's RTP went through the relay, both ways, end to end.

    Each agent sent its whole tone to the relay port its SDP named (this also
    shows the capture saw everything), and the relay delivered at least
    ``MIN_DELIVERED`` of it, unaltered (``transcoded``: altered, every packet),
    to the other agent's port, from the port it gave that agent.  The relay sent
    nothing elsewhere, and its own counters show RTP received from both parties.
    """
    media = run.media
    assert media.dropped == 0, f"capture lost {media.dropped} packets; counts unreliable"
    assert len(media.calls) == calls, f"{len(media.calls)} calls with SDP on all sides"
    problems: list[str] = []
    for call in media.calls.values():
        for name, leg in (("uac->uas", call.to_uas), ("uas->uac", call.to_uac)):
            if leg.sent != TONE_PACKETS:
                problems.append(f"{call.call_id} {name}: sender sent {leg.sent}: {leg.describe()}")
            elif leg.delivered < MIN_DELIVERED * leg.sent or leg.altered != (
                leg.delivered if transcoded else 0
            ):
                problems.append(f"{call.call_id} {name}: {leg.describe()}")
    assert not problems, (
        f"{len(problems)} of {2 * calls} directions short ({media.captured} packets captured):\n"
        + "\n".join(problems[:20])
    )
    assert not media.stray, f"relay sent packets to no call's peer: {dict(media.stray)}"
    counted = {
        call_id: counts
        for call_id, counts in run.relay_rtp.items()
        if len(counts) == 2 and all(n > 0 for n in counts.values())
    }
    missing = sorted(set(media.calls) - set(counted))
    assert not missing, (
        f"relay query shows no RTP from both parties for {len(missing)} calls, e.g. "
        f"{[(cid, run.relay_rtp.get(cid)) for cid in missing[:5]]}"
    )


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
    run = place_calls(
        deployment, tmp_path, calls=1, rate=10, call_duration_ms=HOLD_MS, timeout_s=15
    )
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
    assert_media_both_ways(run, calls=1)
    assert_no_calls_left(deployment)


def test_concurrent_calls(deployment: Deployment, tmp_path: Path) -> None:
    run = place_calls(
        deployment,
        tmp_path,
        calls=CONCURRENT_CALLS,
        rate=50,
        call_duration_ms=HOLD_MS,
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
    # Every call has its own media port on each agent, as relayd learns them per call.
    for agent, base in ((run.uac, UAC_MEDIA_PORT), (run.uas, UAS_MEDIA_PORT)):
        own_ports = sorted(_audio_address(sdp)[1] for sdp in agent.sent_sdp().values())
        assert own_ports == [auto_media_port(base, n) for n in range(1, CONCURRENT_CALLS + 1)]
    # All calls were up in the relay at once (the UAC's rate and hold overlap them).
    assert run.peak_calls == CONCURRENT_CALLS
    assert_media_both_ways(run, calls=CONCURRENT_CALLS)
    assert_no_calls_left(deployment)


def test_many_calls_at_a_rate(deployment: Deployment, tmp_path: Path) -> None:
    """200 calls at 20 per second, each 3 s with 2 s of two-way RTP: about 60 at once."""
    run = place_calls(
        deployment,
        tmp_path,
        calls=MANY_CALLS,
        rate=MANY_CALLS_RATE,
        call_duration_ms=HOLD_MS,
        timeout_s=40,
    )
    assert_completed(run, deployment, calls=MANY_CALLS)
    offers = run.uas.received_sdp()
    answers = run.uac.received_sdp()
    assert len(offers) == len(answers) == MANY_CALLS
    # The rate and hold overlap calls well beyond the 20-call test.
    assert run.peak_calls >= 40, run.peak_calls
    assert_media_both_ways(run, calls=MANY_CALLS)
    assert_no_calls_left(deployment)
