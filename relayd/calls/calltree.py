"""The per-call statistics tree of ``query`` and ``delete`` replies (rtpengine 10.5 keys).

Top level: ``created``, ``created_us``, ``last signal``, ``SSRC``, ``tags``,
``totals``, and ``recording`` while the call records (rtpengine 11's key; 10.5 shows no
recording state). Each tag (an untagged party as ``<untagged N>``) lists its media with
their flags and streams; ``totals`` adds up the streams' counters per RTP/RTCP.

The tags, the bulk of the tree (a dozen keys per stream), are written straight as bencode
text (:class:`relayd.ng.bencode.Encoded`: ``<length>:<key>`` then the value, ``d…e`` a
dictionary, ``l…e`` a list, ``i…e`` a number), in the order of rtpengine's keys: built as
dictionaries and encoded, they were a tenth of an offer-answer-delete cycle
(bench/ng_inprocess.py), written so a third of that. Read as a mapping (a JSON reply, a
test), the text is decoded.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from relayd.calls.codec_plans import media_codecs
from relayd.calls.model import PLAIN, Call, Endpoint, Media, Monologue, Stream
from relayd.ng.bencode import Encoded, string

__all__ = ["call_tree"]

Totals = dict[str, dict[str, int]]


def call_tree(call: Call) -> dict[str, Any]:
    """The ``query`` and ``delete`` reply for ``call``: rtpengine 10.5's statistics tree.

    A party without a tag (a branch no answer named yet) is listed as ``<untagged N>``,
    rtpengine's name for it; ``totals`` adds up the streams the tree lists.
    """
    totals: Totals = {"RTP": _zero(), "RTCP": _zero()}
    tags = ["d"]
    listed: set[str] = set()
    untagged = 0
    for party in call.parties():
        key = party.tag
        if not key:
            untagged += 1
            key = f"<untagged {untagged}>"  # rtpengine's name for an unanswered branch
        entry = _tag(call, party, totals)  # a tag listed already still counts in totals
        if key not in listed:
            listed.add(key)
            tags += (string(key), entry)
    tags.append("e")
    tree = {
        "created": int(call.created),
        "created_us": int((call.created % 1) * 1_000_000),
        "last signal": int(call.last_signal),
        "SSRC": {},
        "tags": Encoded("".join(tags)),
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


def _tag(call: Call, party: Monologue, totals: Totals) -> str:
    entry = f"d3:tag{string(party.tag)}"
    if party.label:
        entry += f"5:label{string(party.label)}"
    entry += f"7:createdi{int(party.created)}e"
    peer_tag = _peer_tag(call, party)
    if peer_tag is not None:
        link = f"ld3:tag{string(peer_tag)}4:type12:offer/answeree"
        entry += f"13:subscriptions{link}11:subscribers{link}"
    if party.aliases:
        entry += f"11:tag-aliases{_list(party.aliases)}"
    peer = call.monologues.get(peer_tag or "")
    medias = "".join([_media(party, m, peer, call, totals) for m in party.medias])
    return f"{entry}6:mediasl{medias}ee"


def _media(
    party: Monologue, media: Media, peer: Monologue | None, call: Call, totals: Totals
) -> str:
    flags = "11:initialized" if party.sent_sdp else ""
    if party.asymmetric:
        flags += "10:asymmetric"
    if media.send:
        flags += "4:send"
    if media.recv:
        flags += "4:recv"
    muxed = media.rtcp_mux and media.peer_rtcp_mux
    if muxed:
        flags += "8:rtcp-mux"
    security = media.security
    if security is not PLAIN:
        if security.dtls_role:
            flags += f"9:DTLS-SRTP{string(f'DTLS role {security.dtls_role}')}"
        if security.srtp_in is not None or security.srtp_out is not None:
            flags += "4:SDES"
        if security.ice_ufrag:
            flags += "3:ICE"
            if security.peer_trickle:
                flags += "11:trickle ICE"
    if party.answerer:
        flags += "15:ICE controlling"
    codecs_in: list[str] = []
    codecs_out: list[str] = []
    if peer is not None and media.index < len(peer.medias):
        codecs_in, codecs_out = media_codecs(media, peer.medias[media.index])
    codecs = ""
    if codecs_in or codecs_out:
        flags += "11:transcoding"  # as 10.5 marks a media it transcodes
        # relayd's own (10.5 reports no codecs): what the party sends, what it is sent
        codecs = f"6:codecsd2:in{_list(codecs_in)}3:out{_list(codecs_out)}e"
    streams = media.streams[:1] if muxed else media.streams
    srtp_out = security.srtp_out
    suite = srtp_out.suite if srtp_out is not None else ""
    entries = "".join([_stream(party, s, suite, call, totals) for s in streams])
    return (
        f"d5:indexi{media.index + 1}e4:type{string(media.type)}"
        f"8:protocol{string(media.protocol)}7:streamsl{entries}e5:flagsl{flags}e{codecs}e"
    )


def _list(items: Iterable[str]) -> str:
    return f"l{''.join([string(item) for item in items])}e"


def _endpoint(ep: Endpoint | None) -> str:
    if ep is None:
        return "de"
    family = "IPv6" if ":" in ep.address else "IPv4"
    return f"d6:family4:{family}7:address{string(ep.address)}4:porti{ep.port}ee"


def _stream(party: Monologue, stream: Stream, suite: str, call: Call, totals: Totals) -> str:
    """One stream's entry; ``suite`` is its media's SRTP suite towards the party ("": none)."""
    flags = "4:RTCP" if stream.rtcp else "3:RTP"
    if stream.endpoint is not None:
        flags += "6:filled"
    if stream.confirmed:
        flags += "9:confirmed"
    if stream.kernelized:
        flags += "10:kernelized"
    if party.strict_source:
        flags += "21:strict source address"
    if party.media_handover:
        flags += "14:media handover"
    if stream.dtls == "connected":
        flags += "25:DTLS fingerprint verified"
    stats = stream.stats
    packets, bytes_, errors = stats.packets, stats.bytes, stats.errors
    bucket = totals["RTCP" if stream.rtcp else "RTP"]
    bucket["packets"] += packets
    bucket["bytes"] += bytes_
    bucket["errors"] += errors
    local = stream.local.local
    entry = (
        f"d10:local porti{stream.port}e13:local address{string(local)}"
        f"6:family4:{'IPv6' if ':' in local else 'IPv4'}"
        f"8:endpoint{_endpoint(stream.endpoint)}"
        f"19:advertised endpoint{_endpoint(stream.advertised_endpoint)}"
        f"11:last packeti{int(stats.last_packet or call.created)}e5:flagsl{flags}e"
        f"5:statsd7:packetsi{packets}e5:bytesi{bytes_}e6:errorsi{errors}ee"
    )
    if suite:
        entry += f"12:crypto suite{string(suite)}"
    # relayd's own keys: how the worker's DTLS and ICE stand (a failure shows here)
    if stream.dtls:
        entry += f"4:DTLS{string(stream.dtls)}"
    if stream.ice:
        entry += f"3:ICE{string(stream.ice)}"
    return entry + "e"
