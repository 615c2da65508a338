"""SDP parsing into lines (RFC 8866) and writing back: byte-exact, exact errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relayd.sdp.model import Connection, MediaDescription, Origin, SdpError
from relayd.sdp.parse import parse_sdp
from relayd.sdp.write import write_sdp

SDP_DIR = Path(__file__).resolve().parent.parent / "data" / "sdp"
SDP_FILES = sorted(SDP_DIR.glob("*.sdp"))

OFFER = (
    "v=0\r\n"
    "o=caller 53655765 2353687637 IN IP4 127.0.0.10\r\n"
    "s=ng-harness\r\n"
    "c=IN IP4 127.0.0.10\r\n"
    "t=0 0\r\n"
    "m=audio 6000 RTP/AVP 0 101\r\n"
    "a=rtpmap:0 PCMU/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\n"
    "a=fmtp:101 0-16\r\n"
    "a=ptime:20\r\n"
    "a=sendrecv\r\n"
    "m=video 0 RTP/AVP 96\r\n"
    "c=IN IP6 2001:db8::1\r\n"
)


def test_real_sdps_exist() -> None:
    assert len(SDP_FILES) >= 30


@pytest.mark.parametrize("path", SDP_FILES, ids=lambda p: p.stem)
def test_real_sdps_round_trip_byte_exact(path: Path) -> None:
    body = path.read_bytes().decode("utf-8", "surrogateescape")
    sdp = parse_sdp(body)
    assert write_sdp(sdp) == body
    assert sdp.media, "every sample has at least one m= line"


def test_structure() -> None:
    sdp = parse_sdp(OFFER)
    assert sdp.eol == "\r\n"
    assert [str(line) for line in sdp.session] == [
        "v=0",
        "o=caller 53655765 2353687637 IN IP4 127.0.0.10",
        "s=ng-harness",
        "c=IN IP4 127.0.0.10",
        "t=0 0",
    ]
    assert sdp.origin() == Origin("caller", "53655765", "2353687637", "IN", "IP4", "127.0.0.10")
    assert sdp.connection() == Connection("IN", "IP4", "127.0.0.10")
    audio, video = sdp.media
    assert (audio.media, audio.port, audio.port_count, audio.protocol, audio.formats) == (
        "audio",
        6000,
        None,
        "RTP/AVP",
        ["0", "101"],
    )
    assert audio.attributes("rtpmap") == ["0 PCMU/8000", "101 telephone-event/8000"]
    assert audio.attributes("sendrecv") == [""]
    assert audio.has_attribute("ptime")
    assert audio.connection() is None
    assert [line.attr for line in audio.lines] == ["rtpmap", "rtpmap", "fmtp", "ptime", "sendrecv"]
    assert video.port == 0
    assert video.connection() == Connection("IN", "IP6", "2001:db8::1")


def test_lf_only_body_is_written_with_lf() -> None:
    body = OFFER.replace("\r\n", "\n")
    sdp = parse_sdp(body)
    assert sdp.eol == "\n"
    assert write_sdp(sdp) == body


def test_missing_final_line_ending_and_trailing_blank_lines() -> None:
    assert write_sdp(parse_sdp("v=0\r\ns=-")) == "v=0\r\ns=-\r\n"
    assert write_sdp(parse_sdp("v=0\r\ns=-\r\n\r\n")) == "v=0\r\ns=-\r\n"


def test_port_count_and_multicast_ttl() -> None:
    sdp = parse_sdp("v=0\r\nc=IN IP4 233.252.0.1/127\r\nm=audio 49170/2 RTP/AVP 0\r\n")
    assert sdp.connection() == Connection("IN", "IP4", "233.252.0.1")
    assert (sdp.media[0].port, sdp.media[0].port_count) == (49170, 2)


def test_unchanged_m_line_is_kept_verbatim() -> None:
    body = "v=0\r\nm=audio  06000/02 RTP/AVP 0 8 \r\na=sendrecv\r\n"
    sdp = parse_sdp(body)
    assert (sdp.media[0].port, sdp.media[0].port_count) == (6000, 2)
    assert write_sdp(sdp) == body


def test_changed_m_line_is_written_canonically() -> None:
    sdp = parse_sdp("v=0\r\nm=audio  06000 RTP/AVP 0 8 \r\n")
    sdp.media[0].port = 30000
    assert write_sdp(sdp) == "v=0\r\nm=audio 30000 RTP/AVP 0 8\r\n"
    sdp = parse_sdp("v=0\r\nm=audio 6000 RTP/AVP 0 8\r\n")
    sdp.media[0].formats.remove("8")
    assert write_sdp(sdp) == "v=0\r\nm=audio 6000 RTP/AVP 0\r\n"


def test_new_media_description_is_canonical() -> None:
    media = MediaDescription("audio", 30000, None, "RTP/AVP", ["0"])
    assert media.m_value() == "audio 30000 RTP/AVP 0"
    assert MediaDescription("audio", 1, 2, "RTP/AVP", []).m_value() == "audio 1/2 RTP/AVP"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("", "SDP does not start with v="),
        ("\r\n", "SDP does not start with v="),
        ("o=- 1 1 IN IP4 1.2.3.4\r\nv=0\r\n", "SDP does not start with v="),
        ("v=0\r\n\r\ns=-\r\n", "malformed line: ''"),
        ("v=0\r\ns\r\n", "malformed line: 's'"),
        ("v=0\r\ns:-\r\n", "malformed line: 's:-'"),
        ("v=0\r\n1=x\r\n", "malformed line: '1=x'"),
        ("v=0\r\nm=audio 6000\r\n", "bad media line: m=audio 6000"),
        ("v=0\r\nm=audio x RTP/AVP 0\r\n", "bad media port: m=audio x RTP/AVP 0"),
        ("v=0\r\nm=audio 65536 RTP/AVP 0\r\n", "bad media port: m=audio 65536 RTP/AVP 0"),
        ("v=0\r\nm=audio -1 RTP/AVP 0\r\n", "bad media port: m=audio -1 RTP/AVP 0"),
        ("v=0\r\nm=audio 6000/x RTP/AVP 0\r\n", "bad media port: m=audio 6000/x RTP/AVP 0"),
        # str.isdigit() says yes to these, int() says no: must still be an SdpError
        ("v=0\r\nm=audio ² RTP/AVP 0\r\n", "bad media port: m=audio ² RTP/AVP 0"),
        ("v=0\r\nm=audio 6000/² RTP/AVP 0\r\n", "bad media port: m=audio 6000/² RTP/AVP 0"),
        ("v=0\r\nm=audio ٦٠٠٠ RTP/AVP 0\r\n", "bad media port: m=audio ٦٠٠٠ RTP/AVP 0"),
        ("v=0\r\nc=IN IP4\r\n", "bad connection line: c=IN IP4"),
        ("v=0\r\nc=IN IPX 1.2.3.4\r\n", "bad connection line: c=IN IPX 1.2.3.4"),
        ("v=0\r\nm=audio 1 RTP/AVP 0\r\nc=IN\r\n", "bad connection line: c=IN"),
        ("v=0\r\no=- 1 IN IP4 1.2.3.4\r\n", "bad origin line: o=- 1 IN IP4 1.2.3.4"),
    ],
)
def test_errors(body: str, message: str) -> None:
    with pytest.raises(SdpError) as info:
        parse_sdp(body)
    assert str(info.value) == message


def test_huge_port_number_is_an_sdp_error() -> None:
    body = "v=0\r\nm=audio " + "9" * 5000 + " RTP/AVP 0\r\n"
    with pytest.raises(SdpError, match=r"^bad media port: "):
        parse_sdp(body)


def test_lenient_ports_are_accepted_and_kept() -> None:
    body = "v=0\r\nm=audio 0000000006000 RTP/AVP 0\r\nm=audio 6002/ RTP/AVP 0\r\n"
    sdp = parse_sdp(body)
    assert [(m.port, m.port_count) for m in sdp.media] == [(6000, None), (6002, None)]
    assert write_sdp(sdp) == body


def test_recurring_lines_are_shared_and_per_call_ones_are_not() -> None:
    """The codec, packet time, direction, s= and t= lines of one SDP are the same objects in the
    next; o=, c= and m= (addresses, ports, session ids) are made anew."""
    first, second = parse_sdp(OFFER), parse_sdp(OFFER)
    assert all(a is b for a, b in zip(first.media[0].lines, second.media[0].lines, strict=True))
    shared = [a is b for a, b in zip(first.session, second.session, strict=True)]
    assert shared == [False, False, True, False, True]  # v= o= s= c= t=
    assert first.media[1].lines[0] is not second.media[1].lines[0]  # its c=


def test_recurring_lines_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lines come from the network: a full table starts over."""
    from relayd.sdp import parse
    from relayd.sdp.intern import Recurring

    monkeypatch.setattr(parse, "_RECURRING_LINES", Recurring(3))
    for n in range(10):
        body = OFFER.replace("a=fmtp:101 0-16", f"a=fmtp:101 0-{n}")
        sdp = parse_sdp(body)
        assert write_sdp(sdp) == body
    assert 0 < len(parse._RECURRING_LINES) <= 3


