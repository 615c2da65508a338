"""The codec work of each direction of a media section, from the negotiated SDP (pure).

A direction (packets from party X arriving on X's socket, sent on to Y) gets a
:class:`~relayd.transcode.plan.CodecPlan` only where the offer that set the pair up asked
for transcoding (its :class:`~relayd.calls.model.CodecSetup`, kept with the media of the
party it went to); every other direction has none and is forwarded as it is (in a
worker or in the kernel), as before. The plan is made from what the model keeps:

* what X sends and Y takes: the codecs of the party's own SDP that we wrote to it too
  (the offerer: our answer; the answerer: its answer), in the party's order; the offerer
  also sends those the offer withheld from the answerer (``mask``, ``consume``), which
  rtpengine still takes from it and transcodes;
* for each audio codec of X: ``passthrough`` where Y takes the same format (payload type
  and encoding) and the offer forces nothing; else ``decode`` where relayd can decode it,
  encoded as Y's first codec relayd can encode (rtpengine's preferred destination);
  else nothing (dropped: relayd cannot convert it);
* ``always-transcode`` decodes every audio codec; so do ``ptime`` and ``ptime-reverse``,
  in both directions, which set the encoders' packet times (:func:`_ptime`);
* telephone-event: ``passthrough`` where Y takes the same payload type at the same rate,
  else translated (``dtmf``) to Y's telephone-event at the encoder's clock rate, or
  dropped where Y has none; CN likewise (``cn``: consumed where Y has none);
* where Y takes telephone-event or CN (of the encoder's clock rate) that X does not
  send, X's audio is decoded, and ``dtmf_out``/``cn_out`` name Y's codec with no
  ``dtmf``/``cn`` entry: tones found in X's audio go out as events, silence as CN
  (rtpengine's PCM DTMF detection and ``silence-detect``: the suite's "PCM to RFC DTMF
  transcoding", "reverse DTMF transcoding - active", "add CN");
* a ``transcode`` option's bitrate for the encoder's codec goes in ``extra["bitrate"]``.

The plan is None where all of it is passthrough and nothing is forced: such a direction
needs no codec work.

:func:`party_plan` adds what the sending party's own state asks of its direction (DTMF
injection: ng ``inject DTMF``): a direction with no codec work gets a plan of passthrough
payload types with their ``formats``, so that its packets go through the engine. It is the
plan the workers get and the one the kernel path's policy asks about
(relayd/plane/offload.py). So does DTMF blocking (ng ``block DTMF``,
``Monologue.dtmf_security``): the plan carries the mode (``security``), a direction with no
codec work getting a passthrough plan with its formats; and its triggers
(``Monologue.dtmf_trigger``: ``trigger``), which alone are enough for such a plan (the
party's digits must be watched).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from relayd.calls.model import Codec, CodecSetup, Media, Monologue
from relayd.calls.transcoding import parse_spec, transcodable
from relayd.transcode.plan import CodecPlan, Format

__all__ = ["direction_plan", "media_codecs", "party_plan", "to_format"]

# the spelling the plan uses (relayd/transcode/plan.py: rtpengine's)
_NAMES = {
    "pcmu": "PCMU",
    "pcma": "PCMA",
    "g722": "G722",
    "opus": "opus",
    "telephone-event": "telephone-event",
    "cn": "CN",
}
_DEFAULT_PTIME = 20


def to_format(codec: Codec, ptime: int = 0) -> Format:
    """A plan :class:`Format` of an SDP codec (payload types outside 0-127 map to 0)."""
    parts = codec.encoding.split("/")
    rate = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 8000
    channels = int(parts[2]) if len(parts) > 2 and parts[2].isdigit() else 1
    number = int(codec.payload_type) if codec.payload_type.isdigit() else 0
    name = _NAMES.get(codec.name.lower(), codec.name)
    return Format(number, name, rate, channels, codec.fmtp, ptime)


def _rate(codec: Codec) -> int:
    text = codec.clock_rate
    return int(text) if text.isdigit() else 0


def _taken(media: Media) -> list[Codec]:
    """The codecs a party sends and takes: those of its own SDP we wrote to it too, in its
    order (all of its own where we wrote none)."""
    sent = {c.payload_type for c in media.sent_codecs}
    taken = [c for c in media.codecs if c.payload_type in sent]
    return taken or list(media.codecs)


def _same(a: Codec, b: Codec) -> bool:
    return a.payload_type == b.payload_type and a.encoding.lower() == b.encoding.lower()


def _setup(sender: Media, receiver: Media) -> tuple[CodecSetup, bool] | None:
    """The pair's setup, and whether this direction goes towards the answerer."""
    if receiver.codec_setup is not None:
        return receiver.codec_setup, True
    if sender.codec_setup is not None:
        return sender.codec_setup, False
    return None


