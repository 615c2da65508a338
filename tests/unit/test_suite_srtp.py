"""SDES, OSRTP and DTLS in offer/answer as rtpengine 10.5 answers them (its daemon tests
t/auto-daemon-tests.pl: SDES=static, gh 661, gh 829, gh 966, OSRTP, fingerprint
selection, stray answer protocol changes, DTLS-reverse), at the ng level in-process."""

from __future__ import annotations

import base64
from typing import Any

from relayd.calls.commands import Commands
from relayd.calls.ice import RELAY_TYPE_PREFERENCE, Candidate, passthrough_preferences, priority
from relayd.calls.ports import PortAllocator
from relayd.calls.signalling import Signalling
from relayd.calls.timers import Limits
from relayd.plane.forwarding import Handover, after_signalling, plan
from tests.unit.calls import T0, FakeBinder, interfaces, req

SHA256 = "sha-256 " + ":".join(["AB"] * 32)
SHA1 = "sha-1 " + ":".join(["CD"] * 20)

KEY128 = "Qk0TvVeyfqfjFd/YebnyyklqSEhJntpVKV1KAhHa"  # 30 bytes: no padding either way
KEY128_B = "Kl3GFJ5Gqz5x07xYkoyHODkVkSpiplZnXsQIw+Q7"
KEY256 = "8AbZePWwsKhLGX3GlXA+yHYPQ3cgraer/9DkFJYCOPZZy3o9wC0NIbIFYZfyHw=="  # 46 bytes
ALL_SUITES = 12


def _commands() -> Commands:
    ports = PortAllocator(30000, 30999, 1, FakeBinder())
    signalling = Signalling(
        interfaces(),
        ports,
        instance_id="0123456789ab",
        fingerprint=SHA256,
        fingerprints={"sha-1": SHA1},
    )
    return Commands(signalling, Limits(), started=T0)


def _sdp(port: int, protocol: str, *extra: str, address: str = "198.51.100.1") -> str:
    lines = [
        "v=0",
        f"o=- 1 1 IN IP4 {address}",
        "s=-",
        f"c=IN IP4 {address}",
        "t=0 0",
        f"m=audio {port} {protocol} 0",
        "a=sendrecv",
        *extra,
    ]
    return "\r\n".join(lines) + "\r\n"


def _ok(cmds: Commands, command: str, **keys: Any) -> list[str]:
    keys.setdefault("ICE", "remove")
    keys.setdefault("from_tag", "a")
    if command == "answer":
        keys.setdefault("to_tag", "b")
    reply = cmds.handle(req(command, **keys), T0)
    assert reply["result"] == "ok", reply
    lines: list[str] = reply["sdp"].split("\r\n")
    return lines


def _crypto(lines: list[str]) -> list[str]:
    return [ln for ln in lines if ln.startswith("a=crypto:")]


def _m(lines: list[str]) -> str:
    return next(ln for ln in lines if ln.startswith("m="))


# -- how a=crypto lines are written ------------------------------------------------------------


def test_offered_keys_are_written_without_padding_and_lifetime() -> None:
    cmds = _commands()
    offer = _sdp(
        2000,
        "RTP/SAVP",
        f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY128}|2^31",
        f"a=crypto:3 AES_256_CM_HMAC_SHA1_80 inline:{KEY256}",
    )
    crypto = _crypto(_ok(cmds, "offer", sdp=offer, DTLS="off"))
    assert crypto[0] == f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY128}"
    assert crypto[1] == f"a=crypto:3 AES_256_CM_HMAC_SHA1_80 inline:{KEY256.rstrip('=')}"
    # ours follow, numbered on, none padded
    assert crypto[2].startswith("a=crypto:4 AEAD_AES_256_GCM inline:")
    assert len(crypto) == ALL_SUITES
    assert not any("=" in ln.partition("inline:")[2] for ln in crypto)


def test_pad_crypto_and_sdes_lifetime() -> None:
    cmds = _commands()
    offer = _sdp(2000, "RTP/SAVP", f"a=crypto:1 AES_256_CM_HMAC_SHA1_80 inline:{KEY256}")
    padded = _crypto(_ok(cmds, "offer", sdp=offer, DTLS="off", flags=["pad crypto"]))
    assert padded[0] == f"a=crypto:1 AES_256_CM_HMAC_SHA1_80 inline:{KEY256}"
    for line in padded:
        key = line.partition("inline:")[2]
        assert len(key) % 4 == 0 and len(base64.b64decode(key)) in (28, 30, 38, 44, 46)

    cmds = _commands()
    plain = _sdp(2000, "RTP/AVP")
    lines = _ok(
        cmds, "offer", sdp=plain, DTLS="off", SDES=["lifetime"], transport_protocol="RTP/SAVP"
    )
    crypto = _crypto(lines)
    assert len(crypto) == ALL_SUITES
    assert all(ln.endswith("|2^31") for ln in crypto)


