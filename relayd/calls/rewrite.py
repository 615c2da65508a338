"""Rewrite an SDP in place the way rtpengine 10.5 does (its ``sdp_replace``).

Rules, in the order they are applied to each media section:

* ``m=``: port → our RTP port for the receiving party (0 stays 0), protocol →
  the outgoing transport, formats → the negotiated payload types.
* ``c=`` lines in the media section → our advertised address; a zero (hold)
  address stays the null address, written in the outgoing family (``IN IP6 ::``),
  unless ``replace: zero-address``, ICE with the receiver, or a trickle ICE
  placeholder (``Media.keep_zero_address``).
* Attributes we manage are removed where they stand (``rtpmap``, ``fmtp`` and
  per-PT ``rtcp-fb``, ``ptime``, direction, ``rtcp``, ``rtcp-mux``, the
  sender's ICE attributes unless they pass through (``ICE=optional``, ICE
  passthrough), ``a=end-of-candidates``, our ``a=rtpengine`` marker, ``extmap``
  with ``strip-extmap``); every other line stays verbatim.
* Then appended: per payload type ``rtpmap``/``fmtp``/``rtcp-fb`` (static
  types included), the direction, ``a=rtcp:PORT``, ``a=rtcp-mux``, ``a=ptime``,
  our ICE credentials and candidates (:mod:`relayd.calls.ice` has the rules),
  ``a=end-of-candidates``.
* A rejected section (port 0) keeps its lines but the managed ones (its
  ``a=fingerprint`` and ``a=rtpengine`` stay) and gets nothing appended but its
  ``a=mid`` (and a stray ``a=end-of-candidates``); its ``c=`` is rewritten all the same.
* An ``m=message`` section (MSRP and the like: no RTP) passes through untouched.
  Where it relied on the session-level ``c=`` that we replace, that original
  ``c=`` is written into it, right after its ``m=`` line.

``ICE=force-relay`` with a sender that does ICE (``Media.ice_relay``): the m=, c=
and the sender's ICE, DTLS and SDES lines stay (its own relay candidates aside), our
relay candidates are appended; the session's o= address, c= and attributes stay too.

At session level (each session of the body on its own): ``o=`` only with
``replace: origin``; ``c=`` with ``replace: session-connection`` or when a media
section has no ``c=`` of its own, then as the first media section's: the null
address where that one is on hold, else ours; session direction attributes are
consumed (re-emitted per media); ``a=ice-lite`` is added towards a party we are an
ICE-lite agent for.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass, field

from relayd.calls import ice
from relayd.calls.model import PLAIN, Codec, Media
from relayd.sdp.intern import Recurring
from relayd.sdp.model import (
    Connection,
    Line,
    MediaDescription,
    Session,
    SessionDescription,
    attribute_value,
)

__all__ = [
    "DIRECTIONS",
    "ICE_ATTRIBUTES",
    "PASSTHROUGH_MEDIA",
    "SECURITY_ATTRIBUTES",
    "RewriteOptions",
    "rewrite_sdp",
]

# a media type whose sections go through untouched: no RTP of ours (MSRP chat, RFC 4975)
PASSTHROUGH_MEDIA = "message"
DIRECTIONS = frozenset({"sendrecv", "sendonly", "recvonly", "inactive"})
SECURITY_ATTRIBUTES = frozenset({"crypto", "fingerprint", "setup", "tls-id"})
ICE_ATTRIBUTES = frozenset(
    {
        "ice-ufrag",
        "ice-pwd",
        "ice-options",
        "ice-lite",
        "ice-mismatch",
        "candidate",
        "remote-candidates",
        "end-of-candidates",
    }
)


@dataclass(slots=True)
class RewriteOptions:
    """What the ng flags ask of this rewrite; per-media facts come from :class:`Media`.

    Not frozen, though never changed once made: a frozen dataclass's ``__init__`` sets
    each of these twenty fields through ``object.__setattr__``, four times the cost of
    plain assignments, for every offer and answer."""

    address: str  # our advertised address (or the ng ``media address``) for c=, o=, a=rtcp
    family: str  # "IP4" or "IP6" of that address
    candidate_address: str = ""  # the ng ``media address``: every candidate of ours says it
    keep_ice: bool = False  # the sender's ICE attributes go through (ICE=optional)
    replace: Set[str] = frozenset()  # the ng replace options (read only)
    original_sendrecv: bool = False
    rtcp_attribute: str = "short"  # "short", "full" or "none"
    loop_marker: str = ""  # a=rtpengine:<marker> when loop-protect is asked for
    origin_user: str | None = None  # replace: username (the dialog's first o= user)
    session_name: str | None = None  # replace: session-name (the dialog's first s=)
    fingerprint: str = ""  # "sha-256 AB:…" of our DTLS certificate
    fingerprints: Mapping[str, str] = field(default_factory=dict)  # the same, per hash name
    sdes_pad: bool = False  # SDES-pad / pad-crypto: base64 keys with their "=" padding
    sdes_lifetime: bool = False  # SDES-lifetime: "|2^31" after every key
    foundations: Mapping[str, str] = field(default_factory=dict)  # ICE, per local address
    generate_mid: bool = False
    strip_extmap: bool = False
    answer: bool = False


def rewrite_sdp(
    sdp: SessionDescription, medias: list[Media], opts: RewriteOptions
) -> SessionDescription:
    """Return a rewritten copy of ``sdp``; ``medias`` are the receiving party's, by index."""
    # the session level follows the first media in use (a rejected or m=message section
    # first does not decide it)
    lead: Media | None = None
    for media in medias:
        if media.port and not media.rejected:
            lead = media
            break
    # ICE=force-relay passthrough: the session's addresses and attributes stay the sender's
    relay = lead is not None and lead.ice_relay
    sessions: list[Session] = []
    out_media: list[MediaDescription] = []
    all_sessions, all_media = sdp.sessions, sdp.media
    for at, session in enumerate(all_sessions):
        first_media = session.first_media
        end = all_sessions[at + 1].first_media if at + 1 < len(all_sessions) else len(all_media)
        descs = all_media[first_media:end]
        first = medias[first_media] if first_media < len(medias) else None
        keep_zero = first is None or first.keep_zero_address
        lines, original_c = _rewrite_session(session, descs, opts, relay, keep_zero)
        sessions.append(Session(lines, first_media))
        for i, desc in enumerate(descs, start=first_media):
            if desc.media == PASSTHROUGH_MEDIA:
                out_media.append(_pass_through(desc, original_c))
            elif i < len(medias):
                out_media.append(_rewrite_media(desc, medias[i], opts, i))
            else:
                out_media.append(desc)
    if opts.loop_marker:
        sessions[0].lines.append(Line("a", f"rtpengine:{opts.loop_marker}"))
    if lead is not None and lead.ice and lead.ice_lite_self:
        sessions[0].lines.append(_ICE_LITE)  # RFC 8839 §5.3: session level
    return SessionDescription(sessions, out_media, sdp.eol)


