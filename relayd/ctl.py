"""relayctl: operate a running relayd over its ng port.

``relayctl ping | list | query CALLID | delete CALLID | statistics``; replies
are printed as JSON. The ng address comes from ``--ng``, else from
``listen-ng`` in the configuration file, else 127.0.0.1:2223.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from relayd.config import ConfigError, parse_endpoint, read_config_file
from relayd.ng.client import NgClient, NgTimeout

__all__ = ["main"]

DEFAULT_NG = ("127.0.0.1", 2223)
CONFIG_FILES = ("/etc/relayd/rtpengine.conf", "/etc/rtpengine/rtpengine.conf")


def _ng_address(args: argparse.Namespace) -> tuple[str, int]:
    if args.ng:
        return parse_endpoint(args.ng, "127.0.0.1")
    candidates = [args.config_file] if args.config_file else list(CONFIG_FILES)
    for name in candidates:
        path = Path(name)
        if not path.exists():
            continue
        try:
            values = read_config_file(path, args.config_section)
        except ConfigError:
            continue
        if "listen-ng" in values:
            host, port = parse_endpoint(values["listen-ng"][0], "127.0.0.1")
            return ("127.0.0.1" if host in ("0.0.0.0", "") else host), port
    return DEFAULT_NG


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="relayctl", description=__doc__.splitlines()[0])
    parser.add_argument("--ng", help="ng address of relayd, [HOST:]PORT")
    parser.add_argument("--config-file", help="read listen-ng from this rtpengine.conf")
    parser.add_argument("--config-section", default="rtpengine")
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds per try")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("ping", help="check that relayd answers")
    sub.add_parser("list", help="call-ids of the current calls")
    sub.add_parser("statistics", help="global counters")
    for name in ("query", "delete"):
        cmd = sub.add_parser(name, help=f"{name} one call")
        cmd.add_argument("call_id")
        cmd.add_argument("--from-tag")
        cmd.add_argument("--to-tag")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    address = _ng_address(args)
    message: dict[str, Any] = {"command": args.command}
    if args.command == "list":
        message["limit"] = 1 << 30
    if args.command in ("query", "delete"):
        message["call-id"] = args.call_id
        if args.from_tag:
            message["from-tag"] = args.from_tag
        if args.to_tag:
            message["to-tag"] = args.to_tag
    try:
        with NgClient(address, timeout=args.timeout, retries=1) as client:
            reply = client.request(message)
    except (NgTimeout, OSError) as exc:
        print(
            f"relayctl: relayd at {address[0]}:{address[1]} is not reachable: {exc}",
            file=sys.stderr,
        )
        return 2
    if args.command == "ping":
        print(reply.get("result", ""))
    elif args.command == "list":
        for call_id in reply.get("calls", []):
            print(call_id)
    else:
        print(json.dumps(reply, indent=2, sort_keys=False))
    if reply.get("result") == "error":
        print(f"relayctl: {reply.get('error-reason', 'error')}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
