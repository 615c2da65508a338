"""The DTMF event log (docs/dtmf.md, "DTMF events"): the digits a worker finds
(relayd/worker/dtmf.py), how relayd places them in their call and writes them
(relayd/ops/dtmflog.py), and what the plan and the kernel policy do for it.

The expected JSON and bencode are what the live rtpengine 10.5 sent for the same packets
(its ``--dtmf-log-dest``, ``--dtmf-log-ng-tcp``: docs/dtmf.md has the probe).
"""

from __future__ import annotations

import math
import struct
from pathlib import Path

import pytest

from relayd import ipc
from relayd.calls.model import Call, Endpoint
from relayd.config import load
from relayd.nft.ruleset import Endpoint as NftEndpoint
from relayd.nft.ruleset import (
    ForwardKey,
    Table,
    TableState,
    events_target,
    parse_state,
    record_chain,
    record_chain_commands,
    record_commands,
    target_parts,
)
from relayd.ops.dtmflog import DtmfReport, dtmf_json, dtmf_notify, dtmf_report, reports_dtmf
from relayd.plane.forwarding import plan, streams_by_socket, telephone_events
from relayd.plane.offload import events_payload_type, kernel_legs
from relayd.transcode import events, g711, rtp
from relayd.transcode.plan import CodecPlan, Format
from relayd.transcode.transcoder import Transcoder
from relayd.worker.dtmf import DtmfWatch, parse_rates, watch
from tests.unit.calls import B_ADDR, T0, build, req, sdp

PCMU = Format(0, "PCMU", 8000)
TE96 = Format(96, "telephone-event", 8000, fmtp="0-15")
A = ("198.51.100.1", 7000)
KEY = "203.0.113.1 30000"
_STEP = 2 * math.pi / 8000
TE_LINES = ["a=rtpmap:101 telephone-event/8000", "a=fmtp:101 0-15"]


def event(code: int, end: bool, volume: int, duration: int) -> bytes:
    return bytes((code, (0x80 if end else 0) | volume)) + struct.pack("!H", duration)


def packet(pt: int, seq: int, ts: int, payload: bytes, marker: bool = False) -> bytes:
    return rtp.build(pt, marker, seq, ts, 0x1234, payload)


# -- reading event packets ----------------------------------------------------------------


def test_event_block_read() -> None:
    assert events.parse(b"\x08\x8a\x03\x20") == events.Event(8, True, 10, 800)
    assert events.parse(b"\x0b\x0c\x00\xa0\x00\x00") == events.Event(11, False, 12, 160)
    assert events.parse(b"\x08\x8a\x03") is None


def test_rates_of_a_spec() -> None:
    assert parse_rates("101/8000 96/16000") == {101: 8000, 96: 16000}
    assert parse_rates("") == {}
    assert parse_rates("x/8000 101 300/8000 97/0 100/48000") == {100: 48000}


def _rfc_run(watcher: DtmfWatch) -> None:
    """What the probe sent 10.5 (docs/dtmf.md): "8" growing and ended three times, "5"
    ended twice, "#" never ended; audio between them."""
    seq = 1000
    for pt, ts, payload, marker in [
        (0, 3000, b"\xff" * 160, False),
        (101, 3160, event(8, False, 10, 160), True),
        (101, 3160, event(8, False, 10, 320), False),
        (101, 3160, event(8, False, 10, 640), False),
        (101, 3160, event(8, True, 10, 800), False),
        (101, 3160, event(8, True, 10, 800), False),
        (101, 3160, event(8, True, 10, 800), False),
        (0, 3960, b"\xff" * 160, False),
        (101, 4120, event(5, False, 20, 160), True),
        (101, 4120, event(5, True, 20, 480), False),
        (101, 4120, event(5, True, 20, 480), False),
        (101, 4600, event(11, False, 12, 160), True),
        (101, 4600, event(11, False, 12, 320), False),
        (0, 4920, b"\xff" * 160, False),
    ]:
        watcher.packet(A, packet(pt, seq, ts, payload, marker))
        seq += 1


def test_one_report_per_digit_at_its_end() -> None:
    sent: list[ipc.Message] = []
    _rfc_run(DtmfWatch(2, KEY, {101: 8000}, sent.append))
    assert sent == [
        ipc.Dtmf(2, KEY, "198.51.100.1 7000", 8, 10, 100),
        ipc.Dtmf(2, KEY, "198.51.100.1 7000", 5, 20, 60),
    ]


