"""Child processes that never outlive the test run."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess

__all__ = ["new_session_dying_with_parent", "stop_process"]

_PR_SET_PDEATHSIG = 1


def new_session_dying_with_parent() -> None:
    """Run in the child (``preexec_fn``): own process group, SIGTERM if the runner dies.

    PR_SET_PDEATHSIG covers the one case ``finally`` cannot: pytest killed hard.
    """
    os.setsid()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> int | None:
    """SIGTERM, then SIGKILL after ``timeout``; the exit status (None if never started)."""
    if proc is None or proc.poll() is not None:
        return None if proc is None else proc.returncode
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(timeout)
