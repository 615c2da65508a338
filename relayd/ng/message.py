"""ng framing (``cookie SP dict``) and the typed view of a request's keys.

rtpengine accepts most keys and flags in several spellings (``trust address``,
``trust-address``, ``trust_address``) and ignores what it does not know; so do
we: :func:`normalise` folds spellings, :class:`Request` exposes what relayd
acts on, and ``unknown`` lists the rest for a warning log line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from relayd.ipc import Learning, learning_mode
from relayd.ng import bencode

__all__ = [
    "FramingError",
    "MediaEcho",
    "NgError",
    "Request",
    "decode_body",
    "encode_reply",
    "normalise",
    "parse_request",
    "split_cookie",
]


# ``media-echo``: which party's media comes straight back to it (rtpengine's spellings
# folded by _MEDIA_ECHO); what each mode does to the call is relayd.calls.parties'.
MediaEcho = Literal["forward", "backward", "both", "blackhole"]
_MEDIA_ECHO: dict[str, MediaEcho] = {
    "forward": "forward",
    "fwd": "forward",
    "fw": "forward",
    "backward": "backward",
    "backwards": "backward",
    "reverse": "backward",
    "back": "backward",
    "bkw": "backward",
    "bk": "backward",
    "both": "both",
    "blackhole": "blackhole",
    "sinkhole": "blackhole",
}


class FramingError(ValueError):
    """No cookie: the datagram is dropped without a reply, as rtpengine does."""


class NgError(Exception):
    """A request that fails; ``reason`` becomes the reply's ``error-reason`` verbatim."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def split_cookie(data: bytes) -> tuple[str, bytes]:
    cookie, space, body = data.partition(b" ")
    if not space or not cookie:
        raise FramingError("message has no cookie")
    return cookie.decode("utf-8", "surrogateescape"), body


def decode_body(body: bytes) -> tuple[dict[str, Any], bool]:
    """Return the request dictionary and whether it came as JSON."""
    if not body:
        raise NgError("Invalid data (no payload)")
    if body[:1] == b"{":
        try:
            value = json.loads(body)
        except (ValueError, RecursionError):  # RecursionError: nesting deeper than the stack
            raise NgError("Failed to parse JSON document") from None
        if not isinstance(value, dict):
            raise NgError("Failed to parse JSON document")
        return value, True
    if body[:1] != b"d":
        raise NgError("Invalid NG data format")
    try:
        value = bencode.decode(body)
    except bencode.BencodeError:
        raise NgError("Could not decode bencode dictionary") from None
    if not isinstance(value, dict):
        raise NgError("Could not decode bencode dictionary")
    return value, False


def encode_reply(cookie: str, reply: dict[str, Any], as_json: bool) -> bytes:
    body = json.dumps(reply, default=_json_value).encode() if as_json else bencode.encode(reply)
    return cookie.encode("utf-8", "surrogateescape") + b" " + body


