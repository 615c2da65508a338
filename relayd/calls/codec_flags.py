"""The ng ``codec`` options and the ``single codec`` flag, as rtpengine 10.5 applies them to
the SDP (pure).

The offer (what its receiver is offered):

* ``strip``, ``consume`` and ``mask`` remove the codecs they name (by name or full
  encoding, case-insensitive; ``all`` or ``full``: every codec) but those ``except``
  names. ``offer`` puts removed codecs back, after the audio codecs kept and before the
  first telephone-event or CN codec, in the order it names them. A codec the offerer did
  not list is never added (``transcode`` does that), so without a removal ``offer``
  changes nothing.
* A telephone-event or CN codec left without an audio codec of its clock rate goes as
  well, where the options touched that clock rate or any telephone-event or CN codec.
* Removing every codec keeps the original list, as rtpengine does without
  ``allow no codec media``.

The answer (what goes back to the offerer):

* Only the codecs that were offered to the answerer (RFC 3264 §6.1), matched as rtpengine
  matches them: by payload type number, with the same encoding where both name one; an
  answer with none of them (a rejected section) goes back with the first one offered.
* The answer's own ``strip`` (with ``except`` and ``offer``) applies to them as to an offer.
* ``single codec``: only the first audio codec stays, with every telephone-event and CN.
* ``accept`` and ``consume`` need the transcoder: an offer that names them (or
  ``transcode``, ``always-transcode``, ``ptime``) is negotiated by
  :mod:`relayd.calls.transcoding` instead, whose rules these are part of.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Generic, Protocol, TypeVar

from relayd.calls.model import Codec

__all__ = [
    "Placed",
    "answer_codecs",
    "matches",
    "names_of",
    "offer_codecs",
    "removed_by",
    "without_orphans",
]


def names_of(ops: Mapping[str, Sequence[str]], *kinds: str) -> set[str]:
    return {name.lower() for kind in kinds for name in ops.get(kind, ())}


def matches(codec: Codec, names: Iterable[str]) -> bool:
    """By codec name or full encoding; rtpengine 10.5 ignores payload type numbers here."""
    name, encoding = codec.name.lower(), codec.encoding.lower()
    return any(n in ("all", "full", name, encoding) for n in names)


def offer_codecs(codecs: Sequence[Codec], ops: Mapping[str, Sequence[str]]) -> tuple[Codec, ...]:
    """The codecs offered onwards after ``strip``, ``consume`` and ``mask`` (less what
    ``except`` names), then ``offer`` (see the module's rules)."""
    return tuple(_remove(codecs, ops, ("strip", "consume", "mask")))


def removed_by(
    codecs: Sequence[Codec], ops: Mapping[str, Sequence[str]], kinds: Iterable[str]
) -> list[Codec]:
    """The codecs the options of ``kinds`` name, but those ``except`` names."""
    removing = names_of(ops, *kinds)
    if not removing:
        return []
    excepted = names_of(ops, "except")
    return [c for c in codecs if matches(c, removing) and not matches(c, excepted)]


def _remove(
    codecs: Sequence[Codec], ops: Mapping[str, Sequence[str]], kinds: Iterable[str]
) -> list[Codec]:
    """``codecs`` less those the options of ``kinds`` name (but ``except``), with those
    ``offer`` names put back, less the DTMF and CN codecs this leaves alone."""
    if not codecs or not ops:  # (nearly every offer and answer names no codec option)
        return list(codecs)
    removing = names_of(ops, *kinds)
    if not removing:
        return list(codecs)
    removed = removed_by(codecs, ops, kinds)
    placed = Placed(c for c in codecs if c not in removed)
    for name in ops.get("offer", ()):
        names = [name.lower()]
        if not any(matches(c, names) for c in placed.items):
            for codec in codecs:
                if matches(codec, names):
                    placed.insert(codec)
    return without_orphans(placed.items, removed) or list(codecs)


class _Supplemental(Protocol):
    @property
    def supplemental(self) -> bool: ...


S = TypeVar("S", bound=_Supplemental)


class Placed(Generic[S]):
    """An ordered codec list with rtpengine 10.5's insertion point (its ``supp_link``):
    codecs put back or added go in before the first telephone-event or CN codec the list
    had; where it had none, the first one put in marks that place. (So three added
    telephone-event codecs go in as ``99 100 98``: the suite's "several clock rates input
    w/ transcode DTMF".)"""

    def __init__(self, items: Iterable[S]) -> None:
        self.items: list[S] = list(items)
        self._anchor: S | None = next((c for c in self.items if c.supplemental), None)

    def insert(self, item: S) -> None:
        anchor = self._anchor
        if anchor is None:
            self.items.append(item)
            if item.supplemental:
                self._anchor = item
            return
        self.items.insert(next(i for i, c in enumerate(self.items) if c is anchor), item)


def without_orphans(kept: list[Codec], touched: Sequence[Codec]) -> list[Codec]:
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
    single: bool = False,
) -> tuple[Codec, ...]:
    """The codecs of the answer to the offerer: ``answered`` (the answerer's own list) as
    far as ``offered`` (what the answerer was offered) allows, with the answer's own
    ``strip``/``except``/``offer`` (``ops``) and ``single codec``. See the module's rules."""
    kept = _remove(_offered_only(answered, offered), ops or {}, ("strip",))
    if single:
        first = next((c for c in kept if not c.supplemental), None)
        kept = [c for c in kept if c.supplemental or c is first]
    return tuple(kept)


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
