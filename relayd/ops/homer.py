"""Homer capture: what relayd sends as HEPv3, and the sender that gets it there.

What is sent, as rtpengine sends it (``daemon/homer.c``, ``control_ng.c``, ``rtcp.c``):

* **ng traffic** (``homer-enable-ng``, or the guide's ``homer-ng``): every ng
  request and its reply except ``ping``, payload ``cookie SP message`` exactly
  as on the wire, capture protocol ``homer-ng-capture-proto`` (0x3d), source →
  destination being Kamailio → relayd for the request and back for the reply,
  correlation id the call-id.
* **RTCP** of relayed streams (unless ``homer-disable-rtcp-stats``): each
  RTCP datagram as rtpengine's JSON (:func:`relayd.rtcp.homer_json`), capture
  protocol 5, source the party that sent it, destination relayd's socket,
  correlation id the call-id. The workers copy RTCP datagrams to relayd over
  their link (``ipc.Rtcp``, at most ``ipc.RTCP_SAMPLE_LIMIT`` per worker per
  second), so one sender, one TCP connection, holds all capture traffic.

The sender keeps rtpengine's behaviour: UDP datagrams fire and forget; over
TCP a queue of at most 200 packets while connecting, a reconnect 30 seconds
after a failure, packets beyond the queue dropped and counted.
"""

from __future__ import annotations

import collections
import errno
import select
import socket
import time
from collections.abc import Callable

from relayd.calls.model import host_port
from relayd.config import HomerSettings
from relayd.log import get_logger
from relayd.ops import hep
from relayd.ops.counters import Counters

__all__ = ["HomerSender", "ng_capture", "rtcp_capture"]

log = get_logger("relayd.ops.homer")

QUEUE_LIMIT = 200
RETRY_AFTER = 30.0


def _timestamp(wall: float) -> tuple[int, int]:
    seconds = int(wall)
    return seconds, min(round((wall - seconds) * 1_000_000), 999_999)


def _capture(
    settings: HomerSettings,
    protocol: int,
    payload: bytes,
    call_id: str,
    source: tuple[str, int],
    destination: tuple[str, int],
    wall: float,
) -> bytes:
    seconds, micro = _timestamp(wall)
    return hep.encode(
        hep.HepPacket(
            source,
            destination,
            seconds,
            micro,
            protocol,
            settings.capture_id,
            call_id.encode(),
            payload,
        )
    )


def ng_capture(
    settings: HomerSettings,
    message: bytes,
    call_id: str,
    source: tuple[str, int],
    destination: tuple[str, int],
    wall: float,
) -> bytes:
    """One ng message (``cookie SP body``, as sent or received) as a HEP packet."""
    return _capture(settings, settings.ng_protocol, message, call_id, source, destination, wall)


def rtcp_capture(
    settings: HomerSettings,
    json_text: str,
    call_id: str,
    source: tuple[str, int],
    destination: tuple[str, int],
    wall: float,
) -> bytes:
    """RTCP as rtpengine reports it to Homer: its JSON summary, capture type 5."""
    return _capture(
        settings,
        hep.CaptureProtocol.RTCP_JSON,
        json_text.encode(),
        call_id,
        source,
        destination,
        wall,
    )


class HomerSender:
    """Delivers encoded HEP packets to the capture server; never blocks, never raises."""

    def __init__(
        self,
        settings: HomerSettings,
        counters: Counters,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.counters = counters
        self.clock = clock
        self.sock: socket.socket | None = None
        self.connected = False
        self.queue: collections.deque[bytes] = collections.deque()
        self.partial = b""
        self.retry_at = 0.0
        self._failure = ""
        self._target: tuple[int, tuple[str, int]] | None = None

    def _resolve(self) -> tuple[int, tuple[str, int]]:
        if self._target is None:
            host, port = self.settings.address
            kind = socket.SOCK_STREAM if self.settings.protocol == "tcp" else socket.SOCK_DGRAM
            family, _, _, _, address = socket.getaddrinfo(host, port, type=kind)[0]
            self._target = (family, (str(address[0]), int(address[1])))
        return self._target

    def _fail(self, what: str, exc: OSError | str) -> None:
        reason = f"{what}: {exc}"
        if reason != self._failure:  # once per kind of failure, not per packet
            log.error("homer.failed", target=host_port(self.settings.address), error=reason)
            self._failure = reason
        if self.sock is not None:
            self.sock.close()
        self.sock, self.connected, self.partial = None, False, b""
        self.retry_at = self.clock() + RETRY_AFTER

    def send(self, packet: bytes) -> None:
        """Send one encoded HEP packet: over UDP at once, over TCP through the queue.

        A packet beyond ``QUEUE_LIMIT`` queued, or a UDP send that fails, is dropped and counted
        (``homer_dropped``), as rtpengine does.
        """
        if self.settings.protocol != "tcp":
            self._send_udp(packet)
            return
        if len(self.queue) >= QUEUE_LIMIT:
            self.counters.homer_dropped += 1
            if self._failure != "queue full":
                log.error("homer.queue_full", limit=QUEUE_LIMIT, effect="packet dropped")
                self._failure = "queue full"
            return
        self.queue.append(packet)
        self.pump()

    def _send_udp(self, packet: bytes) -> None:
        try:
            if self.sock is None:
                family, address = self._resolve()
                self.sock = socket.socket(family, socket.SOCK_DGRAM)
                self.sock.setblocking(False)
                self.sock.connect(address)
            self.sock.send(packet)
        except OSError as exc:
            self.counters.homer_dropped += 1
            self._fail("send", exc)
            return
        self.counters.homer_sent += 1
        self._failure = ""

    def pump(self) -> None:
        """TCP: connect when due, finish a pending connect, write what is queued."""
        if self.settings.protocol != "tcp":
            return
        if self.sock is None:
            if self.clock() < self.retry_at:
                return
            try:
                family, address = self._resolve()
                self.sock = socket.socket(family, socket.SOCK_STREAM)
                self.sock.setblocking(False)
                code = self.sock.connect_ex(address)
            except OSError as exc:
                self._fail("connect", exc)
                return
            if code not in (0, errno.EINPROGRESS):
                self._fail("connect", OSError(code, errno.errorcode.get(code, str(code))))
                return
        assert self.sock is not None
        if not self.connected:
            _, writable, _ = select.select([], [self.sock], [], 0)
            if not writable:
                return
            code = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                self._fail("connect", OSError(code, errno.errorcode.get(code, str(code))))
                return
            self.connected = True
            self._failure = ""
            log.info("homer.connected", target=host_port(self.settings.address))
        while self.partial or self.queue:
            if not self.partial:
                self.partial = self.queue.popleft()
                self.counters.homer_sent += 1
            try:
                written = self.sock.send(self.partial)
            except BlockingIOError:
                return
            except OSError as exc:
                self.counters.homer_dropped += 1
                self._fail("send", exc)
                return
            self.partial = self.partial[written:]

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
