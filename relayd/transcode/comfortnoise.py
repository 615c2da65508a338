"""RFC 3389 comfort noise decoded to audio, for a receiver that does not take CN.

rtpengine 10.5 decodes a CN packet with FFmpeg's ``comfortnoise`` decoder into one packet
time of noise (20 ms: 160 samples at 8 kHz) and encodes that as the receiver's codec (the
suite's "add CN", "consume CN": exact bytes). FFmpeg's decoder makes 640 samples a call
from one random sequence and a filter that both run on from call to call; while the CN
parameters stay the same, 160 samples a call or a quarter of 640 are the same samples.
So :class:`ComfortNoise` keeps what one call made and hands it out a packet time at a
time, decoding again when it is used up or when the parameters (the payload) change. A
change is taken in as FFmpeg's decoder takes it (half-way towards the new level and
spectrum per call), so per 640 samples here where rtpengine's calls of 160 samples move
four times as fast; the random sequence skips the samples left unused.
"""

from __future__ import annotations

from relayd.transcode.codecs import AvDecoder, CodecError

__all__ = ["ComfortNoise"]

CN_RATE = 8000  # RFC 3389 §4: comfort noise is 8 kHz narrowband audio


class ComfortNoise:
    """A :class:`~relayd.transcode.codecs.Decoder` of CN payloads: ``samples`` samples of
    16-bit mono noise at 8 kHz for each."""

    __slots__ = ("buffer", "channels", "decoder", "last", "rate", "size", "width")

    def __init__(self, samples: int) -> None:
        self.decoder = AvDecoder("comfortnoise", CN_RATE, 1)
        self.rate, self.channels, self.width = CN_RATE, 1, 2
        self.size = samples * 2
        self.buffer = b""
        self.last: bytes | None = None

    def decode(self, payload: bytes) -> bytes:
        if not payload and self.last is not None:  # no parameters: the last ones go on
            payload = self.last
        if payload != self.last or len(self.buffer) < self.size:
            self.buffer = self.buffer if payload == self.last else b""
            while len(self.buffer) < self.size:
                noise = self.decoder.decode(payload)
                if not noise:
                    raise CodecError(f"no comfort noise from {payload.hex()}")
                self.buffer += noise
            self.last = payload
        out, self.buffer = self.buffer[: self.size], self.buffer[self.size :]
        return out
