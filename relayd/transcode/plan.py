"""What a worker does with the RTP arriving on one socket before sending it on (pure).

One :class:`CodecPlan` per direction of a media section: packets from party A arriving
on A's socket, sent to B from B's socket. The supervisor's negotiation decides it from
both sides' SDP and the ng codec options (relayd/calls/); the worker's media engine
carries it out. A direction with no plan (``None``, the empty text) needs no codec
work: its packets are forwarded as they are, in a worker or in the kernel.

The plan names formats as SDP does (:class:`Format`: payload type, encoding name as
rtpengine spells it, clock rate, channels, fmtp, ptime). For each payload type the
sender may send, the plan says one of:

* ``passthrough``: forwarded with its payload unchanged (under a new SSRC and sequence
  numbering where the direction transcodes anything at all, as rtpengine does);
* ``decode``: decoded to audio, and that audio encoded as ``encode`` (resampled,
  repacketised to ``encode.ptime``);
* ``dtmf``: a telephone-event payload type (RFC 4733), sent on as ``dtmf_out`` (its
  timestamps rescaled where the clock rates differ), or dropped when ``dtmf_out`` is None;
* ``cn``: comfort noise (RFC 3389), sent on as ``cn_out``, or consumed when it is None;
* anything not named: dropped.

Added by the negotiation (helper "neg"), all optional, the text form unchanged:

* ``dtmf_out`` with no ``dtmf`` entry: the sender sends no telephone-event; DTMF tones
  found in its decoded audio may go out as events of ``dtmf_out`` (rtpengine's PCM DTMF
  detection: the suite's "PCM to RFC DTMF transcoding", "reverse DTMF transcoding");
* ``cn_out`` with no ``cn`` entry: likewise, the receiver takes comfort noise the sender
  does not send; silence found in the decoded audio may go out as CN of ``cn_out``
  (rtpengine's ``silence-detect``: the suite's "add CN" expects CN for a silent frame);
* ``extra["bitrate"]``: the encoder's bitrate in bit/s, where the ng ``transcode`` option
  gave one (``transcode-opus/48000/2/32000``); absent: the codec's default.

Added by the media engine (helper "eng2"), optional, the text form unchanged:

* ``silence_detect``: rtpengine's ``--silence-detect`` (percent of full scale; 0: off),
  which the supervisor copies from its configuration into plans with ``cn_out``: a packet
  of the encoded audio that is all silence goes out as CN of ``cn_out`` instead
  (relayd/transcode/silence.py). Text key ``sd``.

Added for DTMF and media playback (issue 16), optional, the text form unchanged:

* ``inject``: DTMF may be injected into this direction (ng ``play DTMF``; the parties carry
  ng's ``inject DTMF`` flag). A direction with nothing else to do gets a plan of
  ``passthrough`` payload types only, so that its packets pass through the engine, which
  replaces them with RFC 4733 events (of ``dtmf_out``, else of the passthrough
  telephone-event in ``formats``) or with tones in the packet's own codec while a digit plays.
  Text key ``i``.
* ``formats``: the formats of the ``passthrough`` payload types (payload type, name, rate),
  where the engine must decode or encode them anyway (tones injected into them). Text
  key ``f``.
* ``security``: ng ``block DTMF``'s mode for this direction (a :class:`DtmfSecurity`: what
  replaces the sender's DTMF, its events and its in-band tones;
  relayd/transcode/dtmfsecurity.py). A direction with nothing else to do gets a plan of
  ``passthrough`` payload types with their ``formats``. Text key ``s``.
* ``trigger``: ng ``block DTMF``'s triggers for this direction (a :class:`DtmfTrigger`: the
  digit sequences that switch blocking on and off, relayd/transcode/dtmftrigger.py); the
  block in force until the trigger is sent is ``security`` (None: none). A direction with
  nothing else to do gets a passthrough plan with its ``formats``, as for ``security``.
  Text key ``tr``.

The text form (:meth:`CodecPlan.to_text`, :func:`parse`) is compact JSON, what
:class:`relayd.ipc.SocketSpec` carries in its ``codecs`` field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "SECURITY_MODES",
    "TRANSCODED",
    "CodecPlan",
    "DtmfSecurity",
    "DtmfTrigger",
    "Format",
    "PlanError",
    "parse",
]


class PlanError(ValueError):
    """A plan's text that does not decode."""


