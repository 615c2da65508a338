"""ICE towards each party, as rtpengine 10.5 negotiates it in SDP (pure).

Rules (rtpengine's ``ICE``, ``ICE-lite`` and ``trickle ICE`` options; RFC 8445, 8839, 8838):

* One flag per party's media, ``Media.ice``: ICE is in use with that party. When the
  party sends an SDP it becomes whether that SDP had ICE (an ``a=ice-ufrag``). When it
  receives one, the ``ICE`` option decides: ``remove`` clears it; ``force``, ``optional``
  and ``force-relay`` set it; no option (or ``default``) keeps it, and a party that has
  not sent an SDP for this media yet starts from what the sender's SDP had. So a
  re-INVITE without the option keeps what the first one settled.
* Passthrough: under ``optional`` or ``force-relay``, when both parties do ICE, relayd
  stays out of ICE for that media from then on: the sender's ICE attributes go through
  unchanged and our host candidates come after them, below the sender's lowest host
  priority (:func:`passthrough_preferences`), so that the peers prefer each other. An
  answer without ICE under such an option, to an offer relayd did not do ICE with,
  takes ICE away from the offerer too. ``ICE-reject`` takes it from the sender.
* Our credentials towards a party exist while we do ICE with it (not in passthrough).
  They change when the party restarts ICE (a new ufrag, RFC 8839 §4.4.1.1.1) and when
  it gets new ports (:mod:`relayd.calls.signalling`).
* ``ICE-lite`` in an offer says towards whom we are a lite agent (RFC 8445 §2.5):
  ``forward`` the receiver, ``backward`` the offerer, ``both``, ``off`` nobody; without
  the option it stays as it was. ``a=ice-lite`` goes at session level to a lite party
  we do ICE with.
* Roles (RFC 8445 §6.1.1), towards each party: controlling towards a lite peer unless
  we are lite ourselves; otherwise settled when the media first appears or restarts:
  controlled if we are lite, else controlling towards the answerer and controlled
  towards the offerer.
* Trickle ICE (RFC 8838): a party whose SDP has ``a=ice-options:trickle`` (or, with
  ICE, the address 0.0.0.0 or :: port 9), or the receiver of an offer with the
  ``trickle ICE`` flag: our SDP to it says ``a=ice-options:trickle`` and ends our
  candidates with ``a=end-of-candidates``. Such a zero address is no hold.
"""

from __future__ import annotations

from dataclasses import dataclass

from relayd.calls.model import PLAIN, Media
from relayd.calls.webrtc import new_credentials
from relayd.ng.message import Request

__all__ = [
    "HOST_TYPE_PREFERENCE",
    "Candidate",
    "keeps_peer_attributes",
    "keeps_zero_address",
    "new_ports",
    "parse_candidate",
    "passthrough_preferences",
    "priority",
    "settle",
    "takes_part",
]

_SETS_ICE = frozenset({"force", "optional", "force-relay"})
_PASSES_THROUGH = frozenset({"optional", "force-relay"})
HOST_TYPE_PREFERENCE = 126  # RFC 8445 §5.1.2.2
RELAY_TYPE_PREFERENCE = 0


@dataclass(frozen=True, slots=True)
class Candidate:
    """One ``a=candidate`` (RFC 8839 §5.1), the fields relayd uses."""

    foundation: str
    component: int
    transport: str
    priority: int
    address: str
    port: int
    type: str


def parse_candidate(value: str) -> Candidate | None:
    """The value after ``candidate:``; None if malformed."""
    parts = value.split()
    if len(parts) < 8 or parts[6] != "typ":
        return None
    if not (parts[1].isdigit() and parts[3].isdigit() and parts[5].isdigit()):
        return None
    return Candidate(
        parts[0], int(parts[1]), parts[2].upper(), int(parts[3]), parts[4], int(parts[5]), parts[7]
    )


def priority(type_preference: int, local_index: int, component: int) -> int:
    """RFC 8445 §5.1.2.1 with local preference ``65535 - local_index``, in 32 bits.

    rtpengine computes it in unsigned 32-bit arithmetic, so an index past 65535 (only
    passthrough candidates get there) wraps around instead of failing; we write what it
    writes."""
    local = (65535 - local_index) % (1 << 32)
    return ((type_preference << 24) | (local << 8) | (256 - component)) % (1 << 32)


