"""The DTMF digits a worker relays, reported to relayd for its event log (``ipc.Dtmf``).

rtpengine 10.5, with ``dtmf-log-dest``, ``log-facility-dtmf`` or ``dtmf-log-ng-tcp`` set,
reports every DTMF digit that ends in the media it relays; relayd's supervisor writes the
report (relayd/ops/dtmflog.py), the workers find the digits. Rules (10.5's, found by running
it: docs/dtmf.md, "DTMF events"):

* **RFC 4733 events.** A packet of one of the socket's telephone-event payload types
  (``SocketSpec.dtmf``) is read for its first block (:func:`relayd.transcode.events.parse`).
  Only an end packet reports: the digit's code, volume and duration (the end packet's, in
  milliseconds at the payload type's clock). An end packet with the timestamp of the last
  reported one is a repeat (RFC 4733 §2.5.1.4 sends the end three times) and reports
  nothing; nor does a digit whose end never comes.
* **Tones in audio.** Where the media engine listens for tones (a receiver that takes
  telephone-event the sender does not send: the engine's ``detect``), each digit the
  detector ends is reported with the volume it measured at the start, its duration from the
  detector's start and end, and the party's learned endpoint as the source (10.5 has no
  packet source for a tone either).
* Packets are looked at as the party sent them (after SRTP decryption, before codec work),
  on the workers' paths only: the kernel path's calls stay with the workers while events
  are reported (relayd/plane/offload.py).
"""

from __future__ import annotations

from collections.abc import Callable

from relayd import ipc
from relayd.ipc import socket_key
from relayd.transcode import events, rtp
from relayd.transcode.dtmfdetect import RATE as DETECT_RATE
from relayd.transcode.transcoder import Transcoder

__all__ = ["DtmfWatch", "parse_rates", "watch"]

Send = Callable[[ipc.Message], None]


def parse_rates(text: str) -> dict[int, int]:
    """``SocketSpec.dtmf`` ("101/8000 96/16000") as payload type → clock rate; what does not
    read as one is left out."""
    rates: dict[int, int] = {}
    for item in text.split():
        pt, _, rate = item.partition("/")
        if pt.isdigit() and rate.isdigit() and 0 <= int(pt) < 128 and int(rate) > 0:
            rates[int(pt)] = int(rate)
    return rates


class DtmfWatch:
    """One socket's DTMF reporting: the event packets it receives, and the tones its media
    engine hears (see the module's rules)."""

    __slots__ = ("key", "last_end", "rates", "send", "start", "worker")

    def __init__(self, worker: int, key: str, rates: dict[int, int], send: Send) -> None:
        self.worker = worker
        self.key = key
        self.rates = rates  # telephone-event payload type -> clock rate
        self.send = send
        self.last_end = -1  # timestamp of the last end packet reported
        self.start: tuple[int, int, int] | None = None  # tone on: code, volume, position

    def packet(self, source: tuple[str, int], data: bytes | bytearray | memoryview) -> None:
        """A clear RTP packet that the socket accepted from ``source``."""
        if len(data) < 16 or (data[1] & 0x7F) not in self.rates:
            return
        try:
            packet = rtp.parse(data)
        except rtp.RtpError:
            return
        event = events.parse(packet.payload)
        if event is None or not event.end or packet.ts == self.last_end:
            return
        self.last_end = packet.ts
        rate = self.rates[packet.pt]
        self.send(
            ipc.Dtmf(
                self.worker,
                self.key,
                socket_key(*source),
                event.code,
                event.volume,
                event.duration * 1000 // rate,
            )
        )

    def heard(self, engine: Transcoder, source: tuple[str, int] | None) -> None:
        """The detector's changes since the last look (``engine.heard``), reported as digits
        end; ``source``: the party's learned endpoint."""
        found = engine.heard
        if not found:
            return
        changes = list(found)
        found.clear()
        for change in changes:
            if change.event >= 0:
                self.start = (change.event, change.volume, change.position)
                continue
            started, self.start = self.start, None
            if started is None or change.position < started[2]:
                continue  # its start was in another stream (a new SSRC restarts the detector)
            code, volume, position = started
            self.send(
                ipc.Dtmf(
                    self.worker,
                    self.key,
                    socket_key(*source) if source is not None else "",
                    code,
                    volume,
                    (change.position - position) * 1000 // DETECT_RATE,
                    tone=True,
                )
            )


def watch(
    worker: int,
    key: str,
    text: str,
    engine: Transcoder | None,
    current: DtmfWatch | None,
    send: Send,
) -> DtmfWatch | None:
    """The watch a socket needs for its spec's ``dtmf`` and its engine (None: nothing to
    watch); ``current`` is kept where it fits, so that a repeated Forward loses no state."""
    rates = parse_rates(text)
    listens = engine is not None and engine.detect
    if not rates and not listens:
        return None
    if engine is not None and listens and engine.heard is None:
        engine.heard = []
    if current is not None and current.rates == rates:
        return current
    return DtmfWatch(worker, key, rates, send)
