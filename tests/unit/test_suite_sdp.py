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
from relayd.sdp.parse import parse_sdp
from relayd.sdp.write import write_sdp
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


# --- rejected media sections (suite: "GH 1499 control", "a=mid on zero streams") --------------


def _body(*media: str, session_c: str | None = "c=IN IP4 198.51.100.1") -> str:
    lines = ["v=0", "o=- 1545997027 1 IN IP4 198.51.100.1", "s=tester", "t=0 0"]
    if session_c:
        lines.append(session_c)
    for section in media:
        lines.extend(section.split("\n"))
    return "\r\n".join(lines) + "\r\n"


def _sections(reply: dict[str, Any]) -> list[list[str]]:
    """The reply's media sections, each as its lines from ``m=`` on."""
    sections: list[list[str]] = []
    for line in _lines(reply):
        if line.startswith("m="):
            sections.append([])
        if sections:
            sections[-1].append(line)
    return sections


def test_rejected_answer_section_goes_back_with_the_first_offered_format() -> None:
    cmds, _ = build()
    offer = _body("m=audio 4024 RTP/AVP 0 8", "m=audio 4026 RTP/AVP 8 9")
    _ok(cmds, "offer", from_tag="a", sdp=offer)
    answer = _body("m=audio 4026 RTP/AVP 8 9", "m=audio 0 RTP/AVP 0")
    reply = _ok(cmds, "answer", from_tag="a", to_tag="b", sdp=answer)
    assert _sections(reply)[1] == ["m=audio 0 RTP/AVP 8"]


def test_rejected_offer_section_loses_what_we_manage_and_gets_our_address() -> None:
    cmds, _ = build()
    rejected = "\n".join(
        [
            "m=video 0 RTP/SAVPF 96 97",
            "c=IN IP4 198.51.100.14",
            "a=mid:v",
            "a=rtpmap:96 VP8/90000",
            "a=fmtp:96 x=1",
            "a=rtcp-fb:96 nack",
            "a=rtcp-fb:* ccm",
            "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz",
            "a=ice-ufrag:abcd",
            "a=candidate:1 1 UDP 2130706431 198.51.100.14 5000 typ host",
            "a=fingerprint:sha-256 AB:CD",
            "a=setup:actpass",
            "a=extmap:1 foo",
            "a=end-of-candidates",
            "a=rtpengine:abc",
            "a=inactive",
            "a=ptime:20",
            "a=rtcp:555",
            "a=rtcp-mux",
            "a=maxptime:40",
        ]
    )
    reply = _ok(cmds, "offer", from_tag="a", sdp=_body("m=audio 2000 RTP/AVP 0", rejected))
    assert _sections(reply)[1] == [
        "m=video 0 RTP/SAVPF 96 97",
        "c=IN IP4 203.0.113.1",
        "a=rtcp-fb:* ccm",
        "a=fingerprint:sha-256 AB:CD",
        "a=extmap:1 foo",
        "a=rtpengine:abc",
        "a=maxptime:40",
        "a=mid:v",
        "a=end-of-candidates",
    ]


def test_rejected_section_keeps_its_m_line_verbatim() -> None:
    # GH #1461: "m=application 0 * " keeps its trailing space
    cmds, _ = build()
    body = _body("m=audio 2000 RTP/AVP 0", "m=application 0 RTP/AVP 124", "m=application 0 * ")
    reply = _ok(cmds, "offer", from_tag="a", sdp=body)
    assert _lines(reply)[-2:] == ["m=application 0 RTP/AVP 124", "m=application 0 * "]


# --- null connection addresses (suite: "null address test E" … "H") ----------------------------


def _hold(address_family: str, media_c: bool, zero: str) -> dict[str, Any]:
    cmds, _ = build()
    family = "IP6" if ":" in zero else "IP4"
    connection = f"c=IN {family} {zero}"
    media = "m=audio 16478 RTP/AVP 8" + (f"\n{connection}" if media_c else "")
    body = _body(media, session_c=None if media_c else connection)
    return _ok(cmds, "offer", from_tag="a", sdp=body, address_family=address_family)


