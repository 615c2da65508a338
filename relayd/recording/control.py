"""The supervisor's side of call recording: the spool, the names, the workers told.

relayd/calls/recording.py decides, by ng's rules, when a call records; this module gives
it what it needs from outside the call model: the spool (``recording-dir``, prepared at
start), a name for each new recording's files (relayd/recording/spool.py), and the messages
it queued, sent after each reply to the worker that relays the call, which writes the files
(relayd/worker/recording.py). It also takes recordings up again where a call's worker
changed (a restarted worker, a relayd restored from its journal) and hears of a worker's
recording that failed.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterable, Mapping
from urllib.parse import unquote_to_bytes

from relayd import ipc
from relayd.calls.model import Call
from relayd.calls.recording import Recordings
from relayd.config import Config
from relayd.log import get_logger
from relayd.nft.nflog import NflogReader
from relayd.ng.message import Request
from relayd.plane.forwarding import media_key, section_count
from relayd.plane.media import MediaPlane
from relayd.recording.recovery import close_leftover, leftovers
from relayd.recording.spool import (
    SpoolSettings,
    names_from_fields,
    names_to_fields,
    prepare,
    recording_names,
)
from relayd.shards.route import owner

__all__ = ["RecordingControl", "nflog_base", "records_now", "spool_settings"]

log = get_logger("relayd.recording")


def spool_settings(config: Config) -> SpoolSettings | None:
    """The spool relayd records into, from ``recording-dir``, ``-method`` and ``-format``;
    None where no directory is set. The ``proc`` method (and ``all``) records as pcap, with a
    warning: it needs rtpengine's kernel module and recording daemon, which relayd has not."""
    if not config.recording_dir:
        return None
    if config.recording_method != "pcap":
        log.warning(
            "recording.method_unsupported",
            method=config.recording_method,
            detail="recorded with the pcap method (proc needs rtpengine's kernel module)",
        )
    return SpoolSettings(
        config.recording_dir,
        method="pcap",
        format=config.recording_format,
        file_mode=config.recording_file_mode,
        dir_mode=config.recording_dir_mode,
    )


def nflog_base(
    config: Config, spool: SpoolSettings | None, shard: int = 0, *, events: bool = False
) -> int:
    """The nflog group whose copies worker 0 of this process reads, where the kernel path may
    carry recorded calls (the kernel copying their packets to the worker that records them:
    worker ``i`` reads group base + ``i``); -1 where it may not (no spool, no kernel path,
    workers that are systemd units without the privilege, or nfnetlink_log unusable: then
    recorded calls stay with the workers, as in rtpengine 10.5). ``events``: the DTMF event
    log wants the copies of telephone-event packets too (relayd/ops/dtmflog.py), spool or
    not."""
    if (spool is None and not events) or config.table < 0:
        return -1
    if config.worker_socket:
        # workers as systemd units (relay-worker@.service) run without CAP_NET_ADMIN and
        # netlink: they cannot read the copies, so recorded calls stay with them
        log.info(
            "recording.kernel_copies_unavailable",
            reason="worker-socket: the workers are units without CAP_NET_ADMIN",
            effect="recorded calls are forwarded in userspace",
        )
        return -1
    base = config.recording_nflog_group + 256 * shard
    try:
        with NflogReader(base):
            pass  # bound and released: the workers will bind theirs
    except OSError as exc:
        log.warning(
            "recording.kernel_copies_unavailable",
            group=base,
            error=str(exc),
            effect="recorded calls are forwarded in userspace",
        )
        return -1
    log.info("recording.kernel_copies", first_group=base)
    return base


def records_now(call: Call) -> bool:
    """The call records and is not paused: its packets are written."""
    recording = call.recording
    return recording is not None and recording.active and not recording.paused


