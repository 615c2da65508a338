"""A worker's recordings: the calls it records, and the tap on each of their sockets.

The supervisor decides what records (relayd/calls/recording.py) and says so with
``RecordStart`` / ``RecordSdp`` / ``RecordPause`` / ``RecordStop``; the files are written here,
by relayd/recording/recorder.py's :class:`CallRecorder`, because this process sees the
packets. Every socket of a recorded call carries a :class:`Tap` (``MediaSocket.tap``): the
loop hands it each datagram it accepts from the party, after SRTP is taken off, before it is
sent on, so the pcap holds what the party said, in clear, as it arrived. A socket with no tap
costs the loop one attribute test per batch.

A recording that fails (disk full, spool gone) is closed with what it has and reported
(``RecordFailed``); the call's media goes on untouched. A worker that exits finishes
nothing: its calls' recordings are taken up again by whoever gets the calls next (a new
worker, a restarted relayd from its journal), or finished by relayd when the calls end.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from relayd import ipc
from relayd.ipc import parse_key, socket_key
from relayd.log import get_logger
from relayd.nft.nflog import NflogReader, key_addresses
from relayd.recording.recorder import CallRecorder, RecordingError
from relayd.recording.spool import SpoolSettings, names_from_fields
from relayd.worker.sockets import MediaSocket

__all__ = ["Tap", "WorkerRecordings"]

log = get_logger("relayd.worker.recording")

_Route = tuple[MediaSocket, tuple[str, int]]

_BATCHES_PER_WAKE = 8  # the kernel's batches (up to 64 copies each) read per wake of the loop

FLUSH_TICK = 0.2
"""Seconds between looks at the recorders' waiting packets (their flush interval, 0.2 s)."""


@dataclass(slots=True, eq=False)
class _Recording:
    call_id: str
    recorder: CallRecorder
    tapped: list[tuple[MediaSocket, Tap]] = field(default_factory=list)
    paused: bool = False


@dataclass(slots=True, eq=False)
class Tap:
    """One socket of a recorded call: its datagrams go into the call's pcap, addressed from
    the party to ``local`` (the socket's own address), as the party sent them."""

    recording: _Recording
    local: tuple[str, int]
    owner: WorkerRecordings

    def packet(self, source: tuple[str, int], data: bytes, when: float | None = None) -> None:
        recording = self.recording
        if recording.paused:
            return
        try:
            recording.recorder.packet(
                time.time() if when is None else when, source, self.local, data
            )
        except RecordingError as exc:
            self.owner.failed(recording, exc)


