"""Call state through the journal's JSON and back (relayd/calls/snapshot.py)."""

from __future__ import annotations

import json

from relayd.calls.model import PLAIN, Call, LocalAddress
from relayd.calls.snapshot import dump_call, load_call
from tests.unit.calls import B_ADDR, build, interfaces, req, sdp

C_ADDR = "198.51.100.30"
OTHER4 = "192.0.2.7"


def _round_trip(call: Call) -> Call:
    return load_call(json.loads(json.dumps(dump_call(call))))


def test_a_forked_call_comes_back_equal_with_its_aliases_and_other_dialogues() -> None:
    cmds, _ = build()
    for command, keys in (
        ("offer", {"from_tag": "a", "via_branch": "z1", "sdp": sdp()}),
        ("answer", {"from_tag": "a", "to_tag": "b1", "via_branch": "z1", "sdp": sdp(B_ADDR)}),
        ("answer", {"from_tag": "a", "to_tag": "b2", "via_branch": "z1", "sdp": sdp(C_ADDR)}),
    ):
        assert cmds.handle(req(command, **keys), 0.0)["result"] == "ok"
    call = cmds.calls["c1"]
    assert call.monologues["b1"].aliases == ("b2",)
    back = _round_trip(call)
    assert back == call
    assert back.monologues["b1"] is back.monologues["b2"]  # one party, two tags
    assert back.monologues["a"].medias[0].codecs == call.monologues["a"].medias[0].codecs


def test_srtp_keys_and_ice_candidates_on_two_addresses_come_back() -> None:
    ifaces = interfaces(LocalAddress("default", OTHER4, OTHER4))
    cmds, _ = build(ifaces=ifaces)
    offer = req(
        "offer",
        from_tag="a",
        sdp=sdp(),
        flags=["ICE=force"],
        transport_protocol="RTP/SAVP",
    )
    assert cmds.handle(offer, 0.0)["result"] == "ok"
    call = cmds.calls["c1"]
    towards_b = call.parties()[1].medias[0]
    assert towards_b.ice_ports and towards_b.crypto_out  # what the test is about
    back = _round_trip(call)
    assert back == call
    again = back.parties()[1].medias[0]
    assert again.ice_ports == towards_b.ice_ports
    assert isinstance(again.ice_ports, tuple) and isinstance(again.ice_ports[0][0], LocalAddress)
    assert again.crypto_out == towards_b.crypto_out


def test_a_monotonic_learning_deadline_does_not_survive_the_journal() -> None:
    cmds, _ = build()
    assert cmds.handle(req("offer", from_tag="a", sdp=sdp()), 0.0)["result"] == "ok"
    call = cmds.calls["c1"]
    call.monologues["a"].learn_after = 9e9  # written by another boot's clock
    assert _round_trip(call).monologues["a"].learn_after == 0.0


def test_a_media_is_journalled_flat_as_before_its_security_fields_moved() -> None:
    """Journals written before MediaSecurity load, and new ones have the same layout: the
    SRTP, DTLS and ICE fields stand among the media's own, no "security" key."""
    cmds, _ = build()
    offer = req("offer", from_tag="a", sdp=sdp(), transport_protocol="RTP/SAVP")
    assert cmds.handle(offer, 0.0)["result"] == "ok"
    call = cmds.calls["c1"]
    data = dump_call(call)
    towards_b = data["parties"][1]["medias"][0]
    assert "security" not in towards_b
    assert towards_b["crypto_out"] and towards_b["ice"] is False
    assert load_call(json.loads(json.dumps(data))) == call


def test_plain_media_share_one_empty_security_also_after_the_journal() -> None:
    """Memory per call: plain RTP media hold no SRTP/DTLS/ICE fields of their own."""
    cmds, _ = build()
    assert cmds.handle(req("offer", from_tag="a", sdp=sdp()), 0.0)["result"] == "ok"
    assert cmds.handle(req("answer", from_tag="a", to_tag="b", sdp=sdp(B_ADDR)), 0.0)
    for call in (cmds.calls["c1"], _round_trip(cmds.calls["c1"])):
        assert all(media.security is PLAIN for media in call.all_medias())


def test_a_journal_with_a_stream_s_counters_nested_under_stats_loads_them() -> None:
    """Journals written before a stream's counters became its own fields: ``"stats": {…}``."""
    cmds, _ = build()
    assert cmds.handle(req("offer", from_tag="a", sdp=sdp()), 0.0)["result"] == "ok"
    call = cmds.calls["c1"]
    stream = call.monologues["a"].medias[0].streams[0]
    stream.stats.packets, stream.stats.bytes, stream.stats.last_packet = 7, 1204, 12.5
    data = json.loads(json.dumps(dump_call(call)))
    for party in data["parties"]:
        for media in party["medias"]:
            for old in media["streams"]:
                names = ("packets", "bytes", "errors", "last_packet")
                old["stats"] = {name: old.pop(name) for name in names}
    back = load_call(data)
    assert back == call
    assert back.monologues["a"].medias[0].streams[0].stats.packets == 7


def test_the_workers_last_totals_kept_in_a_stream_are_not_journalled() -> None:
    """Stream.reported_*: the media plane's bookkeeping (relayd/plane/reports.py), which
    means nothing to a restarted relayd; the journal's contents stay as they were."""
    cmds, _ = build()
    assert cmds.handle(req("offer", from_tag="a", sdp=sdp()), 0.0)["result"] == "ok"
    call = cmds.calls["c1"]
    stream = call.monologues["a"].medias[0].streams[0]
    stream.reported_packets, stream.reported_bytes, stream.reported_errors = 5, 800, 1
    data = json.loads(json.dumps(dump_call(call)))
    assert "reported_packets" not in json.dumps(data)
    back = load_call(data)
    assert back == call  # (the totals are not compared)
    assert back.monologues["a"].medias[0].streams[0].reported_packets == 0