def _json_value(value: object) -> Any:
    """A reply part written as bencode already (:class:`bencode.Encoded`), for a JSON reply."""
    if isinstance(value, bencode.Encoded):
        return dict(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def normalise(word: str) -> str:
    """Fold rtpengine's spelling variants: case, space, underscore and hyphen."""
    known = _NORMALISED.get(word)
    if known is not None:
        return known
    folded = word.strip().lower().replace(" ", "-").replace("_", "-")
    if len(_NORMALISED) < _NORMALISED_LIMIT:
        _NORMALISED[word] = folded
    return folded


# Every request spells the same few keys and flags: each spelling is folded once.
# Bounded, since a client may send anything.
_NORMALISED: dict[str, str] = {}
_NORMALISED_LIMIT = 2048


def _text(value: Any) -> str:
    if type(value) is str:  # nearly every value: no conversion
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return str(value)


def _int(text: str) -> int | None:
    """An ASCII decimal integer, or None: ``str.isdigit`` admits "²", which ``int`` refuses."""
    digits = text[1:] if text.startswith("-") else text
    if not (digits.isascii() and digits.isdigit()) or len(digits) > 18:
        return None
    return int(text)


# isinstance with a tuple, not a union (``list | tuple``), which is built anew at each call
_SEQUENCES = (list, tuple)
_STRINGS = (bytes, str)


def _words(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, _SEQUENCES):
        return [_text(v) for v in value]
    return [w for w in _text(value).split() if w]


def _list(req: Request, key: str, value: Any) -> list[str]:
    """The items of a list-valued key (``flags``, ``replace``, ``rtcp-mux``, ``SDES``, a
    ``codec`` operation). rtpengine 10.5 reads these only as lists: a plain string there
    (``SDES: "off"``) is ignored, not split, so it is logged as unknown and changes nothing."""
    if value is None:
        return []
    if isinstance(value, _SEQUENCES):
        return [_text(v) for v in value]
    req.unknown.append(f"{key}={_text(value)}")
    return []


# The keys of the DTMF and media-player commands, kept as sent in ``Request.values``.
VALUE_KEYS = frozenset(
    [
        "code",
        "digit",
        "duration",
        "volume",
        "pause",
        "file",
        "blob",
        "blob64",
        "db-id",
        "repeat-times",
        "start-pos",
        "dtmf-security",
        "dtmf-security-trigger",
        "dtmf-security-trigger-end",
        "trigger",
        "trigger-end",
        "trigger-end-time",
        "trigger-end-digits",
        "end-trigger",
        "end-trigger-time",
        "end-trigger-digits",
        "dtmf-delay",
        "delay-buffer",
        "frequency",
        "frequencies",
        "to-label",
    ]
)

# Dictionary keys relayd reads (normalised); everything else is logged as unknown.
_KNOWN_KEYS = VALUE_KEYS | frozenset(
    [
        "command",
        "call-id",
        "from-tag",
        "to-tag",
        "via-branch",
        "sdp",
        "flags",
        "replace",
        "direction",
        "rtcp-mux",
        "ice",
        "ice-lite",
        "dtls",
        "dtls-reverse",
        "sdes",
        "osrtp",
        "transport-protocol",
        "address-family",
        "media-address",
        "received-from",
        "codec",
        "ptime",
        "ptime-reverse",
        "tos",
        "record-call",
        "metadata",
        "recording-file",
        "recording-dir",
        "recording-path",
        "recording-pattern",
        "output-destination",
        "label",
        "supports",
        "sip-message-type",
        "sip-code",
        "delete-delay",
        "rtpp-flags",
        "endpoint-learning",
        "limit",
        "dtls-fingerprint",
        "t.38",
        "drop-traffic",
        "xmlrpc-callback",
        "template",
        "media-echo",
        "all",
        "interface",
        "sdp-attr",
        "sdp-media-remove",
        "address",
    ]
)

# Words in ``flags`` (normalised) that relayd acts on or that are harmless no-ops.
KNOWN_FLAGS = frozenset(
    [
        "trust-address",
        "sip-source-address",
        "symmetric",
        "asymmetric",
        "strict-source",
        "media-handover",
        "loop-protect",
        "port-latching",
        "no-port-latching",
        "no-rtcp-attribute",
        "full-rtcp-attribute",
        "original-sendrecv",
        "record-call",
        "fatal",
        "fast",
        "to-tag",
        "directional",
        "reset",
        "all",
        "unidirectional",
        "allow-transcoding",
        "single-codec",
        "reuse-codecs",
        "static-codecs",
        "always-transcode",
        "allow-no-codec-media",
        "allow-asymmetric-codecs",
        "no-codec-renegotiation",
        "pad-crypto",
        "generate-mid",
        "strip-extmap",
        "new-branch",
        "inactive",
        "debug",
        "inject-dtmf",
        "no-redis-update",
        "discard-recording",
        "pause",
        "force-answer",
        "generate-rtcp",
        "siprec",
        "allow-sdes-passthrough",
        "passthrough",
        "trickle-ice",
        "ice-reject",
        "reject-ice",
    ]
)

_PREFIX_LISTS = {
    "replace-": "replace",
    "rtcp-mux-": "rtcp-mux",
    "sdes-": "sdes",
    "osrtp-": "osrtp",
}
_CODEC_PREFIXES = {
    "codec-strip-": "strip",
    "codec-offer-": "offer",
    "codec-mask-": "mask",
    "codec-except-": "except",
    "codec-accept-": "accept",
    "codec-consume-": "consume",
    "codec-ignore-": "ignore",
    "codec-set-": "set",
    "codec-transcode-": "transcode",
    "transcode-": "transcode",
}
_PROTOCOLS = {
    "rtp/avp": "RTP/AVP",
    "rtp/avpf": "RTP/AVPF",
    "rtp/savp": "RTP/SAVP",
    "rtp/savpf": "RTP/SAVPF",
    "udp/tls/rtp/savp": "UDP/TLS/RTP/SAVP",
    "udp/tls/rtp/savpf": "UDP/TLS/RTP/SAVPF",
}


@dataclass(slots=True)
class Request:
    """The keys of one ng request that relayd uses, in domain words."""

    command: str
    call_id: str = ""
    from_tag: str = ""
    to_tag: str = ""
    via_branch: str = ""
    sdp: str | None = None
    flags: set[str] = field(default_factory=set)
    replace: set[str] = field(default_factory=set)
    direction: list[str] = field(default_factory=list)
    rtcp_mux: set[str] = field(default_factory=set)
    sdes: set[str] = field(default_factory=set)
    osrtp: set[str] = field(default_factory=set)  # "offer", "accept" (RFC 8643)
    ice: str = ""
    ice_lite: str = ""  # "", "off", "forward", "backward" or "both" (``ICE-lite``)
    dtls: str = ""
    dtls_reverse: str = ""  # "passive" or "active": our role towards an actpass offerer
    dtls_fingerprint: str = ""  # the hash of the fingerprint we offer ("sha-1", …)
    transport_protocol: str = ""
    protocol_accept: bool = False  # transport-protocol=accept: answer with the answerer's
    address_family: str = ""
    media_address: str = ""
    received_from: tuple[str, str] | None = None
    codec: dict[str, list[str]] = field(default_factory=dict)
    ptime: int = 0  # the packet time towards the offer's receiver (transcoding)
    ptime_reverse: int = 0  # the packet time back towards the offerer (transcoding)
    tos: int | None = None
    delete_delay: int | None = None
    record_call: str = ""
    metadata: str | None = None  # free text for the recording's metadata file
    recording_dir: str = ""  # start recording: where this call's files go
    recording_file: str = ""  # start recording: the pcap's own path
    recording_pattern: str = ""  # start recording: its name, call-id and tag substituted
    label: str = ""
    endpoint_learning: Learning | None = None  # the ng key or flag, when it names a mode
    supports: set[str] = field(default_factory=set)
    limit: int | None = None
    media_echo: MediaEcho | None = None  # the ``media-echo`` key, when it names a mode
    address: str = ""  # block/silence media: the party whose SDP address this is
    # the values of the DTMF and media-player commands (``code``, ``duration``, ``blob``,
    # ``DTMF-security``, …: VALUE_KEYS), by normalised name, as the request sent them: each
    # command reads them as rtpengine 10.5 does (relayd/calls/dtmf_play.py and its siblings)
    values: dict[str, Any] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)

    def has(self, flag: str) -> bool:
        return flag in self.flags


