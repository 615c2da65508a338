"""The admin commands behind relayctl, as functions of the supervisor state (no daemon)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest

from relayd.calls.commands import Commands, Teardown
from relayd.calls.model import CallRecording
from relayd.config import Config, load
from relayd.ops import admin
from relayd.ops.admin import effective_config, handle
from relayd.ops.counters import Counters
from relayd.ops.runtime import with_setting
from relayd.plane.kernel import KernelPath
from relayd.plane.media import MediaPlane
from relayd.plane.sockets import SocketBinder
from relayd.supervisor import limits_of
from tests.unit.calls import B_ADDR, LOCAL4, T0, build, req, sdp


@dataclass
class State:
    """What the supervisor offers the admin socket, made of the real pieces."""

    commands: Commands
    config: Config = field(default_factory=Config)
    media: MediaPlane = field(default_factory=lambda: MediaPlane(SocketBinder(), {}, workers=2))
    kernel: KernelPath | None = None
    counters: Counters = field(default_factory=Counters)
    reloads: int = 0
    refreshed: list[str | None] = field(default_factory=list)
    switched: list[str] = field(default_factory=list)
    ha: dict[str, Any] | None = None  # ha_status()

    def reload(self) -> dict[str, Any]:
        self.reloads += 1
        return {"applied": {"timeout": [60, 30]}, "restart": ["port-min"], "source": "x"}

    async def refresh_counters(self, call_id: str | None = None) -> None:
        self.refreshed.append(call_id)

    def set_running(self, field: str, value: Any) -> dict[str, Any]:
        """As the supervisor does it: the running configuration and the limits changed."""
        self.config, change = with_setting(self.config, field, value)
        self.commands.set_limits(limits_of(self.config))
        return {"set": {field.replace("_", "-"): change}}

    def switch(self, mode: str) -> dict[str, Any]:
        self.switched.append(mode)
        if self.ha is None:
            return {"result": "error", "error": "no 'redis' configured: nothing to switch"}
        return (
            {"mode": mode, "taken_over": 0} if mode == "active" else {"mode": mode, "released": 0}
        )

    def ha_status(self) -> dict[str, Any] | None:
        return self.ha


def _state(calls: int = 1) -> tuple[State, list[Teardown]]:
    commands, _ = build()
    ended: list[Teardown] = []
    commands.on_teardown = ended.append
    for n in range(calls):
        call_id = f"call-{n}"
        assert commands.handle(req("offer", call_id, from_tag="a", sdp=sdp()), T0)["result"] == "ok"
        reply = commands.handle(
            req("answer", call_id, from_tag="a", to_tag="b", sdp=sdp(B_ADDR)), T0
        )
        assert reply["result"] == "ok"
    return State(commands), ended


def ask(state: State, command: str, *args: str, now: float = T0 + 10) -> dict[str, Any]:
    return handle(state, {"command": command, "args": list(args)}, now)


def test_numsessions() -> None:
    state, _ = _state(2)
    assert ask(state, "list", "numsessions") == {"result": "ok", "own": 2, "foreign": 0, "total": 2}


def test_sessions() -> None:
    state, _ = _state(1)
    [session] = ask(state, "list", "sessions")["sessions"]
    assert session == {
        "call_id": "call-0",
        "created": T0,
        "age": 10.0,
        "state": "answered",
        "tags": ["a", "b"],
        "worker": 0,
        "streams": 4,
        "kernel_streams": 0,
        "packets": 0,
        "recording": "",
    }


def test_sessions_and_callid_show_a_recording() -> None:
    state, _ = _state(1)
    call = state.commands.calls["call-0"]
    call.recording = CallRecording(names=("p", "t"), pcap="/spool/pcaps/call-0-ab.pcap")
    [session] = ask(state, "list", "sessions")["sessions"]
    assert session["recording"] == "recording"
    detail = ask(state, "list", "callid", "call-0")
    assert detail["recording_file"] == "/spool/pcaps/call-0-ab.pcap"
    call.recording.paused = True
    assert ask(state, "list", "sessions")["sessions"][0]["recording"] == "paused"


def test_callid_shows_streams_endpoints_counters_and_path() -> None:
    state, _ = _state(1)
    call = state.commands.calls["call-0"]
    stream = call.monologues["a"].medias[0].streams[0]
    stream.stats.packets, stream.stats.bytes, stream.kernelized = 7, 1204, True
    reply = ask(state, "list", "callid", "call-0")
    caller, callee = reply["parties"]
    assert (caller["tag"], caller["role"], callee["tag"], callee["role"]) == (
        "a",
        "caller",
        "b",
        "callee",
    )
    rtp, rtcp = caller["medias"][0]["streams"]
    assert rtp["component"] == "rtp" and rtcp["component"] == "rtcp"
    assert rtp["local"] == f"{LOCAL4}:{stream.port}"
    assert rtp["path"] == "kernel" and rtcp["path"] == "userspace"
    assert (rtp["packets"], rtp["bytes"], rtp["errors"]) == (7, 1204, 0)
    assert rtp["advertised"] == "198.51.100.10:5000"
    assert reply["kernel_streams"] == 1


def test_callid_unknown_or_missing() -> None:
    state, _ = _state(1)
    assert ask(state, "list", "callid", "nope") == {
        "result": "error",
        "error": "call-id 'nope' not found",
    }
    assert ask(state, "list", "callid")["error"] == "list callid needs a call-id"
    assert ask(state, "list")["result"] == "error"


def test_totals_add_traffic_by_path() -> None:
    state, _ = _state(1)
    state.counters.traffic.add("kernel", "caller_to_callee", 50, 8600)
    state.counters.traffic.add("userspace", "callee_to_caller", 3, 516, 1)
    reply = ask(state, "list", "totals")
    assert reply["traffic"] == {
        "userspace": {"packets": 3, "bytes": 516, "errors": 1},
        "kernel": {"packets": 50, "bytes": 8600, "errors": 0},
    }
    assert reply["currentstatistics"]["sessionsown"] == 1
    assert reply["totalstatistics"]["managedsessions"] == 1


def test_terminate_ends_the_call_at_once_and_frees_its_ports() -> None:
    state, ended = _state(2)
    ports = state.commands.signalling.ports
    in_use = sum(pool.in_use for pool in ports.pools.values())
    assert ask(state, "terminate", "call-0") == {"result": "ok", "terminated": ["call-0"]}
    assert [t.reason for t in ended] == ["terminated"]
    assert list(state.commands.calls) == ["call-1"]
    assert sum(pool.in_use for pool in ports.pools.values()) == in_use // 2
    assert state.commands.totals.forced_terminated == 1
    assert ask(state, "terminate", "call-0")["error"] == "call-id 'call-0' not found"
    assert ask(state, "terminate", "all") == {"result": "ok", "terminated": ["call-1"]}
    assert state.commands.calls == {}
    assert sum(pool.in_use for pool in ports.pools.values()) == 0


def test_workers_show_rates() -> None:
    state, _ = _state(0)
    worker = state.media.workers[1]
    worker.pid, worker.packets, worker.cpu_seconds = 4242, 1000, 2.0
    rates = state.counters.rates
    rates.sample("worker:1:packets", 0, 100.0)
    rates.sample("worker:1:cpu", 1.5, 100.0)
    rates.sample("worker:1:packets", 1000, 102.0)
    rates.sample("worker:1:cpu", 2.0, 102.0)
    reply = ask(state, "workers")
    first, second = reply["workers"]
    assert (first["index"], second["index"]) == (0, 1)
    assert second["pid"] == 4242 and second["pps"] == 500.0 and second["cpu_percent"] == 25.0
    assert second["connected"] is False and second["to_worker"] == 0


def test_kernel_off() -> None:
    state, _ = _state(0)
    assert ask(state, "kernel") == {
        "result": "ok",
        "enabled": False,
        "table": None,
        "reason": "table = -1",
        "forwards": [],
    }


def test_config_is_the_effective_configuration() -> None:
    config = load(
        [
            "--config-file",
            "none",
            "--interface",
            "pub/192.0.2.1!203.0.113.1",
            "--listen-http",
            "127.0.0.1:2225",
            "--homer",
            "192.0.2.9:9060",
            "--homer-enable-ng",
        ]
    )
    effective = effective_config(config)
    assert effective["interfaces"] == ["pub/192.0.2.1!203.0.113.1"]
    assert effective["listen-ng"] == "127.0.0.1:2223"
    assert effective["listen-http"] == ["127.0.0.1:2225"]
    assert effective["homer"] == {
        "address": "192.0.2.9:9060",
        "protocol": "udp",
        "id": 0,
        "ng": True,
        "rtcp": True,
    }
    state, _ = _state(0)
    state.config = config
    assert ask(state, "config")["config"] == effective


def test_reload_is_the_supervisors() -> None:
    state, _ = _state(0)
    assert ask(state, "reload")["restart"] == ["port-min"]
    assert state.reloads == 1


@pytest.mark.parametrize(
    ("request_", "error"),
    [
        ({"command": "frobnicate"}, "unknown command 'frobnicate'"),
        ({"args": []}, 'a request is a JSON object with a "command"'),
        ([1, 2], 'a request is a JSON object with a "command"'),
        ({"command": "list", "args": "sessions"}, '"args" must be a list of strings'),
    ],
)
def test_bad_requests(request_: Any, error: str) -> None:
    state, _ = _state(0)
    assert handle(state, request_, T0) == {"result": "error", "error": error}


def test_a_failing_handler_is_an_error_reply_not_an_exception() -> None:
    state, _ = _state(0)

    def broken() -> dict[str, Any]:
        raise RuntimeError("boom")

    state.reload = broken  # type: ignore[method-assign]
    assert ask(state, "reload") == {
        "result": "error",
        "error": "internal error (see relayd's log)",
    }


def test_requests_that_show_kernel_counters_read_them_first() -> None:
    state, _ = _state(2)
    asyncio.run(admin.respond(state, {"command": "list", "args": ["sessions"]}))
    asyncio.run(admin.respond(state, {"command": "list", "args": ["callid", "call-0"]}))
    asyncio.run(admin.respond(state, {"command": "kernel"}))
    asyncio.run(admin.respond(state, {"command": "list", "args": ["numsessions"]}))
    asyncio.run(admin.respond(state, {"command": "workers"}))
    # all of them, one call's, all of them; counts and workers show no kernel counter
    assert state.refreshed == [None, "call-0", None]
    assert admin.counters_read({"command": "list", "args": ["totals"]}) == (True, None)
    assert admin.counters_read("nonsense") == (False, None)


# --- set: drain and load limits at run time (relayd/ops/runtime.py) -----------------------------


def test_set_maxsessions_zero_drains_new_calls_and_keeps_the_old() -> None:
    state, _ = _state(calls=1)
    reply = handle(state, {"command": "set", "args": ["maxsessions", "0"]}, T0)
    assert reply == {"result": "ok", "set": {"max-sessions": [-1, 0]}}
    commands = state.commands
    offer = req("offer", "new", from_tag="x", sdp=sdp(), supports=["load limit"])
    assert commands.handle(offer, T0 + 1) == {
        "result": "load limit",
        "message": "Parallel session limit reached",
    }
    (call_id,) = commands.calls
    reoffer = req("offer", call_id, from_tag="b", to_tag="a", sdp=sdp(B_ADDR))
    assert commands.handle(reoffer, T0 + 2)["result"] == "ok"
    shown = handle(state, {"command": "config"}, T0)["config"]
    assert shown["max-sessions"] == 0
    assert handle(state, {"command": "set", "args": ["max-sessions", "-1"]}, T0)["set"] == {
        "max-sessions": [0, -1]
    }
    assert commands.handle(offer, T0 + 3)["result"] == "ok"


def test_set_load_limits_and_refusals() -> None:
    state, _ = _state(calls=0)
    for args, key, change in (
        (["maxload", "2.5"], "max-load", [0.0, 2.5]),
        (["maxcpu", "90"], "max-cpu", [0.0, 90.0]),
        (["maxbw", "125000"], "max-bandwidth", [0, 125000]),
    ):
        assert handle(state, {"command": "set", "args": args}, T0)["set"] == {key: change}
    limits = state.commands.limits
    assert (limits.max_load, limits.max_cpu, limits.max_bandwidth) == (2.5, 90.0, 125000)
    for args, error in (
        (["maxsessions"], "set NAME VALUE, e.g. set maxsessions 0"),
        (["maxsessions", "-2"], "maxsessions: -1 (no limit), 0 (drain) or a number of calls"),
        (["maxload", "high"], "maxload: not a number: 'high'"),
        (["maxcpu", "-1"], "maxcpu: 0 (no limit) or more"),
        (["timeout", "5"], "set what? maxsessions, maxload, maxcpu, maxbw"),
    ):
        assert handle(state, {"command": "set", "args": args}, T0) == {
            "result": "error",
            "error": error,
        }


def test_active_standby_and_ha_go_to_the_replica_or_say_there_is_none() -> None:
    state, _ = _state(0)
    reply = handle(state, {"command": "active"}, T0)
    assert reply == {"result": "error", "error": "no 'redis' configured: nothing to switch"}
    assert handle(state, {"command": "ha"}, T0)["result"] == "error"
    state.ha = {"mode": "active", "foreign_calls": 2}
    assert handle(state, {"command": "standby"}, T0) == {
        "result": "ok",
        "mode": "standby",
        "released": 0,
    }
    assert handle(state, {"command": "ha"}, T0)["foreign_calls"] == 2
    assert state.switched == ["active", "standby"]
    numbers = handle(state, {"command": "list", "args": ["numsessions"]}, T0)
    assert (numbers["own"], numbers["foreign"], numbers["total"]) == (0, 2, 2)
