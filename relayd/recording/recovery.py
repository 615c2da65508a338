"""What a relayd that died (SIGKILL, crash, power) left in the spool, and closing it.

A recording that was running when its process died has its metadata file in ``tmp/`` (never
in ``metadata/``: a collector does not take it for complete) and a pcap that reads to its last
whole record, less at most what waited in memory (relayd/recording/recorder.py). At start-up
the new process either goes on with it, when it restored the call
(``CallRecorder(..., resume=True)``), or closes it with :func:`close_leftover`, so that the
collector gets what was recorded: the torn tail goes, the metadata file gets its tail and
moves to ``metadata/``.

Only for a spool that this relayd writes alone: a ``tmp/`` file of another daemon writing to
the same directory is alive, not left over, and nothing here can tell the difference.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from relayd.recording.recorder import CallRecorder
from relayd.recording.spool import METADATA_DIR, TMP_DIR, RecordingNames, SpoolSettings

__all__ = ["Leftover", "close_leftover", "leftovers"]

_PREFIX = "rtpengine-meta-"
_SUFFIX = ".tmp"


@dataclass(frozen=True, slots=True)
class Leftover:
    """An unfinished recording: its names, and when its metadata file was last written."""

    names: RecordingNames
    modified: float


def leftovers(settings: SpoolSettings) -> list[Leftover]:
    """The unfinished recordings in ``tmp/``, oldest first; their pcap from each metadata
    file's first line (``recording-file`` may have put it outside the spool)."""
    root = settings.root
    found = []
    with os.scandir(os.path.join(root, TMP_DIR)) as entries:
        for entry in entries:
            name = entry.name
            if not (name.startswith(_PREFIX) and name.endswith(_SUFFIX)) or not entry.is_file():
                continue
            prefix = name[len(_PREFIX) : -len(_SUFFIX)]
            with open(entry.path, "rb") as file:
                first_line = file.readline().decode("utf-8", "surrogateescape").rstrip("\n")
            names = RecordingNames(
                prefix=prefix,
                tag=prefix.rpartition("-")[2],
                pcap=first_line,
                temporary=f"{root}/{TMP_DIR}/{name}",
                metadata=f"{root}/{METADATA_DIR}/{_PREFIX}{prefix}.txt",
            )
            found.append(Leftover(names, entry.stat().st_mtime))
    return sorted(found, key=lambda leftover: (leftover.modified, leftover.names.prefix))


def close_leftover(
    settings: SpoolSettings, leftover: Leftover, *, ended: float, started: float | None = None
) -> str:
    """Finish a recording no process will go on with; the path of its metadata file.

    ``started`` (the call's creation, for "call start time") is the first packet's time when
    not known, else the metadata file's last change; ``ended`` is the "call end time".
    RecordingError when it cannot be finished (its pcap gone, the disk full).
    """
    recorder = CallRecorder(settings, leftover.names, started=0.0, resume=True)
    if started is None:
        started = recorder.first_packet if recorder.first_packet is not None else leftover.modified
    recorder.started = started
    return recorder.finish(ended)