# The keys that name a call and carry its SDP must be strings (bencode byte strings,
# JSON strings). rtpengine reads one of another type (an integer, a list, a
# dictionary) as absent, so a required one fails with the error below and an optional
# one is dropped: an offer with a list for its to-tag creates the call, a delete with a
# dictionary for its from-tag deletes the whole call. relayd refuses every one of
# them with rtpengine's error for the missing key, before anything is created.
_IDENTITY_KEYS = {
    "call-id": "No call-id in message",
    "from-tag": "No from-tag in message",
    "to-tag": "No to-tag in message",
    "sdp": "No SDP body in message",
}


def parse_request(raw: dict[str, Any]) -> Request:
    """Map a decoded ng dictionary onto :class:`Request`.

    Refuses only a missing command and a call-id, from-tag, to-tag or sdp that is not a
    string; unknown keys and flags are kept in ``unknown`` for the log.
    """
    folded = _NORMALISED.get
    keys = {folded(k) or normalise(k): v for k, v in raw.items()}
    if not isinstance(keys.get("command"), _STRINGS):
        raise NgError('Dictionary contains no key "command"')
    for key, missing in _IDENTITY_KEYS.items():
        if key in keys and not isinstance(keys[key], _STRINGS):
            raise NgError(missing)
    req = Request(command=_text(keys["command"]))
    req.call_id = _text(keys.get("call-id", ""))
    req.from_tag = _text(keys.get("from-tag", ""))
    req.to_tag = _text(keys.get("to-tag", ""))
    req.via_branch = _text(keys.get("via-branch", ""))
    if "sdp" in keys:
        req.sdp = _text(keys["sdp"])
    for word in _list(req, "flags", keys.get("flags")):
        _apply_flag(req, word)
    if "rtpp-flags" in keys:
        for word in _words(keys["rtpp-flags"]):
            _apply_flag(req, word)
    for key, name, attr in _LIST_KEYS:
        if key in keys:
            words = [folded(w) or normalise(w) for w in _list(req, name, keys[key])]
            getattr(req, attr).update(words)
    if "direction" in keys:
        req.direction = _words(keys["direction"])
    received = _words(keys.get("received-from"))
    if len(received) == 2:
        req.received_from = (received[0].upper(), received[1])
    if "supports" in keys:
        req.supports = {folded(w) or normalise(w) for w in _words(keys["supports"])}
    if not keys.keys() <= _PLAIN_KEYS:
        _other_keys(req, keys)
    return req


