"""DTMF blocked (ng ``block DTMF``): one direction's events and in-band tones replaced.

Rules (rtpengine 10.5's output, asked of the live daemon with a ``delay-buffer`` set, the
setting under which 10.5 applies every mode: docs/dtmf.md, "Blocking DTMF"):

* Packets keep their SSRC, sequence number and timestamp: a blocked stream that is not
  transcoded goes on as the sender sent it, DTMF aside; a packet dropped is a gap in the
  sequence. (Where the direction also transcodes, this runs first, in the sender's codec,
  and the transcoder works on what comes out.)
* **RFC 4733 events** (the sender's telephone-event payload types): ``drop`` drops them;
  ``zero`` and ``DTMF`` send them on with the event code replaced (0, or the digit asked
  for), end bit, volume and duration kept; ``silence``, ``tone`` and ``random`` send, in
  place of each event packet that adds duration, a packet of the sender's audio codec (the
  last one it sent, else its first G.711 one) covering the samples it adds, starting at the
  event's timestamp plus the samples already covered: silence, a sine of ``frequency`` Hz, or
  the tone of a digit 0-9 picked at random for each event (the end packet's repetitions add
  nothing and are dropped).
* **In-band tones** in the sender's audio (PCMU, PCMA, G.722, Opus): the audio goes through
  the DTMF detector (relayd/transcode/dtmfdetect.py; G.722 and Opus decoded here and
  resampled to its 8 kHz, whether the direction transcodes or not). From the detector's
  first 12.75 ms block that hits a digit (the rest of that packet) to the packet in which
  it confirms the digit's end, the payload is replaced by as many samples of: silence
  (``silence``), the sine (``tone``), the tone of the digit asked for (``zero``, ``DTMF``)
  or of a random one (``random``). So no more than the part of a block before the first
  that hits goes through, too little for a detector to confirm a digit (10.5 lets the first
  40 ms through); a block that hits but is not confirmed (rare in speech: the two tones
  must hold 60 % of its energy) costs the rest of its packet. ``drop`` leaves in-band tones
  alone, as 10.5 does. A G.722 or Opus packet that is replaced is encoded anew (an encoder
  of its own per payload type and packet size); the packets between go on untouched.
* The replacing samples are rtpengine's: a sine or a digit's two sines at ``volume`` dB
  below 0 dBm0 steps (:mod:`relayd.transcode.tones`), sample ``n`` being the one at RTP
  timestamp ``n``, so that consecutive packets join up.
* A new SSRC starts afresh (detector, decoders, event in progress, triggers).
* **Triggers** (a :class:`~relayd.transcode.plan.DtmfTrigger`): the block in force changes
  as the sender's digits go by (relayd/transcode/dtmftrigger.py); a digit's block is the
  one in force when it starts, for the whole digit, events and tones alike. With a trigger
  the audio is listened to whatever the block (its tones are digits too).
"""

from __future__ import annotations

import copy
import math
import random
import struct
from collections.abc import Callable
from typing import Protocol

from relayd.transcode import codecs, g711, rtp, tones
from relayd.transcode.codecs import CodecError, Decoder, Encoder, Resampler
from relayd.transcode.dtmfdetect import BLOCK, DtmfDetector
from relayd.transcode.dtmftrigger import TriggerWatch
from relayd.transcode.plan import CodecPlan, DtmfSecurity, DtmfTrigger, Format

__all__ = ["Counts", "DtmfBlocker", "only_security", "sine"]

_G711 = ("PCMU", "PCMA")
_DECODED = ("G722", "OPUS")  # decoded here to listen to them
_DETECT_RATE = 8000  # what the detector takes
_STEP = 1.122018  # rtpengine's amplitude ratio of one volume step (relayd/transcode/tones.py)


class Counts(Protocol):
    """The engine's counters this module adds to (relayd/transcode/transcoder.py)."""

    packets: int
    sent: int
    octets: int


