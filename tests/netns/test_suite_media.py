"""rtpengine 10.5's daemon test suite, its media scenarios, kept as namespace tests.

rtpengine's ``t/auto-daemon-tests.pl`` (mr10.5.3.5) is relayd's specification
(issue 12). :mod:`tests.unit.test_suite_corpus` replays its ng conversations in
process; the scenarios that also send packets through the daemon and check what
comes back are kept here, since CI has no network and cannot run the suite
itself. Each test is written from what its scenario checks ("#N Lx": scenario N,
starting at line x of the suite file): the ng flags, the shape of the SDP sent,
the SDP lines that media depends on, and which packets go where with which
payload type, sequence number, timestamp, SSRC and payload.

The suite's two parties (``sock_a``, the offerer, and ``sock_b``) are the
caller and the callee of :mod:`tests.support.netns`; a third address the suite
uses (198.51.100.8, "no candidate named it") is the spoof namespace. relayd
runs for real in the relay namespace; the parties are UDP sockets. Where the
suite ignores something a SIP endpoint relies on (the source of a relayed packet),
it is checked too: a packet must come from the relay port its receiver sends to.

* Plain RTP passthrough (#17, #197, #207, #208, #210, #218, and OSRTP offers
  that end in plain RTP: #134, #138) run twice: in userspace, and as root with the
  kernel path (``--table 0``), where the scenario's packets are sent again once
  both directions are offloaded and must not reach a socket in the relay namespace.
* SDES-SRTP (#131, #161) and OSRTP (#132, #133, #135, #136, #137): pylibsrtp
  protects and unprotects with the keys the scenario uses, literal ones and those
  read from the SDP relayd wrote.
* media-echo (#18, #19), ROC after a re-INVITE (#8) and ICE with only
  peer-reflexive candidates (#6, #7, with aioice's STUN codec on the test side).

``SUITE_MEDIA_DAEMON=rtpengine`` runs the same tests against rtpengine 10.5
(``/usr/bin/rtpengine``, userspace only, so the kernel variants are skipped): the
reference they were checked against.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import pytest
from aioice import stun

from relayd.ng.client import NgClient
from tests.netns.calls import (
    CALLEE_PORT,
    CALLEE_TAG,
    CALLER_PORT,
    CALLER_TAG,
    Address,
    Advertised,
    advertised,
    ok,
    udp_delivered,
)
from tests.netns.conftest import (
    NG_PORT,
    PORT_MAX,
    PORT_MIN,
    StartRelay,
    relay_interfaces,
    stopped_after,
)
from tests.netns.test_kernel import KERNEL, offloaded
from tests.netns.test_sdes import Srtp, crypto_lines, master, protocol
from tests.support.netns import Host, Topology, unavailable
from tests.support.rtp_peer import Peer, Received
from tests.support.rtpengine import RtpengineProcess

_SKIP = unavailable()
pytestmark = [pytest.mark.netns, pytest.mark.skipif(_SKIP is not None, reason=f"netns: {_SKIP}")]

pylibsrtp = pytest.importorskip("pylibsrtp")

# the suite's SDES keys: the offerer's, and the one its answerers send
KEY_A = "Qk0TvVeyfqfjFd/YebnyyklqSEhJntpVKV1KAhHa"
KEY_B = "Kl3GFJ5Gqz5x07xYkoyHODkVkSpiplZnXsQIw+Q7"
SHA1_80 = "AES_CM_128_HMAC_SHA1_80"
SHA1_32 = "AES_CM_128_HMAC_SHA1_32"
SILENCE = b"\x00" * 160
SILENCE_B = b"\x88" * 160


DAEMON = os.environ.get("SUITE_MEDIA_DAEMON", "relayd")


class Daemon(Protocol):
    def client(self, **kwargs: object) -> NgClient: ...


StartDaemon = Callable[..., Daemon]


@pytest.fixture
def start_daemon(
    topo: Topology, start_relay: StartRelay, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[StartDaemon]:
    """relayd with the given options, or with ``SUITE_MEDIA_DAEMON=rtpengine`` rtpengine
    (options ignored) in the same namespace, on the same interfaces and ports."""
    if DAEMON == "relayd":
        yield start_relay
        return
    assert DAEMON == "rtpengine", DAEMON
    with stopped_after(request, "rtpengine") as started:

        def start(*extra: str) -> RtpengineProcess:
            daemon = RtpengineProcess(
                tmp_path,
                ng_port=NG_PORT,
                port_min=PORT_MIN,
                port_max=PORT_MAX,
                interface=relay_interfaces(topo),
                netns=topo.relay,
            )
            started.append(daemon)
            daemon.start()
            return daemon

        yield start


# -- SDP ----------------------------------------------------------------------------------------


def body(
    address: str,
    port: int,
    media: str = "RTP/AVP 0",
    attributes: Sequence[str] = ("a=sendrecv",),
    *,
    session_level: bool = False,
) -> str:
    """An SDP as the suite writes them: one audio section, ``c=`` in the media section
    (or, with ``session_level``, ``c=`` and ``a=sendrecv`` before it), CRLF line ends."""
    head = ["v=0", f"o=- 1545997027 1 IN IP4 {address}", "s=tester"]
    if session_level:
        lines = [*head, f"c=IN IP4 {address}", "t=0 0", "a=sendrecv", f"m=audio {port} {media}"]
        lines += [a for a in attributes if a != "a=sendrecv"]
    else:
        lines = [*head, "t=0 0", f"m=audio {port} {media}", f"c=IN IP4 {address}", *attributes]
    return "\r\n".join(lines) + "\r\n"


def media_line(text: str) -> str:
    return next(line for line in text.splitlines() if line.startswith("m=audio "))


def formats(text: str) -> list[str]:
    return media_line(text).split()[3:]


def has_lines(text: str, *wanted: str) -> None:
    lines = text.splitlines()
    for line in wanted:
        assert line in lines, f"{line!r} missing from\n{text}"


def crypto_text(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("a=crypto:")]


@dataclass
class Call:
    """One scenario's call: the caller (``sock_a``) offers, the callee answers."""

    ng: NgClient
    topo: Topology
    call_id: str
    offered: str = ""  # the SDP relayd sent the callee
    answered: str = ""  # the SDP relayd sent the caller

    def offer(self, sdp: str, **flags: Any) -> Advertised:
        """Returns where the callee sends: relayd's address and ports in the offer."""
        reply = ok(
            self.ng.call(
                "offer",
                call_id=self.call_id,
                from_tag=CALLER_TAG,
                sdp=sdp,
                direction=["caller", "callee"],
                **flags,
            )
        )
        self.offered = reply["sdp"]
        found = advertised(self.offered)
        assert found.address == self.topo.callee.relay4, self.offered
        return found

    def answer(self, sdp: str, **flags: Any) -> Advertised:
        """Returns where the caller sends: relayd's address and ports in the answer."""
        reply = ok(
            self.ng.call(
                "answer",
                call_id=self.call_id,
                from_tag=CALLER_TAG,
                to_tag=CALLEE_TAG,
                sdp=sdp,
                **flags,
            )
        )
        self.answered = reply["sdp"]
        found = advertised(self.answered)
        assert found.address == self.topo.caller.relay4, self.answered
        return found