def test_null_address_is_written_in_the_outgoing_family() -> None:
    assert "c=IN IP6 ::" in _sections(_hold("IP6", True, "0.0.0.0"))[0]
    assert "c=IN IP4 0.0.0.0" in _sections(_hold("IP4", True, "::"))[0]
    reply = _hold("IP6", False, "0.0.0.0")
    assert "c=IN IP6 ::" in _lines(reply) and "a=sendonly" in _lines(reply)
    assert "c=IN IP4 0.0.0.0" in _lines(_hold("IP4", False, "::"))


def _session_c(session: str, first: str | None, second: str | None, **keys: Any) -> list[str]:
    """The c= lines of the reply to an offer with this session c= and these media c= (None:
    the section has none), each media section's shown after an "m" entry."""
    cmds, _ = build()
    sections = [
        f"m=audio {port} RTP/AVP 0" + (f"\nc=IN IP4 {c}" if c else "")
        for port, c in ((2000, first), (2002, second))
    ]
    body = _body(*sections, session_c=f"c=IN IP4 {session}")
    reply = _ok(cmds, "offer", from_tag="a", sdp=body, **keys)
    return ["m" if line.startswith("m=") else line[9:] for line in _lines(reply) if line[0] in "cm"]


OURS = "203.0.113.1"


def test_replaced_session_address_follows_the_first_media_section() -> None:
    # replaced where a section relies on it: the first section's address, ours or null
    assert _session_c("0.0.0.0", "198.51.100.9", None) == [OURS, "m", OURS, "m"]
    assert _session_c("198.51.100.4", "0.0.0.0", None) == ["0.0.0.0", "m", "0.0.0.0", "m"]
    assert _session_c("0.0.0.0", None, "198.51.100.9") == ["0.0.0.0", "m", "m", OURS]
    # with a c= in every section it stays, whatever its address, unless asked
    assert _session_c("0.0.0.0", "198.51.100.9", "198.51.100.8")[0] == "0.0.0.0"
    replaced = _session_c("0.0.0.0", "198.51.100.9", "198.51.100.8", replace=["session-connection"])
    assert replaced[0] == OURS
    assert _session_c("0.0.0.0", None, None, replace=["zero-address"]) == [OURS, "m", "m"]


# --- m=message passes through (suite: "gh 959 …") ----------------------------------------------

MSRP = "m=message 28000 TCP/MSRP *\na=setup:active\na=path:msrp://198.51.100.1:28000/x;tcp"


def test_msrp_section_passes_through_with_the_original_session_address() -> None:
    cmds, binder = build()
    reply = _ok(cmds, "offer", from_tag="a", sdp=_body("m=audio 2000 RTP/AVP 96", MSRP))
    assert _lines(reply)[4] == "c=IN IP4 203.0.113.1"
    assert _sections(reply)[1] == [
        "m=message 28000 TCP/MSRP *",
        "c=IN IP4 198.51.100.1",  # the session's own, which we replaced
        "a=setup:active",
        "a=path:msrp://198.51.100.1:28000/x;tcp",
    ]
    # ports only for the audio section, towards each party
    assert len(binder.live) == 2
    media = cmds.calls["c1"].monologues["a"].medias[1]
    assert (media.passthrough, media.port, media.streams) == (True, 0, [])


def test_msrp_section_with_its_own_address_is_untouched_in_offer_and_answer() -> None:
    cmds, binder = build()
    own = "m=message 28000 TCP/MSRP *\nc=IN IP4 198.51.100.7\na=sendonly"
    offer = _ok(cmds, "offer", from_tag="a", sdp=_body("m=audio 2000 RTP/AVP 0", own))
    assert _sections(offer)[1] == own.split("\n")
    answered = "m=message 38000 TCP/MSRP *\na=setup:passive"
    body = _body("m=audio 3000 RTP/AVP 0", answered, session_c="c=IN IP4 198.51.100.20")
    reply = _ok(cmds, "answer", from_tag="a", to_tag="b", sdp=body)
    assert _sections(reply)[1] == [
        "m=message 38000 TCP/MSRP *",
        "c=IN IP4 198.51.100.20",
        "a=setup:passive",
    ]
    assert len(binder.live) == 2


