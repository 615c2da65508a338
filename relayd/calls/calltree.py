"""The per-call statistics tree of ``query`` and ``delete`` replies (rtpengine 10.5 keys).

Top level: ``created``, ``created_us``, ``last signal``, ``SSRC``, ``tags``,
``totals``, and ``recording`` while the call records (rtpengine 11's key; 10.5 shows no
recording state). Each tag (an untagged party as ``<untagged N>``) lists its media with
their flags and streams; ``totals`` adds up the streams' counters per RTP/RTCP.
"""

from __future__ import annotations

from typing import Any

from relayd.calls.codec_plans import media_codecs
from relayd.calls.model import PLAIN, Call, Endpoint, Media, Monologue, Stream

__all__ = ["call_tree"]

Totals = dict[str, dict[str, int]]


def call_tree(call: Call) -> dict[str, Any]:
    """The ``query`` and ``delete`` reply for ``call``: rtpengine 10.5's statistics tree.

    A party without a tag (a branch no answer named yet) is listed as ``<untagged N>``,
    rtpengine's name for it; ``totals`` adds up the streams the tree lists.
    """
    totals: Totals = {"RTP": _zero(), "RTCP": _zero()}
    tags: dict[str, Any] = {}
    untagged = 0
    for party in call.parties():
        key = party.tag
        if not key:
            untagged += 1
            key = f"<untagged {untagged}>"  # rtpengine's name for an unanswered branch
        tags.setdefault(key, _tag(call, party, totals))
    tree = {
        "created": int(call.created),
        "created_us": int((call.created % 1) * 1_000_000),
        "last signal": int(call.last_signal),
        "SSRC": {},
        "tags": tags,
        "totals": totals,
    }
    recording = call.recording
    if recording is not None and recording.active:
        # paused: the files are kept, nothing is written
        tree["recording"] = {
            "call recording": int(recording.on and not recording.paused),
            "forwarding": int("" in recording.forwarding),  # the whole call's
        }
    return tree


def _zero() -> dict[str, int]:
    return {"packets": 0, "bytes": 0, "errors": 0}


def _peer_tag(call: Call, party: Monologue) -> str | None:
    if party.in_dialogue_with is not None:
        return party.in_dialogue_with
    if party.offered_by is not None:
        return party.offered_by
    for branch in call.branches.values():
        if branch.offered_by == party.tag and branch is not party:
            return branch.tag
    return None


def _tag(call: Call, party: Monologue, totals: Totals) -> dict[str, Any]:
    tree: dict[str, Any] = {"tag": party.tag}
    if party.label:
        tree["label"] = party.label
    tree["created"] = int(party.created)
    peer_tag = _peer_tag(call, party)
    if peer_tag is not None:
        link = [{"tag": peer_tag, "type": "offer/answer"}]
        tree["subscriptions"] = link
        tree["subscribers"] = link
    if party.aliases:
        tree["tag-aliases"] = list(party.aliases)
    peer = call.monologues.get(peer_tag or "")
    tree["medias"] = [_media(party, m, peer, call, totals) for m in party.medias]
    return tree


def _media(
    party: Monologue, media: Media, peer: Monologue | None, call: Call, totals: Totals
) -> dict[str, Any]:
    flags = []
    if party.sent_sdp:
        flags.append("initialized")
    if party.asymmetric:
        flags.append("asymmetric")
    if media.send:
        flags.append("send")
    if media.recv:
        flags.append("recv")
    muxed = media.rtcp_mux and media.peer_rtcp_mux
    if muxed:
        flags.append("rtcp-mux")
    security = media.security
    if security is not PLAIN:
        if security.dtls_role:
            flags += ["DTLS-SRTP", f"DTLS role {security.dtls_role}"]
        if security.srtp_in is not None or security.srtp_out is not None:
            flags.append("SDES")
        if security.ice_ufrag:
            flags.append("ICE")
            if security.peer_trickle:
                flags.append("trickle ICE")
    if party.answerer:
        flags.append("ICE controlling")
    codecs_in: list[str] = []
    codecs_out: list[str] = []
    if peer is not None and media.index < len(peer.medias):
        codecs_in, codecs_out = media_codecs(media, peer.medias[media.index])
    if codecs_in or codecs_out:
        flags.append("transcoding")  # as 10.5 marks a media it transcodes
    streams = media.streams[:1] if muxed else media.streams
    srtp_out = security.srtp_out
    suite = srtp_out.suite if srtp_out is not None else ""
    tree: dict[str, Any] = {
        "index": media.index + 1,
        "type": media.type,
        "protocol": media.protocol,
        "streams": [_stream(party, s, suite, call, totals) for s in streams],
        "flags": flags,
    }
    if codecs_in or codecs_out:
        # relayd's own (10.5 reports no codecs): what the party sends, what it is sent
        tree["codecs"] = {"in": codecs_in, "out": codecs_out}
    return tree


def _endpoint(ep: Endpoint | None) -> dict[str, Any]:
    if ep is None:
        return {}
    return {
        "family": "IPv6" if ":" in ep.address else "IPv4",
        "address": ep.address,
        "port": ep.port,
    }


def _stream(
    party: Monologue, stream: Stream, suite: str, call: Call, totals: Totals
) -> dict[str, Any]:
    """One stream's entry; ``suite`` is its media's SRTP suite towards the party ("": none)."""
    flags = ["RTCP" if stream.rtcp else "RTP"]
    if stream.endpoint is not None:
        flags.append("filled")
    if stream.confirmed:
        flags.append("confirmed")
    if stream.kernelized:
        flags.append("kernelized")
    if party.strict_source:
        flags.append("strict source address")
    if party.media_handover:
        flags.append("media handover")
    if stream.dtls == "connected":
        flags.append("DTLS fingerprint verified")
    stats = stream.stats
    packets, bytes_, errors = stats.packets, stats.bytes, stats.errors
    bucket = totals["RTCP" if stream.rtcp else "RTP"]
    bucket["packets"] += packets
    bucket["bytes"] += bytes_
    bucket["errors"] += errors
    local = stream.local
    tree: dict[str, Any] = {
        "local port": stream.port,
        "local address": local.local,
        "family": "IPv6" if ":" in local.local else "IPv4",
        "endpoint": _endpoint(stream.endpoint),
        "advertised endpoint": _endpoint(stream.advertised_endpoint),
        "last packet": int(stats.last_packet or call.created),
        "flags": flags,
        "stats": {"packets": packets, "bytes": bytes_, "errors": errors},
    }
    if suite:
        tree["crypto suite"] = suite
    # relayd's own keys: how the worker's DTLS and ICE stand (a failure shows here)
    if stream.dtls:
        tree["DTLS"] = stream.dtls
    if stream.ice:
        tree["ICE"] = stream.ice
    return tree