def flags(**keys: Any) -> dict[str, Any]:
    """ng keys spelled as the suite spells them (``replace``, ``transport-protocol``)."""
    return {key.replace("_", "-"): value for key, value in keys.items()}


SUITE_FLAGS = flags(ICE="remove", replace=["origin"])


# -- RTP ----------------------------------------------------------------------------------------


def rtp(pt: int, seq: int, ts: int, ssrc: int, payload: bytes) -> bytes:
    """RTP version 2 without padding, extension or CSRCs; ``pt`` may carry the marker bit."""
    return (
        bytes([0x80, pt])
        + seq.to_bytes(2, "big")
        + ts.to_bytes(4, "big")
        + ssrc.to_bytes(4, "big")
        + payload
    )


@dataclass(frozen=True, slots=True)
class Hop:
    """One packet of a scenario: who sends it, and what the other side must get.

    ``ssrc`` None: the suite accepts any SSRC for it (its ``-1``), but every later
    packet of the same direction must carry the one that came.
    """

    sender: Literal["A", "B"]  # the caller or the callee
    pt: int
    seq: int
    ts: int
    ssrc: int | None
    payload: bytes
    sent_ssrc: int = 0x1234

    @property
    def packet(self) -> bytes:
        ssrc = self.sent_ssrc if self.ssrc is None else self.ssrc
        return rtp(self.pt, self.seq, self.ts, ssrc, self.payload)


def check_rtp(data: bytes, pt: int, seq: int, ts: int, ssrc: int | None, payload: bytes) -> int:
    """What the suite's ``rtpm`` matches; returns the packet's SSRC."""
    expected = rtp(pt, seq, ts, ssrc or 0, payload)
    got_ssrc = int.from_bytes(data[8:12], "big")
    if ssrc is None:
        expected = expected[:8] + data[8:12] + expected[12:]
    assert data == expected, (
        f"got pt {data[1]} seq {int.from_bytes(data[2:4], 'big')} "
        f"ts {int.from_bytes(data[4:8], 'big')} ssrc {got_ssrc:#x} {len(data) - 12} bytes, "
        f"wanted pt {pt} seq {seq} ts {ts} ssrc {ssrc if ssrc is None else hex(ssrc)} "
        f"{len(payload)} bytes"
    )
    return got_ssrc


def one(peer: Peer, what: str, skip: Callable[[bytes], bool] | None = None) -> Received:
    """The next packet ``peer`` gets (within 2 s), leaving out those ``skip`` names."""
    deadline = time.monotonic() + 2.0
    while True:
        got = peer.receive(1, timeout=max(deadline - time.monotonic(), 0.0))
        assert got, f"nothing reached {what}"
        if skip is None or not skip(got[0].data):
            return got[0]


@dataclass
class Side:
    """One party: its RTP socket, where it sends, its SRTP sessions if it speaks SRTP."""

    name: str
    peer: Peer
    relay: Advertised  # relayd's address and port this party sends to
    srtp: Srtp | None = None
    ssrc_seen: dict[int, int] = field(default_factory=dict)  # sent SSRC -> SSRC received


def hop(sender: Side, receiver: Side, step: Hop) -> None:
    """``step``'s packet from ``sender`` (protected if it speaks SRTP) reaches ``receiver``
    from the relay port it sends to, and is (once unprotected) what the scenario wants."""
    packet = step.packet
    sender.peer.send(
        sender.srtp.send.protect(packet) if sender.srtp else packet, sender.relay.rtp_to
    )
    got = one(receiver.peer, f"{receiver.name} (seq {step.seq})")
    assert got.source == receiver.relay.rtp_to, f"seq {step.seq} came from {got.source}"
    data = receiver.srtp.receive.unprotect(got.data) if receiver.srtp else got.data
    ssrc = step.ssrc
    if ssrc is None:
        ssrc = receiver.ssrc_seen.get(step.sent_ssrc)
    receiver.ssrc_seen[step.sent_ssrc] = check_rtp(
        data, step.pt, step.seq, step.ts, ssrc, step.payload
    )


def play(a: Side, b: Side, hops: Sequence[Hop]) -> None:
    for step in hops:
        if step.sender == "A":
            hop(a, b, step)
        else:
            hop(b, a, step)


@pytest.fixture
def parties(topo: Topology) -> Iterator[tuple[Peer, Peer]]:
    with (
        Peer(topo.caller.ns, topo.caller.ip4, CALLER_PORT) as caller,
        Peer(topo.callee.ns, topo.callee.ip4, CALLEE_PORT) as callee,
    ):
        yield caller, callee


