"""ng commands on the call registry: limits, port exhaustion, delete, timers, list, statistics.

Replies and error strings are rtpengine 10.5's, byte for byte (reference §1.2, §3.2).
"""

from __future__ import annotations

import json

import pytest

from relayd.calls.commands import CALL_NOT_FOUND, Commands, Teardown
from relayd.calls.model import Call
from relayd.calls.ports import PortAllocator, PortsExhausted
from relayd.calls.timers import Limits
from relayd.ng import bencode
from relayd.ng.message import encode_reply
from tests.unit.calls import A_ADDR, B_ADDR, LOCAL4, T0, FakeBinder, build, req, sdp


def _call(cmds: Commands, call_id: str = "c1", at: float = T0, *, answer: bool = True) -> None:
    reply = cmds.handle(req("offer", call_id, from_tag="a", sdp=sdp()), at)
    assert reply["result"] == "ok", reply
    if answer:
        reply = cmds.handle(req("answer", call_id, from_tag="a", to_tag="b", sdp=sdp(B_ADDR)), at)
        assert reply["result"] == "ok", reply


def _pool_in_use(cmds: Commands) -> int:
    return sum(pool.in_use for pool in cmds.signalling.ports.pools.values())


# --- basics ------------------------------------------------------------------------------------


def test_ping() -> None:
    cmds, _ = build()
    assert cmds.handle(req("ping", ""), T0) == {"result": "pong"}


def test_unrecognized_command_counts_as_error() -> None:
    cmds, _ = build()
    reply = cmds.handle(req("frobnicate"), T0)
    assert reply == {"result": "error", "error-reason": "Unrecognized command"}
    assert cmds.totals.errors == 1
    assert "frobnicate" not in cmds.totals.commands


def test_error_replies_carry_nothing_else() -> None:
    cmds, _ = build()
    assert cmds.handle(req("offer", from_tag="a"), T0) == {
        "result": "error",
        "error-reason": "No SDP body in message",
    }
    assert cmds.handle(req("offer", "", from_tag="a", sdp=sdp()), T0) == {
        "result": "error",
        "error-reason": "No call-id in message",
    }
    assert cmds.handle(req("offer", sdp=sdp()), T0) == {
        "result": "error",
        "error-reason": "No from-tag in message",
    }
    assert cmds.handle(req("answer", from_tag="a", sdp=sdp()), T0) == {
        "result": "error",
        "error-reason": "No to-tag in message",
    }
    assert cmds.handle(req("answer", from_tag="a", to_tag="b", sdp=sdp()), T0) == {
        "result": "error",
        "error-reason": "Unknown call-id",
    }
    assert cmds.handle(req("query"), T0) == {"result": "error", "error-reason": "Unknown call-id"}
    assert cmds.calls == {}
    assert cmds.totals.errors == 6


def test_empty_sdp_is_a_bare_ok_and_creates_nothing() -> None:
    cmds, binder = build()
    assert cmds.handle(req("offer", from_tag="a", sdp=""), T0) == {"result": "ok"}
    assert cmds.calls == {}
    assert binder.bound == []


# --- load limit --------------------------------------------------------------------------------


def test_load_limit_with_support_flag() -> None:
    cmds, binder = build(limits=Limits(max_sessions=1))
    _call(cmds, "c1")
    reply = cmds.handle(
        req("offer", "c2", from_tag="x", sdp=sdp(), supports=["load limit"]), T0 + 1
    )
    assert reply == {"result": "load limit", "message": "Parallel session limit reached"}
    assert list(cmds.calls) == ["c1"]
    assert cmds.totals.rejected == 1
    assert len(binder.bound) == 2  # the rejected call took no port


def test_load_limit_without_support_flag_is_an_error() -> None:
    cmds, _ = build(limits=Limits(max_sessions=1))
    _call(cmds, "c1")
    reply = cmds.handle(req("offer", "c2", from_tag="x", sdp=sdp()), T0 + 1)
    assert reply == {"result": "error", "error-reason": "Parallel session limit reached"}
    assert cmds.totals.rejected == 1


