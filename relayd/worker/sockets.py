"""A worker's relay sockets and the state each one carries (plain, or SRTP/DTLS/ICE).

:class:`MediaSocket` is one relay socket as the loop (:mod:`relayd.worker.loop`)
sees it: its learning state, where it forwards to, its ICE alias links.
:class:`SecureSocket` is its crypto state when it has any, driven by
:mod:`relayd.worker.secure`; :class:`SecureConfig` the crypto fields of its spec.
"""

from __future__ import annotations

import operator
import socket
from dataclasses import dataclass, fields
from typing import Protocol

from relayd import ipc
from relayd.transcode.transcoder import Transcoder
from relayd.worker.dtls import DtlsEndpoint
from relayd.worker.dtmf import DtmfWatch
from relayd.worker.ice import IceAgent
from relayd.worker.session import Leg
from relayd.worker.srtp import SrtpSession

__all__ = ["Address", "Codecs", "MediaSocket", "PacketTap", "SecureConfig", "SecureSocket"]

Address = tuple[str, int]


class PacketTap(Protocol):
    """Where a recorded socket's datagrams are copied (relayd/worker/recording.py's Tap)."""

    def packet(self, source: Address, data: bytes, when: float | None = None) -> None: ...


@dataclass(frozen=True, slots=True)
class SecureConfig:
    """The crypto fields of one ``SocketSpec``."""

    srtp_in: str = ""
    srtp_out: str = ""
    dtls: str = ""
    dtls_fingerprint: str = ""
    ice_ufrag: str = ""
    ice_pwd: str = ""
    ice_remote_ufrag: str = ""
    ice_remote_pwd: str = ""
    ice_controlling: bool = False
    ice_lite: bool = False
    ice_candidates: str = ""

    @classmethod
    def of(cls, spec: ipc.SocketSpec) -> SecureConfig:
        values = _VALUES(spec)
        # plain RTP, nearly every socket: one shared instance
        return cls(*values) if any(values) else _NONE

    @property
    def empty(self) -> bool:
        return self is _NONE or self == _NONE


_NONE = SecureConfig()
_VALUES = operator.attrgetter(*(f.name for f in fields(SecureConfig)))  # from a SocketSpec


class SecureSocket:
    """Crypto state of one relay socket."""

    __slots__ = (
        "config",
        "dtls",
        "dtls_peer",
        "ice",
        "reported",
        "srtp_in",
        "srtp_out",
        "via",
        "wants_in",
        "wants_out",
    )

    def __init__(self, config: SecureConfig) -> None:
        self.config = config
        self.srtp_in: SrtpSession | None = None
        self.srtp_out: SrtpSession | None = None
        self.dtls: DtlsEndpoint | None = None
        self.dtls_peer: Address | None = None
        self.via: MediaSocket | None = None  # the candidate socket DTLS records leave from
        self.ice: IceAgent | None = None
        self.wants_in = bool(config.srtp_in or config.dtls)
        self.wants_out = bool(config.srtp_out or config.dtls)
        self.reported = ("", "")

    @property
    def dtls_state(self) -> str:
        if self.dtls is not None:
            return self.dtls.state
        return "failed: no certificate" if self.config.dtls else ""

    @property
    def ice_state(self) -> str:
        return self.ice.state if self.ice is not None else ""


class Codecs:
    """A socket's codec work (relayd/worker/transcoding.py): its plan's text, its engine
    (None: the plan failed), and what it does in words for the reports."""

    __slots__ = ("engine", "name", "text")

    def __init__(self, text: str, engine: Transcoder | None, name: str) -> None:
        self.text = text
        self.engine = engine
        self.name = name  # "PCMA->PCMU", or "failed: <reason>"


@dataclass(slots=True, eq=False)
class MediaSocket:
    """One relay socket in a worker: its learning state and counters (``leg``), where its
    packets go (``out``, ``out_rtcp``), its crypto state, and its ICE alias links."""

    sock: socket.socket
    leg: Leg
    out: MediaSocket | None = None
    out_rtcp: MediaSocket | None = None
    media: str = ""
    secure: SecureSocket | None = None  # SRTP / DTLS / ICE state of this socket
    # this socket's packets take the crypto branch (relayd/worker/secure.py): it, or a socket
    # it forwards to, has crypto; decided when a Forward is applied, not per packet
    crypto: bool = False
    # ICE candidates on several local addresses: an alias names its primary socket;
    # the primary's ``active`` is the alias the party nominated (None: the primary)
    primary: MediaSocket | None = None
    active: MediaSocket | None = None
    dirty: bool = False  # on the worker's list for the next report (Worker.active)
    listening: bool = False  # registered with epoll: what arrives is read and forwarded
    tap: PacketTap | None = None  # the call records: each datagram accepted is copied here
    # transcoding (relayd/worker/transcoding.py): this socket's engine, the RTP socket of its
    # stream (itself, or for an RTCP socket its RTP one), and whether its packets go through
    # an engine or the RTCP rewrite at all (decided when a Forward is applied)
    codecs: Codecs | None = None
    rtp_socket: MediaSocket | None = None
    transcode: bool = False
    dtmf: DtmfWatch | None = None  # DTMF digits reported (relayd/worker/dtmf.py)