# the session-level attributes we drop (not with ICE=force-relay passthrough), by
# (original-sendrecv, the sender's ICE attributes kept); a=group:BUNDLE goes as well
_SESSION_DROPPED = {
    (sendrecv, keep_ice): frozenset(
        {
            *SECURITY_ATTRIBUTES,
            *(() if sendrecv else DIRECTIONS),
            *(() if keep_ice else ICE_ATTRIBUTES),
        }
    )
    for sendrecv in (False, True)
    for keep_ice in (False, True)
}


def _rewrite_session(
    session: Session,
    descs: list[MediaDescription],
    opts: RewriteOptions,
    relay: bool,
    keep_zero: bool,
) -> tuple[list[Line], Line | None]:
    """One session's own lines rewritten, and its original ``c=`` line where we replaced it
    (a passed-through section that relied on it gets it). ``keep_zero``: the receiver's
    first media keeps a zero (hold) address (``Media.keep_zero_address``)."""
    replace = opts.replace
    lacks_connection = False
    for desc in descs:
        if desc.connection() is None:
            lacks_connection = True
            break
    replace_session_c = ("session-connection" in replace or lacks_connection) and not relay
    dropped = frozenset() if relay else _SESSION_DROPPED[opts.original_sendrecv, opts.keep_ice]
    original_c: Line | None = None
    lines: list[Line] = []
    for line in session.lines:
        kind = line.kind
        if kind == "a":
            attr = line.attr
            if attr in dropped or (
                # 10.5 does not do BUNDLE: each media section keeps its own ports
                attr == "group" and not relay and line.value.startswith("group:BUNDLE")
            ):
                continue
        elif kind == "o":
            # parsed (and checked) by the parser: six words
            username, session_id, version, network, family, address = line.value.split()
            if "origin" in replace and not relay:
                family, address = opts.family, opts.address
            if opts.origin_user is not None:
                username = opts.origin_user
            line = Line("o", f"{username} {session_id} {version} {network} {family} {address}")
        elif kind == "s" and opts.session_name is not None:
            line = Line("s", opts.session_name)
        elif kind == "c" and replace_session_c:
            # as the first media section's address: the null address where that one is on
            # hold (its own c= or this one zero), else ours; the session's first c= is
            # parsed already
            first = descs[0].connection() if descs else None
            if first is None:
                first = session.connection() if original_c is None else None
            held = (first or Connection.parse(line.value)).is_zero and keep_zero
            original_c = line
            line = _connection_line(held, opts)
        lines.append(line)
    return lines, original_c