# -- plain RTP passthrough, userspace and kernel ------------------------------------------------


@dataclass(frozen=True)
class Plain:
    """A scenario whose media is plain RTP both ways, passed through untouched."""

    offer_media: str
    answer_media: str
    hops: tuple[Hop, ...]
    offer_attributes: tuple[str, ...] = ("a=sendrecv",)
    answer_attributes: tuple[str, ...] = ("a=sendrecv",)
    offer_flags: dict[str, Any] = field(default_factory=lambda: dict(SUITE_FLAGS))
    answer_flags: dict[str, Any] = field(default_factory=lambda: dict(SUITE_FLAGS))
    offered: tuple[str, ...] = ()  # lines the SDP relayd offers must have
    answered: tuple[str, ...] = ()  # lines the SDP relayd answers must have
    offered_crypto: int = 0  # a=crypto lines relayd offers the callee
    answered_crypto: int = 0  # a=crypto lines relayd answers the caller


def _a(pt: int, seq: int, ts: int, ssrc: int | None, payload: bytes) -> Hop:
    return Hop("A", pt, seq, ts, ssrc, payload, 0x1234)


def _b(pt: int, seq: int, ts: int, ssrc: int | None, payload: bytes, sent: int = 0x4567) -> Hop:
    return Hop("B", pt, seq, ts, ssrc, payload, sent)


OSRTP_OFFER = ("a=sendrecv", f"a=crypto:1 {SHA1_80} inline:{KEY_A}")
PTIME = ("a=rtpmap:0 PCMU/8000", "a=sendrecv")

PLAIN = {
    # #17 L1443 CN passthrough: comfort noise (PT 13) passes as it is, both ways
    "17-cn-passthrough": Plain(
        "RTP/AVP 0 13",
        "RTP/AVP 0 13",
        (
            _b(0, 2000, 4000, None, SILENCE, 0x3456),
            _b(13, 2001, 4160, None, b"12345", 0x3456),
            _a(0, 3000, 5000, None, SILENCE),
            _a(13, 3001, 5160, None, b"654321"),
        ),
        offer_flags={},
        answer_flags={},
        offered=("a=rtpmap:0 PCMU/8000", "a=rtpmap:13 CN/8000"),
        answered=("a=rtpmap:0 PCMU/8000", "a=rtpmap:13 CN/8000"),
    ),
    # #134 L8381 OSRTP offer, reject: the callee answers without crypto, plain RTP
    "134-osrtp-offer-reject": Plain(
        "RTP/AVP 0",
        "RTP/AVP 0",
        (_a(0, 1000, 3000, 0x1234, SILENCE), _b(0, 2000, 4000, 0x3456, SILENCE, 0x3456)),
        offer_attributes=OSRTP_OFFER,
        offer_flags=flags(ICE="remove", replace=["origin"], DTLS="off"),
        answer_flags=flags(ICE="remove", replace=["origin"], DTLS="off"),
        offered=(f"a=crypto:1 {SHA1_80} inline:{KEY_A}",),
        offered_crypto=12,
    ),
    # #138 L8672 non-OSRTP offer with offer flag, reject: offered OSRTP, answered plain
    "138-osrtp-flag-reject": Plain(
        "RTP/AVP 0",
        "RTP/AVP 0",
        (_a(0, 1000, 3000, 0x1234, SILENCE), _b(0, 2000, 4000, 0x3456, SILENCE, 0x3456)),
        offer_flags=flags(ICE="remove", replace=["origin"], DTLS="off", OSRTP=["offer"]),
        answer_flags=flags(ICE="remove", replace=["origin"], DTLS="off"),
        offered_crypto=12,
    ),
    # #197 L12662 two codecs, no transcoding: either codec, repeated and skipped
    # sequence numbers, passes untouched
    "197-two-codecs": Plain(
        "RTP/AVP 0 8",
        "RTP/AVP 0 8",
        tuple(
            _a(pt, seq, 3000, 0x1234, SILENCE) for pt in (0, 8) for seq in (1000, 1000, 1001, 1010)
        ),
        offered=("a=rtpmap:0 PCMU/8000", "a=rtpmap:8 PCMA/8000"),
        answered=("a=rtpmap:0 PCMU/8000", "a=rtpmap:8 PCMA/8000"),
    ),
    # #207 L13310 default ptime in/out
    "207-default-ptime": Plain(
        "RTP/AVP 0",
        "RTP/AVP 0",
        (_a(0, 1000, 3000, 0x1234, SILENCE), _b(0, 4000, 5000, 0x4567, SILENCE_B)),
    ),
    # #208 L13360 mismatched ptime but no change requested: 30 ms packets pass as they are
    "208-mismatched-ptime": Plain(
        "RTP/AVP 0",
        "RTP/AVP 0",
        (
            _a(0, 1000, 3000, 0x1234, SILENCE),
            _a(0, 1001, 3160, 0x1234, b"\x00" * 240),
            _b(0, 4000, 5000, 0x4567, SILENCE_B),
            _b(0, 4001, 5160, 0x4567, b"\x88" * 240),
        ),
        offer_attributes=("a=sendrecv", "a=ptime:20"),
        answer_attributes=("a=sendrecv", "a=ptime:30"),
        offered=("a=ptime:20",),
        answered=("a=ptime:30",),
    ),
    # #210 L13509 default ptime in, no change, ptime=30 response
    "210-ptime-30-response": Plain(
        "RTP/AVP 0",
        "RTP/AVP 0",
        (
            _a(0, 1000, 3000, None, SILENCE),
            _a(0, 1001, 3160, None, b"\x00" * 240),
            _b(0, 4000, 5000, None, SILENCE_B),
            _b(0, 4001, 5160, None, b"\x88" * 240),
        ),
        answer_attributes=("a=sendrecv", "a=ptime:30"),
        answered=("a=ptime:30",),
    ),
    # #218 L14085 gh 730: DTMF (telephone-event 101, marker bit on the first) passes
    # untouched when the answer keeps one codec and one DTMF type of four offered
    "218-gh730-dtmf": Plain(
        "RTP/AVP 0 106 101 98",
        "RTP/AVP 0 101",
        (
            _a(0, 1000, 3000, None, SILENCE),
            _a(0, 1001, 3160, None, SILENCE),
            _a(101 | 0x80, 1002, 3320, None, b"\x05\x0a\x00\xa0"),
            _a(101, 1003, 3320, None, b"\x05\x0a\x01\x40"),
            _b(0, 4000, 5000, None, SILENCE_B),
            _b(0, 4001, 5160, None, SILENCE_B),
            _b(101 | 0x80, 4002, 5320, None, b"\x05\x0a\x00\xa0"),
            _b(101, 4003, 5320, None, b"\x05\x0a\x01\x40"),
        ),
        offer_attributes=(
            "a=sendrecv",
            "a=rtpmap:0 PCMU/8000",
            "a=rtpmap:106 opus/48000/2",
            "a=fmtp:106 maxplaybackrate=16000; sprop-maxcapturerate=16000; minptime=20; "
            "cbr=1; maxaveragebitrate=20000; useinbandfec=1",
            "a=rtpmap:101 telephone-event/8000",
            "a=fmtp:101 0-16",
            "a=rtpmap:98 telephone-event/48000",
            "a=fmtp:98 0-16",
        ),
        answer_attributes=(
            "a=rtpmap:0 PCMU/8000",
            "a=rtpmap:101 telephone-event/8000",
            "a=sendrecv",
        ),
        offered=("a=rtpmap:106 opus/48000/2", "a=rtpmap:98 telephone-event/48000"),
        answered=("a=rtpmap:0 PCMU/8000", "a=rtpmap:101 telephone-event/8000"),
    ),
}


