"""ng's recording commands and flags on the call registry (relayd/calls/recording.py).

rtpengine 10.5's rules (its daemon/recording.c and call_interfaces.c, and what Debian's
10.5 answered when asked: docs/recording.md): ``record-call`` flag or ``yes``/``on``
starts, ``no``/``off`` stops; offer and answer replies list the pcap under
``recordings`` (before ``sdp``) while the call records; ``start``/``stop recording`` need
a known call-id; without a spool nothing records and the replies are as before.
"""

from __future__ import annotations

import json
from typing import Any

from relayd import ipc
from relayd.calls.commands import Commands
from relayd.calls.model import Call
from relayd.calls.recording import Recordings
from relayd.calls.snapshot import dump_call, load_call
from relayd.config import load
from relayd.ng.message import Request
from relayd.recording.control import nflog_base, spool_settings
from tests.unit.calls import B_ADDR, T0, build, req, sdp

PCAP = "/spool/pcaps/{call_id}-{n}.pcap"


class Namer:
    """Names recordings as the spool would, counting them; ``fail``: the spool is gone."""

    def __init__(self) -> None:
        self.count = 0
        self.fail = False
        self.requests: list[Request] = []

    def __call__(self, call: Call, req: Request) -> tuple[tuple[str, ...], str]:
        if self.fail:
            raise OSError("No such file or directory: '/spool/pcaps'")
        self.count += 1
        self.requests.append(req)
        pcap = PCAP.format(call_id=call.call_id, n=self.count)
        return (pcap, f"meta-{self.count}"), pcap


def recorded(*, spool: bool = True) -> tuple[Commands, Namer]:
    namer = Namer()
    cmds, _ = build()
    cmds.recordings = Recordings(namer if spool else None)
    return cmds, namer


def offer(cmds: Commands, call_id: str = "c1", **keys: Any) -> dict[str, Any]:
    return cmds.handle(req("offer", call_id, from_tag="a", sdp=sdp(), **keys), T0)


def answer(cmds: Commands, call_id: str = "c1", **keys: Any) -> dict[str, Any]:
    return cmds.handle(
        req("answer", call_id, from_tag="a", to_tag="b", sdp=sdp(B_ADDR), **keys), T0 + 1
    )


def told(cmds: Commands) -> list[ipc.Message]:
    return [message for _call, message in cmds.recordings.take()]


def test_record_call_flag_starts_and_replies_list_the_pcap_first() -> None:
    cmds, namer = recorded()
    reply = offer(cmds, flags=["record-call"])
    assert list(reply) == ["recordings", "sdp", "result"]
    assert reply["recordings"] == ["/spool/pcaps/c1-1.pcap"]
    start, block = told(cmds)
    assert start == ipc.RecordStart("c1", ("/spool/pcaps/c1-1.pcap", "meta-1"), started=T0)
    assert block == ipc.RecordSdp("c1", "offer", reply["sdp"], started=T0)
    assert isinstance(block, ipc.RecordSdp)
    assert (block.mode, block.sdp) == ("offer", reply["sdp"])  # the SDP relayd sent
    # the answer records in the same files, without naming new ones
    reply = answer(cmds)
    assert reply["recordings"] == ["/spool/pcaps/c1-1.pcap"]
    # the block says when its sender's party was made: the callee's with the offer
    assert told(cmds) == [ipc.RecordSdp("c1", "answer", reply["sdp"], started=T0)]
    assert namer.count == 1


def test_record_call_key_values() -> None:
    cmds, _ = recorded()
    for n, value in enumerate(("yes", "on")):
        reply = offer(cmds, f"c{n}", record_call=value)
        assert reply["recordings"] == [f"/spool/pcaps/c{n}-{n + 1}.pcap"]
    told(cmds)
    reply = offer(cmds, "c9", record_call="maybe")
    assert "recordings" not in reply
    assert told(cmds) == []
    assert cmds.calls["c9"].recording is None


def test_record_call_no_stops_and_a_later_start_gets_new_files() -> None:
    cmds, namer = recorded()
    offer(cmds, record_call="yes")
    told(cmds)
    reply = answer(cmds, record_call="no")
    assert "recordings" not in reply
    (stop,) = told(cmds)
    assert stop == ipc.RecordStop("c1", T0 + 1)
    assert cmds.handle(req("start recording", "c1"), T0 + 2) == {"result": "ok"}
    (start,) = told(cmds)
    assert isinstance(start, ipc.RecordStart)
    assert start.names[0] == "/spool/pcaps/c1-2.pcap"
    assert namer.count == 2


def test_start_and_stop_recording_need_a_known_call() -> None:
    cmds, _ = recorded()
    for command in ("start recording", "stop recording", "pause recording"):
        assert cmds.handle(req(command, "nope"), T0) == {
            "result": "error",
            "error-reason": "Unknown call-id",
        }
        assert cmds.handle(req(command, ""), T0) == {
            "result": "error",
            "error-reason": "No call-id in message",
        }
    assert told(cmds) == []


