"""What the workers must do for a call, derived from the call model (pure).

For each media section shared by two parties X and Y, every relay socket of X
sends onwards from Y's socket of the same component: RTP from X arriving on
X's RTP port leaves from Y's RTP port towards Y. A party that uses rtcp-mux
sends RTCP to its RTP port; those packets leave from the other party's RTCP
socket (or its RTP socket if it muxes as well).

Before an offer is answered, media flows one way, as in rtpengine: what the
answerer's side sends to the ports in the offer goes to the offerer's SDP
address (early media racing the SDP of a 183), while nothing goes the other way
(where the answerer is, is not known yet). Only plain RTP: SRTP keys, DTLS
roles and ICE candidates towards the offerer come with the answer; except that
towards a DTLS offerer whose answer makes us active, DTLS starts with the offer
(rtpengine does the same): its sockets send the ClientHello, and carry nothing
else until the handshake or the answer gives them keys.

With ``media-echo`` a party's media goes back to it (from the relay socket it
arrived on) or nowhere, instead of to its peer (:mod:`relayd.calls.parties`).

Where the call transcodes, a party's RTP socket carries the codec plan of what arrives
there (``SocketSpec.codecs``, :mod:`relayd.calls.codec_plans`); a direction with no codec
work, and every RTCP socket, carries none.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any, NamedTuple

from relayd.calls.codec_plans import party_plan
from relayd.calls.ice import parse_candidate
from relayd.calls.media_control import silence_patterns
from relayd.calls.model import PLAIN as PLAIN_SECURITY
from relayd.calls.model import Call, Endpoint, Media, MediaControl, Monologue, Stream
from relayd.calls.webrtc import Crypto
from relayd.ipc import Forward, SocketSpec, socket_key

__all__ = [
    "PLAIN",
    "Handover",
    "after_signalling",
    "dialogue_pairs",
    "media_key",
    "muxes",
    "paired",
    "plan",
    "relay_socket_keys",
    "section_count",
    "streams_by_socket",
    "telephone_events",
    "waits_for_answer",
]


PLAIN = frozenset({"RTP/AVP", "RTP/AVPF"})


def media_key(call_id: str, index: int) -> str:
    return f"{call_id} {index}"


def _endpoint(ep: Endpoint | None) -> str:
    return socket_key(ep.address, ep.port) if ep else ""


def _sdes(line: Crypto | None) -> str:
    return line.inline() if line is not None else ""


_NO_SECURITY: dict[str, str | bool] = {}


def _security(media: Media) -> dict[str, str | bool]:
    """SRTP keys, DTLS role and ICE credentials of the party owning ``media``'s sockets;
    none for plain RTP (the shared empty security: every field at its SocketSpec default),
    so that a plain forward's specs are built from half the keywords."""
    if media.security is PLAIN_SECURITY:
        return _NO_SECURITY
    return {
        "srtp_in": _sdes(media.srtp_in),
        "srtp_out": _sdes(media.srtp_out),
        "dtls": media.dtls_role,
        "dtls_fingerprint": media.peer_fingerprint if media.dtls_role else "",
        "ice_ufrag": media.ice_ufrag,
        "ice_pwd": media.ice_pwd,
        "ice_remote_ufrag": media.peer_ice_ufrag if media.ice_ufrag else "",
        "ice_remote_pwd": media.peer_ice_pwd if media.ice_ufrag else "",
        "ice_controlling": bool(media.ice_ufrag) and media.ice_controlling,
        "ice_lite": bool(media.ice_ufrag) and media.ice_lite_self,
    }


def _passthrough_keys(own: Media, other: Media) -> dict[str, str]:
    """Where SDES passes through untouched (each party holds the other's key, relayd none of
    its own), the keys to take it apart with: what ``own``'s party sends comes with its own
    key, the one we passed to the other party; what goes to it, with the other party's, the
    one we passed to it. Empty where relayd holds keys of its own (or there is no SDES)."""
    if own.srtp_in is not None or not (own.crypto_out and other.crypto_out):
        return {}
    theirs, given = other.crypto_out[0], own.crypto_out[0]
    if theirs.ours or given.ours:
        return {}
    return {"srtp_in": theirs.inline(), "srtp_out": given.inline()}


def _candidates(media: Media, component: int) -> str:
    """The party's ICE candidates of one component, as ``SocketSpec.ice_candidates``."""
    if not media.ice_ufrag:
        return ""
    found = []
    for value in media.peer_candidates:
        c = parse_candidate(value)
        if c is not None and c.component == component and c.transport == "UDP":
            found.append(f"{c.address} {c.port} {c.priority} {component}")
    return ";".join(found)


