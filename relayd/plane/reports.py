"""What the media workers report, folded into the call model's streams (pure).

Workers send their per-socket counters, learned endpoints and DTLS/ICE states
once a second for the sockets that saw something (relayd/plane/workerpool.py receives
them, relayd/plane/media.py folds them in here). Counters arrive as totals since the
worker took the socket; the streams get the deltas, because the kernel path adds
its own counts to the same streams.

Sockets whose codec plan a worker carries out (transcoding) also report their engine's
counters: kept here per socket (what each transcodes now) and summed per codec pair over
the daemon's life (``/metrics``), counted as deltas like the packets.
"""

from __future__ import annotations

from collections.abc import Callable

from relayd import ipc
from relayd.calls.model import Endpoint, Stream
from relayd.ipc import parse_key, socket_key

__all__ = ["CodecTotals", "OnTraffic", "Reports"]

# a stream's new userspace counts: stream, packets, bytes, errors
OnTraffic = Callable[[Stream, int, int, int], None]

_NONE_YET = (0, 0, 0)  # a socket's worker totals before its first report


class CodecTotals:
    """One codec pair's engine counters summed over every socket and worker since start:
    payloads decoded, packets sent, packets that did not parse, decode or encode."""

    __slots__ = ("errors", "frames", "sent")

    def __init__(self) -> None:
        self.frames = self.sent = self.errors = 0