def _connection_line(zero: bool, opts: RewriteOptions) -> Line:
    """``c=`` towards the receiver: our address, or for a zero (hold) address the null
    address of the outgoing family, unless ``replace: zero-address``."""
    if zero and "zero-address" not in opts.replace:
        return _NULL_CONNECTIONS[opts.family]
    key = (opts.family, opts.address)
    line = _CONNECTIONS.get(key)
    if line is None:
        line = _CONNECTIONS.add(key, Line("c", f"IN {opts.family} {opts.address}"))
    return line


_NULL_CONNECTIONS = {"IP4": Line("c", "IN IP4 0.0.0.0"), "IP6": Line("c", "IN IP6 ::")}
# our c= lines: a few addresses (the interfaces'; bounded, as an ng media-address may
# name any)
_CONNECTIONS: Recurring[tuple[str, str], Line] = Recurring(256)


def _pass_through(desc: MediaDescription, session_c: Line | None) -> MediaDescription:
    """An ``m=message`` section as it came; given the session's original ``c=`` where it had
    none of its own and we replaced the session's (rtpengine 10.5, its GH #959)."""
    if session_c is None or desc.connection() is not None:
        return desc
    out = MediaDescription(desc.media, desc.port, desc.port_count, desc.protocol, desc.formats)
    out.inherit_verbatim(desc)
    out.lines = [session_c, *desc.lines]
    return out


# the media-level attributes we manage: removed where they stand, written anew where
# they apply (by :func:`_managed_attributes`); all others stay as they are
_CODEC_ATTRIBUTES = frozenset({"rtpmap", "fmtp", "rtcp-fb"})
_ALWAYS_MANAGED = frozenset(
    {"rtcp", "rtcp-mux", "mid", "end-of-candidates", "rtpengine", *SECURITY_ATTRIBUTES}
)
_MANAGED: dict[tuple[bool, ...], frozenset[str]] = {}


def _managed_attributes(media: Media, opts: RewriteOptions) -> frozenset[str]:
    """The attributes of the sender's section that we remove towards ``media``'s party
    (``end-of-candidates`` is written again after our candidates, where it belongs). One
    of a few sets, by what decides them."""
    key = (
        bool(media.sent_codecs),
        opts.original_sendrecv,
        media.ptime > 0,
        opts.strip_extmap,
        opts.keep_ice or (media.ice_passthrough and media.ice),
    )
    managed = _MANAGED.get(key)
    if managed is None:
        codecs, sendrecv, ptime, extmap, keep_ice = key
        managed = _MANAGED[key] = frozenset(
            {
                *_ALWAYS_MANAGED,
                *(_CODEC_ATTRIBUTES if codecs else ()),
                *(() if sendrecv else DIRECTIONS),
                *(("ptime",) if ptime else ()),
                *(("extmap",) if extmap else ()),
                *(() if keep_ice else ICE_ATTRIBUTES - {"end-of-candidates"}),
            }
        )
    return managed


# what a rejected section keeps of the attributes we manage (rtpengine 10.5 leaves them)
_KEPT_WHEN_REJECTED = frozenset({"fingerprint", "rtpengine"})
# lines we write as they are, made once
_DIRECTION_LINES = {direction: Line("a", direction) for direction in DIRECTIONS}
_RTCP_MUX = Line("a", "rtcp-mux")
_END_OF_CANDIDATES = Line("a", "end-of-candidates")
_ICE_LITE = Line("a", "ice-lite")
_ICE_TRICKLE = Line("a", "ice-options:trickle")
_PTIME_LINES: Recurring[int, Line] = Recurring(64)  # a=ptime: a few packet times (from SDPs)


def _ptime_line(ptime: int) -> Line:
    line = _PTIME_LINES.get(ptime)
    return line if line is not None else _PTIME_LINES.add(ptime, Line("a", f"ptime:{ptime}"))