def test_a_line_rtpengine_cannot_parse_is_dropped() -> None:
    cmds = _commands()
    offer = _sdp(
        2000,
        "RTP/SAVP",
        "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:dG9vc2hvcnQ",  # 8 bytes of key
        "a=crypto:2 FOO_SUITE inline:" + KEY128,
        f"a=crypto:3 AES_CM_128_HMAC_SHA1_32 inline:{KEY128}|2^99",
        f"a=crypto:4 AES_CM_128_HMAC_SHA1_80 inline:{KEY128}",
    )
    crypto = _crypto(_ok(cmds, "offer", sdp=offer, DTLS="off"))
    assert crypto[0] == f"a=crypto:4 AES_CM_128_HMAC_SHA1_80 inline:{KEY128}"
    assert crypto[1].startswith("a=crypto:5 AEAD_AES_256_GCM ")
    assert len(crypto) == ALL_SUITES


# -- SDES-no-<suite> (gh 661) ------------------------------------------------------------------


def test_sdes_no_removes_the_offerers_own_line_and_the_answer_skips_it() -> None:
    cmds = _commands()
    offer = _sdp(
        2000,
        "RTP/SAVP",
        f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY128}",
        f"a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:{KEY128_B}",
    )
    lines = _ok(
        cmds,
        "offer",
        sdp=offer,
        DTLS="off",
        SDES=["no-AES_CM_128_HMAC_SHA1_80"],
        transport_protocol="RTP/AVP",
    )
    assert _m(lines).endswith("RTP/AVP 0") and not _crypto(lines)
    answer = _ok(cmds, "answer", sdp=_sdp(2002, "RTP/AVP", address="198.51.100.3"))
    assert _m(answer).endswith("RTP/SAVP 0")
    (line,) = _crypto(answer)
    assert line.startswith("a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:")
    assert KEY128_B not in line  # our key, not the offerer's

    cmds = _commands()
    lines = _ok(cmds, "offer", sdp=offer, DTLS="off", SDES=["no-AES_CM_128_HMAC_SHA1_32"])
    crypto = _crypto(lines)
    assert crypto[0] == f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY128}"
    assert not any("AES_CM_128_HMAC_SHA1_32" in ln for ln in crypto)
    assert len(crypto) == ALL_SUITES - 1


# -- SDES=static and keys that stay --------------------------------------------------------------


def test_sdes_static_keeps_the_answer_line_of_before() -> None:
    cmds = _commands()
    offer = _sdp(
        10000,
        "RTP/SAVP",
        f"a=crypto:1 AEAD_AES_256_GCM inline:{base64.b64encode(bytes(44)).decode()}",
        f"a=crypto:7 AES_CM_128_HMAC_SHA1_80 inline:{KEY128}",
    )
    gcm_b = base64.b64encode(bytes(range(44))).decode().rstrip("=")
    first = _sdp(20000, "RTP/SAVP", f"a=crypto:1 AEAD_AES_256_GCM inline:{gcm_b}")
    second = _sdp(20000, "RTP/SAVP", f"a=crypto:7 AES_CM_128_HMAC_SHA1_80 inline:{KEY128_B}")
    _ok(cmds, "offer", sdp=offer, DTLS="off")
    passed = f"a=crypto:1 AEAD_AES_256_GCM inline:{gcm_b}"
    assert _crypto(_ok(cmds, "answer", sdp=first)) == [passed]
    # without static, the re-answer's suite passes through
    _ok(cmds, "offer", sdp=offer, DTLS="off")
    changed = f"a=crypto:7 AES_CM_128_HMAC_SHA1_80 inline:{KEY128_B}"
    assert _crypto(_ok(cmds, "answer", sdp=second)) == [changed]
    # back to the first, then static keeps it whatever the answerer took
    _ok(cmds, "offer", sdp=offer, DTLS="off")
    assert _crypto(_ok(cmds, "answer", sdp=first)) == [passed]
    _ok(cmds, "offer", sdp=offer, DTLS="off")
    assert _crypto(_ok(cmds, "answer", sdp=second, SDES=["static"])) == [passed]