class Reports:
    """Per socket key: the stream its reports count into and the worker's last totals, so each
    report adds only what is new; for ICE, which candidate socket speaks for its stream."""

    def __init__(self) -> None:
        self.streams: dict[str, Stream] = {}  # socket key -> the stream it carries
        # the worker's last totals of a socket: a stream's own socket keeps them in the
        # stream (Stream.reported_*: a tuple and a map entry less per socket), an ICE
        # candidate socket on another address here, by its key
        self.reported: dict[str, tuple[int, int, int]] = {}
        # stream's own socket key -> the socket whose confirmed endpoint the stream shows
        # (an ICE candidate on another local address, once the party nominated it)
        self.holders: dict[str, str] = {}
        # transcoding: socket key -> (what it does: "PCMA->PCMU" or "failed: <reason>",
        # the engine's last totals: frames, sent, errors); and the totals by codec pair
        self.codecs: dict[str, tuple[str, tuple[int, int, int]]] = {}
        self.codec_totals: dict[str, CodecTotals] = {}

    def track(self, key: str, stream: Stream) -> bool:
        """Reports about socket ``key`` count into ``stream``; True if the key is new."""
        known = self.streams.get(key)
        if known is not stream:
            self.streams[key] = stream
            # a socket's totals go with it: a new one counts from zero, one that now
            # counts into another stream keeps them
            totals = self.reported.pop(key, None)
            if totals is None:
                totals = _NONE_YET if known is None else _totals(known)
            if key == socket_key(stream.local.local, stream.port):
                stream.reported_packets, stream.reported_bytes, stream.reported_errors = totals
            else:
                # under this copy of the key, not under the copy each report decodes (a
                # dict keeps the key it was first given)
                self.reported[key] = totals
        return known is None

    def forget(self, key: str) -> None:
        """The socket left its worker: what it reported goes with it (a socket tracked again
        counts from zero)."""
        self.streams.pop(key, None)
        self.reported.pop(key, None)
        self.holders.pop(key, None)
        self.codecs.pop(key, None)

    def fold(
        self, stats: ipc.Stats, on_traffic: OnTraffic | None, now: float
    ) -> tuple[int, set[str]]:
        """Fold one report in, received at wall-clock time ``now``; returns the new packets
        it counted and the call-ids whose streams' confirmations changed."""
        offset = now - stats.now  # the worker's clock is CLOCK_MONOTONIC
        total = 0
        changed: set[str] = set()
        for entry in stats.sockets:
            stream = self.streams.get(entry.key)
            if stream is None:
                continue
            own = socket_key(stream.local.local, stream.port)
            last = self.reported.get(entry.key)
            if last is None and entry.key == own:  # the totals kept in the stream
                packets, size, errors = _totals(stream)
                stream.reported_packets, stream.reported_bytes = entry.packets, entry.bytes
                stream.reported_errors = entry.errors
            else:
                packets, size, errors = _NONE_YET if last is None else last
                self.reported[entry.key] = (entry.packets, entry.bytes, entry.errors)
            if entry.packets < packets:  # a new worker counts from zero again
                packets = size = errors = 0
            new_packets, new_bytes = entry.packets - packets, entry.bytes - size
            new_errors = max(entry.errors - errors, 0)
            total += new_packets
            stream.stats.packets += new_packets
            stream.stats.bytes += new_bytes
            stream.stats.errors += new_errors
            if on_traffic:
                on_traffic(stream, new_packets, new_bytes, new_errors)
            if entry.codec or entry.key in self.codecs:
                self._fold_codec(entry)
            if entry.last_packet:
                stream.stats.last_packet = max(stream.stats.last_packet, entry.last_packet + offset)
            # the stream's one DTLS session lives on its primary socket; any candidate
            # socket may be the nominated one
            if entry.dtls and entry.key == own:
                stream.dtls = entry.dtls
            if entry.ice == "nominated" or (entry.ice and not stream.ice):
                stream.ice = entry.ice
            # With ICE candidates on several local addresses a stream has one socket per
            # address (aliases of its own); the one that confirmed its endpoint last (the
            # candidate the party nominated) speaks for the stream, and the unconfirmed
            # reports of the others do not undo that.
            holder = self.holders.get(own)
            if entry.key != own:
                if entry.confirmed:
                    self.holders[own] = entry.key
                elif holder == entry.key:
                    del self.holders[own]
                else:
                    continue
            elif entry.confirmed:
                self.holders.pop(own, None)
            elif holder is not None:
                continue
            learned = parse_key(entry.endpoint)
            if learned is not None and not _same(stream.endpoint, learned):
                # mostly the endpoint the SDP gave: that one is kept, not a copy of it
                advertised = stream.advertised_endpoint
                stream.endpoint = advertised if _same(advertised, learned) else Endpoint(*learned)
            if stream.confirmed != entry.confirmed:
                stream.confirmed = entry.confirmed
                changed.add(stream.call_id)
        return total, changed

    def _fold_codec(self, entry: ipc.SocketStats) -> None:
        before = self.codecs.get(entry.key)
        if not entry.codec:  # the socket's plan is gone: it transcodes nothing now
            del self.codecs[entry.key]
            return
        now = (entry.frames, entry.codec_sent, entry.codec_errors)
        self.codecs[entry.key] = (entry.codec, now)
        if entry.codec.startswith("failed"):
            return
        last = before[1] if before is not None and before[0] == entry.codec else _NONE_YET
        if now[0] < last[0] or now[1] < last[1]:  # a new engine (or worker) counts from zero
            last = _NONE_YET
        totals = self.codec_totals.get(entry.codec)
        if totals is None:
            totals = self.codec_totals[entry.codec] = CodecTotals()
        totals.frames += now[0] - last[0]
        totals.sent += now[1] - last[1]
        totals.errors += max(now[2] - last[2], 0)

    def transcoding(self) -> tuple[dict[str, int], int]:
        """Sockets transcoding now, by codec pair; and sockets whose plan failed."""
        active: dict[str, int] = {}
        failed = 0
        for codec, _ in self.codecs.values():
            if codec.startswith("failed"):
                failed += 1
            else:
                active[codec] = active.get(codec, 0) + 1
        return active, failed


def _totals(stream: Stream) -> tuple[int, int, int]:
    return stream.reported_packets, stream.reported_bytes, stream.reported_errors


def _same(endpoint: Endpoint | None, address: tuple[str, int]) -> bool:
    return endpoint is not None and (endpoint.address, endpoint.port) == address
