"""The worker's media players (ng ``play media``): timers that send a file to a party.

relayd/ipc.py's ``Play`` names the party's relay sockets; the worker decodes the file
(relayd/transcode/player.py) and, on its loop's timer (:meth:`Players.next_deadline`,
:meth:`Players.fire`), sends one packet every ``ptime`` from the party's own RTP socket to
where the party is (its learned endpoint, else its SDP address), protected as the socket
protects what it forwards (SRTP, DTLS-SRTP keys) or, where the keys pass through end to end,
with the SDES key the message gives. The player's stream (SSRC, sequence, timestamp) is kept
per socket across plays. After the first packet of a play an RTCP sender report goes to the
party's RTCP port (the RTP port under rtcp-mux), then one every ``SR_INTERVAL`` while it
plays. Packets due while the loop was busy are sent at once (at most ``CATCH_UP`` per wake).

A socket the message names that the worker does not hold yet (the call's forward still on
its way) is waited for up to ``WAIT``. When a play ends, or fails, the worker says so
(``PlayDone``): the party may go back to the kernel path. What the party sends meanwhile,
and what its peer sends it, is forwarded as before (10.5 does the same).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import time
from collections.abc import Callable, Mapping

from relayd import ipc
from relayd.log import get_logger
from relayd.transcode.plan import Format
from relayd.transcode.player import (
    Frames,
    PlayError,
    Received,
    Stream,
    encoder_input,
    load,
    sender_report,
)
from relayd.worker.session import Leg
from relayd.worker.sockets import MediaSocket
from relayd.worker.srtp import PacketBuffer, SrtpError, SrtpSession, parse_sdes

__all__ = ["CATCH_UP", "SR_INTERVAL", "WAIT", "Players", "received"]

log = get_logger("relayd.worker")

SR_INTERVAL = 5.0
WAIT = 2.0
CATCH_UP = 10
_NEVER = float("inf")


def received(rtp: Leg, rtcp: Leg | None, now: float) -> Received:
    """What the party sent, for the report block: its SSRC and latest sequence number from
    the RTP socket, its last SR (RFC 3550 §6.4.1: the NTP time's middle 32 bits) from the
    RTCP socket, or from the RTP one under rtcp-mux, whichever came last."""
    last = rtp.last
    seq = 0
    if len(last) >= 4 and not 200 <= last[1] <= 204:
        seq = (last[2] << 8) | last[3]
    found: list[tuple[float, bytes | bytearray]] = [(rtp.rtcp_at, rtp.last_rtcp)]
    if rtcp is not None and rtcp is not rtp:
        found.append((rtcp.last_packet, rtcp.last))
    lsr, since = 0, 0.0
    for at, data in sorted(found, key=lambda item: item[0]):
        if len(data) >= 16 and data[1] == 200:
            lsr, since = int.from_bytes(data[10:14], "big"), max(now - at, 0.0)
    return Received(rtp.ssrc, seq, lsr, since)


class _Player:
    __slots__ = (
        "call_id",
        "frames",
        "next_at",
        "own_srtp",
        "pt",
        "rtcp",
        "rtp",
        "sr_at",
        "started",
        "stream",
        "tag",
        "wait_until",
    )

    def __init__(
        self, message: ipc.Play, frames: Frames, stream: Stream, pt: int, now: float
    ) -> None:
        self.call_id, self.tag, self.started = message.call_id, message.tag, message.started
        self.rtp, self.rtcp = message.rtp, message.rtcp
        self.frames, self.stream, self.pt = frames, stream, pt
        self.next_at = now
        self.sr_at = _NEVER
        self.wait_until = now + WAIT
        self.own_srtp: SrtpSession | None = None


class Players:
    """A worker's players, by the RTP socket key of the party each plays to, and the players'
    streams by the same key (kept across plays, forgotten with the socket)."""

    def __init__(
        self,
        worker: int,
        sockets: Mapping[str, MediaSocket],
        buf: PacketBuffer,
        send: Callable[[ipc.Message], None],
    ) -> None:
        self.worker = worker
        self.sockets = sockets
        self.buf = buf
        self.send = send
        self.players: dict[str, _Player] = {}
        self.streams: dict[str, Stream] = {}

    def play(self, message: ipc.Play, now: float) -> None:
        """Start a play (replacing the socket's current one); a file that fails is reported."""
        old = self.players.pop(message.rtp, None)
        if old is not None:
            self._done(old, "")
        try:
            fmt = Format.from_list(json.loads(message.format))
            source: str | bytes = message.path
            if message.data:
                source = base64.b64decode(message.data)
            try:
                rate, channels = encoder_input(fmt)
                pcm = load(source, rate, channels)
            finally:
                if message.temporary and message.path:
                    with contextlib.suppress(OSError):
                        os.unlink(message.path)
            frames = Frames(
                pcm, fmt, message.ptime, repeat=message.repeat, start_pos=message.start_pos
            )
        except (PlayError, ValueError) as exc:
            log.warning("player.failed", worker=self.worker, key=message.rtp, error=str(exc))
            done = ipc.PlayDone(
                self.worker, message.call_id, message.tag, message.started, 0, str(exc)
            )
            self.send(done)
            return
        stream = self.streams.get(message.rtp)
        if stream is None:
            stream = self.streams[message.rtp] = Stream.fresh(fmt.rate)
        stream.begin(time.time(), fmt.rate)
        player = _Player(message, frames, stream, fmt.pt, now)
        if message.srtp:
            try:
                player.own_srtp = SrtpSession(parse_sdes(message.srtp), inbound=False)
            except SrtpError as exc:
                log.error("player.bad_key", worker=self.worker, key=message.rtp, error=str(exc))
        self.players[message.rtp] = player
        log.info("player.started", worker=self.worker, key=message.rtp, codec=fmt.name)

    def stop(self, message: ipc.PlayStop) -> None:
        player = self.players.pop(message.rtp, None)
        if player is not None:
            self._done(player, "")

    def forget(self, keys: tuple[str, ...]) -> None:
        """These sockets were closed: their players stop, their streams are forgotten."""
        for key in keys:
            player = self.players.pop(key, None)
            if player is not None:
                self._done(player, "socket closed")
            self.streams.pop(key, None)

    def next_deadline(self) -> float:
        return min((p.next_at for p in self.players.values()), default=_NEVER)

    def fire(self, now: float) -> None:
        """Send what is due: packets, sender reports; end what has played."""
        for key, player in list(self.players.items()):
            if now < player.next_at:
                continue
            ms = self.sockets.get(key)
            if ms is None or ms.leg.endpoint is None:
                if now >= player.wait_until:
                    del self.players[key]
                    self._done(player, "no socket or endpoint to play to")
                else:
                    player.next_at = now + 0.02
                continue
            player.wait_until = now + WAIT  # (a socket that goes away is waited for again)
            ptime = player.frames.step / max(player.stream.clock, 1)
            for _ in range(CATCH_UP):
                try:
                    payload = player.frames.next()
                except PlayError as exc:
                    del self.players[key]
                    self._done(player, str(exc))
                    break
                if payload is None:
                    del self.players[key]
                    self._done(player, "")
                    break
                packet = player.stream.packet(player.pt, payload, player.frames.step)
                self._send(ms, packet, False, player.own_srtp)
                if player.stream.sent_in_play == 1:
                    player.sr_at = now
                player.next_at += ptime
                if player.next_at > now:
                    break
            if player.sr_at <= now and key in self.players:
                self._report(player, ms, now)
                player.sr_at = now + SR_INTERVAL

    def _report(self, player: _Player, ms: MediaSocket, now: float) -> None:
        rtcp = self.sockets.get(player.rtcp)
        report = sender_report(
            player.stream, time.time(), received(ms.leg, rtcp.leg if rtcp else None, now)
        )
        self._send(rtcp or ms, report, True, player.own_srtp)

    def _send(self, ms: MediaSocket, data: bytes, rtcp: bool, own: SrtpSession | None) -> None:
        """``data`` to the party of ``ms``, from the candidate it uses, protected as that
        socket protects what it forwards (or with ``own``)."""
        target = ms.leg.endpoint
        if target is None:
            return
        primary = ms.primary if ms.primary is not None and ms.primary.secure is not None else ms
        sec = primary.secure
        protect = own
        if sec is not None and sec.wants_out:
            protect = sec.srtp_out
            if protect is None:
                return  # no key towards the party yet: never plain RTP
        sender = ms.active if ms.active is not None else ms
        out: bytes | memoryview = data
        if protect is not None:
            buf = self.buf
            n = buf.load(data)
            n = protect.protect_rtcp(buf, n) if rtcp else protect.protect(buf, n)
            if n < 0:
                ms.leg.errors += 1
                return
            out = buf.view[:n]
        try:
            sender.sock.sendto(out, target)
        except OSError:
            ms.leg.errors += 1

    def _done(self, player: _Player, error: str) -> None:
        position = player.frames.position
        self.send(
            ipc.PlayDone(self.worker, player.call_id, player.tag, player.started, position, error)
        )
        log.info("player.done", worker=self.worker, key=player.rtp, error=error or None)
