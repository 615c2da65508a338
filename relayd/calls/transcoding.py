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
TRANSCODABLE = frozenset({"pcmu", "pcma", "g722", "opus"})
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
        any(ops.get(op) for op in ("transcode", "accept", "consume"))
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

    def new(self) -> _New:
        """The codec this option adds: opus always at 48000 Hz, as 10.5 adds it."""
        rate = _RATE.get(self.key) or self.rate or 8000
        channels = self.channels or _DEFAULT_CHANNELS.get(self.key, 1)
        encoding = f"{self.name}/{rate}" + (f"/{channels}" if channels > 1 else "")
        return _New(encoding, self.key, rate, channels)


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


@dataclass(eq=False, slots=True)
class _New:
    """A codec the options add: its payload type is chosen once the list is complete."""

    encoding: str
    name: str  # lower case
    rate: int
    channels: int = 1
    fmtp: str = ""
    named: bool = True  # named by a ``transcode`` option, not a telephone-event per rate

    @property
    def supplemental(self) -> bool:
        return self.name in SUPPLEMENTAL


_Slot = Codec | _New


def _codecs(items: Iterable[_Slot]) -> list[Codec]:
    return [c for c in items if isinstance(c, Codec)]


def _audio_rates(items: Iterable[_Slot]) -> set[int]:
    rates = {_rate(c) if isinstance(c, Codec) else c.rate for c in items if not c.supplemental}
    rates.discard(0)
    return rates


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
    placed: Placed[_Slot] = Placed(c for c in own if c not in removed)
    for name in ops.get("offer", ()):  # put back by name, after the codecs kept
        names = [name.lower()]
        if not any(matches(c, names) for c in _codecs(placed.items)):
            for c in own:
                if matches(c, names) and c not in _codecs(placed.items):
                    placed.insert(c)
    specs = [parse_spec(t) for t in ops.get("transcode", ())]
    touched: set[int] = set()  # the clock rates of the codecs the options put back or added
    for spec in specs:
        if spec.key == "telephone-event":
            for c in own:
                if c.name.lower() == spec.key and c not in _codecs(placed.items):
                    placed.insert(c)
            continue
        if any(spec.matches(c) for c in _codecs(placed.items)):
            continue
        back = [c for c in own if spec.matches(c) and not spec.fmtp]
        for c in back:
            placed.insert(c)
            touched.add(_rate(c))
        new = spec.new()
        if not back and (new.supplemental or _can_transcode(new)):
            # one relayd cannot transcode is left out, as 10.5 leaves out one it does not know
            placed.insert(new)
            touched.add(new.rate)
    # the offerer's telephone-event, where strip left it
    own_dtmf = any(c.name.lower() == "telephone-event" for c in offerer)
    dtmf_wanted = any(s.key == "telephone-event" for s in specs)
    # a telephone-event codec per clock rate: every rate where the offerer has none (it
    # asked for them), else the rates of the codecs the options added
    dtmf_rates = (
        _dtmf_rates(placed, None if not own_dtmf else touched) if (own_dtmf or dtmf_wanted) else []
    )
    adding = ptime or ptime_reverse or dtmf_rates or any(isinstance(c, _New) for c in placed.items)
    if adding and any(transcodable(c) for c in offerer):
        # 10.5 strips what it cannot transcode once it adds a codec or changes the packet
        # time ("Stripping unsupported codec ... due to active transcoding"); not for
        # accept, consume or always-transcode alone, nor where the offerer has nothing it
        # can decode (then nothing is transcoded: asked)
        placed.items = [c for c in placed.items if c.supplemental or _can_transcode(c)]
        dtmf_rates = _dtmf_rates(placed, None if not own_dtmf else touched) if dtmf_rates else []
    for rate in dtmf_rates:
        placed.insert(
            _New(f"telephone-event/{rate}", "telephone-event", rate, fmtp=DTMF_FMTP, named=False)
        )
    codecs = _numbered(placed.items, own, reserve_own="all" not in removing)
    codecs = without_orphans(codecs, removed) or list(own)
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
        ),
    )


def _dtmf_rates(placed: Placed[_Slot], rates: set[int] | None) -> list[int]:
    """The audio clock rates (of ``rates``; None: all) the list has no telephone-event for,
    lowest first."""
    have = {
        _rate(c) if isinstance(c, Codec) else c.rate
        for c in placed.items
        if c.name.lower() == "telephone-event"
    }
    wanted = _audio_rates(placed.items) if rates is None else _audio_rates(placed.items) & rates
    return sorted(wanted - have)


