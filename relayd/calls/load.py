"""Load limits: when a new call is refused because the host is busy, and with which words (pure).

Rules (rtpengine 10.5, asked live: /usr/bin/rtpengine with each limit, with and without
``supports: ["load limit"]``, limits set at start and through rtpengine-ctl):

* Only an ``offer`` that would create a call is refused; a re-offer, an answer or any
  other request of an existing call goes on, whatever the load.
* ``max-sessions`` is looked at first ("Parallel session limit reached"), then, in this
  order, ``max-load`` (the host's 1-minute load average as the kernel reports it, not
  divided by the cores: 10.5 logged "Load limit exceeded (4.07 > 0.01)" on a 2-core host
  whose ``/proc/loadavg`` read 4.07), ``max-cpu`` (the host's CPU use in percent over
  every core, busy time over all time of ``/proc/stat`` between two samples: one busy core of
  two read "52.0%") and ``max-bandwidth`` (bytes per second the relay forwards, both
  directions of every call, as ``statistics``' ``byterate``). 0 turns a limit off.
* Load and CPU refuse above the limit; bandwidth at the limit already (``>=``).
* With ``supports: ["load limit"]`` (Kamailio always sends it) the reply is
  ``result: load limit`` with the limit's own ``message``: "Parallel session limit
  reached", "Load limit exceeded", "CPU usage limit exceeded", "Bandwidth limit exceeded".
  Without it every one of them is the error "Parallel session limit reached" (so a client
  that knows only that string still moves on to another instance).
* Only ``max-sessions`` refusals count as ``rejectedsessions``; a ``load limit`` reply is no
  error in ``errorcount``, the error reply is.

The figures are sampled by the supervisor on its one-second timer (relayd/ops/loadmeter.py)
and handed in as a :class:`LoadSample`: an offer only compares numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

from relayd.calls.timers import Limits
from relayd.ng.message import NgError

__all__ = [
    "BANDWIDTH",
    "CPU",
    "LOAD",
    "SESSIONS",
    "LoadLimited",
    "LoadSample",
    "load_refusal",
]

SESSIONS = "Parallel session limit reached"
LOAD = "Load limit exceeded"
CPU = "CPU usage limit exceeded"
BANDWIDTH = "Bandwidth limit exceeded"


@dataclass(frozen=True, slots=True)
class LoadSample:
    """The host's figures the load limits compare, as last sampled (all 0 before the first)."""

    load: float = 0.0  # 1-minute load average
    cpu: float = 0.0  # percent of all cores busy
    bandwidth: float = 0.0  # bytes per second forwarded


class LoadLimited(NgError):
    """A new call refused by a limit: ``message`` is the limit's own words (the ``load limit``
    reply's), the error text is always :data:`SESSIONS` (10.5's, without the support flag)."""

    def __init__(self, message: str) -> None:
        super().__init__(SESSIONS)
        self.message = message


def load_refusal(limits: Limits, sample: LoadSample) -> str | None:
    """The message of the first load limit ``sample`` exceeds (in 10.5's order), or None."""
    if limits.max_load > 0 and sample.load > limits.max_load:
        return LOAD
    if limits.max_cpu > 0 and sample.cpu > limits.max_cpu:
        return CPU
    if limits.max_bandwidth > 0 and sample.bandwidth >= limits.max_bandwidth:
        return BANDWIDTH
    return None