def test_only_the_message_media_type_passes_through() -> None:
    # rtpengine 10.5 relays other unknown transports (TCP/BFCP, m=application TCP/MSRP)
    cmds, _ = build()
    body = _body("m=audio 2000 RTP/AVP 0", "m=application 28002 TCP/MSRP *")
    reply = _ok(cmds, "offer", from_tag="a", sdp=body)
    assert _sections(reply)[1][0] != "m=application 28002 TCP/MSRP *"
    assert _sections(reply)[1][1] == "a=sendrecv"


def test_a_section_that_turns_into_message_gives_its_ports_back() -> None:
    cmds, binder = build()
    _ok(cmds, "offer", from_tag="a", sdp=_body("m=audio 2000 RTP/AVP 0", "m=text 2002 RTP/AVP 98"))
    assert len(binder.live) == 4
    _ok(cmds, "offer", from_tag="a", sdp=_body("m=audio 2000 RTP/AVP 0", MSRP))
    assert len(binder.live) == 2


# --- strip extmap (suite: "strip extmap") ------------------------------------------------------


def test_strip_extmap() -> None:
    cmds, _ = build()
    body = _body("m=audio 2000 RTP/AVP 0\na=extmap:0 foobar\na=sendrecv")
    kept = _ok(cmds, "offer", from_tag="a", sdp=body)
    assert "a=extmap:0 foobar" in _lines(kept)
    stripped = _ok(cmds, "offer", "c2", from_tag="a", sdp=body, flags=["strip extmap"])
    assert not any(line.startswith("a=extmap") for line in _lines(stripped))


# --- replace: SDP-version (suite: "SDP version …", "SDP replace everything") -------------------


def _versions(*bodies: str, **keys: Any) -> list[str]:
    """The o= versions of the replies to successive offers of these bodies."""
    cmds, _ = build()
    found = []
    for body in bodies:
        reply = _ok(cmds, "offer", from_tag="a", sdp=body, replace=["SDP-version"], **keys)
        found.append(" ".join(ln.split()[2] for ln in _lines(reply) if ln.startswith("o=")))
    return found


def _versioned(version: str, port: int = 2000, extra: str = "") -> str:
    body = _body(f"m=audio {port} RTP/AVP 0{extra}")
    return body.replace("1545997027 1 ", f"1545997027 {version} ")


def test_sdp_version_goes_up_only_when_what_we_write_changes() -> None:
    assert _versions(
        _versioned("1"),
        _versioned("1"),
        _versioned("2"),  # the sender's own version counts for nothing
        _versioned("3"),
        _versioned("1", 2002),  # a new port: new ports of ours, a new version
        _versioned("4", 2002),
    ) == ["1", "1", "1", "1", "2", "2"]


def test_sdp_version_ignores_what_we_do_not_pass_on() -> None:
    ice = "\na=ice-ufrag:{}\na=ice-pwd:abcdefghijklmnopqrstuvwxyz"
    bodies = (_versioned("5", extra=ice.format("abcd")), _versioned("5", extra=ice.format("wxyz")))
    assert _versions(*bodies, ICE="remove") == ["5", "5"]
    renamed = _versioned("5").replace("o=- ", "o=bob ")
    assert _versions(_versioned("5"), renamed) == ["5", "6"]


