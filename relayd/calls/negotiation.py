"""SRTP/DTLS/ICE negotiation on the call model (pure): what each party's SDP said,
what we write to each party, and the keys the workers need. The rules are in
:mod:`relayd.calls.webrtc` (SRTP, DTLS) and :mod:`relayd.calls.ice` (ICE, which
:func:`relayd.calls.ice.settle` decides); the choices here follow rtpengine 10.5:

* The transport towards the receiver of an offer: ``transport-protocol`` if given
  (for RTP media), else the offerer's own; a re-offer whose offerer kept its
  transport keeps what the receiver had (an earlier override, or what it answered).
  ``OSRTP-offer`` turns plain RTP/AVP(F) into opportunistic SRTP (RFC 8643).
* The transport towards the offerer, in an answer: the offerer's own, unless the
  answerer changed what we offered it: then, for an OSRTP offerer whose answerer
  stayed plain, plain RTP (SRTP to the offerer only with ``OSRTP-accept``); else the
  answerer's with ``transport-protocol=accept``. A ``transport-protocol`` in the
  answer overrides both.
* DTLS and SDES towards a party are decided once: the first SRTP offer towards it
  takes them from ``DTLS=off``/``SDES-off``; from then on its own SDPs do (a=crypto
  turns SDES on, a=setup with a=fingerprint turns DTLS on or off). An answer towards
  a DTLS offerer uses DTLS (SDES then stays off for it) unless it also offered SDES and
  ``DTLS=off`` is asked for.
* SDES keys stay across re-offers and re-answers: an answer keeps our line towards the
  offerer while its suite stays the same (``SDES-static``: also while its tag and suite
  are still offered), an offer re-adds the line the receiver took before.
* ``SDES-no-<suite>`` drops that suite from the party's own lines as well.
* ``ICE=force-relay`` towards a sender that does ICE is passthrough: its ICE, DTLS and
  SDES are not ours, the receiver gets them as they were plus our relay candidates.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from relayd.calls.model import PLAIN, Media
from relayd.calls.webrtc import (
    FINGERPRINT_HASHES,
    OSRTP_CAPABLE,
    Crypto,
    allowed_suites,
    is_rtp,
    is_srtp,
    new_crypto,
    parse_crypto,
)
from relayd.ng.message import Request
from relayd.sdp.model import Connection, Line, MediaDescription, attribute_value

__all__ = ["LEARNED", "answer", "learn", "offer"]


# attributes whose first value counts, at media level, else at session level
_INHERITED = frozenset({"fingerprint", "setup", "ice-ufrag", "ice-pwd"})
LEARNED = frozenset({*_INHERITED, "crypto", "candidate", "ice-options", "ice-lite", "mid"})
"""The media-level attributes :func:`learn` reads."""
_SESSION_LEARNED = frozenset({*_INHERITED, "ice-lite"})
_DTLS_SETUPS = frozenset({"actpass", "active", "passive"})


def _first_values(lines: list[Line], names: frozenset[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for ln in lines:
        if ln.attr in names and ln.attr not in found:
            found[ln.attr] = attribute_value(ln.value)
    return found


def _fingerprint_hash(fingerprint: str) -> str:
    """The hash name of an ``a=fingerprint`` value, "" if rtpengine does not know it."""
    name = fingerprint.partition(" ")[0].lower()
    return name if name in FINGERPRINT_HASHES else ""


def learn(
    media: Media,
    desc: MediaDescription,
    lines: list[Line],
    session: list[Line],
    conn: Connection | None,
    req: Request,
) -> bool:
    """Record the party's own SRTP, DTLS and ICE attributes (media level over session).

    ``lines`` are the section's lines with one of the :data:`LEARNED` attributes, in order
    (the caller picks them out in its one pass over the section: this runs for every media
    of every offer and answer, nearly all of them plain RTP with none of these attributes).
    ``conn`` is the media's connection (its own or the session's). Returns whether the
    SDP restarts ICE: a ufrag other than the one before (RFC 8839 §4.4.1.1.1)."""
    first: dict[str, str] = {}
    crypto: list[Crypto] = []
    candidates: list[str] = []
    trickle = lite = options = False
    for ln in lines:
        attr = ln.attr
        value = attribute_value(ln.value)
        if attr == "crypto":
            parsed = parse_crypto(value)
            if parsed is not None:
                crypto.append(parsed)
        elif attr == "candidate":
            candidates.append(value)
        elif attr == "ice-options":
            options = True
            trickle = trickle or "trickle" in value
        elif attr == "ice-lite":
            lite = True
        elif attr not in first:
            first[attr] = value
    fingerprint_value = first.get("fingerprint", "")
    setup = first.get("setup", "")
    ufrag = first.get("ice-ufrag", "")
    pwd = first.get("ice-pwd", "")
    if not (fingerprint_value and setup and ufrag and pwd and lite):
        # a value missing (or empty) at media level is taken from the session level
        above = _first_values(session, _SESSION_LEARNED)
        fingerprint_value = fingerprint_value or above.get("fingerprint", "")
        setup = setup or above.get("setup", "")
        ufrag = ufrag or above.get("ice-ufrag", "")
        pwd = pwd or above.get("ice-pwd", "")
        lite = lite or "ice-lite" in above
    if media.security is PLAIN and not (
        crypto or candidates or options or lite or fingerprint_value or setup or ufrag or pwd
    ):
        # plain RTP, nearly every media: what this SDP says is what the shared empty
        # MediaSecurity holds (no keys, no DTLS, no ICE), so nothing of it is written
        media.mid = first.get("mid", "")
        media.protocol_changed = desc.protocol != media.protocol_seen
        media.protocol_seen = desc.protocol
        return False
    if crypto and any(flag.startswith("no-") for flag in req.sdes):
        allowed = set(allowed_suites(req.sdes))
        media.crypto = tuple(c for c in crypto if c.suite in allowed)
    else:
        media.crypto = tuple(crypto)
    media.peer_fingerprint = fingerprint_value
    media.peer_setup = setup
    previous = media.peer_ice_ufrag
    media.peer_ice_ufrag = ufrag
    media.peer_ice_pwd = pwd
    media.peer_ice = bool(ufrag or candidates)
    media.peer_candidates = tuple(candidates)
    media.peer_ice_lite = lite
    # RFC 8838 §5.2: an ICE agent with no candidate yet says 0.0.0.0 (or ::) port 9
    media.peer_trickle_address = (
        media.peer_ice and desc.port == 9 and conn is not None and conn.is_zero
    )
    media.peer_trickle = trickle or (media.peer_trickle_address and not options)
    if not media.rejected:
        media.ice, media.trickle = media.peer_ice, media.peer_trickle
    media.mid = first.get("mid", "")
    fingerprint = bool(_fingerprint_hash(fingerprint_value))
    if desc.port:
        media.uses_dtls = fingerprint and setup in _DTLS_SETUPS
        media.uses_sdes = media.uses_sdes or bool(crypto)
    media.osrtp = desc.protocol in OSRTP_CAPABLE and (fingerprint or bool(crypto))
    seen = desc.protocol + ("+osrtp" if media.osrtp else "")
    media.protocol_changed = seen != media.protocol_seen
    media.protocol_seen = seen

    return bool(previous and media.peer_ice_ufrag and previous != media.peer_ice_ufrag)


def _choose_fingerprint(media: Media, req: Request | None = None) -> None:
    """The hash of the fingerprint we show this party, fixed once shown: ``DTLS-fingerprint``
    of the offer, else the hash the party used itself, else sha-256."""
    if media.fingerprint_hash:
        return
    asked = req.dtls_fingerprint if req is not None else ""
    media.fingerprint_hash = (
        (asked if asked in FINGERPRINT_HASHES else "")
        or _fingerprint_hash(media.peer_fingerprint)
        or FINGERPRINT_HASHES[0]
    )


def _offer_protocol(target: Media, source: Media, req: Request) -> tuple[str, bool]:
    """The transport we offer the receiver, and whether it is OSRTP."""
    if req.transport_protocol and is_rtp(source.protocol):
        protocol, osrtp = req.transport_protocol, False
    elif source.protocol_changed or not target.out_protocol:
        protocol, osrtp = source.protocol, source.osrtp
    else:
        protocol, osrtp = target.out_protocol, target.out_osrtp  # an earlier choice stays
    if "offer" in req.osrtp and protocol in OSRTP_CAPABLE:
        osrtp = True
    return protocol, osrtp


def _relay(receiver: Media, sender: Media, req: Request) -> bool:
    """``ICE=force-relay`` with a sender that does ICE: nothing of its ICE, DTLS or SDES is
    ours to terminate (rtpengine's passthrough); the receiver gets the sender's SDP with our
    relay candidates added. Returns whether that is the case."""
    relay = req.ice == "force-relay" and sender.peer_ice
    if relay != receiver.ice_relay:  # (no write where it stays: plain media share theirs)
        receiver.ice_relay = relay
    if not relay:
        return False
    receiver.out_protocol, receiver.out_osrtp = sender.protocol, sender.osrtp
    receiver.crypto_out, receiver.setup, receiver.dtls_role = (), "", ""
    receiver.srtp_in = receiver.srtp_out = sender.srtp_in = sender.srtp_out = None
    sender.dtls_role = ""
    receiver.ice_ufrag = receiver.ice_pwd = ""
    return True


def offer(target: Media, source: Media, req: Request, *, dtls_passive: bool = False) -> None:
    """What we write to the receiver of an offer (``target``) from the offerer's media.

    Towards a DTLS offerer whose answer will make us active, DTLS starts with the offer
    (``source.dtls_role``, as rtpengine starts it): the answer confirms or replaces it."""
    if _relay(target, source, req):
        return
    target.out_protocol, osrtp = _offer_protocol(target, source, req)
    previous = target.crypto_out
    if osrtp or target.security is not PLAIN:  # a plain media holds these defaults
        target.out_osrtp = osrtp
        target.crypto_out = ()
        target.setup = ""
    if is_srtp(target.out_protocol) or target.out_osrtp:
        if not (target.uses_dtls or target.uses_sdes):
            target.uses_dtls = req.dtls != "off"
            target.uses_sdes = "off" not in req.sdes
        if target.uses_sdes:
            suites = allowed_suites(req.sdes)
            target.crypto_out = tuple(_offer_lines(source.crypto, previous, suites))
        if target.uses_dtls:
            target.setup = "actpass"
            _choose_fingerprint(target, req)
    elif target.security is not PLAIN:
        target.uses_dtls = target.uses_sdes = False
    # DTLS-reverse=passive (or a role kept from before): passive towards an actpass offerer
    prefer_passive = req.dtls_reverse == "passive" or (
        source.dtls_role == "passive" and req.dtls_reverse != "active"
    )
    if prefer_passive != source.prefer_passive:
        source.prefer_passive = prefer_passive
    if (
        source.uses_dtls
        and req.dtls != "off"
        and not source.dtls_role
        and _answer_setup(source, req, dtls_passive) == "active"
    ):
        source.dtls_role = "active"


def _offer_lines(
    theirs: Sequence[Crypto], previous: Sequence[Crypto], suites: list[str]
) -> list[Crypto]:
    """The offerer's own lines first, as they were; then our earlier lines for suites it
    does not offer (same keys, tags moved above its own); then a new key for every
    other suite."""
    lines = list(theirs)
    taken = {c.suite for c in theirs}
    tag = max((c.tag for c in theirs), default=0) + 1
    for line in previous:
        if line.suite in taken:
            continue
        line = line if line.tag >= tag else dataclasses.replace(line, tag=tag)
        tag = line.tag + 1
        lines.append(line)
        taken.add(line.suite)
    for suite in suites:
        if suite not in taken:
            lines.append(new_crypto(tag, suite))
            tag += 1
    return lines


def _answer_protocol(offerer: Media, answerer: Media, req: Request) -> tuple[str, bool]:
    """The transport we answer the offerer with, and whether it is OSRTP."""
    protocol, osrtp = offerer.protocol, offerer.osrtp
    offered = (answerer.out_protocol, answerer.out_osrtp)
    if (answerer.protocol, answerer.osrtp) != offered:
        if answerer.protocol in OSRTP_CAPABLE and not answerer.osrtp and offerer.osrtp:
            # RFC 8643 §3: the answerer declined opportunistic SRTP
            if "accept" not in req.osrtp:
                protocol, osrtp = answerer.protocol, False
        elif req.protocol_accept:
            protocol, osrtp = answerer.protocol, answerer.osrtp
    if req.transport_protocol and is_rtp(answerer.protocol):
        protocol, osrtp = req.transport_protocol, False
    return protocol, osrtp


def answer(offerer: Media, answerer: Media, req: Request, *, dtls_passive: bool) -> None:
    """What we write back to the offerer, and the keys of both parties once answered.

    ``offerer`` is the offerer's media (the receiver of this answer), ``answerer``
    the media of the party that answered (what we offered it is in its
    ``crypto_out``/``setup``).
    """
    if _relay(offerer, answerer, req):
        return
    protocol, osrtp = _answer_protocol(offerer, answerer, req)
    # the answerer's transport is its own from now on (a re-offer keeps it)
    answerer.out_protocol = answerer.protocol
    offerer.out_protocol = protocol
    previous = offerer.crypto_out
    # (plain media, nearly all, hold the defaults these reset to: nothing to write)
    if answerer.security is not PLAIN:
        answerer.out_osrtp = answerer.osrtp
        answerer.srtp_in = answerer.srtp_out = None
        answerer.dtls_role = ""
    if osrtp or offerer.security is not PLAIN:
        offerer.out_osrtp = osrtp
        offerer.crypto_out, offerer.setup, offerer.dtls_role = (), "", ""
        offerer.srtp_in = offerer.srtp_out = None
    # the answerer's side: what it took of what we offered it
    secure = is_srtp(answerer.protocol) or answerer.osrtp
    taken = answerer.crypto[0] if answerer.crypto else None
    if secure and answerer.setup == "actpass" and answerer.peer_fingerprint:
        answerer.dtls_role = "active" if answerer.peer_setup == "passive" else "passive"
    elif taken is not None:
        offered = next(
            (c for c in answerer.crypto_out if c.tag == taken.tag and c.suite == taken.suite),
            None,
        )
        answerer.crypto_out = (offered,) if offered is not None else ()
        if offered is not None and offered.ours:
            answerer.srtp_in, answerer.srtp_out = taken, offered
    # the offerer's side
    if not (is_srtp(protocol) or osrtp):
        if offerer.security is not PLAIN:
            offerer.uses_dtls = offerer.uses_sdes = False
    elif offerer.uses_dtls and not (offerer.uses_sdes and req.dtls == "off"):
        offerer.uses_sdes = False
        offerer.setup = _answer_setup(offerer, req, dtls_passive)
        offerer.dtls_role = offerer.setup
        _choose_fingerprint(offerer)
    elif offerer.uses_sdes:
        ours = _answer_line(offerer.crypto, taken, previous, static="static" in req.sdes)
        if ours is not None:
            offerer.crypto_out = (ours,)
            if ours.ours:
                theirs = next((c for c in offerer.crypto if c.suite == ours.suite), None)
                offerer.srtp_in, offerer.srtp_out = theirs, ours
            else:
                # both parties hold each other's keys: SRTP passes through untouched
                answerer.srtp_in = answerer.srtp_out = None


def _answer_setup(offerer: Media, req: Request, dtls_passive: bool) -> str:
    """Our a=setup towards a DTLS offerer: active where it lets us (RFC 5763 §5), passive
    when it said active, or with ``DTLS=passive``, ``dtls-passive`` or DTLS-reverse."""
    if offerer.peer_setup == "active":
        return "passive"
    if offerer.peer_setup == "passive":
        return "active"
    if dtls_passive or req.dtls == "passive" or offerer.prefer_passive:
        return "passive"
    return "active"


def _answer_line(
    theirs: Sequence[Crypto],
    taken: Crypto | None,
    previous: Sequence[Crypto],
    *,
    static: bool,
) -> Crypto | None:
    """Our one a=crypto line towards an SDES offerer.

    The suite is the one the answerer took if the offerer offered it too (its line then
    passes through under the offerer's tag), else the offerer's first. Our earlier line
    stays while its suite does; with ``SDES-static`` also while the offerer still offers
    its tag and suite, whatever the answerer took."""
    ours = previous[0] if previous else None
    chosen = theirs[0] if theirs else None
    kept = (
        static
        and ours is not None
        and any(c.suite == ours.suite and c.tag == ours.tag for c in theirs)
    )
    if not kept and taken is not None:
        chosen = next((c for c in theirs if c.suite == taken.suite), chosen)
    if chosen is None or (ours is not None and ours.suite == chosen.suite):
        return ours
    if taken is not None and taken.suite == chosen.suite:
        return dataclasses.replace(taken, tag=chosen.tag, ours=False)
    fresh = new_crypto(chosen.tag, chosen.suite)
    return dataclasses.replace(fresh, session_params=chosen.session_params)
