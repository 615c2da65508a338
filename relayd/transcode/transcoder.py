"""One direction's media engine: RTP in, decoded by payload type, re-encoded, RTP out.

A :class:`Transcoder` carries out a :class:`~relayd.transcode.plan.CodecPlan` on the RTP
one party sends (after SRTP decryption; what it returns is encrypted afterwards where the
receiver speaks SRTP). Pure apart from the codecs: bytes in, a list of packets out, no
sockets, no clock.

Rules (rtpengine 10.5's output, read from its transcoding scenarios and ``daemon/codec.c``):

* A direction that transcodes anything sends under a new SSRC of its own, one per input
  SSRC; a new input SSRC starts the stream afresh (codecs, queue, timeline).
* Output sequence number = input sequence number + an offset that starts at 0. A packet
  that produces no output (consumed: buffered by the packetiser, a consumed CN or DTMF)
  lowers the offset by one, each packet beyond the first that one input produces raises
  it by one, and a sequence reset (:mod:`relayd.transcode.sequencer`) moves it so that the
  output runs on from where it was. Losses stay gaps in the output numbering.
* ``passthrough`` payload types are sent as they are (payload, timestamp, marker) under the
  new SSRC with the same offset, not queued: duplicates go on too, as rtpengine does.
* Decoded payload types (and telephone-event, CN) are put back in order and decoded;
  duplicates are dropped (:mod:`relayd.transcode.sequencer`).
* Timestamps are the output codec's clock: the first decoded packet's timestamp plus the
  output position of the packet's first sample (:mod:`relayd.transcode.packetiser`). A
  timestamp gap in the input (lost packets, up to 5 s) is a gap in the output; a larger
  jump, or a sequence reset, is a restart and the output timeline runs on. (Here relayd
  differs from rtpengine 10.5, which counts encoded samples only and so pulls the audio
  after a loss forward in time.)
* telephone-event payload types go out as ``dtmf_out`` (its payload type and clock: the
  durations rescaled, :mod:`relayd.transcode.events`), the timestamp placed on the audio's
  timeline, the marker kept; without ``dtmf_out`` they are consumed. CN likewise with
  ``cn_out``. Other payload types are dropped (counted).
* With ``inject`` (ng ``play DTMF``), digits queued by :meth:`Transcoder.inject` replace the
  audio packets sent on, passed through or encoded, as events or tones
  (:mod:`relayd.transcode.inject` has the rules): events of ``dtmf_out``, else of the
  telephone-event in ``formats``; tones in the packet's own codec otherwise.
"""

from __future__ import annotations

import random
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from relayd.transcode import codecs, events, g711, rtp, silence, tones
from relayd.transcode.codecs import OPUS_RATES, CodecError, Decoder, Resampler
from relayd.transcode.comfortnoise import CN_RATE, ComfortNoise
from relayd.transcode.dtmfdetect import RATE as DETECT_RATE
from relayd.transcode.dtmfdetect import Change, DtmfDetector
from relayd.transcode.inject import Digit, Injector, Span
from relayd.transcode.packetiser import Packetiser
from relayd.transcode.plan import CodecPlan, Format
from relayd.transcode.sequencer import DUPLICATE, RESET, Sequencer
from relayd.transcode.silence import SilenceDetector

__all__ = ["Counters", "Transcoder", "describe"]

_SEQ = struct.Struct("!H")
_SSRC = struct.Struct("!I")
_MAX_GAP_SECONDS = 5  # a larger timestamp jump is a restart (rtpengine: 5000 ms)
_AUDIO, _DTMF, _CN = 0, 1, 2
_G711 = ("PCMU", "PCMA")


@dataclass(slots=True)
class Counters:
    """What one direction's engine did, since it was made (the worker reports these)."""

    packets: int = 0  # RTP packets that came in
    frames: int = 0  # payloads decoded
    sent: int = 0  # packets that went out
    octets: int = 0  # payload bytes that went out
    errors: int = 0  # packets that did not parse, decode or encode
    dropped: int = 0  # payload types the plan does not name
    duplicates: int = 0
    lost: int = 0  # input packets the queue gave up waiting for


