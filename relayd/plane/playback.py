"""The supervisor's side of media playback: the file opened, the worker told, the end heard.

relayd/calls/playback.py decides, by ng's rules, who hears what; this module gives it what
it needs from outside the call model and carries its orders out:

* ``probe``: a source's duration, from the file's header and one decoded frame
  (relayd/transcode/player.py), so ``play media`` answers at once; a file whose header has
  no duration is decoded whole only when it is small (``PROBE_LIMIT``).
* After each request, the orders go to the call's worker (:meth:`PlaybackControl.flush`):
  first the call leaves the kernel path (its party is played to from a relay socket the
  kernel's NAT would otherwise own) and its forward goes out, so the worker holds the
  sockets the ``Play`` names; then the ``Play``. A file travels as its path; a blob inline
  (base64) up to ``INLINE_LIMIT`` (64 KiB), else in a private temporary file under the runtime
  directory that the worker removes once it has read it.
* A worker's ``PlayDone`` ends the party's play in the model; the call may go back to the
  kernel path. So does a worker's restart (its players died with it) and, for the calls a
  relayd restart takes back from its journal, the start.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping

from relayd import ipc
from relayd.calls.model import Call
from relayd.calls.playback import MediaSource, Playbacks, PlayOrder, StopOrder
from relayd.log import get_logger
from relayd.plane.media import MediaPlane
from relayd.transcode.player import PlayError, probe

__all__ = ["INLINE_LIMIT", "PlaybackControl", "probe_source"]

log = get_logger("relayd.playback")

INLINE_LIMIT = 64 * 1024
"""Blobs up to this size go to the worker in the message (base64: 87 KiB; a datagram of the
SOCK_SEQPACKET link must fit its send buffer, which ``wmem_max`` caps at 208 KiB on a
default kernel); larger ones through a file."""


def _runtime_base() -> str:
    return os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0] or tempfile.gettempdir()


def probe_source(source: MediaSource) -> int | None:
    """The duration (ms) of one play of ``source``, None where it does not play (the
    ``probe`` of relayd/calls/playback.py)."""
    try:
        return probe(source.path if source.kind == "file" else source.data)
    except (PlayError, OSError) as exc:
        log.info("media.unplayable", kind=source.kind, error=str(exc))
        return None


class PlaybackControl:
    """Media playback for one supervisor: ``playbacks`` is handed to its Commands; ``flush``
    runs after every request. ``prepare(call)`` takes a call to the workers and sends its
    forward at once (the supervisor's kernel hand-over and worker updates)."""

    def __init__(
        self,
        media: MediaPlane,
        calls: Mapping[str, Call],
        prepare: Callable[[Call], None],
        released: Callable[[Call], None],
    ) -> None:
        self.media = media
        self.calls = calls
        self.prepare = prepare
        self.released = released
        self.playbacks = Playbacks(probe_source)
        self._directory = ""
        media.on_play_done = self._done
        # a restarted worker has no players: the plays of its calls ended with the old one
        earlier = media.on_worker_ready

        def worker_ready(index: int) -> None:
            if earlier is not None:
                earlier(index)
            self.end_plays(call for call in calls.values() if call.worker == index)

        media.on_worker_ready = worker_ready

    def end_plays(self, calls: Iterable[Call]) -> None:
        """The plays of these calls ended with their worker (or an earlier relayd): their
        parties may go back to the kernel path."""
        for call in self.playbacks.end_all(list(calls), time.time()):
            self.released(call)

    def flush(self) -> None:
        """Send what the commands queued, in order, each to its call's worker."""
        if not self.playbacks.outbox:
            return
        workers = self.media.workers
        for order in self.playbacks.take():
            call = self.calls.get(order.call_id)
            if call is None:
                continue
            if isinstance(order, StopOrder):
                message: ipc.Message = ipc.PlayStop(order.call_id, order.tag, order.rtp)
            else:
                self.prepare(call)
                message = self._play(order)
            self.media.pool.send(workers[call.worker], message)

    def _play(self, order: PlayOrder) -> ipc.Play:
        target, source = order.target, order.source
        path, data, temporary = source.path, "", False
        if source.kind == "blob" and len(source.data) <= INLINE_LIMIT:
            data = base64.b64encode(source.data).decode("ascii")
        elif source.kind == "blob":
            path, temporary = self._spill(source.data), True
        return ipc.Play(
            order.call_id,
            order.tag,
            target.rtp,
            target.rtcp,
            json.dumps(target.format.to_list(), separators=(",", ":")),
            target.ptime,
            target.srtp,
            path,
            temporary,
            data,
            order.repeat,
            order.start_pos,
            order.started,
        )

    def _spill(self, data: bytes) -> str:
        """``data`` in a new file of relayd's own private directory (mode 0700)."""
        if not self._directory or not os.path.isdir(self._directory):
            self._directory = tempfile.mkdtemp(prefix="relayd-play-", dir=_runtime_base())
        handle, path = tempfile.mkstemp(suffix=".media", dir=self._directory)
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        return path

    def close(self) -> None:
        """relayd stops: blobs no worker read are removed with their directory."""
        if self._directory:
            with contextlib.suppress(OSError):
                shutil.rmtree(self._directory)
            self._directory = ""

    def _done(self, message: ipc.PlayDone) -> None:
        call = self.calls.get(message.call_id)
        if call is None:
            return
        if message.error:
            log.warning("media.play_failed", tag=message.tag, error=message.error)
        if self.playbacks.ended(call, message.tag, message.started, time.time()):
            self.released(call)