def only_security(plan: CodecPlan) -> bool:
    """True where ``plan`` has no codec work but blocking DTMF: the blocker's packets are
    what goes out (same SSRC and sequence), no transcoder behind it."""
    bare = CodecPlan(
        passthrough=plan.passthrough,
        formats=plan.formats,
        security=plan.security,
        trigger=plan.trigger,
    )
    return (plan.security is not None or plan.trigger is not None) and plan == bare


def sine(frequency: int, volume: int, offset: int, count: int, rate: int) -> bytes:
    """Samples ``offset`` to ``offset + count`` of a sine of ``frequency`` Hz at ``volume``
    (dB below full scale, rtpengine's steps), 16-bit native PCM at ``rate``."""
    amplitude = 32767.0 / _STEP**volume
    step = 2 * math.pi * frequency / rate
    samples = [int(math.sin(step * n) * amplitude) for n in range(offset, offset + count)]
    return struct.pack(f"={count}h", *samples)


def _key(name: str) -> str:
    return name.upper()


def _stereo(pcm: bytes, channels: int) -> bytes:
    """Mono 16-bit PCM with each sample repeated for ``channels`` channels."""
    if channels == 1:
        return pcm
    samples = memoryview(pcm).cast("h")
    return struct.pack(
        f"={len(samples) * channels}h", *(v for v in samples for _ in range(channels))
    )


class _Listener:
    """One decoded payload type's decoder and the resampler to the detector's rate."""

    __slots__ = ("decoder", "resampler")

    def __init__(self, fmt: Format) -> None:
        self.decoder: Decoder = codecs.open_decoder(fmt, None, 1)
        self.resampler: Resampler | None = None
        if self.decoder.rate != _DETECT_RATE:
            self.resampler = Resampler(self.decoder.rate, 1, _DETECT_RATE, 1)