@dataclass(frozen=True, slots=True)
class Format:
    """One RTP payload format: ``a=rtpmap:<pt> <name>/<rate>[/<channels>]``, its fmtp and ptime."""

    pt: int
    name: str  # as rtpengine spells it: "PCMU", "PCMA", "G722", "opus", "telephone-event", "CN"
    rate: int  # RTP clock rate in Hz (G722: 8000, as RFC 3551 says)
    channels: int = 1
    fmtp: str = ""
    ptime: int = 0  # milliseconds per packet; 0: the codec's default

    def to_list(self) -> list[Any]:
        return [self.pt, self.name, self.rate, self.channels, self.fmtp, self.ptime]

    @classmethod
    def from_list(cls, value: Any) -> Format:
        try:
            pt, name, rate, channels, fmtp, ptime = value
            if not (isinstance(name, str) and isinstance(fmtp, str)):
                raise TypeError(name)
            return cls(int(pt), name, int(rate), int(channels), fmtp, int(ptime))
        except (TypeError, ValueError) as exc:
            raise PlanError(f"bad format {value!r}") from exc


# The codecs relayd transcodes, as plans spell them, each with its usual RTP format: what the
# negotiation may add or convert (relayd/calls/transcoding.py), what the workers' engine
# opens (relayd/transcode/codecs.py) and what ``relayd --codecs`` checks. One list, so the
# two halves cannot disagree.
TRANSCODED: dict[str, Format] = {
    "PCMU": Format(0, "PCMU", 8000),
    "PCMA": Format(8, "PCMA", 8000),
    "G722": Format(9, "G722", 8000),
    "opus": Format(96, "opus", 48000, 2),
}


SECURITY_MODES = ("drop", "silence", "tone", "random", "zero", "DTMF")
"""ng ``DTMF-security``'s modes that block (rtpengine 10.5's, "off" aside)."""


@dataclass(frozen=True, slots=True)
class DtmfSecurity:
    """What a blocked direction's DTMF becomes (ng ``block DTMF``): ``mode`` one of
    :data:`SECURITY_MODES`; ``digit`` the event code of ``DTMF`` (``zero``: 0);
    ``frequency`` (Hz) and ``volume`` (dB below 0 dBm0) of the replacing tone."""

    mode: str = "drop"
    digit: int = 0
    frequency: int = 400
    volume: int = 10

    def to_list(self) -> list[Any]:
        return [self.mode, self.digit, self.frequency, self.volume]

    @classmethod
    def from_list(cls, value: Any) -> DtmfSecurity:
        try:
            mode, digit, frequency, volume = value
            if mode not in SECURITY_MODES:
                raise ValueError(mode)
            return cls(mode, int(digit), int(frequency), int(volume))
        except (TypeError, ValueError) as exc:
            raise PlanError(f"bad DTMF security {value!r}") from exc


@dataclass(frozen=True, slots=True)
class DtmfTrigger:
    """ng ``block DTMF``'s triggers (rtpengine 10.5's ``trigger``, ``trigger-end``,
    ``trigger-end-time``, ``trigger-end-digits``, ``DTMF-security-trigger``,
    ``DTMF-security-trigger-end``): once the sender's digits end with ``start``, its DTMF is
    blocked as ``on`` (None: not blocked) until its digits after that end with ``end``, or
    ``end_digits`` digits have gone by, or ``end_ms`` ms of its stream; then as ``off``."""

    start: str
    end: str = ""
    on: DtmfSecurity | None = None
    off: DtmfSecurity | None = None
    end_ms: int = 0
    end_digits: int = 0

    def to_list(self) -> list[Any]:
        on = self.on.to_list() if self.on is not None else None
        off = self.off.to_list() if self.off is not None else None
        return [self.start, self.end, on, off, self.end_ms, self.end_digits]

    @classmethod
    def from_list(cls, value: Any) -> DtmfTrigger:
        try:
            start, end, on, off, end_ms, end_digits = value
            if not (isinstance(start, str) and isinstance(end, str)):
                raise TypeError(start)
            return cls(
                start,
                end,
                DtmfSecurity.from_list(on) if on is not None else None,
                DtmfSecurity.from_list(off) if off is not None else None,
                int(end_ms),
                int(end_digits),
            )
        except (TypeError, ValueError) as exc:
            raise PlanError(f"bad DTMF trigger {value!r}") from exc


