"""ng ``block DTMF`` / ``unblock DTMF`` (relayd/calls/dtmf_block.py): whom they select, rtpengine
10.5's errors (as the live 10.5.3.5 answered them, 2026-12-06), the modes and their
parameters, the state kept on the call (and journalled), what the workers are told (the plan's
``security``) and the kernel path left while a party's DTMF is blocked."""

from __future__ import annotations

from typing import Any

import pytest

from relayd.calls.commands import Commands
from relayd.calls.dtmf_block import security_of
from relayd.calls.model import Call
from relayd.calls.snapshot import dump_call, load_call
from relayd.ipc import SocketSpec
from relayd.plane.forwarding import plan
from relayd.plane.offload import kernel_legs
from relayd.transcode.plan import CodecPlan, DtmfSecurity, Format, parse
from tests.unit.calls import A_ADDR, B_ADDR, T0, build, req, sdp


def _sdp(address: str, port: int) -> str:
    """tests/unit/calls.py's phone, telephone-event added."""
    text = sdp(address, port, extra=("a=rtpmap:101 telephone-event/8000",))
    return text.replace("RTP/AVP 0 8", "RTP/AVP 0 8 101")


def _call(**offer: Any) -> tuple[Commands, Call]:
    cmds, _ = build()
    offered = cmds.handle(req("offer", from_tag="a", sdp=_sdp(A_ADDR, 5000), **offer), T0)
    assert offered["result"] == "ok", offered
    answer = _sdp(B_ADDR, 6000)
    reply = cmds.handle(req("answer", from_tag="a", to_tag="b", sdp=answer), T0)
    assert reply["result"] == "ok", reply
    return cmds, cmds.calls["c1"]


def _ask(cmds: Commands, command: str, **keys: Any) -> dict[str, Any]:
    return cmds.handle(req(command, "c1", **keys), T0 + 1)


def _specs(call: Call) -> dict[str, SocketSpec]:
    """Each party's RTP socket spec (by tag) of the first media section."""
    found = {}
    for forward in plan(call):
        for spec in forward.sockets:
            for tag, party in call.monologues.items():
                local = party.medias[0].local
                assert local is not None
                if spec.key == f"{local.local} {party.medias[0].port}":
                    found[tag] = spec
    return found


def _security(call: Call) -> dict[str, DtmfSecurity | None]:
    """What each party's socket is told to do to the DTMF its party sends."""
    found = {}
    for tag, spec in _specs(call).items():
        codecs = parse(spec.codecs)
        found[tag] = codecs.security if codecs is not None else None
    return found


DROP = DtmfSecurity("drop")


@pytest.mark.parametrize(
    ("keys", "error"),
    [
        ({"call_id": ""}, "No call-id in message"),
        ({"call_id": "nope"}, "Unknown call-ID"),
        ({"label": "x"}, "No monologue matching the given label"),
        ({"address": "not-an-address"}, "Failed to parse network address"),
        ({"address": "192.0.2.99"}, "Failed to match address to any tag"),
        ({"from_tag": "zz"}, "From-tag given, but no such tag exists"),
    ],
)
def test_rtpengines_errors(keys: dict[str, str], error: str) -> None:
    cmds, call = _call()
    call_id = keys.pop("call_id", "c1")
    for command in ("block DTMF", "unblock DTMF"):
        reply = cmds.handle(req(command, call_id, **keys), T0)
        assert reply == {"result": "error", "error-reason": error}, command
    assert call.dtmf_block is None and all(p.dtmf_security is None for p in call.parties())


def test_from_tag_blocks_what_that_party_sends_and_unblock_lets_it_go() -> None:
    cmds, call = _call()
    assert _security(call) == {"a": None, "b": None}
    assert _ask(cmds, "block DTMF", from_tag="a") == {"result": "ok"}
    assert _security(call) == {"a": DROP, "b": None}
    assert _ask(cmds, "unblock DTMF", from_tag="a") == {"result": "ok"}
    assert _security(call) == {"a": None, "b": None}
    assert cmds.totals.commands["block DTMF"] == 1


def test_label_and_address_select_a_party() -> None:
    cmds, call = _call(label="caller")
    _ask(cmds, "block DTMF", label="caller", **{"DTMF-security": "silence"})
    assert _security(call) == {"a": DtmfSecurity("silence"), "b": None}
    _ask(cmds, "block DTMF", address=B_ADDR, **{"DTMF-security": "zero"})
    assert _security(call)["b"] == DtmfSecurity("zero")
    _ask(cmds, "unblock DTMF", address=A_ADDR)
    assert _security(call)["a"] is None


