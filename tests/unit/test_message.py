"""ng framing and the typed view of a request: exact error strings, Kamailio's spellings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from relayd.ng import bencode, message
from relayd.ng.message import (
    FramingError,
    NgError,
    Request,
    decode_body,
    encode_reply,
    normalise,
    parse_request,
    split_cookie,
)

KAMAILIO_NG = Path(__file__).resolve().parent.parent / "data" / "kamailio-ng"


def _requests(name: str) -> list[dict[str, Any]]:
    lines = (KAMAILIO_NG / name).read_text().splitlines()
    return [e["msg"] for e in map(json.loads, lines) if e["dir"] == "req"]


def _ng_error(raw: dict[str, Any] | bytes) -> str:
    with pytest.raises(NgError) as info:
        if isinstance(raw, bytes):
            decode_body(raw)
        else:
            parse_request(raw)
    assert str(info.value) == info.value.reason
    return info.value.reason


# --- framing -----------------------------------------------------------------


def test_split_cookie() -> None:
    assert split_cookie(b"5323_1 d7:command4:pinge") == ("5323_1", b"d7:command4:pinge")
    # only the first space separates; the body may contain more
    assert split_cookie(b'c {"a": 1}') == ("c", b'{"a": 1}')
    assert split_cookie(b"c ") == ("c", b"")


@pytest.mark.parametrize("data", [b"", b"d7:command4:pinge", b" d7:command4:pinge", b"cookie"])
def test_split_cookie_without_cookie_is_a_framing_error(data: bytes) -> None:
    with pytest.raises(FramingError, match=r"^message has no cookie$"):
        split_cookie(data)


def test_split_cookie_keeps_non_utf8_cookie_bytes() -> None:
    cookie, _ = split_cookie(b"\xff\x01 de")
    assert encode_reply(cookie, {"result": "pong"}, False) == b"\xff\x01 d6:result4:ponge"


def test_encode_reply_exact_bytes() -> None:
    reply = {"result": "error", "error-reason": "Unknown call-id"}
    assert encode_reply("7_3", reply, False) == (
        b"7_3 d6:result5:error12:error-reason15:Unknown call-ide"
    )
    assert encode_reply("7_3", {"result": "pong"}, True) == b'7_3 {"result": "pong"}'


# --- body decoding -------------------------------------------------------------


def test_decode_body_bencode_and_json() -> None:
    assert decode_body(b"d7:command4:pinge") == ({"command": "ping"}, False)
    assert decode_body(b'{"command": "ping"}') == ({"command": "ping"}, True)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "Invalid data (no payload)"),
        (b"d7:command4:ping", "Could not decode bencode dictionary"),
        (b"d7:command4:pingexx", "Could not decode bencode dictionary"),
        (b"di1ei2ee", "Could not decode bencode dictionary"),
        (b"d" + b"l" * 50 + b"e" * 50 + b"e", "Could not decode bencode dictionary"),
        (b"{", "Failed to parse JSON document"),
        (b'{"command": "ping"', "Failed to parse JSON document"),
        (b'{"command": "\xff"}', "Failed to parse JSON document"),
        (b"{}[]", "Failed to parse JSON document"),
        (b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}", "Failed to parse JSON document"),
        (b"l4:pinge", "Invalid NG data format"),
        (b"i1e", "Invalid NG data format"),
        (b"[]", "Invalid NG data format"),
        (b" d7:command4:pinge", "Invalid NG data format"),
        (b"ping", "Invalid NG data format"),
    ],
)
def test_decode_body_errors(body: bytes, reason: str) -> None:
    assert _ng_error(body) == reason


# --- parse_request -------------------------------------------------------------


def test_missing_command() -> None:
    assert _ng_error({"call-id": "x"}) == 'Dictionary contains no key "command"'
    assert _ng_error({}) == 'Dictionary contains no key "command"'


@pytest.mark.parametrize("key", ["call-id", "call id", "call_id", "Call-ID", " call-id "])
def test_key_spellings_fold(key: str) -> None:
    assert parse_request({"command": "query", key: "abc@host"}).call_id == "abc@host"


def test_normalise() -> None:
    assert normalise(" Transport Protocol ") == "transport-protocol"
    assert normalise("received_from") == "received-from"
    assert normalise("SDES-off") == "sdes-off"


def test_real_kamailio_offer() -> None:
    raw = next(m for m in _requests("basic.jsonl") if m["command"] == "offer")
    req = parse_request(raw)
    assert req.command == "offer"
    assert req.call_id == "1-28964@127.0.0.10"
    assert req.from_tag == "28964UAC1"
    assert req.to_tag == ""
    assert req.sdp == raw["sdp"]
    assert req.flags == {"trust-address"}
    assert req.replace == {"origin", "session-connection"}
    assert req.received_from == ("IP4", "127.0.0.10")
    assert req.supports == {"load-limit"}
    assert req.unknown == []


def test_real_kamailio_ice_remove_offer() -> None:
    raw = next(m for m in _requests("ice.jsonl") if m["command"] == "offer")
    req = parse_request(raw)
    assert req.ice == "remove"
    assert req.transport_protocol == "RTP/AVP"
    assert req.unknown == []


def test_every_captured_kamailio_request_parses_without_unknowns() -> None:
    for name in ("basic.jsonl", "ice.jsonl", "record.jsonl"):
        for raw in _requests(name):
            req = parse_request(raw)
            assert req.unknown == [], (name, raw["command"])
            assert req.command == raw["command"]


def test_space_and_underscore_spellings_of_keys() -> None:
    req = parse_request(
        {
            "command": "offer",
            "transport protocol": "RTP/SAVPF",
            "received from": ["ip6", "2001:db8::1"],
            "address family": "ip6",
            "media address": "192.0.2.5",
            "delete delay": "5",
            "from_tag": "A",
            "to tag": "B",
            "via-branch": "z9hG4bK1",
        }
    )
    assert req.transport_protocol == "RTP/SAVPF"
    assert req.received_from == ("IP6", "2001:db8::1")
    assert req.address_family == "IP6"
    assert req.media_address == "192.0.2.5"
    assert req.delete_delay == 5
    assert (req.from_tag, req.to_tag, req.via_branch) == ("A", "B", "z9hG4bK1")
    assert req.unknown == []


def _flags(*words: str) -> Request:
    return parse_request({"command": "offer", "flags": list(words)})


def test_bare_flags() -> None:
    req = _flags("trust-address", "trust address", "strict_source", "loop-protect")
    assert req.flags == {"trust-address", "strict-source", "loop-protect"}
    assert req.has("trust-address")
    assert req.unknown == []


def test_prefixed_flags_become_lists() -> None:
    req = _flags("replace-origin", "replace-session-connection", "SDES-off", "rtcp-mux-demux")
    assert req.replace == {"origin", "session-connection"}
    assert req.sdes == {"off"}
    assert req.rtcp_mux == {"demux"}
    assert req.flags == set()
    assert req.unknown == []


def test_codec_flags_keep_codec_case() -> None:
    req = _flags("codec-strip-PCMA", "codec-strip=G722,PCMU", "codec-mask-opus", "transcode-PCMU")
    assert req.codec == {"strip": ["PCMA", "G722", "PCMU"], "mask": ["opus"], "transcode": ["PCMU"]}
    assert req.unknown == []


def test_key_value_flags() -> None:
    req = _flags("ICE=remove", "DTLS=passive", "TOS=184", "delete-delay=0", "label=caller")
    assert (req.ice, req.dtls, req.tos, req.delete_delay, req.label) == (
        "remove",
        "passive",
        184,
        0,
        "caller",
    )
    assert req.unknown == []


def test_id_overrides_in_flags() -> None:
    req = parse_request(
        {"command": "offer", "call-id": "a", "flags": ["call-id=b", "to-tag=T", "from-tag=F"]}
    )
    assert (req.call_id, req.to_tag, req.from_tag) == ("b", "T", "F")


@pytest.mark.parametrize(
    ("word", "protocol"),
    [
        ("RTP/AVP", "RTP/AVP"),
        ("rtp/savpf", "RTP/SAVPF"),
        ("UDP/TLS/RTP/SAVPF", "UDP/TLS/RTP/SAVPF"),
        ("transport-protocol=RTP/SAVP", "RTP/SAVP"),
    ],
)
def test_transport_protocol_flags(word: str, protocol: str) -> None:
    req = _flags(word)
    assert req.transport_protocol == protocol
    assert req.unknown == []


def test_kamailio_wire_form_of_address_family_and_direction() -> None:
    # Kamailio's module turns "address-family=IP6 direction=pub direction=priv"
    # into these keys before sending
    req = parse_request(
        {"command": "offer", "address family": "IP6", "direction": ["pub", "priv"], "TOS": 184}
    )
    assert req.address_family == "IP6"
    assert req.direction == ["pub", "priv"]
    assert req.tos == 184
    assert req.unknown == []


def test_key_value_words_rtpengine_10_5_ignores_in_flags() -> None:
    # inside the flags list rtpengine 10.5 does not act on these: logged, not applied
    req = _flags("address-family=IP6", "direction=pub", "media-address=192.0.2.1")
    assert (req.address_family, req.direction, req.media_address) == ("", [], "")
    assert req.unknown == ["address-family=IP6", "direction=pub", "media-address=192.0.2.1"]


def test_rtpp_flags_string_is_split_into_words() -> None:
    req = parse_request(
        {
            "command": "offer",
            "rtpp-flags": "trust-address replace-origin  SDES-off ICE=force "
            "codec-strip-PCMA RTP/AVP",
        }
    )
    assert req.flags == {"trust-address"}
    assert req.replace == {"origin"}
    assert req.sdes == {"off"}
    assert req.ice == "force"
    assert req.codec == {"strip": ["PCMA"]}
    assert req.transport_protocol == "RTP/AVP"
    assert req.unknown == []
    assert parse_request({"command": "offer", "rtpp_flags": "trust-address"}).flags == {
        "trust-address"
    }


def test_list_keys_given_as_one_string_are_ignored_as_rtpengine_10_5_does() -> None:
    # rtpengine 10.5 reads flags, replace, rtcp-mux, SDES and codec operations only as
    # lists: the suite's ``SDES => 'off'`` leaves SDES on (t/auto-daemon-tests.pl, rtcp-mux
    # branched); logged as unknown so that an operator sees it
    req = parse_request(
        {
            "command": "offer",
            "flags": "symmetric  asymmetric",
            "replace": "origin",
            "rtcp-mux": "demux",
            "SDES": "off",
            "codec": {"strip": "PCMA"},
        }
    )
    assert (req.flags, req.replace, req.rtcp_mux, req.sdes) == (set(), set(), set(), set())
    assert not any(req.codec.values())
    assert req.unknown == [
        "flags=symmetric  asymmetric",
        "replace=origin",
        "rtcp-mux=demux",
        "SDES=off",
        "codec.strip=PCMA",
    ]


def test_unknown_keys_and_flags_are_collected_never_raised() -> None:
    req = parse_request(
        {
            "command": "offer",
            "flags": ["no-such-flag", "TOS=abc", "TOS=²", "frobnicate=1"],
            "no such key": {"x": [1]},
            "ptime": "twenty",
            "limit": [1, 2],
        }
    )
    assert req.unknown == [
        "no-such-flag",
        "TOS=abc",
        "TOS=²",
        "frobnicate=1",
        "ptime=twenty",
        "limit=[1, 2]",
        "no-such-key",
    ]
    assert req.tos is None
    assert req.ptime == 0
    assert req.limit is None
    # unknown bare words still land in flags, where nobody looks for them
    assert "no-such-flag" in req.flags


def test_sip_source_and_record_call_flags() -> None:
    req = _flags("SIP-source-address", "record-call")
    assert req.has("sip-source-address")
    assert req.record_call == "yes"
    assert parse_request({"command": "offer", "record call": "Yes"}).record_call == "yes"


def test_integers_from_strings_and_ints() -> None:
    req = parse_request({"command": "list", "limit": " 32 ", "ptime": 20, "TOS": "-1"})
    assert (req.limit, req.ptime, req.tos) == (32, 20, -1)


def test_nested_transport_protocol_does_not_recurse() -> None:
    word = "protocol=" * 5000 + "RTP/AVP"
    req = _flags(word)
    assert req.transport_protocol == ""
    assert req.unknown == ["transport-protocol=" + word.partition("=")[2]]


def test_bencode_request_end_to_end() -> None:
    wire = b"d3:sdp3:v=05:flagsl13:trust-addresse7:call-id1:c7:command5:offere"
    raw, as_json = decode_body(wire)
    assert not as_json
    req = parse_request(raw)
    assert (req.command, req.call_id, req.sdp, req.flags) == (
        "offer",
        "c",
        "v=0",
        {"trust-address"},
    )
    assert bencode.encode(raw) == wire


@pytest.mark.parametrize(
    "request_keys",
    [
        {"endpoint-learning": "Heuristic"},
        {"endpoint learning": "heuristic"},
        {"flags": ["endpoint-learning=heuristic"]},
    ],
)
def test_endpoint_learning_names_a_mode(request_keys: dict[str, Any]) -> None:
    req = parse_request({"command": "offer", **request_keys})
    assert req.endpoint_learning == "heuristic"
    assert req.unknown == []


def test_unknown_endpoint_learning_is_reported_and_ignored() -> None:
    req = parse_request({"command": "offer", "endpoint-learning": "sometimes"})
    assert req.endpoint_learning is None  # the configured mode applies
    assert req.unknown == ["endpoint-learning=sometimes"]
    req = parse_request({"command": "offer", "flags": ["endpoint-learning=never"]})
    assert req.endpoint_learning is None
    assert req.unknown == ["endpoint-learning=never"]


def test_plain_keys_need_nothing_more() -> None:
    """parse_request reads a request of only these keys without its second part: each is a
    known key (never logged as unknown) and none is a command's value (``Request.values``)."""
    assert message._PLAIN_KEYS <= message._KNOWN_KEYS
    assert not message._PLAIN_KEYS & message.VALUE_KEYS
