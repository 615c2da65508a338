"""``relayd``: start-up, as rtpengine's daemon does it, then the supervisor's loop.

Reads the configuration (an rtpengine.conf and the same keys as options), sets
up logging, reports the keys it does not implement, resolves the interfaces and
the DTLS certificate, goes to the background unless ``--foreground`` (the
parent exits once the daemon's listeners are up), writes the pidfile, and runs
:class:`relayd.supervisor.Supervisor` on uvloop until SIGTERM.
"""

from __future__ import annotations

import contextlib
import gc
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

import psutil
import uvloop

from relayd import __version__, log
from relayd.calls.interfaces import resolve
from relayd.certificate import load_or_create
from relayd.config import KEYS, Config, ConfigError, load, unimplemented
from relayd.shards.front import Front
from relayd.supervisor import Supervisor

__all__ = ["GC_THRESHOLDS", "main", "start_logging", "system_addresses"]

logger = log.get_logger("relayd")

# A request's own objects are freed by reference counting; what the collector sees grow
# is calls (about a hundred tracked objects each). With the default thresholds a rising
# call count runs a full collection every few hundred calls, each walking every call
# (tens of milliseconds with thousands of them, ng waiting meanwhile); with these, the
# young generations are collected every 20,000 net allocations and a full collection
# waits for 8 million. Start-up state is frozen out of collections.
GC_THRESHOLDS = (20_000, 20, 20)


def system_addresses() -> dict[str, list[str]]:
    """Addresses of each network device, for ``interface = eth0`` style lines."""
    result: dict[str, list[str]] = {}
    for name, addrs in psutil.net_if_addrs().items():
        for addr in addrs:
            if addr.family in (socket.AF_INET, socket.AF_INET6):
                result.setdefault(name, []).append(addr.address.split("%")[0])
    return result


def start_logging(config: Config) -> None:
    """Logging as the configuration sets it (the daemon's, and each shard's)."""
    log.configure(
        config.log_level,
        stderr=config.log_stderr or config.foreground,
        facility=config.log_facility,
        fmt=config.log_format,
        timestamps=config.log_timestamps,
        rtcp_facility=config.log_facility_rtcp,
        dtmf_facility=config.log_facility_dtmf,
    )


def _daemonize(keep_stderr: bool) -> int:
    """Fork into the background; the parent exits once the daemon reports it is ready.

    Returns the write end of the readiness pipe: the daemon writes one byte to it
    when its listeners are up. If the daemon dies first, the parent exits 1.
    """
    read_end, write_end = os.pipe()
    if os.fork():
        os.close(write_end)
        ready = os.read(read_end, 1)
        os._exit(0 if ready else 1)
    os.close(read_end)
    os.setsid()
    if os.fork():
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1) if keep_stderr else (0, 1, 2):
        os.dup2(devnull, fd)
    return write_end


def main(argv: Sequence[str] | None = None) -> int:
    """relayd's entry point (the steps are the module's); returns the exit status.

    0 once stopped by SIGTERM or SIGINT (or after ``--version``), 78 (EX_CONFIG) for a
    configuration relayd cannot use, 1 when the supervisor fails with an OSError (a listening
    address taken, …). Without ``--foreground`` the parent exits once the daemon is up.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if "-v" in args or "--version" in args:
        print(f"relayd {__version__}")
        return 0
    try:
        config = load(args)
    except ConfigError as exc:
        print(f"relayd: configuration error: {exc}", file=sys.stderr)
        return 78  # EX_CONFIG
    if config.values.get("codecs") is True:
        # rtpengine's action: the codec list, then exit (an installation check)
        from relayd.transcode.capabilities import text

        print(text(), end="")
        return 0
    start_logging(config)
    ignored = unimplemented(config)
    if ignored:
        logger.warning(
            "config.unimplemented",
            keys=ignored,
            detail={k: KEYS[k].note for k in ignored if k in KEYS and KEYS[k].note},
        )
    try:
        interfaces = resolve(config.interfaces, system_addresses())
        certificate = load_or_create(config.tls_certificate or None, config.tls_private_key or None)
    except (ValueError, OSError) as exc:
        print(f"relayd: configuration error: {exc}", file=sys.stderr)
        return 78
    ready_fd = None if config.foreground else _daemonize(keep_stderr=config.log_stderr)
    pidfile = Path(config.pidfile) if config.pidfile else None
    if pidfile:
        pidfile.write_text(f"{os.getpid()}\n")
    logger.info(
        "relayd.started",
        version=__version__,
        config=config.source,
        interfaces=[f"{a.interface}/{a.local}!{a.advertised}" for a in interfaces.all],
        ports=f"{config.port_min}-{config.port_max}",
        shards=config.shards,
    )
    try:
        if config.shards > 1:
            # the calls split over shard processes; this one routes ng to them
            uvloop.run(Front(config, args, ready_fd).run())
            return 0
        supervisor = Supervisor(config, interfaces, certificate, ready_fd=ready_fd, argv=args)
        gc.freeze()  # what start-up built is never garbage: keep collections off it
        gc.set_threshold(*GC_THRESHOLDS)
        uvloop.run(supervisor.run())
    except OSError as exc:
        logger.error("relayd.failed", error=str(exc))
        return 1
    finally:
        if pidfile:
            with contextlib.suppress(OSError):
                pidfile.unlink()
    return 0
