"""Offer/answer on the call model: which ports, and the rewritten SDP.

Rules (rtpengine's, ng protocol §1.5):

* Who is who (tags, branches, early-media forks) is :mod:`relayd.calls.parties`.
* An SDP sent to party R is rewritten with R's ports: those R will send to.
  Ports are allocated the first time a party needs them and kept across
  re-offers, so a re-INVITE keeps its ports; but a party that moved its address
  or port (in an offer, or in a re-answer from the same answerer: an early-media
  fork taking over is no move) gives its peer new ones, unless ``port-latching``,
  or ICE with that peer (where candidates, not c=, say where a peer is) without
  ``no-port-latching``. New ports towards a party we do ICE with come with new
  ICE credentials.
* Port exhaustion undoes what the message allocated and fails it with
  "Ran out of ports"; a call the message created is removed again (which ports,
  and giving them back: :mod:`relayd.calls.media_ports`).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import replace

from relayd.calls import ice, negotiation, transcoding
from relayd.calls.codec_flags import answer_codecs, offer_codecs
from relayd.calls.interfaces import Interfaces
from relayd.calls.media_ports import MediaPorts, Taken
from relayd.calls.model import Call, Endpoint, Media, Monologue, family_of, is_address
from relayd.calls.origin import origin_fields, stamp_version
from relayd.calls.parties import answerer_of, apply_party_flags, receiver_of_offer, sender_of
from relayd.calls.ports import PortAllocator, PortsExhausted
from relayd.calls.rewrite import DIRECTIONS, PASSTHROUGH_MEDIA, RewriteOptions, rewrite_sdp
from relayd.calls.webrtc import new_foundation
from relayd.ng.message import NgError, Request
from relayd.sdp.codecs import CODEC_ATTRIBUTES, codecs_of
from relayd.sdp.model import (
    Connection,
    Line,
    MediaDescription,
    SdpError,
    Session,
    SessionDescription,
    attribute_value,
)
from relayd.sdp.parse import parse_sdp
from relayd.sdp.write import write_sdp

__all__ = ["Signalling"]


_LEGACY_DIRECTIONS = {"internal": "IP4", "external": "IP6"}
_NO_MUX_POLICY: frozenset[str] = frozenset()
_ZERO_ADDRESSES = frozenset({"0.0.0.0", "::"})
# the attributes of a media section that Signalling._learn reads (the rest: negotiation)
_LEARNED = frozenset({"ptime", "rtcp", "rtcp-mux", *DIRECTIONS})


class Signalling:
    """Offer and answer on a call: who is who, our ports, SRTP/DTLS/ICE, the rewritten SDP.

    ``instance_id`` is the ``loop-protect`` marker written into our SDP (``a=rtpengine``);
    ``fingerprint`` is our DTLS certificate's, as SDP writes it (``sha-256 AB:…``), the
    default; ``fingerprints`` the same per hash function (``{"sha-1": "sha-1 AB:…"}``) for
    the parties that use or ask for another.
    """

    def __init__(
        self,
        interfaces: Interfaces,
        ports: PortAllocator,
        *,
        instance_id: str | None = None,
        sip_source_default: bool = False,
        fingerprint: str = "",
        fingerprints: Mapping[str, str] | None = None,
        dtls_passive: bool = False,
    ) -> None:
        self.interfaces = interfaces
        self.ports = ports
        self.media_ports = MediaPorts(interfaces, ports)
        self.instance_id = instance_id or secrets.token_hex(6)
        self.sip_source_default = sip_source_default
        self.fingerprint = fingerprint  # "sha-256 AB:CD:…" of our DTLS certificate
        self.fingerprints = dict(fingerprints or {})
        if fingerprint:
            self.fingerprints.setdefault(fingerprint.partition(" ")[0].lower(), fingerprint)
        self.dtls_passive = dtls_passive
        # ICE candidate foundations: one per local address for the daemon's life
        self.foundations = {a.local: new_foundation() for a in interfaces.all}

    # -- offer / answer ---------------------------------------------------------------------

    def offer(self, call: Call, req: Request, now: float) -> str:
        """An offer from the ``from-tag`` party: the SDP for its receiver R, with R's ports.

        The receiver is the ``to-tag`` party, the sender's current peer, or the party of the
        offer's ``via-branch``. ``direction`` names each side's interface (or, where no such
        interface exists, rtpengine's legacy internal/external: an address family). With
        ``loop-protect``, an SDP carrying our own marker went through us already: returned as is.
        """
        sdp = self._parse(req)
        if req.has("loop-protect") and self._looped(sdp):
            return req.sdp or ""
        sender = sender_of(call, req.from_tag, now)
        receiver = receiver_of_offer(call, sender, req, now)
        apply_party_flags(sender, req)
        apply_party_flags(receiver, req, received=True)
        receiver.family = req.address_family if req.address_family in ("IP4", "IP6") else ""
        for party, name in zip((sender, receiver), req.direction, strict=False):
            if self.interfaces.has(name):
                party.interface = name
            elif name in _LEGACY_DIRECTIONS:
                # rtpengine's legacy meaning where no such interface is named: families
                party.family = party.family or _LEGACY_DIRECTIONS[name]
        return self._exchange(call, sender, receiver, sdp, req, now, offer=True)

    def answer(self, call: Call, req: Request, now: float) -> str:
        """An answer to the ``from-tag`` party's offer: the SDP for the offerer, with its ports.

        The answerer (``to-tag``) is the branch the offer went to, or an early-media fork of it
        under another tag. A ``from-tag`` that names no party is "Unknown call-id".
        """
        sdp = self._parse(req)
        if req.has("loop-protect") and self._looped(sdp):
            return req.sdp or ""
        receiver = call.monologues.get(req.from_tag)
        if receiver is None:
            raise NgError("Unknown call-id")
        # the same answerer again (not another early-media fork taking over the offerer)
        again = receiver.in_dialogue_with == req.to_tag
        sender = answerer_of(call, receiver, req, now)
        apply_party_flags(sender, req)
        apply_party_flags(receiver, req, received=True)
        call.answered = True
        return self._exchange(call, sender, receiver, sdp, req, now, offer=False, again=again)

    # -- the exchange ---------------------------------------------------------------------------

    def _exchange(
        self,
        call: Call,
        sender: Monologue,
        receiver: Monologue,
        sdp: SessionDescription,
        req: Request,
        now: float,
        *,
        offer: bool,
        again: bool = True,
    ) -> str:
        """Both parties' media for one offer or answer from ``sender``, and the SDP for
        ``receiver``. ``again``: an answer from the party that answered the offerer last (a
        fork that takes over is no party that moved)."""
        sender.sent_sdp = True
        fields = origin_fields(sender, sdp, req)
        family = receiver.family or _known_family(receiver) or self._input_family(sdp)
        flags = req.flags
        latching = "port-latching" in flags
        no_latching = "no-port-latching" in flags
        taken = Taken(self.ports)
        session: Session | None = None
        session_c: Connection | None = None
        session_direction: str | None = None
        try:
            for index, desc in enumerate(sdp.media):
                if desc.media == PASSTHROUGH_MEDIA:
                    self._pass_through(sender, receiver, index, desc)
                    continue
                of = sdp.session_of(index)
                if of is not session:
                    session = of
                    session_c, session_direction = of.connection(), _direction(of.lines)
                moved, restart = self._learn(
                    sender, index, desc, of.lines, session_c, session_direction, req
                )
                target, source = self._receiving(receiver, index, desc), sender.medias[index]
                ice.settle(target, source, req, offer=offer, restart=restart)
                target.keep_zero_address = ice.keeps_zero_address(target, source)
                # without port latching, a peer that moved (in an offer or an answer) makes
                # us give its peer new ports, those in the SDP we write (with ICE towards
                # the receiver, latching is the default: the candidates say where the peer
                # is, not the c= line)
                renew = moved and again and not latching and not (target.ice and not no_latching)
                self._prepare(
                    call,
                    receiver,
                    target,
                    source,
                    desc,
                    family,
                    req,
                    taken,
                    offer=offer,
                    renew=renew,
                )
                # the sender's own ports exist from its offer on, as rtpengine allocates them
                own_family = sender.family or _known_family(sender) or family
                self.media_ports.ensure(call, sender, source, own_family, taken)
                if offer:
                    negotiation.offer(target, source, req, dtls_passive=self.dtls_passive)
                else:
                    negotiation.answer(target, source, req, dtls_passive=self.dtls_passive)
                self.media_ports.ensure_ice(call, target, taken)
                self.media_ports.ensure_ice(call, source, taken)
        except PortsExhausted:
            taken.rollback()
            raise NgError("Ran out of ports") from None
        except Exception:
            taken.rollback()  # the ports this message took go back, whatever went wrong
            raise
        call.last_signal = now
        local = self.media_ports.local_of(call, receiver, family, take_turn=False)
        for i, m in enumerate(receiver.medias[: len(sdp.media)]):
            m.rtcp_mux, shared = self._mux_out(sender, receiver, i, req, offer)
            if m.port:
                m.rtcp_port = m.port if shared else m.port + 1
        address = req.media_address or local.advertised
        opts = RewriteOptions(
            address=address,
            family=family_of(address),
            candidate_address=req.media_address,
            keep_ice=ice.keeps_peer_attributes(req),
            replace=req.replace,
            original_sendrecv="original-sendrecv" in flags,
            rtcp_attribute="none"
            if "no-rtcp-attribute" in flags
            else "full"
            if "full-rtcp-attribute" in flags
            else "short",
            fingerprint=self.fingerprint,
            fingerprints=self.fingerprints,
            sdes_pad="pad" in req.sdes or "pad-crypto" in flags,
            sdes_lifetime="lifetime" in req.sdes,
            foundations=self.foundations,
            generate_mid=offer and "generate-mid" in flags,
            strip_extmap="strip-extmap" in flags,
            answer=not offer,
            loop_marker=self.instance_id if "loop-protect" in flags else "",
            **fields,
        )
        out = rewrite_sdp(sdp, receiver.medias, opts)
        if "sdp-version" in req.replace:
            stamp_version(sender, out)
        return write_sdp(out)

    @staticmethod
    def _parse(req: Request) -> SessionDescription:
        if not req.sdp:
            raise NgError("No SDP body in message")
        try:
            sdp = parse_sdp(req.sdp)
        except SdpError:
            raise NgError("Failed to parse SDP") from None
        incomplete = False  # a media section with a port but no c=, its own or its session's
        for section in sdp.sessions:
            c = section.connection()
            if c is not None and not is_address(c.address):
                raise NgError("Failed to parse SDP")  # a host name where an address must be
        for i, m in enumerate(sdp.media):
            c = m.connection()
            if c is None:
                incomplete = incomplete or (m.port != 0 and sdp.session_of(i).connection() is None)
            elif not is_address(c.address):
                raise NgError("Failed to parse SDP")
        if not sdp.media:
            raise NgError("Error rewriting SDP")
        if incomplete:
            raise NgError("Incomplete SDP specification")
        return sdp

    def _looped(self, sdp: SessionDescription) -> bool:
        marker = self.instance_id
        return any(marker in s.attributes("rtpengine") for s in sdp.sessions) or any(
            marker in m.attributes("rtpengine") for m in sdp.media
        )

    @staticmethod
    def _input_family(sdp: SessionDescription) -> str:
        for desc in sdp.media:
            c = desc.connection() if desc.media != PASSTHROUGH_MEDIA else None
            if c is not None:
                return c.family
        c = sdp.connection()
        return c.family if c is not None else "IP4"

    def _pass_through(
        self, sender: Monologue, receiver: Monologue, index: int, desc: MediaDescription
    ) -> None:
        """An ``m=message`` section (MSRP): both parties' media for it carry no ports of ours
        (given back if it was RTP before); its SDP passes through as it is."""
        for party in (sender, receiver):
            while len(party.medias) <= index:
                party.medias.append(Media(index=len(party.medias), type=desc.media, protocol=""))
            media = party.medias[index]
            if media.port:
                self.media_ports.release(media)
            media.type, media.protocol = desc.media, desc.protocol
            media.passthrough = True
            media.rejected = desc.port == 0
            media.peer_rtcp_mux = False
            media.remote_rtp = media.remote_rtcp = None

    def _learn(
        self,
        sender: Monologue,
        index: int,
        desc: MediaDescription,
        session: list[Line],
        session_c: Connection | None,
        session_direction: str | None,
        req: Request,
    ) -> tuple[bool, bool]:
        """Record what the sender's SDP says about its own media for section ``index``.

        Returns whether the sender moved its media (address or port) since its last SDP,
        and whether it restarted ICE.
        """
        while len(sender.medias) <= index:
            sender.medias.append(
                Media(index=len(sender.medias), type=desc.media, protocol=desc.protocol)
            )
        media = sender.medias[index]
        if media.type != desc.media and media.port:
            self.media_ports.release(media)  # audio → image (T.38) and back: new ports
        media.type, media.protocol = desc.media, desc.protocol
        media.rejected = desc.port == 0
        media.passthrough = False
        # one pass over the section's lines: the codecs' lines, those negotiation reads
        # (SRTP, DTLS, ICE), and the first of each of the attributes read here
        codec_lines: list[str] = []
        secured: list[Line] = []
        ptime: str | None = None
        rtcp: str | None = None
        direction: str | None = None
        rtcp_mux = False
        for ln in desc.lines:
            attr = ln.attr
            if attr in CODEC_ATTRIBUTES:
                codec_lines.append(ln.value)
                continue
            if attr in negotiation.LEARNED:
                secured.append(ln)
            if attr not in _LEARNED:
                continue
            if attr == "ptime":
                if ptime is None:
                    ptime = attribute_value(ln.value)
            elif attr == "rtcp":
                if rtcp is None:
                    rtcp = attribute_value(ln.value)
            elif attr == "rtcp-mux":
                rtcp_mux = True
            elif direction is None:
                direction = attr
        media.codecs = codecs_of(desc, tuple(codec_lines))
        media.ptime = int(ptime) if ptime is not None and ptime.isdigit() else 0
        direction = direction or session_direction
        conn = desc.connection() or session_c
        media.zero_address = conn is not None and conn.is_zero
        restart = negotiation.learn(media, desc, secured, session, conn, req)
        media.send = direction in (None, "sendrecv", "sendonly")
        # a zero connection address is old-style hold (RFC 3264 §8.4): nothing to receive;
        # but not from a trickle ICE agent, which has no candidate yet (RFC 8838 §5.2)
        hold = media.zero_address and not media.trickle
        media.recv = direction in (None, "sendrecv", "recvonly") and not hold
        address = conn.address if conn else ""
        flags = req.flags
        if (
            ("sip-source-address" in flags or self.sip_source_default)
            and "trust-address" not in flags
            and req.received_from
        ):
            address = req.received_from[1]
        rtcp_port = desc.port + 1
        rtcp_words = rtcp.split() if rtcp else []
        if rtcp_words and rtcp_words[0].isdigit():
            rtcp_port = int(rtcp_words[0])
        # an a=rtcp naming the RTP port itself is rtcp-mux as well (rtpengine 10.5 answers
        # such an offer with a=rtcp-mux: the suite's "SRTP w/ DTMF injection"), but not the
        # placeholder of a trickle ICE agent with no candidate yet (port 9, zero address)
        placeholder = media.zero_address or desc.port == 9
        media.peer_rtcp_mux = rtcp_mux or (
            bool(desc.port) and rtcp_port == desc.port and not placeholder
        )
        previous = media.remote_rtp
        if address and desc.port:
            media.remote_rtp = Endpoint(address, desc.port)
            media.remote_rtcp = Endpoint(address, rtcp_port)
        else:
            media.remote_rtp = media.remote_rtcp = None
        for stream in media.streams:
            stream.advertised_endpoint = media.remote_rtcp if stream.rtcp else media.remote_rtp
            if not stream.confirmed:
                stream.endpoint = stream.advertised_endpoint
        current = media.remote_rtp
        if previous is None or current is None:
            return False, restart
        # going on hold with a zero address is no move
        moved_address = (
            previous.address != current.address
            and previous.address not in _ZERO_ADDRESSES
            and current.address not in _ZERO_ADDRESSES
        )
        return previous.port != current.port or moved_address, restart

    @staticmethod
    def _receiving(receiver: Monologue, index: int, desc: MediaDescription) -> Media:
        """The receiving party's media for section ``index``, made if it is new."""
        while len(receiver.medias) <= index:
            receiver.medias.append(
                Media(index=len(receiver.medias), type=desc.media, protocol=desc.protocol)
            )
        return receiver.medias[index]

    def _prepare(
        self,
        call: Call,
        receiver: Monologue,
        media: Media,
        source: Media,
        desc: MediaDescription,
        family: str,
        req: Request,
        taken: Taken,
        *,
        offer: bool,
        renew: bool,
    ) -> None:
        """Give the receiving party ports for ``desc``'s section (its ``media``; the sender's
        is ``source``) and its outgoing view."""
        renew = renew or media.type != desc.media
        media.type = desc.media
        media.rejected = desc.port == 0
        media.passthrough = False
        media.send, media.recv = source.send, source.recv
        media.zero_address = source.zero_address
        offerer_ptime = media.ptime  # in an answer: the offerer's own, from its offer
        # an answer without a=ptime goes back with the offerer's own
        media.ptime = source.ptime or (0 if offer else media.ptime)
        if offer:
            # kept with the party the offer went to: each via-branch answers under the
            # rtcp-mux options of its own offer
            media.mux_policy = frozenset(req.rtcp_mux) if req.rtcp_mux else _NO_MUX_POLICY
            self._offer_codecs(media, source, req)
        elif source.codec_setup is not None:
            # the offer set transcoding up: the answer goes back in the offerer's codecs
            setup = source.codec_setup
            media.sent_codecs = transcoding.answer(
                source.codecs, setup, single=req.has("single-codec")
            )
            if setup.ptime_reverse:
                media.ptime = setup.ptime_reverse
            elif setup.ptime:
                media.ptime = offerer_ptime
        else:
            # what the answerer was offered
            media.sent_codecs = answer_codecs(
                source.codecs,
                source.sent_codecs,
                ops=req.codec,
                single=req.has("single-codec"),
            )
        had = media.port
        self.media_ports.ensure(call, receiver, media, family, taken, renew=renew)
        if had and media.port != had:
            ice.new_ports(media)

    @staticmethod
    def _offer_codecs(media: Media, source: Media, req: Request) -> None:
        """The codecs offered to the receiver (``media``) of the sender's (``source``)
        section: under transcoding where the options ask for it, or where an earlier offer
        set it up (a re-offer without codec options to the same party keeps its
        ``always-transcode`` and accepted codecs; one back from the party that offer went
        to keeps transcoding what it added: :func:`transcoding.offered_back`), else the
        options' plain rules. The offer decides both directions' codec work anew."""
        previous, reverse = media.codec_setup, source.codec_setup
        source.codec_setup = media.codec_setup = None
        if media.type != "audio" or not source.codecs:
            media.sent_codecs = offer_codecs(source.codecs, req.codec)
            return
        if transcoding.requested(req.codec, req.flags, req.ptime, req.ptime_reverse):
            offered = transcoding.offer(
                source.codecs,
                req.codec,
                always=req.has("always-transcode"),
                ptime=req.ptime,
                ptime_reverse=req.ptime_reverse,
            )
            media.sent_codecs = offered.codecs
            setup = replace(offered.setup, offerer_ptime=source.ptime)
            if previous is not None:
                setup = transcoding.carried(setup, previous)
            media.codec_setup = setup
            if req.ptime:
                media.ptime = req.ptime
            return
        earlier = source.sent_codecs  # what an earlier offer to the sender offered it
        media.sent_codecs = offer_codecs(source.codecs, req.codec)
        if previous is not None:
            media.codec_setup = replace(
                previous,
                offerer=transcoding.offerer_codecs(source.codecs, req.codec),
                added=(),
                offerer_ptime=source.ptime,
            )
            if previous.ptime:
                media.ptime = previous.ptime  # the packet time it asked for stays (asked)
        elif reverse is not None:
            back = transcoding.offered_back(reverse, earlier, source.codecs, req.codec)
            if back is not None:
                media.codec_setup = replace(back, offerer_ptime=source.ptime)

    def _mux_out(
        self, sender: Monologue, receiver: Monologue, index: int, req: Request, offer: bool
    ) -> tuple[bool, bool]:
        """Whether to print ``a=rtcp-mux`` towards the receiver, and whether RTCP then
        shares the RTP port (an answer that accepts mux, or ``require``)."""
        source = sender.medias[index]
        if offer:
            target = receiver.medias[index]
            in_use = target.rtcp_mux and target.port and target.rtcp_port == target.port
            if "require" in req.rtcp_mux or in_use:
                # rtcp-mux in use with the receiver stays, without an RTCP port to fall back
                # to: the one it had may be closed already
                return True, True
            if "offer" in req.rtcp_mux:
                return True, False
            return source.peer_rtcp_mux and "demux" not in req.rtcp_mux, False
        target = receiver.medias[index]
        policy = req.rtcp_mux | source.mux_policy
        if "reject" in policy or not target.peer_rtcp_mux:
            return False, False
        accepted = source.peer_rtcp_mux or bool(policy & {"accept", "require", "demux"})
        return accepted, accepted

    def release_call(self, call: Call) -> None:
        self.media_ports.release_call(call)

    def release_medias(self, medias: list[Media]) -> None:
        """Give back the ports of media that left the call (a deleted branch)."""
        for media in medias:
            self.media_ports.release(media)


def _direction(lines: list[Line]) -> str | None:
    for ln in lines:  # (a loop, not next() over a generator: once per offer and answer)
        if ln.attr in DIRECTIONS:  # (only an a= line has an attribute name)
            return ln.attr
    return None


def _known_family(party: Monologue) -> str:
    """The address family of the party's own media, once its SDP has been seen."""
    for media in party.medias:
        if media.remote_rtp is not None:
            return media.remote_rtp.family
    return ""
