"""Codec negotiation where relayd transcodes, as rtpengine 10.5 negotiates it (pure).

An offer sets transcoding up when its ng options ask for codec work: a ``transcode``
codec (``transcode-X``, ``codec-transcode-X``), ``accept`` or ``consume``,
``always-transcode``, ``ptime`` or ``ptime-reverse`` (:func:`requested`). Without any of
them, :mod:`relayd.calls.codec_flags` applies the options that need no transcoder (but
see :func:`offered_back` for a re-offer from the party a transcoding offer went to).
docs/transcoding.md "Negotiation" has the rules with the suite scenarios behind them.

The offer (:func:`offer`: what its receiver is offered), in this order:

* ``strip``, ``consume`` and ``mask`` remove the codecs they name, ``except`` keeps
  those it names, ``offer`` puts removed ones back (the rules of
  :mod:`relayd.calls.codec_flags`); a codec that ``strip`` removed is gone from the
  offerer's side too, one that ``mask`` or ``consume`` removed is still taken from the
  offerer (and transcoded).
* Each ``transcode`` codec, in the order given: one the offer still carries stays where
  it is; one the options removed comes back; any other relayd can transcode is added
  (others are left out, as 10.5 leaves out one its build cannot encode). ``opus``
  matches any opus, ``opus/48000/1`` only a mono one (``opus/48000`` is mono). An added
  codec takes its static payload type (PCMU 0, PCMA 8, G722 9, CN 13) where that is
  free, else the lowest free dynamic one from 96, once the rest of the list is known; it
  is spelled as the option spells it, opus at 48000 Hz and in stereo unless the option
  says otherwise. ``telephone-event`` brings the offerer's telephone-event codecs back;
  ``CN`` adds ``CN/8000``.
* Where the options add a codec or change the packet time, and the offerer has a codec
  relayd can decode, audio codecs relayd cannot transcode (:data:`TRANSCODABLE`: PCMU,
  PCMA, G722, opus) are stripped, as rtpengine strips one its build cannot ("Stripping
  unsupported codec ... due to active transcoding").
* A telephone-event codec (``fmtp`` ``0-15``) for each audio clock rate without one,
  lowest rate first: every rate where the offerer has none and asked for
  ``telephone-event``, the rates of the codecs the options brought where it has some.
* Telephone-event and CN codecs left without an audio codec of their clock rate go,
  where the options touched that rate (:mod:`relayd.calls.codec_flags`).
* Codecs put back or added go in before the first telephone-event or CN codec of the
  list (rtpengine's ``supp_link``); where there is none yet, the first one added marks
  that place.

The answer (:func:`answer`: what goes back to the offerer), for each codec of the
answerer, in its order:

* one the offerer has (same payload type, same encoding; telephone-event with the same
  fmtp) goes back as the answerer wrote it, unless ``always-transcode``, or the offer
  accepted (``accept``, ``consume``) an audio codec of the offerer, which goes back in
  its place;
* any other audio codec relayd can decode is transcoded to the offerer's preferred
  codec: its first accepted audio codec, else its first one relayd can encode; that
  codec goes back (once) with the offerer's CN of its clock rate and, where the answerer
  sends DTMF or ``always-transcode`` detects tones, its telephone-event of that rate;
* the offerer's accepted CN and telephone-event go back with its audio codecs of their
  clock rate;
* the answerer's telephone-event and CN go back where their clock rate's audio was not
  transcoded, as the offerer's own of that rate where the formats differ;
* ``single codec``: only the first audio codec; CN and telephone-event after the audio
  codecs, by payload type.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from relayd.calls.codec_flags import Placed, matches, names_of, removed_by, without_orphans
from relayd.calls.model import Codec, CodecSetup
from relayd.transcode.plan import TRANSCODED

__all__ = [
    "TRANSCODABLE",
    "Offered",
    "TranscodeSpec",
    "answer",
    "carried",
    "offer",
    "offered_back",
    "offerer_codecs",
    "parse_spec",
    "requested",
    "transcodable",
]

# audio codecs relayd's workers decode and encode (relayd/transcode/, helper "eng")
TRANSCODABLE = frozenset(name.lower() for name in TRANSCODED)  # the engine's (plan.py)
SUPPLEMENTAL = frozenset({"telephone-event", "cn"})
# payload types an added codec takes where they are free (RFC 3551)
_STATIC = {("pcmu", 8000): "0", ("pcma", 8000): "8", ("g722", 8000): "9", ("cn", 8000): "13"}
_RATE = {"opus": 48000}  # whatever the option says, as 10.5 adds it
_DEFAULT_CHANNELS = {"opus": 2}
DTMF_FMTP = "0-15"  # what rtpengine writes for a telephone-event codec it adds
_DYNAMIC = range(96, 128)
_REMOVING = ("strip", "consume", "mask")


def requested(
    ops: Mapping[str, Sequence[str]], flags: Iterable[str], ptime: int, ptime_reverse: int
) -> bool:
    """Whether an offer's options need the transcoder (see the module's docstring)."""
    return (
        bool(ops and (ops.get("transcode") or ops.get("accept") or ops.get("consume")))
        or "always-transcode" in flags
        or ptime > 0
        or ptime_reverse > 0
    )


def transcodable(codec: Codec) -> bool:
    """An audio codec the workers decode and encode: by name, as rtpengine decides it (a
    G.711 codec at 16000 Hz is one: the suite's "DTMF scaling" offers PCMU/16000), opus in
    mono or stereo."""
    return _supported(codec.name.lower(), _channels(codec))


def _supported(name: str, channels: int) -> bool:
    return name in TRANSCODABLE and (name != "opus" or channels <= 2)


def _rate(codec: Codec) -> int:
    text = codec.clock_rate
    return int(text) if text.isdigit() else 0


def _channels(codec: Codec) -> int:
    parts = codec.encoding.split("/")
    return int(parts[2]) if len(parts) > 2 and parts[2].isdigit() else 1


@dataclass(frozen=True, slots=True)
class TranscodeSpec:
    """A ``transcode`` codec as the ng options write it:
    ``name[/rate[/channels[/bitrate[/fmtp[/options]]]]]`` (an empty part: the default, as in
    the suite's ``opus/48000/1//test=1``)."""

    name: str  # as written ("pcma" stays lower case in the SDP)
    rate: int = 0  # 0: any (matching), the codec's default (adding)
    channels: int = 0  # 0: any (matching), the codec's default (adding)
    bitrate: int = 0
    fmtp: str = ""

    @property
    def key(self) -> str:
        return self.name.lower()

    def matches(self, codec: Codec) -> bool:
        if codec.name.lower() != self.key:
            return False
        if self.rate and _rate(codec) != self.rate:
            return False
        return not self.channels or _channels(codec) == self.channels

    def adds(self) -> tuple[str, str, int]:
        """The encoding, name (lower case) and clock rate of the codec this option adds:
        opus always at 48000 Hz and in stereo unless the option says mono, as 10.5 adds it."""
        rate = _RATE.get(self.key) or self.rate or 8000
        channels = self.channels or _DEFAULT_CHANNELS.get(self.key, 1)
        return f"{self.name}/{rate}" + (f"/{channels}" if channels > 1 else ""), self.key, rate

    def transcodable(self) -> bool:
        """Whether the codec it adds is one the workers encode."""
        return _supported(self.key, self.channels or _DEFAULT_CHANNELS.get(self.key, 1))


def parse_spec(text: str) -> TranscodeSpec:
    """``opus/48000/2/32000/useinbandfec=1`` into its parts; numbers that do not parse are 0
    (a sixth part, 10.5's codec options, is not read)."""
    parts = text.split("/", 5)
    numbers = [int(p) if p.isdigit() else 0 for p in parts[1:4]]
    numbers += [0] * (3 - len(numbers))
    return TranscodeSpec(
        parts[0], numbers[0], numbers[1], numbers[2], parts[4] if len(parts) > 4 else ""
    )


@dataclass(frozen=True, slots=True)
class Offered:
    """What an offer under transcoding sends on, and what its answer needs to know."""

    codecs: tuple[Codec, ...]  # the list the offer's receiver is offered
    setup: CodecSetup


def offer(
    own: Sequence[Codec],
    ops: Mapping[str, Sequence[str]],
    *,
    always: bool = False,
    ptime: int = 0,
    ptime_reverse: int = 0,
) -> Offered:
    """The codecs an offer under transcoding sends on (the module's rules), from the
    offerer's own list ``own`` and the ng codec options ``ops``."""
    removing = names_of(ops, *_REMOVING)
    removed = removed_by(own, ops, _REMOVING)
    offerer = offerer_codecs(own, ops)
    # the numbers an added telephone-event or CN per clock rate leaves alone: the offerer's
    # own but those stripped or consumed, none after ``all`` (asked)
    gone = removed_by(own, ops, ("strip", "consume"))
    reserved = set() if "all" in removing else {c.payload_type for c in own if c not in gone}
    work = _Offer(own, Placed(c for c in own if c not in removed), reserved)
    work.touched |= {_rate(c) for c in removed}
    for name in ops.get("offer", ()):  # put back by name, after the codecs kept
        names = [name.lower()]
        if not any(matches(c, names) for c in work.codecs()):
            for c in own:
                if matches(c, names) and c not in work.codecs():
                    work.placed.insert(c)
    specs = [parse_spec(t) for t in ops.get("transcode", ())]
    for spec in specs:
        work.transcode(spec, offerer)
    # a CN and a telephone-event codec per clock rate: every rate, where the offerer has
    # none and asked for it; else the rates of the audio codecs the options brought
    # (one the offerer lacks and asks for, or a removed one, touches every rate, for both:
    # asked)
    asked_for = any(
        any(s.key == name for s in specs) and not any(c.name.lower() == name for c in offerer)
        for name in _TRACKED
    )
    everywhere = asked_for or any(c.supplemental for c in removed)
    tracked: dict[str, set[int] | None] = {
        name: None if everywhere else work.touched
        for name in _TRACKED
        if any(s.key == name for s in specs) or any(c.name.lower() == name for c in work.codecs())
    }
    adding = any(work.missing(n, r) for n, r in tracked.items())
    if (ptime or ptime_reverse or work.added or adding) and any(transcodable(c) for c in offerer):
        # 10.5 strips what it cannot transcode once it adds a codec or changes the packet
        # time ("Stripping unsupported codec ... due to active transcoding"); not for
        # accept, consume or always-transcode alone, nor where the offerer has nothing it
        # can decode (then nothing is transcoded: asked)
        work.placed.items = [c for c in work.codecs() if c.supplemental or transcodable(c)]
    for name, rates in tracked.items():
        for rate in work.missing(name, rates):
            work.add(TranscodeSpec("CN" if name == "cn" else name, rate), named=False)
    codecs = [c for c in work.codecs() if c in own or _with_audio(c, work.codecs())]
    # a CN or telephone-event the offerer lacks and asks for touches every clock rate: 10.5
    # then drops the offerer's own telephone-event and CN left without an audio codec too
    # (asked; not where the offerer has one)
    touched = list(removed)
    if asked_for:
        touched += [c for c in own if c.supplemental]
    codecs = without_orphans(codecs, touched) or list(own)
    added = tuple(c.payload_type for c in codecs if c not in own)
    return Offered(
        tuple(codecs),
        CodecSetup(
            offerer=offerer,
            added=added,
            accept=tuple(n for op in ("accept", "consume") for n in ops.get(op, ())),
            always=always,
            ptime=ptime,
            ptime_reverse=ptime_reverse,
            transcode=tuple(ops.get("transcode", ())),
            removed_rates=tuple(sorted({_rate(c) for c in removed})),
        ),
    )


# the supplemental codecs 10.5 keeps one of per clock rate, in the order it adds them
_TRACKED = ("cn", "telephone-event")


def _with_audio(codec: Codec, codecs: Sequence[Codec]) -> bool:
    """An added telephone-event or CN codec stays only with an audio codec of its rate
    (10.5 makes ``telephone-event/8000`` for ``transcode-telephone-event``, then drops it
    where no 8000 Hz codec is left)."""
    return not codec.supplemental or any(
        not c.supplemental and _rate(c) == _rate(codec) for c in codecs
    )


class _Offer:
    """The offer's list as the options build it: codecs put back, codecs added (each
    numbered when it is made, as 10.5 numbers them), the clock rates they touched."""

    def __init__(self, own: Sequence[Codec], placed: Placed[Codec], reserved: set[str]) -> None:
        self.own = own
        self.placed = placed
        self.reserved = reserved  # numbers a codec added per clock rate does not take
        self.touched: set[int] = set()  # the clock rates of the codecs removed or brought
        self.added = False

    def codecs(self) -> list[Codec]:
        return self.placed.items

    def put_back(self, codec: Codec) -> None:
        self.placed.insert(codec)
        self.touched.add(_rate(codec))

    def add(self, spec: TranscodeSpec, *, named: bool = True) -> None:
        """A new codec: its static payload type where free, else the lowest free dynamic
        one; the offerer's own numbers are taken for a codec the options name, the
        reserved ones for one added per clock rate."""
        encoding, name, rate = spec.adds()
        taken = {c.payload_type for c in self.placed.items}
        taken |= {c.payload_type for c in self.own} if named else self.reserved
        static = _STATIC.get((name, rate))
        if static is not None and static not in taken:
            number = static
        else:
            number = str(next((n for n in _DYNAMIC if str(n) not in taken), 127))
        codec = Codec(number, encoding, DTMF_FMTP if name == "telephone-event" else "")
        self.placed.insert(codec)
        self.added = True
        self.touched.add(rate)

    def transcode(self, spec: TranscodeSpec, offerer: Sequence[Codec]) -> None:
        """One ``transcode`` codec (the module's rules)."""
        if spec.key == "telephone-event":
            for c in self.own:
                if c.name.lower() == spec.key and c not in self.codecs():
                    self.put_back(c)
            if not any(c.name.lower() == spec.key for c in offerer):
                # 10.5 makes one at 8000 Hz first (then one per clock rate, and drops this
                # one where no 8000 Hz codec is left): it takes a payload type
                self.add(TranscodeSpec(spec.name, spec.rate or 8000), named=False)
            return
        if any(spec.matches(c) for c in self.codecs()):
            return
        back = [c for c in self.own if spec.matches(c) and not spec.fmtp]
        for c in back:
            self.put_back(c)
        if not back and (spec.key in SUPPLEMENTAL or spec.transcodable()):
            # one relayd cannot transcode is left out, as 10.5 leaves out one it cannot
            self.add(spec)

    def missing(self, name: str, rates: set[int] | None) -> list[int]:
        """The audio clock rates (of ``rates``; None: all) without a ``name`` codec, lowest
        first."""
        have = {_rate(c) for c in self.codecs() if c.name.lower() == name}
        audio = {_rate(c) for c in self.codecs() if not c.supplemental} - {0}
        return sorted((audio if rates is None else audio & rates) - have)


def offerer_codecs(own: Sequence[Codec], ops: Mapping[str, Sequence[str]]) -> tuple[Codec, ...]:
    """The offerer's codecs as it sends and takes them, in its order of preference: its
    own, less what ``strip`` removed, with those ``offer``, ``accept``, ``consume`` or a
    ``transcode`` codec bring back put back in that order (``mask`` and ``consume`` leave
    them to be transcoded). 10.5 (asked): strip PCMU and transcode PCMU, the answerer
    takes PCMU: the offerer is answered PCMU; strip all, offer PCMA and PCMU: the
    offerer's preferred codec is PCMA."""
    stripped = removed_by(own, ops, ("strip",))
    placed = Placed(c for c in own if c not in stripped)
    wanted: list[TranscodeSpec | str] = [
        *(n.lower() for op in ("offer", "accept", "consume") for n in ops.get(op, ())),
        *(parse_spec(t) for t in ops.get("transcode", ())),
    ]
    for want in wanted:
        for codec in stripped:
            back = (
                want.matches(codec) if isinstance(want, TranscodeSpec) else matches(codec, [want])
            )
            if back and codec not in placed.items:
                placed.insert(codec)
    return tuple(placed.items) or tuple(own)


def carried(setup: CodecSetup, previous: CodecSetup) -> CodecSetup:
    """A re-offer's setup with what an earlier offer to the same party set up and 10.5
    keeps: ``always-transcode``, and the codecs accepted (the earlier ones first)."""
    accept = tuple(dict.fromkeys((*previous.accept, *setup.accept)))
    return replace(setup, always=setup.always or previous.always, accept=accept)


def offered_back(
    previous: CodecSetup,
    earlier: Sequence[Codec],
    own: Sequence[Codec],
    ops: Mapping[str, Sequence[str]],
) -> CodecSetup | None:
    """The setup of an offer without codec options from the party an earlier transcoding
    offer went to (a re-INVITE from the callee), or None where it needs none.

    10.5 keeps transcoding that way round (asked): the codecs the earlier offer added for
    transcoding (``earlier``: what that party was offered) that its offer lists again go
    back to it in the answer whatever the new answerer chose, as accepted codecs do; the
    packet times change sides, ``always-transcode`` stays."""
    added = {(c.payload_type, c.encoding.lower()) for c in earlier}
    kept = [
        c
        for c in own
        if c.payload_type in previous.added and (c.payload_type, c.encoding.lower()) in added
    ]
    if not (kept or previous.always or previous.ptime or previous.ptime_reverse):
        return None
    return CodecSetup(
        offerer=offerer_codecs(own, ops),
        accept=tuple(c.encoding for c in kept),
        always=previous.always,
        ptime=previous.ptime_reverse,
        ptime_reverse=previous.ptime,
    )


def _same(a: Codec, b: Codec) -> bool:
    """The same payload format: number and encoding (case aside); telephone-event also
    its fmtp, as rtpengine compares their formats."""
    if a.payload_type != b.payload_type or a.encoding.lower() != b.encoding.lower():
        return False
    return a.name.lower() != "telephone-event" or a.fmtp == b.fmtp


def answer(
    answered: Sequence[Codec], setup: CodecSetup, *, single: bool = False
) -> tuple[Codec, ...]:
    """The codecs of the answer to the offerer under transcoding (the module's rules):
    ``answered`` is the answerer's own list, ``setup`` what the offer set up."""
    offerer = setup.offerer
    names = [n.lower() for n in setup.accept]
    accepted = [c for c in offerer if matches(c, names)]
    accepted_audio = [c for c in accepted if not c.supplemental]
    preferred = (
        accepted_audio[0]
        if accepted_audio
        else next((c for c in offerer if not c.supplemental and transcodable(c)), None)
    )

    def offerers(name: str, rate: int) -> Codec | None:
        return next((c for c in offerer if c.name.lower() == name and _rate(c) == rate), None)

    def passes(codec: Codec) -> bool:
        """An answerer's audio codec the offerer takes as it is: not forced by
        ``always-transcode``, not one the offer added."""
        if setup.always or codec.payload_type in setup.added:
            return False
        return any(_same(c, codec) for c in offerer)

    audio_rates = {_rate(c) for c in answered if not c.supplemental}
    passing = {_rate(c) for c in answered if not c.supplemental and passes(c)}
    # an accepted codec in place of the answerer's: its CN and telephone-event of that
    # rate give way to the offerer's own (those of another rate stay)
    replaced = {_rate(preferred)} if accepted_audio and preferred is not None else set()
    # the answerer's CN and telephone-event of a rate none of its audio passes at go, where
    # its audio of that rate is transcoded, everything is (always-transcode), or the offer
    # removed codecs of that rate (10.5, asked; kept otherwise, the suite's "gh 953")
    dropped = audio_rates | set(setup.removed_rates) if not setup.always else None
    # DTMF goes to the offerer as events where the answerer sends them, or where every
    # packet is decoded anyway (always-transcode: its in-band tones are detected)
    dtmf = setup.always or any(c.name.lower() == "telephone-event" for c in answered)
    audio: list[Codec] = []
    kept: list[Codec] = []  # the answerer's CN and telephone-event, in its order
    extra: list[Codec] = []  # the offerer's, that transcoding brings
    for codec in answered:
        rate = _rate(codec)
        if codec.supplemental:
            if rate not in passing and (dropped is None or rate in dropped):
                continue  # its audio is transcoded: the offerer's of the new rate goes
            if rate in replaced:
                own = offerers(codec.name.lower(), rate)
                if own is not None:
                    extra.append(own)
                continue
            if not any(_same(c, codec) for c in offerer) or codec.payload_type in setup.added:
                own = offerers(codec.name.lower(), rate)
                if own is None:
                    continue
                extra.append(own)
                continue
            kept.append(codec)
            continue
        if single and audio:
            continue
        if passes(codec) and not accepted_audio:
            audio.append(codec)
            continue
        if preferred is None or not (passes(codec) or transcodable(codec)):
            continue
        # transcoded, or (passing, but) an accepted codec goes back in its place: the
        # offerer's telephone-event of its rate with it, and its CN with always-transcode
        # or where the answerer's CN of that rate is translated (10.5, asked)
        new = all(c.payload_type != preferred.payload_type for c in audio)
        if new:
            audio.append(preferred)
        sends_cn = any(c.name.lower() == "cn" and _rate(c) == rate for c in answered)
        if (setup.always and new) or (sends_cn and rate == _rate(preferred)):
            cn = offerers("cn", _rate(preferred))
            if cn is not None:
                extra.append(cn)
        event = offerers("telephone-event", _rate(preferred)) if dtmf else None
        if event is not None:
            extra.append(event)
    if not audio:
        if any(not c.supplemental for c in answered):
            return tuple(c for c in answered if not c.supplemental)  # 10.5 passes them on
        return (preferred,) if preferred is not None else ()
    rates = {_rate(c) for c in audio}
    # the offerer's accepted CN and telephone-event go back with its audio codecs
    extra += [c for c in accepted if c.supplemental and _rate(c) in rates]
    # what transcoding brings goes among the answerer's own by payload type (10.5 adds it
    # in order: "8 13 101" for an accepted CN beside the answerer's 101)
    supplemental = list(kept)
    for codec in sorted(extra, key=_number):
        if any(c.payload_type == codec.payload_type for c in (*audio, *supplemental)):
            continue
        at = next(
            (i for i, c in enumerate(supplemental) if _number(c) > _number(codec)),
            len(supplemental),
        )
        supplemental.insert(at, codec)
    return (*audio, *supplemental)


def _number(codec: Codec) -> int:
    return int(codec.payload_type) if codec.payload_type.isdigit() else 128
