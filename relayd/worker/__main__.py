"""relay-worker: one data-plane process, pinned to a core.

Started by relayd (``--fd``: an inherited SOCK_SEQPACKET link) or by systemd as
``relay-worker@N.service`` (``--connect``: relayd's worker socket path).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
from collections.abc import Sequence

import structlog

from relayd import log
from relayd.worker.loop import Worker

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """relay-worker's entry point; returns the exit status (1: relayd's socket unreachable).

    Pins to ``--cpu``, takes the inherited link (``--fd``) or connects to ``--connect``, and
    runs the loop until relayd says stop or goes away, or SIGTERM (SIGINT is left to relayd).
    """
    parser = argparse.ArgumentParser(prog="relay-worker", description=__doc__.splitlines()[0])
    parser.add_argument("--worker", type=int, required=True, help="worker index")
    parser.add_argument("--cpu", type=int, default=-1, help="core to pin to (-1: leave as is)")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--fd", type=int, help="inherited link to relayd")
    group.add_argument("--connect", help="path of relayd's worker socket")
    parser.add_argument("--log-level", type=int, default=6)
    parser.add_argument("--log-format", choices=log.FORMATS, default="default")
    args = parser.parse_args(argv)
    log.configure(args.log_level, stderr=True, fmt=args.log_format)
    structlog.contextvars.bind_contextvars(worker=args.worker)  # on every line of this process
    logger = log.get_logger("relayd.worker")
    if args.cpu >= 0:
        try:
            os.sched_setaffinity(0, {args.cpu})
        except OSError as exc:
            logger.warning("worker.pin_failed", worker=args.worker, cpu=args.cpu, error=str(exc))
    if args.fd is not None:
        link = socket.socket(fileno=args.fd)
    else:
        link = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            link.connect(args.connect)
        except OSError as exc:
            print(f"relay-worker: cannot reach relayd at {args.connect}: {exc}", file=sys.stderr)
            return 1
    worker = Worker(link, args.worker)
    signal.signal(signal.SIGTERM, lambda *_: setattr(worker, "running", False))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # relayd stops us on Ctrl-C
    logger.info("worker.started", worker=args.worker, cpu=args.cpu, pid=os.getpid())
    worker.run()
    logger.info("worker.stopped", worker=args.worker)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
