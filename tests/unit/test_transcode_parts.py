"""The engine's parts alone: the sequencer's rules, the packetiser's grid, the RTCP rewrite,
telephone-event durations, the RTP header reader."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relayd.transcode import events, rtp
from relayd.transcode.packetiser import Packetiser
from relayd.transcode.reports import rewrite
from relayd.transcode.sequencer import DUPLICATE, IN_ORDER, RESET, Sequencer


def test_sequencer_waits_for_a_late_packet_then_gives_up() -> None:
    s: Sequencer[str] = Sequencer(8000)
    assert s.insert(10, 0, "a") == IN_ORDER and s.pop() == (10, 0, "a")
    assert s.insert(12, 320, "c") == IN_ORDER and s.pop() is None  # 40 ms on: wait
    assert s.insert(11, 160, "b") == IN_ORDER
    assert [s.pop(), s.pop(), s.pop()] == [(11, 160, "b"), (12, 320, "c"), None]
    assert s.insert(11, 160, "b") == DUPLICATE
    assert s.insert(15, 800, "f") == IN_ORDER  # 60 ms past the last one out: 13, 14 lost
    assert s.pop() == (15, 800, "f") and s.lost == 2


def test_sequencer_gives_up_after_ten_queued_packets() -> None:
    s: Sequencer[int] = Sequencer(8000)
    s.insert(0, 0, 0)
    s.pop()
    for seq in range(2, 11):  # same timestamp (no 60 ms): only the count decides
        s.insert(seq, 0, seq)
        assert s.pop() is None
    s.insert(11, 0, 11)
    assert [s.pop()[0] for _ in range(10)] == list(range(2, 12))  # type: ignore[index]


def test_sequencer_reset_and_wrap() -> None:
    s: Sequencer[int] = Sequencer(8000)
    s.insert(65535, 0, 0)
    s.pop()
    assert s.insert(0, 160, 1) == IN_ORDER and s.pop() == (0, 160, 1)  # wrapped
    assert s.insert(30000, 320, 2) == RESET and s.pop() == (30000, 320, 2)
    assert s.insert(29950, 320, 3) == DUPLICATE


def test_packetiser_cuts_and_keeps_the_grid_across_a_gap() -> None:
    p = Packetiser(4, 1, b"s")
    assert p.push(b"abc") == []
    assert p.skip(3) == [(0, b"abcs")]  # the packet the hole began in, completed
    assert p.end == 6 and p.push(b"de") == [(4, b"ssde")]  # the hole ends inside one
    assert p.skip(8) == [] and p.push(b"wxyz") == [(16, b"wxyz")]  # whole packets skipped
    assert p.push(b"123456789") == [(20, b"1234"), (24, b"5678")] and p.end == 29


def _sr(ssrc: int, about: int) -> bytes:
    sender = struct.pack("!IIIII", 1, 2, 3000, 50, 8000)  # NTP, RTP ts, packets, octets
    block = struct.pack("!IB3sIIII", about, 0, b"\x00\x00\x00", 7, 9, 11, 13)
    body = struct.pack("!I", ssrc) + sender + block
    return struct.pack("!BBH", 0x81, 200, len(body) // 4) + body


class _Stream:
    def __init__(self, ssrc_in: int, ssrc_out: int) -> None:
        self.ssrc_in, self.ssrc_out, self.last_ts = ssrc_in, ssrc_out, 123456
        self.sent_packets, self.sent_octets = 40, 6400
        self.received, self.lost, self.highest_seq = 90, 10, 2099


def test_rtcp_sender_report_speaks_of_the_ssrcs_each_side_knows() -> None:
    forward, reverse = _Stream(0xA, 0xAA), _Stream(0xB, 0xBB)
    out = rewrite(_sr(0xA, 0xBB), forward, reverse)
    ssrc, _ntp1, _ntp2, ts, packets, octets = struct.unpack_from("!IIIIII", out, 4)
    assert (ssrc, ts, packets, octets) == (0xAA, 123456, 40, 6400)
    about, fraction, lost, highest, jitter = struct.unpack_from("!IB3sII", out, 28)
    assert (about, fraction, int.from_bytes(lost, "big"), highest, jitter) == (0xB, 25, 10, 2099, 9)
    # a report from someone else, about someone else: untouched
    assert rewrite(_sr(0xC, 0xD), forward, reverse) == _sr(0xC, 0xD)
    assert rewrite(_sr(0xA, 0xBB), None, None) == _sr(0xA, 0xBB)


@given(st.binary(max_size=80))
def test_rtcp_rewrite_never_fails(data: bytes) -> None:
    assert len(rewrite(data, _Stream(0xA, 0xAA), _Stream(0xB, 0xBB))) == len(data)


@given(st.binary(max_size=80))
def test_rtp_parse_fails_only_with_its_error(data: bytes) -> None:
    try:
        packet = rtp.parse(data)
    except rtp.RtpError:
        return
    assert len(packet.payload) <= len(data) - 12


def test_rtp_header_with_csrc_extension_and_padding() -> None:
    header = bytes([0xB1, 0x80 | 8]) + struct.pack("!HII", 7, 9, 11) + struct.pack("!I", 5)
    extension = struct.pack("!HH", 0xBEDE, 1) + b"\x10\xaa\x00\x00"
    packet = rtp.parse(header + extension + b"payload" + b"\x00\x00\x03")
    assert (packet.pt, packet.marker, packet.seq, packet.ts, packet.ssrc) == (8, True, 7, 9, 11)
    assert packet.payload == b"payload"
    with pytest.raises(rtp.RtpError):
        rtp.parse(b"\x40" + bytes(11))


def test_telephone_event_durations() -> None:
    assert events.rescale(b"\x08\x0f\x01\x40", 16000, 8000) == b"\x08\x0f\x00\xa0"
    assert events.rescale(b"\x08\x8f\xff\x00", 8000, 48000) == b"\x08\x8f\xff\xff"
    assert events.rescale(b"\x01\x02\x00\x10\x05", 8000, 16000) == b"\x01\x02\x00\x20\x05"
