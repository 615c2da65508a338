"""RTCP as the JSON text rtpengine sends to Homer (daemon/rtcp.c homer_* handlers), exactly."""

from __future__ import annotations

import json
import struct

from hypothesis import given
from hypothesis import strategies as st

from relayd.rtcp import homer_json, is_rtcp

CALLER, CALLEE = 0x11111111, 0x22222222


def sender_report(blocks: int = 1) -> bytes:
    body = struct.pack("!IIIIII", CALLER, 3_900_000_000, 2_147_483_648, 160, 50, 8000)
    for _ in range(blocks):
        # ssrc, fraction lost 12, cumulative lost 3 (24 bits), highest seq, jitter, lsr, dlsr
        body += struct.pack(
            "!IB3sIIII", CALLEE, 12, (3).to_bytes(3, "big"), 1000, 7, 0x12345678, 65536
        )
    return struct.pack("!BBH", 0x80 | blocks, 200, (4 + len(body)) // 4 - 1) + body


def receiver_report() -> bytes:
    return struct.pack("!BBHI", 0x80, 201, 1, CALLEE)


def sdes(text: bytes = b"caller@host") -> bytes:
    chunk = struct.pack("!I", CALLER) + bytes([1, len(text)]) + text + b"\x00"
    chunk += b"\x00" * (-len(chunk) % 4)
    return struct.pack("!BBH", 0x81, 202, len(chunk) // 4) + chunk


def bye() -> bytes:
    return struct.pack("!BBHI", 0x81, 203, 1, CALLER)


SR_JSON = (
    '{ "sender_information":{"ntp_timestamp_sec":3900000000,"ntp_timestamp_usec":2147483648,'
    '"octets":8000,"rtp_timestamp":160, "packets":50},"ssrc":286331153,"type":200,'
    '"report_count":1,"report_blocks":[{"source_ssrc":572662306,"highest_seq_no":1000,'
    '"fraction_lost":12,"ia_jitter":7,"packets_lost":3,"lsr":305419896,"dlsr":65536}] }'
)


def test_sender_report() -> None:
    assert homer_json(sender_report()) == SR_JSON


def test_compound_sender_report_and_sdes() -> None:
    text = homer_json(sender_report() + sdes())
    assert text == SR_JSON[:-2] + (
        ',"sdes_report_count":1,"sdes_information": [ '
        '{"sdes_chunk_ssrc":286331153,"type":1,"text":"caller@host"}] }'
    )
    parsed = json.loads(text)  # rtpengine's text is valid JSON, and so is ours
    assert parsed["sdes_information"][0]["text"] == "caller@host"
    assert parsed["report_blocks"][0]["packets_lost"] == 3


def test_receiver_report_without_blocks() -> None:
    assert homer_json(receiver_report() + bye()) == (
        '{ "ssrc":572662306,"type":201,"report_count":0,"report_blocks":[] }'
    )


def test_sdes_text_is_escaped_like_rtpengine() -> None:
    text = homer_json(sdes(b'a"b\\c\td\x01\xff'))
    assert text is not None
    assert '"text":"a\\"b\\\\c\\td__"' in text


def test_nothing_to_report() -> None:
    assert homer_json(bye()) is None
    assert homer_json(b"") is None
    assert homer_json(b"\x40\xc8\x00\x00") is None  # version 1


def test_what_came_before_a_broken_packet_is_kept() -> None:
    assert homer_json(sender_report() + b"\x81\xc9\x00\x07") == SR_JSON  # truncated RR


def test_rtcp_is_told_from_rtp() -> None:
    assert is_rtcp(sender_report())
    assert not is_rtcp(bytes([0x80, 0x00]) + bytes(10))  # RTP, PCMU


@given(st.binary(max_size=400))
def test_any_datagram_gives_valid_json_or_none(data: bytes) -> None:
    text = homer_json(data)
    if text is not None:
        json.loads(text)