def test_duration_at_the_events_clock_and_other_payload_types_ignored() -> None:
    sent: list[ipc.Message] = []
    watcher = DtmfWatch(0, KEY, {97: 16000}, sent.append)
    watcher.packet(A, packet(101, 1, 100, event(3, True, 7, 400)))  # not an event PT here
    watcher.packet(A, packet(97, 2, 100, event(3, True, 7, 1600)))
    watcher.packet(A, packet(97, 3, 100, b"\x03\x87"))  # short: no block
    watcher.packet(A, b"\x80\x61\x00")  # no RTP
    assert sent == [ipc.Dtmf(0, KEY, "198.51.100.1 7000", 3, 7, 100)]


def test_a_decrypted_packet_in_the_workers_buffer() -> None:
    """The SRTP path hands the watch a view of its receive buffer (relayd/worker/secure.py)."""
    sent: list[ipc.Message] = []
    buffer = bytearray(packet(101, 7, 800, event(11, True, 3, 1280)) + b"\0" * 32)
    DtmfWatch(0, KEY, {101: 8000}, sent.append).packet(A, memoryview(buffer)[:16])
    assert sent == [ipc.Dtmf(0, KEY, "198.51.100.1 7000", 11, 3, 160)]


def test_a_new_digit_after_a_repeat_of_the_same_one() -> None:
    """Two "1"s in a row are two digits: their end packets carry different timestamps."""
    sent: list[ipc.Message] = []
    watcher = DtmfWatch(0, KEY, {101: 8000}, sent.append)
    for seq, ts in ((1, 800), (2, 800), (3, 1760), (4, 1760)):
        watcher.packet(A, packet(101, seq, ts, event(1, True, 10, 640)))
    assert [m.event for m in sent if isinstance(m, ipc.Dtmf)] == [1, 1]


# -- tones heard in audio ---------------------------------------------------------------------


def _tone(low: float, high: float, start: int, count: int) -> bytes:
    """μ-law of two sines, each at amplitude 6000, samples ``start`` on."""
    table = g711.encoder_table("PCMU")
    samples = [
        int(6000 * (math.sin(low * n * _STEP) + math.sin(high * n * _STEP)))
        for n in range(start, start + count)
    ]
    return bytes(table[v & 0xFFFF] for v in samples)


def test_tones_heard_in_audio_reported_as_the_detector_times_them() -> None:
    """PCM to RFC DTMF (the receiver takes telephone-event, the sender sends none): 120 ms
    of "8" (852 + 1336 Hz), then silence; 10.5 reported 114 ms for the same tone."""
    engine = Transcoder(CodecPlan(decode=(PCMU,), encode=PCMU, dtmf_out=TE96))
    sent: list[ipc.Message] = []
    watcher = watch(1, KEY, "", engine, None, sent.append)
    assert watcher is not None and engine.heard == []
    payloads = [_tone(852, 1336, 160 * i, 160) for i in range(6)] + [b"\xff" * 160] * 6
    for i, payload in enumerate(payloads):
        engine.process(packet(0, 10 + i, 3000 + 160 * i, payload))
        watcher.heard(engine, A)
    assert len(sent) == 1
    report = sent[0]
    assert isinstance(report, ipc.Dtmf)
    assert (report.event, report.source, report.tone) == (8, "198.51.100.1 7000", True)
    assert 100 <= report.duration <= 130
    assert 0 < report.volume < 20
    assert engine.heard == []


def _ignore(message: ipc.Message) -> None:
    raise AssertionError(f"nothing to report: {message}")


def test_nothing_watched_without_events_or_detection() -> None:
    passthrough = Transcoder(CodecPlan(decode=(PCMU,), encode=PCMU))
    assert watch(0, KEY, "", passthrough, None, _ignore) is None
    assert passthrough.heard is None
    kept = watch(0, KEY, "101/8000", None, None, _ignore)
    assert kept is not None
    assert watch(0, KEY, "101/8000", None, kept, _ignore) is kept
    assert watch(0, KEY, "96/8000", None, kept, _ignore) is not kept


