"""The ng ``codec`` options and the ``single codec`` flag, as rtpengine 10.5 applies them to
the SDP (pure).

The offer (what its receiver is offered):

* ``strip``, ``consume`` and ``mask`` remove the codecs they name (by name or full
  encoding, case-insensitive; ``all`` or ``full``: every codec) but those ``except``
  names. ``offer`` puts removed codecs back, after the ones kept, in the order it names
  them. A codec the offerer did not list is never added (that needs a transcoder), so
  without a removal ``offer`` changes nothing.
* A telephone-event or CN codec left without an audio codec of its clock rate goes as
  well, where the options touched that clock rate or any telephone-event or CN codec.
  (rtpengine would add a telephone-event codec for an audio clock rate that lacks one
  there, and translate DTMF between the rates; relayd, not transcoding, does not.)
* Removing every codec keeps the original list, as rtpengine does without
  ``allow no codec media``.

The answer (what goes back to the offerer):

* Only the codecs that were offered to the answerer (RFC 3264 §6.1), matched as rtpengine
  matches them: by payload type number, with the same encoding where both name one; an
  answer with none of them (a rejected section) goes back with the first one offered.
* The answer's own ``strip`` (with ``except`` and ``offer``) applies to them as to an offer.
* ``single codec``: only the first audio codec stays, with every telephone-event and CN.
* ``accept`` and ``consume`` (given with the offer, and kept for later answers of the same
  party until an offer names them anew) name codecs of the offerer that the answer carries
  whatever the answerer chose: the offerer's first accepted audio codec replaces the
  answer's audio codecs; accepted telephone-event and CN codecs of its clock rate join the
  answer, and so does the offerer's codec of a kind (telephone-event, CN) that the answer
  carries only at another clock rate. The answer then lists audio codecs, CN, then
  telephone-event. rtpengine transcodes between the two sides' codecs there; relayd
  forwards media as it comes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from relayd.calls.model import Codec

__all__ = ["ACCEPTING", "answer_codecs", "offer_codecs"]

# the options whose codecs the answer to the offerer carries
ACCEPTING = ("accept", "consume")


def _names(ops: Mapping[str, Sequence[str]], *kinds: str) -> set[str]:
    return {name.lower() for kind in kinds for name in ops.get(kind, ())}


def _matches(codec: Codec, names: Iterable[str]) -> bool:
    """By codec name or full encoding; rtpengine 10.5 ignores payload type numbers here."""
    name, encoding = codec.name.lower(), codec.encoding.lower()
    return any(n in ("all", "full", name, encoding) for n in names)


def offer_codecs(codecs: Sequence[Codec], ops: Mapping[str, Sequence[str]]) -> tuple[Codec, ...]:
    """The codecs offered onwards after ``strip``, ``consume`` and ``mask`` (less what
    ``except`` names), then ``offer`` (see the module's rules)."""
    return tuple(_remove(codecs, ops, ("strip", "consume", "mask")))


def _remove(
    codecs: Sequence[Codec], ops: Mapping[str, Sequence[str]], kinds: Iterable[str]
) -> list[Codec]:
    """``codecs`` less those the options of ``kinds`` name (but ``except``), with those
    ``offer`` names put back, less the DTMF and CN codecs this leaves alone."""
    removing = _names(ops, *kinds)
    if not codecs or not removing:
        return list(codecs)
    excepted = _names(ops, "except")
    removed = [c for c in codecs if _matches(c, removing) and not _matches(c, excepted)]
    result = [c for c in codecs if c not in removed]
    for name in ops.get("offer", ()):
        names = [name.lower()]
        if not any(_matches(c, names) for c in result):
            result += [c for c in codecs if _matches(c, names)]
    return _without_orphans(result, removed) or list(codecs)


def _without_orphans(kept: list[Codec], touched: Sequence[Codec]) -> list[Codec]:
    """``kept`` less the telephone-event and CN codecs left without an audio codec of their
    clock rate, where the options touched that clock rate (removed or put back an audio
    codec of it) or touched any telephone-event or CN codec (then every clock rate counts)."""
    audio_rates = {c.clock_rate for c in kept if not c.supplemental}
    touched_all = any(c.supplemental for c in touched)
    touched_rates = {c.clock_rate for c in touched}
    return [
        c
        for c in kept
        if not c.supplemental
        or c.clock_rate in audio_rates
        or not (touched_all or c.clock_rate in touched_rates)
    ]


def answer_codecs(
    answered: Sequence[Codec],
    offered: Sequence[Codec],
    *,
    ops: Mapping[str, Sequence[str]] | None = None,
    offerer: Sequence[Codec] = (),
    accepted: Sequence[str] = (),
    single: bool = False,
) -> tuple[Codec, ...]:
    """The codecs of the answer to the offerer: ``answered`` (the answerer's own list) as
    far as ``offered`` (what the answerer was offered) allows, with the answer's own
    ``strip``/``except``/``offer`` (``ops``), ``single codec``, and the offer's
    ``accept``/``consume`` names (``accepted``) applied to ``offerer`` (the offerer's own
    list). See the module's rules."""
    kept = _remove(_offered_only(answered, offered), ops or {}, ("strip",))
    if single:
        first = next((c for c in kept if not c.supplemental), None)
        kept = [c for c in kept if c.supplemental or c is first]
    names = [n.lower() for n in accepted]
    chosen = [c for c in offerer if _matches(c, names)] if names else []
    if not chosen:
        return tuple(kept)
    audio = [c for c in chosen if not c.supplemental][:1] or [c for c in kept if not c.supplemental]
    rate = audio[0].clock_rate if audio else ""
    groups: dict[str, list[Codec]] = {"cn": [], "telephone-event": []}
    for codec in kept:
        if codec.supplemental:
            groups[codec.name.lower()].append(codec)
    for codec in chosen:
        group = groups.get(codec.name.lower())
        if group is not None and codec.clock_rate == rate and not _has_rate(group, rate):
            group.append(codec)
    for kind, group in groups.items():
        if group and not _has_rate(group, rate):
            # the answer's kind at another clock rate only: the offerer's at this one
            group += [c for c in offerer if c.name.lower() == kind and c.clock_rate == rate][:1]
    return (*audio, *groups["cn"], *groups["telephone-event"])


def _has_rate(codecs: Iterable[Codec], rate: str) -> bool:
    return any(c.clock_rate == rate for c in codecs)


def _offered_only(answered: Sequence[Codec], offered: Sequence[Codec]) -> list[Codec]:
    """The answer's codecs that were offered to the answerer (RFC 3264 §6.1), by payload
    type number with the same encoding where both sides name one. An answer with none of
    them (a rejected section that says ``m=audio 0 RTP/AVP 0``) goes back with the first
    offered."""
    if not offered:
        return list(answered)
    by_number = {c.payload_type: c for c in offered}
    kept = [
        c
        for c in answered
        if (o := by_number.get(c.payload_type)) is not None
        and (not c.encoding or not o.encoding or c.encoding.lower() == o.encoding.lower())
    ]
    return (kept or list(offered[:1])) if answered else []
