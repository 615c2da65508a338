"""Supervisor ↔ worker messages: typed values and their wire codec (pure, no I/O).

The transport is a Unix SOCK_SEQPACKET socket, so a packet needs no length
prefix; sockets travel as SCM_RIGHTS file descriptors attached to the packet of
the message that introduces them (``SocketSpec.fd_index``: among that packet's
descriptors). The body is compact JSON: control traffic is a few messages per
call, not per packet. relayd may put several messages for a worker in one packet,
a JSON array of them (:func:`join`, :func:`decode_all`), applied in order: what
waits to be sent goes with the next message, one system call and one wake-up of
the worker instead of one each.

Rules:

* The supervisor binds every media socket and hands it to the worker that owns
  its port slice, closing its own copy once the descriptor is sent: each socket
  has one holder (relayd/plane/sockets.py). A worker keeps a socket until
  ``Close`` names it, whatever its forwards say, and closes it then (the port is
  given back). A worker that dies takes its sockets with it; the supervisor binds
  the same ports again and the replacement gets them. Sockets arrive non-blocking
  (O_NONBLOCK belongs to the open file, so every copy has it): a worker sets
  nothing on them before polling them.
* ``Forward`` replaces the whole forwarding state of one media section of a
  call (both parties, RTP and RTCP); ``Drop`` removes it. Sockets a forward no
  longer names, or a dropped section's, are kept idle (not read) for a later
  forward, or until their ``Close``.
* ``Discard`` drops what waits unread on sockets the worker holds and does not
  read (send-only or idle ones), as relayd does on those it holds itself.
* Workers send ``Stats`` once a second with the counters of every socket that
  saw traffic, plus learned endpoints.
* With ``Configure.rtcp_capture`` (Homer, ``log-facility-rtcp``), workers also
  send ``Rtcp`` once a second: copies of the RTCP datagrams they relayed, at
  most ``RTCP_SAMPLE_LIMIT`` a second (RTCP comes every few seconds per stream,
  so this is every packet on all but the busiest workers).
* With ``Configure.dtmf_events`` (``dtmf-log-dest``, ``log-facility-dtmf``), workers send a
  ``Dtmf`` for each DTMF digit that ends in what they relay (relayd/worker/dtmf.py): RFC 4733
  event packets of the payload types ``SocketSpec.dtmf`` names, and the tones the media
  engine hears in decoded audio. A digit is one message, sent when its end is seen.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal, get_args

__all__ = [
    "LEARNING",
    "LEARNING_DELAY",
    "Close",
    "Configure",
    "Discard",
    "Drop",
    "Dtmf",
    "DtmfInjected",
    "Forward",
    "Hello",
    "InjectDtmf",
    "IpcError",
    "Learning",
    "Message",
    "Play",
    "PlayDone",
    "PlayStop",
    "RecordFailed",
    "RecordPause",
    "RecordSdp",
    "RecordStart",
    "RecordStop",
    "Rtcp",
    "RtcpPacket",
    "Shutdown",
    "SocketSpec",
    "SocketStats",
    "Stats",
    "decode",
    "decode_all",
    "encode",
    "encode_forward",
    "join",
    "learning_mode",
    "learning_window",
    "parse_key",
    "signalled_at",
    "socket_key",
]

# Endpoint learning (rtpengine's ng ``endpoint-learning``, relayd/worker/session.py has
# the rules): what the workers do with the first packets of a party.
Learning = Literal["delayed", "immediate", "heuristic", "off"]
LEARNING: tuple[Learning, ...] = get_args(Learning)


LEARNING_DELAY = 3.0
"""Seconds after a signalling event from which ``delayed`` and ``heuristic`` learning confirm
an endpoint (rtpengine's three seconds)."""


def learning_window(learning: Learning, signalled: float) -> float:
    """A socket's ``learn_after`` for signalling at ``signalled`` (CLOCK_MONOTONIC)."""
    return signalled + (LEARNING_DELAY if learning in ("delayed", "heuristic") else 0.0)


def signalled_at(learning: Learning, learn_after: float) -> float:
    """The inverse of :func:`learning_window`: when the signalling was."""
    return learn_after - (LEARNING_DELAY if learning in ("delayed", "heuristic") else 0.0)


def learning_mode(text: str) -> Learning | None:
    """``text`` as a learning mode, or None when it names none."""
    for mode in LEARNING:
        if mode == text:
            return mode
    return None


# Sockets and endpoints travel as "address port" text: the keys of a worker's sockets,
# learned endpoints, RTCP sources (an IPv6 address has no space, so the last one splits).
def socket_key(address: str, port: int) -> str:
    return f"{address} {port}"


def parse_key(text: str) -> tuple[str, int] | None:
    """A socket key, or an endpoint as the IPC messages write it (``"address port"``),
    back to its parts; None if ``text`` is not one."""
    host, _, port = text.rpartition(" ")
    return (host, int(port)) if host and port.isdigit() else None


MAX_MESSAGE = 1 << 20
RTCP_SAMPLE_LIMIT = 256  # RTCP copies per worker per report


class IpcError(ValueError):
    """A message that does not decode: the reader logs it and drops it (and its descriptors)."""


@dataclass(slots=True)
class SocketSpec:
    """One relay socket of one party and where its packets go.

    ``key`` is ``"address port"`` of the local socket. ``out`` is the key of the
    socket that sends this socket's packets onwards (the other party's socket for
    the same component); ``out_rtcp`` the one for RTCP arriving here under rtcp-mux.
    ``expect`` is the party's own address from its SDP (``"address port"``, empty
    if unknown): where media to this party goes until a source is learned.
    """

    key: str
    fd_index: int = -1  # index into this message's file descriptors, -1: socket already known
    out: str = ""
    out_rtcp: str = ""
    expect: str = ""
    learning: Learning = "delayed"
    learn_after: float = 0.0  # CLOCK_MONOTONIC time from which delayed learning confirms
    asymmetric: bool = False
    strict: bool = False
    handover: bool = False
    rtcp: bool = False
    # an endpoint already confirmed (reported by an earlier worker): a new worker starts
    # from it, so a restart opens no window for another source to be learned
    learned: str = ""
    # the kernel forwards this socket's stream: what still arrives here (another
    # source) is dropped, since sending from a kernelized port would clash with its NAT
    kernel: bool = False
    # False: the worker only sends from this socket and leaves what arrives on it queued
    # (the offerer's side of an offer not answered yet: see relayd/plane/forwarding.py)
    listen: bool = True
    # ``block media``: what arrives is read, counted and dropped; ``silence media``: the RTP
    # payload of these payload types is overwritten with the byte given ("0=ff 8=d5")
    block: bool = False
    silence: str = ""
    # -- SRTP, DTLS-SRTP and ICE towards this party (all empty: plain RTP) -----------------
    # SDES key of the party's packets arriving here, as a=crypto carries it after the tag:
    # "AES_CM_128_HMAC_SHA1_80 inline:BASE64[|lifetime][|MKI:len] [session params]"
    srtp_in: str = ""
    # SDES key that protects what this socket sends to the party (same format)
    srtp_out: str = ""
    # our DTLS role towards the party on this socket: "", "active" or "passive"
    # (RFC 5763 §5); once the handshake completes its keys replace srtp_in/srtp_out
    dtls: str = ""
    dtls_fingerprint: str = ""  # the party's a=fingerprint: "sha-256 AB:CD:…"
    # ICE (RFC 8445): our ufrag/pwd on this socket, the party's ufrag and password, our
    # role towards it, whether we are an ICE-lite agent (we only answer checks), and the
    # party's candidates for this socket's component: "address port priority component",
    # separated by ";"
    ice_ufrag: str = ""
    ice_pwd: str = ""
    ice_remote_ufrag: str = ""
    ice_remote_pwd: str = ""
    ice_controlling: bool = False
    ice_lite: bool = False
    ice_candidates: str = ""
    # an extra ICE candidate of the same party and component on another local address:
    # it forwards like the socket it names, and once the party uses it (a nominated
    # check), what goes to the party leaves from it
    alias_of: str = ""
    # -- transcoding (relayd/transcode/plan.py): the codec plan of what arrives here, as
    # ``CodecPlan.to_text`` writes it; empty: no codec work, packets go on as they are
    codecs: str = ""
    # -- DTMF event reports (``Configure.dtmf_events``): the telephone-event payload types of
    # what arrives here and their clock rates, "101/8000 96/16000"; empty: none watched
    dtmf: str = ""


@dataclass(frozen=True, slots=True)
class Configure:
    """The first message to each worker process: its TOS, report interval, relayd's DTLS
    certificate, and whether to copy RTCP."""

    worker: int
    tos: int = 0
    stats_interval: float = 1.0
    # relayd's DTLS certificate and private key (PEM), the same for every worker
    certificate: str = ""
    private_key: str = ""
    rtcp_capture: bool = False  # copy relayed RTCP datagrams to relayd (``Rtcp``)
    # the recording spool (``recording-dir``, ``recording-format``): "" records nothing
    recording_dir: str = ""
    recording_format: str = "raw"
    recording_file_mode: int = 0o640
    # the nfnetlink_log group whose copies of kernel-forwarded packets this worker records
    # (relayd/nft/nflog.py), -1: none (recorded calls stay in userspace)
    nflog_group: int = -1
    dtmf_events: bool = False  # report the DTMF digits relayed (``Dtmf``)


@dataclass(frozen=True, slots=True)
class Forward:
    """The whole forwarding state of one media section: replaces what the worker had."""

    media: str  # "call-id index", one media section of a call
    sockets: tuple[SocketSpec, ...] = ()


@dataclass(frozen=True, slots=True)
class Drop:
    """The worker forgets a media section and closes its sockets."""

    media: str


@dataclass(frozen=True, slots=True)
class Close:
    """The worker closes these sockets (socket keys): their ports were given back."""

    keys: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Discard:
    """The worker drops the datagrams waiting on these sockets (socket keys), unread: those
    the kernel received before ``before`` (wall clock, as relayd decided; 0: all). What came
    after it, while the message was on its way, stays for the forward that follows."""

    keys: tuple[str, ...] = ()
    before: float = 0.0


@dataclass(frozen=True, slots=True)
class RecordStart:
    """The worker records this call from now on (relayd/worker/recording.py): what its
    sockets receive into the pcap, the SDPs ``RecordSdp`` brings into the metadata file.
    ``names`` are the files' (relayd.recording.spool.RecordingNames, in field order);
    ``medias`` the call's sections now (later ones are recorded as their forwards come);
    ``resume``: the files exist (the call came back to a new worker, or a restarted relayd):
    written on, not started anew."""

    call_id: str
    names: tuple[str, ...] = ()
    medias: tuple[str, ...] = ()
    started: float = 0.0  # when the call was created (wall clock): the metadata says so
    metadata: str = ""  # the call's ng metadata so far
    paused: bool = False
    resume: bool = False


@dataclass(frozen=True, slots=True)
class RecordSdp:
    """An SDP relayd sent while the call records: a block of the metadata file."""

    call_id: str
    mode: str  # "offer" or "answer"
    sdp: str
    started: float = 0.0  # when the sending party joined the call (wall clock)
    label: str = ""  # the sending party's ng label


@dataclass(frozen=True, slots=True)
class RecordPause:
    """``pause recording`` (no packets written, the files kept open) or its end."""

    call_id: str
    paused: bool = True


@dataclass(frozen=True, slots=True)
class RecordStop:
    """The recording ends: the pcap closed, the metadata file completed (``metadata``: the
    call's text) and moved where collectors look; with ``discard``, both removed."""

    call_id: str
    ended: float = 0.0  # wall clock
    metadata: str = ""
    discard: bool = False
    terminated: float = 0.0  # the call was deleted then (wall clock); 0: only the recording ended


@dataclass(frozen=True, slots=True)
class RecordFailed:
    """A worker's recording stopped on its own (disk full, spool unwritable): the call goes on."""

    worker: int
    call_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class InjectDtmf:
    """ng ``play DTMF``: one digit queued on the media engines of these sockets (the RTP
    sockets of the parties whose media carries it, in the command's order). The worker
    answers :class:`DtmfInjected` with the same ``request`` number."""

    request: int
    keys: tuple[str, ...] = ()
    code: int = 0  # RFC 4733 event code, 0-15
    volume: int = 0  # dBm0, <= 0
    duration: int = 0  # ms
    pause: int = 0  # ms


@dataclass(frozen=True, slots=True)
class DtmfInjected:
    """A worker's answer to :class:`InjectDtmf`: ``error`` is rtpengine's error reason for
    the first socket that could not take the digit ("" when all did)."""

    request: int
    error: str = ""


@dataclass(frozen=True, slots=True)
class Shutdown:
    """The worker closes its sockets and exits."""


@dataclass(frozen=True, slots=True)
class Hello:
    """A worker's first message: its index and pid (a unit on ``worker-socket`` says so)."""

    worker: int
    pid: int


@dataclass(frozen=True, slots=True)
class SocketStats:
    """One socket in a worker's report: totals since the worker took it (packets and bytes
    accepted from the party, errors), the source learned, the DTLS and ICE states, and its
    media engine's counters."""

    key: str
    packets: int
    bytes: int
    errors: int
    last_packet: float  # CLOCK_MONOTONIC of the last packet received
    endpoint: str = ""  # learned source, "address port"
    confirmed: bool = False
    ssrc: int = -1
    dtls: str = ""  # "", "connecting", "connected", "closed", "failed: <reason>"
    ice: str = ""  # "", "checking", "nominated"
    # transcoding (relayd/worker/transcoding.py) of what this socket receives: the codecs
    # ("PCMA->PCMU", "failed: <reason>"), payloads decoded, packets sent and the packets
    # that did not parse, decode or encode, since the engine was made
    codec: str = ""
    frames: int = 0
    codec_sent: int = 0
    codec_errors: int = 0


@dataclass(frozen=True, slots=True)
class Stats:
    """A worker's report, every ``stats_interval``: the sockets whose counters, confirmation or
    DTLS/ICE state changed since the last one (maybe none), and the process's CPU time."""

    worker: int
    sockets: tuple[SocketStats, ...] = ()
    cpu_seconds: float = 0.0
    now: float = 0.0  # the worker's CLOCK_MONOTONIC when it sent this
    copies_lost: int = 0  # kernel copies of recorded packets lost so far (nflog, ENOBUFS)


@dataclass(frozen=True, slots=True)
class RtcpPacket:
    """One RTCP datagram a worker relayed, copied for Homer and the RTCP log."""

    key: str  # the socket it arrived on, "address port"
    source: str  # who sent it, "address port"
    data: str  # the datagram, hex
    at: float  # the worker's CLOCK_MONOTONIC when it arrived


@dataclass(frozen=True, slots=True)
class Rtcp:
    """The RTCP a worker copied since its last report (at most ``RTCP_SAMPLE_LIMIT``)."""

    worker: int
    packets: tuple[RtcpPacket, ...] = ()
    now: float = 0.0  # the worker's CLOCK_MONOTONIC when it sent this


@dataclass(frozen=True, slots=True)
class Dtmf:
    """A DTMF digit that ended in what a worker relayed: on socket ``key``, from ``source``
    ("address port"; the party's learned endpoint for a tone heard in audio), its event code,
    volume (dBm0 below 0) and duration in milliseconds; ``tone``: heard in decoded audio, not
    sent as RFC 4733 events."""

    worker: int
    key: str
    source: str
    event: int
    volume: int
    duration: int
    tone: bool = False


@dataclass(frozen=True, slots=True)
class Play:
    """ng ``play media`` (relayd/worker/player.py): the worker plays a file to one party from
    its relay sockets ``rtp``/``rtcp`` (socket keys), encoded as ``format`` every ``ptime``
    ms; ``srtp``: the SDES key of what goes to the party where its socket has none. The
    file: ``path`` (removed once read where ``temporary``), or ``data`` (its bytes,
    base64). ``started`` names the play in its ``PlayDone``."""

    call_id: str
    tag: str
    rtp: str
    rtcp: str
    format: str  # the Format's list as JSON (relayd/transcode/plan.py)
    ptime: int = 20
    srtp: str = ""
    path: str = ""
    temporary: bool = False
    data: str = ""
    repeat: int = 1
    start_pos: int = 0  # ms
    started: float = 0.0


@dataclass(frozen=True, slots=True)
class PlayStop:
    """``stop media``: the worker's player on the party's RTP socket ``rtp`` stops."""

    call_id: str
    tag: str
    rtp: str


@dataclass(frozen=True, slots=True)
class PlayDone:
    """A worker's play came to its end (or failed: ``error``); ``position``: ms into the
    file of the last frame sent."""

    worker: int
    call_id: str
    tag: str
    started: float
    position: int = 0
    error: str = ""


Message = (
    Configure
    | Forward
    | Drop
    | Close
    | Discard
    | Shutdown
    | Hello
    | Stats
    | Rtcp
    | RecordStart
    | RecordSdp
    | RecordPause
    | RecordStop
    | RecordFailed
    | Dtmf
    | Play
    | PlayStop
    | PlayDone
    | InjectDtmf
    | DtmfInjected
)

_TYPES: dict[str, type[Any]] = {
    cls.__name__: cls
    for cls in (
        Configure,
        Forward,
        Drop,
        Close,
        Discard,
        Shutdown,
        Hello,
        Stats,
        Rtcp,
        RecordStart,
        RecordSdp,
        RecordPause,
        RecordStop,
        RecordFailed,
        Dtmf,
        Play,
        PlayStop,
        PlayDone,
        InjectDtmf,
        DtmfInjected,
    )
}


def _defaults(cls: type[Any]) -> tuple[tuple[str, Any], ...]:
    # a field without a plain default (a factory's) has MISSING: always written
    return tuple((f.name, f.default) for f in fields(cls))


_FIELDS: dict[type[Any], tuple[tuple[str, Any], ...]] = {
    cls: _defaults(cls) for cls in (*_TYPES.values(), SocketSpec, SocketStats, RtcpPacket)
}


# every field of a SocketSpec in one call, and their defaults: a forward's sockets are
# the bulk of the link's traffic
_SPEC_FIELDS = _FIELDS[SocketSpec]
_SPEC_VALUES = operator.attrgetter(*(name for name, _ in _SPEC_FIELDS))


def _compact(value: Any) -> dict[str, Any]:
    """The fields that differ from their defaults: a forward's sockets carry mostly
    empty crypto and ICE fields, so this keeps messages small and cheap to build."""
    if type(value) is SocketSpec:
        return {
            name: item
            for (name, default), item in zip(_SPEC_FIELDS, _SPEC_VALUES(value), strict=True)
            if item != default
        }
    body = {}
    for name, default in _FIELDS[type(value)]:
        item = getattr(value, name)
        if item != default:
            if isinstance(item, tuple):  # of values, or of plain strings (socket keys)
                item = [v if isinstance(v, str) else _compact(v) for v in item]
            body[name] = item
    return body


# json.dumps with separators builds a JSONEncoder per call, a third of a small message's
# encoding: one, made once, writes the same text
_JSON = json.JSONEncoder(separators=(",", ":")).encode


def encode(message: Message) -> bytes:
    body = _compact(message)
    body["type"] = type(message).__name__
    return _JSON(body).encode()


def encode_forward(forward: Forward, fd_index: Mapping[str, int]) -> bytes:
    """``forward`` as :func:`encode` writes it, with ``fd_index`` set for the sockets
    whose descriptors travel with the message (socket key -> place among them)."""
    body = _compact(forward)
    for spec in body.get("sockets", ()):
        index = fd_index.get(spec["key"])
        if index is not None:
            spec["fd_index"] = index
    body["type"] = "Forward"
    return _JSON(body).encode()


def join(encoded: list[bytes]) -> bytes:
    """Messages as :func:`encode` wrote them, in one packet (a JSON array, in order); a single
    one as it is. Only the last may carry descriptors (its ``fd_index`` counts from the
    packet's first): messages that wait to be sent carry none."""
    if len(encoded) == 1:
        return encoded[0]
    return b"[" + b",".join(encoded) + b"]"


def _load(data: bytes) -> Any:
    """A packet's JSON, or an :class:`IpcError` (too large, not JSON)."""
    if len(data) > MAX_MESSAGE:
        raise IpcError("message too large")
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise IpcError(f"bad ipc message: {exc}") from None


def decode(data: bytes) -> Message:
    """A message as :func:`encode` wrote it; anything else is an :class:`IpcError` (too large,
    not a JSON object, an unknown type or field)."""
    return _message(_load(data))


def decode_all(data: bytes) -> list[Message]:
    """The messages of one packet, in order: one as :func:`encode` wrote it, or several as
    :func:`join` put them together. An :class:`IpcError` (nothing applied) if any is bad."""
    body = _load(data)
    if isinstance(body, list):
        return [_message(item) for item in body]
    return [_message(body)]


def _message(body: Any) -> Message:
    try:
        if not isinstance(body, dict):
            raise TypeError("not a JSON object")
        cls = _TYPES[body.pop("type")]
        if cls is Forward:
            body["sockets"] = tuple(SocketSpec(**s) for s in body.get("sockets", ()))
        elif cls is Stats:
            body["sockets"] = tuple(SocketStats(**s) for s in body.get("sockets", ()))
        elif cls is Rtcp:
            body["packets"] = tuple(RtcpPacket(**p) for p in body.get("packets", ()))
        elif cls is Close or cls is Discard or cls is InjectDtmf:
            body["keys"] = tuple(str(k) for k in body.get("keys", ()))
        elif cls is RecordStart:
            body["names"] = tuple(str(n) for n in body.get("names", ()))
            body["medias"] = tuple(str(m) for m in body.get("medias", ()))
        message: Message = cls(**body)
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise IpcError(f"bad ipc message: {exc}") from None
    return message
