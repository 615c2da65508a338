"""What the workers must do for a call, derived from the call model (pure).

For each media section shared by two parties X and Y, every relay socket of X
sends onwards from Y's socket of the same component: RTP from X arriving on
X's RTP port leaves from Y's RTP port towards Y. A party that uses rtcp-mux
sends RTCP to its RTP port; those packets leave from the other party's RTCP
socket (or its RTP socket if it muxes as well).
"""

from __future__ import annotations

from collections.abc import Iterator

from relayd.ipc import Forward, SocketSpec
from relayd.model import Call, Endpoint, Media, Monologue

__all__ = ["LearningPolicy", "media_key", "plan", "socket_key"]


def socket_key(address: str, port: int) -> str:
    return f"{address} {port}"


def media_key(call_id: str, index: int) -> str:
    return f"{call_id} {index}"


def _endpoint(ep: Endpoint | None) -> str:
    return f"{ep.address} {ep.port}" if ep else ""


def _muxes(media: Media) -> bool:
    return media.rtcp_mux and media.peer_rtcp_mux


class LearningPolicy:
    """How a party's endpoints are learned: mode and when delayed learning may confirm."""

    def __init__(self, mode: str, learn_after: float) -> None:
        self.mode = mode
        self.learn_after = learn_after


def _pairs(call: Call) -> Iterator[tuple[Monologue, Monologue]]:
    seen: set[int] = set()
    for party in call.parties():
        peer_tag = party.in_dialogue_with
        if not party.tag or peer_tag is None or id(party) in seen:
            continue
        peer = call.monologues.get(peer_tag)
        if peer is None or peer is party:
            continue
        if peer.in_dialogue_with != party.tag and peer.in_dialogue_with not in party.aliases:
            # a fork the peer has moved away from: the peer's media now belong to
            # another dialogue, and both would claim the same media key
            continue
        seen.update((id(party), id(peer)))
        yield party, peer


def plan(call: Call, policy: dict[str, LearningPolicy]) -> list[Forward]:
    """One :class:`Forward` per media section that both parties have ports for.

    ``policy`` maps a party's tag to its learning policy (default: delayed, now).
    """
    result: list[Forward] = []
    for x, y in _pairs(call):
        for index in range(min(len(x.medias), len(y.medias))):
            mx, my = x.medias[index], y.medias[index]
            if not (mx.port and my.port and mx.local and my.local):
                continue
            sockets = [*_specs(x, mx, my, policy), *_specs(y, my, mx, policy)]
            result.append(Forward(media_key(call.call_id, index), tuple(sockets)))
    return result


def _specs(
    party: Monologue, own: Media, other: Media, policy: dict[str, LearningPolicy]
) -> list[SocketSpec]:
    assert own.local is not None and other.local is not None
    learn = policy.get(party.tag) or LearningPolicy("delayed", 0.0)
    own_rtp = socket_key(own.local.local, own.port)
    own_rtcp = socket_key(own.local.local, own.port + 1)
    other_rtp = socket_key(other.local.local, other.port)
    other_rtcp = other_rtp if _muxes(other) else socket_key(other.local.local, other.port + 1)
    common = {
        "learning": learn.mode,
        "learn_after": learn.learn_after,
        "asymmetric": party.asymmetric,
        "strict": party.strict_source,
        "handover": party.media_handover,
    }
    rtcp_expect = own.remote_rtp if _muxes(own) else own.remote_rtcp
    learned = [_endpoint(s.endpoint) if s.confirmed else "" for s in own.streams[:2]]
    learned += [""] * (2 - len(learned))
    return [
        SocketSpec(
            own_rtp,
            out=other_rtp,
            out_rtcp=other_rtcp if _muxes(own) else "",
            expect=_endpoint(own.remote_rtp),
            learned=learned[0],
            **common,  # type: ignore[arg-type]
        ),
        SocketSpec(
            own_rtcp,
            out=other_rtcp,
            expect=_endpoint(rtcp_expect),
            rtcp=True,
            learned=learned[1],
            **common,  # type: ignore[arg-type]
        ),
    ]