def set_up_plain(call: Call, scenario: Plain, a: Peer, b: Peer) -> tuple[Side, Side]:
    topo = call.topo
    to_b = call.offer(
        body(topo.caller.ip4, CALLER_PORT, scenario.offer_media, scenario.offer_attributes),
        **scenario.offer_flags,
    )
    assert media_line(call.offered).split()[2:] == scenario.offer_media.split()
    has_lines(call.offered, *scenario.offered)
    assert len(crypto_text(call.offered)) == scenario.offered_crypto, call.offered
    to_a = call.answer(
        body(topo.callee.ip4, CALLEE_PORT, scenario.answer_media, scenario.answer_attributes),
        **scenario.answer_flags,
    )
    assert media_line(call.answered).split()[2:] == scenario.answer_media.split()
    has_lines(call.answered, *scenario.answered)
    assert len(crypto_text(call.answered)) == scenario.answered_crypto, call.answered
    return Side("A", a, to_a), Side("B", b, to_b)


@pytest.mark.parametrize("path", ["userspace", "kernel"])
@pytest.mark.parametrize("name", list(PLAIN))
def test_plain_rtp_passthrough(
    topo: Topology,
    start_daemon: StartDaemon,
    parties: tuple[Peer, Peer],
    name: str,
    path: str,
) -> None:
    scenario = PLAIN[name]
    if path == "kernel" and DAEMON != "relayd":
        pytest.skip(f"{DAEMON} runs without its kernel module here")
    relay = start_daemon(*KERNEL) if path == "kernel" else start_daemon()
    with relay.client() as ng:
        call = Call(ng, topo, f"suite-{name}")
        a, b = set_up_plain(call, scenario, *parties)
        play(a, b, scenario.hops)
        if path == "kernel":
            again_in_the_kernel(ng, topo, call, a, b, scenario.hops)
        assert a.peer.drain(quiet=0.2) == [] and b.peer.drain(quiet=0.0) == []


def again_in_the_kernel(
    ng: NgClient,
    topo: Topology,
    call: Call,
    a: Side,
    b: Side,
    hops: Sequence[Hop],
) -> None:
    """Once both directions are confirmed (a packet each way, for scenarios that send one
    way only) and offloaded, the scenario's packets again: the kernel forwards them as
    userspace did, and not one reaches a socket in the relay namespace."""
    play(a, b, (_a(0, 100, 100, 0x1234, SILENCE), _b(0, 200, 200, None, SILENCE_B)))
    offloaded(ng, call.call_id)
    before = udp_delivered(topo.relay)
    play(a, b, hops)
    assert udp_delivered(topo.relay) == before, "a packet reached a relay socket"


# -- SDES-SRTP and OSRTP ------------------------------------------------------------------------

EXCHANGE = (_a(0, 1000, 3000, 0x1234, SILENCE), _b(0, 2000, 4000, 0x3456, SILENCE, 0x3456))
SDES_FLAGS = flags(ICE="remove", replace=["origin"], DTLS="off")


def offered_keys(text: str) -> dict[int, tuple[str, bytes]]:
    """tag -> (suite, master key and salt) of every ``a=crypto`` line."""
    return {tag: (suite, key) for tag, suite, key in crypto_lines(text)}


def srtp(suite: str, sends: bytes | str, receives: bytes | str) -> Srtp:
    """A party's SRTP sessions: what it sends protected with ``sends``, what it gets
    unprotected with ``receives`` (the suite's base64 keys or raw key-and-salt bytes)."""

    def raw(key: bytes | str) -> bytes:
        return master(key) if isinstance(key, str) else key

    return Srtp.make(suite, raw(sends), raw(receives))