def test_load_limit_still_lets_existing_calls_reoffer() -> None:
    cmds, _ = build(limits=Limits(max_sessions=1))
    _call(cmds, "c1")
    reply = cmds.handle(
        req(
            "offer",
            "c1",
            from_tag="a",
            to_tag="b",
            sdp=sdp(direction="sendonly"),
            supports=["load limit"],
        ),
        T0 + 5,
    )
    assert reply["result"] == "ok"
    assert "a=sendonly" in reply["sdp"].split("\r\n")
    assert cmds.totals.rejected == 0


def test_max_sessions_zero_rejects_everything_and_minus_one_nothing() -> None:
    cmds, _ = build(limits=Limits(max_sessions=0))
    reply = cmds.handle(req("offer", from_tag="a", sdp=sdp(), supports=["load limit"]), T0)
    assert reply == {"result": "load limit", "message": "Parallel session limit reached"}
    cmds, _ = build(limits=Limits(max_sessions=-1))
    for n in range(5):
        _call(cmds, f"c{n}")
    assert len(cmds.calls) == 5


# --- port exhaustion ---------------------------------------------------------------------------


def test_ran_out_of_ports_undoes_the_call() -> None:
    # 4 pairs: the first call takes 2, the second (audio + video) needs 4
    cmds, binder = build(port_min=30000, port_max=30007)
    _call(cmds, "c1")
    first = dict(binder.live)
    in_use = _pool_in_use(cmds)
    assert in_use == 2

    reply = cmds.handle(req("offer", "c2", from_tag="x", sdp=sdp(video=5002)), T0 + 1)
    assert reply == {"result": "error", "error-reason": "Ran out of ports"}
    assert "c2" not in cmds.calls
    assert len(binder.bound) == 4  # it did take two pairs (audio) before running out
    assert dict(binder.live) == first  # ... and gave back exactly those
    assert _pool_in_use(cmds) == in_use
    assert cmds.totals.managed == 1
    assert cmds.totals.errors == 1

    # the other call is untouched and the freed pairs are usable again
    assert cmds.handle(req("query", "c1"), T0 + 2)["result"] == "ok"
    _call(cmds, "c3", T0 + 3)
    assert _pool_in_use(cmds) == 4
    assert cmds.handle(req("offer", "c4", from_tag="x", sdp=sdp()), T0 + 4) == {
        "result": "error",
        "error-reason": "Ran out of ports",
    }
    assert sorted(cmds.calls) == ["c1", "c3"]


def test_ran_out_of_ports_on_the_very_first_pair() -> None:
    cmds, binder = build(port_min=30000, port_max=30001)  # one pair: not even one side fits
    reply = cmds.handle(req("offer", from_tag="a", sdp=sdp()), T0)
    assert reply == {"result": "error", "error-reason": "Ran out of ports"}
    assert cmds.calls == {}
    assert binder.bound == binder.released == [(LOCAL4, 30000)]
    assert _pool_in_use(cmds) == 0


def test_port_taken_by_another_program_is_skipped() -> None:
    binder = FakeBinder(taken={(LOCAL4, 30002)})
    cmds, _ = build(port_min=30000, port_max=30005, binder=binder)  # 3 pairs, one taken
    _call(cmds, "c1")
    assert sorted(binder.live) == [(LOCAL4, 30000), (LOCAL4, 30004)]
    assert {m.port for m in cmds.calls["c1"].all_medias()} == {30000, 30004}
    # pool order is random: the taken pair is met by c1 or by c2, and refused once
    reply = cmds.handle(req("offer", "c2", from_tag="x", sdp=sdp()), T0)
    assert reply == {"result": "error", "error-reason": "Ran out of ports"}
    assert binder.refused == [(LOCAL4, 30002)]
    # the refused pair stays reserved (not retried)
    assert _pool_in_use(cmds) == 3
    assert sorted(binder.live) == [(LOCAL4, 30000), (LOCAL4, 30004)]


