"""One call's recording: its pcap written as packets pass, its metadata file built in tmp/.

Rules:

* **Single writer.** A recorder belongs to one process and is driven from one thread: the
  worker that sees the call's packets (it also numbers them, which the metadata's "SDP before
  RTP packet" needs), fed the SDPs and the ng ``metadata`` by whoever sees those.
* **Whole records only.** Packets are gathered in memory and written whole, several records in
  one ``write()`` (every packet on its own with ``flush_interval = 0``). A write that stops
  half-way (disk full, file-size limit) is cut back to the last whole record, so the pcap on
  disk reads to its last whole packet at any moment. What a crash loses is what waits in
  memory: at most ``flush_bytes`` of records, and while packets keep coming at most
  ``flush_interval`` seconds of them; a stream that went quiet keeps its tail in memory until
  :meth:`CallRecorder.flush_due` (the owner's timer, see :meth:`next_timeout`) or the end.
  rtpengine 10.5 keeps its tail in libpcap's stdio buffer (4 KiB) until the call ends.
* **Complete only when finished.** The metadata file stays under ``tmp/`` until
  :meth:`finish` has written its tail, then is renamed into ``metadata/`` (same file system,
  so the collector sees it whole or not at all). A collector takes a recording for complete
  when its metadata file appears; after a crash the metadata of an unfinished recording is
  left in ``tmp/``, never in ``metadata/``.
* **Failure stops the recording, not the call.** An OSError while writing stops it: the pcap
  is cut to its last whole record and closed, the metadata file is finished at once (its
  tail says when) and moved to ``metadata/`` where it can be, :attr:`failed` says why, and
  :class:`RecordingError` is raised once, from the call that met the error. Every later call
  does nothing (:meth:`finish` returns where the metadata file ended up).
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import time
from typing import NoReturn

from relayd.recording import metadata as layout
from relayd.recording.pcap import (
    HeaderMaker,
    RecordFormat,
    Scan,
    global_header,
    scan,
    whole_records,
)
from relayd.recording.spool import RecordingNames, SpoolSettings

__all__ = ["CallRecorder", "RecordingError"]

_CREATE = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC


class RecordingError(OSError):
    """The recording stopped (disk full, unwritable spool): the call goes on."""


class CallRecorder:
    """One call's recording: its pcap written live, its metadata file built in tmp/.

    ``started`` is when the *call* was created (the metadata's "call start time", also for a
    recording started later in the call). The files are created here; RecordingError (with
    nothing left behind) when they cannot be.
    """

    def __init__(
        self,
        settings: SpoolSettings,
        names: RecordingNames,
        *,
        started: float,
        resume: bool = False,
    ) -> None:
        self.settings = settings
        self.names = names
        self.started = started
        self.pcap_path = names.pcap
        self.packets = 0  # records accepted; after a failure, those kept in the file
        self.failed: str | None = None
        self._headers = HeaderMaker(_record_format(settings.format))
        self._flush_bytes = settings.flush_bytes
        self._flush_interval = settings.flush_interval
        self._pending = bytearray()
        self._pending_packets = 0
        self._pending_since = 0.0
        self._pcap_size = 0  # bytes on disk, all of them whole records
        self._meta_size = 0
        self._metadata = ""
        self._terminated: float | None = None  # for the tail, once finish() says
        self._metadata_path = names.temporary
        self._finished = False
        self._pcap_fd = -1
        self._created: list[str] = []  # only these are removed by abandon()
        self.first_packet: float | None = None  # the first record's time, when resumed
        if resume:
            self._reopen()
            return
        head = layout.head(names.pcap).encode("utf-8", "surrogateescape")
        try:
            self._pcap_fd = self._create(names.pcap, global_header(_record_format(settings.format)))
            self._pcap_size = os.fstat(self._pcap_fd).st_size
            os.close(self._create(names.temporary, head))
            self._meta_size = len(head)
        except OSError as exc:
            self._discard_files()
            raise RecordingError(
                exc.errno, f"cannot start recording: {exc.strerror}", exc.filename
            ) from exc

    def _reopen(self) -> None:
        """Go on with a recording an earlier process left unfinished (``resume=True``): its
        pcap cut to the last whole record (a write the crash tore goes) and appended to in
        the format it was started in, its metadata file in tmp/ appended to."""
        names = self.names
        try:
            self._meta_size = os.stat(names.temporary).st_size
            fd = os.open(names.pcap, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
        except OSError as exc:
            raise RecordingError(
                exc.errno, f"cannot resume recording: {exc.strerror}", exc.filename
            ) from exc
        try:
            found = _scan_file(fd)
            if found.record_format is None:  # not even a whole global header: start over
                os.ftruncate(fd, 0)
                header = global_header(_record_format(self.settings.format))
                error = _write_all(fd, header, names.pcap)[1]
                if error is not None:
                    raise error
                self._pcap_size = len(header)
            else:
                os.ftruncate(fd, found.whole)
                self._pcap_size = found.whole
                self._headers = HeaderMaker(found.record_format)
        except OSError as exc:
            os.close(fd)
            raise RecordingError(
                exc.errno, f"cannot resume recording: {exc.strerror}", exc.filename or names.pcap
            ) from exc
        self._pcap_fd = fd
        self.packets = found.records
        self.first_packet = found.first
        self._created = [names.pcap, names.temporary]

    @property
    def metadata_path(self) -> str:
        """Where the metadata file is now: tmp/ while recording, metadata/ once finished."""
        return self._metadata_path

    @property
    def finished(self) -> bool:
        return self._finished

    # -- packets -------------------------------------------------------------------------

    def packet(
        self, when: float, source: tuple[str, int], destination: tuple[str, int], payload: bytes
    ) -> None:
        """One UDP datagram received from ``source`` on the relay's ``destination`` socket (IPv4
        or IPv6 by the addresses), handled at ``when``: a whole record or nothing."""
        if self._finished:
            return
        headers = self._headers.headers(when, source, destination, len(payload))
        if not self._pending:
            self._pending_since = when
        self._pending += headers
        self._pending += payload
        self._pending_packets += 1
        self.packets += 1
        if (
            len(self._pending) >= self._flush_bytes
            or when - self._pending_since >= self._flush_interval
        ):
            self._flush(when)

    def next_timeout(self) -> float | None:
        """When the packets waiting in memory are due to be written (None when none wait)."""
        if not self._pending or self._finished:
            return None
        return self._pending_since + self._flush_interval

    def flush_due(self, now: float) -> None:
        """Write the waiting packets if they have waited ``flush_interval``."""
        deadline = self.next_timeout()
        if deadline is not None and now >= deadline:
            self._flush(now)

    def flush(self) -> None:
        """Write the waiting packets now."""
        if self._pending and not self._finished:
            self._flush(time.time())

    def _flush(self, now: float) -> None:
        error = self._write_pending()
        if error is not None:
            self._fail(error, self.pcap_path, now)

    def _write_pending(self) -> OSError | None:
        """Write the waiting records; on an error keep (and count) the whole ones written."""
        data, waiting = self._pending, self._pending_packets
        self._pending = bytearray()
        self._pending_packets = 0
        written, error = _write_all(self._pcap_fd, data, self.pcap_path)
        if error is not None:
            written, records = whole_records(memoryview(data)[:written], 0)
            self.packets -= waiting - records
        self._pcap_size += written
        return error

    # -- metadata ------------------------------------------------------------------------

    def sdp(self, mode: str, sdp: str, *, started: float | None = None, label: str = "") -> None:
        """An SDP the relay sent (``mode`` "offer" or "answer") while recording: its block,
        numbered with the next packet's number. ``started`` is the sending party's started
        time (its creation, or the end of its previous offer/answer), the call's when None;
        ``label`` its ng ``label``."""
        if self._finished:
            return
        block = layout.sdp_block(
            mode,
            sdp,
            packet_number=self.packets + 1,
            started=self.started if started is None else started,
            label=label,
        )
        self._append(block.encode("utf-8", "surrogateescape"), time.time())

    def metadata(self, text: str) -> None:
        """ng ``metadata``: replaces the call's value, written in the tail (as 10.5 does).

        A recording started when the call already has a value is given it here too."""
        if not self._finished:
            self._metadata = text

    def finish(self, ended: float, *, terminated: float | None = None) -> str:
        """Close the pcap, complete the metadata file and move it to metadata/; its path.

        ``ended`` is the "call end time"; ``terminated`` when the call's first party was
        deleted (None, printed 0.000, when the recording ends by ``stop recording``).
        """
        if self._finished:
            return self._metadata_path
        self._terminated = terminated
        if self._pending:
            self._flush(ended)
        self._close_pcap()
        self._complete(ended)
        return self._metadata_path

    def abandon(self) -> None:
        """``discard-recording``: remove the pcap and the metadata file, wherever they are."""
        self._pending = bytearray()
        self._finished = True
        self._close_pcap()
        problems = self._discard_files()
        if problems:
            raise RecordingError(problems[0].errno, f"cannot discard: {problems[0].strerror}")

    # -- files ---------------------------------------------------------------------------

    def _create(self, path: str, first: bytes) -> int:
        mode = self.settings.file_mode
        fd = os.open(path, _CREATE, mode)
        try:
            self._created.append(path)
            os.fchmod(fd, mode)  # open's mode went through the umask
            error = _write_all(fd, first, path)[1]
            if error is not None:
                raise error
        except OSError:
            os.close(fd)
            raise
        return fd

    def _append(self, data: bytes, now: float) -> None:
        try:
            fd = os.open(self._metadata_path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        except OSError as exc:
            self._fail(exc, self._metadata_path, now)
        error = _write_all(fd, data, self._metadata_path)[1]
        if error is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, self._meta_size)  # no torn block
            os.close(fd)
            self._fail(error, self._metadata_path, now)
        os.close(fd)
        self._meta_size += len(data)

    def _complete(self, ended: float) -> None:
        tail = layout.tail(
            started=self.started, ended=ended, terminated=self._terminated, metadata=self._metadata
        )
        self._append(tail.encode("utf-8", "surrogateescape"), ended)
        self._finished = True
        try:
            os.rename(self.names.temporary, self.names.metadata)
        except OSError as exc:
            self._fail(exc, self.names.metadata, ended)
        self._metadata_path = self.names.metadata
        self._created = [
            self.names.metadata if p == self.names.temporary else p for p in self._created
        ]

    def _close_pcap(self) -> None:
        if self._pcap_fd >= 0:
            fd, self._pcap_fd = self._pcap_fd, -1
            with contextlib.suppress(OSError):
                os.ftruncate(fd, self._pcap_size)  # a torn record goes, if one is there
            os.close(fd)

    def _discard_files(self) -> list[OSError]:
        problems = []
        for path in self._created:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                problems.append(exc)
        self._created = []
        if self._pcap_fd >= 0:
            os.close(self._pcap_fd)
            self._pcap_fd = -1
        return problems

    def _fail(self, exc: OSError, path: str, now: float) -> NoReturn:
        """Stop the recording after ``exc``; keep what is whole, finish the metadata where the
        disk lets us, and raise RecordingError (once: from here on every call is a no-op)."""
        first = self.failed is None
        reason = f"{path}: {exc.strerror or exc}"
        if first:
            self.failed = reason
            if self._pending and self._pcap_fd >= 0:
                self._write_pending()  # the metadata failed: the packets may still fit
            self._close_pcap()
            if not self._finished:
                # the tail, best effort: on a full disk it may not fit either
                with contextlib.suppress(RecordingError):
                    self._complete(now)
            self._finished = True
        raise RecordingError(exc.errno, f"recording stopped: {exc.strerror or exc}", path) from exc


def _write_all(fd: int, data: bytes | bytearray, path: str) -> tuple[int, OSError | None]:
    """Write all of ``data``: (bytes written, None), or how far it got and the error.

    A write to a regular file that meets the end of the disk or the file-size limit writes
    what fits and says so; only the next one fails with ENOSPC or EFBIG.
    """
    view = memoryview(data)
    written = 0
    try:
        while written < len(data):
            done = os.write(fd, view[written:])
            if done <= 0:
                return written, OSError(errno.EIO, "write wrote nothing", path)
            written += done
    except OSError as exc:
        if exc.filename is None:
            exc.filename = path
        return written, exc
    finally:
        view.release()
    return written, None


def _scan_file(fd: int) -> Scan:
    """:func:`~relayd.recording.pcap.scan` of the open file, mapped rather than read."""
    if os.fstat(fd).st_size == 0:
        return scan(b"")
    with mmap.mmap(fd, 0, prot=mmap.PROT_READ) as mapped:
        return scan(mapped)


def _record_format(value: str) -> RecordFormat:
    if value == "raw":
        return "raw"
    if value == "eth":
        return "eth"
    raise ValueError(f"recording-format must be raw or eth, not {value!r}")