def sdes_call(
    topo: Topology,
    ng: NgClient,
    name: str,
    offer: tuple[str, Sequence[str]],
    answer: tuple[str, Sequence[str]],
    offer_flags: dict[str, Any] = SDES_FLAGS,
    answer_flags: dict[str, Any] = SDES_FLAGS,
) -> tuple[Call, Advertised, Advertised]:
    """Offer (media, attributes) from the caller, answer from the callee; returns the
    call and where the caller and the callee send."""
    call = Call(ng, topo, f"suite-{name}")
    to_b = call.offer(body(topo.caller.ip4, CALLER_PORT, *offer), **offer_flags)
    to_a = call.answer(body(topo.callee.ip4, CALLEE_PORT, *answer), **answer_flags)
    return call, to_a, to_b


@pytest.mark.parametrize(
    ("scenario", "transport"),
    [("131", "RTP/SAVP"), ("133", "RTP/AVP")],
    ids=["131-sdes", "133-osrtp"],
)
def test_131_133_offer_accepted_with_another_suite(
    topo: Topology,
    start_daemon: StartDaemon,
    parties: tuple[Peer, Peer],
    scenario: str,
    transport: str,
) -> None:
    """#131 L8135 (RTP/SAVP) and #133 L8297 (OSRTP: RTP/AVP with a=crypto): the callee picks
    a suite relayd added (SHA1_32, tag 8): relayd decrypts with one key and suite and
    encrypts with another, each way."""
    with start_daemon().client() as ng:
        call, to_a, to_b = sdes_call(
            topo,
            ng,
            scenario,
            (f"{transport} 0", OSRTP_OFFER),
            (f"{transport} 0", ("a=sendrecv", f"a=crypto:8 {SHA1_32} inline:{KEY_B}")),
        )
        offered = offered_keys(call.offered)
        assert protocol(call.offered) == transport and len(offered) == 12, call.offered
        assert offered[1] == (SHA1_80, master(KEY_A)) and offered[8][0] == SHA1_32
        [(tag, suite, to_caller_key)] = crypto_lines(call.answered)
        assert protocol(call.answered) == transport and (tag, suite) == (1, SHA1_80)
        assert to_caller_key != master(KEY_A)
        a = Side("A", parties[0], to_a, srtp(SHA1_80, KEY_A, to_caller_key))
        b = Side("B", parties[1], to_b, srtp(SHA1_32, KEY_B, offered[8][1]))
        play(a, b, EXCHANGE)


def test_132_osrtp_offer_accepted_with_the_same_suite(
    topo: Topology, start_daemon: StartDaemon, parties: tuple[Peer, Peer]
) -> None:
    """#132 L8222: opportunistic SRTP (RTP/AVP with a=crypto) offered and accepted with the
    offered suite: each side's key reaches the other, the packets pass as they are."""
    with start_daemon().client() as ng:
        call, to_a, to_b = sdes_call(
            topo,
            ng,
            "132",
            ("RTP/AVP 0", OSRTP_OFFER),
            ("RTP/AVP 0", ("a=sendrecv", f"a=crypto:1 {SHA1_80} inline:{KEY_B}")),
        )
        offered = offered_keys(call.offered)
        assert protocol(call.offered) == "RTP/AVP" and len(offered) == 12, call.offered
        assert offered[1] == (SHA1_80, master(KEY_A))
        assert protocol(call.answered) == "RTP/AVP"
        assert crypto_lines(call.answered) == [(1, SHA1_80, master(KEY_B))], call.answered
        # the keys as the suite uses them: packets pass untouched either way
        a = Side("A", parties[0], to_a, srtp(SHA1_80, KEY_B, KEY_A))
        b = Side("B", parties[1], to_b, srtp(SHA1_80, KEY_A, KEY_B))
        play(a, b, EXCHANGE)


def test_135_osrtp_rejected_but_accepted_by_flag(
    topo: Topology, start_daemon: StartDaemon, parties: tuple[Peer, Peer]
) -> None:
    """#135 L8445: the callee answers OSRTP with plain RTP, ``OSRTP: [accept]`` makes relayd
    accept it towards the caller with its own key: SRTP to the caller, RTP to the callee."""
    with start_daemon().client() as ng:
        call, to_a, to_b = sdes_call(
            topo,
            ng,
            "135",
            ("RTP/AVP 0", OSRTP_OFFER),
            ("RTP/AVP 0", ("a=sendrecv",)),
            answer_flags={**SDES_FLAGS, "OSRTP": ["accept"]},
        )
        [(tag, suite, to_caller_key)] = crypto_lines(call.answered)
        assert protocol(call.answered) == "RTP/AVP" and (tag, suite) == (1, SHA1_80)
        a = Side("A", parties[0], to_a, srtp(SHA1_80, KEY_A, to_caller_key))
        b = Side("B", parties[1], to_b)
        play(a, b, EXCHANGE)


@pytest.mark.parametrize(
    "name,extra",
    [("136", {}), ("137", {"transport protocol": "RTP/AVP"})],
    ids=["136-osrtp-offer-flag", "137-osrtp-offer-flag-and-protocol"],
)
def test_osrtp_offered_by_flag_and_accepted(
    topo: Topology,
    start_daemon: StartDaemon,
    parties: tuple[Peer, Peer],
    name: str,
    extra: dict[str, str],
) -> None:
    """#136 L8521, #137 L8595: a plain offer, ``OSRTP: [offer]`` (and #137 a transport
    protocol that is what the offer has anyway): relayd offers the callee its 12 suites
    over RTP/AVP, the callee accepts tag 7 (SHA1_80); RTP to the caller, SRTP to the callee."""
    with start_daemon().client() as ng:
        call, to_a, to_b = sdes_call(
            topo,
            ng,
            name,
            ("RTP/AVP 0", ("a=sendrecv",)),
            ("RTP/AVP 0", ("a=sendrecv", f"a=crypto:7 {SHA1_80} inline:{KEY_B}")),
            offer_flags={**SDES_FLAGS, "OSRTP": ["offer"], **extra},
        )
        offered = offered_keys(call.offered)
        assert protocol(call.offered) == "RTP/AVP" and len(offered) == 12, call.offered
        assert offered[7][0] == SHA1_80
        assert protocol(call.answered) == "RTP/AVP" and crypto_text(call.answered) == []
        a = Side("A", parties[0], to_a)
        b = Side("B", parties[1], to_b, srtp(SHA1_80, KEY_B, offered[7][1]))
        play(a, b, EXCHANGE)