class WorkerRecordings:
    """The recordings of one worker, by call-id; ``send`` reports to the supervisor."""

    def __init__(self, worker: int, send: Callable[[ipc.Message], None]) -> None:
        self.worker = worker
        self.send = send
        self.settings: SpoolSettings | None = None
        self.calls: dict[str, _Recording] = {}
        self.reader: NflogReader | None = None  # the kernel's copies of recorded packets
        self.lost = 0  # copies the kernel dropped for this worker (reader too slow)
        # a forward's key as the kernel lays it out -> the relay socket its copies go to (its
        # tap, its DTMF watch: relayd/worker/dtmf.py), and the party: found once per forward,
        # forgotten whenever a tap comes or goes
        self._routes: dict[bytes, _Route | None] = {}

    def configure(self, directory: str, format_: str, file_mode: int) -> None:
        self.settings = (
            SpoolSettings(directory, format=format_, file_mode=file_mode) if directory else None
        )

    # -- the supervisor's messages ------------------------------------------------------------

    def start(
        self,
        message: ipc.RecordStart,
        medias: Mapping[str, list[str]],
        by_key: Mapping[str, MediaSocket],
    ) -> None:
        """Open the call's files (or take them up again, ``resume``) and tap the sockets of
        the sections it has here now."""
        if message.call_id in self.calls:  # not expected: the supervisor stops one first
            self._close(
                self.calls.pop(message.call_id), ipc.RecordStop(message.call_id, time.time())
            )
        if self.settings is None:
            self._report(message.call_id, "no recording spool configured in this worker")
            return
        try:
            recorder = CallRecorder(
                self.settings,
                names_from_fields(message.names),
                started=message.started,
                resume=message.resume,
            )
            if message.metadata:
                recorder.metadata(message.metadata)
        except (OSError, ValueError) as exc:
            log.error("recording.start_failed", call_id=message.call_id, error=str(exc))
            self._report(message.call_id, str(exc))
            return
        recording = _Recording(message.call_id, recorder, paused=message.paused)
        self.calls[message.call_id] = recording
        for media in message.medias:
            self._tap(recording, (by_key[key] for key in medias.get(media, ()) if key in by_key))

    def sdp(self, message: ipc.RecordSdp) -> None:
        recording = self.calls.get(message.call_id)
        if recording is None:
            return
        try:
            recording.recorder.sdp(
                message.mode, message.sdp, started=message.started, label=message.label
            )
        except RecordingError as exc:
            self.failed(recording, exc)

    def pause(self, message: ipc.RecordPause) -> None:
        recording = self.calls.get(message.call_id)
        if recording is not None:
            recording.paused = message.paused

    def stop(self, message: ipc.RecordStop) -> None:
        recording = self.calls.pop(message.call_id, None)
        if recording is not None:
            self._close(recording, message, discard=message.discard)

    def listen_copies(self, group: int) -> int:
        """Read nflog ``group``: the copies the kernel makes of the packets of this worker's
        recorded calls that it forwards itself (relayd/nft/nflog.py). Returns the socket's
        descriptor for the loop's epoll; -1 without (``group`` < 0, or the group unusable:
        logged, since those calls' kernel-forwarded packets then go unrecorded)."""
        if self.reader is not None:
            self.reader.close()
            self.reader = None
        if group < 0:
            return -1
        reader = NflogReader(group)
        try:
            reader.open()
        except OSError as exc:
            log.error(
                "recording.nflog_unavailable", worker=self.worker, group=group, error=str(exc)
            )
            return -1
        self.reader = reader
        return reader.fileno()

    def copies(self, by_key: Mapping[str, MediaSocket]) -> None:
        """The kernel's copies waiting on the nflog socket: each goes to the tap of the relay
        socket it was sent to, as if that socket had read it (with the kernel's receive time),
        and to its DTMF watch (the kernel copies a forward's telephone-event packets for the
        DTMF event log: relayd/nft/ruleset.py)."""
        reader = self.reader
        if reader is None:
            return
        try:
            batch = reader.drain_udp(_BATCHES_PER_WAKE)
        except OSError as exc:
            log.warning("recording.nflog_failed", worker=self.worker, error=str(exc))
            return
        self.lost = reader.lost
        routes = self._routes
        for wire, time_us, payload in batch:
            route = routes.get(wire)
            if route is None:
                if wire in routes:
                    continue  # no longer recorded: the mark goes with the next change
                route = routes[wire] = self._route(wire, by_key)
                if route is None:
                    continue
            ms, source = route
            if ms.tap is not None:
                ms.tap.packet(source, payload, time_us / 1e6 if time_us is not None else None)
            if ms.dtmf is not None:
                ms.dtmf.packet(source, payload)

    @staticmethod
    def _route(wire: bytes, by_key: Mapping[str, MediaSocket]) -> _Route | None:
        """Where a forward's copies go: the relay socket it was sent to, where it records or
        reports DTMF."""
        source, relay = key_addresses(wire)
        ms = by_key.get(socket_key(*relay))
        if ms is None or (ms.tap is None and ms.dtmf is None):
            return None
        return ms, source

    def reroute(self) -> None:
        """A forward changed the sockets or their DTMF watches: the copies' routes are found
        anew."""
        self._routes.clear()

    # -- the loop's events --------------------------------------------------------------------

    def flush_due(self, now: float) -> None:
        """Every ``FLUSH_TICK``: packets that waited their recorder's flush interval go to disk
        (a quiet stream's last packets would otherwise wait for the next one)."""
        for recording in list(self.calls.values()):
            try:
                recording.recorder.flush_due(now)
            except RecordingError as exc:
                self.failed(recording, exc)

    def forwarded(self, media: str, sockets: Iterable[MediaSocket]) -> None:
        """A forward of ``media`` was applied: its sockets are tapped if its call records."""
        recording = self.calls.get(media.rpartition(" ")[0])
        if recording is not None:
            self._tap(recording, sockets)

    def failed(self, recording: _Recording, exc: OSError) -> None:
        """Writing failed: the recording ends here (what is whole stays), the call goes on."""
        self.calls.pop(recording.call_id, None)
        self._untap(recording)
        log.error("recording.write_failed", call_id=recording.call_id, error=str(exc))
        self._report(recording.call_id, str(exc))

    # -- helpers ------------------------------------------------------------------------------

    def _tap(self, recording: _Recording, sockets: Iterable[MediaSocket]) -> None:
        for ms in sockets:
            if isinstance(ms.tap, Tap) and ms.tap.recording is recording:
                continue
            local = parse_key(ms.leg.key)
            if local is None:
                continue
            tap = ms.tap = Tap(recording, local, self)
            recording.tapped.append((ms, tap))
            self._routes.clear()

    def _untap(self, recording: _Recording) -> None:
        self._routes.clear()
        for ms, tap in recording.tapped:
            # (a socket closed since is never read again: its tap goes with it)
            if ms.tap is tap:
                ms.tap = None
        recording.tapped.clear()

    def _close(self, recording: _Recording, stop: ipc.RecordStop, *, discard: bool = False) -> None:
        self._untap(recording)
        try:
            if discard:
                recording.recorder.abandon()
            else:
                if stop.metadata:
                    recording.recorder.metadata(stop.metadata)
                recording.recorder.finish(stop.ended, terminated=stop.terminated or None)
        except OSError as exc:
            log.error("recording.finish_failed", call_id=recording.call_id, error=str(exc))
            self._report(recording.call_id, str(exc))

    def _report(self, call_id: str, reason: str) -> None:
        self.send(ipc.RecordFailed(self.worker, call_id, reason))