def test_allocator_skips_refused_ports_until_exhausted() -> None:
    binder = FakeBinder(taken={("192.0.2.1", 40000), ("192.0.2.1", 40002)})
    ports = PortAllocator(40000, 40005, binder=binder)
    assert ports.allocate("192.0.2.1") == 40004
    with pytest.raises(PortsExhausted):
        ports.allocate("192.0.2.1")
    assert sorted(binder.refused) == [("192.0.2.1", 40000), ("192.0.2.1", 40002)]
    assert binder.bound == [("192.0.2.1", 40004)]
    assert ports.pool("192.0.2.1").in_use == 3


# --- delete ------------------------------------------------------------------------------------


def test_delete_unknown_call_warns() -> None:
    cmds, _ = build()
    assert cmds.handle(req("delete", "nope", from_tag="a"), T0) == {
        "result": "ok",
        "warning": "Call-ID not found or tags didn't match",
    }
    assert CALL_NOT_FOUND == "Call-ID not found or tags didn't match"


def test_delete_unknown_call_with_fatal_is_an_error() -> None:
    cmds, _ = build()
    assert cmds.handle(req("delete", "nope", from_tag="a", flags=["fatal"]), T0) == {
        "result": "error",
        "error-reason": "Call-ID not found or tags didn't match",
    }


def test_delete_with_foreign_from_tag_warns_and_keeps_the_call() -> None:
    cmds, _ = build()
    _call(cmds)
    reply = cmds.handle(req("delete", from_tag="stranger"), T0 + 1)
    assert reply == {"result": "ok", "warning": CALL_NOT_FOUND}
    assert cmds.calls["c1"].deleted_at is None


def test_delete_delay_keeps_the_call_until_reaped() -> None:
    cmds, binder = build()  # default delete-delay: 30 s
    _call(cmds)
    reply = cmds.handle(req("delete", from_tag="a"), T0 + 10)
    assert reply["result"] == "ok"
    assert sorted(reply["tags"]) == ["a", "b"]
    assert cmds.calls["c1"].deleted_at == T0 + 40
    assert cmds.reap(T0 + 39.9) == []
    assert cmds.handle(req("query"), T0 + 39.9)["result"] == "ok"
    assert len(binder.live) == 2

    gone = cmds.reap(T0 + 40)
    assert [(t.call.call_id, t.reason) for t in gone] == [("c1", "deleted")]
    assert cmds.calls == {}
    assert binder.live == {}
    assert cmds.handle(req("query"), T0 + 41) == {
        "result": "error",
        "error-reason": "Unknown call-id",
    }
    assert cmds.totals.regular_terminated == 1
    assert cmds.totals.call_duration == 40.0


def test_delete_delay_key_overrides_the_limit() -> None:
    cmds, _ = build(limits=Limits(delete_delay=30))
    _call(cmds)
    cmds.handle(req("delete", from_tag="a", delete_delay=5), T0)
    assert cmds.reap(T0 + 4.9) == []
    assert [t.reason for t in cmds.reap(T0 + 5)] == ["deleted"]


def test_reap_looks_only_at_calls_whose_deadline_came() -> None:
    cmds, _ = build(limits=Limits(delete_delay=5, timeout=60))
    for n in range(50):
        _call(cmds, f"c{n}")
    cmds.handle(req("delete", "c7", from_tag="a"), T0)
    looked_at: list[str] = []
    expire = cmds._expire

    def counting(call: Call, now: float) -> Teardown | None:
        looked_at.append(call.call_id)
        return expire(call, now)

    cmds._expire = counting  # type: ignore[method-assign]
    assert [t.call.call_id for t in cmds.reap(T0 + 5)] == ["c7"]
    assert looked_at == ["c7"]
    assert cmds.reap(T0 + 59) == [] and looked_at == ["c7"]
    assert len(cmds.reap(T0 + 60)) == 49


