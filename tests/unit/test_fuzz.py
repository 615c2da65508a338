"""Property and fuzz tests for every parser that faces the network.

Each parser may refuse input only with its own error (BencodeError, NgError,
FramingError, SdpError); anything else escaping is a bug. Example counts are
bounded so the whole file runs in a few seconds.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relayd.ng import bencode
from relayd.ng.message import NgError, Request, normalise, parse_request
from relayd.ng.server import NgService, split_stream
from relayd.sdp.model import SdpError
from relayd.sdp.parse import parse_sdp
from relayd.sdp.write import write_sdp

SDP_DIR = Path(__file__).resolve().parent.parent / "data" / "sdp"
KAMAILIO_NG = Path(__file__).resolve().parent.parent / "data" / "kamailio-ng"

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PROPERTY = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _kamailio_requests() -> list[bytes]:
    """Real Kamailio requests, framed as they arrived (cookie SP bencode)."""
    frames = []
    for path in sorted(KAMAILIO_NG.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            entry = json.loads(line)
            if entry["dir"] == "req":
                frames.append(entry["cookie"].encode() + b" " + bencode.encode(entry["msg"]))
    return frames


SEEDS = _kamailio_requests()
SDP_SEEDS = [
    p.read_bytes().decode("utf-8", "surrogateescape") for p in sorted(SDP_DIR.glob("*.sdp"))
]


@st.composite
def mutated_bytes(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """A real message with a few bytes inserted, deleted, replaced, or the tail cut."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        pos = draw(st.integers(min_value=0, max_value=len(data)))
        op = draw(st.sampled_from(["insert", "delete", "replace", "truncate"]))
        if op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(min_value=1, max_value=8))]
        elif op == "replace" and pos < len(data):
            data[pos] = draw(st.integers(min_value=0, max_value=255))
        elif op == "truncate":
            del data[pos:]
    return bytes(data)


# --- bencode -------------------------------------------------------------------


def _decode_or_error(data: bytes) -> None:
    try:
        value = bencode.decode(data)
    except bencode.BencodeError:
        return
    # accepted input is canonical: it re-encodes to the same bytes unless a key repeats
    assert bencode.decode(bencode.encode(value)) == value
    if len(data) == len(bencode.encode(value)):
        assert bencode.encode(value) == data


@FUZZ
@given(st.binary(max_size=300))
def test_bencode_decode_arbitrary_bytes(data: bytes) -> None:
    _decode_or_error(data)


@FUZZ
@given(
    st.lists(
        st.sampled_from([b"i", b"e", b"l", b"d", b"-", b"0", b"1", b"9", b":", b"x"]), max_size=60
    ).map(b"".join)
)
def test_bencode_decode_token_soup(data: bytes) -> None:
    _decode_or_error(data)


@FUZZ
@given(mutated_bytes([frame.partition(b" ")[2] for frame in SEEDS]))
def test_bencode_decode_mutated_kamailio_requests(data: bytes) -> None:
    _decode_or_error(data)