@dataclass(slots=True)
class _Path:
    """How one decoded payload type reaches the encoder."""

    fmt: Format
    decoder: Decoder
    resampler: Resampler | None
    frame: int  # bytes per decoded sample, all channels


def describe(plan: CodecPlan) -> str:
    """``PCMA->PCMU`` style: the codecs decoded, the one encoded."""
    names = "/".join(dict.fromkeys(f.name for f in plan.decode)) or "-"
    return f"{names}->{plan.encode.name if plan.encode is not None else '-'}"


# RFC 3551 §6's static audio payload types the engine can encode: the output codec of a
# direction whose plan names none (it passes its audio through) but must decode CN
_STATIC = {0: Format(0, "PCMU", 8000), 8: Format(8, "PCMA", 8000), 9: Format(9, "G722", 8000)}


def _static_output(passthrough: tuple[int, ...]) -> Format | None:
    """The format of the first static payload type the direction passes through."""
    return next((_STATIC[pt] for pt in passthrough if pt in _STATIC), None)


def _key(name: str) -> str:
    upper = name.upper()
    return "opus" if upper == "OPUS" else upper


def _signed32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


class Transcoder:
    """One direction of one media section (see the module's rules). Raises
    :class:`~relayd.transcode.codecs.CodecError` if a codec of the plan cannot be opened."""

    def __init__(self, plan: CodecPlan, new_ssrc: Callable[[], int] | None = None) -> None:
        self.plan = plan
        self.counters = Counters()
        self._new_ssrc = new_ssrc or (lambda: random.getrandbits(32))
        self.passthrough = frozenset(plan.passthrough)
        self.kinds: dict[int, tuple[int, Format]] = {}
        for f in plan.dtmf:
            self.kinds[f.pt] = (_DTMF, f)
        for f in plan.cn:
            self.kinds[f.pt] = (_CN, f)
        for f in plan.decode:
            self.kinds[f.pt] = (_AUDIO, f)
        self.paths: dict[int, _Path] = {}
        target = plan.encode
        self.cn_decoded: tuple[Format, ...] = ()
        if (plan.cn and plan.cn_out is None) or (plan.dtmf and plan.dtmf_out is None):
            # comfort noise or telephone-events the receiver does not take: decoded into
            # (made tones in) its codec, the one it takes the passed-through audio in
            target = target or _static_output(plan.passthrough)
        if plan.cn and plan.cn_out is None:
            self.cn_decoded = plan.cn if target is not None else ()
        for f in self.cn_decoded:
            self.kinds[f.pt] = (_AUDIO, f)
        self.target = target
        self.detect = plan.dtmf_out is not None and not plan.dtmf and target is not None
        self.channels = 1
        self.out_pt = target.pt if target is not None else 0
        self.silence: SilenceDetector | None = None
        if target is None:
            if plan.decode:
                raise CodecError("a plan that decodes needs an output codec")
            self.out_clock = self.rate = 8000
            self.packetiser = Packetiser(160, 2, b"\x00\x00")
            self.encoder: codecs.Encoder | None = None
            self.law: bytes | None = None
        else:
            self._open(target, plan.decode)
        self.clock = plan.decode[0].rate if plan.decode else 8000
        if not plan.decode and plan.dtmf:
            self.clock = plan.dtmf[0].rate
        self.ssrc_in = -1
        self.ssrc_out = 0
        # DTMF injection (plan.inject): the digits, the telephone-event they go out as (None:
        # as tones), the audio formats of passed-through payload types they may replace, and
        # (made when first needed) a decoder and encoders for those that are not G.711
        self.injector = Injector() if plan.inject else None
        self.inject_event = plan.dtmf_out or next(
            (f for f in plan.formats if f.name.lower() == "telephone-event"), None
        )
        self.inject_formats = {
            f.pt: f
            for f in plan.formats
            if f.pt in self.passthrough and f.name.lower() not in ("telephone-event", "cn")
        }
        self.inject_codecs: dict[tuple[int, int], tuple[Decoder, codecs.Encoder]] = {}
        self._restart(-1)

    # -- set-up ----------------------------------------------------------------------------

    def _open(self, target: Format, decode: tuple[Format, ...]) -> None:
        key = _key(target.name)
        # G.711 to G.711 at one clock: translated code by code, no PCM in between
        verbatim = (
            not self.cn_decoded
            and key in _G711
            and all(
                _key(f.name) in _G711 and f.rate == target.rate and f.channels == 1 for f in decode
            )
        )
        rates = [codecs.audio_rate(f) for f in decode] or [8000]
        if key == "opus":
            rate = max(rates) if max(rates) in OPUS_RATES else 48000
        else:
            rate = codecs.audio_rate(target)
        ptime = target.ptime or 20
        if key == "opus" and ptime not in (10, 20, 40, 60):
            ptime = min((10, 20, 40, 60), key=lambda p: (abs(p - ptime), p))
        samples = rate * ptime // 1000
        encoder = codecs.open_encoder(target, rate, samples, verbatim)
        for f in decode:
            decoder = codecs.open_decoder(f, target if verbatim else None, encoder.channels)
            resampler = None
            if not verbatim and (decoder.rate, decoder.channels) != (rate, encoder.channels):
                resampler = Resampler(decoder.rate, decoder.channels, rate, encoder.channels)
            self.paths[f.pt] = _Path(f, decoder, resampler, decoder.width * decoder.channels)
        for f in self.cn_decoded:
            noise = ComfortNoise(CN_RATE * (f.ptime or 20) // 1000)
            resampler = None
            if (noise.rate, 1) != (rate, encoder.channels):
                resampler = Resampler(noise.rate, 1, rate, encoder.channels)
            self.paths[f.pt] = _Path(f, noise, resampler, noise.width)
        if self.plan.cn_out is not None and self.plan.silence_detect > 0:
            limit = silence.threshold(self.plan.silence_detect)
            self.silence = SilenceDetector(limit, key if verbatim else None)
        self.encoder = encoder
        self.channels = encoder.channels
        self.law = g711.encoder_table(key) if verbatim else None  # PCM to the codes it takes
        self.rate = rate  # of the audio the encoder takes
        self.out_clock = target.rate
        self.packetiser = Packetiser(samples, encoder.width * encoder.channels, encoder.silence)

    def _restart(self, ssrc: int) -> None:
        """A new input stream (SSRC): fresh queue, timeline, output SSRC."""
        self.ssrc_in = ssrc
        if ssrc >= 0:
            out = self._new_ssrc()
            while out == ssrc:
                out = self._new_ssrc()
            self.ssrc_out = out
        self.seq_diff = 0
        if self.injector is not None:
            self.injector.reset()
        self.sequencer: Sequencer[rtp.RtpPacket | None] = Sequencer(self.clock)
        self.base: int | None = None  # output timestamp of position 0
        self.next_ts: int | None = None  # where the input's audio should go on
        self.anchor: tuple[int, int, int] | None = None  # input ts, its clock, its position
        self.restarted = False
        self.last_ts = 0  # output timestamp of the last audio packet sent
        self.next_clock = 0  # the clock of next_ts
        self.event_in = self.event_out = -1  # the last telephone-event sent on: input, output ts
        self.tone_in, self.tone_made = -1, 0  # the event being made a tone: input ts, samples
        # DTMF heard in the audio (dtmf_out, no dtmf): the detector, its dated changes, the
        # digit being sent (event code, volume, start position)
        self.tones = DtmfDetector() if self.detect else None
        self.changes: deque[Change] = deque()
        self.event: tuple[int, int, int] | None = None
        self.detect_resampler: Resampler | None = None
        if self.detect and self.law is None and (self.rate, self.channels) != (DETECT_RATE, 1):
            self.detect_resampler = Resampler(self.rate, self.channels, DETECT_RATE, 1)

    # -- packets ---------------------------------------------------------------------------

    def process(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """The packets that go out for one packet that came in (often one, maybe none)."""
        counters = self.counters
        try:
            packet = rtp.parse(data)
        except rtp.RtpError:
            counters.errors += 1
            return []
        counters.packets += 1
        if packet.ssrc != self.ssrc_in:
            if self.ssrc_in >= 0:  # another stream: fresh codec state, as rtpengine's per SSRC
                self.counters.lost += self.sequencer.lost
                if self.target is not None:
                    self._open(self.target, self.plan.decode)
            self._restart(packet.ssrc)
        pt = packet.pt
        sequencer = self.sequencer
        if pt in self.passthrough:
            injector = self.injector
            passed = None
            if injector is not None and not injector.idle and pt in self.inject_formats:
                passed = self._inject_into(packet, self.inject_formats[pt])
            if passed is None:
                out = bytearray(data)
                _SEQ.pack_into(out, 2, (packet.seq + self.seq_diff) & 0xFFFF)
                _SSRC.pack_into(out, 8, self.ssrc_out)
                counters.sent += 1
                counters.octets += len(packet.payload)
                passed = [bytes(out)]
            if sequencer.expected < 0 or not self.kinds:
                return passed
            # its number fills its place in the queue: decoded packets behind it go on
            sequencer.insert(packet.seq, packet.ts, None)
            while (item := sequencer.pop()) is not None:
                if item[2] is not None:
                    passed += self._handle(item[2])
            return passed
        if pt not in self.kinds:
            counters.dropped += 1
            return []
        expected = sequencer.expected
        status = sequencer.insert(packet.seq, packet.ts, packet)
        if status == DUPLICATE:
            counters.duplicates += 1
            return []
        if status == RESET:
            self.seq_diff = (self.seq_diff - (packet.seq - expected)) & 0xFFFF
            self.restarted = True
        sent: list[bytes] = []
        while (item := sequencer.pop()) is not None:
            if item[2] is not None:  # None: a passthrough packet's place
                sent += self._handle(item[2])
        return sent

    def _handle(self, packet: rtp.RtpPacket) -> list[bytes]:
        kind, fmt = self.kinds[packet.pt]
        if kind == _AUDIO:
            return self._audio(packet, self.paths[packet.pt])
        target = self.plan.dtmf_out if kind == _DTMF else self.plan.cn_out
        if target is None:
            if kind == _DTMF and self.encoder is not None:
                return self._tone(packet, fmt)
            self.seq_diff = (self.seq_diff - 1) & 0xFFFF  # consumed
            return []
        payload = packet.payload
        if kind == _DTMF:
            payload = events.rescale(payload, fmt.rate, target.rate)
            ts = self._event_timestamp(packet.ts, fmt.rate, target.rate)
        else:
            ts = self._timestamp(packet.ts, fmt.rate, target.rate)
        self.counters.sent += 1
        self.counters.octets += len(payload)
        seq = packet.seq + self.seq_diff
        return [rtp.build(target.pt, packet.marker, seq, ts, self.ssrc_out, payload)]

    def _event_timestamp(self, ts: int, clock: int, out_clock: int) -> int:
        """Output timestamp of a telephone-event packet sent on (rtpengine's placing): an
        event that follows decoded audio starts where the next packet of audio would have
        gone out, the audio still being cut for it dropped (the event stands in its place),
        and the audio after the event runs on from there by the input's timestamps; every
        packet of one event (one input timestamp) carries its start."""
        if ts == self.event_in:
            return self.event_out
        if self.encoder is None or self.base is None:
            out = self._timestamp(ts, clock, out_clock)
        else:
            packetiser = self.packetiser
            packetiser.drop()
            out = (self.base + packetiser.position * out_clock // self.rate) & 0xFFFFFFFF
            if self.next_clock == clock:
                self.next_ts = ts
                self.anchor = (ts, clock, packetiser.position)
        self.event_in, self.event_out = ts, out
        return out

    def _tone(self, packet: rtp.RtpPacket, fmt: Format) -> list[bytes]:
        """A telephone-event for a receiver that takes none: the samples of its tone not made
        yet (up to the duration the packet reports) join the audio (:mod:`tones`)."""
        payload = packet.payload
        if len(payload) < 4:
            self.seq_diff = (self.seq_diff - 1) & 0xFFFF
            return []
        if packet.ts != self.tone_in:
            self.tone_in, self.tone_made = packet.ts, 0
        total = int.from_bytes(payload[2:4], "big") * self.rate // fmt.rate
        count = total - self.tone_made
        if count <= 0:  # an end packet again, or no longer than before: nothing new
            self.seq_diff = (self.seq_diff - 1) & 0xFFFF
            return []
        encoder = self.encoder
        assert encoder is not None
        pcm = tones.tone(
            payload[0], payload[1] & 0x3F, self.tone_made, count, self.rate, encoder.channels
        )
        start = (packet.ts + self.tone_made * fmt.rate // self.rate) & 0xFFFFFFFF
        self.tone_made = total
        if self.law is not None:  # the encoder takes G.711 codes
            table = self.law
            pcm = bytes(table[v & 0xFFFF] for v in memoryview(pcm).cast("h"))
        return self._place(packet.seq, start, fmt.rate, pcm, None)

    def _timestamp(self, ts: int, clock: int, out_clock: int) -> int:
        """Output timestamp (``out_clock``) of input timestamp ``ts`` (``clock``), placed on
        the audio's timeline by the last decoded packet."""
        if self.anchor is None:
            self.anchor = (ts, clock, self.packetiser.end)
            if self.base is None:
                self.base = ts
        anchor_ts, anchor_clock, anchor_position = self.anchor
        position = anchor_position + _signed32(ts - anchor_ts) * self.rate // anchor_clock
        assert self.base is not None
        return (self.base + position * out_clock // self.rate) & 0xFFFFFFFF

    def _audio(self, packet: rtp.RtpPacket, path: _Path) -> list[bytes]:
        try:
            audio: bytes | bytearray = path.decoder.decode(packet.payload)
        except CodecError:
            self.counters.errors += 1
            audio = b""
            samples = -1
        else:
            self.counters.frames += 1
            samples = len(audio) // path.frame
            if path.resampler is not None:
                audio = path.resampler.convert(audio)
        clock = path.fmt.rate
        return self._place(
            packet.seq, packet.ts, clock, audio, samples * clock // path.decoder.rate
        )

    def _place(
        self, seq: int, ts: int, clock: int, audio: bytes | bytearray, length: int | None
    ) -> list[bytes]:
        """Puts ``audio`` (the encoder's rate, or its G.711 codes) that begins at input
        timestamp ``ts`` (``clock``) on the output timeline, and sends what it completes.
        ``length``: the input's duration of it (negative: unknown, it did not decode; None:
        the encoder's samples tell)."""
        counters = self.counters
        packetiser = self.packetiser
        if self.base is None:
            self.base = ts
        chunks: list[tuple[int, bytes]] = []
        tones = self.tones
        if self.next_ts is not None and not self.restarted:
            gap = _signed32(ts - self.next_ts)
            if 0 < gap < clock * _MAX_GAP_SECONDS:
                chunks = packetiser.skip(gap * self.rate // clock)
                if tones is not None:
                    self.changes += tones.skip(gap * DETECT_RATE // clock)
        self.restarted = False
        self.anchor = (ts, clock, packetiser.end)
        if length is None:
            length = len(audio) // packetiser.width * clock // self.rate
        self.next_ts = None if length < 0 else (ts + length) & 0xFFFFFFFF
        self.next_clock = clock
        chunks += packetiser.push(audio)
        if tones is not None:
            self.changes += tones.push(self._detectable(audio))
        encoder = self.encoder
        assert encoder is not None and self.base is not None
        sent = []
        seq = seq + self.seq_diff
        scale = self.out_clock
        detector = self.silence
        injector = self.injector
        for position, pcm in chunks:
            if injector is not None and not injector.idle:
                ts = (self.base + position * scale // self.rate) & 0xFFFFFFFF
                ticks = packetiser.samples * scale // self.rate
                span = injector.span(ts, ticks, scale, self.inject_event is not None)
                if span is not None and span.event:
                    injected = self._event_packets(span, seq, scale)
                    sent += injected
                    seq += len(injected)
                    continue
                if span is not None:
                    pcm = bytes(self._mixed(pcm, span, scale, self.rate, self.channels, self.law))
            if self.changes or self.event is not None:
                events = self._detected(position, seq)
                if events is not None:
                    sent += events
                    seq += len(events)
                    continue
            pt = self.out_pt
            if detector is not None and detector.silent(pcm):
                assert self.plan.cn_out is not None
                pt, payload = self.plan.cn_out.pt, silence.CN_PAYLOAD
            else:
                try:
                    payload = encoder.encode(pcm)
                except CodecError:
                    counters.errors += 1
                    continue
            ts = (self.base + position * scale // self.rate) & 0xFFFFFFFF
            sent.append(rtp.build(pt, False, seq, ts, self.ssrc_out, payload))
            counters.octets += len(payload)
            self.last_ts = ts
            seq += 1
        counters.sent += len(sent)
        self.seq_diff = (self.seq_diff + len(sent) - 1) & 0xFFFF
        return sent

    def _detectable(self, audio: bytes | bytearray) -> bytes | bytearray:
        """``audio`` as the DTMF detector takes it: 8 kHz mono 16-bit."""
        if self.law is not None:
            assert self.target is not None
            return g711.decode(_key(self.target.name), bytes(audio))
        if self.detect_resampler is not None:
            return self.detect_resampler.convert(audio)
        return audio

    def _detected(self, position: int, seq: int) -> list[bytes] | None:
        """The telephone-event packets that stand in for the audio packet at ``position``
        (rtpengine's placing): changes the detector dated at or before the packet apply; a
        digit on replaces the packet with an event packet (its start: the first packet it
        replaces, marked; its duration: up to this packet's end); a digit over, with its
        end packet, sent three times. None: the audio packet goes out."""
        changes = self.changes
        ended: tuple[int, int, int] | None = None
        while changes and changes[0].position * self.rate // DETECT_RATE <= position:
            change = changes.popleft()
            if self.event is not None:
                ended = self.event
                self.event = None
            if change.event >= 0:
                self.event = (change.event, change.volume, position)
        target = self.plan.dtmf_out
        assert target is not None and self.base is not None
        samples = self.packetiser.samples
        if ended is not None:
            if self.event is not None:  # another digit at once: it starts with the next packet
                self.event = (self.event[0], self.event[1], position + samples)
            code, volume, start = ended
            flags, repeats, marker = 0x80 | volume, 3, False
        elif self.event is not None:
            code, volume, start = self.event
            flags, repeats, marker = volume, 1, start == position
        else:
            return None
        duration = min((position - start + samples) * target.rate // self.rate, 0xFFFF)
        payload = bytes((code, flags)) + duration.to_bytes(2, "big")
        ts = (self.base + start * self.out_clock // self.rate) & 0xFFFFFFFF
        out = [
            rtp.build(target.pt, marker, (seq + i) & 0xFFFF, ts, self.ssrc_out, payload)
            for i in range(repeats)
        ]
        self.counters.octets += len(payload) * repeats
        return out

    # -- DTMF injection -------------------------------------------------------------------

    def inject(self, digit: Digit) -> bool:
        """Queue ``digit`` (ng ``play DTMF``); False where this direction injects nothing
        (its plan has no ``inject``) or has had no packet yet (rtpengine: "No SSRC context
        present for DTMF injection")."""
        if self.injector is None or self.ssrc_in < 0:
            return False
        self.injector.add(digit)
        return True

    def _inject_into(self, packet: rtp.RtpPacket, fmt: Format) -> list[bytes] | None:
        """The packets that replace a passed-through audio packet while a digit plays; None:
        it goes on as it is."""
        injector = self.injector
        assert injector is not None
        law = _key(fmt.name) in _G711
        pcm: bytes | bytearray = b""
        codec: tuple[Decoder, codecs.Encoder] | None = None
        if law:
            ticks = len(packet.payload)
        else:
            try:
                codec = self._inject_codec(fmt, packet.payload)
                decoder = codec[0]
                pcm = decoder.decode(packet.payload)
            except CodecError:
                self.counters.errors += 1
                return None
            samples = len(pcm) // (decoder.width * decoder.channels)
            ticks = samples * fmt.rate // decoder.rate
        if ticks <= 0:
            return None
        span = injector.span(packet.ts, ticks, fmt.rate, self.inject_event is not None)
        if span is None:
            return None
        seq = packet.seq + self.seq_diff
        if span.event:
            sent = self._event_packets(span, seq, fmt.rate)
            self.seq_diff = (self.seq_diff + len(sent) - 1) & 0xFFFF
            return sent
        if law:
            payload = self._mixed(
                packet.payload, span, fmt.rate, fmt.rate, 1, g711.encoder_table(_key(fmt.name))
            )
        else:
            assert codec is not None
            decoder, encoder = codec
            mixed = self._mixed(pcm, span, fmt.rate, decoder.rate, decoder.channels, None)
            try:
                payload = encoder.encode(mixed)
            except CodecError:
                self.counters.errors += 1
                return None
        self.counters.sent += 1
        self.counters.octets += len(payload)
        return [rtp.build(packet.pt, packet.marker, seq, packet.ts, self.ssrc_out, bytes(payload))]

    def _inject_codec(self, fmt: Format, payload: bytes) -> tuple[Decoder, codecs.Encoder]:
        """The decoder of ``fmt`` and an encoder of it for packets of this one's size."""
        decoder_key = (fmt.pt, 0)
        found = self.inject_codecs.get(decoder_key)
        decoder = found[0] if found is not None else codecs.open_decoder(fmt, None, fmt.channels)
        samples = len(decoder.decode(payload)) // (decoder.width * decoder.channels)
        key = (fmt.pt, samples)
        pair = self.inject_codecs.get(key)
        if pair is None:
            encoder = codecs.open_encoder(fmt, decoder.rate, samples)
            pair = self.inject_codecs[key] = (decoder, encoder)
            self.inject_codecs.setdefault(decoder_key, pair)
        return pair

    def _event_packets(self, span: Span, seq: int, clock: int) -> list[bytes]:
        """The telephone-event packet(s) standing in for one packet: once, or three times for
        the digit's end packet. ``clock``: that of the span's counts."""
        event = self.inject_event
        assert event is not None
        digit = span.digit
        flags = (0x80 if span.end else 0) | digit.level
        duration = min(span.duration * event.rate // clock, 0xFFFF)
        payload = bytes((digit.code, flags)) + duration.to_bytes(2, "big")
        start = span.start * event.rate // clock if event.rate != clock else span.start
        repeats = 3 if span.end else 1
        self.counters.sent += repeats
        self.counters.octets += len(payload) * repeats
        return [
            rtp.build(event.pt, span.first, (seq + i) & 0xFFFF, start, self.ssrc_out, payload)
            for i in range(repeats)
        ]

    @staticmethod
    def _mixed(
        audio: bytes | bytearray,
        span: Span,
        clock: int,
        rate: int,
        channels: int,
        law: bytes | None,
    ) -> bytes | bytearray:
        """``audio`` (16-bit PCM at ``rate``, or G.711 codes by the table ``law``) with the
        span's tone and silence put in place of its samples (counts in ``clock`` ticks)."""
        width = 1 if law is not None else 2 * channels
        out = bytearray(audio)
        total = len(out) // width
        tone_at, tone_count = (v * rate // clock for v in span.tone)
        if tone_count:
            into = span.tone_at * rate // clock
            tone_count = min(tone_count, total - tone_at)
            digit = span.digit
            made = 1 if law is not None else channels
            pcm = tones.tone(digit.code, digit.level, into, tone_count, rate, made)
            if law is not None:
                pcm = bytes(law[v & 0xFFFF] for v in memoryview(pcm).cast("h"))
            out[tone_at * width : (tone_at + tone_count) * width] = pcm
        quiet_at, quiet_count = (v * rate // clock for v in span.silence)
        quiet_count = min(quiet_count, total - quiet_at)
        if quiet_count > 0:
            fill = bytes((law[0],)) if law is not None else b"\x00" * width
            out[quiet_at * width : (quiet_at + quiet_count) * width] = fill * quiet_count
        return out

    # -- what the reports need -------------------------------------------------------------

    @property
    def highest_seq(self) -> int:
        """The input's highest sequence number received (RFC 3550 §6.4.1) as far as the queue
        has taken packets out; -1 before any."""
        expected = self.sequencer.expected
        return -1 if expected < 0 else (expected - 1) & 0xFFFF

    @property
    def lost(self) -> int:
        """Input packets of the current SSRC given up as lost."""
        return self.sequencer.lost

    @property
    def received(self) -> int:
        return self.counters.packets

    @property
    def sent_packets(self) -> int:
        return self.counters.sent

    @property
    def sent_octets(self) -> int:
        return self.counters.octets