def test_media_moves_a_calls_deadline() -> None:
    cmds, _ = build(limits=Limits(timeout=60))
    _call(cmds)
    stream = cmds.calls["c1"].monologues["a"].medias[0].streams[0]
    stream.stats.last_packet = T0 + 50  # a worker reported media
    assert cmds.reap(T0 + 60) == []
    assert cmds.reap(T0 + 109.9) == []
    assert [t.reason for t in cmds.reap(T0 + 110)] == ["timeout"]


def test_reap_refreshes_the_due_calls_counters_before_judging_them() -> None:
    """Media the kernel forwarded is read only when a call's deadline comes: the refresh
    hook sees exactly the due calls, and what it folds in keeps a call alive."""
    cmds, _ = build(limits=Limits(timeout=60))
    _call(cmds, "quiet")
    _call(cmds, "talking")
    _call(cmds, "later")
    cmds.calls["later"].last_signal = T0 + 30
    cmds.schedule(cmds.calls["later"])
    refreshed: list[list[str]] = []

    def refresh(calls: list[Call], now: float) -> None:
        refreshed.append(sorted(c.call_id for c in calls))
        talking = cmds.calls["talking"].monologues["a"].medias[0].streams[0]
        talking.stats.last_packet = now - 2  # the kernel's element: 2 s ago

    cmds.refresh = refresh
    gone = cmds.reap(T0 + 60)
    assert refreshed == [["quiet", "talking"]]  # not "later": its moment has not come
    assert [t.call.call_id for t in gone] == ["quiet"]
    assert cmds.calls["talking"].reap_at == T0 + 118  # the last packet + timeout


def test_reap_takes_at_most_its_limit_and_says_when_more_are_due() -> None:
    cmds, _ = build(limits=Limits(timeout=60))
    for n in range(5):
        _call(cmds, f"c{n}")
    assert len(cmds.reap(T0 + 60, limit=2)) == 2
    assert cmds.timers.pending(T0 + 60)
    assert len(cmds.reap(T0 + 60, limit=2)) == 2
    assert len(cmds.reap(T0 + 60, limit=2)) == 1
    assert not cmds.timers.pending(T0 + 60)
    assert cmds.calls == {}


def test_timer_entries_of_finished_calls_do_not_pile_up() -> None:
    """An offer's entry is an hour away (offer-timeout) and an answer replaces it: with
    calls coming and going, the heap is rebuilt before old entries outnumber the calls."""
    cmds, _ = build(limits=Limits(delete_delay=0))
    for n in range(3000):
        _call(cmds, f"c{n}")
        cmds.handle(req("delete", f"c{n}", from_tag="a"), T0)
    assert cmds.calls == {}
    assert len(cmds.timers.entries) <= 2 * 1024 + 2
    _call(cmds, "live")
    assert cmds.reap(T0 + 59) == []
    assert [t.call.call_id for t in cmds.reap(T0 + 60)] == ["live"]


def test_changed_limits_apply_to_calls_already_set_up() -> None:
    cmds, _ = build(limits=Limits(timeout=60))
    _call(cmds)
    cmds.set_limits(Limits(timeout=10))  # relayctl reload
    assert [t.reason for t in cmds.reap(T0 + 10)] == ["timeout"]


def test_delete_delay_zero_removes_at_once() -> None:
    cmds, binder = build()
    seen: list[Teardown] = []
    cmds.on_teardown = seen.append
    _call(cmds)
    reply = cmds.handle(req("delete", from_tag="a", delete_delay=0), T0 + 2)
    assert reply["result"] == "ok"
    assert reply["created"] == int(T0)
    assert cmds.calls == {}
    assert binder.live == {}
    assert [(t.call.call_id, t.reason) for t in seen] == [("c1", "deleted")]


def test_delete_fast_replies_without_statistics() -> None:
    cmds, _ = build(limits=Limits(delete_delay=0))
    _call(cmds)
    assert cmds.handle(req("delete", from_tag="a", flags=["fast"]), T0) == {"result": "ok"}