def _ptime(setup: CodecSetup, forward: bool) -> int:
    """The packet time the direction's encoder writes; 0: as it comes (no ptime option).

    A ``ptime`` or ``ptime-reverse`` option puts both directions of the pair through the
    encoder, as 10.5 does (the suite's "default ptime in, ptime=30 out": the answerer's
    60 and 10 ms packets reach the offerer as 20 ms ones, though nobody asked for 20 ms
    that way): towards the answerer at ``ptime``, else the offerer's own; towards the
    offerer at ``ptime-reverse``, else the offerer's own (20 ms where it gave none).
    """
    if not (setup.ptime or setup.ptime_reverse):
        return 0
    offerer = setup.offerer_ptime or _DEFAULT_PTIME
    return (setup.ptime if forward else setup.ptime_reverse) or offerer


def direction_plan(sender: Media, receiver: Media) -> CodecPlan | None:
    """The codec work of packets from ``sender``'s party to ``receiver``'s (module rules)."""
    found = _setup(sender, receiver)
    if found is None or sender.rejected or receiver.rejected:
        return None
    setup, forward = found
    sends, takes = _taken(sender), _taken(receiver)
    if forward:  # and what the offer withheld from the answerer (mask, consume): transcoded
        offered = {c.payload_type for c in receiver.sent_codecs}
        sends += [
            c
            for c in setup.offerer
            if c.payload_type not in offered
            and c not in sends
            and (c.supplemental or transcodable(c))
        ]
    ptime = _ptime(setup, forward)
    repacketise = bool(ptime)
    target = next((c for c in takes if not c.supplemental and transcodable(c)), None)
    encode = to_format(target, ptime) if target is not None else None
    rate = encode.rate if encode is not None else 0
    # Y takes DTMF events or CN that X does not send: X's audio is decoded, its tones sent
    # on as events and its silence as CN (10.5: "PCM to RFC DTMF transcoding", "add CN")
    detect = {
        name
        for name in ("telephone-event", "cn")
        if _supplemental(takes, name, rate) is not None
        and not any(c.name.lower() == name for c in sends)
    }
    forced = setup.always or repacketise or bool(detect)
    passthrough: list[int] = []
    decode: list[Format] = []
    dtmf: list[Format] = []
    cn: list[Format] = []
    for codec in sends:
        same = next((c for c in takes if _same(c, codec)), None)
        name = codec.name.lower()
        if name in ("telephone-event", "cn"):
            if same is not None:
                passthrough.append(to_format(codec).pt)
            else:
                (dtmf if name == "telephone-event" else cn).append(to_format(codec))
        elif same is not None and not forced:
            passthrough.append(to_format(codec).pt)
        elif encode is not None and transcodable(codec):
            decode.append(to_format(codec))
    if not (decode or dtmf or cn):
        return None
    # events out: the sender's translated, or where it sends none, tones found in its audio;
    # CN likewise
    events = dtmf or (decode and "telephone-event" in detect)
    noise = cn or (decode and "cn" in detect)
    bitrate = _bitrate(setup, target) if decode and target is not None else 0
    return CodecPlan(
        passthrough=tuple(passthrough),
        decode=tuple(decode),
        encode=encode if decode else None,
        dtmf=tuple(dtmf),
        dtmf_out=_supplemental(takes, "telephone-event", rate) if events else None,
        cn=tuple(cn),
        cn_out=_supplemental(takes, "cn", rate) if noise else None,
        extra={"bitrate": bitrate} if bitrate else {},
    )