def test_a_re_answer_keeps_our_key_for_the_same_suite() -> None:
    cmds = _commands()
    offer = _sdp(4370, "RTP/SAVP", f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY128}")
    plain = _sdp(4372, "RTP/AVP", address="198.51.100.3")
    _ok(cmds, "offer", sdp=offer, transport_protocol="RTP/AVP")
    (first,) = _crypto(_ok(cmds, "answer", sdp=plain, DTLS="off"))
    _ok(cmds, "offer", sdp=offer, transport_protocol="RTP/AVP")
    (second,) = _crypto(_ok(cmds, "answer", sdp=plain, DTLS="off"))
    assert first == second and KEY128 not in first


# -- OSRTP (RFC 8643) ------------------------------------------------------------------------------


def _osrtp_offer(cmds: Commands) -> None:
    offer = _sdp(3316, "RTP/AVP", f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY128}")
    lines = _ok(cmds, "offer", sdp=offer, DTLS="off")
    assert _m(lines).endswith("RTP/AVP 0")
    crypto = _crypto(lines)
    assert crypto[0] == f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY128}"
    assert len(crypto) == ALL_SUITES


def test_osrtp_offer_accepted_passes_through() -> None:
    cmds = _commands()
    _osrtp_offer(cmds)
    taken = _sdp(3318, "RTP/AVP", f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY128_B}")
    answer = _ok(cmds, "answer", sdp=taken, DTLS="off")
    assert _m(answer).endswith("RTP/AVP 0")
    assert _crypto(answer) == [f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY128_B}"]


def test_osrtp_offer_rejected_is_plain_unless_accept() -> None:
    cmds = _commands()
    _osrtp_offer(cmds)
    plain = _sdp(3318, "RTP/AVP", address="198.51.100.3")
    answer = _ok(cmds, "answer", sdp=plain, DTLS="off")
    assert _m(answer).endswith("RTP/AVP 0") and not _crypto(answer)

    cmds = _commands()
    _osrtp_offer(cmds)
    answer = _ok(cmds, "answer", sdp=plain, DTLS="off", OSRTP=["accept"])
    assert _m(answer).endswith("RTP/AVP 0")
    (line,) = _crypto(answer)
    assert line.startswith("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:") and KEY128 not in line


def test_osrtp_offer_flag_on_a_plain_offer() -> None:
    cmds = _commands()
    plain = _sdp(3336, "RTP/AVP")
    lines = _ok(cmds, "offer", sdp=plain, DTLS="off", OSRTP=["offer"], transport_protocol="RTP/AVP")
    assert _m(lines).endswith("RTP/AVP 0")
    assert len(_crypto(lines)) == ALL_SUITES
    taken = next(ln for ln in _crypto(lines) if "AES_CM_128_HMAC_SHA1_80" in ln)
    answer = _ok(cmds, "answer", sdp=_sdp(3338, "RTP/AVP", taken), DTLS="off")
    assert _m(answer).endswith("RTP/AVP 0") and not _crypto(answer)


# -- the answer's transport ------------------------------------------------------------------------


def test_stray_answer_protocol_default_accept_and_override() -> None:
    plain = _sdp(8000, "RTP/AVP")
    stray = _sdp(40444, "RTP/SAVPF", f"a=crypto:7 AES_CM_128_HMAC_SHA1_80 inline:{KEY128}")
    for keys, protocol in (
        ({}, "RTP/AVP"),
        ({"transport_protocol": "accept"}, "RTP/SAVPF"),
        ({"transport_protocol": "RTP/AVPF"}, "RTP/AVPF"),
    ):
        cmds = _commands()
        _ok(cmds, "offer", sdp=plain, DTLS="off", transport_protocol="RTP/SAVP")
        answer = _ok(cmds, "answer", sdp=stray, DTLS="off", **keys)
        assert _m(answer).split()[2] == protocol, keys
        assert not _crypto(answer)


# -- DTLS ------------------------------------------------------------------------------------------


def test_dtls_fingerprint_hash_is_asked_for_and_stays() -> None:
    plain = _sdp(8000, "RTP/AVP")
    for asked, printed in (("", SHA256), ("SHA-1", SHA1), ("sha-256", SHA256)):
        cmds = _commands()
        keys: dict[str, Any] = {"DTLS_fingerprint": asked} if asked else {}
        lines = _ok(cmds, "offer", sdp=plain, SDES=["off"], transport_protocol="RTP/SAVP", **keys)
        assert f"a=fingerprint:{printed}" in lines and "a=setup:actpass" in lines
        assert not _crypto(lines)
        other = SHA256 if printed == SHA1 else "SHA-1 " + ":".join(["EF"] * 20)
        dtls = _sdp(9000, "RTP/SAVP", "a=setup:actpass", f"a=fingerprint:{other}")
        answer = _ok(cmds, "answer", sdp=dtls)
        assert _m(answer).split()[2] == "RTP/AVP"
        # the re-offer keeps the transport, DTLS only and the hash, without the flags
        again = _ok(cmds, "offer", sdp=plain, ICE="default")
        assert _m(again).split()[2] == "RTP/SAVP"
        assert f"a=fingerprint:{printed}" in again and not _crypto(again)