@dataclass(frozen=True, slots=True)
class CodecPlan:
    """One direction's codec work: see the module's docstring."""

    passthrough: tuple[int, ...] = ()
    decode: tuple[Format, ...] = ()
    encode: Format | None = None
    dtmf: tuple[Format, ...] = ()
    dtmf_out: Format | None = None
    cn: tuple[Format, ...] = ()
    cn_out: Format | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # room for what a later issue adds
    silence_detect: float = 0.0  # percent of full scale; 0: no silence detection
    inject: bool = False  # DTMF may be injected (ng play DTMF)
    formats: tuple[Format, ...] = ()  # the passthrough payload types' formats, where needed
    security: DtmfSecurity | None = None  # DTMF blocked (ng block DTMF)
    trigger: DtmfTrigger | None = None  # block DTMF's triggers

    def to_text(self) -> str:
        body: dict[str, Any] = {}
        if self.passthrough:
            body["p"] = list(self.passthrough)
        if self.decode:
            body["d"] = [f.to_list() for f in self.decode]
        if self.encode is not None:
            body["e"] = self.encode.to_list()
        if self.dtmf:
            body["t"] = [f.to_list() for f in self.dtmf]
        if self.dtmf_out is not None:
            body["to"] = self.dtmf_out.to_list()
        if self.cn:
            body["c"] = [f.to_list() for f in self.cn]
        if self.cn_out is not None:
            body["co"] = self.cn_out.to_list()
        if self.extra:
            body["x"] = self.extra
        if self.silence_detect:
            body["sd"] = self.silence_detect
        if self.inject:
            body["i"] = 1
        if self.formats:
            body["f"] = [f.to_list() for f in self.formats]
        if self.security is not None:
            body["s"] = self.security.to_list()
        if self.trigger is not None:
            body["tr"] = self.trigger.to_list()
        return json.dumps(body, separators=(",", ":"))


def _formats(value: Any) -> tuple[Format, ...]:
    if not isinstance(value, list):
        raise PlanError(f"bad format list {value!r}")
    return tuple(Format.from_list(v) for v in value)


def parse(text: str) -> CodecPlan | None:
    """The plan of :meth:`CodecPlan.to_text`; None for the empty text (no codec work)."""
    if not text:
        return None
    try:
        body = json.loads(text)
    except ValueError as exc:
        raise PlanError(f"bad plan {text!r}") from exc
    if not isinstance(body, dict):
        raise PlanError(f"bad plan {text!r}")
    passthrough = body.get("p", [])
    if not isinstance(passthrough, list) or not all(isinstance(p, int) for p in passthrough):
        raise PlanError(f"bad passthrough {passthrough!r}")
    extra = body.get("x", {})
    if not isinstance(extra, dict):
        raise PlanError(f"bad extra {extra!r}")
    silence = body.get("sd", 0.0)
    if not isinstance(silence, (int, float)) or isinstance(silence, bool) or silence < 0:
        raise PlanError(f"bad silence_detect {silence!r}")
    return CodecPlan(
        passthrough=tuple(passthrough),
        decode=_formats(body.get("d", [])),
        encode=Format.from_list(body["e"]) if "e" in body else None,
        dtmf=_formats(body.get("t", [])),
        dtmf_out=Format.from_list(body["to"]) if "to" in body else None,
        cn=_formats(body.get("c", [])),
        cn_out=Format.from_list(body["co"]) if "co" in body else None,
        extra=extra,
        silence_detect=float(silence),
        inject=bool(body.get("i", 0)),
        formats=_formats(body.get("f", [])),
        security=DtmfSecurity.from_list(body["s"]) if "s" in body else None,
        trigger=DtmfTrigger.from_list(body["tr"]) if "tr" in body else None,
    )
