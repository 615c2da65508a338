"""A transcoded call through Kamailio: the caller speaks PCMU only, the callee PCMA only.

Issue 15's interop check. Kamailio runs the deployment guide's script with
``transcode-PCMA`` added to ``rtpengine_offer``'s flags; the sipp UAC offers PCMU (and
telephone-event), the sipp UAS (tests/interop/scenarios/uas-pcma.xml) answers PCMA only,
and each plays 2 s of a 440 Hz tone in its own codec (tests/support/media_files.py). In
the capture (tests/interop/test_kamailio.py's harness) the call must complete with RTP
both ways, every packet the relay delivers to the callee PCMA and to the caller PCMU, and
each side's audio must decode, in its own codec, to the other side's tone. rtpengine 10.5
runs the same test as the oracle.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.interop.test_kamailio import (
    Deployment,
    Relay,
    assert_completed,
    assert_media_both_ways,
    place_calls,
    start_relay,
)
from tests.interop.test_kamailio import pytestmark as KAMAILIO_HARNESS
from tests.support.kamailio import KamailioSettings, running_kamailio
from tests.support.sipp import SCENARIOS
from tests.support.tone import alaw_decode, dominant_hz, mulaw_decode

pytestmark = KAMAILIO_HARNESS

RELAYS = {
    "rtpengine": Relay("rtpengine", ng_port=22248, port_min=48500, port_max=48999),
    "relayd": Relay("relayd", ng_port=22249, port_min=48000, port_max=48499),
}
TONE_HZ = 440.0


@pytest.fixture(scope="module", params=sorted(RELAYS))
def transcoding(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    relay = RELAYS[request.param]
    workdir = tmp_path_factory.mktemp(f"transcoding-{relay.name}")
    with ExitStack() as stack:
        start_relay(stack, workdir, relay)
        settings = KamailioSettings(ng_port=relay.ng_port, offer_flags="transcode-PCMA")
        proxy = stack.enter_context(running_kamailio(workdir, settings))
        yield Deployment(relay, proxy)


def test_pcmu_caller_pcma_callee(transcoding: Deployment, tmp_path: Path) -> None:
    run = place_calls(
        transcoding,
        tmp_path,
        calls=1,
        rate=10,
        call_duration_ms=3000,
        timeout_s=15,
        uas_scenario=SCENARIOS / "uas-pcma.xml",
        uas_media=("tone-pcma.pcap",),
    )
    assert_completed(run, transcoding, calls=1)
    assert_media_both_ways(run, calls=1, transcoded=True)
    [call] = run.media.calls.values()
    # the callee hears PCMA only, the caller PCMU only: each in the codec it agreed to
    assert call.to_uas.payload_types == {8}, call.to_uas.describe()
    assert call.to_uac.payload_types == {0}, call.to_uac.describe()
    # and each hears the other's tone (a codec mislabelled would decode to noise)
    assert abs(dominant_hz(alaw_decode(call.to_uas.audio)) - TONE_HZ) < 10
    assert abs(dominant_hz(mulaw_decode(call.to_uac.audio)) - TONE_HZ) < 10
