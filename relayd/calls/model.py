"""The call model: call → monologue (one per tag) → media → RTP/RTCP streams.

Tag semantics are rtpengine's: a monologue is one party, named by its SIP tag;
``from-tag`` is whoever sent the message. Each monologue owns the local ports
its party talks to, so media from A arrives on A's ports and leaves towards B
from B's ports. Pure data: no sockets, no clock (times are passed in).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, replace
from operator import attrgetter
from socket import AF_INET, inet_pton  # a parser: no socket is opened
from typing import TYPE_CHECKING, Generic, Literal, TypeVar, overload

from relayd.calls.webrtc import Crypto
from relayd.ipc import Learning
from relayd.transcode.plan import DtmfSecurity, DtmfTrigger

__all__ = [
    "UNSAVED",
    "Call",
    "CallRecording",
    "Codec",
    "CodecSetup",
    "EchoRole",
    "Endpoint",
    "LocalAddress",
    "Media",
    "MediaControl",
    "MediaSecurity",
    "Monologue",
    "Playback",
    "Stream",
    "StreamStats",
    "family_of",
]


def family_of(address: str) -> str:
    """``IP4`` or ``IP6`` as SDP spells it."""
    return "IP6" if ":" in address else "IP4"


def host_port(address: tuple[str, int]) -> str:
    """``192.0.2.1:2223`` or ``[2001:db8::1]:2223``, as addresses are shown to people."""
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_address(text: str) -> bool:
    """An IPv4 or IPv6 address literal (not a host or device name)."""
    try:
        inet_pton(AF_INET, text)  # the common case, without ipaddress's cost
        return True
    except OSError:
        pass
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


# What happens to the media a party sends (ng ``media-echo``): "" forwarded to its peer,
# "echo" sent straight back to it, "blackhole" discarded.
EchoRole = Literal["", "echo", "blackhole"]


@dataclass(frozen=True, slots=True)
class Endpoint:
    address: str
    port: int

    @property
    def family(self) -> str:
        return family_of(self.address)


@dataclass(frozen=True, slots=True)
class LocalAddress:
    """One address of a logical interface: bound locally, written into SDP as advertised."""

    interface: str
    local: str
    advertised: str

    @property
    def family(self) -> str:
        return family_of(self.local)


UNSAVED = {"unsaved": True}
"""A field's metadata: the journal (relayd/calls/snapshot.py) leaves it out."""


@dataclass(slots=True)
class StreamStats:
    """A stream's counters, the worker's and the kernel's added up: what the party sent to its
    socket, ``errors`` (packets dropped or not sent), and when the last packet came (wall
    clock, 0: none yet). Keyword-only: a :class:`Stream`'s own first fields come first."""

    packets: int = field(default=0, kw_only=True)
    bytes: int = field(default=0, kw_only=True)
    errors: int = field(default=0, kw_only=True)
    last_packet: float = field(default=0.0, kw_only=True)


@dataclass(slots=True)
class Stream(StreamStats):
    """One local socket (RTP or RTCP) of a party and the peer endpoint it talks to. Its
    counters are its own fields (a StreamStats), not a second object per stream."""

    local: LocalAddress
    port: int
    rtcp: bool
    endpoint: Endpoint | None = None  # where media for this party is sent
    advertised_endpoint: Endpoint | None = None  # as the party's SDP said
    confirmed: bool = False
    kernelized: bool = False  # forwarded by the nftables path, not by a worker
    dtls: str = ""  # as the worker reports it: connecting, connected, closed, failed: <reason>
    ice: str = ""  # checking, nominated
    call_id: str = ""  # the call it belongs to (the media plane finds streams by socket)
    # the worker's totals for the stream's own socket as last reported (relayd/plane/
    # reports.py counts only what is new; three slots, not a tuple and a map entry per
    # socket): the media plane's bookkeeping, not the call's, so never journaled
    reported_packets: int = field(default=0, compare=False, repr=False, metadata=UNSAVED)
    reported_bytes: int = field(default=0, compare=False, repr=False, metadata=UNSAVED)
    reported_errors: int = field(default=0, compare=False, repr=False, metadata=UNSAVED)

    @property
    def stats(self) -> StreamStats:
        """The stream's counters: the stream itself."""
        return self


