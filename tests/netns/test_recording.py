"""Call recording end to end: real RTP through relayd, the spool read back with tshark.

relayd runs in the relay namespace with ``recording-dir`` in the test's directory; the
caller and callee send RTP both ways through it as Kamailio's ``record-call=yes`` call
would. What must hold (issue 14): one pcap per call with both directions, every packet,
the negotiated payload type, in the format configured (``raw`` or ``eth``); the metadata
file in ``metadata/`` only once the call ended, with both SDPs relayd sent; ``start`` /
``stop recording`` record that window only; a full spool stops the recording, never the
call's media.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import struct
import subprocess
import time
from pathlib import Path

import pytest

from tests.netns.calls import (
    CALLEE_PORT,
    CALLER_PORT,
    CallLegs,
    advertised,
    assert_received,
    exchange,
    ok,
    sdp,
    set_up_call,
    stream_of,
    wait_for,
    worker_pids,
)
from tests.netns.conftest import StartRelay
from tests.netns.test_kernel import (
    KERNEL,
    USER_CALLEE,
    USER_CALLER,
    both_kernelized,
    confirm_both,
    kernel_exchange,
    kernelized_call,
    offloaded,
)
from tests.support.netns import Topology, pids, unavailable
from tests.support.pcap import read_pcap_file
from tests.support.rtp_peer import Peer

_SKIP = unavailable()
pytestmark = [pytest.mark.netns, pytest.mark.skipif(_SKIP is not None, reason=f"netns: {_SKIP}")]

_TSHARK = shutil.which("tshark")
needs_tshark = pytest.mark.skipif(_TSHARK is None, reason="tshark is not installed")

LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101


def _linktype(pcap: Path) -> int:
    header = pcap.read_bytes()[:24]
    magic, _major, _minor, _zone, _sigfigs, _snaplen, linktype = struct.unpack("<IHHiIII", header)
    assert magic == 0xA1B2C3D4, hex(magic)
    return int(linktype)


def rtp_streams(pcap: Path, legs: CallLegs) -> list[dict[str, str]]:
    """tshark's RTP stream analysis of ``pcap``: one dict per stream (source, destination,
    payload, packets, lost). The relay's ports are decoded as RTP (tshark's RTP heuristic
    misses the first packets of a stream that starts while another is running)."""
    assert _TSHARK is not None and legs.to_caller is not None
    decode = []
    for port in (legs.to_caller.rtp, legs.to_callee.rtp):
        decode += ["-d", f"udp.port=={port},rtp"]
    out = subprocess.run(
        [_TSHARK, "-n", "-q", "-r", str(pcap), *decode, "-z", "rtp,streams"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    streams = []
    for line in out.splitlines():
        fields = line.split()
        # start end src sport dst dport ssrc payload pkts lost(pct) ...
        if len(fields) >= 10 and re.fullmatch(r"0x[0-9A-Fa-f]{8}", fields[6]):
            streams.append(
                {
                    "source": f"{fields[2]}:{fields[3]}",
                    "destination": f"{fields[4]}:{fields[5]}",
                    "payload": fields[7],
                    "packets": fields[8],
                    "lost": fields[9],
                }
            )
    return streams


def spool_files(spool: Path) -> dict[str, list[Path]]:
    return {part: sorted((spool / part).iterdir()) for part in ("tmp", "pcaps", "metadata")}


# -- the tests ----------------------------------------------------------------------------------


@needs_tshark
@pytest.mark.parametrize(("fmt", "linktype"), [("raw", LINKTYPE_RAW), ("eth", LINKTYPE_ETHERNET)])
def test_a_recorded_call_has_both_directions_and_its_metadata(
    topo: Topology,
    start_relay: StartRelay,
    peers: tuple[Peer, Peer],
    tmp_path: Path,
    fmt: str,
    linktype: int,
) -> None:
    spool = tmp_path / "spool"
    relay = start_relay(f"--recording-dir={spool}", f"--recording-format={fmt}")
    caller, callee = peers
    with relay.client() as ng:
        offer = ok(
            ng.call(
                "offer",
                call_id="rec-1",
                from_tag="caller-tag",
                sdp=sdp(topo.caller.ip4, CALLER_PORT),
                direction=["caller", "callee"],
                flags=["record-call"],
            )
        )
        [pcap_name] = offer["recordings"]
        pcap = Path(pcap_name)
        assert pcap.parent == spool / "pcaps"  # made by the call's worker, after the reply
        answer = ok(
            ng.call(
                "answer",
                call_id="rec-1",
                from_tag="caller-tag",
                to_tag="callee-tag",
                sdp=sdp(topo.callee.ip4, CALLEE_PORT),
                record_call="yes",
            )
        )
        assert answer["recordings"] == [pcap_name]
        legs = _legs(offer, answer)
        assert legs.to_caller is not None
        from_caller, from_callee = exchange(caller, callee, legs, 50)
        assert_received(callee.receive(50), from_caller, legs.to_callee.rtp_to)
        assert_received(caller.receive(50), from_callee, legs.to_caller.rtp_to)
        wait_for(ng, "rec-1", lambda r: stream_of(r, "callee-tag")["stats"]["packets"] == 50)
        assert ok(ng.call("query", call_id="rec-1"))["recording"] == {
            "call recording": 1,
            "forwarding": 0,
        }
        assert pcap.exists()
        files = spool_files(spool)
        assert files["metadata"] == []  # not complete before the call ends
        assert len(files["tmp"]) == 1
        ok(ng.call("delete", call_id="rec-1", delete_delay=0))
        metadata = _wait_for_metadata(spool)
    assert _linktype(pcap) == linktype
    streams = rtp_streams(pcap, legs)
    assert sorted((s["source"], s["destination"]) for s in streams) == sorted(
        [
            (f"{topo.caller.ip4}:{CALLER_PORT}", f"{legs.to_caller.address}:{legs.to_caller.rtp}"),
            (f"{topo.callee.ip4}:{CALLEE_PORT}", f"{legs.to_callee.address}:{legs.to_callee.rtp}"),
        ]
    ), streams
    for stream in streams:
        assert stream["packets"] == "50", streams
        assert stream["lost"] == "0", streams
        assert stream["payload"] == "g711U", streams  # PCMU, the negotiated payload type 0
    text = metadata.read_text()
    assert text.startswith(f"{pcap}\n")
    assert "SDP mode: offer" in text and "SDP mode: answer" in text
    assert offer["sdp"].replace("\r\n", "\n") in text.replace("\r\n", "\n")
    assert answer["sdp"].replace("\r\n", "\n") in text.replace("\r\n", "\n")
    assert spool_files(spool)["tmp"] == []


@needs_tshark
def test_start_and_stop_recording_record_only_that_window(
    topo: Topology, start_relay: StartRelay, peers: tuple[Peer, Peer], tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    relay = start_relay(f"--recording-dir={spool}")
    caller, callee = peers
    with relay.client() as ng:
        legs = set_up_call(ng, topo, call_id="rec-2")
        _talk(caller, callee, legs, 20)
        assert spool_files(spool)["pcaps"] == []
        ok(ng.call("start recording", call_id="rec-2"))
        exchange(caller, callee, legs, 30, first=20)
        caller.receive(30)
        callee.receive(30)
        wait_for(ng, "rec-2", lambda r: stream_of(r, "callee-tag")["stats"]["packets"] == 50)
        ok(ng.call("stop recording", call_id="rec-2"))
        metadata = _wait_for_metadata(spool)
        _talk(caller, callee, legs, 20, first=50)
        ok(ng.call("delete", call_id="rec-2", delete_delay=0))
    [pcap] = spool_files(spool)["pcaps"]
    assert metadata.read_text().startswith(f"{pcap}\n")
    streams = rtp_streams(pcap, legs)
    assert len(streams) == 2, streams
    assert all(s["packets"] == "30" and s["lost"] == "0" for s in streams), streams


def test_a_full_spool_stops_the_recording_not_the_call(
    topo: Topology, start_relay: StartRelay, tmp_path: Path
) -> None:
    spool = tmp_path / "small"
    spool.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "relayd-test", str(spool)], check=True
    )
    try:
        relay = start_relay(f"--recording-dir={spool}")
        with (
            relay.client() as ng,
            Peer(topo.caller.ns, topo.caller.ip4, CALLER_PORT) as caller,
            Peer(topo.callee.ns, topo.callee.ip4, CALLEE_PORT) as callee,
        ):
            legs = set_up_call(ng, topo, call_id="rec-3", flags=["record-call"])
            assert legs.to_caller is not None
            sent = 0
            for _ in range(8):  # 800 packets a way: well over 64 KiB of pcap
                from_caller, from_callee = exchange(caller, callee, legs, 100, first=sent)
                assert_received(callee.receive(100), from_caller, legs.to_callee.rtp_to)
                assert_received(caller.receive(100), from_callee, legs.to_caller.rtp_to)
                sent += 100
            deadline = time.monotonic() + 5
            while "recording" in ok(ng.call("query", call_id="rec-3")):
                assert time.monotonic() < deadline, "the recording did not stop"
                time.sleep(0.1)
            # the call goes on
            from_caller, _ = exchange(caller, callee, legs, 10, first=sent)
            assert_received(callee.receive(10), from_caller, legs.to_callee.rtp_to)
            ok(ng.call("delete", call_id="rec-3", delete_delay=0))
        assert "recording.write_failed" in relay.log() or "recording.failed" in relay.log()
        assert "No space left on device" in relay.log()
    finally:
        subprocess.run(["umount", "-l", str(spool)], check=False)


# -- helpers ------------------------------------------------------------------------------------


def _legs(offer: dict[str, object], answer: dict[str, object]) -> CallLegs:
    return CallLegs("rec-1", advertised(str(offer["sdp"])), advertised(str(answer["sdp"])))


def _wait_for_metadata(spool: Path, timeout: float = 5.0) -> Path:
    deadline = time.monotonic() + timeout
    while True:
        found = sorted((spool / "metadata").iterdir())
        if found:
            assert len(found) == 1, found
            return found[0]
        assert time.monotonic() < deadline, f"no metadata file: {spool_files(spool)}"
        time.sleep(0.05)


def _talk(caller: Peer, callee: Peer, legs: CallLegs, count: int, first: int = 0) -> None:
    """Both sides send ``count`` packets through the relay; every one arrives."""
    exchange(caller, callee, legs, count, first=first)
    assert len(callee.receive(count)) == count and len(caller.receive(count)) == count


def _wait_for_recordings(spool: Path, count: int, timeout: float = 5.0) -> None:
    """Until ``count`` recordings have their metadata file in tmp/ (the workers made them)."""
    deadline = time.monotonic() + timeout
    while len(spool_files(spool)["tmp"]) < count:
        assert time.monotonic() < deadline, spool_files(spool)
        time.sleep(0.05)


def _assert_both_recorded(topo: Topology, pcap: Path, seqs: list[int]) -> None:
    """The caller's and the callee's RTP in ``pcap``: these sequence numbers, in order."""
    senders = _recorded_senders(pcap)
    for sender in ((topo.caller.ip4, CALLER_PORT), (topo.callee.ip4, CALLEE_PORT)):
        assert senders[sender] == seqs, senders


def _recorded_senders(pcap: Path) -> dict[tuple[str, int], list[int]]:
    """The RTP sequence numbers in ``pcap``, by sender."""
    found: dict[tuple[str, int], list[int]] = {}
    for datagram in read_pcap_file(pcap).datagrams:
        sender = (datagram.source, datagram.source_port)
        found.setdefault(sender, []).append(int.from_bytes(datagram.payload[2:4], "big"))
    return found


def test_a_recording_goes_on_across_a_worker_killed(
    topo: Topology, start_relay: StartRelay, peers: tuple[Peer, Peer], tmp_path: Path
) -> None:
    """The replacement worker writes on in the same pcap: what came before the kill and what
    came after are in one file, whole records only, and the metadata is finished once."""
    spool = tmp_path / "spool"
    relay = start_relay(f"--recording-dir={spool}", "--num-threads", "1")
    caller, callee = peers
    with relay.client() as ng:
        legs = set_up_call(ng, topo, call_id="rec-4", flags=["record-call"])
        _talk(caller, callee, legs, 20)
        wait_for(ng, "rec-4", lambda r: stream_of(r, "callee-tag")["stats"]["packets"] == 20)
        time.sleep(0.5)  # the recorder writes what waited 0.2 s: these are on disk now
        [worker] = worker_pids(relay)
        os.kill(worker, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while worker_pids(relay) in ([], [worker]):
            assert time.monotonic() < deadline, "no new worker"
            time.sleep(0.05)
        time.sleep(0.3)  # its calls, recording first, then forwards
        _talk(caller, callee, legs, 20, first=20)
        ok(ng.call("delete", call_id="rec-4", delete_delay=0))
        metadata = _wait_for_metadata(spool)
    [pcap] = spool_files(spool)["pcaps"]
    assert metadata.read_text().startswith(f"{pcap}\n")
    _assert_both_recorded(topo, pcap, list(range(40)))


def test_a_recording_goes_on_after_a_restart_with_the_journal(
    topo: Topology, start_relay: StartRelay, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    state = tmp_path / "state"
    options = (f"--recording-dir={spool}", f"--state-dir={state}")
    relay = start_relay(*options)
    with (
        Peer(topo.caller.ns, topo.caller.ip4, CALLER_PORT) as caller,
        Peer(topo.callee.ns, topo.callee.ip4, CALLEE_PORT) as callee,
    ):
        with relay.client() as ng:
            legs = set_up_call(ng, topo, call_id="rec-5", flags=["record-call"])
            _talk(caller, callee, legs, 20)
            wait_for(ng, "rec-5", lambda r: stream_of(r, "callee-tag")["stats"]["packets"] == 20)
        relay.stop()  # SIGTERM: the journal keeps the call, the recording stays in tmp/
        assert spool_files(spool)["metadata"] == []
        relay = start_relay(*options)
        with relay.client() as ng:
            assert ok(ng.call("query", call_id="rec-5"))["recording"]["call recording"] == 1
            time.sleep(0.3)
            _talk(caller, callee, legs, 20, first=20)
            ok(ng.call("delete", call_id="rec-5", delete_delay=0))
            _wait_for_metadata(spool)
    [pcap] = spool_files(spool)["pcaps"]
    _assert_both_recorded(topo, pcap, list(range(40)))


def test_stopped_without_a_journal_every_recording_is_finished(
    topo: Topology, start_relay: StartRelay, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    relay = start_relay(f"--recording-dir={spool}", "--state-dir=none")
    with relay.client() as ng:
        set_up_call(ng, topo, call_id="rec-6", flags=["record-call"])
        set_up_call(ng, topo, call_id="rec-7", flags=["record-call"], caller_port=6100)
        _wait_for_recordings(spool, 2)
    relay.stop()
    files = spool_files(spool)
    assert files["tmp"] == [] and len(files["metadata"]) == 2, files


def test_leftovers_of_a_killed_relayd_are_finished_at_the_next_start(
    topo: Topology, start_relay: StartRelay, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    relay = start_relay(f"--recording-dir={spool}", "--state-dir=none")
    with relay.client() as ng:
        set_up_call(ng, topo, call_id="rec-8", flags=["record-call"])
        _wait_for_recordings(spool, 1)
    assert relay.proc is not None
    for pid in pids(topo.relay):  # relayd and its workers, all at once
        os.kill(pid, signal.SIGKILL)
    relay.proc.wait(5)
    files = spool_files(spool)
    assert len(files["tmp"]) == 1 and files["metadata"] == []
    start_relay(f"--recording-dir={spool}", "--state-dir=none")
    files = spool_files(spool)
    assert files["tmp"] == [] and len(files["metadata"]) == 1, files


def test_a_recorded_kernel_path_call_stays_in_the_kernel_and_is_recorded_whole(
    topo: Topology, start_relay: StartRelay, peers: tuple[Peer, Peer], tmp_path: Path
) -> None:
    """Issue 14, recording without leaving the kernel: the recorded call is handed to
    nftables like any other; while it is there no packet reaches a socket in the relay's
    namespace (the workers see none of it), and the kernel's copies make the pcap whole:
    the userspace phase and the kernel phase, both directions, every packet, in order."""
    spool = tmp_path / "spool"
    relay = start_relay(*KERNEL, f"--recording-dir={spool}")
    caller, callee = peers
    with relay.client() as ng:
        legs = set_up_call(ng, topo, flags=["record-call"])
        confirm_both(caller, callee, legs)
        reply = offloaded(ng, legs.call_id)
        assert reply["recording"] == {"call recording": 1, "forwarding": 0}
        kernel_exchange(topo.relay, caller, callee, legs, 50, first=100)
        assert "recording.kernel_copies" in relay.log()
        time.sleep(0.3)  # the kernel sends its copies in batches, 100 ms at most apart
        ok(ng.call("delete", call_id=legs.call_id, delete_delay=0))
        _wait_for_metadata(spool)
    [pcap] = spool_files(spool)["pcaps"]
    senders = _recorded_senders(pcap)
    caller_seqs = [*range(USER_CALLER), *range(100, 150)]
    callee_seqs = [*range(USER_CALLEE), *range(100, 150)]
    assert senders[(topo.caller.ip4, CALLER_PORT)] == caller_seqs, senders
    assert senders[(topo.callee.ip4, CALLEE_PORT)] == callee_seqs, senders
    # as a received packet: from the party to relayd's socket, the RTP as sent
    capture = read_pcap_file(pcap)
    assert {(d.destination, d.destination_port) for d in capture.datagrams} == {
        legs.to_caller.rtp_to,  # type: ignore[union-attr]
        legs.to_callee.rtp_to,
    }


def test_stopping_a_kernel_recording_stops_the_copies(
    topo: Topology, start_relay: StartRelay, peers: tuple[Peer, Peer], tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    relay = start_relay(*KERNEL, f"--recording-dir={spool}")
    caller, callee = peers
    with relay.client() as ng:
        legs = kernelized_call(ng, topo, caller, callee)
        ok(ng.call("start recording", call_id=legs.call_id))
        reply = ok(ng.call("query", call_id=legs.call_id))
        assert both_kernelized(reply)  # it did not leave the kernel
        kernel_exchange(topo.relay, caller, callee, legs, 20, first=100)
        time.sleep(0.3)
        ok(ng.call("stop recording", call_id=legs.call_id))
        _wait_for_metadata(spool)
        kernel_exchange(topo.relay, caller, callee, legs, 20, first=200)
        time.sleep(0.3)
        ok(ng.call("delete", call_id=legs.call_id, delete_delay=0))
    [pcap] = spool_files(spool)["pcaps"]
    _assert_both_recorded(topo, pcap, list(range(100, 120)))
