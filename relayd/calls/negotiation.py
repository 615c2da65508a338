"""SRTP/DTLS/ICE negotiation on the call model (pure): what each party's SDP said,
what we write to each party, and the keys the workers need. The rules are in
:mod:`relayd.calls.webrtc` (SRTP, DTLS) and :mod:`relayd.calls.ice` (ICE, which
:func:`relayd.calls.ice.settle` decides)."""

from __future__ import annotations

from collections.abc import Sequence

from relayd.calls.model import Media
from relayd.calls.webrtc import (
    Crypto,
    allowed_suites,
    is_srtp,
    new_crypto,
    parse_crypto,
)
from relayd.ng.message import Request
from relayd.sdp.model import Connection, Line, MediaDescription, attribute_value

__all__ = ["answer", "learn", "offer"]


# attributes whose first value counts, at media level, else at session level
_INHERITED = frozenset({"fingerprint", "setup", "ice-ufrag", "ice-pwd"})
_LEARNED = frozenset({*_INHERITED, "crypto", "candidate", "ice-options", "ice-lite", "mid"})


def _first_values(lines: list[Line], names: frozenset[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for ln in lines:
        if ln.attr in names and ln.attr not in found:
            found[ln.attr] = attribute_value(ln.value)
    return found


def learn(
    media: Media, desc: MediaDescription, session: list[Line], conn: Connection | None
) -> bool:
    """Record the party's own SRTP, DTLS and ICE attributes (media level over session).

    ``conn`` is the media's connection (its own or the session's). Returns whether the
    SDP restarts ICE: a ufrag other than the one before (RFC 8839
    §4.4.1.1.1). One pass over the media's lines (this runs for every media of every
    offer and answer, nearly all of them plain RTP with none of these attributes)."""
    first: dict[str, str] = {}
    crypto: list[Crypto] = []
    candidates: list[str] = []
    trickle = lite = options = False
    for ln in desc.lines:
        attr = ln.attr
        if attr not in _LEARNED:
            continue
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
    media.crypto = tuple(crypto)
    inherited = {name: first.get(name, "") for name in _INHERITED}
    if not all(inherited.values()):
        # a value missing (or empty) at media level is taken from the session level
        above = _first_values(session, _INHERITED)
        inherited = {name: value or above.get(name, "") for name, value in inherited.items()}
    media.peer_fingerprint = inherited["fingerprint"]
    media.peer_setup = inherited["setup"]
    previous = media.peer_ice_ufrag
    media.peer_ice_ufrag = inherited["ice-ufrag"]
    media.peer_ice_pwd = inherited["ice-pwd"]
    media.peer_ice = bool(media.peer_ice_ufrag or candidates)
    media.peer_candidates = tuple(candidates)
    media.peer_ice_lite = lite or any(ln.attr == "ice-lite" for ln in session)
    # RFC 8838 §5.2: an ICE agent with no candidate yet says 0.0.0.0 (or ::) port 9
    media.peer_trickle_address = (
        media.peer_ice and desc.port == 9 and conn is not None and conn.is_zero
    )
    media.peer_trickle = trickle or (media.peer_trickle_address and not options)
    if not media.rejected:
        media.ice, media.trickle = media.peer_ice, media.peer_trickle
    media.mid = first.get("mid", "")
    return bool(previous and media.peer_ice_ufrag and previous != media.peer_ice_ufrag)


def offer(target: Media, source: Media, req: Request, protocol: str) -> None:
    """What we write to the receiver of an offer (``target``) from the offerer's media."""
    target.out_protocol = protocol
    target.crypto_out = ()
    target.setup = ""
    if is_srtp(protocol):
        if "off" not in req.sdes:
            target.crypto_out = tuple(_offer_lines(source.crypto, allowed_suites(req.sdes)))
        if req.dtls != "off":
            target.setup = "actpass"


def _offer_lines(theirs: Sequence[Crypto], suites: list[str]) -> list[Crypto]:
    """The offerer's own lines first, as they were; then a new key for every other suite."""
    lines = list(theirs)
    taken = {c.suite for c in theirs}
    tag = max((c.tag for c in theirs), default=0)
    for suite in suites:
        if suite not in taken:
            tag += 1
            lines.append(new_crypto(tag, suite))
    return lines


def answer(offerer: Media, answerer: Media, req: Request, *, dtls_passive: bool) -> None:
    """What we write back to the offerer, and the keys of both parties once answered.

    ``offerer`` is the offerer's media (the receiver of this answer), ``answerer``
    the media of the party that answered (what we offered it is in its
    ``crypto_out``/``setup``).
    """
    protocol = offerer.protocol if req.transport_protocol != "accept" else answerer.protocol
    offerer.out_protocol = protocol
    offerer.crypto_out, offerer.setup, offerer.dtls_role = (), "", ""
    offerer.srtp_in = offerer.srtp_out = None
    answerer.srtp_in = answerer.srtp_out = None
    answerer.dtls_role = ""
    # the answerer's side: what it took of what we offered it
    if is_srtp(answerer.protocol) and answerer.setup == "actpass" and answerer.peer_fingerprint:
        answerer.dtls_role = "active" if answerer.peer_setup == "passive" else "passive"
    elif answerer.crypto and answerer.crypto_out:
        taken = answerer.crypto[0]
        offered = next((c for c in answerer.crypto_out if c.tag == taken.tag), None)
        if offered is not None and not offered.ours:
            # the answerer took the offerer's own key: SRTP passes through untouched
            offerer.crypto_out = (taken.without_lifetime(),)
            return
        if offered is not None:
            answerer.srtp_in, answerer.srtp_out = taken, offered
    # the offerer's side
    if not is_srtp(protocol):
        pass
    elif offerer.peer_fingerprint and req.dtls != "off":
        offerer.setup = "passive" if (dtls_passive or req.dtls == "passive") else "active"
        offerer.dtls_role = offerer.setup
    elif offerer.crypto and "off" not in req.sdes:
        allowed = allowed_suites(req.sdes)
        theirs = next((c for c in offerer.crypto if c.suite in allowed), None)
        if theirs is not None:
            ours = new_crypto(theirs.tag, theirs.suite)
            offerer.crypto_out = (ours,)
            offerer.srtp_in, offerer.srtp_out = theirs, ours
