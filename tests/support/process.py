"""Child processes that never outlive the test run."""

from __future__ import annotations

import ctypes
import os
import signal

__all__ = ["new_session_dying_with_parent"]

_PR_SET_PDEATHSIG = 1


def new_session_dying_with_parent() -> None:
    """Run in the child (``preexec_fn``): own process group, SIGTERM if the runner dies.

    PR_SET_PDEATHSIG covers the one case ``finally`` cannot: pytest killed hard.
    """
    os.setsid()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
