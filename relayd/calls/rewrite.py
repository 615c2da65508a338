"""Rewrite an SDP in place the way rtpengine 10.5 does (its ``sdp_replace``).

Rules, in the order they are applied to each media section:

* ``m=``: port → our RTP port for the receiving party (0 stays 0), protocol →
  the outgoing transport, formats → the negotiated payload types.
* ``c=`` lines in the media section → our advertised address (a zero address
  is kept unless ``replace: zero-address``, ICE with the receiver, or a trickle
  ICE placeholder: ``Media.keep_zero_address``).
* Attributes we manage are removed where they stand (``rtpmap``, ``fmtp`` and
  per-PT ``rtcp-fb``, ``ptime``, direction, ``rtcp``, ``rtcp-mux``, the
  sender's ICE attributes unless they pass through (``ICE=optional``, ICE
  passthrough), ``a=end-of-candidates``, our ``a=rtpengine`` marker); every
  other line stays verbatim.
* Then appended: per payload type ``rtpmap``/``fmtp``/``rtcp-fb`` (static
  types included), the direction, ``a=rtcp:PORT``, ``a=rtcp-mux``, ``a=ptime``,
  our ICE credentials and candidates (:mod:`relayd.calls.ice` has the rules),
  ``a=end-of-candidates``.

At session level: ``o=`` only with ``replace: origin``; ``c=`` with
``replace: session-connection`` or when a media section has no ``c=`` of its
own; session direction attributes are consumed (re-emitted per media);
``a=ice-lite`` is added towards a party we are an ICE-lite agent for.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from relayd.calls import ice
from relayd.calls.model import Media
from relayd.sdp.model import Line, MediaDescription, Origin, SessionDescription

__all__ = ["DIRECTIONS", "ICE_ATTRIBUTES", "SECURITY_ATTRIBUTES", "RewriteOptions", "rewrite_sdp"]

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


@dataclass(frozen=True)
class RewriteOptions:
    """What the ng flags ask of this rewrite; per-media facts come from :class:`Media`."""

    address: str  # our advertised address (or the ng ``media address``) for c=, o=, a=rtcp
    family: str  # "IP4" or "IP6" of that address
    candidate_address: str = ""  # the ng ``media address``: every candidate of ours says it
    keep_ice: bool = False  # the sender's ICE attributes go through (ICE=optional)
    replace: frozenset[str] = frozenset()
    original_sendrecv: bool = False
    rtcp_attribute: str = "short"  # "short", "full" or "none"
    loop_marker: str = ""  # a=rtpengine:<marker> when loop-protect is asked for
    origin_user: str | None = None  # replace: username (the dialog's first o= user)
    origin_version: str | None = None  # replace: SDP-version
    session_name: str | None = None  # replace: session-name (the dialog's first s=)
    fingerprint: str = ""  # "sha-256 AB:…" of our DTLS certificate
    foundations: Mapping[str, str] = field(default_factory=dict)  # ICE, per local address
    generate_mid: bool = False
    answer: bool = False


def rewrite_sdp(
    sdp: SessionDescription, medias: list[Media], opts: RewriteOptions
) -> SessionDescription:
    """Return a rewritten copy of ``sdp``; ``medias`` are the receiving party's, by index."""
    lacks_connection = any(m.connection() is None for m in sdp.media)
    replace_session_c = "session-connection" in opts.replace or lacks_connection
    session: list[Line] = []
    for line in sdp.session:
        if line.kind == "o":
            o = Origin.parse(line.value)
            family, address = (
                (opts.family, opts.address) if "origin" in opts.replace else (o.family, o.address)
            )
            line = Line(
                "o",
                str(
                    Origin(
                        opts.origin_user if opts.origin_user is not None else o.username,
                        o.session_id,
                        opts.origin_version if opts.origin_version is not None else o.version,
                        o.network,
                        family,
                        address,
                    )
                ),
            )
        elif line.kind == "s" and opts.session_name is not None:
            line = Line("s", opts.session_name)
        elif line.kind == "c" and replace_session_c:
            # a zero session address is replaced (zero-address) only where it serves as
            # the media's address; next to media c= lines it stays
            zero = line.value.split()[-1] in ("0.0.0.0", "::")
            first = medias[0] if medias else None
            replaced = "zero-address" in opts.replace or (
                first is not None and first.zero_address and not first.keep_zero_address
            )
            if not zero or (replaced and lacks_connection):
                line = Line("c", f"IN {opts.family} {opts.address}")
        elif line.kind == "a" and (
            (line.attr in DIRECTIONS and not opts.original_sendrecv)
            or (line.attr in ICE_ATTRIBUTES and not opts.keep_ice)
            or line.attr in SECURITY_ATTRIBUTES
            # 10.5 does not do BUNDLE: each media section keeps its own ports
            or line.value.startswith("group:BUNDLE")
        ):
            continue
        session.append(line)
    if opts.loop_marker:
        session.append(Line("a", f"rtpengine:{opts.loop_marker}"))
    if medias and medias[0].ice and medias[0].ice_lite_self:
        session.append(Line("a", "ice-lite"))  # RFC 8839 §5.3: a session-level attribute
    out_media = [
        _rewrite_media(desc, medias[i], opts, i) if i < len(medias) else desc
        for i, desc in enumerate(sdp.media)
    ]
    return SessionDescription(session, out_media, sdp.eol)