class RecordingControl:
    """Recording for one supervisor: ``recordings`` is handed to its Commands; :meth:`flush`
    runs after every request and every call that ends."""

    def __init__(
        self, settings: SpoolSettings | None, media: MediaPlane, calls: Mapping[str, Call]
    ) -> None:
        self.media = media
        self.calls = calls
        if settings is not None:
            prepare(settings)  # an OSError: relayd does not start (as rtpengine)
            log.info("recording.spool", directory=settings.directory, format=settings.format)
        self.settings = settings
        self.recordings = Recordings(self._name if settings is not None else None)
        media.on_record_failed = self._failed
        media.on_worker_ready = self._worker_ready

    def _name(self, call: Call, req: Request) -> tuple[tuple[str, ...], str]:
        assert self.settings is not None
        names = recording_names(
            self.settings,
            call.call_id,
            directory=req.recording_dir or None,
            pattern=req.recording_pattern or None,
            file=req.recording_file or None,
        )
        return names_to_fields(names), names.pcap

    def flush(self) -> None:
        """Send what the commands queued, in order, each to its call's worker."""
        if not self.recordings.outbox:
            return
        workers = self.media.workers
        for call, message in self.recordings.take():
            if isinstance(message, ipc.RecordStart):
                message = dataclasses.replace(message, medias=_medias(call))
            self.media.pool.send(workers[call.worker], message)

    def finish_all(self, calls: Iterable[Call]) -> None:
        """relayd stops and no journal will take its calls back: every recording finished."""
        now = time.time()
        for call in calls:
            self.recordings.finish(call, now)
        self.flush()

    def close_leftovers(self, restored: Iterable[Call], shard: int = 0, shards: int = 1) -> None:
        """Recordings an earlier relayd left unfinished in ``tmp/`` (it was killed, or stopped
        with no journal) whose calls did not come back: finished now, so that collectors get
        what was recorded. A restored call's recording goes on instead; with shards each
        closes those of the calls it owns; a recording another process still has open (an
        rtpengine writing to the same spool) is left alone."""
        if self.settings is None:
            return
        going_on = {
            names_from_fields(call.recording.names).temporary
            for call in restored
            if call.recording is not None and call.recording.active
        }
        found = [
            leftover
            for leftover in leftovers(self.settings)
            if leftover.names.temporary not in going_on
            and owner(unquote_to_bytes(leftover.names.prefix.rpartition("-")[0]), shards) == shard
        ]
        if not found:
            return
        busy = _open_elsewhere()
        now = time.time()
        for leftover in found:
            if leftover.names.pcap in busy or leftover.names.temporary in busy:
                continue
            try:
                path = close_leftover(self.settings, leftover, ended=now)
            except (OSError, ValueError) as exc:
                log.warning("recording.leftover_failed", pcap=leftover.names.pcap, error=str(exc))
            else:
                log.info("recording.leftover_closed", pcap=leftover.names.pcap, metadata=path)

    def resume(self, calls: Iterable[Call]) -> None:
        """Calls restored from the journal at start-up, their workers just spawned: their
        recordings go on in the same files (what came while relayd was down is missing)."""
        for call in calls:
            recording = call.recording
            if recording is not None and recording.active:
                resume = dataclasses.replace(_resume(call), medias=_medias(call))
                self.media.pool.send(self.media.workers[call.worker], resume)

    def _worker_ready(self, index: int) -> None:
        """A restarted worker (or one that connected, as a unit): the recordings of its
        calls go on there, in the same files."""
        self.resume(call for call in self.calls.values() if call.worker == index)

    def _failed(self, message: ipc.RecordFailed) -> None:
        call = self.calls.get(message.call_id)
        if call is not None:
            self.recordings.failed(call, message.reason)
        else:
            self.recordings.failures += 1
            log.error("recording.failed", call_id=message.call_id, reason=message.reason)


def _resume(call: Call) -> ipc.RecordStart:
    recording = call.recording
    assert recording is not None
    return ipc.RecordStart(
        call.call_id,
        recording.names,
        started=call.created,
        paused=recording.paused,
        resume=True,
    )


def _medias(call: Call) -> tuple[str, ...]:
    return tuple(media_key(call.call_id, index) for index in range(section_count(call)))


def _open_elsewhere() -> set[str]:
    """The files other processes have open (from /proc; those it may not read are skipped)."""
    found: set[str] = set()
    me = str(os.getpid())
    try:
        pids = [entry for entry in os.listdir("/proc") if entry.isdigit() and entry != me]
    except OSError:
        return found
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                found.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
            except OSError:
                continue
    return found