def _rewrite_media(
    desc: MediaDescription, media: Media, opts: RewriteOptions, index: int
) -> MediaDescription:
    if media.ice_relay and desc.port and not media.rejected:
        return _relay_media(desc, media, opts, index)
    protocol = media.out_protocol or desc.protocol
    sent_codecs = media.sent_codecs
    formats = [c.payload_type for c in sent_codecs] if sent_codecs else list(desc.formats)
    rejected = desc.port == 0 or media.rejected
    out = MediaDescription(
        desc.media, 0 if rejected else media.port, desc.port_count, protocol, formats
    )
    if rejected:
        out.inherit_verbatim(desc)  # "m=application 0 * " keeps its spacing (rtpengine GH #1461)
    managed = _managed_attributes(media, opts)
    lines = out.lines
    first_mid: str | None = None  # the sender's own a=mid
    end_of_candidates = False  # the sender's section had a=end-of-candidates
    for line in desc.lines:
        kind = line.kind
        if kind == "a":
            attr = line.attr
            if attr in managed:
                if attr == "mid":
                    if first_mid is None:
                        first_mid = attribute_value(line.value)
                elif attr == "end-of-candidates":
                    end_of_candidates = True
                elif (attr == "rtcp-fb" and line.value.startswith("rtcp-fb:*")) or (
                    rejected and attr in _KEPT_WHEN_REJECTED
                ):
                    lines.append(line)
                continue
        elif kind == "c":
            zero = line.value.split()[-1] in ("0.0.0.0", "::")
            line = _connection_line(zero and media.keep_zero_address, opts)
        lines.append(line)  # lines are not changed once parsed: shared, not copied
    # an answer carries the offerer's own mid (or none), whatever the answerer wrote
    mid = media.mid if opts.answer else (first_mid or "")
    if not mid and opts.generate_mid:
        mid = str(index + 1)
    if mid:
        lines.append(Line("a", f"mid:{mid}"))
    if rejected:
        if end_of_candidates:
            lines.append(_END_OF_CANDIDATES)
        return out
    local = media.local
    if sent_codecs:
        lines += _codec_lines(media)
    if not opts.original_sendrecv:
        lines.append(_DIRECTION_LINES[media.direction])
    if opts.rtcp_attribute != "none" and protocol.startswith(("RTP/", "UDP/TLS/RTP/")):
        rtcp_port = media.rtcp_port or media.port
        if opts.rtcp_attribute == "full" and local is not None:
            lines.append(Line("a", f"rtcp:{rtcp_port} IN {opts.family} {opts.address}"))
        else:
            lines.append(Line("a", f"rtcp:{rtcp_port}"))
    if media.rtcp_mux:
        lines.append(_RTCP_MUX)
    security = media.security
    if security is not PLAIN:
        lines += [
            Line("a", c.value(pad=opts.sdes_pad, lifetime=opts.sdes_lifetime))
            for c in security.crypto_out
        ]
        if security.setup:
            fingerprint = opts.fingerprints.get(security.fingerprint_hash) or opts.fingerprint
            lines.append(Line("a", f"setup:{security.setup}"))
            lines.append(Line("a", f"fingerprint:{fingerprint}"))
    if media.ptime:
        lines.append(_ptime_line(media.ptime))
    if security is not PLAIN or end_of_candidates:
        lines += _ice_lines(media, desc, opts, end_of_candidates)
    return out


