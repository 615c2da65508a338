"""FFmpeg's libswresample called directly (ctypes), for 16-bit PCM at fixed rates.

PyAV's :class:`av.AudioResampler` runs every call through an FFmpeg filter graph: about
17 µs per 20 ms frame here, more than G.722's own encoder. The same library called
directly costs a few µs for the same output (the same swresample, the same default
filter). PyAV ships libswresample and libavutil in its wheel (``av.libs``); where they
cannot be found or loaded, :func:`available` is False and the engine uses PyAV's resampler.
"""

from __future__ import annotations

import ctypes
import glob
import os
from functools import cache

import av

__all__ = ["SwrResampler", "available"]


@cache
def _libraries() -> tuple[ctypes.CDLL, ctypes.CDLL] | None:
    folder = os.path.join(os.path.dirname(os.path.dirname(av.__file__)), "av.libs")
    found = []
    for stem in ("libavutil", "libswresample"):
        paths = sorted(glob.glob(os.path.join(folder, f"{stem}*.so*")))
        if not paths:
            return None
        try:
            found.append(ctypes.CDLL(paths[0]))
        except OSError:
            return None
    util, swr = found
    util.av_opt_set.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int]
    swr.swr_alloc.restype = ctypes.c_void_p
    swr.swr_init.argtypes = [ctypes.c_void_p]
    swr.swr_free.argtypes = [ctypes.POINTER(ctypes.c_void_p)]
    swr.swr_convert.argtypes = [
        ctypes.c_void_p,
        ctypes.POINTER(ctypes.c_void_p),
        ctypes.c_int,
        ctypes.POINTER(ctypes.c_void_p),
        ctypes.c_int,
    ]
    return util, swr


def available() -> bool:
    return _libraries() is not None


class SwrResampler:
    """16-bit interleaved PCM from (rate, channels) to (to_rate, to_channels)."""

    __slots__ = ("_ctx", "_in", "_out", "_out_buffer", "_swr", "in_frame", "out_frame", "ratio")

    def __init__(self, rate: int, channels: int, to_rate: int, to_channels: int) -> None:
        libraries = _libraries()
        if libraries is None:
            raise OSError("libswresample not found")
        util, swr = libraries
        ctx = swr.swr_alloc()
        if not ctx:
            raise MemoryError("swr_alloc")
        layouts = {1: b"mono", 2: b"stereo"}
        for name, value in (
            (b"in_chlayout", layouts[channels]),
            (b"out_chlayout", layouts[to_channels]),
            (b"in_sample_rate", str(rate).encode()),
            (b"out_sample_rate", str(to_rate).encode()),
            (b"in_sample_fmt", b"s16"),
            (b"out_sample_fmt", b"s16"),
        ):
            if util.av_opt_set(ctx, name, value, 0) < 0:
                raise OSError(f"swresample option {name!r}")
        if swr.swr_init(ctx) < 0:
            raise OSError("swr_init")
        self._swr = swr
        self._ctx = ctypes.c_void_p(ctx)
        self.in_frame = 2 * channels
        self.out_frame = 2 * to_channels
        self.ratio = to_rate / rate
        self._out_buffer = ctypes.create_string_buffer(1)
        self._out = (ctypes.c_void_p * 1)()
        self._in = (ctypes.c_void_p * 1)()

    def convert(self, pcm: bytes | bytearray) -> bytes:
        count = len(pcm) // self.in_frame
        room = int(count * self.ratio) + 64
        if ctypes.sizeof(self._out_buffer) < room * self.out_frame:
            self._out_buffer = ctypes.create_string_buffer(room * self.out_frame)
            self._out[0] = ctypes.cast(self._out_buffer, ctypes.c_void_p)
        source = ctypes.create_string_buffer(bytes(pcm), len(pcm))
        self._in[0] = ctypes.cast(source, ctypes.c_void_p)
        made = self._swr.swr_convert(self._ctx, self._out, room, self._in, count)
        if made < 0:
            raise OSError("swr_convert")
        return self._out_buffer.raw[: made * self.out_frame]

    def __del__(self) -> None:
        ctx = getattr(self, "_ctx", None)
        if ctx is not None and ctx.value:
            self._swr.swr_free(ctypes.byref(ctx))