def test_repeated_delete_does_not_push_the_deadline() -> None:
    cmds, _ = build()
    _call(cmds)
    cmds.handle(req("delete", from_tag="a"), T0)
    cmds.handle(req("delete", from_tag="a"), T0 + 20)
    assert cmds.calls["c1"].deleted_at == T0 + 30


def test_delete_by_the_callee_tag() -> None:
    cmds, _ = build(limits=Limits(delete_delay=0))
    _call(cmds)
    assert cmds.handle(req("delete", from_tag="b"), T0)["result"] == "ok"
    assert cmds.calls == {}


# --- timers ------------------------------------------------------------------------------------


def test_offer_timeout_reaps_unanswered_calls() -> None:
    cmds, binder = build(limits=Limits(offer_timeout=10))
    _call(cmds, "c1", answer=False)
    _call(cmds, "c2", T0 + 5)
    assert cmds.reap(T0 + 9.9) == []
    gone = cmds.reap(T0 + 10)
    assert [(t.call.call_id, t.reason) for t in gone] == [("c1", "offer timeout")]
    assert list(cmds.calls) == ["c2"]
    assert cmds.totals.offer_timeouts == 1
    assert len(binder.live) == 2  # c2's


def test_offer_timeout_counts_from_the_last_signal() -> None:
    cmds, _ = build(limits=Limits(offer_timeout=10))
    _call(cmds, answer=False)
    cmds.handle(req("offer", from_tag="a", sdp=sdp()), T0 + 8)  # retransmitted / re-sent offer
    assert cmds.reap(T0 + 17.9) == []
    assert [t.reason for t in cmds.reap(T0 + 18)] == ["offer timeout"]


def test_final_timeout_counts_from_creation() -> None:
    cmds, _ = build(limits=Limits(final_timeout=100, timeout=0))
    _call(cmds)
    cmds.handle(req("offer", from_tag="a", to_tag="b", sdp=sdp()), T0 + 90)
    assert cmds.reap(T0 + 99.9) == []
    gone = cmds.reap(T0 + 100)
    assert [t.reason for t in gone] == ["final timeout"]
    assert cmds.totals.final_timeouts == 1


def test_media_timeout_without_packets() -> None:
    cmds, binder = build(limits=Limits(timeout=60))
    cmds.handle(req("offer", from_tag="a", sdp=sdp()), T0)
    cmds.handle(req("answer", from_tag="a", to_tag="b", sdp=sdp(B_ADDR)), T0 + 1)
    assert cmds.reap(T0 + 60.9) == []
    gone = cmds.reap(T0 + 61)
    assert [t.reason for t in gone] == ["timeout"]
    assert cmds.totals.timeouts == 1
    assert binder.live == {}


def test_recent_packet_keeps_the_call() -> None:
    cmds, _ = build(limits=Limits(timeout=60))
    _call(cmds)
    stream = cmds.calls["c1"].monologues["b"].medias[0].streams[0]
    stream.stats.last_packet = T0 + 50
    assert cmds.reap(T0 + 109.9) == []
    assert [t.reason for t in cmds.reap(T0 + 110)] == ["timeout"]


def test_silent_timeout_while_held() -> None:
    cmds, _ = build(limits=Limits(timeout=60, silent_timeout=600))
    _call(cmds)
    cmds.handle(req("offer", from_tag="a", to_tag="b", sdp=sdp(direction="sendonly")), T0 + 2)
    cmds.handle(
        req("answer", from_tag="a", to_tag="b", sdp=sdp(B_ADDR, direction="recvonly")), T0 + 2
    )
    assert cmds.reap(T0 + 100) == []
    assert cmds.reap(T0 + 601.9) == []
    gone = cmds.reap(T0 + 602)
    assert [t.reason for t in gone] == ["silent timeout"]
    assert cmds.totals.silent_timeouts == 1
    assert cmds.totals.timeouts == 0


