"""Rewrite an SDP in place the way rtpengine 10.5 does (its ``sdp_replace``).

Rules, in the order they are applied to each media section:

* ``m=``: port → our RTP port for the receiving party (0 stays 0), protocol →
  the outgoing transport, formats → the negotiated payload types.
* ``c=`` lines in the media section → our advertised address (a zero address
  is kept unless ``replace: zero-address``).
* Attributes we manage are removed where they stand (``rtpmap``, ``fmtp`` and
  per-PT ``rtcp-fb``, ``ptime``, direction, ``rtcp``, ``rtcp-mux``, ICE when
  it is removed, our ``a=rtpengine`` marker); every other line stays verbatim.
* Then appended: per payload type ``rtpmap``/``fmtp``/``rtcp-fb`` (static
  types included), the direction, ``a=rtcp:PORT``, ``a=rtcp-mux``, ``a=ptime``.

``ICE=force-relay`` with a sender that does ICE (``Media.ice_relay``): the m=, c=
and the sender's ICE, DTLS and SDES lines stay (its own relay candidates aside), our
relay candidates are appended; the session's o= address, c= and attributes stay too.

At session level: ``o=`` only with ``replace: origin``; ``c=`` with
``replace: session-connection`` or when a media section has no ``c=`` of its
own; session direction attributes are consumed (re-emitted per media).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from relayd.calls.model import Media
from relayd.calls.webrtc import candidate_priority, relay_preferences
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
    replace: frozenset[str] = frozenset()
    original_sendrecv: bool = False
    rtcp_attribute: str = "short"  # "short", "full" or "none"
    loop_marker: str = ""  # a=rtpengine:<marker> when loop-protect is asked for
    origin_user: str | None = None  # replace: username (the dialog's first o= user)
    origin_version: str | None = None  # replace: SDP-version
    session_name: str | None = None  # replace: session-name (the dialog's first s=)
    fingerprint: str = ""  # "sha-256 AB:…" of our DTLS certificate
    fingerprints: Mapping[str, str] = field(default_factory=dict)  # the same, per hash name
    sdes_pad: bool = False  # SDES-pad / pad-crypto: base64 keys with their "=" padding
    sdes_lifetime: bool = False  # SDES-lifetime: "|2^31" after every key
    foundations: Mapping[str, str] = field(default_factory=dict)  # ICE, per local address
    generate_mid: bool = False
    answer: bool = False


def rewrite_sdp(
    sdp: SessionDescription, medias: list[Media], opts: RewriteOptions
) -> SessionDescription:
    """Return a rewritten copy of ``sdp``; ``medias`` are the receiving party's, by index."""
    lacks_connection = any(m.connection() is None for m in sdp.media)
    # ICE=force-relay passthrough: the session's addresses and attributes stay the sender's
    relay = bool(medias) and medias[0].ice_relay
    replace_session_c = ("session-connection" in opts.replace or lacks_connection) and not relay
    session: list[Line] = []
    for line in sdp.session:
        if line.kind == "o":
            o = Origin.parse(line.value)
            family, address = (
                (opts.family, opts.address)
                if "origin" in opts.replace and not relay
                else (o.family, o.address)
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
            if not zero or ("zero-address" in opts.replace and lacks_connection):
                line = Line("c", f"IN {opts.family} {opts.address}")
        elif (
            line.kind == "a"
            and not relay
            and (
                (line.attr in DIRECTIONS and not opts.original_sendrecv)
                or line.attr in ICE_ATTRIBUTES
                or line.attr in SECURITY_ATTRIBUTES
                # 10.5 does not do BUNDLE: each media section keeps its own ports
                or line.value.startswith("group:BUNDLE")
            )
        ):
            continue
        session.append(line)
    if opts.loop_marker:
        session.append(Line("a", f"rtpengine:{opts.loop_marker}"))
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
    return attr == "rtpengine" or attr in ICE_ATTRIBUTES or attr in SECURITY_ATTRIBUTES


def _rewrite_media(
    desc: MediaDescription, media: Media, opts: RewriteOptions, index: int
) -> MediaDescription:
    if media.ice_relay and desc.port and not media.rejected:
        return _relay_media(desc, media, opts, index)
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
            if local is not None and (not zero or "zero-address" in opts.replace):
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
    out.lines.extend(_codec_lines(media))
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
    out.lines.extend(
        Line("a", c.value(pad=opts.sdes_pad, lifetime=opts.sdes_lifetime)) for c in media.crypto_out
    )
    if media.setup:
        fingerprint = opts.fingerprints.get(media.fingerprint_hash) or opts.fingerprint
        out.lines.append(Line("a", f"setup:{media.setup}"))
        out.lines.append(Line("a", f"fingerprint:{fingerprint}"))
    if media.ptime:
        out.lines.append(Line("a", f"ptime:{media.ptime}"))
    if media.ice_ufrag:
        out.lines.extend(_ice_lines(media, opts))
    elif desc.has_attribute("end-of-candidates"):
        out.lines.append(Line("a", "end-of-candidates"))  # rtpengine keeps this one stray line
    return out


def _relay_media(
    desc: MediaDescription, media: Media, opts: RewriteOptions, index: int
) -> MediaDescription:
    """ICE=force-relay passthrough: the sender's m= and c= lines, ICE, DTLS and SDES
    attributes as they were (its own relay candidates aside), then what we append to any
    section (mid, codecs, direction, rtcp-mux where it is settled) and our relay candidates."""
    out = MediaDescription(desc.media, desc.port, desc.port_count, desc.protocol, desc.formats)
    relays: list[int] = []
    for line in desc.lines:
        attr = line.attr
        if attr == "candidate":
            parts = line.value.split()
            if len(parts) > 7 and parts[7].lower() == "relay":
                if parts[1] == "1" and parts[3].isdigit():
                    relays.append(int(parts[3]))
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
        out.lines.append(Line("a", f"ptime:{media.ptime}"))
    type_pref, local = relay_preferences(relays)
    assert media.local is not None
    addresses = [(media.local, media.port), *media.ice_ports]
    for component in [1] if muxed else [1, 2]:
        for offset, (address, port) in enumerate(addresses):
            foundation = opts.foundations.get(address.local, "0")
            priority = candidate_priority(local + offset, component, type_pref)
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


def _codec_lines(media: Media) -> list[Line]:
    lines: list[Line] = []
    for codec in media.sent_codecs:
        if codec.encoding:
            lines.append(Line("a", f"rtpmap:{codec.payload_type} {codec.encoding}"))
        if codec.fmtp:
            lines.append(Line("a", f"fmtp:{codec.payload_type} {codec.fmtp}"))
        lines.extend(Line("a", f"rtcp-fb:{codec.payload_type} {fb}") for fb in codec.rtcp_fb)
    return lines


def _ice_lines(media: Media, opts: RewriteOptions) -> list[Line]:
    """Our credentials and a host candidate per local address (RFC 8839 §5.1)."""
    lines = [Line("a", f"ice-ufrag:{media.ice_ufrag}"), Line("a", f"ice-pwd:{media.ice_pwd}")]
    trickle = opts.answer and media.peer_trickle
    if trickle:
        lines.append(Line("a", "ice-options:trickle"))
    assert media.local is not None
    addresses = [(media.local, media.port), *media.ice_ports]
    components = [1] if media.rtcp_port == media.port else [1, 2]
    for component in components:
        for index, (local, port) in enumerate(addresses):
            foundation = opts.foundations.get(local.local, "0")
            priority = candidate_priority(index, component)
            lines.append(
                Line(
                    "a",
                    f"candidate:{foundation} {component} UDP {priority} "
                    f"{local.advertised} {port + component - 1} typ host",
                )
            )
    if trickle:
        lines.append(Line("a", "end-of-candidates"))
    return lines
