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
* **In-band tones** in G.711 audio (PCMU, PCMA): the audio goes through the DTMF detector
  (relayd/transcode/dtmfdetect.py). From the packet in which it confirms a digit to the one
  in which it confirms the digit's end, the payload is replaced by as many samples of:
  silence (``silence``), the sine (``tone``), the tone of the digit asked for (``zero``,
  ``DTMF``) or of a random one (``random``). ``drop`` leaves in-band tones alone, as 10.5
  does. The first 25 ms or so of a tone, before the detector is sure, go through (10.5:
  the first 40 ms); other audio codecs' tones are not looked for.
* The replacing samples are rtpengine's: a sine or a digit's two sines at ``volume`` dB
  below 0 dBm0 steps (:mod:`relayd.transcode.tones`), sample ``n`` being the one at RTP
  timestamp ``n``, so that consecutive packets join up.
* A new SSRC starts afresh (detector, event in progress).
"""

from __future__ import annotations

import math
import random
import struct
from collections.abc import Callable
from typing import Protocol

from relayd.transcode import g711, rtp, tones
from relayd.transcode.dtmfdetect import DtmfDetector
from relayd.transcode.plan import CodecPlan, DtmfSecurity, Format

__all__ = ["Counts", "DtmfBlocker", "only_security", "sine"]

_G711 = ("PCMU", "PCMA")
_STEP = 1.122018  # rtpengine's amplitude ratio of one volume step (relayd/transcode/tones.py)


class Counts(Protocol):
    """The engine's counters this module adds to (relayd/transcode/transcoder.py)."""

    packets: int
    sent: int
    octets: int


def only_security(plan: CodecPlan) -> bool:
    """True where ``plan`` has no codec work but blocking DTMF: the blocker's packets are
    what goes out (same SSRC and sequence), no transcoder behind it."""
    bare = CodecPlan(passthrough=plan.passthrough, formats=plan.formats, security=plan.security)
    return plan.security is not None and plan == bare


def sine(frequency: int, volume: int, offset: int, count: int, rate: int) -> bytes:
    """Samples ``offset`` to ``offset + count`` of a sine of ``frequency`` Hz at ``volume``
    (dB below full scale, rtpengine's steps), 16-bit native PCM at ``rate``."""
    amplitude = 32767.0 / _STEP**volume
    step = 2 * math.pi * frequency / rate
    samples = [int(math.sin(step * n) * amplitude) for n in range(offset, offset + count)]
    return struct.pack(f"={count}h", *samples)


def _key(name: str) -> str:
    return name.upper()


class DtmfBlocker:
    """One direction's DTMF blocking (module rules): :meth:`filter` each RTP packet."""

    def __init__(
        self,
        security: DtmfSecurity,
        formats: tuple[Format, ...],
        pick: Callable[[], int] | None = None,
    ) -> None:
        self.security = security
        self.digit = 0 if security.mode == "zero" else security.digit
        self.pick = pick or (lambda: random.randrange(10))
        self.events = {f.pt: f for f in formats if f.name.lower() == "telephone-event"}
        self.audio = {f.pt: f for f in formats if _key(f.name) in _G711 and f.channels == 1}
        self.tables = {pt: g711.encoder_table(_key(f.name)) for pt, f in self.audio.items()}
        self.ssrc = -1
        self._restart(-1)

    @classmethod
    def of(cls, plan: CodecPlan) -> DtmfBlocker | None:
        """The blocker ``plan`` asks for (its formats, decoded ones included), None if none."""
        if plan.security is None:
            return None
        formats = (*plan.formats, *plan.decode, *plan.dtmf)
        return cls(plan.security, formats)

    def _restart(self, ssrc: int) -> None:
        self.ssrc = ssrc
        self.audio_pt = next(iter(self.audio), -1)  # the codec replacing events
        self.event_ts = -1  # the event being replaced: its timestamp, samples covered
        self.event_made = 0
        self.event_code = 0
        self.detector = DtmfDetector()
        self.on = False  # a digit heard in the audio (detector confirmed)
        self.tone_code = 0

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
            if self.security.mode == "drop":  # in-band tones pass: no need to listen
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
        mode = self.security.mode
        payload = packet.payload
        if mode == "drop" or len(payload) < 4:
            return None
        if mode in ("zero", "DTMF"):
            out = bytearray(data)
            start = _payload_start(out, len(payload))
            for offset in range(start, start + len(payload) - 3, 4):
                out[offset] = self.digit
            return bytes(out)
        audio = self.audio.get(self.audio_pt)
        if audio is None:  # no G.711 codec to put the replacement in: nothing goes out
            return None
        if packet.ts != self.event_ts:
            self.event_ts, self.event_made, self.event_code = packet.ts, 0, self.pick()
        total = int.from_bytes(payload[2:4], "big") * audio.rate // fmt.rate
        count = total - self.event_made
        if count <= 0:
            return None
        start_ts = (packet.ts + self.event_made) & 0xFFFFFFFF
        self.event_made = total
        pcm = self._replacement(start_ts, count, audio.rate, self.event_code)
        encoded = self._encode(self.audio_pt, pcm)
        return rtp.build(self.audio_pt, False, packet.seq, start_ts, packet.ssrc, encoded)

    # -- in-band tones ---------------------------------------------------------------------

    def _audio(self, data: bytes | bytearray | memoryview, packet: rtp.RtpPacket) -> bytes:
        fmt = self.audio[packet.pt]
        payload = packet.payload
        pcm = g711.decode(_key(fmt.name), payload)
        changes = self.detector.push(pcm)
        replace = self.on
        for change in changes:
            if change.event >= 0:
                replace, self.on, self.tone_code = True, True, self.pick()
            else:
                self.on = False
        if not replace:
            return bytes(data)
        out = bytearray(data)
        start = _payload_start(out, len(payload))
        samples = self._replacement(packet.ts, len(payload), fmt.rate, self.tone_code)
        out[start : start + len(payload)] = self._encode(packet.pt, samples)
        return bytes(out)

    # -- what replaces DTMF ----------------------------------------------------------------

    def _replacement(self, ts: int, count: int, rate: int, random_code: int) -> bytes:
        security = self.security
        mode = security.mode
        if mode == "tone":
            return sine(security.frequency, security.volume, ts, count, rate)
        if mode in ("zero", "DTMF"):
            return tones.tone(self.digit, security.volume, ts, count, rate)
        if mode == "random":
            return tones.tone(random_code, security.volume, ts, count, rate)
        return b"\x00\x00" * count

    def _encode(self, pt: int, pcm: bytes) -> bytes:
        table = self.tables[pt]
        return bytes(table[v & 0xFFFF] for v in memoryview(pcm).cast("h"))


def _payload_start(data: bytearray, length: int) -> int:
    """Where a packet's payload of ``length`` bytes starts (before any padding)."""
    padding = data[-1] if data[0] & 0x20 else 0
    return len(data) - padding - length
