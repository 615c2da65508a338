"""The DTMF event log: each digit the workers report, as rtpengine 10.5 reports it.

rtpengine 10.5 writes one JSON object per DTMF digit, when the digit ends, to
``dtmf-log-dest`` (a UDP datagram) and, with ``log-facility-dtmf``, to syslog under that
facility. Found by running it (docs/dtmf.md, "DTMF events"), the object is, with no spaces
and in this order::

    {"callid":"C","source_tag":"A","tags":["A","B"],"type":"DTMF","timestamp":1796573539,
     "source_ip":"192.0.2.1","event":8,"duration":100,"volume":10}

* ``source_tag``: the tag of the party that sent the digit; ``tags``: every party's tag of
  the call (10.5 lists its tag table in hash order, which varies; relayd in the order the
  parties joined).
* ``timestamp``: whole seconds since the epoch when the end was seen; ``source_ip``: the
  address (no port) the end packet came from, or for a tone heard in audio the party's
  learned endpoint.
* ``event``: the RFC 4733 event code (0-9, 10 = ``*``, 11 = ``#``, 12-15 = A-D);
  ``duration`` in milliseconds; ``volume`` in dBm0 below 0 (0-63).
* Nothing goes to Homer: 10.5 captures RTCP and ng there, no DTMF.
* ``dtmf-log-ng-tcp``: the same fields go, bencoded, to every client connected to the ng
  TCP listener (``listen-tcp-ng``) as an unasked message under a fresh random cookie of 16
  hex digits: ``COOKIE d6:notify6:onDTMF4:datad4:tagsl…e6:callid…ee``, the data's keys in
  10.5's order (tags, callid, source_tag, type, source_ip, timestamp, event, duration,
  volume), not sorted.

The workers find the digits (relayd/worker/dtmf.py, ``ipc.Dtmf``); :func:`dtmf_report`
places one in its call (pure), :func:`dtmf_json` writes it, :class:`DtmfLog` sends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import socket
from collections.abc import Mapping
from dataclasses import dataclass

from relayd import ipc, log
from relayd.calls.model import Call, Stream
from relayd.config import Config
from relayd.ipc import parse_key
from relayd.ng.bencode import encode

__all__ = ["DtmfLog", "DtmfReport", "dtmf_json", "dtmf_notify", "dtmf_report", "reports_dtmf"]

logger = log.get_logger("relayd")
dtmf_logger = log.get_logger(log.DTMF_LOGGER)


def reports_dtmf(config: Config) -> bool:
    """Whether DTMF digits are reported at all (the workers look for them only then)."""
    return (
        config.dtmf_log_dest is not None or bool(config.log_facility_dtmf) or config.dtmf_log_ng_tcp
    )


@dataclass(frozen=True, slots=True)
class DtmfReport:
    """One digit, placed in its call: what the JSON says."""

    call_id: str
    source_tag: str
    tags: tuple[str, ...]
    timestamp: int
    source_ip: str
    event: int
    duration: int
    volume: int


def dtmf_report(
    message: ipc.Dtmf, streams: Mapping[str, Stream], calls: Mapping[str, Call], now: float
) -> DtmfReport | None:
    """``message`` placed in its call (None: its socket's call is gone); ``now``: wall clock."""
    stream = streams.get(message.key)
    call = calls.get(stream.call_id) if stream is not None else None
    if stream is None or call is None:
        return None
    source_tag = ""
    tags: list[str] = []
    for tag, party in call.monologues.items():
        tags.append(tag)
        if not source_tag and any(stream in media.streams for media in party.medias):
            source_tag = tag
    source = parse_key(message.source)
    if source is None and stream.endpoint is not None:
        source = (stream.endpoint.address, stream.endpoint.port)
    return DtmfReport(
        call.call_id,
        source_tag,
        tuple(tags),
        int(now),
        source[0] if source is not None else "",
        message.event,
        message.duration,
        message.volume,
    )


def _text(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def dtmf_json(report: DtmfReport) -> str:
    """The report as 10.5's JSON, byte for byte (the module's rules)."""
    tags = ",".join(_text(tag) for tag in report.tags)
    return (
        f'{{"callid":{_text(report.call_id)},"source_tag":{_text(report.source_tag)},'
        f'"tags":[{tags}],"type":"DTMF","timestamp":{report.timestamp},'
        f'"source_ip":{_text(report.source_ip)},"event":{report.event},'
        f'"duration":{report.duration},"volume":{report.volume}}}'
    )


def dtmf_notify(report: DtmfReport, cookie: str) -> bytes:
    """The report as 10.5's ng TCP notification under ``cookie`` (the module's rules)."""
    data = {
        "tags": list(report.tags),
        "callid": report.call_id,
        "source_tag": report.source_tag,
        "type": "DTMF",
        "source_ip": report.source_ip,
        "timestamp": report.timestamp,
        "event": report.event,
        "duration": report.duration,
        "volume": report.volume,
    }
    return cookie.encode() + b" " + encode({"notify": "onDTMF", "data": data})


class DtmfLog:
    """Where the reports go: a UDP socket connected to ``dtmf-log-dest``, the DTMF log
    lines (logger ``relayd.dtmf``, under ``log-facility-dtmf``), and the ng TCP clients
    (``ng_clients``: the listener adds and removes them, ``dtmf-log-ng-tcp``)."""

    def __init__(self, config: Config) -> None:
        self.lines = bool(config.log_facility_dtmf)
        self.ng_clients: set[asyncio.StreamWriter] = set()
        self.sock: socket.socket | None = None
        self.sent = 0
        self.errors = 0
        if config.dtmf_log_ng_tcp and config.shards > 1:
            # the front process holds the ng TCP connections, the shards the calls
            logger.warning("dtmf.ng_tcp_unsupported", reason="shards", effect="not sent")
        dest = config.dtmf_log_dest
        if dest is not None:
            try:
                family, kind, proto, _, address = socket.getaddrinfo(
                    dest[0], dest[1], type=socket.SOCK_DGRAM
                )[0]
                sock = socket.socket(family, kind, proto)
                sock.setblocking(False)
                sock.connect(address)
            except OSError as exc:  # as 10.5: logged, and the daemon goes on without it
                logger.error("dtmf.log_dest_failed", dest=f"{dest[0]}:{dest[1]}", error=str(exc))
            else:
                self.sock = sock

    def write(self, report: DtmfReport) -> None:
        text = dtmf_json(report)
        if self.lines:
            dtmf_logger.info("dtmf.event", call_id=report.call_id, json=text)
        if self.sock is not None:
            try:
                self.sock.send(text.encode())
                self.sent += 1
            except OSError as exc:  # nobody listening (ICMP refused), buffer full: not ours
                self.errors += 1
                logger.debug("dtmf.send_failed", call_id=report.call_id, error=str(exc))
        for writer in list(self.ng_clients):
            if not writer.is_closing():
                writer.write(dtmf_notify(report, secrets.token_hex(8)))

    def close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
            self.sock = None
