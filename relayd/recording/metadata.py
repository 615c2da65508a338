"""The text of rtpengine 10.5's pcap-method metadata file (pure: values in, text out).

One file per recording, built in ``tmp/`` while the recording runs and moved to
``metadata/`` when it ends (relayd/recording/spool.py). What 10.5.3.5 writes, in order
(tests/interop/test_recording_oracle.py compares against it):

1. **Head**, when the recording starts: the pcap's full path, then an empty line
   (``"<path>\\n\\n"``).
2. **One block per SDP** that rtpengine *sent* (the rewritten body of an offer or answer) while
   the recording ran; an SDP that passed before ``start recording`` or after ``stop
   recording`` is not in it (sipwise/rtpengine#877). A block is::

       \\n[Label: <label>\\n]Timestamp started ms: <ms>\\nSDP mode: <offer|answer>
       SDP before RTP packet: <n>\\n\\n<the SDP as sent, CRLF and all>

   ``Label`` only when the party sending the SDP has one (ng ``label``). ``Timestamp started
   ms`` is that party's ``started`` time (when it was created, or when its previous offer or
   answer was done) in milliseconds with three decimals. ``n`` is one more than the number of
   packets in the pcap so far (Wireshark's number of the next packet): 1 before any.
3. **Tail**, when the recording ends::

       \\nTimestamp terminated ms(first monologue): <ms>\\n\\ncall start time: <t>
       call end time: <t>\\n

   ``ms`` is when the call's first party (the caller) was terminated by ``delete``, ``0.000``
   while it is not (a recording ended by ``stop recording``). The times are local time,
   ``YYYY-MM-DDThh:mm:ss``: the *call's* creation (also for a recording started later) and the
   moment the recording ended. When the call carries ng ``metadata``, the tail ends with
   ``"\\n\\n<metadata>\\n"``.

``metadata`` is not appended as it arrives: 10.5's pcap method keeps one value per call,
each ``metadata`` key (offer, answer, ``start recording``, ``stop recording``) that differs
from it replaces it, and the value current when the recording ends is written once, in the
tail. A call's value outlives a stopped recording and lands in the next one too. (10.5 has no
``metadata`` command: it answers "Unrecognized command".)
"""

from __future__ import annotations

import time

__all__ = ["head", "local_time", "milliseconds", "sdp_block", "tail"]


def milliseconds(when: float | None) -> str:
    """``when`` (seconds since the epoch) as rtpengine prints a timeval in ms: ``%.3f``."""
    return "0.000" if when is None else f"{when * 1000.0:.3f}"


def local_time(when: float) -> str:
    """``YYYY-MM-DDThh:mm:ss`` in local time of the whole second (strftime's ``%FT%T``)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(int(when)))


def head(pcap_path: str) -> str:
    return f"{pcap_path}\n\n"


def sdp_block(mode: str, sdp: str, *, packet_number: int, started: float, label: str = "") -> str:
    """The block for one SDP; ``packet_number`` is the next packet's (1 before any)."""
    label_line = f"\nLabel: {label}" if label else ""
    return (
        f"{label_line}\nTimestamp started ms: {milliseconds(started)}\nSDP mode: {mode}"
        f"\nSDP before RTP packet: {packet_number}\n\n{sdp}"
    )


def tail(*, started: float, ended: float, terminated: float | None, metadata: str = "") -> str:
    """The lines that close the file; ``started`` is the call's creation time."""
    text = (
        f"\nTimestamp terminated ms(first monologue): {milliseconds(terminated)}"
        f"\n\ncall start time: {local_time(started)}\ncall end time: {local_time(ended)}\n"
    )
    if metadata:
        text += f"\n\n{metadata}\n"
    return text
