"""Media playback (ng ``play media``): a file → RTP packets in a party's codec, and the
player's RTCP. Pure apart from PyAV: no sockets, no clock (times are passed in).

* :func:`probe` opens a file (a path or its bytes) the way the supervisor may afford on its
  event loop: the container's header gives the duration, one decoded frame proves the audio
  decodes; a file whose header has no duration is decoded whole, up to ``PROBE_LIMIT``.
* :func:`load` decodes a file whole into 16-bit PCM at the rate and channel count the
  party's encoder takes (FFmpeg resamples), at most ``MAX_SECONDS`` of it.
* :class:`Frames` cuts that PCM into one packet's worth per ``ptime`` and encodes it
  (relayd/transcode/codecs.py's encoders: PCMU, PCMA, G.722, Opus), ``repeat`` times,
  the first play from ``start_pos``; a last partial packet is filled with silence.
* :class:`Stream` is what the party hears from the player, kept across plays: one SSRC, a
  sequence number that goes on where the last play stopped, an RTP timestamp that follows
  the clock (rtpengine's: a second play starts where wall-clock time has brought the
  first's; the suite's "media playback, side B"), the marker on each play's first packet,
  the counters its sender reports give, and a CNAME.
* :func:`sender_report` builds the SR rtpengine's "RTCP player" scenarios expect: sender
  info with the player's counters (octets counting the RTP header, as 10.5 does), one report
  block about what the party sends when it has sent anything (its SSRC, extended highest
  sequence number, LSR/DLSR from its last SR; loss and jitter 0), and an SDES CNAME.
"""

from __future__ import annotations

import io
import os
import struct
from dataclasses import dataclass

import av

from relayd.transcode.codecs import CodecError, Encoder, audio_rate, open_encoder
from relayd.transcode.plan import Format
from relayd.transcode.rtp import build

__all__ = [
    "MAX_SECONDS",
    "PROBE_LIMIT",
    "Frames",
    "PlayError",
    "Received",
    "Stream",
    "encoder_input",
    "load",
    "probe",
    "sender_report",
]

MAX_SECONDS = 3600
"""The longest file a worker plays (its PCM is held in memory: 3600 s at 48 kHz stereo is
691 MB, so mind what is played; an hour of 8 kHz mono is 58 MB)."""
PROBE_LIMIT = 2 << 20
"""A file whose header gives no duration is decoded whole to find it, up to this many bytes
(larger ones: the duration is not known, and such a file is refused)."""
_NTP_OFFSET = 2208988800  # seconds from 1900 (NTP) to 1970 (Unix)


class PlayError(ValueError):
    """A file that does not open, holds no audio, or does not decode."""


def _open(source: str | bytes) -> av.container.InputContainer:
    try:
        return av.open(io.BytesIO(source) if isinstance(source, bytes) else source, "r")
    except (av.FFmpegError, OSError, ValueError, UnicodeError) as exc:
        raise PlayError(f"cannot open: {exc}") from None


def probe(source: str | bytes) -> int:
    """The duration in ms of one play of ``source`` (a path or the file's bytes); PlayError
    where it does not open or its audio does not decode."""
    with _open(source) as container:
        if not container.streams.audio:
            raise PlayError("no audio stream")
        stream = container.streams.audio[0]
        duration = 0.0
        if stream.duration and stream.time_base:
            duration = float(stream.duration * stream.time_base)
        elif container.duration:
            duration = container.duration / 1_000_000
        samples = 0
        rate = 0
        try:
            for frame in container.decode(stream):
                samples += frame.samples
                rate = frame.sample_rate
                if duration:
                    break  # it decodes: the header's duration stands
        except (av.FFmpegError, ValueError) as exc:
            raise PlayError(f"cannot decode: {exc}") from None
        if not rate:
            raise PlayError("no audio")
        if not duration:
            size = len(source) if isinstance(source, bytes) else os.path.getsize(source)
            if size > PROBE_LIMIT:
                raise PlayError("no duration in the header")
            duration = samples / rate
        return round(duration * 1000)


def load(source: str | bytes, rate: int, channels: int) -> bytes:
    """``source`` decoded whole to 16-bit PCM at ``rate`` Hz, ``channels`` channels (at most
    ``MAX_SECONDS``); PlayError where it does not decode."""
    layout = "mono" if channels == 1 else "stereo"
    resampler = av.AudioResampler("s16", layout, rate)
    limit = MAX_SECONDS * rate * channels * 2
    out = bytearray()
    with _open(source) as container:
        if not container.streams.audio:
            raise PlayError("no audio stream")
        try:
            for frame in container.decode(container.streams.audio[0]):
                frame.pts = None
                for converted in resampler.resample(frame):
                    out += bytes(converted.planes[0])[: converted.samples * 2 * channels]
                if len(out) >= limit:
                    break
            for converted in resampler.resample(None):
                out += bytes(converted.planes[0])[: converted.samples * 2 * channels]
        except (av.FFmpegError, ValueError) as exc:
            raise PlayError(f"cannot decode: {exc}") from None
    return bytes(out[:limit])


def encoder_input(fmt: Format) -> tuple[int, int]:
    """The sample rate and channels the encoder of ``fmt`` takes."""
    channels = fmt.channels if fmt.name.lower() == "opus" else 1
    return audio_rate(fmt), max(min(channels, 2), 1)