def muxes(media: Media) -> bool:
    """rtcp-mux both ways: RTCP shares the RTP port on either side."""
    return media.rtcp_mux and media.peer_rtcp_mux


def dialogue_pairs(call: Call) -> Iterator[tuple[Monologue, Monologue]]:
    """The parties in dialogue with each other, each pair once (forks left behind skipped)."""
    seen: set[int] = set()
    for party in call.parties():
        peer_tag = party.in_dialogue_with
        if not party.tag or peer_tag is None or id(party) in seen:
            continue
        peer = call.monologues.get(peer_tag)
        if peer is None or peer is party:
            continue
        if peer.in_dialogue_with != party.tag and peer.in_dialogue_with not in party.aliases:
            # a fork the peer has moved away from: the peer's media now belong to
            # another dialogue, and both would claim the same media key
            continue
        seen.update((id(party), id(peer)))
        yield party, peer


def _early_pair(call: Call) -> tuple[Monologue, Monologue] | None:
    """With no dialogue yet, an offer that waits for its answer: the offerer, and the
    party it went to (the latest branch, if it went out on several)."""
    parties = call.parties()
    for offerer in parties:
        if not (offerer.tag and offerer.sent_sdp):
            continue
        if offerer.in_dialogue_with is not None:
            # an offer with a to-tag: to that party, if it has not answered yet
            peer = call.monologues.get(offerer.in_dialogue_with)
            if peer is not None and peer is not offerer and not peer.sent_sdp:
                return offerer, peer
            continue
        answerer = None
        for party in parties:
            if party.offered_by == offerer.tag and party is not offerer and not party.sent_sdp:
                answerer = party
        if answerer is not None:
            return offerer, answerer
    return None


def _dialogues(call: Call) -> Iterator[tuple[Monologue, Monologue, bool]]:
    """The pairs of parties whose media is forwarded, and whether the pair is early:
    the parties in a dialogue, or else, while an offer waits for its answer, the party
    it went to and the offerer (one way: from the first to the second)."""
    found = False
    for x, y in dialogue_pairs(call):
        found = True
        yield x, y, False
    if not found and (early := _early_pair(call)) is not None:
        offerer, answerer = early
        yield answerer, offerer, True


def _early_dtls(answerer: Media, offerer: Media) -> bool:
    """DTLS towards the offerer started with its offer (we are active): its sockets send the
    ClientHello before the answer. Nothing reaches the offerer in the clear (no key until the
    handshake or the answer), and nothing is sent towards the answerer yet; without ICE."""
    return offerer.dtls_role == "active" and not (offerer.ice_ufrag or answerer.ice_ufrag)


def _plain(media: Media) -> bool:
    """Plain RTP with this party both ways so far: what it sent us and what we wrote it."""
    return (
        media.protocol in PLAIN
        and (media.out_protocol or media.protocol) in PLAIN
        and not (media.ice_ufrag or media.peer_ice or media.crypto or media.crypto_out)
    )


def waits_for_answer(call: Call) -> bool:
    """An offer waits for its answer and has early media to forward: its plan is the
    one-way early one, with at least one plain-RTP section (or DTLS started)."""
    return _early_forwards(next(_dialogues(call), None))


def _early_forwards(first: tuple[Monologue, Monologue, bool] | None) -> bool:
    """Whether the call whose first forwarded pair is ``first`` waits for its answer with
    early media to forward: :func:`plan` would give at least one forward (asked without
    planning one, once per offer)."""
    return first is not None and first[2] and next(_sections(*first), None) is not None


def _starts_dtls(first: tuple[Monologue, Monologue, bool] | None) -> bool:
    """An offer waiting for its answer (``first``: the call's first forwarded pair) starts
    DTLS towards the offerer in some section."""
    if first is None or not first[2]:
        return False
    x, y, _ = first
    return any(
        mx.port and my.port and mx.local and my.local and _early_dtls(mx, my)
        for mx, my in zip(x.medias, y.medias, strict=False)
    )


class Handover(NamedTuple):
    """When the worker hears of a signalled call, and whose unread media it keeps."""

    early: bool  # after EARLY_MEDIA_DELAY, with early media (else with the next batch)
    keep: str  # the party (tag) whose sockets' unread media waits for its forward
    at_once: bool = False  # before the reply: an offer that starts DTLS