def test_161_gh829_sdes_passthrough_with_pad_crypto(
    topo: Topology, start_daemon: StartDaemon, parties: tuple[Peer, Peer]
) -> None:
    """#161 L10310: SRTP both sides with ``pad crypto``; the offered keys and the answered
    one reach the other side unchanged, and so do the packets."""
    answer_key = "IDdiM2QzOWYzMjA2YzkwZWIxY2NmOWVhOTc4MjE1"
    pad = {**SDES_FLAGS, "flags": ["pad crypto"]}
    with start_daemon().client() as ng:
        call, to_a, to_b = sdes_call(
            topo,
            ng,
            "161",
            (
                "RTP/SAVP 0",
                (
                    "a=sendrecv",
                    f"a=crypto:3 {SHA1_80} inline:{KEY_A}",
                    f"a=crypto:4 {SHA1_32} inline:{KEY_B}",
                ),
            ),
            ("RTP/SAVP 0", ("a=sendrecv", f"a=crypto:3 {SHA1_80} inline:{answer_key}")),
            offer_flags=pad,
            answer_flags=pad,
        )
        offered = offered_keys(call.offered)
        assert protocol(call.offered) == "RTP/SAVP" and len(offered) == 12, call.offered
        assert offered[3] == (SHA1_80, master(KEY_A)) and offered[4] == (SHA1_32, master(KEY_B))
        assert protocol(call.answered) == "RTP/SAVP"
        assert crypto_lines(call.answered) == [(3, SHA1_80, master(answer_key))], call.answered
        a = Side("A", parties[0], to_a, srtp(SHA1_80, answer_key, KEY_A))
        b = Side("B", parties[1], to_b, srtp(SHA1_80, KEY_A, answer_key))
        play(a, b, EXCHANGE)


# -- media echo ---------------------------------------------------------------------------------


@pytest.mark.parametrize("echo", ["fw", "bk"], ids=["18-echo-fwd", "19-echo-bkw"])
def test_media_echo(
    topo: Topology, start_daemon: StartDaemon, parties: tuple[Peer, Peer], echo: str
) -> None:
    """#18 L1502 ``media-echo: fw`` in the offer: what the callee sends comes back to it;
    #19 L1553 ``media-echo: bk``: what the caller sends comes back to it. From the relay
    port it was sent to, with its sequence number, timestamp and payload."""
    with start_daemon().client() as ng:
        call = Call(ng, topo, f"suite-echo-{echo}")
        to_b = call.offer(body(topo.caller.ip4, CALLER_PORT), **{"media-echo": echo})
        to_a = call.answer(body(topo.callee.ip4, CALLEE_PORT))
        for text in (call.offered, call.answered):
            assert media_line(text).split()[2:] == ["RTP/AVP", "0"], text
            has_lines(text, "a=rtpmap:0 PCMU/8000", "a=sendrecv")
        a, b = parties
        echoed, to = (b, to_b) if echo == "fw" else (a, to_a)
        echoed.send(rtp(0, 2000, 4000, 0x3456, SILENCE), to.rtp_to)
        got = one(echoed, "the sender of the echoed packet")
        assert got.source == to.rtp_to
        check_rtp(got.data, 0, 2000, 4000, None, SILENCE)


# -- ROC across a re-INVITE ---------------------------------------------------------------------

ROC_KEY = "QjnnaukLn7iwASAs0YLzPUplJkjOhTZK2dvOwo6c"
FINGERPRINT = (
    "a=fingerprint:sha-256 F8:31:36:7B:ED:6D:12:CC:E8:A8:BF:C3:07:6F:FB:C4:EC:02:BE:70:12:"
    "B6:87:B6:C3:F8:47:11:49:30:E0:22"
)


def is_dtls(data: bytes) -> bool:
    """A DTLS record by its first byte (RFC 7983 §7)."""
    return 20 <= data[0] <= 63


def decrypts_with_roc_0(data: bytes, key: bytes) -> bool:
    """Whether a receiver that has seen nothing yet (rollover counter 0) can unprotect it."""
    profile = pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80
    fresh = pylibsrtp.Session(
        pylibsrtp.Policy(key, pylibsrtp.Policy.SSRC_ANY_INBOUND, srtp_profile=profile)
    )
    try:
        fresh.unprotect(data)
    except pylibsrtp.Error:
        return False
    return True