def test_the_whole_call_and_all() -> None:
    """No party named: the whole call, whose block wins over a party's own; a whole-call
    unblock leaves a party's own block, ``all`` clears it too (10.5)."""
    cmds, call = _call()
    _ask(cmds, "block DTMF", from_tag="a", **{"DTMF-security": "zero"})
    _ask(cmds, "block DTMF", **{"DTMF-security": "tone"})
    assert _security(call) == {"a": DtmfSecurity("tone"), "b": DtmfSecurity("tone")}
    _ask(cmds, "unblock DTMF")
    assert _security(call) == {"a": DtmfSecurity("zero"), "b": None}
    _ask(cmds, "block DTMF", flags=["all"])
    assert _security(call) == {"a": DROP, "b": DROP}
    _ask(cmds, "unblock DTMF", flags=["all"])
    assert _security(call) == {"a": None, "b": None}


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({}, DROP),
        ({"dtmf-security": "drop"}, DROP),
        ({"dtmf-security": b"silence"}, DtmfSecurity("silence")),
        ({"dtmf-security": "random"}, DtmfSecurity("random")),
        ({"dtmf-security": "dtmf"}, DtmfSecurity("DTMF")),
        ({"dtmf-security": "zero", "digit": "7"}, DtmfSecurity("zero")),
        # off, or a mode 10.5 does not know (case counts): the default
        ({"dtmf-security": "off"}, DROP),
        ({"dtmf-security": "Drop"}, DROP),
        ({"dtmf-security": "bogus"}, DROP),
        # a trigger makes the default "off": no block
        ({"trigger": "##"}, None),
        ({"dtmf-security-trigger": "silence"}, None),
        ({"trigger": "##", "dtmf-security": "tone"}, DtmfSecurity("tone")),
        # parameters
        ({"dtmf-security": "tone", "frequency": 1000, "volume": 20}, DtmfSecurity("tone", 0, 1000, 20)),  # noqa: E501
        ({"dtmf-security": "tone", "frequency": "0", "volume": -15}, DtmfSecurity("tone", 0, 400, 15)),  # noqa: E501
        ({"dtmf-security": "tone", "volume": 0}, DtmfSecurity("tone", 0, 400, 10)),
        ({"dtmf-security": "tone", "volume": 99}, DtmfSecurity("tone", 0, 400, 10)),
        ({"dtmf-security": "DTMF", "digit": "7"}, DtmfSecurity("DTMF", 7)),
        ({"dtmf-security": "DTMF", "code": 11}, DtmfSecurity("DTMF", 11)),
        ({"dtmf-security": "DTMF", "digit": "#"}, DtmfSecurity("DTMF", 11)),
        ({"dtmf-security": "DTMF", "digit": "x"}, DtmfSecurity("DTMF", 0)),
    ],
)  # fmt: skip
def test_modes_and_parameters(values: dict[str, Any], expected: DtmfSecurity | None) -> None:
    assert security_of(values) == expected


def test_blocking_with_off_clears_a_block() -> None:
    cmds, call = _call()
    _ask(cmds, "block DTMF", from_tag="a")
    _ask(cmds, "block DTMF", from_tag="a", trigger="##")
    assert _security(call)["a"] is None


def test_the_block_is_journalled() -> None:
    cmds, call = _call()
    _ask(cmds, "block DTMF", from_tag="a", **{"DTMF-security": "DTMF", "digit": "5"})
    _ask(cmds, "block DTMF", **{"DTMF-security": "tone", "frequency": 800})
    restored = load_call(dump_call(call))
    assert restored.dtmf_block == DtmfSecurity("tone", 0, 800, 10)
    assert restored.monologues["a"].dtmf_block == DtmfSecurity("DTMF", 5)
    assert restored.monologues["a"].dtmf_security == DtmfSecurity("tone", 0, 800, 10)


def test_a_blocked_party_gets_a_passthrough_plan_with_its_formats() -> None:
    """Plain PCMU/PCMA/telephone-event both ways: no codec work, so the blocked direction gets
    the passthrough plan the engine reads events and audio by; the other direction none."""
    cmds, call = _call()
    _ask(cmds, "block DTMF", from_tag="b", **{"DTMF-security": "silence"})
    specs = _specs(call)
    assert specs["a"].codecs == ""
    assert parse(specs["b"].codecs) == CodecPlan(
        passthrough=(0, 8, 101),
        formats=(
            Format(0, "PCMU", 8000),
            Format(8, "PCMA", 8000),
            Format(101, "telephone-event", 8000),
        ),
        security=DtmfSecurity("silence"),
    )


def test_blocked_dtmf_leaves_the_kernel_and_comes_back() -> None:
    cmds, call = _call()
    for party in call.monologues.values():
        for stream in party.medias[0].streams:
            stream.confirmed = True
    assert len(kernel_legs(call)) == 4
    _ask(cmds, "block DTMF", from_tag="b")
    assert kernel_legs(call) == []
    _ask(cmds, "unblock DTMF", from_tag="b")
    assert len(kernel_legs(call)) == 4


def test_plan_text_round_trip() -> None:
    security = DtmfSecurity("random", 3, 500, 12)
    plan_ = CodecPlan(passthrough=(0,), formats=(Format(0, "PCMU", 8000),), security=security)
    assert parse(plan_.to_text()) == plan_
    assert '"s":["random",3,500,12]' in plan_.to_text()


def test_a_party_that_joins_later_follows_the_whole_calls_block() -> None:
    """A fork offered after a whole-call block (another via-branch) is blocked too."""
    cmds, _ = build()
    offer = _sdp(A_ADDR, 5000)
    assert cmds.handle(req("offer", from_tag="a", sdp=offer, via_branch="x1"), T0)["result"] == "ok"
    assert _ask(cmds, "block DTMF", **{"DTMF-security": "zero"}) == {"result": "ok"}
    reply = cmds.handle(req("offer", from_tag="a", sdp=offer, via_branch="x2"), T0)
    assert reply["result"] == "ok", reply
    call = cmds.calls["c1"]
    assert set(call.branches) == {"x1", "x2"}
    assert call.branches["x2"].dtmf_security == DtmfSecurity("zero")