def after_signalling(call: Call, command: str, to_tag: str, *, early_pending: bool) -> Handover:
    """After an offer or answer: an offer with early media to forward waits for the early
    batch. An answer that comes before its offer's early forward went out keeps what the
    answerer sent since the offer (it follows the answer's forward); otherwise what no
    worker read is a backlog of ringing, dropped like anything else nobody read.

    An offer that starts DTLS towards the offerer goes to the worker at once, as rtpengine
    sends its ClientHello while it handles the offer: the handshake's round trips are
    call set-up time, and the hello goes out even where the answer then settles on SDES."""
    if command != "offer":
        return Handover(early=False, keep=to_tag if command == "answer" and early_pending else "")
    first = next(_dialogues(call), None)
    at_once = _starts_dtls(first)
    return Handover(early=not at_once and _early_forwards(first), keep="", at_once=at_once)


def paired(call: Call) -> bool:
    """Whether the call has anything to forward: two parties in a dialogue, or an offer
    waiting for its answer (early media)."""
    return next(_dialogues(call), None) is not None


# An early pair's overrides: nothing is sent towards the answerer yet, and nothing is
# learned about it before its SDP says where it is (a stray packet must not become its
# address); the offerer's sockets only send, and what arrives on them stays queued until
# the answer makes them forward (what the offerer sends right after the answer)
_EARLY_ANSWERER: dict[str, Any] = {"learning": "off"}
_EARLY_OFFERER: dict[str, Any] = {"listen": False}
# with DTLS started towards the offerer nothing can reach it before a key: what the
# answerer sends waits unread too, for the answer's forward
_EARLY_DTLS_ANSWERER: dict[str, Any] = {"learning": "off", "listen": False}


def plan(call: Call, silence_detect: float = 0.0, *, dtmf_events: bool = False) -> list[Forward]:
    """One :class:`Forward` per media section that both parties have ports for (early:
    only plain RTP, or DTLS started towards the offerer; SRTP keys, ICE and the rest
    of DTLS towards the offerer come with the answer). ``silence_detect`` (the
    configuration's, percent) goes into every codec plan that may send CN for silence;
    with ``dtmf_events`` (the DTMF event log) each RTP socket's spec names the
    telephone-event payload types its party sends (``SocketSpec.dtmf``)."""
    result: list[Forward] = []
    for x, y, early in _dialogues(call):
        for index, mx, my, plain in _sections(x, y, early):
            answerer = _EARLY_ANSWERER if plain else _EARLY_DTLS_ANSWERER
            x_over = answerer if early else {}
            y_over = _EARLY_OFFERER if early else {}
            if dtmf_events:
                x_over = {**x_over, "dtmf": telephone_events(mx)}
                y_over = {**y_over, "dtmf": telephone_events(my)}
            # SRTP that passes through untouched is decrypted and encrypted again where the
            # engine works on the packets, in either direction (their SSRC changes at least)
            worked = party_plan(x, mx, my) is not None or party_plan(y, my, mx) is not None
            sockets = [
                *_specs(x, mx, my, x_over, call.control, silence_detect, worked),
                *_specs(y, my, mx, y_over, call.control, silence_detect, worked),
            ]
            result.append(Forward(media_key(call.call_id, index), tuple(sockets)))
    return result


def _sections(x: Monologue, y: Monologue, early: bool) -> Iterator[tuple[int, Media, Media, bool]]:
    """The media sections of a pair that get a forward: the index, the two parties' media
    and whether both are plain RTP. Both need ports; an early pair only plain RTP, or DTLS
    started towards the offerer."""
    for index in range(min(len(x.medias), len(y.medias))):
        mx, my = x.medias[index], y.medias[index]
        if not (mx.port and my.port and mx.local and my.local):
            continue
        plain = _plain(mx) and _plain(my)
        if early and not (plain or _early_dtls(mx, my)):
            continue
        yield index, mx, my, plain


def telephone_events(media: Media) -> str:
    """The telephone-event payload types a party may send and their clock rates, as
    ``SocketSpec.dtmf`` writes them ("101/8000 96/16000"): those of its own SDP."""
    found = []
    for codec in media.codecs:
        if codec.name.lower() == "telephone-event" and codec.payload_type.isdigit():
            rate = codec.clock_rate
            found.append(f"{codec.payload_type}/{rate if rate.isdigit() else 8000}")
    return " ".join(found)