@dataclass(frozen=True, slots=True)
class Codec:
    """A payload type as the SDP describes it (rtpmap, fmtp, rtcp-fb)."""

    payload_type: str
    encoding: str  # "PCMU/8000", "" if unknown
    fmtp: str = ""
    rtcp_fb: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.encoding.partition("/")[0]

    @property
    def clock_rate(self) -> str:
        """The RTP clock rate as the encoding names it ("8000"), "" if unknown."""
        return self.encoding.split("/")[1] if self.encoding.count("/") else ""

    @property
    def supplemental(self) -> bool:
        """DTMF events or comfort noise: carried beside an audio codec of the same clock
        rate, never alone (RFC 4733, RFC 3389)."""
        return self.name.lower() in _SUPPLEMENTAL


_SUPPLEMENTAL = frozenset({"telephone-event", "cn"})


@dataclass(frozen=True, slots=True)
class CodecSetup:
    """What an offer that asked for transcoding set up for its answer and for the codec
    plans (relayd/calls/transcoding.py, relayd/calls/codec_plans.py), kept with the media of
    the party the offer went to, and in the journal with it."""

    offerer: tuple[Codec, ...] = ()  # the offerer's codecs it sends and takes (after strip)
    added: tuple[str, ...] = ()  # payload types the offer gained for transcoding
    accept: tuple[str, ...] = ()  # codec names the offer accepted or consumed
    always: bool = False  # always-transcode
    ptime: int = 0  # the ng ptime: the packet time towards the answerer
    ptime_reverse: int = 0  # the ng ptime-reverse: the packet time towards the offerer
    offerer_ptime: int = 0  # the offerer's own a=ptime (0: none)
    transcode: tuple[str, ...] = ()  # the offer's transcode codecs as written (their bitrate)
    removed_rates: tuple[int, ...] = ()  # clock rates of the codecs strip/mask/consume removed


@dataclass(slots=True)
class MediaSecurity:
    """SRTP, DTLS and ICE of one media towards one party: what its SDP said, what we said
    to it. Kept apart from :class:`Media` so that plain RTP media, nearly all of them, hold
    one reference to the shared empty :data:`PLAIN` instead of thirty fields each."""

    crypto: tuple[Crypto, ...] = ()  # this party's a=crypto lines
    crypto_out: tuple[Crypto, ...] = ()  # the a=crypto lines we wrote to it
    srtp_in: Crypto | None = None  # the key this party's packets come with
    srtp_out: Crypto | None = None  # our key for packets to this party
    peer_setup: str = ""  # this party's a=setup
    peer_fingerprint: str = ""  # "sha-256 AB:CD:…" from this party's SDP
    setup: str = ""  # the a=setup we wrote to this party ("" when no DTLS)
    dtls_role: str = ""  # "active" or "passive": our DTLS role towards this party
    fingerprint_hash: str = ""  # the hash of our a=fingerprint to this party, once written
    prefer_passive: bool = False  # DTLS-reverse=passive came with this party's offer
    # RFC 8643 opportunistic SRTP: SDES or DTLS over RTP/AVP(F)
    osrtp: bool = False  # this party's SDP: RTP/AVP(F) with a=crypto or a=fingerprint
    out_osrtp: bool = False  # we write SRTP attributes over RTP/AVP(F) to this party
    # which of DTLS and SDES are in use with this party: set by the first offer towards
    # it (from the flags), then by what its SDPs carry; both cleared by a plain transport
    uses_dtls: bool = False
    uses_sdes: bool = False
    peer_ice: bool = False  # this party's SDP had ICE
    peer_ice_ufrag: str = ""
    peer_ice_pwd: str = ""
    peer_ice_lite: bool = False  # its SDP said a=ice-lite
    peer_candidates: tuple[str, ...] = ()  # its a=candidate values, as written
    peer_trickle: bool = False  # a=ice-options:trickle at media level
    peer_trickle_address: bool = False  # trickle ICE with 0.0.0.0 or :: port 9 (RFC 8838 §5.2)
    # ICE with this party (rules in relayd.calls.ice): its SDP had it, or the flags said so
    ice: bool = False
    ice_passthrough: bool = False  # the peers do ICE end to end; we only add candidates
    ice_lite_self: bool = False  # we are an ICE-lite agent towards this party
    trickle: bool = False  # trickle ICE with this party
    ice_ufrag: str = ""  # our credentials towards this party ("" when no ICE)
    ice_pwd: str = ""
    ice_ports: tuple[tuple[LocalAddress, int], ...] = ()  # our candidates on other addresses
    # ICE=force-relay with a party that does ICE: its ICE, DTLS and SDES pass through us
    # untouched, we only add our addresses as relay candidates (rtpengine's passthrough)
    ice_relay: bool = False


