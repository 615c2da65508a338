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
from relayd.ipc import parse_key
from relayd.log import get_logger
from relayd.recording.recorder import CallRecorder, RecordingError
from relayd.recording.spool import SpoolSettings, names_from_fields
from relayd.worker.sockets import MediaSocket

__all__ = ["Tap", "WorkerRecordings"]

log = get_logger("relayd.worker.recording")

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

    def packet(self, source: tuple[str, int], data: bytes) -> None:
        recording = self.recording
        if recording.paused:
            return
        try:
            recording.recorder.packet(time.time(), source, self.local, data)
        except RecordingError as exc:
            self.owner.failed(recording, exc)


class WorkerRecordings:
    """The recordings of one worker, by call-id; ``send`` reports to the supervisor."""

    def __init__(self, worker: int, send: Callable[[ipc.Message], None]) -> None:
        self.worker = worker
        self.send = send
        self.settings: SpoolSettings | None = None
        self.calls: dict[str, _Recording] = {}

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

    @staticmethod
    def _untap(recording: _Recording) -> None:
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