def test_silent_timeout_for_inactive_and_zero_address() -> None:
    zero = sdp().replace(f"c=IN IP4 {A_ADDR}", "c=IN IP4 0.0.0.0")
    for body in (sdp(direction="inactive"), zero):
        cmds, _ = build(limits=Limits(timeout=60, silent_timeout=600))
        _call(cmds)
        cmds.handle(req("offer", from_tag="a", to_tag="b", sdp=body), T0)
        assert cmds.reap(T0 + 599) == []
        assert [t.reason for t in cmds.reap(T0 + 600)] == ["silent timeout"]


def test_timeout_zero_disables_media_timeouts() -> None:
    cmds, _ = build(limits=Limits(timeout=0))
    _call(cmds)
    assert cmds.reap(T0 + 10**6) == []


def test_resume_after_hold_returns_to_the_normal_timeout() -> None:
    cmds, _ = build(limits=Limits(timeout=60, silent_timeout=600))
    _call(cmds)
    cmds.handle(req("offer", from_tag="a", to_tag="b", sdp=sdp(direction="sendonly")), T0)
    cmds.handle(req("offer", from_tag="a", to_tag="b", sdp=sdp()), T0 + 10)
    assert [t.reason for t in cmds.reap(T0 + 70)] == ["timeout"]


# --- list, query, statistics -------------------------------------------------------------------


def test_list_with_limit() -> None:
    cmds, _ = build()
    for call_id in ("c1", "c2", "c3"):
        _call(cmds, call_id)
    assert cmds.handle(req("list", ""), T0) == {"result": "ok", "calls": ["c1", "c2", "c3"]}
    assert cmds.handle(req("list", "", limit=2), T0) == {"result": "ok", "calls": ["c1", "c2"]}
    assert cmds.handle(req("list", "", limit=0), T0) == {"result": "ok", "calls": []}
    assert cmds.handle(req("list", "", limit=-1), T0) == {"result": "ok", "calls": []}


def test_list_default_limit_is_32() -> None:
    cmds, _ = build()
    for n in range(40):
        _call(cmds, f"c{n:02}")
    calls = cmds.handle(req("list", ""), T0)["calls"]
    assert calls == [f"c{n:02}" for n in range(32)]


def test_query_of_an_unanswered_call_names_the_untagged_branch() -> None:
    cmds, _ = build()
    _call(cmds, answer=False)
    reply = cmds.handle(req("query"), T0 + 1.5)
    assert list(reply["tags"]) == ["a", "<untagged 1>"]
    untagged = reply["tags"]["<untagged 1>"]
    assert untagged["tag"] == ""
    assert untagged["subscriptions"] == [{"tag": "a", "type": "offer/answer"}]
    assert untagged["medias"][0]["flags"] == ["send", "recv", "ICE controlling"]
    streams = untagged["medias"][0]["streams"]
    assert [(s["endpoint"], s["flags"]) for s in streams] == [({}, ["RTP"]), ({}, ["RTCP"])]
    offerer = reply["tags"]["a"]
    # rtpengine 10.5 links the offerer to the unnamed branch as tag ""
    assert offerer["subscriptions"] == [{"tag": "", "type": "offer/answer"}]
    assert offerer["medias"][0]["flags"] == ["initialized", "send", "recv"]
    rtp, rtcp = offerer["medias"][0]["streams"]
    assert rtp["endpoint"] == {"family": "IPv4", "address": A_ADDR, "port": 5000}
    assert rtcp["endpoint"] == {"family": "IPv4", "address": A_ADDR, "port": 5001}
    assert rtcp["local port"] == rtp["local port"] + 1
    assert (rtp["flags"], rtcp["flags"]) == (["RTP", "filled"], ["RTCP", "filled"])
    assert reply["created"] == int(T0)
    assert reply["created_us"] == 0
    assert reply["last signal"] == int(T0)
    assert reply["SSRC"] == {}