def _relay_media(
    desc: MediaDescription, media: Media, opts: RewriteOptions, index: int
) -> MediaDescription:
    """ICE=force-relay passthrough: the sender's m= and c= lines, ICE, DTLS and SDES
    attributes as they were (its own relay candidates aside), then what we append to any
    section (mid, codecs, direction, rtcp-mux where it is settled) and our relay candidates."""
    out = MediaDescription(desc.media, desc.port, desc.port_count, desc.protocol, desc.formats)
    relays: list[ice.Candidate] = []
    for line in desc.lines:
        attr = line.attr
        if attr == "candidate":
            theirs = ice.parse_candidate(line.value.partition(":")[2])
            if theirs is not None and theirs.type.lower() == "relay":
                relays.append(theirs)
                continue
        elif attr in ("mid", "end-of-candidates", "rtpengine") or (
            attr in DIRECTIONS and not opts.original_sendrecv
        ):
            continue
        elif attr in ("rtpmap", "fmtp", "rtcp-fb") and media.sent_codecs:
            if not line.value.startswith("rtcp-fb:*"):
                continue
        elif attr == "ptime" and media.ptime:
            continue
        out.lines.append(line)
    mid = media.mid if opts.answer else (desc.attributes("mid") or [""])[0]
    if not mid and opts.generate_mid:
        mid = str(index + 1)
    if mid:
        out.lines.append(Line("a", f"mid:{mid}"))
    out.lines.extend(_codec_lines(media))
    if not opts.original_sendrecv:
        out.lines.append(Line("a", media.direction))
    muxed = media.rtcp_mux and media.rtcp_port == media.port
    if muxed and desc.protocol.startswith(("RTP/", "UDP/TLS/RTP/")):
        out.lines.append(Line("a", f"rtcp:{media.port}"))
        out.lines.append(Line("a", "rtcp-mux"))
    if media.ptime:
        out.lines.append(_ptime_line(media.ptime))
    type_pref, local = ice.passthrough_preferences(relays, "relay", ice.RELAY_TYPE_PREFERENCE)
    assert media.local is not None
    addresses = [(media.local, media.port), *media.ice_ports]
    for component in [1] if muxed else [1, 2]:
        for offset, (address, port) in enumerate(addresses):
            foundation = opts.foundations.get(address.local, "0")
            priority = ice.priority(type_pref, local + offset, component)
            host, number = address.advertised, port + component - 1
            out.lines.append(
                Line(
                    "a",
                    f"candidate:{foundation} {component} UDP {priority} {host} {number} "
                    f"typ relay raddr {host} rport {number}",
                )
            )
    if desc.has_attribute("end-of-candidates"):
        out.lines.append(Line("a", "end-of-candidates"))
    return out


# the lines of each codec object (codecs are shared: relayd/sdp/codecs.py), by its id;
# each entry holds its codec, so that id is not another's while the entry is there
_CODEC_LINES: Recurring[int, tuple[Codec, list[Line]]] = Recurring(4096)


def _codec_lines(media: Media) -> list[Line]:
    lines: list[Line] = []
    for codec in media.sent_codecs:
        known = _CODEC_LINES.get(id(codec))
        if known is None or known[0] is not codec:
            # (transcoding makes codec objects of its own per call, not seen again: the
            # table starts over when full)
            known = _CODEC_LINES.add(id(codec), (codec, _lines_of(codec)))
        lines += known[1]
    return lines


def _lines_of(codec: Codec) -> list[Line]:
    lines: list[Line] = []
    if codec.encoding:
        lines.append(Line("a", f"rtpmap:{codec.payload_type} {codec.encoding}"))
    if codec.fmtp:
        lines.append(Line("a", f"fmtp:{codec.payload_type} {codec.fmtp}"))
    lines.extend(Line("a", f"rtcp-fb:{codec.payload_type} {fb}") for fb in codec.rtcp_fb)
    return lines


def _ice_lines(
    media: Media, desc: MediaDescription, opts: RewriteOptions, end_of_candidates: bool
) -> list[Line]:
    """Our credentials and a host candidate per local address (RFC 8839 §5.1); in
    passthrough only the candidates, below the sender's own (rules: :mod:`relayd.calls.ice`).
    ``end_of_candidates``: the sender's section had ``a=end-of-candidates``."""
    lines: list[Line] = []
    agent = ice.takes_part(media)
    if agent:
        lines += [Line("a", f"ice-ufrag:{media.ice_ufrag}"), Line("a", f"ice-pwd:{media.ice_pwd}")]
        if media.trickle:
            lines.append(_ICE_TRICKLE)
    if media.ice and media.local is not None:
        type_pref, first = ice.HOST_TYPE_PREFERENCE, 0
        if media.ice_passthrough:
            theirs = [ice.parse_candidate(v) for v in desc.attributes("candidate")]
            type_pref, first = ice.passthrough_preferences([c for c in theirs if c is not None])
        addresses = [(media.local, media.port), *media.ice_ports]
        components = [1] if media.rtcp_port == media.port else [1, 2]
        for component in components:
            for index, (local, port) in enumerate(addresses):
                foundation = opts.foundations.get(local.local, "0")
                priority = ice.priority(type_pref, first + index, component)
                address = opts.candidate_address or local.advertised
                lines.append(
                    Line(
                        "a",
                        f"candidate:{foundation} {component} UDP {priority} "
                        f"{address} {port + component - 1} typ host",
                    )
                )
    if (agent and media.trickle) or end_of_candidates:
        lines.append(_END_OF_CANDIDATES)
    return lines