class Frames:
    """One play: ``pcm`` (as :func:`encoder_input` says) cut into ``ptime`` packets and encoded
    as ``fmt``, ``repeat`` times, the first from ``start_pos`` ms."""

    def __init__(
        self,
        pcm: bytes,
        fmt: Format,
        ptime: int,
        *,
        repeat: int = 1,
        start_pos: int = 0,
        encoder: Encoder | None = None,
    ) -> None:
        rate, channels = encoder_input(fmt)
        self.rate = rate
        self.frame = 2 * channels  # bytes per sample, all channels
        self.samples = rate * ptime // 1000
        self.step = fmt.rate * ptime // 1000  # RTP timestamp units per packet
        try:
            self.encoder = encoder or open_encoder(fmt, rate, self.samples)
        except CodecError as exc:
            raise PlayError(str(exc)) from None
        self.pcm = pcm
        self.size = self.samples * self.frame
        self.total = len(pcm) // self.frame  # samples in one play
        self.repeat = max(repeat, 1)
        self.offset = min(start_pos * rate // 1000, self.total) * self.frame
        self.played = 0  # plays completed

    @property
    def position(self) -> int:
        """Where in the file (ms) the next packet starts."""
        return self.offset // self.frame * 1000 // self.rate if self.rate else 0

    def next(self) -> bytes | None:
        """The next packet's payload, None once the last play is done."""
        if self.played >= self.repeat or not self.total:
            return None
        chunk = self.pcm[self.offset : self.offset + self.size]
        self.offset += len(chunk)
        if self.offset >= len(self.pcm) - len(self.pcm) % self.frame:
            self.offset = 0
            self.played += 1
        if len(chunk) < self.size:
            chunk += self.encoder.silence * ((self.size - len(chunk)) // self.frame)
        try:
            return self.encoder.encode(chunk)
        except CodecError as exc:
            raise PlayError(str(exc)) from None


@dataclass(slots=True)
class Stream:
    """What a party hears from the player, across plays (module rules). ``ts_origin`` is the
    timestamp at ``epoch`` (the clock's, when the first play began)."""

    ssrc: int
    seq: int
    ts_origin: int
    cname: str
    epoch: float = -1.0
    packets: int = 0
    octets: int = 0  # header included, as rtpengine's SR counts them
    last_ts: int = 0
    first: int = 0  # RTP timestamp of this play's first packet
    sent_in_play: int = 0
    reported: bool = False  # an SR went out for this play
    clock: int = 8000

    @classmethod
    def fresh(cls, clock: int) -> Stream:
        """A new stream: random SSRC, sequence start, timestamp origin and CNAME."""
        seed = os.urandom(12)
        ssrc, seq, ts = struct.unpack("!IHI", seed[:10])
        return cls(ssrc, seq, ts, os.urandom(6).hex(), clock=clock)

    def begin(self, now: float, clock: int) -> None:
        """A play starts at ``now`` (wall clock): its first timestamp is where the clock has
        brought the stream since its first play; with another clock rate (the party's codec
        changed) the count starts again just after the last timestamp sent."""
        if self.epoch < 0 or clock != self.clock:
            self.epoch, self.clock = now, clock
            if self.packets:
                self.ts_origin = (self.last_ts + 1) & 0xFFFFFFFF
        self.first = (self.ts_origin + round((now - self.epoch) * clock)) & 0xFFFFFFFF
        self.sent_in_play = 0
        self.reported = False

    def packet(self, pt: int, payload: bytes, step: int) -> bytes:
        """The next RTP packet of this play (the first with the marker)."""
        ts = (self.first + self.sent_in_play * step) & 0xFFFFFFFF
        data = build(pt, self.sent_in_play == 0, self.seq, ts, self.ssrc, payload)
        self.seq = (self.seq + 1) & 0xFFFF
        self.sent_in_play += 1
        self.packets += 1
        self.octets += len(data)
        self.last_ts = ts
        return data


@dataclass(frozen=True, slots=True)
class Received:
    """What the party sent, as its relay socket saw it, for the SR's report block: its SSRC
    (-1: nothing yet), its latest sequence number (the extended highest of the block, with
    no count of cycles: the worker keeps none), the middle 32 bits of the NTP time of its
    last SR (0: none) and how long ago that came (s)."""

    ssrc: int = -1
    seq: int = 0
    lsr: int = 0
    since_sr: float = 0.0


def _ntp(wall: float) -> tuple[int, int]:
    seconds = int(wall)
    fraction = int((wall - seconds) * (1 << 32)) & 0xFFFFFFFF
    return (seconds + _NTP_OFFSET) & 0xFFFFFFFF, fraction


def sender_report(stream: Stream, wall: float, received: Received) -> bytes:
    """The player's RTCP compound: SR (with a report block where the party sent RTP) and
    SDES CNAME; ``wall`` is the wall-clock time it goes out."""
    msw, lsw = _ntp(wall)
    blocks = b""
    if received.ssrc >= 0:
        dlsr = int(received.since_sr * 65536) & 0xFFFFFFFF if received.lsr else 0
        blocks = struct.pack("!IIIIII", received.ssrc, 0, received.seq, 0, received.lsr, dlsr)
    count = 1 if blocks else 0
    words = (28 + len(blocks)) // 4 - 1
    sr = struct.pack(
        "!BBHIIIIII",
        0x80 | count,
        200,
        words,
        stream.ssrc,
        msw,
        lsw,
        stream.last_ts & 0xFFFFFFFF,
        stream.packets & 0xFFFFFFFF,
        stream.octets & 0xFFFFFFFF,
    )
    cname = stream.cname.encode()
    chunk = struct.pack("!I", stream.ssrc) + bytes([1, len(cname)]) + cname
    chunk += b"\x00" * (4 - len(chunk) % 4)  # the end item, padded to 32 bits
    sdes = struct.pack("!BBH", 0x81, 202, (4 + len(chunk)) // 4 - 1) + chunk
    return sr + blocks + sdes