# -- the report ---------------------------------------------------------------------------------

REPORT = DtmfReport("probe-call", "tagA", ("tagA", "tagB"), 1796573539, "127.0.0.1", 8, 100, 10)


def test_json_as_rtpengine_sends_it() -> None:
    assert dtmf_json(REPORT) == (
        '{"callid":"probe-call","source_tag":"tagA","tags":["tagA","tagB"],"type":"DTMF",'
        '"timestamp":1796573539,"source_ip":"127.0.0.1","event":8,"duration":100,"volume":10}'
    )


def test_ng_tcp_notification_as_rtpengine_sends_it() -> None:
    assert dtmf_notify(REPORT, "6a9dc17e4cb3e899") == (
        b"6a9dc17e4cb3e899 d6:notify6:onDTMF4:datad4:tagsl4:tagA4:tagBe6:callid10:probe-call"
        b"10:source_tag4:tagA4:type4:DTMF9:source_ip9:127.0.0.19:timestampi1796573539e"
        b"5:eventi8e8:durationi100e6:volumei10eee"
    )


def _sdp(*args: object, extra: list[str]) -> str:
    text = sdp(*args, extra=extra)  # type: ignore[arg-type]
    return text.replace("RTP/AVP 0 8\r\n", "RTP/AVP 0 8 101\r\n") if extra else text


def _call(offer_extra: list[str], answer_extra: list[str]) -> Call:
    cmds, _ = build()
    offered = req("offer", from_tag="a", sdp=_sdp(extra=offer_extra))
    assert cmds.handle(offered, T0)["result"] == "ok"
    answered = req("answer", from_tag="a", to_tag="b", sdp=_sdp(B_ADDR, 6000, extra=answer_extra))
    assert cmds.handle(answered, T0)["result"] == "ok"
    return cmds.calls["c1"]


def test_report_placed_in_its_call() -> None:
    call = _call(TE_LINES, TE_LINES)
    streams = streams_by_socket(call)
    b_stream = call.monologues["b"].medias[0].streams[0]
    key = ipc.socket_key(b_stream.local.local, b_stream.port)
    message = ipc.Dtmf(0, key, "192.0.2.9 6000", 3, 7, 50)
    report = dtmf_report(message, streams, {"c1": call}, 1796573540.7)
    assert report == DtmfReport("c1", "b", ("a", "b"), 1796573540, "192.0.2.9", 3, 50, 7)
    # a tone has no packet source: the party's learned endpoint stands in
    b_stream.endpoint = Endpoint("192.0.2.10", 6002)
    heard = dtmf_report(ipc.Dtmf(0, key, "", 3, 7, 50, tone=True), streams, {"c1": call}, T0)
    assert heard is not None and heard.source_ip == "192.0.2.10"
    assert dtmf_report(message, streams, {}, T0) is None  # the call is gone
    assert dtmf_report(ipc.Dtmf(0, "192.0.2.1 1", "", 1, 1, 1), streams, {"c1": call}, T0) is None


# -- the plan, the kernel policy, the configuration ---------------------------------------


def test_forwards_name_each_partys_event_payload_types() -> None:
    call = _call(TE_LINES, [])
    assert telephone_events(call.monologues["a"].medias[0]) == "101/8000"
    assert telephone_events(call.monologues["b"].medias[0]) == ""
    specs = {s.key: s for f in plan(call, dtmf_events=True) for s in f.sockets}
    a_rtp = call.monologues["a"].medias[0]
    key = ipc.socket_key(a_rtp.local.local if a_rtp.local else "", a_rtp.port)
    assert specs[key].dtmf == "101/8000"
    assert all(not s.dtmf for s in specs.values() if s.key != key)  # B's, and RTCP's
    assert all(not s.dtmf for f in plan(call) for s in f.sockets)  # not asked: nothing


def _confirmed(call: Call) -> Call:
    for party in call.monologues.values():
        for stream in party.medias[0].streams:
            stream.confirmed = True
    return call


