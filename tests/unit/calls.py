"""Shared fakes for the call-level unit tests: a recording Binder, fixed interfaces, ng requests.

Everything here is pure: the binder only records what the shell would bind,
the clock is the fixed value :data:`T0` plus whatever a test adds.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from relayd.calls.commands import Commands
from relayd.calls.interfaces import Interfaces
from relayd.calls.model import Call, LocalAddress, Media
from relayd.calls.ports import PortAllocator
from relayd.calls.signalling import Signalling
from relayd.calls.timers import Limits
from relayd.ipc import socket_key
from relayd.ng.message import Request, parse_request

__all__ = [
    "A_ADDR",
    "B_ADDR",
    "LOCAL4",
    "LOCAL6",
    "T0",
    "FakeBinder",
    "build",
    "interfaces",
    "media_ports",
    "pair_keys",
    "req",
    "sdp",
]

T0 = 1_700_000_000.0
LOCAL4 = "203.0.113.1"
LOCAL6 = "2001:db8::1"
A_ADDR = "198.51.100.10"
B_ADDR = "198.51.100.20"


@dataclass
class FakeBinder:
    """Records the port pairs the allocator binds and releases; refuses those in ``taken``.
    For the media plane: holds no sockets, records the keys it is asked to drain."""

    taken: set[tuple[str, int]] = field(default_factory=set)
    bound: list[tuple[str, int]] = field(default_factory=list)
    released: list[tuple[str, int]] = field(default_factory=list)
    refused: list[tuple[str, int]] = field(default_factory=list)
    sockets: dict[str, int] = field(default_factory=dict)
    discarded: list[str] = field(default_factory=list)
    # pairs whose bind fails on a socket of our own still closing (SocketBinder.busy)
    closing: set[tuple[str, int]] = field(default_factory=set)
    unbound: dict[str, int] = field(default_factory=dict)
    on_close: Callable[[int, tuple[str, ...]], None] | None = None

    def bind(self, address: str, port: int) -> bool:
        if (address, port) in self.taken or (address, port) in self.closing:
            self.refused.append((address, port))
            return False
        self.bound.append((address, port))
        return True

    def busy(self, address: str, port: int) -> bool:
        return (address, port) in self.closing

    def release(self, address: str, port: int) -> None:
        self.released.append((address, port))

    def holder(self, key: str) -> int | None:
        return None

    def handed_over(self, keys: Iterable[str], worker: int) -> None:
        pass

    def lost(self, worker: int) -> list[str]:
        return []

    def rebind_pending(self, keys: Iterable[str] | None = None) -> list[str]:
        return []

    def share_key(self, key: str) -> None:
        pass

    def discard_queued(self, keys: list[str], limit: int = 4096) -> int:
        self.discarded += keys
        return 0

    @property
    def live(self) -> Counter[tuple[str, int]]:
        """Pairs bound and not released (a negative count would be a double release)."""
        live = Counter(self.bound)
        live.subtract(self.released)
        return +live


def interfaces(*extra: LocalAddress) -> Interfaces:
    """``default`` with one IPv4 and one IPv6 address, then ``extra``."""
    return Interfaces(
        [
            LocalAddress("default", LOCAL4, LOCAL4),
            LocalAddress("default", LOCAL6, LOCAL6),
            *extra,
        ]
    )


def build(
    *,
    port_min: int = 30000,
    port_max: int = 30999,
    workers: int = 1,
    limits: Limits | None = None,
    binder: FakeBinder | None = None,
    ifaces: Interfaces | None = None,
    sip_source_default: bool = False,
) -> tuple[Commands, FakeBinder]:
    binder = binder if binder is not None else FakeBinder()
    ports = PortAllocator(port_min, port_max, workers, binder)
    signalling = Signalling(
        ifaces or interfaces(),
        ports,
        instance_id="0123456789ab",
        sip_source_default=sip_source_default,
    )
    return Commands(signalling, limits or Limits(), started=T0), binder


def sdp(
    address: str = A_ADDR,
    port: int = 5000,
    *,
    direction: str = "sendrecv",
    video: int | None = None,
    extra: Iterable[str] = (),
) -> str:
    """A plain SIP phone SDP (CRLF), audio PCMU/PCMA, optionally a video section."""
    family = "IP6" if ":" in address else "IP4"
    lines = [
        "v=0",
        f"o=- 1 1 IN {family} {address}",
        "s=-",
        f"c=IN {family} {address}",
        "t=0 0",
        f"m=audio {port} RTP/AVP 0 8",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:8 PCMA/8000",
        *extra,
        f"a={direction}",
    ]
    if video is not None:
        lines += [f"m=video {video} RTP/AVP 96", "a=rtpmap:96 H264/90000", f"a={direction}"]
    return "\r\n".join(lines) + "\r\n"


def req(command: str, call_id: str = "c1", **keys: Any) -> Request:
    """An ng request as the server would parse it; ``from_tag=`` → ``from-tag``."""
    raw: dict[str, Any] = {"command": command}
    if call_id:
        raw["call-id"] = call_id
    raw.update({k.replace("_", "-"): v for k, v in keys.items()})
    return parse_request(raw)


def pair_keys(call: Call, tag_or_branch: str, address: str = LOCAL4) -> set[str]:
    """The socket keys of our RTP/RTCP pair towards a party (a tag, or the via-branch of
    an offer nobody has answered yet), first media section."""
    party = call.monologues.get(tag_or_branch) or call.branches[tag_or_branch]
    port = party.medias[0].port
    return {socket_key(address, port), socket_key(address, port + 1)}


def media_ports(call: Call, tag: str, index: int = 0) -> tuple[int, int]:
    media: Media = call.monologues[tag].medias[index]
    return media.port, media.rtcp_port