def _managed(attr: str, media: Media, opts: RewriteOptions) -> bool:
    if attr in ("rtpmap", "fmtp", "rtcp-fb"):
        return bool(media.sent_codecs)
    if attr in DIRECTIONS:
        return not opts.original_sendrecv
    if attr in ("rtcp", "rtcp-mux", "ptime", "mid"):
        return attr != "ptime" or media.ptime > 0
    if attr == "end-of-candidates":
        return True  # written again after our candidates, where it belongs
    if attr in ICE_ATTRIBUTES:
        return not (opts.keep_ice or media.ice_passthrough)
    return attr == "rtpengine" or attr in SECURITY_ATTRIBUTES


def _rewrite_media(
    desc: MediaDescription, media: Media, opts: RewriteOptions, index: int
) -> MediaDescription:
    protocol = media.out_protocol or desc.protocol
    formats = (
        [c.payload_type for c in media.sent_codecs] if media.sent_codecs else list(desc.formats)
    )
    if desc.port == 0 or media.rejected:
        return MediaDescription(
            desc.media,
            0,
            desc.port_count,
            protocol,
            formats,
            list(desc.lines),
        )
    out = MediaDescription(desc.media, media.port, desc.port_count, protocol, formats)
    local = media.local
    for line in desc.lines:
        if line.kind == "c":
            zero = line.value.split()[-1] in ("0.0.0.0", "::")
            replaced = "zero-address" in opts.replace or not media.keep_zero_address
            if local is not None and (not zero or replaced):
                line = Line("c", f"IN {opts.family} {opts.address}")
        elif line.kind == "a" and _managed(line.attr, media, opts):
            if line.attr == "rtcp-fb" and line.value.startswith("rtcp-fb:*"):
                out.lines.append(line)
            continue
        out.lines.append(line)  # lines are not changed once parsed: shared, not copied
    # an answer carries the offerer's own mid (or none), whatever the answerer wrote
    mid = media.mid if opts.answer else (desc.attributes("mid") or [""])[0]
    if not mid and opts.generate_mid:
        mid = str(index + 1)
    if mid:
        out.lines.append(Line("a", f"mid:{mid}"))
    for codec in media.sent_codecs:
        if codec.encoding:
            out.lines.append(Line("a", f"rtpmap:{codec.payload_type} {codec.encoding}"))
        if codec.fmtp:
            out.lines.append(Line("a", f"fmtp:{codec.payload_type} {codec.fmtp}"))
        out.lines.extend(Line("a", f"rtcp-fb:{codec.payload_type} {fb}") for fb in codec.rtcp_fb)
    if not opts.original_sendrecv:
        out.lines.append(Line("a", media.direction))
    if protocol.startswith(("RTP/", "UDP/TLS/RTP/")) and opts.rtcp_attribute != "none":
        rtcp_port = media.rtcp_port or media.port
        if opts.rtcp_attribute == "full" and local is not None:
            out.lines.append(Line("a", f"rtcp:{rtcp_port} IN {opts.family} {opts.address}"))
        else:
            out.lines.append(Line("a", f"rtcp:{rtcp_port}"))
    if media.rtcp_mux:
        out.lines.append(Line("a", "rtcp-mux"))
    out.lines.extend(Line("a", c.value()) for c in media.crypto_out)
    if media.setup:
        out.lines.append(Line("a", f"setup:{media.setup}"))
        out.lines.append(Line("a", f"fingerprint:{opts.fingerprint}"))
    if media.ptime:
        out.lines.append(Line("a", f"ptime:{media.ptime}"))
    out.lines.extend(_ice_lines(media, desc, opts))
    return out


def _ice_lines(media: Media, desc: MediaDescription, opts: RewriteOptions) -> list[Line]:
    """Our credentials and a host candidate per local address (RFC 8839 §5.1); in
    passthrough only the candidates, below the sender's own (rules: :mod:`relayd.calls.ice`)."""
    lines: list[Line] = []
    agent = ice.takes_part(media)
    if agent:
        lines += [Line("a", f"ice-ufrag:{media.ice_ufrag}"), Line("a", f"ice-pwd:{media.ice_pwd}")]
        if media.trickle:
            lines.append(Line("a", "ice-options:trickle"))
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
    if (agent and media.trickle) or desc.has_attribute("end-of-candidates"):
        lines.append(Line("a", "end-of-candidates"))
    return lines
