"""The admin socket behind ``relayctl``: commands over the supervisor state, and their shell.

Protocol: a Unix stream socket (``admin-socket``, default
``/run/relayd/admin.sock``, mode 0660, so root and relayd's group only). Each
request is one line of JSON, ``{"command": "list", "args": ["sessions"]}``;
each reply is one line of JSON, ``{"result": "ok", …}`` or
``{"result": "error", "error": "…"}``. Several requests may share a connection.

The command handlers are plain functions of :class:`relayd.ops.views.RelayState`
and the clock (:func:`handle`); only :func:`serve` touches sockets.
``terminate`` goes through :meth:`Commands.terminate`, so a call ends exactly
as a timed-out one does: kernel forwards removed, worker sockets closed,
ports released, counted as ``forcedterminatedsessions``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from relayd.calls.codec_plans import media_codecs
from relayd.calls.model import Call, Endpoint, host_port
from relayd.config import Config
from relayd.log import get_logger
from relayd.ops.counters import PATHS
from relayd.ops.runtime import SettingError, parse_setting
from relayd.ops.views import RelayState, stream_paths, streams_of, worker_load

__all__ = ["AdminError", "counters_read", "effective_config", "handle", "respond", "serve"]

log = get_logger("relayd.ops.admin")

_LINE_LIMIT = 1 << 16


class AdminError(Exception):
    """A request that cannot be served; the text goes back as ``error``."""


def _endpoint(ep: Endpoint | None) -> str | None:
    return host_port((ep.address, ep.port)) if ep is not None else None


def _call_summary(call: Call, now: float) -> dict[str, Any]:
    streams = list(streams_of(call))
    return {
        "call_id": call.call_id,
        "created": round(call.created, 3),
        "age": round(now - call.created, 3),
        "state": "deleting" if call.deleted_at else ("answered" if call.answered else "offered"),
        "tags": sorted({party.tag for party, _, _ in streams} | set(call.monologues)),
        "worker": call.worker,
        "streams": len(streams),
        "kernel_streams": sum(1 for _, _, s in streams if s.kernelized),
        "packets": sum(s.stats.packets for _, _, s in streams),
        "recording": _recording(call),
    }


def _recording(call: Call) -> str:
    """ "recording", "paused" or "" (not recording now)."""
    recording = call.recording
    if recording is None or not recording.active:
        return ""
    return "paused" if recording.paused else "recording"


def _call_detail(call: Call, now: float) -> dict[str, Any]:
    parties = []
    for party in call.parties():
        medias = []
        for media in party.medias:
            streams = []
            for stream in media.streams:
                streams.append(
                    {
                        "component": "rtcp" if stream.rtcp else "rtp",
                        "local": host_port((stream.local.local, stream.port)),
                        "advertised": _endpoint(stream.advertised_endpoint),
                        "endpoint": _endpoint(stream.endpoint),
                        "confirmed": stream.confirmed,
                        "path": "kernel" if stream.kernelized else "userspace",
                        "packets": stream.stats.packets,
                        "bytes": stream.stats.bytes,
                        "errors": stream.stats.errors,
                        "last_packet": round(stream.stats.last_packet, 3),
                    }
                )
            # where the call transcodes: what the party sends and what it is sent
            peer = call.monologues.get(party.in_dialogue_with or "")
            codecs_in: list[str] = []
            codecs_out: list[str] = []
            if peer is not None and media.index < len(peer.medias):
                codecs_in, codecs_out = media_codecs(media, peer.medias[media.index])
            medias.append(
                {
                    "index": media.index,
                    "type": media.type,
                    "protocol": media.out_protocol or media.protocol,
                    "direction": media.direction,
                    "interface": media.local.interface if media.local else "",
                    "codecs_in": codecs_in,
                    "codecs_out": codecs_out,
                    "streams": streams,
                }
            )
        parties.append(
            {
                "tag": party.tag,
                "role": "callee" if party.answerer else "caller",
                "label": party.label,
                "medias": medias,
            }
        )
    detail = _call_summary(call, now)
    detail["last_signal"] = round(call.last_signal, 3)
    if call.recording is not None and call.recording.active:
        detail["recording_file"] = call.recording.pcap
    detail["parties"] = parties
    return detail


def _list(state: RelayState, args: list[str], now: float) -> dict[str, Any]:
    what = args[0] if args else ""
    calls = state.commands.calls
    if what == "numsessions":
        ha = state.ha_status()  # a standby's foreign calls (relayd/ha/)
        foreign = ha["foreign_calls"] if ha is not None else 0
        return {"own": len(calls), "foreign": foreign, "total": len(calls) + foreign}
    if what == "sessions":
        return {"sessions": [_call_summary(c, now) for c in calls.values()]}
    if what == "totals":
        reply = state.commands.statistics_tree(now)["statistics"]
        traffic = state.counters.traffic
        reply["traffic"] = {
            path: {
                "packets": traffic.total(traffic.packets, path),
                "bytes": traffic.total(traffic.bytes, path),
                "errors": traffic.total(traffic.errors, path),
            }
            for path in PATHS
        }
        return reply
    if what == "callid":
        if len(args) < 2:
            raise AdminError("list callid needs a call-id")
        call = calls.get(args[1])
        if call is None:
            raise AdminError(f"call-id {args[1]!r} not found")
        return _call_detail(call, now)
    raise AdminError("list what? numsessions, sessions, totals or callid CALLID")


def _terminate(state: RelayState, args: list[str], now: float) -> dict[str, Any]:
    if not args:
        raise AdminError("terminate needs a call-id or 'all'")
    commands = state.commands
    targets = list(commands.calls) if args[0] == "all" else [args[0]]
    if args[0] != "all" and args[0] not in commands.calls:
        raise AdminError(f"call-id {args[0]!r} not found")
    done = [call_id for call_id in targets if commands.terminate(call_id, now) is not None]
    return {"terminated": done}


def _workers(state: RelayState) -> dict[str, Any]:
    rates = state.counters.rates
    result = []
    for worker in state.media.workers:
        entry = asdict(worker_load(state.media, worker))
        entry["pps"] = round(rates.rate(f"worker:{worker.index}:packets"), 1)
        entry["cpu_percent"] = round(100.0 * rates.rate(f"worker:{worker.index}:cpu"), 1)
        result.append(entry)
    return {"workers": result}


def _kernel(state: RelayState) -> dict[str, Any]:
    kernel = state.kernel
    if kernel is None:
        return {"enabled": False, "table": None, "reason": "table = -1", "forwards": []}
    kernelized = stream_paths(state.commands.calls.values())["kernel"]
    forwards = []
    for call_id, entries in sorted(kernel.installed.items()):
        for record in entries:
            forward = record.forward
            forwards.append(
                {
                    "call_id": call_id,
                    "socket": record.socket,
                    "source": host_port((forward.source.address, forward.source.port)),
                    "relay": host_port((forward.relay.address, forward.relay.port)),
                    "out": host_port((forward.out.address, forward.out.port)),
                    "dest": host_port((forward.dest.address, forward.dest.port)),
                    "packets": record.packets,
                    "bytes": record.bytes,
                }
            )
    return {
        "enabled": kernel.enabled,
        "table": kernel.name,
        "reason": kernel.reason,
        "ipv6": kernel.ipv6,
        "kernel_streams": kernelized,
        "forwards": forwards,
    }


def effective_config(config: Config) -> dict[str, Any]:
    """Every setting as relayd uses it, under its rtpengine key name."""
    result: dict[str, Any] = {}
    for item in fields(config):
        if item.name in ("values", "source"):
            continue
        value = getattr(config, item.name)
        if item.name == "interfaces":
            value = [
                (f"{i.name}/" if i.name != "default" else "")
                + i.local
                + (f"!{i.advertised}" if i.advertised else "")
                for i in value
            ]
        elif item.name == "homer" and value is not None:
            value = {
                "address": host_port(value.address),
                "protocol": value.protocol,
                "id": value.capture_id,
                "ng": value.ng,
                "rtcp": value.rtcp,
            }
        elif item.name == "listen_http":
            value = [host_port(v) for v in value]
        elif isinstance(value, tuple):
            value = host_port(value)
        result[item.name.replace("_", "-")] = value
    return result


def counters_read(request: Any) -> tuple[bool, str | None]:
    """Whether a request shows kernel counters, and of which call (None: all of them)."""
    if not isinstance(request, dict):
        return False, None
    command, args = request.get("command"), request.get("args") or []
    what = args[0] if isinstance(args, list) and args else ""
    if command == "list" and what == "callid" and len(args) > 1:
        return True, str(args[1])
    return (command == "list" and what in ("sessions", "totals")) or command == "kernel", None


async def respond(state: RelayState, request: Any) -> dict[str, Any]:
    """:func:`handle`, with the kernel counters it shows read first (the read of all of
    them lets ng requests through as it goes)."""
    needed, call_id = counters_read(request)
    if needed:
        try:
            await state.refresh_counters(call_id)
        except Exception:
            log.exception("admin.counters_failed")
    return handle(state, request, time.time())


def handle(state: RelayState, request: Any, now: float) -> dict[str, Any]:
    """One request in, one reply out; never raises."""
    try:
        if not isinstance(request, dict) or not isinstance(request.get("command"), str):
            raise AdminError('a request is a JSON object with a "command"')
        args = request.get("args") or []
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise AdminError('"args" must be a list of strings')
        command = request["command"]
        reply: dict[str, Any]
        if command == "ping":
            reply = {"pong": True}
        elif command == "list":
            reply = _list(state, args, now)
        elif command == "terminate":
            reply = _terminate(state, args, now)
        elif command == "workers":
            reply = _workers(state)
        elif command == "kernel":
            reply = _kernel(state)
        elif command == "config":
            reply = {"source": state.config.source, "config": effective_config(state.config)}
        elif command == "reload":
            reply = state.reload()
        elif command == "set":
            if len(args) != 2:
                raise AdminError("set NAME VALUE, e.g. set maxsessions 0")
            try:
                field, value = parse_setting(*args)
            except SettingError as exc:
                raise AdminError(str(exc)) from None
            reply = state.set_running(field, value)
        elif command in ("active", "standby"):
            reply = state.switch(command)
            if reply.get("result") == "error":
                raise AdminError(reply["error"])
        elif command == "ha":
            status = state.ha_status()
            if status is None:
                raise AdminError("no 'redis' configured")
            reply = status
        else:
            raise AdminError(f"unknown command {command!r}")
    except AdminError as exc:
        return {"result": "error", "error": str(exc)}
    except Exception:
        log.exception("admin.failed", request=request)
        return {"result": "error", "error": "internal error (see relayd's log)"}
    return {"result": "ok", **reply}


# -- the shell ------------------------------------------------------------------------------------


def _in_use(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


Respond = Callable[[Any], dict[str, Any] | Awaitable[dict[str, Any]]]


async def serve(path: Path, respond: Respond) -> asyncio.Server | None:
    """Listen on ``path``; None (logged) when another relayd already answers there.
    ``respond`` answers a request, or returns a coroutine that does (a sharded relayd's
    front asks its shards)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        if _in_use(path):
            log.error("admin.in_use", socket=str(path), effect="relayctl will reach the other one")
            return None
        path.unlink()

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                try:
                    request = json.loads(line)
                except ValueError as exc:
                    reply: dict[str, Any] = {"result": "error", "error": f"bad request: {exc}"}
                else:
                    answer = respond(request)
                    reply = await answer if inspect.isawaitable(answer) else answer
                writer.write(json.dumps(reply, default=str).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, ValueError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    old = os.umask(0o117)  # the socket is never world-accessible, not even for a moment
    try:
        server = await asyncio.start_unix_server(client, str(path), limit=_LINE_LIMIT)
    finally:
        os.umask(old)
    with contextlib.suppress(OSError):
        os.chmod(path, 0o660)
    log.info("admin.listening", socket=str(path))
    return server
