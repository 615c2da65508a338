"""Decoders and encoders of one stream, by the name SDP gives the codec (FFmpeg through PyAV).

rtpengine 10.5 transcodes with FFmpeg; so does relayd, through PyAV (``av``), which brings
its own FFmpeg with libopus. Each stream keeps its own decoder and encoder objects (codec
state: Opus and G.722 are predictive). Audio between them is native-endian signed 16-bit
PCM, channels interleaved, as ``bytes``: what the packetiser cuts and the resampler takes.

* PCMU, PCMA: decoded by table (:mod:`relayd.transcode.g711`), encoded by FFmpeg;
  G.711 to G.711 needs no PCM at all (:class:`LawTranslator`).
* G722: FFmpeg's g722 at 16 kHz (its RTP clock is 8 kHz, RFC 3551 §4.5.2).
* opus: libopus (RFC 7587: RTP clock always 48 kHz). Decoded at 48 kHz (FFmpeg's libopus
  decoder always outputs 48 kHz); encoded at the rate the decoded audio has, when Opus
  takes it (8, 12, 16, 24 or 48 kHz): Opus codes narrowband input as such, and relayd
  saves resampling 8 kHz G.711 up to 48 kHz first. Bit rate as rtpengine: the fmtp's
  ``maxaveragebitrate``, else 24 kbit/s mono, 32 kbit/s stereo. Frame size = ptime.

A codec FFmpeg cannot open, or a name not listed, raises :class:`CodecError`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import av

from relayd.transcode import ffmpeg, g711, swresample
from relayd.transcode.ffmpeg import CodecError
from relayd.transcode.plan import Format

__all__ = [
    "OPUS_RATES",
    "AvDecoder",
    "AvEncoder",
    "CodecError",
    "Decoder",
    "Encoder",
    "G711Decoder",
    "LawTranslator",
    "Resampler",
    "Verbatim",
    "audio_rate",
    "open_decoder",
    "open_encoder",
]

OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
_FFMPEG = {"PCMU": "pcm_mulaw", "PCMA": "pcm_alaw", "G722": "g722", "opus": "libopus"}


def _key(name: str) -> str:
    """rtpengine's spelling of a codec name from SDP (encoding names are case-insensitive)."""
    upper = name.upper()
    return "opus" if upper == "OPUS" else upper


def audio_rate(fmt: Format) -> int:
    """The sample rate ``fmt``'s audio has once decoded (not always its RTP clock)."""
    key = _key(fmt.name)
    if key == "G722":
        return 16000
    if key == "opus":
        return 48000
    return fmt.rate


class Decoder(Protocol):
    """A payload in, its audio out (``rate``, ``channels``, ``width`` bytes per sample)."""

    rate: int
    channels: int
    width: int

    def decode(self, payload: bytes) -> bytes | bytearray: ...


class Encoder(Protocol):
    """Exactly ``samples`` samples of audio in (``rate``, ``channels``, ``width``); a payload
    out."""

    rate: int
    channels: int
    width: int
    samples: int
    silence: bytes  # one sample of silence, all channels

    def encode(self, audio: bytes | bytearray) -> bytes: ...


class G711Decoder:
    """PCMU or PCMA to 16-bit PCM by table."""

    __slots__ = ("channels", "name", "rate", "width")

    def __init__(self, name: str, rate: int) -> None:
        self.name, self.rate, self.channels, self.width = name, rate, 1, 2
        g711.decode(name, b"")  # build the tables now, not on the first packet

    def decode(self, payload: bytes) -> bytearray:
        return g711.decode(self.name, payload)


class LawTranslator:
    """PCMU to PCMA or back without PCM: the "audio" is already the target's codes."""

    __slots__ = ("channels", "rate", "table", "width")

    def __init__(self, source: str, target: str, rate: int) -> None:
        self.table = g711.transcode_table(source, target)
        self.rate, self.channels, self.width = rate, 1, 1

    def decode(self, payload: bytes) -> bytes:
        return payload.translate(self.table)


@dataclass(slots=True)
class Verbatim:
    """The encoder of a :class:`LawTranslator`'s output: the codes are the payload."""

    rate: int
    samples: int
    silence: bytes
    channels: int = 1
    width: int = 1

    def encode(self, audio: bytes | bytearray) -> bytes:
        return bytes(audio)


class AvDecoder:
    """An FFmpeg decoder; what it outputs is converted to packed 16-bit PCM if need be."""

    __slots__ = ("channels", "context", "convert", "layout", "rate", "width")

    def __init__(self, codec: str, rate: int, channels: int) -> None:
        self.layout = ffmpeg.layout(channels)
        try:
            context = ffmpeg.audio_context(codec, "r")
            context.sample_rate = rate
            context.layout = self.layout
            context.open()
        except (av.FFmpegError, ValueError) as exc:
            raise CodecError(f"cannot open decoder {codec}: {exc}") from None
        self.context = context
        self.rate, self.channels, self.width = rate, channels, 2
        self.convert: av.AudioResampler | None = None

    def decode(self, payload: bytes) -> bytes:
        if not payload:  # an empty packet would tell FFmpeg the stream ended, for good
            raise CodecError("empty payload")
        try:
            frames = self.context.decode(av.Packet(payload))
        except (av.FFmpegError, ValueError) as exc:
            raise CodecError(f"decode: {exc}") from None
        out: list[bytes] = []
        for frame in frames:
            if frame.format.name != "s16" or frame.sample_rate != self.rate:
                if self.convert is None:
                    self.convert = av.AudioResampler("s16", self.layout, self.rate)
                frame.pts = None
                out.extend(ffmpeg.pcm(f, self.channels) for f in self.convert.resample(frame))
            else:
                out.append(ffmpeg.pcm(frame, self.channels))
        return out[0] if len(out) == 1 else b"".join(out)