def _specs(
    party: Monologue,
    own: Media,
    other: Media,
    overrides: dict[str, Any],
    control: MediaControl | None = None,
    silence_detect: float = 0.0,
    terminate: bool = False,
) -> list[SocketSpec]:
    assert own.local is not None and other.local is not None
    own_rtp = socket_key(own.local.local, own.port)
    own_rtcp = socket_key(own.local.local, own.port + 1)
    other_rtp = socket_key(other.local.local, other.port)
    other_rtcp = other_rtp if muxes(other) else socket_key(other.local.local, other.port + 1)
    common: dict[str, Any] = {
        **_security(own),
        **(_passthrough_keys(own, other) if terminate else {}),
        "learning": party.learning,
        "learn_after": party.learn_after,
        "asymmetric": party.asymmetric,
        "strict": party.strict_source,
        "handover": party.media_handover,
        **overrides,
    }
    if control is not None:
        # block media: the worker reads and counts, sends nothing; silence media: the audio
        # goes on as its codec's silence
        if control.blocks(party):
            common["block"] = True
        elif control.silences(party):
            common["silence"] = silence_patterns(own)
    if party.media_echo == "echo":
        # media-echo: what the party sends comes back to it from the socket it arrived on
        other_rtp, other_rtcp = own_rtp, own_rtp if muxes(own) else own_rtcp
    elif party.media_echo == "blackhole":
        other_rtp = other_rtcp = ""  # the worker reads and counts it, and sends nothing
    # where each component's packets go; the party's ICE candidates on our other
    # addresses (aliases) forward exactly like the primary socket of their component
    # the codec work on what the party sends (relayd/calls/codec_plans.py); none: as it
    # is, and none where it goes back to the party itself or nowhere (media-echo)
    codec_plan = None if party.media_echo else party_plan(party, own, other)
    if codec_plan is not None and codec_plan.cn_out is not None and silence_detect:
        codec_plan = dataclasses.replace(codec_plan, silence_detect=silence_detect)
    rtp_route: dict[str, Any] = {
        "out": other_rtp,
        "out_rtcp": other_rtcp if muxes(own) else "",
        "ice_candidates": _candidates(own, 1),
        "codecs": codec_plan.to_text() if codec_plan is not None else "",
        **common,
    }
    rtcp_route: dict[str, Any] = {
        "out": other_rtcp,
        "rtcp": True,
        # under rtcp-mux the party checks RTP's candidates only (RFC 5761 §5.1.3)
        "ice_candidates": "" if muxes(own) else _candidates(own, 2),
        **common,
        "dtmf": "",  # events come over RTP: the RTCP socket watches for none
    }
    rtcp_expect = own.remote_rtp if muxes(own) else own.remote_rtcp
    # an endpoint confirmed on an ICE candidate of the other family is no use to this socket
    learned = [
        _endpoint(s.endpoint)
        if s.confirmed and s.endpoint and s.endpoint.family == s.local.family
        else ""
        for s in own.streams[:2]
    ]
    learned += [""] * (2 - len(learned))
    kernel = [s.kernelized for s in own.streams[:2]] + [False] * (2 - len(own.streams[:2]))
    specs = [
        SocketSpec(
            own_rtp,
            expect=_endpoint(own.remote_rtp),
            learned=learned[0],
            kernel=kernel[0],
            **rtp_route,
        ),
        SocketSpec(
            own_rtcp,
            expect=_endpoint(rtcp_expect),
            learned=learned[1],
            kernel=kernel[1],
            **rtcp_route,
        ),
    ]
    for local, port in own.ice_ports:
        specs.append(SocketSpec(socket_key(local.local, port), alias_of=own_rtp, **rtp_route))
        specs.append(SocketSpec(socket_key(local.local, port + 1), alias_of=own_rtcp, **rtcp_route))
    return specs


def section_count(call: Call) -> int:
    """How many media sections the call's forwards can have (media keys 0 … n-1): the most
    of any party, current and earlier forked dialogues (asked twice per offer and answer,
    so without building their lists)."""
    count = 0
    for party in call.parties():
        count = max(count, len(party.medias))
        for medias in party.other_dialogues.values():
            count = max(count, len(medias))
    return count


def relay_socket_keys(call: Call, besides: Monologue | None = None) -> list[str]:
    """Every relay socket of the call, both components of each media and ICE candidate
    (our sockets towards ``besides`` left out)."""
    keys: list[str] = []
    for party in call.parties():
        if party is besides:
            continue
        for media in party.medias:
            if media.port and media.local is not None:
                address, port = media.local.local, media.port
                keys += (socket_key(address, port), socket_key(address, port + 1))
            for local, port in media.ice_ports:
                keys += (socket_key(local.local, port), socket_key(local.local, port + 1))
    return keys


def streams_by_socket(call: Call) -> dict[str, Stream]:
    """Each stream of the call under its own (primary) socket's key."""
    return {
        socket_key(stream.local.local, stream.port): stream
        for party in call.parties()
        for media in party.medias
        for stream in media.streams
    }