PLAIN = MediaSecurity()  # never written to: the first change gives a media its own copy

T = TypeVar("T")


class _Secured(property, Generic[T]):
    """A :class:`MediaSecurity` field read and written as an attribute of the media.

    A property whose getter is C code (``attrgetter("security.<name>")``): the signalling
    reads these fields often, and a Python-level ``__get__`` would cost it some 5 % of
    its CPU per call set-up."""

    def __init__(self, name: str) -> None:
        def put(media: Media, value: T) -> None:
            security = media.security
            if security is PLAIN:
                if getattr(PLAIN, name) == value:
                    return
                security = media.security = MediaSecurity()
            setattr(security, name, value)

        super().__init__(attrgetter(f"security.{name}"), put)

    if TYPE_CHECKING:  # what mypy sees: the field's type, not property's Any

        @overload
        def __get__(self, media: None, owner: type | None = None) -> _Secured[T]: ...
        @overload
        def __get__(self, media: Media, owner: type | None = None) -> T: ...
        def __get__(self, media: Media | None, owner: type | None = None) -> T | _Secured[T]: ...
        def __set__(self, media: Media, value: T) -> None: ...


@dataclass(slots=True)
class Media:
    """One ``m=`` section as seen from one party."""

    index: int
    type: str
    protocol: str
    local: LocalAddress | None = None
    port: int = 0  # our RTP port for this party; 0 when none allocated
    rtcp_port: int = 0  # 0 with rtcp-mux (RTCP shares the RTP port)
    rtcp_mux: bool = False  # rtcp-mux in force towards this party (what we printed)
    peer_rtcp_mux: bool = False  # this party's own SDP carried a=rtcp-mux
    mux_policy: frozenset[str] = frozenset()  # rtcp-mux options of the offer this party got
    remote_rtp: Endpoint | None = None  # this party's media address, from its SDP
    remote_rtcp: Endpoint | None = None
    send: bool = True
    recv: bool = True
    zero_address: bool = False
    streams: list[Stream] = field(default_factory=list)
    codecs: tuple[Codec, ...] = ()  # as this party's own SDP lists them
    sent_codecs: tuple[Codec, ...] = ()  # as we last wrote them to this party
    # an offer to this party that asked for transcoding: what it set up (None: none did)
    codec_setup: CodecSetup | None = None
    ptime: int = 0
    rejected: bool = False  # m= port 0
    passthrough: bool = False  # an m=message section: its SDP passes through, no ports of ours
    mid: str = ""  # this party's a=mid
    out_protocol: str = ""  # the transport we last wrote to this party
    protocol_seen: str = ""  # this party's protocol as last learned ("RTP/AVP+osrtp")
    protocol_changed: bool = True  # its latest SDP changed that protocol
    initialized: bool = False  # this party has sent an SDP for this media
    keep_zero_address: bool = False  # our SDP to this party keeps the sender's zero address
    ice_controlling: bool = False  # our ICE role towards this party (set with or without ICE)
    # SRTP, DTLS and ICE towards this party (read and written as the Media's own attributes
    # below): plain RTP media share one empty MediaSecurity until one of them is set
    security: MediaSecurity = field(default_factory=lambda: PLAIN, metadata={"flatten": True})

    # MediaSecurity's fields, as attributes of the media
    crypto = _Secured[tuple[Crypto, ...]]("crypto")
    crypto_out = _Secured[tuple[Crypto, ...]]("crypto_out")
    srtp_in = _Secured[Crypto | None]("srtp_in")
    srtp_out = _Secured[Crypto | None]("srtp_out")
    peer_setup = _Secured[str]("peer_setup")
    peer_fingerprint = _Secured[str]("peer_fingerprint")
    setup = _Secured[str]("setup")
    dtls_role = _Secured[str]("dtls_role")
    fingerprint_hash = _Secured[str]("fingerprint_hash")
    prefer_passive = _Secured[bool]("prefer_passive")
    osrtp = _Secured[bool]("osrtp")
    out_osrtp = _Secured[bool]("out_osrtp")
    uses_dtls = _Secured[bool]("uses_dtls")
    uses_sdes = _Secured[bool]("uses_sdes")
    peer_ice = _Secured[bool]("peer_ice")
    peer_ice_ufrag = _Secured[str]("peer_ice_ufrag")
    peer_ice_pwd = _Secured[str]("peer_ice_pwd")
    peer_ice_lite = _Secured[bool]("peer_ice_lite")
    peer_candidates = _Secured[tuple[str, ...]]("peer_candidates")
    peer_trickle = _Secured[bool]("peer_trickle")
    peer_trickle_address = _Secured[bool]("peer_trickle_address")
    ice = _Secured[bool]("ice")
    ice_passthrough = _Secured[bool]("ice_passthrough")
    ice_lite_self = _Secured[bool]("ice_lite_self")
    trickle = _Secured[bool]("trickle")
    ice_ufrag = _Secured[str]("ice_ufrag")
    ice_pwd = _Secured[str]("ice_pwd")
    ice_ports = _Secured[tuple[tuple[LocalAddress, int], ...]]("ice_ports")
    ice_relay = _Secured[bool]("ice_relay")

    def for_new_dialogue(self) -> Media:
        """What this party said about its media, without what we gave it (ports, keys,
        ICE credentials): the start of its media towards another forked peer."""
        security = self.security
        if security is not PLAIN:  # a copy of its own: the two are changed apart from now on
            security = replace(
                security,
                ice_ports=(),
                crypto_out=(),
                srtp_in=None,
                srtp_out=None,
                setup="",
                dtls_role="",
                fingerprint_hash="",
                out_osrtp=False,
                ice_ufrag="",
                ice_pwd="",
            )
        return replace(
            self,
            local=None,
            port=0,
            rtcp_port=0,
            streams=[],
            security=security if security != PLAIN else PLAIN,
        )

    @property
    def direction(self) -> str:
        if self.send and self.recv:
            return "sendrecv"
        if self.send:
            return "sendonly"
        if self.recv:
            return "recvonly"
        return "inactive"