class AvEncoder:
    """An FFmpeg encoder fed exactly one packet's worth of samples at a time."""

    __slots__ = ("channels", "context", "layout", "rate", "samples", "send", "silence", "width")

    def __init__(
        self, codec: str, rate: int, channels: int, samples: int, options: dict[str, str]
    ) -> None:
        self.layout = ffmpeg.layout(channels)
        bit_rate = int(options.pop("bit_rate", "0"))
        try:
            context = ffmpeg.audio_context(codec, "w")
            context.sample_rate = rate
            context.layout = self.layout
            context.format = "s16"
            if bit_rate:
                context.bit_rate = bit_rate
            context.options = options
            context.open()
        except (av.FFmpegError, ValueError) as exc:
            raise CodecError(f"cannot open encoder {codec}: {exc}") from None
        self.context = context
        self.rate, self.channels, self.width, self.samples = rate, channels, 2, samples
        self.silence = b"\x00\x00" * channels
        # PyAV's encode() passes every frame of a codec with a fixed frame size (Opus,
        # G.722) through a filter graph first, to cut it to size: 7 µs a packet for nothing,
        # since ours are cut already. Its inner step takes them as they are (PyAV-internal,
        # hence the fallback; tests/unit/test_transcode_audio.py checks the bytes agree).
        self.send: Callable[[av.AudioFrame], Iterable[av.Packet]] = getattr(
            context, "_send_frame_and_recv", context.encode
        )

    def encode(self, audio: bytes | bytearray) -> bytes:
        frame = ffmpeg.frame(audio, self.rate, self.layout, self.channels)
        try:
            packets = list(self.send(frame))
        except (av.FFmpegError, ValueError) as exc:
            raise CodecError(f"encode: {exc}") from None
        if len(packets) == 1:
            return bytes(packets[0])
        return b"".join(bytes(p) for p in packets)


class Resampler:
    """16-bit PCM from one rate and channel count to another (FFmpeg's swresample): called
    directly where it can be (:mod:`relayd.transcode.swresample`, a third of the cost),
    else through PyAV's resampler; the same samples either way."""

    __slots__ = ("channels", "direct", "layout", "rate", "resampler")

    def __init__(self, rate: int, channels: int, to_rate: int, to_channels: int) -> None:
        self.rate, self.channels, self.layout = rate, channels, ffmpeg.layout(channels)
        self.direct: swresample.SwrResampler | None = None
        if swresample.available():
            self.direct = swresample.SwrResampler(rate, channels, to_rate, to_channels)
        self.resampler = av.AudioResampler("s16", ffmpeg.layout(to_channels), to_rate)

    def convert(self, pcm: bytes | bytearray) -> bytes:
        if not pcm:
            return b""
        if self.direct is not None:
            return self.direct.convert(pcm)
        frames = self.resampler.resample(ffmpeg.frame(pcm, self.rate, self.layout, self.channels))
        channels = len(self.resampler.layout.channels)
        return b"".join(ffmpeg.pcm(f, channels) for f in frames)


def _fmtp(fmt: Format) -> dict[str, str]:
    pairs = (item.strip().partition("=") for item in fmt.fmtp.split(";") if "=" in item)
    return {key.strip().lower(): value.strip() for key, _, value in pairs}


def open_decoder(fmt: Format, target: Format | None = None, channels: int = 2) -> Decoder:
    """A decoder of ``fmt``; with ``target`` G.711 at the same clock as ``fmt`` (also G.711),
    a :class:`LawTranslator` straight to its codes. Opus is decoded to at most ``channels``
    channels: libopus mixes a stereo stream down itself, cheaper than decoding both
    channels and resampling them (any Opus stream, mono or stereo, decodes to either:
    RFC 6716, RFC 7587)."""
    key = _key(fmt.name)
    if key in ("PCMU", "PCMA"):
        if target is not None and _key(target.name) in ("PCMU", "PCMA") and target.rate == fmt.rate:
            return LawTranslator(key, _key(target.name), fmt.rate)
        return G711Decoder(key, fmt.rate)
    codec = _FFMPEG.get(key)
    if codec is None:
        raise CodecError(f"no decoder for {fmt.name}")
    return AvDecoder(codec, audio_rate(fmt), min(fmt.channels, channels) if key == "opus" else 1)


def open_encoder(fmt: Format, rate: int, samples: int, verbatim: bool = False) -> Encoder:
    """An encoder of ``fmt`` taking ``samples`` samples at ``rate`` per packet; ``verbatim``:
    its input is already ``fmt``'s G.711 codes (a :class:`LawTranslator`'s)."""
    key = _key(fmt.name)
    if verbatim:
        return Verbatim(rate, samples, bytes([g711.SILENCE[key]]))
    codec = _FFMPEG.get(key)
    if codec is None:
        raise CodecError(f"no encoder for {fmt.name}")
    options: dict[str, str] = {}
    channels = 1
    if key == "opus":
        channels = fmt.channels
        fmtp = _fmtp(fmt)
        default = 24000 if channels == 1 else 32000
        options["bit_rate"] = fmtp.get("maxaveragebitrate", str(default))
        options["frame_duration"] = str(samples * 1000 // rate)
    return AvEncoder(codec, rate, channels, samples, options)
