"""relayctl: operate a running relayd (the counterpart of rtpengine-ctl).

Over the admin socket (``--socket``, else ``admin-socket`` from the
configuration file, else /run/relayd/admin.sock)::

    relayctl list numsessions | sessions | totals | callid CALLID
    relayctl terminate CALLID | all
    relayctl workers | kernel | config | reload
    relayctl set maxsessions|maxload|maxcpu|maxbw VALUE   (maxsessions 0: drain)
    relayctl active | standby | ha        (Redis high availability: docs/operations.md)

Over ng (``--ng``, else ``listen-ng`` from the configuration file, else
127.0.0.1:2223), as Kamailio sees relayd::

    relayctl ping | list | query CALLID | delete CALLID | statistics

``--json`` prints any read command's reply as JSON. Exit status: 0 done, 1
relayd answered with an error, 2 relayd is not reachable.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from relayd.config import DEFAULT_ADMIN_SOCKET, ConfigError, parse_endpoint, read_config_file
from relayd.ng.client import NgClient, NgTimeout

__all__ = ["AdminClient", "Unreachable", "main"]

DEFAULT_NG = ("127.0.0.1", 2223)
CONFIG_FILES = ("/etc/relayd/rtpengine.conf", "/etc/rtpengine/rtpengine.conf")
ADMIN_COMMANDS = (
    "terminate",
    "workers",
    "kernel",
    "config",
    "reload",
    "set",
    "active",
    "standby",
    "ha",
)
LIST_WHAT = ("numsessions", "sessions", "totals", "callid")


class Unreachable(Exception):
    """relayd does not answer where relayctl looked for it."""


class AdminClient:
    """One request, one reply over relayd's admin socket."""

    def __init__(self, path: str, timeout: float = 5.0) -> None:
        self.path = path
        self.timeout = timeout

    def request(self, command: str, *args: str) -> dict[str, Any]:
        """Send ``command`` and ``args`` as one JSON line; return relayd's JSON reply.

        Raises :class:`Unreachable` when the socket does not answer or the reply is not JSON.
        """
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
            sock.sendall(json.dumps({"command": command, "args": list(args)}).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(1 << 20)
                if not chunk:
                    break
                data += chunk
        except OSError as exc:
            raise Unreachable(f"relayd is not reachable at {self.path}: {exc}") from None
        finally:
            sock.close()
        try:
            reply: dict[str, Any] = json.loads(data)
        except ValueError:
            raise Unreachable(f"no usable reply from {self.path}") from None
        return reply


def _config_values(args: argparse.Namespace) -> dict[str, str]:
    candidates = [args.config_file] if args.config_file else list(CONFIG_FILES)
    for name in candidates:
        path = Path(name)
        if not path.exists():
            continue
        try:
            values = read_config_file(path, args.config_section)
        except (ConfigError, OSError, UnicodeDecodeError):
            continue
        return {key: value for key, (value, _) in values.items()}
    return {}


def _ng_address(args: argparse.Namespace) -> tuple[str, int]:
    if args.ng:
        return parse_endpoint(args.ng, "127.0.0.1")
    values = _config_values(args)
    if "listen-ng" in values:
        host, port = parse_endpoint(values["listen-ng"], "127.0.0.1")
        return ("127.0.0.1" if host in ("0.0.0.0", "") else host), port
    return DEFAULT_NG


def _admin_path(args: argparse.Namespace) -> str:
    if args.socket:
        return str(args.socket)
    return _config_values(args).get("admin-socket", DEFAULT_ADMIN_SOCKET)


def _parser() -> argparse.ArgumentParser:
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(
        prog="relayctl",
        description=doc.splitlines()[0],
        epilog="exit status: 0 done, 1 relayd answered with an error, 2 relayd not reachable",
    )
    parser.add_argument("--socket", help=f"relayd's admin socket (default {DEFAULT_ADMIN_SOCKET})")
    parser.add_argument("--ng", help="ng address of relayd, [HOST:]PORT")
    parser.add_argument("--config-file", help="read admin-socket and listen-ng from this file")
    parser.add_argument("--config-section", default="rtpengine")
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for relayd")
    parser.add_argument("--json", action="store_true", help="print replies as JSON")
    # --json is accepted after the command as well (relayctl workers --json)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("ping", parents=[common], help="check that relayd answers ng")
    listing = sub.add_parser(
        "list", parents=[common], help="sessions and counters (no argument: call-ids over ng)"
    )
    listing.add_argument("what", nargs="?", choices=LIST_WHAT)
    listing.add_argument("call_id", nargs="?")
    sub.add_parser("statistics", parents=[common], help="rtpengine's statistics tree over ng")
    for name in ("query", "delete"):
        cmd = sub.add_parser(name, parents=[common], help=f"{name} one call over ng")
        cmd.add_argument("call_id")
        cmd.add_argument("--from-tag")
        cmd.add_argument("--to-tag")
    terminate = sub.add_parser("terminate", help="end a call (or all) at once, freeing its ports")
    terminate.add_argument("call_id", help="a call-id, or 'all'")
    sub.add_parser("workers", parents=[common], help="per worker: core, pid, streams, pps, CPU")
    sub.add_parser("kernel", parents=[common], help="kernel path: table health, offloaded streams")
    sub.add_parser("config", parents=[common], help="the configuration relayd runs with")
    sub.add_parser("reload", help="re-read the configuration file")
    setting = sub.add_parser(
        "set", help="a limit on new calls, now, until a reload (set maxsessions 0: drain)"
    )
    setting.add_argument("name", help="maxsessions, maxload, maxcpu or maxbw")
    setting.add_argument("value", help="maxsessions -1: no limit; the others 0: no limit")
    sub.add_parser("active", help="take over every foreign (Redis standby) call")
    sub.add_parser("standby", help="take over nothing automatically; own calls left to the peer")
    sub.add_parser("ha", parents=[common], help="Redis state: mode, own/foreign calls, writes")
    return parser


# -- text output -------------------------------------------------------------------------------


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def _print_admin(command: str, what: str | None, reply: dict[str, Any]) -> None:
    if command == "list" and what == "numsessions":
        print(f"Current sessions own: {reply['own']}")
        print(f"Current sessions foreign: {reply['foreign']}")
        print(f"Current sessions total: {reply['total']}")
    elif command == "list" and what == "sessions":
        rows = [["CALL-ID", "STATE", "AGE", "WORKER", "STREAMS", "KERNEL", "PACKETS", "REC"]]
        for s in reply["sessions"]:
            rows.append(
                [
                    s["call_id"],
                    s["state"],
                    f"{s['age']:.0f}s",
                    str(s["worker"]),
                    str(s["streams"]),
                    str(s["kernel_streams"]),
                    str(s["packets"]),
                    s.get("recording") or "-",
                ]
            )
        print(_table(rows) if len(rows) > 1 else "No sessions.")
    elif command == "list" and what == "callid":
        print(
            f"Call-ID {reply['call_id']}: {reply['state']}, worker {reply['worker']}, "
            f"age {reply['age']:.0f} s"
        )
        if reply.get("recording"):
            print(f"  recording ({reply['recording']}): {reply.get('recording_file', '')}")
        for party in reply["parties"]:
            print(f"  tag {party['tag'] or '(none)'} ({party['role']})")
            for media in party["medias"]:
                print(
                    f"    media {media['index']} {media['type']} {media['protocol']} "
                    f"{media['direction']}"
                )
                if media.get("codecs_in") or media.get("codecs_out"):
                    print(
                        f"      transcoding: sends {', '.join(media['codecs_in'])}; "
                        f"is sent {', '.join(media['codecs_out'])}"
                    )
                for st in media["streams"]:
                    print(
                        f"      {st['component']:<4} {st['local']} <-> "
                        f"{st['endpoint'] or '(unknown)'}"
                        f"{'' if st['confirmed'] else ' (unconfirmed)'}  {st['path']}  "
                        f"packets {st['packets']} bytes {st['bytes']} errors {st['errors']}"
                    )
    elif command == "list" and what == "totals":
        total = reply["totalstatistics"]
        print(f"Uptime of relayd: {total['uptime']} seconds")
        for key, label in (
            ("managedsessions", "Total managed sessions"),
            ("rejectedsessions", "Total rejected sessions"),
            ("timeoutsessions", "Total timed-out sessions via TIMEOUT"),
            ("silenttimeoutsessions", "Total timed-out sessions via SILENT_TIMEOUT"),
            ("finaltimeoutsessions", "Total timed-out sessions via FINAL_TIMEOUT"),
            ("offertimeoutsessions", "Total timed-out sessions via OFFER_TIMEOUT"),
            ("regularterminatedsessions", "Total regular terminated sessions"),
            ("forcedterminatedsessions", "Total forced terminated sessions"),
        ):
            print(f"{label}: {total[key]}")
        for path, label in (("userspace", "userspace"), ("kernel", "kernel")):
            figures = reply["traffic"][path]
            print(f"Total relayed packets ({label}): {figures['packets']}")
            print(f"Total relayed bytes ({label}): {figures['bytes']}")
            print(f"Total relayed packet errors ({label}): {figures['errors']}")
        print(f"Average call duration: {total['avgcallduration']}")
        control = reply["controlstatistics"]
        print("Control statistics: " + ", ".join(f"{k} {v}" for k, v in control.items()))
    elif command == "terminate":
        done = reply["terminated"]
        print(f"Terminated {len(done)} call(s)" + (f": {', '.join(done)}" if done else ""))
    elif command == "workers":
        rows = [["WORKER", "CORE", "PID", "STREAMS", "PPS", "CPU%", "CPU-S", "IPC-Q", "UP"]]
        for w in reply["workers"]:
            rows.append(
                [
                    str(w["index"]),
                    str(w["cpu"]),
                    str(w["pid"]),
                    str(w["streams"]),
                    f"{w['pps']:.0f}",
                    f"{w['cpu_percent']:.1f}",
                    f"{w['cpu_seconds']:.2f}",
                    str(w["to_worker"] + w["from_worker"]),
                    "yes" if w["connected"] else "no",
                ]
            )
        print(_table(rows))
    elif command == "kernel":
        if reply["enabled"]:
            print(
                f"Kernel path: enabled, table inet {reply['table']}, "
                f"{reply['kernel_streams']} stream(s) offloaded"
            )
        else:
            print(f"Kernel path: disabled ({reply['reason'] or 'not started'})")
        for f in reply["forwards"]:
            print(
                f"  {f['call_id']}: {f['source']} -> {f['relay']} => {f['out']} -> "
                f"{f['dest']}  packets {f['packets']} bytes {f['bytes']}"
            )
    elif command == "config":
        print(f"# effective configuration (file: {reply['source']})")
        for key, value in reply["config"].items():
            if isinstance(value, list):
                value = ";".join(str(v) for v in value)
            print(f"{key} = {'' if value is None else value}")
    elif command in ("active", "standby"):
        if command == "active":
            print(f"active: {reply['taken_over']} call(s) taken over")
        else:
            print(f"standby: {reply['released']} call(s) left to the peer")
    elif command == "ha":
        for key, value in reply.items():
            if key != "result":
                print(f"{key}: {value}")
    elif command == "reload":
        for key, (old, new) in reply["applied"].items():
            print(f"applied: {key} {old} -> {new}")
        for key in reply["restart"]:
            print(f"needs a restart: {key} (changed in the file, running value kept)")
        if not reply["applied"] and not reply["restart"]:
            print("no change")
    elif command == "set":
        for key, (old, new) in reply["set"].items():
            print(f"Success setting {key} from {old} to {new}")


def _admin(args: argparse.Namespace) -> int:
    path = _admin_path(args)
    params = []
    what = getattr(args, "what", None)
    if args.command == "list":
        params = [what, *([args.call_id] if args.call_id else [])]
    elif args.command == "terminate":
        params = [args.call_id]
    elif args.command == "set":
        params = [args.name, args.value]
    try:
        reply = AdminClient(path, timeout=max(args.timeout, 10.0)).request(args.command, *params)
    except Unreachable as exc:
        print(f"relayctl: {exc}", file=sys.stderr)
        return 2
    if reply.get("result") != "ok":
        print(f"relayctl: {reply.get('error', 'error')}", file=sys.stderr)
        return 1
    if args.json:
        reply.pop("result", None)
        print(json.dumps(reply, indent=2))
    else:
        _print_admin(args.command, what, reply)
    return 0


def _ng(args: argparse.Namespace) -> int:
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
    if args.json:
        print(json.dumps(reply, indent=2))
    elif args.command == "ping":
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


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "list" and args.what == "callid" and not args.call_id:
        print("relayctl: list callid needs a call-id", file=sys.stderr)
        return 1
    if args.command in ADMIN_COMMANDS or (args.command == "list" and args.what):
        return _admin(args)
    return _ng(args)


if __name__ == "__main__":
    raise SystemExit(main())