def test_sdp_version_read_as_strtoull_and_random_for_zero() -> None:
    # Firefox sends version 0: rtpengine 10.5 starts from a random 64-bit number instead
    zero = _versions(_versioned("0"), _versioned("0"), _versioned("0", 2002))
    assert zero[0] == zero[1] != "0"
    assert int(zero[2]) == (int(zero[0]) + 1) % 2**64
    assert _versions(_versioned("12abc")) == ["12"]
    assert _versions(_versioned("-5")) == [str(2**64 - 5)]
    assert _versions(_versioned("18446744073709551614"), _versioned("1", 2002)) == [
        "18446744073709551614",
        "18446744073709551615",
    ]
    assert _versions(_versioned("99999999999999999999")) != ["18446744073709551615"]


def _multi(*sessions: tuple[str, int]) -> str:
    """A body of several sessions, each with one audio section."""
    return "".join(
        _body(f"m=audio {port} RTP/AVP 0\nc=IN IP4 198.51.100.1", session_c=None).replace(
            "1545997027 1 ", f"1545997027 {version} "
        )
        for version, port in sessions
    )


def test_sdp_version_of_several_sessions_is_the_first_ones() -> None:
    first = _multi(("999", 2002), ("1000", 2002))
    moved = _multi(("999", 2004), ("1000", 2002))
    assert _versions(first, first, moved) == ["999 999", "999 999", "1000 1000"]
    assert _versions(_multi(("9999", 2004), ("1", 2002), ("10000000", 2002))) == ["9999 9999 9999"]


def test_replace_everything_keeps_the_version_of_an_unchanged_sdp() -> None:
    body = _body("m=audio 2000 RTP/AVP 0\nc=IN IP4 198.51.100.1")
    everything = ["SDP-version", "origin", "session-connection", "username", "session-name"]
    cmds, _ = build()
    for version in ("1", "1", "2"):
        sent = body.replace("1545997027 1 ", f"1545997027 {version} ")
        reply = _ok(cmds, "offer", from_tag="a", sdp=sent, replace=everything)
        assert _lines(reply)[1] == "o=- 1545997027 1 IN IP4 203.0.113.1"


# --- bodies with several sessions ---------------------------------------------------------------


def test_several_sessions_each_keep_their_lines_and_media() -> None:
    cmds, _ = build()
    body = _multi(("1", 2000), ("7", 2002)).replace(
        "t=0 0\r\nm=audio 2002", "c=IN IP4 0.0.0.0\r\nt=0 0\r\nm=audio 2002"
    )
    body = body.replace(
        "m=audio 2002 RTP/AVP 0\r\nc=IN IP4 198.51.100.1\r\n", "m=audio 2002 RTP/AVP 0\r\n"
    )
    reply = _ok(cmds, "offer", from_tag="a", sdp=body, replace=["origin"])
    lines = [ln for ln in _lines(reply) if not ln.startswith(("a=rtpmap", "a=rtcp"))]
    assert [ln if not ln.startswith("m=") else ln[:8] for ln in lines] == [
        "v=0",
        "o=- 1545997027 1 IN IP4 203.0.113.1",
        "s=tester",
        "t=0 0",
        "m=audio ",
        "c=IN IP4 203.0.113.1",
        "a=sendrecv",
        "v=0",
        "o=- 1545997027 7 IN IP4 203.0.113.1",
        "s=tester",
        "c=IN IP4 0.0.0.0",  # the second session's own, on hold: its section relies on it
        "t=0 0",
        "m=audio ",
        "a=sendonly",
    ]
    media = cmds.calls["c1"].monologues["a"].medias
    assert [m.zero_address for m in media] == [False, True]


def test_a_further_v_line_starts_a_session_and_is_written_back_as_it_came() -> None:
    body = _multi(("1", 2000), ("7", 2002))
    parsed = parse_sdp(body)
    assert [(len(s.lines), s.first_media) for s in parsed.sessions] == [(4, 0), (4, 1)]
    assert [len(parsed.media_of(s)) for s in parsed.sessions] == [1, 1]
    assert parsed.session_of(1) is parsed.sessions[1]
    assert write_sdp(parsed) == body