def test_answer_to_a_dtls_offerer_uses_its_hash() -> None:
    cmds = _commands()
    dtls = _sdp(2000, "UDP/TLS/RTP/SAVPF", "a=setup:actpass", f"a=fingerprint:{SHA1}")
    _ok(cmds, "offer", sdp=dtls, transport_protocol="RTP/AVP")
    answer = _ok(cmds, "answer", sdp=_sdp(2002, "RTP/AVP"))
    assert "a=setup:active" in answer and f"a=fingerprint:{SHA1}" in answer


def test_dtls_reverse_passive() -> None:
    dtls = _sdp(2000, "UDP/TLS/RTP/SAVPF", "a=setup:actpass", f"a=fingerprint:{SHA256}")
    for keys, setup in (({}, "active"), ({"DTLS_reverse": "passive"}, "passive")):
        cmds = _commands()
        _ok(cmds, "offer", sdp=dtls, transport_protocol="RTP/AVP", **keys)
        answer = _ok(cmds, "answer", sdp=_sdp(2002, "RTP/AVP"))
        assert _m(answer).split()[2] == "UDP/TLS/RTP/SAVPF"
        assert f"a=setup:{setup}" in answer, keys


def test_an_active_offerer_gets_a_passive_answer() -> None:
    cmds = _commands()
    dtls = _sdp(2000, "UDP/TLS/RTP/SAVPF", "a=setup:active", f"a=fingerprint:{SHA256}")
    _ok(cmds, "offer", sdp=dtls, transport_protocol="RTP/AVP")
    assert "a=setup:passive" in _ok(cmds, "answer", sdp=_sdp(2002, "RTP/AVP"))


# -- DTLS starts with the offer (rtpengine's early start; its "ROC reset after re-invite") ------


def _dtls_offer(cmds: Commands, **keys: Any) -> None:
    dtls = _sdp(
        4370,
        "RTP/SAVP",
        f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY128}",
        f"a=fingerprint:{SHA256}",
        "a=setup:actpass",
    )
    _ok(cmds, "offer", sdp=dtls, transport_protocol="RTP/AVP", **keys)


def test_an_offer_starts_dtls_towards_an_actpass_offerer_at_once() -> None:
    cmds = _commands()
    _dtls_offer(cmds)
    call = cmds.calls["c1"]
    (forward,) = plan(call)
    offerer = call.monologues["a"].medias[0]
    by_key = {s.key.split()[1]: s for s in forward.sockets}
    ours = by_key[str(offerer.port)]
    assert (ours.dtls, ours.dtls_fingerprint, ours.srtp_out) == ("active", SHA256, "")
    # nothing is read before the answer: nothing could reach the offerer without a key
    assert not any(s.listen for s in forward.sockets)
    assert after_signalling(call, "offer", "", early_pending=False) == Handover(
        early=False, keep="", at_once=True
    )
    # the answer settles on SDES (DTLS=off): the same sockets, our key, no DTLS
    answer = _ok(cmds, "answer", sdp=_sdp(4372, "RTP/AVP", address="198.51.100.3"), DTLS="off")
    (line,) = _crypto(answer)
    (forward,) = plan(call)
    ours = {s.key.split()[1]: s for s in forward.sockets}[str(offerer.port)]
    assert ours.dtls == "" and ours.srtp_out == line.partition(" ")[2]
    assert all(s.listen for s in forward.sockets)


def test_no_early_dtls_when_we_would_be_passive_or_dtls_is_off() -> None:
    for keys in ({"DTLS_reverse": "passive"}, {"DTLS": "off"}):
        cmds = _commands()
        _dtls_offer(cmds, **keys)
        call = cmds.calls["c1"]
        assert plan(call) == [], keys
        assert not after_signalling(call, "offer", "", early_pending=False).at_once


# -- ICE=force-relay: passthrough with our relay candidates (gh 850) --------------------------