bencode_values = st.recursive(
    st.integers() | st.text(max_size=20) | st.binary(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=25,
)


def _as_decoded(value: Any) -> Any:
    """What a value looks like after a round trip: bytes come back as (escaped) str."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    if isinstance(value, list):
        return [_as_decoded(v) for v in value]
    if isinstance(value, dict):
        return {k: _as_decoded(v) for k, v in value.items()}
    return value


@PROPERTY
@given(bencode_values)
def test_bencode_round_trip(value: Any) -> None:
    wire = bencode.encode(value)
    decoded = bencode.decode(wire)
    assert decoded == _as_decoded(value)
    assert bencode.encode(decoded) == wire


@PROPERTY
@given(bencode_values, st.data())
def test_bencode_every_prefix_is_truncated(value: Any, data: st.DataObject) -> None:
    wire = bencode.encode(value)
    cut = data.draw(st.integers(min_value=0, max_value=len(wire) - 1))
    with pytest.raises(bencode.BencodeError, match=r"^truncated data$"):
        bencode.decode_prefix(wire[:cut])


# --- TCP framing ---------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=300) | mutated_bytes(SEEDS))
def test_split_stream_arbitrary_bytes(data: bytes) -> None:
    messages, rest, _broken = split_stream(data)
    for message in messages:
        cookie, space, body = message.partition(b" ")
        assert cookie and space
        bencode.decode(body)
    assert len(rest) <= len(data)


@PROPERTY
@given(
    st.lists(st.sampled_from(SEEDS), min_size=1, max_size=4),
    st.lists(st.integers(min_value=0, max_value=4000), max_size=6),
)
def test_split_stream_any_segmentation(frames: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(frames)
    points = sorted({c % (len(stream) + 1) for c in cuts})
    got: list[bytes] = []
    buffer = b""
    for start, end in zip([0, *points], [*points, len(stream)], strict=True):
        messages, buffer, broken = split_stream(buffer + stream[start:end])
        assert broken is None
        got.extend(messages)
    assert got == frames
    assert buffer == b""


# --- NgService.process ----------------------------------------------------------


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    event_loop = asyncio.new_event_loop()
    yield event_loop
    event_loop.close()


async def _echo(req: Request, source: tuple[Any, ...]) -> dict[str, Any]:
    return {"result": "ok", "command": req.command, "call-id": req.call_id}


def _check_process(loop: asyncio.AbstractEventLoop, data: bytes) -> None:
    service = NgService(_echo)
    reply = loop.run_until_complete(service.process(data, ("127.0.0.1", 5060)))
    cookie, space, _ = data.partition(b" ")
    if not cookie or not space:
        assert reply is None
        return
    assert isinstance(reply, bytes)
    got_cookie, _, body = reply.partition(b" ")
    assert got_cookie == cookie
    answer = json.loads(body) if body[:1] == b"{" else bencode.decode(body)
    assert isinstance(answer, dict)
    assert answer["result"] in ("ok", "error")


@FUZZ
@given(st.binary(max_size=300))
def test_process_arbitrary_bytes(loop: asyncio.AbstractEventLoop, data: bytes) -> None:
    _check_process(loop, data)


@FUZZ
@given(mutated_bytes(SEEDS))
def test_process_mutated_kamailio_requests(loop: asyncio.AbstractEventLoop, data: bytes) -> None:
    _check_process(loop, data)


@PROPERTY
@given(st.binary(max_size=20).filter(lambda c: b" " not in c), st.text(max_size=200))
def test_process_arbitrary_json_text(
    loop: asyncio.AbstractEventLoop, cookie: bytes, text: str
) -> None:
    _check_process(loop, cookie + b" {" + text.encode("utf-8", "surrogatepass"))


# --- parse_request ---------------------------------------------------------------

KEY_SPELLINGS = [
    "command",
    "call-id",
    "call id",
    "call_id",
    "from-tag",
    "to-tag",
    "via-branch",
    "sdp",
    "flags",
    "rtpp-flags",
    "replace",
    "direction",
    "rtcp-mux",
    "SDES",
    "ICE",
    "DTLS",
    "transport protocol",
    "address family",
    "media address",
    "received from",
    "codec",
    "ptime",
    "TOS",
    "delete delay",
    "limit",
    "record call",
    "label",
    "supports",
    "endpoint-learning",
]
FLAG_WORDS = [
    "trust-address",
    "replace-origin",
    "SDES-off",
    "codec-strip-",
    "codec-strip=",
    "transcode-",
    "ICE=",
    "DTLS=",
    "TOS=",
    "delete-delay=",
    "ptime=",
    "address-family=",
    "direction=",
    "transport-protocol=",
    "protocol=",
    "RTP/AVP",
    "to-tag=",
    "label=",
    "record-call",
    "rtcp-mux-",
]

flag_words = st.builds(
    lambda word, tail: word + tail, st.sampled_from(FLAG_WORDS), st.text(max_size=10)
)
ng_values = st.recursive(
    st.text(max_size=12) | st.integers() | flag_words | st.none() | st.booleans(),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.text(max_size=6) | st.sampled_from(KEY_SPELLINGS), children, max_size=3
        )
    ),
    max_leaves=8,
)
ng_dicts = st.dictionaries(
    st.sampled_from(KEY_SPELLINGS) | st.text(max_size=12), ng_values, max_size=8
)


@PROPERTY
@given(ng_dicts)
def test_parse_request_random_dicts(raw: dict[str, Any]) -> None:
    try:
        req = parse_request(raw)
    except NgError as exc:
        keys = {normalise(k): v for k, v in raw.items()}
        if exc.reason == 'Dictionary contains no key "command"':
            assert not isinstance(keys.get("command"), bytes | str)
        else:  # a call-id, from-tag, to-tag or sdp that is not a string
            wrong = [k for k in ("call-id", "from-tag", "to-tag", "sdp") if k in keys]
            assert any(not isinstance(keys[k], bytes | str) for k in wrong), exc.reason
            assert exc.reason.startswith("No ") and exc.reason.endswith(" in message")
        return
    assert isinstance(req, Request)
    assert all(isinstance(word, str) for word in req.unknown)
    assert req.tos is None or isinstance(req.tos, int)


@PROPERTY
@given(st.lists(flag_words | st.text(max_size=15), max_size=10))
def test_parse_request_random_flag_words(words: list[str]) -> None:
    req = parse_request({"command": "offer", "flags": words, "rtpp-flags": " ".join(words)})
    assert req.command == "offer"


# --- SDP ---------------------------------------------------------------------------


def _well_terminated(body: str, eol: str) -> bool:
    """Every line non-empty and ended by ``eol``, no other CR or LF anywhere."""
    if not body.endswith(eol):
        return False
    lines = body[: -len(eol)].split(eol)
    return all(line and "\r" not in line and "\n" not in line for line in lines)


def _check_sdp(body: str) -> None:
    try:
        sdp = parse_sdp(body)
    except SdpError:
        return
    written = write_sdp(sdp)
    for eol in ("\r\n", "\n"):
        if _well_terminated(body, eol):
            assert written == body
    # whatever the input, what we write is parsed back to the same text
    assert write_sdp(parse_sdp(written)) == written


sdp_line_text = st.text(
    st.characters(blacklist_categories=["Cs"], blacklist_characters="\r\n"), max_size=40
)
sdp_lines = st.builds(
    lambda kind, value: f"{kind}={value}", st.sampled_from("vosctmabiuekz"), sdp_line_text
)


@FUZZ
@given(st.text(max_size=300))
def test_parse_sdp_random_text(body: str) -> None:
    _check_sdp(body)


@FUZZ
@given(
    st.lists(sdp_lines | sdp_line_text, max_size=12),
    st.sampled_from(["\r\n", "\n"]),
    st.booleans(),
)
def test_parse_sdp_random_lines(lines: list[str], eol: str, version_first: bool) -> None:
    if version_first:
        lines = ["v=0", *lines]
    _check_sdp(eol.join(lines) + eol)


@st.composite
def mutated_sdp(draw: st.DrawFn) -> str:
    lines = draw(st.sampled_from(SDP_SEEDS)).split("\r\n")[:-1]
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        pos = draw(st.integers(min_value=0, max_value=max(len(lines) - 1, 0)))
        op = draw(st.sampled_from(["delete", "duplicate", "edit", "replace", "swap"]))
        if not lines:
            lines.append(draw(sdp_lines))
        elif op == "delete":
            del lines[pos]
        elif op == "duplicate":
            lines.insert(pos, lines[pos])
        elif op == "edit":
            cut = draw(st.integers(min_value=0, max_value=len(lines[pos])))
            lines[pos] = lines[pos][:cut] + draw(st.text(max_size=6)) + lines[pos][cut:]
        elif op == "replace":
            lines[pos] = draw(sdp_lines)
        else:
            other = draw(st.integers(min_value=0, max_value=len(lines) - 1))
            lines[pos], lines[other] = lines[other], lines[pos]
    return "".join(line + "\r\n" for line in lines)


@FUZZ
@given(mutated_sdp())
def test_parse_sdp_mutated_real_sdps(body: str) -> None:
    _check_sdp(body)
