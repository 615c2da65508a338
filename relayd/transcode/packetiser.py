"""Cuts a stream's audio into the output codec's packets, on a timeline with the input's gaps.

Audio is pushed as it is decoded; every ``samples`` samples make one packet, whatever the
input's packet size was (rtpengine's repacketisation across ``ptime``). Each packet carries
its position: samples since the stream's first, which the transcoder turns into the RTP
timestamp. Packets sit on a fixed grid of ``samples``, so a lost input packet leaves a hole
in the output timeline instead of pulling the later audio forward (:meth:`skip`): a packet
partly filled before the hole is completed with silence, whole packets inside the hole are
never sent, and a packet the hole ends in starts with silence.
"""

from __future__ import annotations

__all__ = ["Packetiser"]


class Packetiser:
    """Packets of ``samples`` samples of ``width`` bytes each (all channels); ``silence`` is
    one silent sample."""

    __slots__ = ("buffer", "position", "samples", "silence", "size", "width")

    def __init__(self, samples: int, width: int, silence: bytes) -> None:
        self.samples = samples
        self.width = width
        self.size = samples * width  # bytes per packet
        self.silence = silence
        self.buffer = bytearray()
        self.position = 0  # of the buffer's first sample

    @property
    def end(self) -> int:
        """Position of the next sample pushed."""
        return self.position + len(self.buffer) // self.width

    def push(self, audio: bytes | bytearray) -> list[tuple[int, bytes]]:
        """Add audio; the packets it completes, with their positions."""
        buffer = self.buffer
        size = self.size
        if not buffer and len(audio) == size:  # the common case: input ptime = output ptime
            position = self.position
            self.position += self.samples
            return [(position, bytes(audio))]
        buffer += audio
        out = []
        while len(buffer) >= size:
            out.append((self.position, bytes(buffer[:size])))
            del buffer[:size]
            self.position += self.samples
        return out

    def drop(self) -> None:
        """Forget the audio of the packet being filled (something else takes its place: a
        telephone-event); the next packet starts at the same position."""
        self.buffer.clear()

    def skip(self, count: int) -> list[tuple[int, bytes]]:
        """``count`` samples were lost: the timeline moves on by as much."""
        out: list[tuple[int, bytes]] = []
        if count <= 0:
            return out
        if self.buffer:
            missing = self.samples - len(self.buffer) // self.width
            if count < missing:
                self.buffer += self.silence * count
                return out
            out = self.push(self.silence * missing)
            count -= missing
        whole, rest = divmod(count, self.samples)
        self.position += whole * self.samples
        if rest:
            self.buffer += self.silence * rest
        return out