def test_query_tree_of_an_answered_call_and_totals() -> None:
    cmds, _ = build()
    _call(cmds)
    call = cmds.calls["c1"]
    counters = {("a", 0): (10, 1720, 1), ("a", 1): (2, 160, 0), ("b", 0): (7, 1204, 2)}
    for (tag, n), (packets, size, errors) in counters.items():
        stats = call.monologues[tag].medias[0].streams[n].stats
        stats.packets, stats.bytes, stats.errors = packets, size, errors
        stats.last_packet = T0 + 3.7
    reply = cmds.handle(req("query"), T0 + 4)
    assert list(reply["tags"]) == ["a", "b"]
    assert reply["tags"]["a"]["subscriptions"] == [{"tag": "b", "type": "offer/answer"}]
    assert reply["tags"]["b"]["subscribers"] == [{"tag": "a", "type": "offer/answer"}]
    stream = reply["tags"]["b"]["medias"][0]["streams"][0]
    assert stream["stats"] == {"packets": 7, "bytes": 1204, "errors": 2}
    assert stream["last packet"] == int(T0 + 3)
    assert stream["endpoint"] == {"family": "IPv4", "address": B_ADDR, "port": 5000}
    assert reply["totals"] == {
        "RTP": {"packets": 17, "bytes": 2924, "errors": 3},
        "RTCP": {"packets": 2, "bytes": 160, "errors": 0},
    }


def test_query_tree_flags_labels_and_text_that_is_not_ascii() -> None:
    """The tree's rarer keys and flags, and a tag that is not ASCII (a Latin-1 byte kept
    as a surrogate): written with their lengths in bytes, read back as rtpengine's tree."""
    cmds, _ = build()
    tag = "b\u00e9\udce9"  # "bé" in UTF-8, then a byte that is not UTF-8
    assert cmds.handle(req("offer", from_tag="a", sdp=sdp()), T0)["result"] == "ok"
    reply = cmds.handle(req("answer", from_tag="a", to_tag=tag, sdp=sdp(B_ADDR)), T0)
    assert reply["result"] == "ok"
    call = cmds.calls["c1"]
    offerer = call.monologues["a"]
    offerer.label, offerer.asymmetric, offerer.strict_source = "caller", True, True
    offerer.media_handover = True
    media = offerer.medias[0]
    media.dtls_role, media.ice_ufrag, media.peer_trickle = "active", "ufrag", True
    rtp, rtcp = media.streams
    rtp.confirmed, rtp.kernelized, rtp.dtls, rtp.ice = True, True, "connected", "completed"
    rtcp.dtls = "failed: timeout"
    tree = cmds.handle(req("query"), T0)
    assert list(tree["tags"]) == ["a", tag]
    entry = tree["tags"]["a"]
    assert entry["label"] == "caller"
    assert entry["subscriptions"] == [{"tag": tag, "type": "offer/answer"}]
    assert entry["medias"][0]["flags"] == [
        "initialized",
        "asymmetric",
        "send",
        "recv",
        "DTLS-SRTP",
        "DTLS role active",
        "ICE",
        "trickle ICE",
    ]
    streams = entry["medias"][0]["streams"]
    assert streams[0]["flags"] == [
        "RTP",
        "filled",
        "confirmed",
        "kernelized",
        "strict source address",
        "media handover",
        "DTLS fingerprint verified",
    ]
    assert (streams[0]["DTLS"], streams[0]["ICE"]) == ("connected", "completed")
    assert streams[1]["DTLS"] == "failed: timeout"
    assert "ICE" not in streams[1]
    answerer_flags = ["initialized", "send", "recv", "ICE controlling"]
    assert tree["tags"][tag]["medias"][0]["flags"] == answerer_flags
    wire = encode_reply("1", tree, False)
    assert bencode.decode(wire[2:]) == {**tree, "tags": dict(tree["tags"])}
    assert tag.encode("utf-8", "surrogateescape") in wire
    assert json.loads(encode_reply("1", tree, True)[2:]) == json.loads(
        json.dumps({**tree, "tags": dict(tree["tags"])})
    )


