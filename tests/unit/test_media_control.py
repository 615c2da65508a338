"""ng ``block``/``unblock``/``silence``/``unsilence media`` (relayd/calls/media_control.py): whom
they select and rtpengine 10.5's errors, what the workers are told (relayd/plane/forwarding.py),
the kernel path left (relayd/plane/offload.py), and the silence itself (relayd/worker/silence.py).
"""

from __future__ import annotations

from typing import Any

import pytest

from relayd.calls.commands import Commands
from relayd.calls.model import Call
from relayd.ipc import SocketSpec
from relayd.plane.forwarding import plan
from relayd.plane.offload import kernel_legs
from relayd.worker.silence import parse_fills, silence
from tests.unit.calls import A_ADDR, B_ADDR, T0, build, req, sdp


def _call(**offer: Any) -> tuple[Commands, Call]:
    cmds, _ = build()
    assert cmds.handle(req("offer", from_tag="a", sdp=sdp(), **offer), T0)["result"] == "ok"
    reply = cmds.handle(req("answer", from_tag="a", to_tag="b", sdp=sdp(B_ADDR, 6000)), T0)
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
                if spec.key == f"{party.medias[0].local.local} {party.medias[0].port}":  # type: ignore[union-attr]
                    found[tag] = spec
    return found


def _confirm(call: Call) -> None:
    for party in call.monologues.values():
        for stream in party.medias[0].streams:
            stream.confirmed = True


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
    for command in ("block media", "unblock media", "silence media", "unsilence media"):
        reply = cmds.handle(req(command, call_id, **keys), T0)
        assert reply == {"result": "error", "error-reason": error}, command
    assert call.control is None


def test_from_tag_blocks_what_that_party_sends() -> None:
    cmds, call = _call()
    assert _ask(cmds, "block media", from_tag="a") == {"result": "ok"}
    specs = _specs(call)
    assert specs["a"].block and not specs["b"].block
    assert _ask(cmds, "unblock media", from_tag="a") == {"result": "ok"}
    assert call.control is None
    assert not any(spec.block for spec in _specs(call).values())


def test_label_and_address_select_a_party() -> None:
    cmds, call = _call(label="caller")
    _ask(cmds, "block media", label="caller")
    assert _specs(call)["a"].block
    _ask(cmds, "silence media", address=B_ADDR)
    assert _specs(call)["b"].silence == "0=ff 8=d5"  # PCMU and PCMA, the party's codecs
    assert _specs(call)["a"].silence == ""  # blocked: nothing to silence


def test_no_party_given_is_the_whole_call() -> None:
    cmds, call = _call()
    _ask(cmds, "silence media")
    assert {tag: spec.silence for tag, spec in _specs(call).items()} == {
        "a": "0=ff 8=d5",
        "b": "0=ff 8=d5",
    }


def test_a_whole_call_unblock_leaves_a_party_blocked_by_tag_unless_all() -> None:
    cmds, call = _call()
    _ask(cmds, "block media", from_tag="a")
    _ask(cmds, "block media")
    _ask(cmds, "unblock media")
    assert _specs(call)["a"].block and not _specs(call)["b"].block
    _ask(cmds, "unblock media", flags=["all"])
    assert call.control is None


def test_blocked_or_silenced_media_leaves_the_kernel() -> None:
    cmds, call = _call()
    _confirm(call)
    assert len(kernel_legs(call)) == 4
    for command, undo in (("block media", "unblock media"), ("silence media", "unsilence media")):
        _ask(cmds, command, from_tag="b")
        assert kernel_legs(call) == []
        _ask(cmds, undo, from_tag="b")
        assert len(kernel_legs(call)) == 4


def test_commands_are_counted_and_the_address_may_be_the_callers() -> None:
    cmds, call = _call()
    _ask(cmds, "block media", address=A_ADDR)
    assert _specs(call)["a"].block
    assert cmds.totals.commands["block media"] == 1


# -- the silence itself ---------------------------------------------------------------------------


def _rtp(
    payload_type: int, payload: bytes, *, csrc: int = 0, ext: bytes = b"", pad: int = 0
) -> bytes:
    first = 0x80 | csrc | (0x10 if ext else 0) | (0x20 if pad else 0)
    header = bytes([first, payload_type]) + bytes(10) + bytes(4 * csrc)
    if ext:
        header += b"\xbe\xde" + (len(ext) // 4).to_bytes(2, "big") + ext
    padding = (bytes(pad - 1) + bytes([pad])) if pad else b""
    return header + payload + padding


@pytest.mark.parametrize(
    ("packet", "expected"),
    [
        (_rtp(0, b"\x01\x02\x03"), _rtp(0, b"\xff\xff\xff")),
        (_rtp(8, b"\x01\x02"), _rtp(8, b"\xd5\xd5")),
        (_rtp(0, b"\x01\x02", csrc=2), _rtp(0, b"\xff\xff", csrc=2)),
        (
            _rtp(0, b"\x01\x02", ext=b"\x10\x20\x30\x40"),
            _rtp(0, b"\xff\xff", ext=b"\x10\x20\x30\x40"),
        ),
        (_rtp(0, b"\x01\x02", pad=4), _rtp(0, b"\xff\xff", pad=4)),
        (_rtp(101, b"\x01\x02\x03\x04"), _rtp(101, b"\x01\x02\x03\x04")),  # telephone-event
        (b"\x80\x00\x01", b"\x80\x00\x01"),  # too short for RTP
        (bytes([0x40, 0]) + bytes(14), bytes([0x40, 0]) + bytes(14)),  # not version 2
    ],
)
def test_silence_fills_the_payload_only(packet: bytes, expected: bytes) -> None:
    buffer = bytearray(packet)
    silence(buffer, len(buffer), {0: 0xFF, 8: 0xD5})
    assert bytes(buffer) == expected


def test_silence_in_a_buffer_larger_than_the_packet() -> None:
    packet = _rtp(0, b"\x01\x02")
    buffer = bytearray(packet + b"\xee" * 10)
    silence(memoryview(buffer), len(packet), {0: 0xFF})
    assert bytes(buffer) == _rtp(0, b"\xff\xff") + b"\xee" * 10


def test_parse_fills() -> None:
    assert parse_fills("0=ff 8=d5 9=fa") == {0: 0xFF, 8: 0xD5, 9: 0xFA}
    assert parse_fills("") is None
    assert parse_fills("x=1 0=zz") is None
