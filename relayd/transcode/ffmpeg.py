"""The few things every codec module needs from FFmpeg (PyAV): audio contexts, PCM frames.

Audio between the engine's parts is native-endian signed 16-bit PCM, channels interleaved,
as ``bytes``; these helpers move it in and out of PyAV's frames.
"""

from __future__ import annotations

from typing import Literal

import av

__all__ = ["CodecError", "audio_context", "frame", "layout", "pcm"]

_LAYOUTS = {1: "mono", 2: "stereo"}


class CodecError(Exception):
    """A codec that cannot be opened, or a payload it cannot decode or encode."""


def audio_context(codec: str, mode: Literal["r", "w"]) -> av.AudioCodecContext:
    """A new FFmpeg audio codec context (``mode`` "r": decoder, "w": encoder), not opened."""
    try:
        context = av.CodecContext.create(codec, mode)
    except (av.FFmpegError, ValueError) as exc:
        raise CodecError(f"no codec {codec}: {exc}") from None
    if not isinstance(context, av.AudioCodecContext):
        raise CodecError(f"{codec} is no audio codec")
    return context


def layout(channels: int) -> str:
    """FFmpeg's name of the channel layout with ``channels`` channels (mono or stereo)."""
    try:
        return _LAYOUTS[channels]
    except KeyError:
        raise CodecError(f"{channels} channels") from None


def frame(pcm: bytes | bytearray, rate: int, layout: str, channels: int) -> av.AudioFrame:
    """16-bit PCM as a frame."""
    made = av.AudioFrame(format="s16", layout=layout, samples=len(pcm) // (2 * channels))
    made.planes[0].update(bytes(pcm))
    made.sample_rate = rate
    return made


def pcm(frame: av.AudioFrame, channels: int) -> bytes:
    """A packed 16-bit frame's samples (its buffer may be longer)."""
    return bytes(memoryview(frame.planes[0])[: frame.samples * 2 * channels])