@dataclass(slots=True)
class Playback:
    """ng ``play media`` to a party (relayd/calls/playback.py): what plays and since when
    (wall clock), kept after it ends (10.5 answers ``stop media`` to a party that never
    played with an error, to one that did with ``ok``). ``active`` while the worker plays:
    the party's streams stay with the workers (relayd/plane/offload.py)."""

    started: float = 0.0
    duration: int = 0  # ms, one play of the file
    repeat: int = 1
    start_pos: int = 0  # ms into the file where the first play begins
    active: bool = False
    ended: float = 0.0  # when it stopped or was stopped (wall clock), 0: still playing


@dataclass(slots=True)
class Monologue:
    """One party of the call, named by its tag (empty until an answer names it)."""

    tag: str
    created: float
    via_branch: str = ""
    label: str = ""
    medias: list[Media] = field(default_factory=list)
    in_dialogue_with: str | None = None
    # this party's media (and our ports towards it) per earlier peer: with forking,
    # each answerer pairs with its own set of the offerer's ports
    other_dialogues: dict[str, list[Media]] = field(default_factory=dict)
    interface: str = ""  # logical interface chosen for this party
    family: str = ""  # "IP4"/"IP6" forced for this party's SDP, "" to follow the peer
    asymmetric: bool = False
    strict_source: bool = False
    media_handover: bool = False
    media_echo: EchoRole = ""  # what happens to this party's media (ng media-echo)
    inject_dtmf: bool = False  # ng ``inject DTMF``: play DTMF may inject into what it sends
    # ng ``block DTMF`` of this party (its own), and what applies to what it sends: the
    # call's block if there is one, else its own (relayd/calls/dtmf_block.py keeps it)
    dtmf_block: DtmfSecurity | None = None
    dtmf_security: DtmfSecurity | None = None
    # block DTMF's triggers: its own (dtmf_block_trigger) and those in force (the call's
    # where the call is blocked, else its own), as dtmf_block and dtmf_security
    dtmf_block_trigger: DtmfTrigger | None = None
    dtmf_trigger: DtmfTrigger | None = None
    playback: Playback | None = None  # ng ``play media`` to this party (None: never)
    sip_source: str = ""  # the SIP source address (received-from), if any
    last_sdp: bytes = b""  # digest of the SDP we last wrote for it, version aside (SDP-version)
    first_username: str | None = None  # o= username of this party's first SDP
    first_session_name: str | None = None  # s= of this party's first SDP
    out_version: int | None = None  # o= version we last wrote for this party's SDP
    aliases: tuple[str, ...] = ()
    offered_by: str | None = None  # for the receiver of an offer: the offerer's tag
    sent_sdp: bool = False  # this party has sent us an SDP (its media is "initialized")
    answerer: bool = False  # received an offer before sending one (rtpengine: ICE controlling)
    # how the workers learn this party's endpoints since its last signalling: the mode
    # and the CLOCK_MONOTONIC time from which delayed learning may confirm a source
    learning: Learning = "delayed"
    learn_after: float = 0.0


