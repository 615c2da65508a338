"""When a call records: ng's ``record-call``, ``start``/``stop``/``pause recording`` and
``metadata``, by rtpengine 10.5's rules, and what the call's worker is told.

Pure: the files are named by ``name`` (the supervisor's, from relayd/recording/spool.py) and
written by the worker that relays the call (relayd/worker/recording.py); what that worker
is to hear is queued in :attr:`Recordings.outbox`, in order, for the supervisor to send
after the reply. The rules (rtpengine 10.5, daemon/recording.c and call_interfaces.c):

* ``record-call`` as a flag, or as a key ``yes``/``on``, on an offer or answer starts the
  recording; ``no``/``off`` stops it; another value is logged and ignored. A call already
  recording goes on in the same files.
* Without ``recording-dir`` nothing records: the request is answered as usual and the log
  says why.
* While a call records, every offer's and answer's SDP as relayd sent it goes into the
  metadata file, and the reply lists the pcap under ``recordings``.
* ``stop recording`` finishes the files (the metadata file moves where collectors look); a
  later start gets new ones.
* ``start forwarding`` (rtpengine's feed to its recording daemon, which the pcap method has
  not) records the call as well, in 10.5 as here; ``stop forwarding`` ends that, and the
  recording once neither it nor ``start recording`` wants it.
* ``pause recording`` (rtpengine 11's command; 10.5 does not know it) keeps the files open
  and writes no packets until ``start recording``.
* ``metadata`` (offer, answer, start and stop recording) replaces the call's text, written
  into the metadata file when it is finished.
* ``delete`` finishes the call's recording at once (rtpengine 10.5 waits for the call to go,
  ``delete-delay`` later); with ``discard-recording`` its files are removed instead. A call
  that ends otherwise (a timeout, ``relayctl terminate``) finishes it then.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from relayd import ipc
from relayd.calls.model import Call, CallRecording
from relayd.log import get_logger
from relayd.ng.message import Request

__all__ = ["Namer", "Recordings"]

log = get_logger("relayd.calls.recording")

Namer = Callable[[Call, Request], tuple[tuple[str, ...], str]]
"""Names a new recording's files: their names (``RecordingNames`` in field order) and the
pcap's path. Raises OSError when they cannot be had (the spool is gone), ValueError for a
request that names them wrongly."""

_ON = ("yes", "on")
_OFF = ("no", "off")


class Recordings:
    """The recording side of the ng commands; ``name`` is None where no spool is configured."""

    def __init__(self, name: Namer | None = None) -> None:
        self.name = name
        self.outbox: list[tuple[Call, ipc.Message]] = []
        self.started = 0  # recordings started (/metrics)
        self.failures = 0  # requested and not started, or stopped on their own

    # -- offer and answer ---------------------------------------------------------------------

    def signalled(
        self, call: Call, req: Request, mode: str, sdp: str, now: float
    ) -> dict[str, Any]:
        """An offer or answer (``mode``) that produced ``sdp``: ``record-call`` and ``metadata``
        applied; what the reply gains (the pcap, while the call records)."""
        self._metadata(call, req)
        value = req.record_call
        if value in _ON:
            self.start(call, req, now)
        elif value in _OFF:
            self.stop(call, now)
        elif value:
            log.info("recording.bad_record_call", value=value)
        recording = call.recording
        if recording is None or not recording.active:
            return {}
        party = call.monologues.get(req.from_tag if mode == "offer" else req.to_tag)
        started, label = (party.created, party.label) if party is not None else (call.created, "")
        self.outbox.append((call, ipc.RecordSdp(call.call_id, mode, sdp, started, label)))
        return {"recordings": [recording.pcap]}

    # -- the recording commands ---------------------------------------------------------------

    def start(self, call: Call, req: Request, now: float) -> None:
        """``start recording``, ``record-call=yes``: record ``call`` from now on (in the same
        files if it does); a paused recording resumes."""
        self._metadata(call, req)
        self._want(call).on = True
        self._open(call, req, now)

    def stop(self, call: Call, now: float, req: Request | None = None) -> None:
        """``stop recording``, ``record-call=no``: the files are finished, unless ``start
        forwarding`` still wants them (rtpengine: recording_stop)."""
        if req is not None:
            self._metadata(call, req)
        recording = call.recording
        if recording is None:
            return
        recording.on = False
        if not recording.forwarding:
            self.finish(call, now)

    def start_forwarding(self, call: Call, req: Request, tag: str, now: float) -> None:
        """``start forwarding`` (of party ``tag``, "" the whole call): rtpengine 10.5 forwards
        to its recording daemon, which the pcap method has not; what it does there, and
        here, is record the call (recording_start)."""
        self._metadata(call, req)
        self._want(call).forwarding.add(tag)
        self._open(call, req, now)

    def stop_forwarding(self, call: Call, req: Request, tag: str, now: float) -> None:
        """``stop forwarding``: the party's (or the call's; with ``all`` every) forwarding ends,
        and the recording with it unless something else still wants it."""
        self._metadata(call, req)
        recording = call.recording
        if recording is None:
            return
        if tag or not req.has("all"):
            recording.forwarding.discard(tag)
        else:
            recording.forwarding.clear()
        if not recording.on and not recording.forwarding:
            self.finish(call, now)

    def _want(self, call: Call) -> CallRecording:
        if call.recording is None:
            call.recording = CallRecording()
        return call.recording

    def _open(self, call: Call, req: Request, now: float) -> None:
        """The files, if the call has none: named and started; a paused recording resumes."""
        recording = self._want(call)
        if recording.active:
            if recording.paused:
                recording.paused = False
                self.outbox.append((call, ipc.RecordPause(call.call_id, paused=False)))
                log.info("recording.resumed", pcap=recording.pcap)
            return
        if self.name is None:
            self.failures += 1
            log.error("recording.no_spool", detail="recording requested, no recording-dir set")
            return
        try:
            names, pcap = self.name(call, req)
        except (OSError, ValueError) as exc:  # the spool gone; a recording-file not absolute
            self.failures += 1
            log.error("recording.unnamed", error=str(exc))
            return
        self.started += 1
        recording.names, recording.pcap, recording.started = names, pcap, now
        recording.paused = False
        # the metadata's "call start time" is the call's, also for a recording started late
        start = ipc.RecordStart(
            call.call_id, names, started=call.created, metadata=recording.metadata
        )
        self.outbox.append((call, start))
        log.info("recording.started", pcap=pcap)

    def pause(self, call: Call, req: Request) -> None:
        """``pause recording``: no packets written until ``start recording``; files kept."""
        self._metadata(call, req)
        recording = call.recording
        if recording is None or not recording.active or recording.paused:
            return
        recording.paused = True
        self.outbox.append((call, ipc.RecordPause(call.call_id, paused=True)))
        log.info("recording.paused", pcap=recording.pcap)

    def finish(self, call: Call, now: float, *, discard: bool = False, ended: bool = False) -> None:
        """The recording ends: stopped, or with ``ended`` the call itself (the metadata says
        when); with ``discard`` its files are removed. Nothing for a call that does not record."""
        recording = call.recording
        if recording is None or not recording.active:
            return
        stop = ipc.RecordStop(
            call.call_id,
            now,
            recording.metadata,
            discard=discard,
            terminated=now if ended else 0.0,
        )
        self.outbox.append((call, stop))
        log.info("recording.discarded" if discard else "recording.finished", pcap=recording.pcap)
        recording.names, recording.pcap, recording.paused = (), "", False
        recording.on = False
        recording.forwarding.clear()

    def failed(self, call: Call, reason: str) -> None:
        """The worker's recording of ``call`` stopped on its own: the call goes on unrecorded
        (a later start gets new files)."""
        recording = call.recording
        self.failures += 1
        if recording is not None and recording.active:
            log.error("recording.failed", pcap=recording.pcap, reason=reason)
            recording.names, recording.pcap, recording.paused = (), "", False
            recording.on = False
            recording.forwarding.clear()

    def take(self) -> list[tuple[Call, ipc.Message]]:
        """What the workers are to hear, in order, since the last take."""
        outbox, self.outbox = self.outbox, []
        return outbox

    @staticmethod
    def _metadata(call: Call, req: Request) -> None:
        if req.metadata is None:
            return
        if call.recording is None:
            call.recording = CallRecording()
        call.recording.metadata = req.metadata