def test_lines_keep_their_text_and_compare_by_value() -> None:
    sdp = parse_sdp(OFFER)
    line = sdp.media[0].lines[0]
    assert (line.kind, line.value, line.attr, line.text) == (
        "a",
        "rtpmap:0 PCMU/8000",
        "rtpmap",
        "a=rtpmap:0 PCMU/8000",
    )
    assert str(line) == line.text
    assert line == type(line)("a", "rtpmap:0 PCMU/8000")
    assert line != type(line)("a", "rtpmap:0 PCMA/8000")


_PIECES = ["v=0", "o=- 1 2 IN IP4 192.0.2.1", "m=audio 9 RTP/AVP 0", "a=x", "t=0 0", "c=IN IP4 ::"]
_BREAKS = ["\n", "\r\n", "\r", "\r\r\n", "\v", "\f", "\x1c", "\x85", "\u2028", ""]


@settings(max_examples=500)
@given(st.lists(st.sampled_from(_PIECES) | st.sampled_from(_BREAKS), min_size=1, max_size=12))
def test_lines_end_at_each_lf_whatever_other_breaks_there_are(pieces: list[str]) -> None:
    """The lines are those split at each LF, a CR before it dropped (as rtpengine reads
    them): other line breaks (a lone CR, VT, U+2028, ...) are no breaks."""
    body = "v=0\r\n" + "".join(pieces)
    lines = [raw.rstrip("\r") for raw in body.replace("\r\n", "\n").split("\n")]
    while lines and lines[-1] == "":
        lines.pop()
    eol = "\r\n" if "\r\n" in body else "\n"
    try:
        written = write_sdp(parse_sdp(body))
    except SdpError:
        assert any(line[1:2] != "=" or not line[:1].isalpha() for line in lines) or any(
            line.startswith(("m=", "c=", "o=")) for line in lines
        )
        return
    assert written == eol.join(lines) + eol
