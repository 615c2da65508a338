"""Plain SDP handling and the call model as rtpengine 10.5 answers them.

Each test pins what the live rtpengine 10.5 daemon answered to the same request (asked in a
network namespace with the daemon test suite's command line), for scenarios of its
t/auto-daemon-tests.pl: forked offers deleted branch by branch, rejected and passed-through
media sections, null connection addresses across address families, the session-level c=,
``strip extmap``, ``replace: SDP-version`` and bodies with several sessions.
"""

from __future__ import annotations

from typing import Any

from relayd.calls.commands import Commands
from tests.unit.calls import B_ADDR, T0, build, req, sdp


def _ok(cmds: Commands, command: str, call_id: str = "c1", **keys: Any) -> dict[str, Any]:
    reply = cmds.handle(req(command, call_id, **keys), T0)
    assert reply["result"] == "ok", reply
    return reply


def _lines(reply: dict[str, Any]) -> list[str]:
    return str(reply["sdp"]).split("\r\n")[:-1]


# --- delete of one branch of a forked offer (suite: "rtcp-mux branched delete-delay=0") -------


def _forked(cmds: Commands) -> None:
    for branch in ("foo.0", "foo.1"):
        _ok(cmds, "offer", from_tag="a", via_branch=branch, sdp=sdp())


def test_delete_at_once_of_one_branch_keeps_the_call_for_the_other() -> None:
    cmds, binder = build()
    _forked(cmds)
    call = cmds.calls["c1"]
    gone = call.branches["foo.1"].medias[0].port
    _ok(cmds, "delete", from_tag="a", via_branch="foo.1", delete_delay=0)
    assert "c1" in cmds.calls and "foo.1" not in call.branches
    assert ("203.0.113.1", gone) in binder.released
    # the other branch still answers (rtpengine: "Unknown call-id" was wrong here)
    _ok(cmds, "answer", from_tag="a", to_tag="b", via_branch="foo.0", sdp=sdp(B_ADDR))
    # the last branch going ends the call
    _ok(cmds, "delete", from_tag="a", via_branch="foo.0", delete_delay=0)
    assert "c1" not in cmds.calls
    assert not binder.live


def test_delete_at_once_of_the_only_or_an_unknown_branch_ends_the_call() -> None:
    cmds, _ = build()
    _ok(cmds, "offer", from_tag="a", via_branch="foo.0", sdp=sdp())
    _ok(cmds, "delete", from_tag="a", via_branch="foo.0", delete_delay=0)
    assert "c1" not in cmds.calls
    _forked(cmds)
    _ok(cmds, "delete", from_tag="a", via_branch="foo.9", delete_delay=0)
    assert "c1" not in cmds.calls


def test_delete_of_a_branch_by_its_own_answerer_ends_the_call() -> None:
    cmds, _ = build()
    _ok(cmds, "offer", from_tag="a", via_branch="foo.0", sdp=sdp())
    _ok(cmds, "answer", from_tag="a", to_tag="b", via_branch="foo.0", sdp=sdp(B_ADDR))
    _ok(cmds, "delete", from_tag="b", via_branch="foo.0", delete_delay=0)
    assert "c1" not in cmds.calls


def test_delayed_delete_of_a_branch_is_cancelled_by_the_answer() -> None:
    cmds, _ = build()
    _forked(cmds)
    _ok(cmds, "delete", from_tag="a", via_branch="foo.1", delete_delay=2)
    _ok(cmds, "answer", from_tag="a", to_tag="b", via_branch="foo.0", sdp=sdp(B_ADDR))
    assert cmds.reap(T0 + 3) == []
    assert "c1" in cmds.calls


def test_sdes_given_as_a_string_is_ignored() -> None:
    # rtpengine 10.5 reads SDES only as a list: ``SDES => 'off'`` still offers SDES
    cmds, _ = build()
    body = sdp().replace("RTP/AVP", "RTP/AVPF")
    reply = _ok(cmds, "offer", from_tag="a", sdp=body, SDES="off", transport_protocol="RTP/SAVPF")
    assert any(line.startswith("a=crypto:1 ") for line in _lines(reply))
    reply = _ok(
        cmds, "offer", "c2", from_tag="a", sdp=body, SDES=["off"], transport_protocol="RTP/SAVPF"
    )
    assert not any(line.startswith("a=crypto:") for line in _lines(reply))