def test_start_recording_twice_keeps_one_recording() -> None:
    cmds, namer = recorded()
    offer(cmds)
    cmds.handle(req("start recording", "c1"), T0)
    cmds.handle(req("start recording", "c1"), T0 + 1)
    assert namer.count == 1
    assert len(told(cmds)) == 1


def test_pause_keeps_the_files_and_start_resumes() -> None:
    cmds, namer = recorded()
    offer(cmds, record_call="yes")
    told(cmds)
    assert cmds.handle(req("pause recording", "c1"), T0 + 1) == {"result": "ok"}
    assert told(cmds) == [ipc.RecordPause("c1", paused=True)]
    recording = cmds.calls["c1"].recording
    assert recording is not None and recording.active and recording.paused
    cmds.handle(req("start recording", "c1"), T0 + 2)
    assert told(cmds) == [ipc.RecordPause("c1", paused=False)]
    assert namer.count == 1


def test_metadata_is_kept_and_written_at_the_end() -> None:
    cmds, _ = recorded()
    offer(cmds, metadata="k1:v1|k2:v2")  # before any recording
    cmds.handle(req("start recording", "c1", metadata="k3:v3"), T0 + 1)
    told(cmds)
    cmds.handle(req("stop recording", "c1"), T0 + 2)
    assert told(cmds) == [ipc.RecordStop("c1", T0 + 2, "k3:v3")]


def test_delete_finishes_the_recording_when_the_call_goes() -> None:
    cmds, _ = recorded()
    offer(cmds, record_call="yes")
    answer(cmds)
    told(cmds)
    cmds.handle(req("delete", "c1", from_tag="a", delete_delay=0), T0 + 5)
    assert told(cmds) == [ipc.RecordStop("c1", T0 + 5, terminated=T0 + 5)]
    assert "c1" not in cmds.calls


def test_delete_with_a_delay_finishes_the_recording_at_once() -> None:
    cmds, _ = recorded()
    offer(cmds, record_call="yes")
    told(cmds)
    cmds.handle(req("delete", "c1", from_tag="a", delete_delay=10), T0 + 5)
    # finished with the delete, not when the call goes: collectors get it 10 s sooner
    assert told(cmds) == [ipc.RecordStop("c1", T0 + 5, terminated=T0 + 5)]
    cmds.reap(T0 + 16)
    assert "c1" not in cmds.calls
    assert told(cmds) == []


def test_discard_recording_removes_the_files() -> None:
    cmds, _ = recorded()
    offer(cmds, record_call="yes")
    told(cmds)
    cmds.handle(req("delete", "c1", flags=["discard-recording"], delete_delay=0), T0 + 3)
    assert told(cmds) == [ipc.RecordStop("c1", T0 + 3, discard=True, terminated=T0 + 3)]


def test_a_timeout_finishes_the_recording() -> None:
    cmds, _ = recorded()
    offer(cmds, record_call="yes")
    told(cmds)
    gone = cmds.reap(T0 + 7200)  # the offer timeout (3600 s) long past
    assert [t.call.call_id for t in gone] == ["c1"]
    assert told(cmds) == [ipc.RecordStop("c1", T0 + 7200, terminated=T0 + 7200)]


def test_without_a_spool_nothing_records_and_replies_are_unchanged() -> None:
    cmds, _ = recorded(spool=False)
    reply = offer(cmds, record_call="yes")
    assert list(reply) == ["sdp", "result"]
    assert cmds.handle(req("start recording", "c1"), T0) == {"result": "ok"}
    assert told(cmds) == []


def test_a_spool_that_cannot_name_files_records_nothing_and_the_call_goes_on() -> None:
    cmds, namer = recorded()
    namer.fail = True
    reply = offer(cmds, record_call="yes")
    assert reply["result"] == "ok" and "recordings" not in reply
    assert told(cmds) == []


def test_a_failed_worker_recording_ends_it_and_the_call_goes_on() -> None:
    cmds, namer = recorded()
    offer(cmds, record_call="yes")
    told(cmds)
    cmds.recordings.failed(cmds.calls["c1"], "No space left on device")
    reply = answer(cmds)
    assert reply["result"] == "ok" and "recordings" not in reply
    assert told(cmds) == []
    cmds.handle(req("start recording", "c1"), T0 + 2)  # a new start gets new files
    assert namer.count == 2


def test_recording_file_dir_and_pattern_reach_the_namer() -> None:
    cmds, namer = recorded()
    offer(cmds)
    cmds.handle(
        req(
            "start recording",
            "c1",
            recording_dir="/elsewhere",
            recording_pattern="x-%s",
            recording_file="/f.pcap",
        ),
        T0,
    )
    (request,) = namer.requests
    assert (request.recording_dir, request.recording_pattern, request.recording_file) == (
        "/elsewhere",
        "x-%s",
        "/f.pcap",
    )