def offerer_codecs(own: Sequence[Codec], ops: Mapping[str, Sequence[str]]) -> tuple[Codec, ...]:
    """The offerer's codecs as it sends and takes them: its own, less what ``strip`` removed
    and neither ``offer``, ``accept``, ``consume`` nor a ``transcode`` codec brought back
    (``mask`` and ``consume`` leave them to be transcoded). 10.5 (asked): strip PCMU and
    transcode PCMU, the answerer takes PCMU: the offerer is answered PCMU."""
    offered = [n.lower() for op in ("offer", "accept", "consume") for n in ops.get(op, ())]
    specs = [parse_spec(t) for t in ops.get("transcode", ())]
    stripped = [
        c
        for c in removed_by(own, ops, ("strip",))
        if not matches(c, offered) and not any(s.matches(c) for s in specs)
    ]
    return tuple(c for c in own if c not in stripped) or tuple(own)


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


def _can_transcode(slot: _Slot) -> bool:
    if isinstance(slot, Codec):
        return transcodable(slot)
    return _supported(slot.name, slot.channels)


def _numbered(items: Sequence[_Slot], own: Sequence[Codec], *, reserve_own: bool) -> list[Codec]:
    """The list with a payload type for each added codec: its static one where free, else
    the lowest free dynamic one. The offerer's own numbers stay reserved for the codecs the
    options name; for the telephone-event codecs added per clock rate, but with ``all``."""
    used = {c.payload_type for c in items if isinstance(c, Codec)}
    owned = {c.payload_type for c in own}
    result: list[Codec] = []
    for slot in items:
        if isinstance(slot, Codec):
            result.append(slot)
            continue
        taken = used | owned if reserve_own or slot.named else used
        static = _STATIC.get((slot.name, slot.rate))
        if static is not None and static not in taken:
            number = static
        else:
            number = str(next((n for n in _DYNAMIC if str(n) not in taken), 127))
        used.add(number)
        result.append(Codec(number, slot.encoding, slot.fmtp))
    return result


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
    audio: list[Codec] = []
    supplemental: list[tuple[Codec, bool]] = []  # and whether the answerer listed it

    def offerer_supplemental(name: str, rate: int) -> Codec | None:
        return next((c for c in offerer if c.name.lower() == name and _rate(c) == rate), None)

    transcoded: set[int] = set()  # clock rates of the answerer's audio codecs transcoded
    # DTMF goes to the offerer as events where the answerer sends them, or where every
    # packet is decoded anyway (always-transcode: its in-band tones are detected)
    dtmf = setup.always or any(c.name.lower() == "telephone-event" for c in answered)
    for codec in answered:
        if codec.supplemental:
            supplemental.append((codec, True))
            continue
        if single and audio:
            continue
        same = any(_same(c, codec) for c in offerer)
        passthrough = same and not setup.always and codec.payload_type not in setup.added
        if passthrough and not accepted_audio:
            if codec not in audio:
                audio.append(codec)
            continue
        if not passthrough:
            if preferred is None or not transcodable(codec):
                continue
            transcoded.add(_rate(codec))
        # transcoded, or (passing through, but) an accepted codec goes back in its place
        assert preferred is not None
        if all(c.payload_type != preferred.payload_type for c in audio):
            audio.append(preferred)
        for name in ("cn", "telephone-event") if dtmf else ("cn",):
            extra = offerer_supplemental(name, _rate(preferred))
            if extra is not None:
                supplemental.append((extra, False))
    rates = {_rate(c) for c in audio}
    # the offerer's accepted CN and telephone-event go back with its audio codecs
    supplemental += [(c, False) for c in accepted if c.supplemental and _rate(c) in rates]
    result: list[Codec] = []
    for codec, answerers in supplemental:
        if answerers:
            if _rate(codec) in transcoded:
                continue  # translated with its audio codec's: the offerer's of that rate went
            if next((c for c in offerer if _same(c, codec)), None) is None or (
                codec.payload_type in setup.added
            ):
                own_codec = offerer_supplemental(codec.name.lower(), _rate(codec))
                if own_codec is None:
                    continue
                codec = own_codec
        if all(c.payload_type != codec.payload_type for c in result):
            result.append(codec)
    # CN and telephone-event after the audio codecs, by payload type (as 10.5 lists them)
    return (*audio, *sorted(result, key=_number))


def _number(codec: Codec) -> int:
    return int(codec.payload_type) if codec.payload_type.isdigit() else 128