def _webrtc(port: int, ufrag: str, setup: str) -> str:
    lines = [
        "v=0",
        "o=- 9011363210357191088 2 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0",
        f"m=audio {port} UDP/TLS/RTP/SAVPF 111 0",
        "c=IN IP4 192.168.1.1",
        "a=rtcp:9 IN IP4 0.0.0.0",
        f"a=candidate:1 1 udp 2122262783 192.168.1.54 {port} typ host generation 0",
        "a=candidate:2 1 udp 41885439 192.0.2.99 3478 typ relay raddr 0.0.0.0 rport 0",
        f"a=ice-ufrag:{ufrag}",
        "a=ice-pwd:l9QndxLG6OycZRcQe9zcT95c",
        f"a=fingerprint:{SHA1}",
        f"a=setup:{setup}",
        "a=mid:0",
        "a=sendrecv",
        "a=rtcp-mux",
        "a=rtpmap:111 opus/48000/2",
        "a=rtcp-fb:111 transport-cc",
    ]
    return "\r\n".join(lines) + "\r\n"


def _relay_candidates(lines: list[str]) -> list[list[str]]:
    return [ln.split() for ln in lines if ln.startswith("a=candidate:") and "typ relay" in ln]


def test_force_relay_passes_the_senders_sdp_and_adds_relay_candidates() -> None:
    cmds = _commands()
    keys: dict[str, Any] = {
        "ICE": "force-relay",
        "flags": ["SDES-off"],
        "transport_protocol": "UDP/TLS/RTP/SAVPF",
        "rtcp_mux": ["accept", "offer"],
        "replace": ["origin"],
    }
    offer = _ok(cmds, "offer", sdp=_webrtc(14745, "Ci7n", "actpass"), **keys)
    kept = [
        "o=- 9011363210357191088 2 IN IP4 127.0.0.1",
        "a=group:BUNDLE 0",
        "m=audio 14745 UDP/TLS/RTP/SAVPF 111 0",
        "c=IN IP4 192.168.1.1",
        "a=rtcp:9 IN IP4 0.0.0.0",
        "a=ice-ufrag:Ci7n",
        f"a=fingerprint:{SHA1}",
        "a=setup:actpass",
        "a=rtcp-mux",
    ]
    assert all(line in offer for line in kept), offer
    assert offer.count("a=rtcp-mux") == 1 and not any(ln.startswith("a=crypto") for ln in offer)
    assert f"a=fingerprint:{SHA256}" not in offer and offer.count("a=ice-ufrag:Ci7n") == 1
    assert not any("192.0.2.99" in ln for ln in offer)  # its own relay candidate goes
    assert offer.index("a=mid:0") < offer.index("a=rtpmap:111 opus/48000/2")
    relays = _relay_candidates(offer)
    assert [(c[1], c[3], c[4]) for c in relays] == [
        ("1", "16777215", "203.0.113.1"),
        ("1", "16776959", "2001:db8::1"),
        ("2", "16777214", "203.0.113.1"),
        ("2", "16776958", "2001:db8::1"),
    ]
    assert all(c[9] == c[4] and c[11] == c[5] for c in relays)  # raddr/rport: ourselves
    assert relays[0][0] == relays[2][0] and relays[0][0] != relays[1][0]  # per address

    answer = _ok(cmds, "answer", sdp=_webrtc(5308, "Opvv", "active"), **keys)
    assert "m=audio 5308 UDP/TLS/RTP/SAVPF 111 0" in answer and "a=setup:active" in answer
    relays = _relay_candidates(answer)
    assert [c[1] for c in relays] == ["1", "1"]  # rtcp-mux settled: one component
    assert f"a=rtcp:{relays[0][5]}" in answer and answer.count("a=rtcp-mux") == 2
    assert not any(ln.startswith("a=ice-ufrag:") and "Opvv" not in ln for ln in answer)


def test_relay_preferences_follow_the_partys_own_low_relay_candidates() -> None:
    def relay(*priorities: int) -> tuple[int, int]:
        theirs = [Candidate("f", 1, "UDP", p, "192.0.2.9", 9, "relay") for p in priorities]
        return passthrough_preferences(theirs, "relay", RELAY_TYPE_PREFERENCE)

    assert relay() == (0, 0)
    assert relay(41885439) == (0, 0)  # above ours: nothing to do
    assert relay(priority(0, 0, 1)) == (0, 65535)
    assert relay(priority(0, 3, 1)) == (0, 2)


def test_sdes_given_as_a_string_is_ignored_as_rtpengine_does() -> None:
    # rtpengine 10.5 reads SDES (and OSRTP) as lists only ("rtcp-mux branched" tests)
    cmds = _commands()
    plain = _sdp(35972, "RTP/AVPF")
    lines = _ok(cmds, "offer", sdp=plain, SDES="off", transport_protocol="RTP/SAVPF")
    assert len(_crypto(lines)) == ALL_SUITES and "a=setup:actpass" in lines
    assert req("offer", SDES="off").unknown == ["SDES=off"]
    assert req("offer", SDES=["off"]).sdes == {"off"}