def passthrough_preferences(
    candidates: list[Candidate], kind: str = "host", start: int = HOST_TYPE_PREFERENCE
) -> tuple[int, int]:
    """Type preference and first local index for our candidates of type ``kind`` in
    passthrough (host ones for ``ICE=optional``, relay ones from type preference 0 for
    ``ICE=force-relay``).

    Walks the sender's candidates of that type and component 1 and follows each one at or
    below the lowest priority seen so far: we take its type preference and the local index
    one before its own, or, where its index is already 0, one type preference lower at
    index 65535 (the very bottom of that type)."""
    type_pref, index = start, 0
    lowest = priority(type_pref, index, 1)
    for c in candidates:
        if c.component != 1 or c.type != kind or c.priority > lowest:
            continue
        type_pref = c.priority >> 24
        index = 65535 - ((c.priority >> 8) & 0xFFFF)
        if index:
            index -= 1
        else:
            type_pref = max(type_pref - 1, 0)
            index = 65535
        lowest = priority(type_pref, index, 1)
    return type_pref, index


def takes_part(media: Media) -> bool:
    """relayd is an ICE agent towards the party of ``media`` (credentials, checks)."""
    return media.ice and not media.ice_passthrough


def settle(receiver: Media, sender: Media, req: Request, *, offer: bool, restart: bool) -> None:
    """ICE for the receiver of an SDP (offer or answer) and its sender, by the module's rules.

    ``restart``: the sender's SDP restarted ICE (its ufrag changed)."""
    option = req.ice or "default"
    if not receiver.initialized:
        receiver.ice = sender.ice
    if option == "remove":
        receiver.ice = False
    elif option in _SETS_ICE:
        receiver.ice = True
    flags = req.flags
    if "ice-reject" in flags or "reject-ice" in flags:
        sender.ice = False
    if offer and "trickle-ice" in flags:
        receiver.trickle = True
    if restart:
        sender.ice_ufrag = sender.ice_pwd = ""  # an ICE restart: new credentials of ours too
    if option in _PASSES_THROUGH:
        if receiver.ice and sender.ice:
            receiver.ice_passthrough = sender.ice_passthrough = True
            _finish(receiver, sender)
            return
        if not offer and not sender.ice and not receiver.ice_ufrag:
            # an answer refusing the ICE an offer under this option passed through
            receiver.ice = False
            _finish(receiver, sender)
            return
    if req.ice and option not in _PASSES_THROUGH:
        # another option named (remove, force, ...): the peers no longer do ICE end to end
        receiver.ice_passthrough = sender.ice_passthrough = False
    if offer:
        if req.ice_lite in ("forward", "both"):
            receiver.ice_lite_self = True
        elif req.ice_lite in ("backward", "off"):
            receiver.ice_lite_self = False
        if req.ice_lite in ("backward", "both"):
            sender.ice_lite_self = True
        elif req.ice_lite in ("forward", "off"):
            sender.ice_lite_self = False
    # the receiver: we offer to it (controlling) or answer it (controlled), the sender
    # the other way round
    _role(receiver, fresh=restart or not receiver.initialized, controlling=offer)
    _role(sender, fresh=restart or not sender.initialized, controlling=not offer)
    _finish(receiver, sender)


def _role(media: Media, *, fresh: bool, controlling: bool) -> None:
    if media.peer_ice_lite and not media.ice_lite_self:
        media.ice_controlling = True
    elif fresh:
        media.ice_controlling = controlling and not media.ice_lite_self


def _finish(receiver: Media, sender: Media) -> None:
    """Credentials of ours towards both parties: made once ICE with the party starts (the
    sender's too: checks may come before the answer), dropped when it ends."""
    sender.initialized = True
    for media in (receiver, sender):
        if media.security is PLAIN:
            continue  # plain RTP: no ICE, no credentials of ours (nothing to drop)
        if not takes_part(media):
            media.ice_ufrag = media.ice_pwd = ""
        elif not media.ice_ufrag:
            media.ice_ufrag, media.ice_pwd = new_credentials()


def new_ports(media: Media) -> None:
    """The party got new ports from us: new candidates, so new credentials (an ICE restart)."""
    if media.ice_ufrag:
        media.ice_ufrag, media.ice_pwd = new_credentials()


def keeps_zero_address(receiver: Media, sender: Media) -> bool:
    """Our SDP to ``receiver`` keeps the sender's zero connection address (old-style hold)
    instead of ours: not towards a party we do ICE with, and not for a trickle ICE agent's
    placeholder (RFC 8838 §5.2)."""
    if not sender.zero_address or receiver.ice:
        return False
    return not (sender.peer_trickle_address and sender.trickle)


def keeps_peer_attributes(req: Request) -> bool:
    """The sender's own ICE attributes go through (``optional``, ``force-relay``), at
    session level always, at media level as well as in passthrough."""
    return (req.ice or "default") in _PASSES_THROUGH