@dataclass(slots=True)
class CallRecording:
    """A call's recording (relayd/calls/recording.py drives it): the metadata text ng gave it,
    and while it records, its files and since when (wall clock)."""

    metadata: str = ""
    names: tuple[str, ...] = ()  # the files' names (relayd.recording.spool.RecordingNames)
    pcap: str = ""  # the pcap's path: ng replies list it under "recordings"
    started: float = 0.0
    paused: bool = False  # ``pause recording``: files kept open, no packets written
    on: bool = False  # ``record-call``, ``start recording`` (rtpengine's recording_on)
    # ``start forwarding``: the parties' tags it named, "" for the whole call; it records
    # too while any is left (10.5's pcap method has no other way to forward)
    forwarding: set[str] = field(default_factory=set)

    @property
    def active(self) -> bool:
        return bool(self.names)


@dataclass(slots=True)
class MediaControl:
    """``block media`` and ``silence media`` on a call (relayd/calls/media_control.py): the
    whole call's, and the parties' by tag. Blocked: what a party sends is dropped; silenced:
    its audio payload is overwritten with its codec's silence."""

    block: bool = False
    silence: bool = False
    blocked: set[str] = field(default_factory=set)
    silenced: set[str] = field(default_factory=set)

    def blocks(self, party: Monologue) -> bool:
        return self.block or party.tag in self.blocked

    def silences(self, party: Monologue) -> bool:
        return self.silence or party.tag in self.silenced

    @property
    def idle(self) -> bool:
        return not (self.block or self.silence or self.blocked or self.silenced)


@dataclass(slots=True)
class Call:
    """One call (the ng ``call-id``): its parties by tag, the parties of offers no answer named
    yet by via-branch, its worker, and its deadlines; all times are wall clock."""

    call_id: str
    created: float
    last_signal: float
    monologues: dict[str, Monologue] = field(default_factory=dict)
    # monologues created by an offer whose answerer is not known yet, by via-branch
    branches: dict[str, Monologue] = field(default_factory=dict)
    deleted_at: float | None = None  # delete received; freed after delete-delay
    answered: bool = False
    worker: int = 0  # the worker whose port slice holds this call's sockets
    reap_at: float = 0.0  # when the timers look at it next (Commands.schedule), 0: never
    recording: CallRecording | None = None  # metadata given, or recorded now or before
    control: MediaControl | None = None  # media blocked or silenced (None: neither, ever)
    dtmf_block: DtmfSecurity | None = None  # ng ``block DTMF`` of the whole call
    dtmf_block_trigger: DtmfTrigger | None = None  # and its triggers

    def all_medias(self) -> list[Media]:
        """Every media of every party, including those of earlier forked dialogues."""
        result: list[Media] = []
        for party in self.parties():
            result.extend(party.medias)
            for medias in party.other_dialogues.values():
                result.extend(medias)
        return result

    def parties(self) -> list[Monologue]:
        """Every party once, in order: those by tag (a party's aliases name it again), then
        the unanswered branches not named by a tag. Asked many times per message, for two
        or three parties: a scan of the few found so far is cheaper than a set or a dict,
        and two at most (an offer's two parties: nearly every call) need no scan."""
        everyone = [*self.monologues.values(), *self.branches.values()]
        if len(everyone) < 3:
            if len(everyone) == 2 and everyone[0] is everyone[1]:
                del everyone[1]  # one party under two names
            return everyone
        result: list[Monologue] = []
        for mono in everyone:
            for have in result:
                if have is mono:
                    break
            else:
                result.append(mono)
        return result