# the list-valued keys whose items are words (normalised): key, name in the log, attribute
_LIST_KEYS = (
    ("replace", "replace", "replace"),
    ("rtcp-mux", "rtcp-mux", "rtcp_mux"),
    ("sdes", "SDES", "sdes"),
    ("osrtp", "OSRTP", "osrtp"),
)


# The keys read above, and those relayd knows and ignores: a request with no other key
# (an offer, answer or delete as Kamailio and OpenSIPS send them) is read in full there.
_PLAIN_KEYS = frozenset(
    [
        *_IDENTITY_KEYS,
        "command",
        "via-branch",
        "flags",
        "rtpp-flags",
        "replace",
        "rtcp-mux",
        "sdes",
        "osrtp",
        "direction",
        "received-from",
        "supports",
        "sip-message-type",
        "sip-code",
        "output-destination",
        "t.38",
        "drop-traffic",
        "xmlrpc-callback",
        "template",
        "interface",
        "sdp-attr",
        "sdp-media-remove",
    ]
)


def _other_keys(req: Request, keys: dict[str, Any]) -> None:
    """The rest of :func:`parse_request`: the less common keys, in the order they apply
    (a key after a flag of the same name overrides it), and the unknown ones."""
    for key, attr in (("ice", "ice"), ("dtls", "dtls"), ("dtls-reverse", "dtls_reverse")):
        if key in keys:
            setattr(req, attr, normalise(_text(keys[key])))
    if "dtls-fingerprint" in keys:
        req.dtls_fingerprint = _text(keys["dtls-fingerprint"]).strip().lower()
    if "ice-lite" in keys:
        _set_ice_lite(req, _text(keys["ice-lite"]))
    if "endpoint-learning" in keys:
        _set_learning(req, _text(keys["endpoint-learning"]))
    if "transport-protocol" in keys:
        _apply_protocol(req, _text(keys["transport-protocol"]))
    if "address-family" in keys:
        req.address_family = _text(keys["address-family"]).upper()
    if "media-address" in keys:
        req.media_address = _text(keys["media-address"])
    codec = keys.get("codec")
    if isinstance(codec, dict):
        for op, names in codec.items():
            req.codec.setdefault(normalise(op), []).extend(_list(req, f"codec.{_text(op)}", names))
    for key, attr in (
        ("ptime", "ptime"),
        ("ptime-reverse", "ptime_reverse"),
        ("tos", "tos"),
        ("delete-delay", "delete_delay"),
        ("limit", "limit"),
    ):
        if key in keys:
            number = _int(_text(keys[key]).strip())
            if number is None:
                req.unknown.append(f"{key}={_text(keys[key])}")
            else:
                setattr(req, attr, number)
    if "record-call" in keys:
        req.record_call = normalise(_text(keys["record-call"]))
    if "metadata" in keys:
        req.metadata = _text(keys["metadata"])
    for key, attr in (
        ("recording-dir", "recording_dir"),
        ("recording-path", "recording_dir"),
        ("recording-file", "recording_file"),
        ("recording-pattern", "recording_pattern"),
    ):
        if key in keys:
            setattr(req, attr, _text(keys[key]))
    if "address" in keys:
        req.address = _text(keys["address"])
    if "all" in keys:  # rtpengine 11 spells the flag as a key: "all": "all"
        req.flags.add("all")
    if "label" in keys:  # else keep a ``label=`` flag
        req.label = _text(keys["label"])
    if "media-echo" in keys:
        echo = _MEDIA_ECHO.get(normalise(_text(keys["media-echo"])))
        if echo is None:
            req.unknown.append(f"media-echo={_text(keys['media-echo'])}")
        req.media_echo = echo
    req.values = {k: v for k, v in keys.items() if k in VALUE_KEYS}
    req.unknown.extend(k for k in keys if k not in _KNOWN_KEYS)