def test_recording_commands_count_as_commands() -> None:
    cmds, _ = recorded()
    offer(cmds)
    cmds.handle(req("start recording", "c1"), T0)
    assert cmds.totals.commands["start recording"] == 1


def test_query_shows_the_recording_state_as_rtpengine_11() -> None:
    cmds, _ = recorded()
    offer(cmds)
    assert "recording" not in cmds.handle(req("query", "c1"), T0)
    cmds.handle(req("start recording", "c1"), T0)
    reply = cmds.handle(req("query", "c1"), T0)
    assert list(reply)[-2:] == ["recording", "result"]
    assert reply["recording"] == {"call recording": 1, "forwarding": 0}
    cmds.handle(req("pause recording", "c1"), T0)
    assert cmds.handle(req("query", "c1"), T0)["recording"]["call recording"] == 0
    cmds.handle(req("stop recording", "c1"), T0)
    assert "recording" not in cmds.handle(req("query", "c1"), T0)


def test_deleting_one_branch_keeps_the_recording() -> None:
    cmds, _ = recorded()
    for branch in ("b1", "b2"):
        cmds.handle(
            req("offer", "c1", from_tag="a", via_branch=branch, sdp=sdp(), record_call="yes"), T0
        )
    told(cmds)
    reply = cmds.handle(req("delete", "c1", from_tag="a", via_branch="b1", delete_delay=0), T0)
    assert reply["result"] == "ok"
    assert "c1" in cmds.calls
    assert told(cmds) == []


def test_start_forwarding_records_and_stop_recording_leaves_it_to_forwarding() -> None:
    """rtpengine 10.5 with the pcap method: start forwarding starts the recording too, and
    a recording still wanted by forwarding survives stop recording."""
    cmds, namer = recorded()
    offer(cmds)
    assert cmds.handle(req("start forwarding", "c1"), T0 + 1) == {"result": "ok"}
    (start,) = told(cmds)
    assert isinstance(start, ipc.RecordStart)
    query = cmds.handle(req("query", "c1"), T0 + 1)
    assert query["recording"] == {"call recording": 0, "forwarding": 1}
    cmds.handle(req("start recording", "c1"), T0 + 2)
    cmds.handle(req("stop recording", "c1"), T0 + 3)
    assert told(cmds) == []  # forwarding still wants it
    cmds.handle(req("stop forwarding", "c1"), T0 + 4)
    assert told(cmds) == [ipc.RecordStop("c1", T0 + 4)]
    assert namer.count == 1


def test_forwarding_of_one_party_and_rtpengines_errors() -> None:
    cmds, _ = recorded()
    offer(cmds)
    cmds.handle(req("start forwarding", "c1", from_tag="a"), T0)
    assert cmds.calls["c1"].recording.forwarding == {"a"}  # type: ignore[union-attr]
    assert cmds.handle(req("query", "c1"), T0)["recording"]["forwarding"] == 0
    assert cmds.handle(req("stop forwarding", "nope"), T0) == {
        "result": "error",
        "error-reason": "Unknown call-ID",
    }
    assert cmds.handle(req("start forwarding", "c1", from_tag="zz"), T0) == {
        "result": "error",
        "error-reason": "From-tag given, but no such tag exists",
    }
    cmds.handle(req("stop forwarding", "c1", flags=["all"]), T0 + 1)
    assert cmds.calls["c1"].recording.forwarding == set()  # type: ignore[union-attr]
    assert not cmds.calls["c1"].recording.active  # type: ignore[union-attr]


def test_recording_state_comes_back_from_the_journal() -> None:
    cmds, _ = recorded()
    offer(cmds, metadata="m")
    cmds.handle(req("start forwarding", "c1", from_tag="a"), T0)
    call = cmds.calls["c1"]
    back = load_call(json.loads(json.dumps(dump_call(call))))
    assert back.recording == call.recording
    assert isinstance(back.recording.forwarding, set)  # type: ignore[union-attr]


def test_no_kernel_copies_without_a_spool_a_kernel_path_or_with_worker_units() -> None:
    """The kernel may carry recorded calls only where their workers can read its copies: not
    without a spool or a kernel path, and not for workers that are systemd units (no
    CAP_NET_ADMIN, no netlink): then recorded calls stay with the workers."""
    base = ["--config-file=none", "--table=0", "--recording-dir=/tmp/unused-spool"]
    units = load([*base, "--worker-socket=/run/relayd/workers.sock"])
    assert nflog_base(units, spool_settings(units)) == -1
    userspace = load(["--config-file=none", "--table=-1", "--recording-dir=/tmp/unused-spool"])
    assert nflog_base(userspace, spool_settings(userspace)) == -1
    unrecorded = load(["--config-file=none", "--table=0"])
    assert spool_settings(unrecorded) is None and nflog_base(unrecorded, None) == -1
