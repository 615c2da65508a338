"""The deployment guide's recording recipe, end to end: Kamailio, sipp, a recorded call.

The guide's operators set ``recording-dir``, ``recording-method = pcap`` and
``recording-format = eth`` and add ``record-call=yes`` to ``rtpengine_offer`` /
``rtpengine_answer``; recordings are opened in Wireshark. Here Kamailio runs the guide's
script with that flag, a sipp UAC calls a sipp UAS through it with 2 s of PCMU both ways
(tests/interop/test_kamailio.py's harness), and the spool must hold, once the call is
over: one pcap in which tshark finds the call's two RTP streams, every packet each agent
sent, no loss, payload type PCMU; and the finished metadata file, in ``metadata/``, naming
that pcap and holding both SDPs. rtpengine 10.5 runs the same test as the oracle.
"""

from __future__ import annotations

import shutil
import subprocess
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
from tests.support.kamailio import (
    DEFAULT_FLAGS,
    KamailioSettings,
    running_kamailio,
)
from tests.support.sipp import TONE_PACKETS

# the harness's own conditions (Kamailio, sipp, root and dumpcap), and tshark
pytestmark = [
    *KAMAILIO_HARNESS,
    pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed"),
]

RELAYS = {
    "rtpengine": Relay("rtpengine", ng_port=22242, port_min=45000, port_max=45999),
    "relayd": Relay("relayd", ng_port=22243, port_min=44000, port_max=44999),
}
RECORDING = ("--recording-method=pcap", "--recording-format=eth")


@pytest.fixture(scope="module", params=sorted(RELAYS))
def recorded(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Deployment, Path]]:
    relay = RELAYS[request.param]
    workdir = tmp_path_factory.mktemp(f"recording-{relay.name}")
    spool = workdir / "spool"
    spool.mkdir()
    recording = (f"--recording-dir={spool}", *RECORDING)
    with ExitStack() as stack:
        start_relay(stack, workdir, relay, recording)
        flags = f"{DEFAULT_FLAGS} record-call=yes"
        proxy = stack.enter_context(
            running_kamailio(workdir, KamailioSettings(ng_port=relay.ng_port, flags=flags))
        )
        yield Deployment(relay, proxy), spool


def rtp_streams(pcap: Path, ports: list[int]) -> list[list[str]]:
    """tshark's RTP streams of ``pcap``, the relay's ``ports`` decoded as RTP (as a user
    picks "Decode As"; the heuristic misses a stream's first packets when two overlap): the
    fields of each stream's line."""
    decode = [arg for port in ports for arg in ("-d", f"udp.port=={port},rtp")]
    out = subprocess.run(
        ["tshark", "-n", "-q", "-r", str(pcap), *decode, "-z", "rtp,streams"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return [line.split() for line in out.splitlines() if " 0x" in line]


def test_a_recorded_call_through_kamailio(
    recorded: tuple[Deployment, Path], tmp_path: Path
) -> None:
    deployment, spool = recorded
    run = place_calls(deployment, tmp_path, calls=1, rate=10, call_duration_ms=3000, timeout_s=15)
    assert_completed(run, deployment, calls=1)
    assert_media_both_ways(run, calls=1)
    [call] = run.media.calls.values()
    [pcap] = sorted((spool / "pcaps").iterdir())
    [metadata] = sorted((spool / "metadata").iterdir())
    assert sorted((spool / "tmp").iterdir()) == []
    text = metadata.read_text()
    assert text.startswith(f"{pcap}\n"), text[:200]
    assert text.count("SDP mode: offer") == 1 and text.count("SDP mode: answer") == 1, text
    streams = rtp_streams(pcap, [call.to_uas.relay_in[1], call.to_uac.relay_in[1]])
    # start end src sport dst dport ssrc payload packets lost ...
    flows = sorted((f"{s[2]}:{s[3]}", f"{s[4]}:{s[5]}") for s in streams)
    assert flows == sorted(
        (f"{leg.sender[0]}:{leg.sender[1]}", f"{leg.relay_in[0]}:{leg.relay_in[1]}")
        for leg in (call.to_uas, call.to_uac)
    ), streams
    for stream in streams:
        assert stream[7] == "g711U", stream  # PCMU, the payload type negotiated
        assert int(stream[8]) == TONE_PACKETS, stream  # every packet each agent sent
        assert stream[9] == "0", stream  # none lost