def party_plan(party: Monologue, sender: Media, receiver: Media) -> CodecPlan | None:
    """The plan of what ``party`` sends (from ``sender``, its media, to ``receiver``'s
    party): :func:`direction_plan`, with what the party's own state adds (module rules)."""
    plan = _secured(party, sender, receiver, direction_plan(sender, receiver))
    if not party.inject_dtmf or sender.rejected or receiver.rejected:
        return plan
    common = _common_formats(sender, receiver)
    if plan is None:
        if not common:
            return None
        return CodecPlan(passthrough=tuple(f.pt for f in common), formats=common, inject=True)
    # a transcoded direction injects events of the telephone-event both sides have, if any
    return dataclasses.replace(plan, inject=True, formats=plan.formats or common)


def _secured(
    party: Monologue, sender: Media, receiver: Media, plan: CodecPlan | None
) -> CodecPlan | None:
    """``plan`` with the party's ``block DTMF`` (relayd/calls/dtmf_block.py): a direction with
    no codec work gets a passthrough plan, and its passthrough payload types their formats
    (the engine reads the sender's events and audio by them)."""
    security, trigger = party.dtmf_security, party.dtmf_trigger
    if (security is None and trigger is None) or sender.rejected or receiver.rejected:
        return plan
    if plan is None:
        common = _common_formats(sender, receiver)
        if not common:
            return None
        plan = CodecPlan(passthrough=tuple(f.pt for f in common), formats=common)
    elif plan.passthrough and not plan.formats:
        sent = {f.pt: f for f in map(to_format, _taken(sender))}
        formats = tuple(sent[pt] for pt in plan.passthrough if pt in sent)
        plan = dataclasses.replace(plan, formats=formats)
    return dataclasses.replace(plan, security=security, trigger=trigger)


def _common_formats(sender: Media, receiver: Media) -> tuple[Format, ...]:
    """The formats of the payload types ``sender``'s party may send that the receiver takes
    as they are (same number, same encoding)."""
    takes = _taken(receiver)
    return tuple(to_format(c) for c in _taken(sender) if any(_same(t, c) for t in takes))


def _bitrate(setup: CodecSetup, target: Codec) -> int:
    """The bitrate a ``transcode`` option gave the encoder's codec (0: the default)."""
    for text in setup.transcode:
        spec = parse_spec(text)
        if spec.bitrate and spec.matches(target):
            return spec.bitrate
    return 0


def _supplemental(takes: Sequence[Codec], name: str, rate: int) -> Format | None:
    """The receiver's telephone-event or CN codec of the clock rate ``rate``, if any."""
    codec = next((c for c in takes if c.name.lower() == name and _rate(c) == rate), None)
    return to_format(codec) if codec is not None else None


def media_codecs(media: Media, peer: Media) -> tuple[list[str], list[str]]:
    """For ``query``: the encodings ``media``'s party sends (in) and those sent to it (out)
    where the pair transcodes, as ``PT encoding`` (empty lists where it does not)."""
    if media.codec_setup is None and peer.codec_setup is None:
        return [], []  # no offer set transcoding up: no plan either way (nearly every call)
    if direction_plan(media, peer) is None and direction_plan(peer, media) is None:
        return [], []
    return (
        [f"{c.payload_type} {c.encoding}" for c in media.codecs],
        [f"{c.payload_type} {c.encoding}" for c in _taken(media)],
    )
