"""The worker's crypto branch: SRTP, DTLS-SRTP and ICE on relay sockets.

Plain sockets never come here: the loop sends a socket down this branch only
if it, or a socket it forwards to, has crypto (``MediaSocket.crypto``, set when
a ``Forward`` is applied), so plain RTP keeps its own loop untouched.

Rules:

* One port carries STUN, DTLS and SRTP, told apart by the first byte
  (RFC 7983 §7): 0–3 STUN, 20–63 DTLS, 128–191 RTP/RTCP; anything else is
  dropped and counted. RTCP is told from RTP by payload type 200–204
  (RFC 5761 §4); a non-muxed RTCP socket takes everything as RTCP.
* A socket whose party sends SRTP (``srtp_in`` or DTLS) unprotects every
  packet *before* endpoint learning sees it: a packet that fails (no key yet,
  authentication, replay) is dropped and counted, and can neither be forwarded
  nor move the endpoint.
* A socket whose party expects SRTP (``srtp_out`` or DTLS) protects what it
  sends; until it has a key (DTLS still connecting, or failed) nothing is sent
  to that party, never plain RTP.
* DTLS keys, once the handshake completes, replace the SDES keys of the socket.
  An ``active`` socket sends its ClientHello as soon as the party's endpoint is
  known (with ICE: nominated), and retransmits on the endpoint's timer;
  handshake records go to where the party's DTLS came from, else to its endpoint.
* A nominated ICE pair latches the party's endpoint (confirmed). A later
  ``Forward`` with the same credentials keeps the agent (its pairs, role and
  nomination) and adds the party's new candidates. The agents' checks
  (:mod:`relayd.worker.ice`) run on the same timers as DTLS.
* ICE candidates on several local addresses (alias sockets, ``MediaSocket.primary``)
  are one stream: each answers its own checks, but the DTLS association and the
  SRTP sessions are the primary socket's, whichever candidate carries them. A
  peer may nominate several pairs (aggressive nomination) or move between them:
  there is still one handshake, one key set and one replay window, and DTLS
  records go out from the candidate the party's DTLS last came in on (``via``).
"""

from __future__ import annotations

import socket

from relayd import ipc
from relayd.certificate import CertificateError
from relayd.log import get_logger
from relayd.worker.dtls import Closed, Connected, DtlsContext, DtlsEndpoint, DtlsEvent, Failed
from relayd.worker.ice import IceAgent, parse_candidates
from relayd.worker.session import Leg, Verdict
from relayd.worker.silence import silence
from relayd.worker.sockets import Address, MediaSocket, SecureConfig, SecureSocket
from relayd.worker.srtp import PacketBuffer, SrtpError, SrtpSession, parse_sdes
from relayd.worker.transcoding import outgoing

__all__ = ["SecurePath"]

log = get_logger("relayd.worker")

_UNSPECIFIED = frozenset({"0.0.0.0", "::"})