def test_sections_with_events_stay_with_the_workers_while_reported() -> None:
    with_events = _confirmed(_call(TE_LINES, TE_LINES))
    assert kernel_legs(with_events) != []
    assert kernel_legs(with_events, dtmf=True) == []
    # unless the kernel copies the call's event packets to its worker
    assert kernel_legs(with_events, dtmf=True, events_copied=True) == kernel_legs(with_events)
    without = _confirmed(_call([], []))
    assert kernel_legs(without, dtmf=True) == kernel_legs(without) != []
    assert events_payload_type(with_events) == 101
    assert events_payload_type(without) is None


# -- the kernel's copies of event packets ------------------------------------------------


def test_events_chain_copies_one_payload_type() -> None:
    """``events_G_PT``: the RTP payload type (the UDP payload's second byte, marker bit
    off) matched, then ``log group G``: as ``nft`` lists it, ``@th,72,8 & 0x7f == 0x65``."""
    target = events_target(7, 101)
    assert target_parts(target) == (7, 101) and target_parts(7) == (7, None)
    assert record_chain(target) == "events_7_101" and record_chain(7) == "record_7"
    chain = {"family": "inet", "table": "t", "name": "events_7_101"}
    rtp_pt = {"&": [{"payload": {"base": "th", "offset": 72, "len": 8}}, 0x7F]}
    assert record_chain_commands(Table("t"), target) == [
        {"add": {"chain": chain}},
        {"flush": {"chain": chain}},
        {
            "add": {
                "rule": {
                    "family": "inet",
                    "table": "t",
                    "chain": "events_7_101",
                    "expr": [
                        {"match": {"op": "==", "left": rtp_pt, "right": 101}},
                        {"log": {"prefix": "t", "group": 7}},
                    ],
                }
            }
        },
    ]
    key = ForwardKey(NftEndpoint("10.88.1.2", 4000), NftEndpoint("10.88.1.1", 30000))
    (command,) = record_commands(Table(), [key], target)
    assert command["add"]["element"]["elem"][0][1] == {"jump": {"target": "events_7_101"}}
    with pytest.raises(ValueError):
        events_target(7, 128)
    with pytest.raises(ValueError):
        record_chain(1 << 16)  # neither a group nor an events target


def test_events_marks_read_back_from_a_listing() -> None:
    key = {"concat": ["10.88.1.2", 4000, "10.88.1.1", 30000]}
    doc = {
        "nftables": [
            {
                "map": {
                    "family": "inet",
                    "name": "rec4",
                    "table": "relayd",
                    "type": ["ipv4_addr", "inet_service", "ipv4_addr", "inet_service"],
                    "map": "verdict",
                    "elem": [[key, {"jump": {"target": "events_3_96"}}]],
                }
            }
        ]
    }
    state = parse_state([doc], Table())
    assert isinstance(state, TableState)
    assert list(state.recorded.values()) == [events_target(3, 96)]


def test_ipc_round_trip() -> None:
    message = ipc.Dtmf(3, KEY, "198.51.100.1 7000", 11, 12, 60, tone=True)
    assert ipc.decode(ipc.encode(message)) == message
    forward = ipc.Forward("c1 0", (ipc.SocketSpec(KEY, dtmf="101/8000"),))
    assert ipc.decode(ipc.encode(forward)) == forward
    configure = ipc.Configure(0, dtmf_events=True)
    assert ipc.decode(ipc.encode(configure)) == configure


@pytest.mark.parametrize(
    ("lines", "dest", "facility", "ng", "reported"),
    [
        ([], None, "", False, False),
        (["dtmf-log-dest = 127.0.0.1:48490"], ("127.0.0.1", 48490), "", False, True),
        (["dtmf-log-dest = 9999"], ("127.0.0.1", 9999), "", False, True),
        (["log-facility-dtmf = local5"], None, "local5", False, True),
        (["dtmf-log-ng-tcp = true"], None, "", True, True),
    ],
)
def test_configuration(
    tmp_path: Path,
    lines: list[str],
    dest: tuple[str, int] | None,
    facility: str,
    ng: bool,
    reported: bool,
) -> None:
    path = tmp_path / "rtpengine.conf"
    path.write_text("[rtpengine]\ninterface = 127.0.0.1\n" + "".join(f"{x}\n" for x in lines))
    config = load(["--config-file", str(path)])
    assert (config.dtmf_log_dest, config.log_facility_dtmf, config.dtmf_log_ng_tcp) == (
        dest,
        facility,
        ng,
    )
    assert reports_dtmf(config) is reported
