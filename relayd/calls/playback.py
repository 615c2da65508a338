"""ng ``play media`` and ``stop media`` (pure): whom, what, and the replies, as rtpengine 10.5.

What the live 10.5 answered (2026-12-06, /usr/bin/rtpengine on loopback), and so relayd:

* **Whom.** The party that *hears* the media: ``label``, else ``address``, else
  ``from-tag`` names it (media_block_match's order and errors, as ``block media``:
  :func:`relayd.calls.media_control.party_of`; ``to-tag`` selects nothing); the flag
  ``all``: every party. None of them: "No participant party specified". The call:
  "No call-id in message", "Unknown call-ID" (sic).
* **What.** ``file`` (a path the daemon reads), else ``blob`` (the file's bytes), else
  ``db-id`` above 0 (10.5 without a database: "Failed to start media playback from
  database"); none, or empty: "No media file specified". A file or blob that does not open
  or decode: "Failed to start media playback from file" / "… from blob". ``blob64`` (base64
  of a blob) is newer rtpengine's, which 10.5 does not read ("No media file specified"):
  relayd takes it after ``blob``, its failures as the blob's.
* ``repeat-times`` (0 or less: once) and ``start-pos`` (ms into the file where the first
  play begins; newer rtpengine's, 10.5 ignores it) as integers or strings of one.
* **Reply.** ``duration``: ms of one play of the file (of the first party's). A new play
  replaces what played before, under the same SSRC (relayd/worker/player.py).
* **stop media**: the same selection and errors; a party that never played: "Not currently
  playing media"; else ``ok`` (also when the play had ended), with ``last-frame-pos`` (newer
  rtpengine's: ms into the file of the last frame sent; 10.5 gives none).
* While a party hears a play, what the other party sends it is forwarded as before, the two
  streams interleaved under their own SSRCs (10.5 does the same: seen on the wire).

The file is read and decoded outside this module: the shell's ``probe`` opens it and gives
its duration (None: it does not open or decode); the play orders queue in ``outbox`` for the
shell to send to the call's worker (relayd/plane/playback.py).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from relayd.calls.codec_plans import to_format
from relayd.calls.media_control import party_of
from relayd.calls.model import Call, Codec, Media, Monologue, Playback
from relayd.calls.transcoding import transcodable
from relayd.calls.values import integer
from relayd.ipc import socket_key
from relayd.log import get_logger
from relayd.ng.message import NgError, Request
from relayd.transcode.plan import Format

__all__ = [
    "MediaSource",
    "PlayOrder",
    "Playbacks",
    "Probe",
    "StopOrder",
    "position",
    "source_of",
    "target_of",
]

log = get_logger("relayd.calls.playback")

NO_MEDIA = "No media file specified"
NO_PARTY = "No participant party specified"
NOT_PLAYING = "Not currently playing media"
FAILED = {
    "file": "Failed to start media playback from file",
    "blob": "Failed to start media playback from blob",
    "db": "Failed to start media playback from database",
}
_DEFAULT_PTIME = 20


@dataclass(frozen=True, slots=True)
class MediaSource:
    """What to play: a file's path, or its bytes (``blob``, ``blob64`` decoded), or a
    database id (which relayd, like 10.5 without a database, cannot play)."""

    kind: Literal["file", "blob", "db"]
    path: str = ""
    data: bytes = b""
    db_id: int = 0


@dataclass(frozen=True, slots=True)
class PlayTarget:
    """Where one party hears the play: its RTP and RTCP relay sockets (the player sends
    from them, to where the party is), the codec it takes and its packet time, and the
    SDES key of what is sent to it where its socket has none of its own (SRTP passed
    through end to end)."""

    media: int  # index of the media section
    rtp: str  # socket key
    rtcp: str  # socket key (the RTP one under rtcp-mux)
    format: Format
    ptime: int
    srtp: str = ""


@dataclass(frozen=True, slots=True)
class PlayOrder:
    """One party's play, for the shell to hand to the call's worker."""

    call_id: str
    tag: str
    target: PlayTarget
    source: MediaSource
    repeat: int
    start_pos: int
    started: float  # names this play (Playback.started) in the worker's word of its end


@dataclass(frozen=True, slots=True)
class StopOrder:
    """A party's play stopped: the worker stops its player."""

    call_id: str
    tag: str
    rtp: str


Probe = Callable[[MediaSource], int | None]
"""Opens a source: its duration in ms, None where it does not open or decode."""