class SecurePath:
    """Everything a worker needs for crypto sockets: one packet buffer, DTLS timers."""

    def __init__(self, worker: int, recv_size: int, batch: int) -> None:
        self.worker = worker
        self.recv_size = recv_size
        self.batch = batch
        self.buf = PacketBuffer(recv_size)
        self.context: DtlsContext | None = None
        # sockets whose DTLS endpoint or ICE agent has a timer
        self.timers: set[MediaSocket] = set()

    def set_certificate(self, pem: str, key_pem: str) -> None:
        """Use relayd's DTLS certificate for the DTLS endpoints made from now on. Empty or
        unusable (logged): no DTLS, and such sockets report ``failed: no certificate``."""
        if not pem:
            self.context = None
            return
        try:
            self.context = DtlsContext(pem, key_pem)
        except (CertificateError, ValueError) as exc:
            self.context = None
            log.error("dtls.bad_certificate", worker=self.worker, error=str(exc))

    # -- configuration ------------------------------------------------------------------------

    def configure(self, ms: MediaSocket, spec: ipc.SocketSpec) -> None:
        """Apply a SocketSpec's crypto fields; keeps what did not change."""
        config = SecureConfig.of(spec)
        old = ms.secure
        if config.empty:
            self.forget(ms)
            ms.secure = None
            return
        if old is not None and old.config == config:
            self._keep_nomination(ms, old)
            return
        sec = SecureSocket(config)
        key = ms.leg.key
        # an unchanged SDES key keeps its session: its rollover counter and replay window
        # must survive a re-INVITE (RFC 3711 §3.3.1)
        sdes_old = (
            old if old is not None and not (old.dtls and old.dtls.phase == "connected") else None
        )
        for text, inbound in ((config.srtp_in, True), (config.srtp_out, False)):
            if not text:
                continue
            if sdes_old is not None and text == (
                sdes_old.config.srtp_in if inbound else sdes_old.config.srtp_out
            ):
                session = sdes_old.srtp_in if inbound else sdes_old.srtp_out
            else:
                try:
                    session = SrtpSession(parse_sdes(text), inbound=inbound)
                except SrtpError as exc:
                    log.error("srtp.bad_key", worker=self.worker, key=key, error=str(exc))
                    continue
            if inbound:
                sec.srtp_in = session
            else:
                sec.srtp_out = session
        same_dtls = old is not None and (old.config.dtls, old.config.dtls_fingerprint) == (
            config.dtls,
            config.dtls_fingerprint,
        )
        if config.dtls and same_dtls and old is not None and old.dtls is not None:
            sec.dtls, sec.dtls_peer, sec.via = old.dtls, old.dtls_peer, old.via
            if old.dtls.phase == "connected":  # the DTLS keys outrank the (new) SDES ones
                sec.srtp_in, sec.srtp_out = old.srtp_in, old.srtp_out
        elif config.dtls:
            if self.context is None:
                log.error("dtls.no_certificate", worker=self.worker, key=key)
            else:
                try:
                    sec.dtls = DtlsEndpoint(self.context, config.dtls, config.dtls_fingerprint)
                except ValueError as exc:
                    log.error("dtls.bad_role", worker=self.worker, key=key, error=str(exc))
        if config.ice_ufrag and config.ice_pwd:
            component = 2 if ms.leg.rtcp else 1
            candidates = parse_candidates(config.ice_candidates, component)
            same = (old.config.ice_ufrag, old.config.ice_pwd) if old is not None else None
            if (
                old is not None
                and old.ice is not None
                and same
                == (
                    config.ice_ufrag,
                    config.ice_pwd,
                )
            ):
                sec.ice = old.ice
                sec.ice.update(candidates)
            else:
                sec.ice = IceAgent(
                    config.ice_ufrag,
                    config.ice_pwd,
                    config.ice_remote_ufrag,
                    config.ice_remote_pwd,
                    controlling=config.ice_controlling,
                    lite=config.ice_lite,
                    candidates=candidates,
                    family=6 if ms.sock.family == socket.AF_INET6 else 4,
                    component=component,
                )
        if old is not None and old.ice is not None and old.ice is not sec.ice:
            old.ice.leave()  # its group must not pick a pair of an agent nobody runs
        sec.reported = old.reported if old is not None else ("", "")
        ms.secure = sec
        self.timers.discard(ms)
        self._keep_nomination(ms, sec)
        self._update_timer(ms, sec)

    def _keep_nomination(self, ms: MediaSocket, sec: SecureSocket) -> None:
        leg = ms.leg
        if sec.ice is not None and sec.ice.nominated is not None and not leg.confirmed:
            leg.endpoint, leg.confirmed = sec.ice.nominated, True

    def link(self, ms: MediaSocket) -> None:
        """An alias socket's ICE agent nominates together with its primary's (one pair per
        component); called once the sockets' ``primary`` links are set."""
        own, primary = ms.secure, ms.primary
        if own is None or own.ice is None or primary is None or primary.secure is None:
            return
        if primary.secure.ice is not None:
            own.ice.join(primary.secure.ice.group)

    def start(self, ms: MediaSocket, now: float) -> None:
        """Send an active stream's ClientHello once the party's endpoint is known on
        ``ms`` (the primary socket or one of its candidates); only once per stream."""
        own = ms.secure
        owner = _owner(ms)
        sec = owner.secure
        if sec is None or sec.dtls is None or sec.dtls.started or sec.dtls.role != "active":
            return
        if own is not None and own.ice is not None and own.ice.nominated is None:
            return  # with ICE the endpoint is known once a check nominates it
        if _target(ms.leg.endpoint) is None:
            return
        sec.via, sec.dtls_peer = ms, None
        self._dtls_events(owner, sec, sec.dtls.start(now))
        self._dtls_send(owner, sec)
        self._update_timer(owner, sec)

    def forget(self, ms: MediaSocket) -> None:
        """``ms`` is closed (or has no crypto left): no timers, and its ICE agent leaves
        its nomination group."""
        self.timers.discard(ms)
        if ms.secure is not None and ms.secure.ice is not None:
            ms.secure.ice.leave()

    # -- timers -------------------------------------------------------------------------------

    def next_deadline(self) -> float:
        deadline = float("inf")
        for ms in self.timers:
            sec = ms.secure
            if sec is None:
                continue
            for when in (
                sec.dtls.next_timeout() if sec.dtls is not None else None,
                sec.ice.next_timeout() if sec.ice is not None else None,
            ):
                if when is not None and when < deadline:
                    deadline = when
        return deadline

    def fire(self, now: float) -> None:
        """Run the timers due at ``now``: DTLS retransmissions (RFC 6347 §4.2.4) and ICE checks,
        and send what they produce; a socket with neither any more leaves the timer set."""
        for ms in list(self.timers):
            sec = ms.secure
            if sec is None:
                self.timers.discard(ms)
                continue
            when = sec.dtls.next_timeout() if sec.dtls is not None else None
            if sec.dtls is not None and when is not None and now >= when:
                self._dtls_events(ms, sec, sec.dtls.handle_timeout(now))
                self._dtls_send(ms, sec)
            when = sec.ice.next_timeout() if sec.ice is not None else None
            if sec.ice is not None and when is not None and now >= when:
                for data, target in sec.ice.handle_timeout(now):
                    _send(ms.sock, data, target, ms.leg)
            self._update_timer(ms, sec)

    def _update_timer(self, ms: MediaSocket, sec: SecureSocket) -> None:
        dtls = sec.dtls is not None and sec.dtls.next_timeout() is not None
        ice = sec.ice is not None and sec.ice.next_timeout() is not None
        if dtls or ice:
            self.timers.add(ms)
        else:
            self.timers.discard(ms)

    # -- packets ------------------------------------------------------------------------------

    def drain(self, ms: MediaSocket, now: float) -> None:
        """Read up to one batch from ``ms`` and forward it, decrypting and encrypting."""
        buf = self.buf
        view = buf.view
        recv_into = ms.sock.recvfrom_into
        leg = ms.leg
        receive = leg.receive
        rtcp_socket = leg.rtcp
        sec = ms.secure
        owner = _owner(ms)
        csec = owner.secure  # DTLS and SRTP: the stream's, shared with its candidates
        size = self.recv_size
        forward = Verdict.FORWARD
        for _ in range(self.batch):
            try:
                n, source = recv_into(view, size)
            except BlockingIOError:
                return
            except OSError:
                leg.errors += 1
                return
            source = source[:2]
            first = view[0] if n else 0
            if sec is not None and not 128 <= first <= 191:
                self._control(ms, sec, bytes(view[:n]), source, first, now)
                continue
            rtcp = rtcp_socket or (n > 1 and 200 <= view[1] <= 204)  # RFC 5761 §4
            wire = n
            if csec is not None and csec.wants_in:
                session = csec.srtp_in
                if session is None:
                    leg.errors += 1
                    continue
                n = session.unprotect_rtcp(buf, n) if rtcp else session.unprotect(buf, n)
                if n < 0:
                    leg.errors += 1
                    continue
            if receive(source, wire, now) != forward:
                continue
            if ms.tap is not None:  # recorded in clear, as the party sent it
                ms.tap.packet(source, bytes(view[:n]))
            if ms.dtmf is not None:  # DTMF digits reported (relayd/worker/dtmf.py)
                ms.dtmf.packet(source, view[:n])
            if leg.block:
                continue  # block media: counted, recorded, not forwarded
            if leg.silence is not None and not rtcp:
                silence(view, n, leg.silence)
            if csec is not None and csec.dtls is not None and not csec.dtls.started:
                self.start(ms, now)
            out = ms.out_rtcp if rtcp and ms.out_rtcp is not None else ms.out
            if out is not None and out.active is not None:
                out = out.active  # the candidate the party nominated
            # for the player's report block (worker/player.py): the buffer is reused, so a copy
            if rtcp and not rtcp_socket:
                leg.last_rtcp, leg.rtcp_at = bytes(view[:20]), now
            else:
                leg.last = bytes(view[:20] if rtcp_socket else view[:4])
            if not rtcp and leg.ssrc < 0 and n >= 12:
                leg.ssrc = int.from_bytes(view[8:12], "big")
            if out is None or (target := out.leg.endpoint) is None:
                continue
            osec = _owner(out).secure
            if ms.transcode:
                self._transcoded(ms, out, target, osec, bytes(view[:n]), rtcp)
                continue
            if osec is not None and osec.wants_out:
                protect = osec.srtp_out
                if protect is None:
                    continue  # no key towards that party yet: never send it plain RTP
                n = protect.protect_rtcp(buf, n) if rtcp else protect.protect(buf, n)
                if n < 0:
                    out.leg.errors += 1
                    continue
            try:
                out.sock.sendto(view[:n], target)
            except OSError:
                out.leg.errors += 1

    def _transcoded(
        self,
        ms: MediaSocket,
        out: MediaSocket,
        target: Address,
        osec: SecureSocket | None,
        data: bytes,
        rtcp: bool,
    ) -> None:
        """Send what the media engine makes of clear ``data``, protected where ``out``'s party
        expects SRTP (relayd/worker/transcoding.py)."""
        buf = self.buf
        protect = osec.srtp_out if osec is not None and osec.wants_out else None
        if osec is not None and osec.wants_out and protect is None:
            return  # no key towards that party yet: never send it plain RTP
        for packet in outgoing(ms, data, rtcp, self.worker):
            n = buf.load(packet)
            if protect is not None:
                n = protect.protect_rtcp(buf, n) if rtcp else protect.protect(buf, n)
                if n < 0:
                    out.leg.errors += 1
                    continue
            try:
                out.sock.sendto(buf.view[:n], target)
            except OSError:
                out.leg.errors += 1

    def _control(
        self,
        ms: MediaSocket,
        sec: SecureSocket,
        data: bytes,
        source: Address,
        first: int,
        now: float,
    ) -> None:
        leg = ms.leg
        if first < 4 and sec.ice is not None:
            answer = sec.ice.handle(data, source, now)
            if answer.error:
                leg.errors += 1
                log.debug("ice.dropped", worker=self.worker, key=leg.key, why=answer.error)
                return
            if answer.reply is not None:
                _send(ms.sock, answer.reply, source, leg)
            for check, target in answer.sends:
                _send(ms.sock, check, target, leg)
            self._update_timer(ms, sec)
            if answer.nominated and ms.primary is not None:
                ms.primary.active = ms  # media to the party now leaves from this candidate
            elif answer.nominated:
                ms.active = None
            if answer.nominated and (leg.endpoint != source or not leg.confirmed):
                leg.endpoint, leg.confirmed = source, True
                log.info("ice.nominated", worker=self.worker, key=leg.key, endpoint=source)
                self.start(ms, now)
            return
        owner = _owner(ms)
        csec = owner.secure  # the stream's DTLS, whichever candidate the record came to
        if 20 <= first <= 63 and csec is not None and csec.dtls is not None:
            if leg.receive(source, len(data), now) != Verdict.FORWARD:
                return
            dtls = csec.dtls
            # a passive endpoint that is done (closed, or failed: perhaps an impostor got
            # in first) takes a fresh ClientHello as a new association
            ended = dtls.phase in ("closed", "failed")
            if ended and dtls.role == "passive" and _client_hello(data):
                context = self.context
                assert context is not None  # it made the endpoint being replaced
                dtls = csec.dtls = DtlsEndpoint(context, "passive", csec.config.dtls_fingerprint)
                csec.srtp_in = csec.srtp_out = None
            csec.dtls_peer, csec.via = source, ms
            self._dtls_events(owner, csec, dtls.receive(data, now))
            self._dtls_send(owner, csec)
            self._update_timer(owner, csec)
            return
        leg.errors += 1  # STUN or DTLS nobody configured, or not RTP at all

    def _dtls_events(self, ms: MediaSocket, sec: SecureSocket, events: list[DtlsEvent]) -> None:
        key = ms.leg.key
        for event in events:
            if isinstance(event, Connected):
                sec.srtp_in = SrtpSession(event.inbound, inbound=True)
                sec.srtp_out = SrtpSession(event.outbound, inbound=False)
                log.info("dtls.connected", worker=self.worker, key=key, profile=event.profile)
            elif isinstance(event, Failed):
                sec.srtp_in = sec.srtp_out = None
                ms.leg.errors += 1
                log.warning("dtls.failed", worker=self.worker, key=key, reason=event.reason)
            elif isinstance(event, Closed):
                sec.srtp_in = sec.srtp_out = None
                log.info("dtls.closed", worker=self.worker, key=key)

    def _dtls_send(self, ms: MediaSocket, sec: SecureSocket) -> None:
        """Send what ``ms``'s DTLS endpoint has queued, from the candidate it talks over."""
        if sec.dtls is None:
            return
        datagrams = sec.dtls.datagrams()
        via = sec.via if sec.via is not None and sec.via.sock.fileno() >= 0 else ms
        target = _target(sec.dtls_peer or via.leg.endpoint)
        if target is None:
            return
        for datagram in datagrams:
            _send(via.sock, datagram, target, via.leg)


def _owner(ms: MediaSocket) -> MediaSocket:
    """The socket holding ``ms``'s DTLS and SRTP state: its primary, for a candidate on
    another local address (an alias), else itself."""
    primary = ms.primary
    return primary if primary is not None and primary.secure is not None else ms


def _target(address: Address | None) -> Address | None:
    if address is None or address[0] in _UNSPECIFIED or not address[1]:
        return None
    return address


def _client_hello(data: bytes) -> bool:
    """A DTLS handshake record (type 22) at epoch 0 carrying a ClientHello (type 1)."""
    return len(data) > 13 and data[0] == 22 and data[3:5] == b"\x00\x00" and data[13] == 1


def _send(sock: socket.socket, data: bytes, target: Address, leg: Leg) -> None:
    try:
        sock.sendto(data, target)
    except OSError:
        leg.errors += 1