class DtmfBlocker:
    """One direction's DTMF blocking (module rules): :meth:`filter` each RTP packet."""

    def __init__(
        self,
        security: DtmfSecurity | None,
        formats: tuple[Format, ...],
        pick: Callable[[], int] | None = None,
        trigger: DtmfTrigger | None = None,
    ) -> None:
        self.security = security
        self.trigger = trigger
        self.watch = TriggerWatch(trigger, security) if trigger is not None else None
        self.pick = pick or (lambda: random.randrange(10))
        self.events = {f.pt: f for f in formats if f.name.lower() == "telephone-event"}
        self.audio = {
            f.pt: f
            for f in formats
            if (_key(f.name) in _G711 and f.channels == 1) or _key(f.name) in _DECODED
        }
        self.tables = {
            pt: g711.encoder_table(_key(f.name))
            for pt, f in self.audio.items()
            if _key(f.name) in _G711
        }
        # tones are looked for where a block replaces them, or where they may be trigger digits
        self.listen = trigger is not None or (security is not None and security.mode != "drop")
        self.encoders: dict[tuple[int, int], Encoder] = {}
        self.ssrc = -1
        self._restart(-1)

    @classmethod
    def of(cls, plan: CodecPlan) -> DtmfBlocker | None:
        """The blocker ``plan`` asks for (its formats, decoded ones included), None if none."""
        if plan.security is None and plan.trigger is None:
            return None
        formats = (*plan.formats, *plan.decode, *plan.dtmf)
        return cls(plan.security, formats, trigger=plan.trigger)

    def _restart(self, ssrc: int) -> None:
        self.ssrc = ssrc
        self.audio_pt = next(iter(self.audio), -1)  # the codec replacing events
        self.event_ts = -1  # the event being replaced: its timestamp, samples covered
        self.event_made = 0
        self.event_code = 0
        self.event_block: DtmfSecurity | None = self.security  # the event's block
        self.event_ended = False
        self.detector = DtmfDetector()
        self.listeners: dict[int, _Listener] = {}
        self.on = False  # a digit heard in the audio (detector confirmed)
        self.tone_code = 0
        self.tone_block: DtmfSecurity | None = self.security  # the heard digit's block
        if self.watch is not None:
            self.watch.restart()

    def _start(self, code: int, ts: int, rate: int) -> DtmfSecurity | None:
        """A digit begins: the block it gets (the trigger watch's, else the fixed one)."""
        if self.watch is None:
            return self.security
        return self.watch.start(code, ts, rate)

    def _end(self) -> None:
        if self.watch is not None:
            self.watch.end()

    @property
    def current(self) -> DtmfSecurity | None:
        """The block a digit starting now would get (before the trigger watch sees it)."""
        return self.watch.current if self.watch is not None else self.security

    def filter(self, data: bytes | bytearray | memoryview) -> bytes | None:
        """What goes out for ``data``: itself, a replacement, or None (dropped)."""
        try:
            packet = rtp.parse(data)
        except rtp.RtpError:
            return bytes(data)
        if packet.ssrc != self.ssrc:
            self._restart(packet.ssrc)
        fmt = self.events.get(packet.pt)
        if fmt is not None:
            return self._event(data, packet, fmt)
        if packet.pt in self.audio:
            self.audio_pt = packet.pt
            if not self.listen:  # drop leaves in-band tones alone: no need to listen
                return bytes(data)
            return self._audio(data, packet)
        return bytes(data)

    def counted(self, counters: Counts, packet: bytes | None) -> list[bytes]:
        """What goes out for a packet :meth:`filter` dropped (None), or sent on where nothing
        but blocking runs, counted as the engine counts its own."""
        counters.packets += 1
        if packet is None:
            return []
        counters.sent += 1
        counters.octets += max(len(packet) - 12, 0)
        return [packet]

    # -- RFC 4733 events -------------------------------------------------------------------

    def _event(
        self, data: bytes | bytearray | memoryview, packet: rtp.RtpPacket, fmt: Format
    ) -> bytes | None:
        payload = packet.payload
        if len(payload) < 4:
            return None if self.current is not None else bytes(data)
        if packet.ts != self.event_ts:  # a new digit
            self.event_ts, self.event_made, self.event_code = packet.ts, 0, self.pick()
            self.event_ended = False
            self.event_block = self._start(payload[0], packet.ts, fmt.rate)
        out = self._event_out(data, packet, fmt, self.event_block)
        if payload[1] & 0x80 and not self.event_ended:
            self.event_ended = True
            self._end()
        return out

    def _event_out(
        self,
        data: bytes | bytearray | memoryview,
        packet: rtp.RtpPacket,
        fmt: Format,
        block: DtmfSecurity | None,
    ) -> bytes | None:
        if block is None:
            return bytes(data)
        mode = block.mode
        payload = packet.payload
        if mode == "drop":
            return None
        if mode in ("zero", "DTMF"):
            out = bytearray(data)
            start = _payload_start(out, len(payload))
            for offset in range(start, start + len(payload) - 3, 4):
                out[offset] = _digit(block)
            return bytes(out)
        audio = self.audio.get(self.audio_pt)
        if audio is None:  # no audio codec to put the replacement in: nothing goes out
            return None
        total = int.from_bytes(payload[2:4], "big") * audio.rate // fmt.rate
        count = total - self.event_made
        if count <= 0:
            return None
        start_ts = (packet.ts + self.event_made) & 0xFFFFFFFF
        self.event_made = total
        encoded = self._made(audio, start_ts, count, self.event_code, block)
        if encoded is None:
            return None
        return rtp.build(self.audio_pt, False, packet.seq, start_ts, packet.ssrc, encoded)

    # -- in-band tones ---------------------------------------------------------------------

    def _audio(self, data: bytes | bytearray | memoryview, packet: rtp.RtpPacket) -> bytes:
        fmt = self.audio[packet.pt]
        payload = packet.payload
        if not payload:
            return bytes(data)
        key = _key(fmt.name)
        decoded: bytes | bytearray = b""
        if key in _G711:
            pcm: bytes | bytearray = g711.decode(key, payload)
            ticks = len(payload)
        else:
            try:
                listener = self.listeners.get(packet.pt) or self.listeners.setdefault(
                    packet.pt, _Listener(fmt)
                )
                decoded = listener.decoder.decode(payload)
            except CodecError:
                return bytes(data)
            ticks = len(decoded) // 2 * fmt.rate // listener.decoder.rate
            resampler = listener.resampler
            pcm = resampler.convert(decoded) if resampler is not None else decoded
        detector = self.detector
        first = detector.position + len(detector.buffer) // 2  # the packet's first sample
        replace = self.on
        for change in detector.push(pcm):
            if change.event >= 0:
                self.tone_block = self._start(change.event, packet.ts, fmt.rate)
                replace, self.on, self.tone_code = True, True, self.pick()
            else:
                self.on = False
                self._end()
        block, keep = self.tone_block, 0
        if not replace and detector.candidate >= 0 and detector.current < 0:
            # the packet's last block hit a digit not yet confirmed: from that block on the
            # packet carries what would replace it (the tone's first ~13 ms go through, too
            # short for a detector to confirm a digit)
            block = self._peek(detector.candidate, packet.ts, fmt.rate)
            hit = max(0, detector.position - BLOCK - first)
            keep, replace = min(hit * fmt.rate // _DETECT_RATE, ticks), True
            self.tone_code = self.pick()
        if not replace or block is None or block.mode == "drop" or keep >= ticks:
            return bytes(data)
        encoded = self._made(fmt, packet.ts, ticks, self.tone_code, block, keep, decoded, payload)
        if encoded is None:
            return bytes(data)
        out = bytearray(data)
        start = _payload_start(out, len(payload))
        out[start : start + len(payload)] = encoded
        return bytes(out)

    def _peek(self, code: int, ts: int, rate: int) -> DtmfSecurity | None:
        """The block a digit of ``code`` starting now would get (nothing changed)."""
        if self.watch is None:
            return self.security
        return copy.copy(self.watch).start(code, ts, rate)

    # -- what replaces DTMF ----------------------------------------------------------------

    def _made(
        self,
        fmt: Format,
        ts: int,
        ticks: int,
        random_code: int,
        block: DtmfSecurity,
        keep: int = 0,
        decoded: bytes | bytearray = b"",
        payload: bytes = b"",
    ) -> bytes | None:
        """``ticks`` (``fmt``'s clock) of what replaces DTMF from timestamp ``ts``, encoded in
        ``fmt``, the first ``keep`` ticks being the packet's own (its ``payload``, its audio
        ``decoded``, mono at the codec's rate); None where it cannot be encoded."""
        key = _key(fmt.name)
        if key in _G711:
            pcm = self._replacement(ts + keep, ticks - keep, fmt.rate, random_code, block)
            table = self.tables[fmt.pt]
            return payload[:keep] + bytes(table[v & 0xFFFF] for v in memoryview(pcm).cast("h"))
        rate = codecs.audio_rate(fmt)
        samples = ticks * rate // fmt.rate
        kept = keep * rate // fmt.rate
        offset = (ts * rate // fmt.rate) & 0xFFFFFFFF
        pcm = self._replacement(offset + kept, samples - kept, rate, random_code, block)
        if kept:
            pcm = bytes(decoded[: 2 * kept]) + pcm
        channels = fmt.channels if key == "OPUS" else 1
        try:
            encoder = self.encoders.get((fmt.pt, samples))
            if encoder is None:
                encoder = codecs.open_encoder(fmt, rate, samples)
                self.encoders[(fmt.pt, samples)] = encoder
            return encoder.encode(_stereo(pcm, channels))
        except CodecError:
            return None

    def _replacement(
        self, ts: int, count: int, rate: int, random_code: int, block: DtmfSecurity
    ) -> bytes:
        mode = block.mode
        if mode == "tone":
            return sine(block.frequency, block.volume, ts, count, rate)
        if mode in ("zero", "DTMF"):
            return tones.tone(_digit(block), block.volume, ts, count, rate)
        if mode == "random":
            return tones.tone(random_code, block.volume, ts, count, rate)
        return b"\x00\x00" * count


def _digit(block: DtmfSecurity) -> int:
    """The event code a block puts in place of the sender's (``zero``: 0)."""
    return 0 if block.mode == "zero" else block.digit


def _payload_start(data: bytearray, length: int) -> int:
    """Where a packet's payload of ``length`` bytes starts (before any padding)."""
    padding = data[-1] if data[0] & 0x20 else 0
    return len(data) - padding - length
