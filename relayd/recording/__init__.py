"""Call recording as rtpengine 10.5's pcap method writes it: the spool, pcaps, metadata files.

Self-contained (the standard library only): relayd's workers drive a
:class:`~relayd.recording.recorder.CallRecorder` per recorded call with the packets they see,
the supervisor feeds it the SDPs. docs/recording.md describes the spool as operators see it.
"""

from relayd.recording.recorder import CallRecorder, RecordingError
from relayd.recording.recovery import Leftover, close_leftover, leftovers
from relayd.recording.spool import RecordingNames, SpoolSettings, prepare, recording_names

__all__ = [
    "CallRecorder",
    "Leftover",
    "RecordingError",
    "RecordingNames",
    "SpoolSettings",
    "close_leftover",
    "leftovers",
    "prepare",
    "recording_names",
]
