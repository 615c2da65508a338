"""DTMF through Kamailio to a PCMA callee, and ``block DTMF`` (issue 16's interop check).

Kamailio runs the deployment guide's script with ``transcode-PCMA always-transcode`` in
``rtpengine_offer``'s flags (as tests/interop/test_kamailio_transcoding.py, and
``always-transcode`` so that a callee without telephone-event leaves it in the answer to the
caller: with ``transcode-PCMA`` alone rtpengine 10.5, and relayd with it, answer the caller
without telephone-event, and a caller that keeps to its answer sends its digits as tones,
which reach the callee transcoded like any audio). The sipp UAC offers PCMU and
telephone-event and plays ``dtmf-pcmu.pcap`` (tests/support/media_files.py): PCMU silence
with the RFC 4733 digits 1, 5, 9. The sipp UAS answers PCMA with telephone-event
(scenarios/uas-pcma.xml) or PCMA only (scenarios/uas-pcma-only.xml). From the capture of what
the relay delivers to the callee, the digits the callee hears: the RFC 4733 events of the
telephone-event it agreed to, and the tones its PCMA decodes to, found by relayd's Goertzel
detector (relayd/transcode/dtmfdetect.py). Unblocked the callee must hear 1, 5, 9; with
``block DTMF`` (the whole call, sent as soon as the call shows in the relay's ``list``,
before the digits: they follow a second of silence) nothing, and no telephone-event packet
reaches it.

Known gap, marked (strict, so that the mark goes when it is closed): PCMA-only callee,
blocked, rtpengine: 10.5's ``drop`` does not stop the tones it makes of the events.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from relayd.ng.client import NgClient
from relayd.transcode import g711
from relayd.transcode.dtmfdetect import DtmfDetector
from tests.interop.test_kamailio import (
    Deployment,
    Leg,
    Relay,
    assert_completed,
    place_calls,
    start_relay,
)
from tests.interop.test_kamailio import pytestmark as KAMAILIO_HARNESS
from tests.support.kamailio import KamailioSettings, running_kamailio
from tests.support.media_files import DTMF_DIGITS, DTMF_PCAP
from tests.support.sipp import SCENARIOS

pytestmark = KAMAILIO_HARNESS

RELAYS = {
    "rtpengine": Relay("rtpengine", ng_port=47501, port_min=47750, port_max=47999),
    "relayd": Relay("relayd", ng_port=47500, port_min=47510, port_max=47749),
}
CALLEES = {"pcma+te": "uas-pcma.xml", "pcma-only": "uas-pcma-only.xml"}
CODES = "0123456789*#ABCD"
EVENT_PT = 101


@pytest.fixture(scope="module", params=sorted(RELAYS))
def deployment(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    relay = RELAYS[request.param]
    workdir = tmp_path_factory.mktemp(f"dtmf-{relay.name}")
    with ExitStack() as stack:
        start_relay(stack, workdir, relay)
        settings = KamailioSettings(
            ng_port=relay.ng_port, offer_flags="transcode-PCMA always-transcode"
        )
        proxy = stack.enter_context(running_kamailio(workdir, settings))
        yield Deployment(relay, proxy)


def _rtp(packet: bytes) -> tuple[int, int, int, bytes]:
    """Payload type, sequence number, timestamp and payload of an RTP packet."""
    start = 12 + 4 * (packet[0] & 0x0F)
    seq, ts = int.from_bytes(packet[2:4], "big"), int.from_bytes(packet[4:8], "big")
    return packet[1] & 0x7F, seq, ts, packet[start:]


def heard(leg: Leg, events: bool) -> str:
    """The digits in what the relay delivered: its RFC 4733 events (one per event timestamp;
    only where the receiver agreed to telephone-event) and its PCMA's tones."""
    digits = []
    detector = DtmfDetector()
    seen_events: set[int] = set()
    for pt, _seq, ts, payload in sorted(map(_rtp, leg.rtp), key=lambda p: p[1]):
        if pt == EVENT_PT and events and len(payload) >= 4 and ts not in seen_events:
            seen_events.add(ts)
            digits.append(CODES[payload[0] & 0x0F])
        elif pt == 8:
            changes = detector.push(bytes(g711.decode("PCMA", payload)))
            digits += [CODES[c.event] for c in changes if c.event >= 0]
    return "".join(digits)


def _block(ng: NgClient, call_id: str) -> None:
    reply = ng.call("block DTMF", call_id=call_id)
    assert reply.get("result") == "ok", reply


@pytest.mark.parametrize("blocked", [False, True], ids=["unblocked", "blocked"])
@pytest.mark.parametrize("callee", sorted(CALLEES))
def test_digits_reach_a_pcma_callee_unless_blocked(
    deployment: Deployment,
    tmp_path: Path,
    callee: str,
    blocked: bool,
    request: pytest.FixtureRequest,
) -> None:
    name = deployment.relay.name
    if callee == "pcma-only" and blocked and name == "rtpengine":
        request.applymarker(
            pytest.mark.xfail(reason="10.5 forwards the events (module docstring)", strict=True)
        )
    run = place_calls(
        deployment,
        tmp_path,
        calls=1,
        rate=10,
        call_duration_ms=3500,
        timeout_s=15,
        uas_scenario=SCENARIOS / CALLEES[callee],
        uas_media=("tone-pcma.pcap",),
        uac_scenario=SCENARIOS / "uac-dtmf.xml",
        uac_media=(DTMF_PCAP,),
        on_call=_block if blocked else None,
    )
    assert_completed(run, deployment, calls=1)
    [call] = run.media.calls.values()
    leg = call.to_uas
    assert leg.delivered > 50, leg.describe()  # the call's media went through
    digits = heard(leg, events=callee == "pcma+te")
    if blocked:
        assert digits == "", (digits, sorted(leg.payload_types))
        assert EVENT_PT not in leg.payload_types, sorted(leg.payload_types)
    else:
        assert digits == DTMF_DIGITS, (digits, sorted(leg.payload_types))