def test_8_roc_kept_across_a_reinvite(
    topo: Topology, start_daemon: StartDaemon, parties: tuple[Peer, Peer]
) -> None:
    """#8 L724: an SRTP caller (SDES, and a DTLS fingerprint with ``actpass``) bridged to
    a plain callee. relayd's first packet to the caller is a DTLS ClientHello; then the
    callee's RTP reaches it as SRTP under relayd's key, the rollover counter going to 1
    when the sequence number wraps. A re-INVITE keeps ports and key, and the ROC stays 1:
    the next packet decrypts only for a receiver that went on counting."""
    a_peer, b_peer = parties
    offer_flags = {"transport-protocol": "RTP/AVP"}
    crypto = f"a=crypto:1 {SHA1_80} inline:{ROC_KEY}"

    def offer(gcm_key: str, *dtls: str) -> str:
        attributes = ("a=sendrecv", crypto, f"a=crypto:2 AEAD_AES_128_GCM inline:{gcm_key}", *dtls)
        return body(topo.caller.ip4, CALLER_PORT, "RTP/SAVP 0", attributes, session_level=True)

    answer = body(topo.callee.ip4, CALLEE_PORT, session_level=True)
    with start_daemon().client() as ng:
        call = Call(ng, topo, "suite-8")
        to_b = call.offer(
            offer("8wyZzreYaVyPCO6svztEPaFxzrytDfEBdzE++w", FINGERPRINT, "a=setup:actpass"),
            **offer_flags,
        )
        assert protocol(call.offered) == "RTP/AVP" and crypto_text(call.offered) == []
        to_a = call.answer(answer, DTLS="off")
        [(tag, suite, key)] = crypto_lines(call.answered)
        assert protocol(call.answered) == "RTP/SAVP" and (tag, suite) == (1, SHA1_80)

        hello = one(a_peer, "the caller (DTLS)")
        assert hello.data[:10] == b"\x16\xfe\xff" + bytes(7), hello.data[:13].hex()
        receiver = srtp(SHA1_80, os.urandom(30), key).receive

        def relayed(seq: int, ts: int, roc: int) -> None:
            b_peer.send(rtp(0, seq, ts, 0x6543, SILENCE), to_b.rtp_to)
            got = one(a_peer, f"the caller (seq {seq})", skip=is_dtls)
            assert got.source == to_a.rtp_to
            assert decrypts_with_roc_0(got.data, key) == (roc == 0), f"seq {seq}: ROC not {roc}"
            check_rtp(receiver.unprotect(got.data), 0, seq, ts, None, SILENCE)

        relayed(65534, 4000, roc=0)
        relayed(65535, 4160, roc=0)
        relayed(0, 4320, roc=1)

        assert call.offer(offer("Dvjk5xrZDgGNFX+Xv2D5bV3Em+IXiRzX5U6F6A"), **offer_flags) == to_b
        assert call.answer(answer, DTLS="off") == to_a
        assert crypto_lines(call.answered) == [(1, SHA1_80, key)], "key changed"
        relayed(1, 4480, roc=1)


# -- ICE with only peer-reflexive candidates ----------------------------------------------------

PEER_UFRAG = "q27e93"
PEER_PWD = "bd5e8b8d6dd8e1bc6"
PRFLX = 110  # type preference of a peer-reflexive candidate (RFC 8445 §5.1.2.2)


def candidates(host: Host, port: int) -> tuple[str, ...]:
    """The ICE party's credentials and its host candidates, RTP on ``port``, RTCP above."""
    return (
        f"a=ice-pwd:{PEER_PWD}",
        f"a=ice-ufrag:{PEER_UFRAG}",
        f"a=candidate:1 1 UDP 2130706303 {host.ip4} {port} typ host",
        f"a=candidate:1 2 UDP 2130706302 {host.ip4} {port + 1} typ host",
    )


@dataclass(frozen=True, slots=True)
class Ice:
    """relayd's ICE credentials and IPv4 candidates (component -> port) as its SDP gave them."""

    ufrag: str
    pwd: str
    ports: dict[int, int]

    @classmethod
    def read(cls, text: str, address: str) -> Ice:
        values = dict(
            line[2:].split(":", 1) for line in text.splitlines() if line.startswith("a=ice-")
        )
        ports = {}
        for line in text.splitlines():
            if line.startswith("a=candidate:"):
                fields = line.split()
                if fields[4] == address:
                    ports[int(fields[1])] = int(fields[5])
        return cls(values["ice-ufrag"], values["ice-pwd"], ports)


def request(
    tid: bytes, relay: Ice, component: int, *, controlling: bool, nominate: bool = False
) -> bytes:
    """The ICE party's connectivity check from an address it never announced (RFC 8445 §7.1)."""
    message = stun.Message(stun.Method.BINDING, stun.Class.REQUEST, tid)
    message.attributes["USERNAME"] = f"{relay.ufrag}:{PEER_UFRAG}"
    message.attributes["PRIORITY"] = (PRFLX << 24) + (65527 << 8) + 256 - component
    role = "ICE-CONTROLLING" if controlling else "ICE-CONTROLLED"
    message.attributes[role] = int.from_bytes(os.urandom(8), "big")
    if nominate:
        message.attributes["USE-CANDIDATE"] = None
    message.attributes["SOFTWARE"] = "relayd netns tests"
    message.add_message_integrity(relay.pwd.encode())
    return bytes(message)


def success(tid: bytes, mapped: Address) -> bytes:
    """The ICE party's answer to one of relayd's checks (RFC 8445 §7.3.1.4)."""
    message = stun.Message(stun.Method.BINDING, stun.Class.RESPONSE, tid)
    message.attributes["SOFTWARE"] = "relayd netns tests"
    message.attributes["XOR-MAPPED-ADDRESS"] = mapped
    message.add_message_integrity(PEER_PWD.encode())
    return bytes(message)


def relay_check(data: bytes) -> stun.Message:
    """One of relayd's connectivity checks as the suite tells them: a Binding request whose
    first attribute is SOFTWARE naming rtpengine; it must be signed with our password."""
    message = stun.parse_message(data)
    assert (message.message_method, message.message_class) == (
        stun.Method.BINDING,
        stun.Class.REQUEST,
    ), message
    first = next(iter(message.attributes))
    assert first == "SOFTWARE" and message.attributes[first].startswith("rtpengine"), message
    assert message.attributes["USERNAME"].startswith(f"{PEER_UFRAG}:"), message
    assert message.check_message_integrity(PEER_PWD.encode()), message
    return message


def answered_and_checked(peer: Peer, tid: bytes, limit: int = 20) -> bytes:
    """After our check: relayd's success response to it and its own triggered check, in
    either order. Returns the triggered check's transaction id."""
    answered = False
    triggered = b""
    for _ in range(limit):
        message = stun.parse_message(one(peer, "the prflx address").data)
        if message.message_class == stun.Class.RESPONSE and message.transaction_id == tid:
            assert message.attributes["XOR-MAPPED-ADDRESS"] == peer.address, message
            answered = True
        else:
            triggered = relay_check(bytes(message)).transaction_id
        if answered and triggered:
            return triggered
    raise AssertionError(f"answered {answered}, triggered check {triggered!r}")


