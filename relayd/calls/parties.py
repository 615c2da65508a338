"""Who is who in a call: the parties of an offer or answer, by rtpengine's tag rules.

``from-tag`` names the party that sent the message. An offer goes from the
``from-tag`` party to the ``to-tag`` party, or to an unnamed branch (keyed by
``via-branch``) until an answer names it; an answer comes from the ``to-tag``
party. A party answering the same branch under another tag is an early-media
fork: an alias of that party, with the same ports. A party whose peer changes
(a fork taking over) keeps its earlier dialogue's media aside.
"""

from __future__ import annotations

from relayd.calls.model import Call, EchoRole, Media, Monologue
from relayd.ng.message import MediaEcho, Request

__all__ = [
    "answerer_of",
    "apply_party_flags",
    "detach_branch",
    "receiver_of_offer",
    "sender_of",
    "switch_dialogue",
]


def sender_of(call: Call, tag: str, now: float) -> Monologue:
    """The party that sent a message (``from-tag``), created on its first one."""
    mono = call.monologues.get(tag)
    if mono is None:
        # a whole-call block DTMF applies to parties that join later (calls/dtmf_block.py)
        mono = Monologue(
            tag=tag,
            created=now,
            dtmf_security=call.dtmf_block,
            dtmf_trigger=call.dtmf_block_trigger,
        )
        call.monologues[tag] = mono
    return mono


def receiver_of_offer(call: Call, sender: Monologue, req: Request, now: float) -> Monologue:
    """Who an offer goes to: the ``to-tag`` party, the sender's current peer, or the
    (new) party of the offer's ``via-branch`` until an answer names it."""
    if req.to_tag and req.to_tag in call.monologues:
        receiver = call.monologues[req.to_tag]
    elif not req.to_tag and sender.in_dialogue_with in call.monologues:
        receiver = call.monologues[sender.in_dialogue_with or ""]
    else:
        branch = req.via_branch
        receiver = call.branches.get(branch) or Monologue(
            tag=req.to_tag,
            created=now,
            via_branch=branch,
            dtmf_security=call.dtmf_block,
            dtmf_trigger=call.dtmf_block_trigger,
        )
        call.branches.setdefault(branch, receiver)
        if req.to_tag:
            call.monologues[req.to_tag] = receiver
    if receiver.tag:
        switch_dialogue(sender, receiver.tag)
    receiver.offered_by = sender.tag
    if not receiver.sent_sdp:
        receiver.answerer = True
    return receiver


def answerer_of(call: Call, offerer: Monologue, req: Request, now: float) -> Monologue:
    """Who an answer comes from (``to-tag``): the branch it answers, or an early-media
    fork of it under another tag (an alias of the same party and ports)."""
    tag = req.to_tag
    if tag in call.monologues:
        answerer = call.monologues[tag]
    else:
        answerer = (
            call.branches.get(req.via_branch)
            or next(
                (b for b in call.branches.values() if not b.tag),
                next(iter(call.branches.values()), None),
            )
            or Monologue(
                tag=tag,
                created=now,
                dtmf_security=call.dtmf_block,
                dtmf_trigger=call.dtmf_block_trigger,
            )
        )
        if answerer.tag and answerer.tag != tag:
            # early-media fork: another to-tag answers the same branch; same ports
            answerer.aliases += (tag,)
        else:
            answerer.tag = tag
        call.monologues[tag] = answerer
    switch_dialogue(offerer, tag)
    answerer.in_dialogue_with = offerer.tag
    return answerer


def switch_dialogue(party: Monologue, peer: str) -> None:
    """Pair ``party`` with ``peer``: a new peer (a fork) gets its own set of our ports."""
    current = party.in_dialogue_with
    if current == peer:
        return
    if current is not None and any(m.port for m in party.medias):
        party.other_dialogues[current] = party.medias
        saved = party.other_dialogues.pop(peer, [])
        party.medias = saved or [m.for_new_dialogue() for m in party.medias]
    party.in_dialogue_with = peer


def detach_branch(call: Call, party: Monologue, branch: str) -> list[Media] | None:
    """Take the party of ``party``'s offer on ``branch`` out of the call (a ``delete`` with
    ``via-branch``: that fork hung up), if the call goes on without it.

    Returns the media whose ports are to be given back: the branch's own, and what
    ``party`` kept aside for a dialogue with it. None, and nothing changed, where the whole
    call is to go: no such branch, the branch is ``party`` itself, or nobody but ``party``
    would be left (rtpengine 10.5 then deletes the call).
    """
    gone = call.branches.get(branch)
    if gone is None or gone is party:
        return None
    if not any(p is not party and p is not gone for p in call.parties()):
        return None
    del call.branches[branch]
    for tag in (gone.tag, *gone.aliases):
        if call.monologues.get(tag) is gone:
            del call.monologues[tag]
    medias = list(gone.medias)
    for kept in gone.other_dialogues.values():
        medias.extend(kept)
    if gone.tag and party.in_dialogue_with != gone.tag:
        medias.extend(party.other_dialogues.pop(gone.tag, []))
    return medias


# ``media-echo`` as rtpengine 10.5 applies it: (the message sender's role, its receiver's).
# "forward" echoes the receiver's media back to it and discards the sender's; "backward"
# the other way round. It stays in force until a message names another mode.
_ECHO_ROLES: dict[MediaEcho, tuple[EchoRole, EchoRole]] = {
    "forward": ("blackhole", "echo"),
    "backward": ("echo", "blackhole"),
    "both": ("echo", "echo"),
    "blackhole": ("blackhole", "blackhole"),
}


def apply_party_flags(party: Monologue, req: Request, *, received: bool = False) -> None:
    """Media flags of a message apply to both parties' media, as in rtpengine;
    addresses and labels only to the sender."""
    if req.media_echo is not None:
        party.media_echo = _ECHO_ROLES[req.media_echo][received]
    flags = req.flags
    if "asymmetric" in flags:
        party.asymmetric = True
    elif "symmetric" in flags:
        party.asymmetric = False
    party.strict_source = party.strict_source or "strict-source" in flags
    party.media_handover = party.media_handover or "media-handover" in flags
    party.inject_dtmf = party.inject_dtmf or "inject-dtmf" in flags
    if received:
        return
    if req.received_from:
        party.sip_source = req.received_from[1]
    if req.label:
        party.label = req.label