def _apply_flag(req: Request, word: str) -> None:
    """One word of ``flags`` or ``rtpp-flags``, in the forms Kamailio's module emits."""
    name, eq, value = word.partition("=")
    lowered = normalise(name)
    if eq:
        if lowered in ("ice", "dtls", "dtls-reverse"):
            setattr(req, lowered.replace("-", "_"), normalise(value))
        elif lowered == "dtls-fingerprint":
            req.dtls_fingerprint = value.strip().lower()
        elif lowered == "ice-lite":
            _set_ice_lite(req, value)
        elif lowered == "endpoint-learning":
            _set_learning(req, value)
        elif lowered == "record-call":
            req.record_call = normalise(value)
        elif lowered in ("tos", "delete-delay", "ptime", "ptime-reverse"):
            number = _int(value)
            if number is None:
                req.unknown.append(word)
            else:
                setattr(req, lowered.replace("-", "_"), number)
        elif lowered == "metadata":
            req.metadata = value
        elif lowered in ("via-branch", "from-tag", "to-tag", "call-id", "label"):
            setattr(req, lowered.replace("-", "_"), value)
        elif lowered.startswith("codec-") and lowered[6:] in _CODEC_OPS:
            req.codec.setdefault(lowered[6:], []).extend(value.split(","))
        elif lowered in ("transport-protocol", "protocol"):
            _apply_protocol(req, value)
        else:
            req.unknown.append(word)
        return
    if lowered in _PLAIN_FLAGS:
        _plain_flag(req, word, lowered)
        return
    if lowered in _PROTOCOLS:
        req.transport_protocol = _PROTOCOLS[lowered]
        return
    for prefix, op in _CODEC_PREFIXES.items():
        if lowered.startswith(prefix):
            # codec names keep their case: "codec-strip-PCMA"
            req.codec.setdefault(op, []).append(word[len(prefix) :])
            return
    for prefix, attr in _PREFIX_LISTS.items():
        if lowered.startswith(prefix) and lowered != "rtcp-mux":
            getattr(req, attr.replace("-", "_")).add(lowered[len(prefix) :])
            return
    if len(_PLAIN_FLAGS) < _PLAIN_FLAGS_LIMIT:
        _PLAIN_FLAGS.add(lowered)
    _plain_flag(req, word, lowered)


# Flags seen to be plain words (no protocol, codec or list prefix): the same few come
# with every request. Bounded, since a client may send anything.
_PLAIN_FLAGS: set[str] = set()
_PLAIN_FLAGS_LIMIT = 1024


def _plain_flag(req: Request, word: str, lowered: str) -> None:
    if lowered == "sip-source-address" or lowered == "sip-source":
        req.flags.add("sip-source-address")
    elif lowered in ("record-call",):
        req.record_call = "yes"
    elif lowered not in KNOWN_FLAGS:
        req.unknown.append(word)
    req.flags.add(lowered)


def _apply_protocol(req: Request, value: str) -> None:
    """``transport-protocol``'s value, read as one flag word; ``accept`` (answers only)
    answers the offerer with the protocol the answerer chose.

    A value that is itself ``key=value`` is not followed: ``protocol=protocol=…``
    would otherwise recurse once per level, as deep as the sender likes.
    """
    if value.strip() == "accept":
        req.protocol_accept = True
    elif "=" in value:
        req.unknown.append(f"transport-protocol={value}")
    else:
        _apply_flag(req, value)


_CODEC_OPS = frozenset(
    ["strip", "offer", "mask", "except", "accept", "consume", "ignore", "set", "transcode"]
)


# rtpengine's spellings of the ``ICE-lite`` values
_ICE_LITE = {
    "off": "off",
    "none": "off",
    "no": "off",
    "forward": "forward",
    "offer": "forward",
    "fwd": "forward",
    "fw": "forward",
    "backward": "backward",
    "backwards": "backward",
    "reverse": "backward",
    "answer": "backward",
    "back": "backward",
    "bkw": "backward",
    "bk": "backward",
    "both": "both",
}


def _set_ice_lite(req: Request, value: str) -> None:
    """``ICE-lite``: towards whom relayd says ``a=ice-lite``; an unknown value is logged and
    ignored, as rtpengine does."""
    mode = _ICE_LITE.get(normalise(value))
    if mode is None:
        req.unknown.append(f"ICE-lite={value}")
    else:
        req.ice_lite = mode


def _set_learning(req: Request, value: str) -> None:
    """``endpoint-learning``: a mode the workers know, else logged as unknown and ignored
    (the configured mode applies), as rtpengine does."""
    mode = learning_mode(normalise(value))
    if mode is None:
        req.unknown.append(f"endpoint-learning={value}")
    else:
        req.endpoint_learning = mode