def prflx_checks(
    relay: Ice, prflx: Sequence[Peer], relay_address: str, *, controlling: bool
) -> None:
    """Per component, from an address no candidate named: our check, relayd's answer
    and triggered check, our success response to that."""
    for component, peer in enumerate(prflx, start=1):
        to = (relay_address, relay.ports[component])
        tid = os.urandom(12)
        peer.send(request(tid, relay, component, controlling=controlling), to)
        triggered = answered_and_checked(peer, tid)
        peer.send(success(triggered, to), to)


@pytest.fixture
def ice_sockets(topo: Topology) -> Iterator[Callable[[Host, int], Peer]]:
    """Opens sockets for a test; closes them all afterwards."""
    opened: list[Peer] = []

    def open_peer(host: Host, port: int) -> Peer:
        opened.append(Peer(host.ns, host.ip4, port))
        return opened[-1]

    try:
        yield open_peer
    finally:
        for peer in opened:
            peer.close()


def media_via(prflx: Peer, to_prflx_side: Address, plain: Peer, to_plain_side: Address) -> None:
    """RTP both ways between the plain party and the peer-reflexive address."""
    sent = rtp(0, 100, 16000, 0x7777, SILENCE)
    plain.send(sent, to_plain_side)
    got = one(prflx, "the peer-reflexive address", skip=lambda d: d[0] < 2)
    assert (got.data, got.source) == (sent, to_prflx_side)
    back = rtp(0, 200, 32000, 0x8888, SILENCE_B)
    prflx.send(back, to_prflx_side)
    got = one(plain, "the plain party")
    assert (got.data, got.source) == (back, to_plain_side)


def test_6_ice_peer_reflexive_only_relayd_controlled(
    topo: Topology,
    start_daemon: StartDaemon,
    parties: tuple[Peer, Peer],
    ice_sockets: Callable[[Host, int], Peer],
) -> None:
    """#6 L510: the caller offers ICE (host candidates it never answers from), ``ICE:
    remove`` towards the plain callee; relayd answers with its own ICE. Checks from an
    address no candidate named (controlling) are answered and met with triggered checks;
    once this agent nominates that pair, media runs between it and the callee."""
    host_rtp, host_rtcp = ice_sockets(topo.caller, 2412), ice_sockets(topo.caller, 2413)
    prflx = [ice_sockets(topo.spoof, 3412), ice_sockets(topo.spoof, 3413)]
    with start_daemon().client() as ng:
        call = Call(ng, topo, "suite-6")
        to_b = call.offer(
            body(
                topo.caller.ip4, 2412, attributes=candidates(topo.caller, 2412), session_level=True
            ),
            ICE="remove",
        )
        assert "a=ice-ufrag" not in call.offered
        to_a = call.answer(body(topo.callee.ip4, CALLEE_PORT, session_level=True))
        relay = Ice.read(call.answered, topo.caller.relay4)
        assert relay.ports == {1: to_a.rtp, 2: to_a.rtcp}, call.answered

        # relayd checks the candidates the caller named; nobody answers there
        relay_check(one(host_rtp, "the caller's RTP candidate").data)
        relay_check(one(host_rtcp, "the caller's RTCP candidate").data)
        prflx_checks(relay, prflx, to_a.address, controlling=True)

        tid = os.urandom(12)
        prflx[0].send(request(tid, relay, 1, controlling=True, nominate=True), to_a.rtp_to)
        got = one(
            prflx[0],
            "the nominating agent",
            skip=lambda d: stun.parse_message(d).transaction_id != tid,
        )
        assert stun.parse_message(got.data).message_class == stun.Class.RESPONSE
        media_via(prflx[0], to_a.rtp_to, parties[1], to_b.rtp_to)


def test_7_ice_peer_reflexive_only_relayd_controlling(
    topo: Topology,
    start_daemon: StartDaemon,
    parties: tuple[Peer, Peer],
    ice_sockets: Callable[[Host, int], Peer],
) -> None:
    """#7 L615: a plain caller, ``ICE: force`` towards the callee, which answers with ICE.
    Checks from an address no candidate named (controlled) are answered and met with
    triggered checks; relayd, controlling, then nominates those pairs, and media runs
    between the caller and that address."""
    host_rtp, host_rtcp = ice_sockets(topo.callee, 2436), ice_sockets(topo.callee, 2437)
    prflx = [ice_sockets(topo.spoof, 3436), ice_sockets(topo.spoof, 3437)]
    with start_daemon().client() as ng:
        call = Call(ng, topo, "suite-7")
        to_b = call.offer(body(topo.caller.ip4, CALLER_PORT, session_level=True), ICE="force")
        relay = Ice.read(call.offered, topo.callee.relay4)
        assert relay.ports == {1: to_b.rtp, 2: to_b.rtcp}, call.offered
        to_a = call.answer(
            body(
                topo.callee.ip4, 2436, attributes=candidates(topo.callee, 2436), session_level=True
            )
        )
        assert "a=ice-ufrag" not in call.answered

        relay_check(one(host_rtp, "the callee's RTP candidate").data)
        relay_check(one(host_rtcp, "the callee's RTCP candidate").data)
        prflx_checks(relay, prflx, to_b.address, controlling=False)

        for component, peer in enumerate(prflx, start=1):
            to = (to_b.address, relay.ports[component])
            for _ in range(20):
                check = relay_check(one(peer, f"component {component} (nomination)").data)
                if "USE-CANDIDATE" in check.attributes:
                    break
            else:
                raise AssertionError(f"component {component} was never nominated")
            peer.send(success(check.transaction_id, to), to)
        media_via(prflx[0], to_b.rtp_to, parties[0], to_a.rtp_to)
