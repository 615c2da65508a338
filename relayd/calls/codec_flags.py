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
  party until an offer names them anew) name codecs of the offerer for the answer to carry.
  rtpengine carries them whatever the answerer chose and transcodes between the two
  sides; relayd does not transcode, so it carries an accepted codec only where the
  answerer took it too: the offerer's first accepted audio codec that the answer lists
  replaces the answer's other audio codecs, the answer's CN and telephone-event codecs
  stay (audio, CN, then telephone-event). Anything else would tell the offerer to send a
  codec the answerer never agreed to receive, so there the option has no effect (a
  consumed codec is never offered to the answerer: ``consume`` then acts as ``mask``).
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
    carried = {(c.name.lower(), c.clock_rate) for c in kept}
    audio = [
        c
        for c in offerer
        if not c.supplemental and _matches(c, names) and (c.name.lower(), c.clock_rate) in carried
    ][:1]
    if not audio:
        return tuple(kept)  # nothing the answerer took: accepting more needs a transcoder
    supplemental = [c for c in kept if c.supplemental]
    cn = [c for c in supplemental if c.name.lower() == "cn"]
    dtmf = [c for c in supplemental if c.name.lower() != "cn"]
    return (*audio, *cn, *dtmf)


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