def _bytes(value: Any) -> bytes:
    """A value's bytes as sent: bencode strings arrive as UTF-8 text with the bytes that are
    not UTF-8 kept as surrogates (relayd/ng/bencode.py), which this undoes."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    return b""


def source_of(values: dict[str, Any]) -> MediaSource:
    """The source a request names (module rules); NgError as 10.5 answers."""
    path = _bytes(values.get("file"))
    if path:
        return MediaSource("file", path=path.decode("utf-8", "surrogateescape"))
    # (a path goes to the file system as the same bytes: os.fsencode undoes this)
    blob = _bytes(values.get("blob"))
    if blob:
        return MediaSource("blob", data=blob)
    encoded = _bytes(values.get("blob64"))
    if encoded:
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise NgError(FAILED["blob"]) from None
        if data:
            return MediaSource("blob", data=data)
    db_id = integer(values.get("db-id"), 0)
    if db_id > 0:
        return MediaSource("db", db_id=db_id)
    raise NgError(NO_MEDIA)


def _taken(media: Media) -> list[Codec]:
    """The codecs the party takes: those of its own SDP we wrote to it too, in its order;
    its own where we wrote none; ours where it has sent none (an offer's receiver)."""
    sent = {c.payload_type for c in media.sent_codecs}
    taken = [c for c in media.codecs if c.payload_type in sent]
    return taken or list(media.codecs) or list(media.sent_codecs)


def target_of(party: Monologue) -> PlayTarget | None:
    """The party's first audio section with our ports and a codec relayd encodes (the first
    of the codecs it takes); None where it has none."""
    for media in party.medias:
        if media.type != "audio" or media.rejected or not media.port or media.local is None:
            continue
        codec = next((c for c in _taken(media) if not c.supplemental and transcodable(c)), None)
        if codec is None:
            continue
        address = media.local.local
        rtp = socket_key(address, media.port)
        muxed = media.rtcp_mux and media.peer_rtcp_mux
        rtcp = rtp if muxed else socket_key(address, media.port + 1)
        ptime = media.ptime or _DEFAULT_PTIME
        return PlayTarget(media.index, rtp, rtcp, to_format(codec, ptime), ptime, _srtp(media))
    return None


def _srtp(media: Media) -> str:
    """The SDES key of what goes to the party: ours, else (keys passed through end to end)
    the one we wrote to it."""
    if media.srtp_out is not None:
        return media.srtp_out.inline()
    if media.crypto_out and (media.protocol.startswith("RTP/SAVP") or media.out_osrtp):
        return media.crypto_out[0].inline()
    return ""


def position(playback: Playback, now: float) -> int:
    """Where in the file (ms) the play is at ``now``, or where it stopped; its length once
    every repeat has played."""
    if playback.duration <= 0:
        return 0
    at = playback.ended if playback.ended else now
    elapsed = max(int((at - playback.started) * 1000), 0)
    total = max(playback.duration * playback.repeat - playback.start_pos, 0)
    if elapsed >= total:
        return playback.duration
    return (playback.start_pos + elapsed) % playback.duration


class Playbacks:
    """``play media`` and ``stop media`` on the registry's calls; ``probe`` opens a source
    (the shell's: it reads files), ``outbox`` the orders for the workers, in order."""

    def __init__(self, probe: Probe | None = None) -> None:
        self.probe = probe
        self.outbox: list[PlayOrder | StopOrder] = []

    def take(self) -> list[PlayOrder | StopOrder]:
        taken, self.outbox = self.outbox, []
        return taken

    def parties(self, call: Call, req: Request) -> list[Monologue]:
        """The parties a request names (module rules)."""
        if req.has("all"):
            return [p for p in call.parties() if p.tag]
        party = party_of(call, req)
        if party is None:
            raise NgError(NO_PARTY)
        return [party]

    def play(self, call: Call, req: Request, now: float) -> dict[str, Any]:
        """``play media`` (module rules): the reply, the orders queued."""
        parties = self.parties(call, req)
        source = source_of(req.values)
        repeat = integer(req.values.get("repeat-times"), 0)
        repeat = repeat if repeat > 0 else 1
        duration = None
        if self.probe is not None and source.kind != "db":
            duration = self.probe(source)
        if duration is None:
            raise NgError(FAILED[source.kind])
        start_pos = max(integer(req.values.get("start-pos"), 0), 0)
        if start_pos >= duration:
            start_pos = 0  # past the end: the whole file
        for party in parties:
            old = party.playback
            if old is not None and old.active:
                self._stop(call, party, now)
            playback = party.playback = Playback(now, duration, repeat, start_pos, active=True)
            target = target_of(party)
            if target is not None:
                self.outbox.append(
                    PlayOrder(call.call_id, party.tag, target, source, repeat, start_pos, now)
                )
            else:  # nothing it takes that relayd encodes: it hears nothing
                playback.active = False
                playback.ended = now
            log.info("media.play", tag=party.tag, duration=duration, repeat=repeat)
        return {"duration": duration} if duration else {}

    def stop(self, call: Call, req: Request, now: float) -> dict[str, Any]:
        """``stop media`` (module rules): with ``all``, a party that never played fails the
        request after those before it were stopped, as in 10.5."""
        parties = self.parties(call, req)
        reply: dict[str, Any] = {}
        for party in parties:
            playback = party.playback
            if playback is None:
                raise NgError(NOT_PLAYING)
            if playback.active:
                self._stop(call, party, now)
            reply.setdefault("last-frame-pos", position(playback, now))
        return reply

    def _stop(self, call: Call, party: Monologue, now: float) -> None:
        playback = party.playback
        assert playback is not None
        playback.active = False
        playback.ended = now
        target = target_of(party)
        if target is not None:
            self.outbox.append(StopOrder(call.call_id, party.tag, target.rtp))
        log.info("media.stop", tag=party.tag)

    def end_all(self, calls: Iterable[Call], now: float) -> list[Call]:
        """Every play of these calls ended (their worker was lost, relayd restarted): the
        calls whose parties were hearing one."""
        changed = []
        for call in calls:
            playing = [p.playback for p in call.parties() if p.playback and p.playback.active]
            for playback in playing:
                assert playback is not None
                playback.active = False
                playback.ended = now
            if playing:
                changed.append(call)
        return changed

    def ended(self, call: Call, tag: str, started: float, now: float) -> bool:
        """The worker's play to ``tag`` that began at ``started`` came to its end: whether it
        was the party's play, still active (then the party may go back to the kernel path)."""
        party = call.monologues.get(tag)
        playback = party.playback if party is not None else None
        if playback is None or not playback.active or playback.started != started:
            return False
        playback.active = False
        playback.ended = now
        return True