def test_statistics_counters() -> None:
    cmds, _ = build(limits=Limits(max_sessions=2, offer_timeout=10, delete_delay=0))
    _call(cmds, "c1")
    _call(cmds, "c2", answer=False)
    cmds.handle(req("offer", "c3", from_tag="x", sdp=sdp(), supports=["load limit"]), T0)
    cmds.handle(req("bogus"), T0)
    cmds.handle(req("ping", ""), T0)
    cmds.handle(req("delete", "c1", from_tag="a"), T0 + 4)
    assert [t.reason for t in cmds.reap(T0 + 10)] == ["offer timeout"]
    cmds.handle(req("query", "c2"), T0 + 11)  # gone: an error
    cmds.handle(req("list", ""), T0 + 11)

    reply = cmds.handle(req("statistics", ""), T0 + 12)
    assert reply["result"] == "ok"
    stats = reply["statistics"]
    assert stats["currentstatistics"] == {
        "sessionsown": 0,
        "sessionsforeign": 0,
        "sessionstotal": 0,
        "transcodedmedia": 0,
        "packetrate": 0,
        "byterate": 0,
        "errorrate": 0,
    }
    total = stats["totalstatistics"]
    assert total["uptime"] == "12"
    assert total["managedsessions"] == 2
    assert total["rejectedsessions"] == 1
    assert total["offertimeoutsessions"] == 1
    assert total["regularterminatedsessions"] == 1
    assert total["timeoutsessions"] == 0
    assert total["totalcallsduration"] == "14.000000"  # 4 s + 10 s
    assert total["avgcallduration"] == "7.000000"
    assert stats["controlstatistics"] == {
        "totalpingcount": 1,
        "totaloffercount": 3,
        "totalanswercount": 1,
        "totaldeletecount": 1,
        "totalquerycount": 1,
        "totallistcount": 1,
        "totalstatscount": 1,
        # unknown command, query of a gone call; a "load limit" reply is no error (10.5)
        "errorcount": 2,
    }


def test_statistics_relayed_counters_and_ports() -> None:
    cmds, _ = build(port_min=30000, port_max=30099)
    _call(cmds)
    stats = cmds.calls["c1"].monologues["a"].medias[0].streams[0].stats
    stats.packets, stats.bytes, stats.errors = 5, 860, 1
    reply = cmds.handle(req("statistics", ""), T0)["statistics"]
    assert reply["currentstatistics"]["sessionsown"] == 1
    assert reply["totalstatistics"]["relayedpackets"] == 5
    assert reply["totalstatistics"]["relayedbytes"] == 860
    assert reply["totalstatistics"]["relayedpacketerrors"] == 1
    assert reply["interfaces"] == [
        {
            "address": LOCAL4,
            "ports": {
                "min": 30000,
                "max": 30099,
                "used": 4,
                "used_pct": "4.00",
                "free": 96,
                "totals": 100,
            },
        }
    ]


def test_statistics_port_totals_cover_every_worker_slice() -> None:
    cmds, _ = build(port_min=30000, port_max=30099, workers=4)
    cmds.place = lambda: 3
    _call(cmds)
    (interface,) = cmds.handle(req("statistics", ""), T0)["statistics"]["interfaces"]
    assert interface["ports"] == {
        "min": 30000,
        "max": 30099,
        "used": 4,
        "used_pct": "4.00",
        "free": 96,
        "totals": 100,
    }


def test_an_empty_rtcp_attribute_is_read_as_none() -> None:
    cmds, _ = build()
    reply = cmds.handle(req("offer", from_tag="a", sdp=sdp(extra=["a=rtcp:"])), T0)
    assert reply["result"] == "ok", reply


def test_an_offer_that_fails_for_any_reason_leaves_no_call_and_no_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Not only "Ran out of ports": an unexpected error half way through (a bug) gives back
    what the message took, so that the call does not linger with ports until it times out."""
    cmds, binder = build()

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(cmds.signalling.media_ports, "ensure_ice", broken)
    with pytest.raises(RuntimeError):
        cmds.handle(req("offer", from_tag="a", sdp=sdp()), T0)
    assert not cmds.calls
    assert not binder.live
