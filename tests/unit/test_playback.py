"""ng ``play media`` and ``stop media`` (relayd/calls/playback.py): whom they select, what they
play, rtpengine 10.5's errors and replies (asked of the live 10.5, 2026-12-06), the orders for
the worker, and the kernel path left while a party hears a play (relayd/plane/offload.py)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from relayd.calls.commands import Commands
from relayd.calls.model import Call, Codec, Playback
from relayd.calls.playback import (
    MediaSource,
    PlayOrder,
    StopOrder,
    position,
    source_of,
    target_of,
)
from relayd.calls.snapshot import dump_call, load_call
from relayd.calls.webrtc import Crypto
from relayd.ng.message import NgError
from relayd.plane.offload import kernel_legs
from relayd.plane.playback import probe_source
from tests.unit.calls import B_ADDR, LOCAL4, T0, build, req, sdp

WAV = (Path(__file__).parents[1] / "data" / "playback" / "sine-100ms.wav").read_bytes()


def _probe(source: MediaSource) -> int | None:
    """A file that plays for 1.5 s; anything called "bad" does not decode."""
    if source.kind == "file":
        return None if "bad" in source.path else 1500
    return None if source.data == b"bad" else 1500


def _call(**offer: Any) -> tuple[Commands, Call]:
    cmds, _ = build()
    cmds.playbacks.probe = _probe
    assert cmds.handle(req("offer", from_tag="a", sdp=sdp(), **offer), T0)["result"] == "ok"
    reply = cmds.handle(req("answer", from_tag="a", to_tag="b", sdp=sdp(B_ADDR, 6000)), T0)
    assert reply["result"] == "ok", reply
    return cmds, cmds.calls["c1"]


def _ask(cmds: Commands, command: str, at: float = 1.0, **keys: Any) -> dict[str, Any]:
    return cmds.handle(req(command, "c1", **keys), T0 + at)


@pytest.mark.parametrize(
    ("keys", "error"),
    [
        ({"call_id": ""}, "No call-id in message"),
        ({"call_id": "nope"}, "Unknown call-ID"),
        ({}, "No participant party specified"),
        ({"to_tag": "b"}, "No participant party specified"),  # to-tag selects nothing
        ({"from_tag": "zz"}, "From-tag given, but no such tag exists"),
        ({"label": "zz"}, "No monologue matching the given label"),
        ({"from_tag": "a"}, "No media file specified"),
        ({"from_tag": "a", "blob": ""}, "No media file specified"),
        ({"from_tag": "a", "db_id": 0}, "No media file specified"),
        ({"from_tag": "a", "file": "/bad.wav"}, "Failed to start media playback from file"),
        ({"from_tag": "a", "blob": "bad"}, "Failed to start media playback from blob"),
        ({"from_tag": "a", "blob64": "!!"}, "Failed to start media playback from blob"),
        ({"from_tag": "a", "db_id": 5}, "Failed to start media playback from database"),
        ({"from_tag": "a", "db_id": "5"}, "Failed to start media playback from database"),
    ],
)
def test_play_media_errors_are_rtpengines(keys: dict[str, Any], error: str) -> None:
    cmds, call = _call()
    call_id = keys.pop("call_id", "c1")
    reply = cmds.handle(req("play media", call_id, **keys), T0)
    assert reply == {"result": "error", "error-reason": error}
    assert cmds.playbacks.outbox == []
    assert all(p.playback is None for p in call.parties())


def test_from_tag_plays_to_that_party_in_its_first_codec() -> None:
    cmds, call = _call()
    reply = _ask(cmds, "play media", from_tag="a", file="/x.wav", repeat_times="3")
    assert reply == {"result": "ok", "duration": 1500}
    [order] = cmds.playbacks.take()
    assert isinstance(order, PlayOrder)
    party = call.monologues["a"]
    media = party.medias[0]
    assert (order.tag, order.repeat, order.start_pos) == ("a", 3, 0)
    assert order.target.rtp == f"{LOCAL4} {media.port}"
    assert order.target.rtcp == f"{LOCAL4} {media.port + 1}"
    assert (order.target.format.pt, order.target.format.name, order.target.ptime) == (0, "PCMU", 20)
    assert order.source == MediaSource("file", path="/x.wav")
    assert party.playback == Playback(T0 + 1, 1500, 3, 0, active=True)
    assert order.started == T0 + 1


def test_label_all_and_the_sources_order() -> None:
    cmds, _ = _call(label="caller")
    _ask(cmds, "play media", label="caller", blob="x", file="/f.wav")  # file first
    _ask(cmds, "play media", flags=["all"], blob64=base64.b64encode(b"abc").decode())
    orders = cmds.playbacks.take()
    assert [o.tag for o in orders if isinstance(o, PlayOrder)] == ["a", "a", "b"]
    assert isinstance(orders[0], PlayOrder) and orders[0].source.kind == "file"
    # a second play to a playing party stops the first
    assert isinstance(orders[1], StopOrder) and orders[1].tag == "a"
    last = orders[-1]
    assert isinstance(last, PlayOrder) and last.source == MediaSource("blob", data=b"abc")


def test_source_of_reads_what_bencode_kept() -> None:
    # bencode keeps bytes that are not UTF-8 as surrogates (relayd/ng/bencode.py)
    blob = b"RIFF\xff\x00\x80"
    assert source_of({"blob": blob.decode("utf-8", "surrogateescape")}).data == blob
    assert source_of({"file": "/a b.wav", "blob": "x"}).kind == "file"
    assert source_of({"db-id": " 7"}) == MediaSource("db", db_id=7)
    with pytest.raises(NgError, match="No media file specified"):
        source_of({"db-id": "7x"})


def test_stop_media_and_last_frame_pos() -> None:
    cmds, _ = _call()
    assert _ask(cmds, "stop media", from_tag="b") == {
        "result": "error",
        "error-reason": "Not currently playing media",
    }
    _ask(cmds, "play media", from_tag="a", file="/x.wav", start_pos=200, at=1.0)
    cmds.playbacks.take()
    reply = _ask(cmds, "stop media", from_tag="a", at=1.5)
    assert reply == {"result": "ok", "last-frame-pos": 700}
    [stop] = cmds.playbacks.take()
    assert isinstance(stop, StopOrder) and stop.tag == "a"
    # stopped (or ended) plays answer ok, where they stopped, and send nothing more
    assert _ask(cmds, "stop media", from_tag="a", at=9.0)["last-frame-pos"] == 700
    assert cmds.playbacks.take() == []


def test_position_wraps_with_repeats_and_stops_at_the_end() -> None:
    playback = Playback(T0, 1000, repeat=2, start_pos=300, active=True)
    assert position(playback, T0 + 0.5) == 800
    assert position(playback, T0 + 1.0) == 300  # the second play
    assert position(playback, T0 + 60) == 1000  # done


def test_the_workers_end_frees_the_party_for_the_kernel() -> None:
    cmds, call = _call()
    for party in call.monologues.values():
        for stream in party.medias[0].streams:
            stream.confirmed = True
    assert len(kernel_legs(call)) == 4
    _ask(cmds, "play media", from_tag="b", file="/x.wav")
    assert kernel_legs(call) == []
    started = call.monologues["b"].playback.started  # type: ignore[union-attr]
    assert not cmds.playbacks.ended(call, "b", started - 1, T0 + 2)  # an earlier play's end
    assert kernel_legs(call) == []
    assert cmds.playbacks.ended(call, "b", started, T0 + 2)
    assert len(kernel_legs(call)) == 4
    assert _ask(cmds, "stop media", from_tag="b", at=3)["result"] == "ok"


def test_offer_only_plays_to_the_offerer_at_its_sdp_codec() -> None:
    cmds, _ = build()
    cmds.playbacks.probe = _probe
    offer = sdp().replace("RTP/AVP 0 8", "RTP/AVP 8").replace("a=rtpmap:0 PCMU/8000\r\n", "")
    cmds.handle(req("offer", from_tag="a", sdp=offer), T0)
    assert _ask(cmds, "play media", from_tag="a", file="/x")["duration"] == 1500
    [order] = cmds.playbacks.take()
    assert isinstance(order, PlayOrder) and order.target.format.name == "PCMA"


def test_target_takes_the_first_codec_relayd_encodes_and_srtp_passed_through() -> None:
    _, call = _call()
    media = call.monologues["a"].medias[0]
    media.codecs = (Codec("97", "speex/8000"), *media.codecs[::-1])
    media.sent_codecs = ()
    target = target_of(call.monologues["a"])
    assert target is not None and target.format.name == "PCMA" and target.srtp == ""
    # SRTP passed through end to end (the suite's "media playback, SRTP"): no key of ours,
    # the player protects with the one we wrote to the party
    passed = Crypto(1, "AES_CM_128_HMAC_SHA1_80", "DVM+BTeYX2UI1LaA9bgXrcBEDBxoItA9/39fSoRF")
    media.protocol, media.crypto_out = "RTP/SAVP", (passed,)
    target = target_of(call.monologues["a"])
    assert target is not None and target.srtp == passed.inline()
    ours = Crypto(1, "AES_CM_128_HMAC_SHA1_80", "x" * 40, ours=True)
    media.srtp_out = ours
    assert target_of(call.monologues["a"]).srtp == ours.inline()  # type: ignore[union-attr]


def test_the_real_probe_reads_the_suites_wav() -> None:
    assert probe_source(MediaSource("blob", data=WAV)) == 100
    assert probe_source(MediaSource("blob", data=b"not audio at all, not even close")) is None
    assert probe_source(MediaSource("file", path="/nonexistent/x.wav")) is None


def test_plays_end_with_their_worker() -> None:
    cmds, call = _call()
    _ask(cmds, "play media", flags=["all"], file="/x.wav")
    assert [c.call_id for c in cmds.playbacks.end_all([call], T0 + 2)] == ["c1"]
    assert not any(p.playback.active for p in call.parties())  # type: ignore[union-attr]
    assert cmds.playbacks.end_all([call], T0 + 3) == []  # nothing left playing
    assert _ask(cmds, "stop media", from_tag="a", at=4)["last-frame-pos"] == 1000


def test_a_play_survives_the_journal() -> None:
    """A restarted relayd reads the party's play back (and then ends it: its worker is new)."""
    cmds, call = _call()
    _ask(cmds, "play media", from_tag="a", file="/x.wav", repeat_times=2)
    restored = load_call(json.loads(json.dumps(dump_call(call))))
    assert restored.monologues["a"].playback == Playback(T0 + 1, 1500, 2, 0, active=True)
    assert restored.monologues["b"].playback is None
