"""The ICE agent of one relay socket (RFC 8445): checks, peer-reflexive candidates, nomination.

Rules:

* One agent per local candidate, i.e. per relay socket (one component, one address).
  Its candidate pairs are this socket with every remote candidate of the party's SDP
  for its component and address family, and with every peer-reflexive candidate a
  valid check came from (RFC 8445 §7.3.1.3), at most ``MAX_PAIRS``.
* A check we receive is answered only if USERNAME is ``<our ufrag>:…``,
  MESSAGE-INTEGRITY verifies with our password and FINGERPRINT is right; anything
  else is dropped without a reply and counted as an error (error responses would
  only help a prober). The answer is a Binding success with XOR-MAPPED-ADDRESS (the
  check's source), MESSAGE-INTEGRITY and FINGERPRINT, from the socket it came to.
* Role conflicts (§7.3.1.1) are settled by the 64-bit tie-breakers. An ICE-lite agent
  (``lite``: we said ``a=ice-lite``, or the party gave no password to check with) is
  controlled with tie-breaker 0: it answers a check with ICE-CONTROLLED by a 487 (Role
  Conflict) error, after which the peer turns controlling and nominates.
* A full agent checks its pairs (§6.1.4, §7.2.4): an ordinary check every ``PACE``
  seconds, the highest remote priority first; a check from a pair not checked yet (a
  new peer-reflexive candidate, or one still waiting or failed) triggers a check to it
  at once. A check is sent again after ``RTO``, doubling, ``MAX_SENDS`` times in all,
  then its pair fails. A success response counts only from the pair's remote address
  and with MESSAGE-INTEGRITY by the party's password (§7.2.5.2); a 487 makes us take
  the other role and check the pair again (§7.2.5.1).
* Nomination (§8.1.1, regular): controlling, the first pair that succeeds among the
  agents of one component (:class:`Nomination`) is checked again with USE-CANDIDATE,
  and its success nominates it; if that check fails, the group's best other valid
  pair is, on whichever agent (local address) it is: that agent's check is due at
  once, from its own socket. An agent with a valid pair stays on its timer while a
  sibling's nomination may still fail. Controlled (and lite), a valid check with
  USE-CANDIDATE nominates its source at once: the latest nomination wins, which is
  how a peer moves to another pair. Turning controlled in a role conflict takes back
  a nomination of ours in flight (a controlled agent sends no USE-CANDIDATE). Once a
  pair of the component is nominated, our checks stop (§8.1.2); the caller latches
  the party's endpoint there (:mod:`relayd.worker.secure`).
* Our checks carry SOFTWARE first, naming relayd as rtpengine-compatible: rtpengine's
  test suite tells a relay's checks from its own by a SOFTWARE value that starts
  with "rtpengine".
"""

from __future__ import annotations

import ipaddress
import os
import struct
from dataclasses import dataclass
from typing import Literal

from relayd.worker.stun import (
    Attr,
    MessageType,
    StunError,
    StunMessage,
    encode,
    parse,
    xor_address,
)

__all__ = [
    "MAX_PAIRS",
    "MAX_SENDS",
    "PACE",
    "RTO",
    "Answer",
    "IceAgent",
    "Nomination",
    "parse_candidates",
]

Address = tuple[str, int]
Send = tuple[bytes, Address]

PACE = 0.05  # seconds between two ordinary checks of one agent (Ta, RFC 8445 §14.2)
RTO = 0.25  # first retransmission of a check; then doubling
MAX_SENDS = 7  # transmissions of one check before its pair fails (Rc, RFC 5389 §7.2.1)
MAX_PAIRS = 32  # remote candidates per agent: SDP and peer-reflexive together
SOFTWARE = b"rtpengine-compatible relayd"
_PRFLX_TYPE_PREFERENCE = 110  # RFC 8445 §5.1.2.2, for the PRIORITY of our checks

PairState = Literal["waiting", "in-progress", "succeeded", "failed"]


@dataclass(frozen=True, slots=True)
class Answer:
    """What to do with one STUN datagram: ``reply`` goes back to its source, ``sends``
    (checks of ours) go out from the same socket."""

    reply: bytes | None = None
    nominated: bool = False  # latch the party's endpoint to the datagram's source
    error: str = ""  # why it was dropped (counted as an error); "" when not
    sends: tuple[Send, ...] = ()


_IGNORE = Answer()


def parse_candidates(text: str, component: int) -> list[tuple[Address, int]]:
    """``ipc.SocketSpec.ice_candidates`` ("address port priority component", by ";") of
    one component, as (address, priority); host names (mDNS) and junk are left out."""
    found: list[tuple[Address, int]] = []
    for item in text.split(";"):
        parts = item.split()
        if len(parts) != 4 or not (parts[1].isdigit() and parts[2].isdigit()):
            continue
        if parts[3] != str(component):
            continue
        try:
            address = str(ipaddress.ip_address(parts[0]))
        except ValueError:
            continue
        found.append(((address, int(parts[1])), int(parts[2])))
    return found


class Nomination:
    """Shared by the agents of one component's candidates (a socket and its aliases on our
    other local addresses): the one that nominates, so that a controlling relayd nominates
    one pair per component (RFC 8445 §8.1.1), not one per local address; and all of them,
    so that a failed nomination moves to the best valid pair of any of them."""

    __slots__ = ("agent", "agents")

    def __init__(self) -> None:
        self.agent: IceAgent | None = None
        self.agents: list[IceAgent] = []

    def best(self) -> tuple[IceAgent, _Pair] | None:
        """The pair to nominate next, with its agent: the valid pair (succeeded) with the
        highest remote priority among the group's controlling agents; None: none yet."""
        found: tuple[IceAgent, _Pair] | None = None
        for agent in self.agents:
            if not agent.controlling:
                continue
            pair = agent._valid()
            if pair is not None and (found is None or pair.priority > found[1].priority):
                found = (agent, pair)
        return found


class _Pair:
    __slots__ = ("nominating", "priority", "remote", "retry_at", "sends", "state", "tid")

    def __init__(self, remote: Address, priority: int) -> None:
        self.remote = remote
        self.priority = priority
        self.state: PairState = "waiting"
        self.tid = b""
        self.sends = 0
        self.retry_at = 0.0
        self.nominating = False


class IceAgent:
    """ICE on one socket: our credentials, the party's, our role and the candidate pairs."""

    __slots__ = (
        "_component",
        "_key",
        "_next_check",
        "_prefix",
        "_remote_key",
        "_transactions",
        "checks",
        "controlling",
        "family",
        "group",
        "lite",
        "nominated",
        "pairs",
        "remote_ufrag",
        "tie_breaker",
        "ufrag",
    )

    def __init__(
        self,
        ufrag: str,
        pwd: str,
        remote_ufrag: str = "",
        remote_pwd: str = "",
        *,
        controlling: bool = False,
        lite: bool = True,
        candidates: list[tuple[Address, int]] | None = None,
        family: int = 4,
        component: int = 1,
    ) -> None:
        self.ufrag = ufrag
        self.remote_ufrag = remote_ufrag
        self._key = pwd.encode()  # short-term credential: the password itself (RFC 5389 §15.4)
        self._remote_key = remote_pwd.encode()
        self._prefix = f"{ufrag}:".encode()
        self._component = component
        self.family = family  # 4 or 6: the socket's; remote candidates of the other are no pairs
        self.lite = lite or not (remote_ufrag and remote_pwd)
        self.controlling = controlling and not self.lite
        self.tie_breaker = 0 if self.lite else int.from_bytes(os.urandom(8), "big")
        self.pairs: dict[Address, _Pair] = {}
        self._transactions: dict[bytes, _Pair] = {}
        self._next_check = 0.0
        self.checks = 0  # valid checks answered
        self.nominated: Address | None = None
        self.group = Nomination()  # SecurePath.link shares the primary socket's with aliases
        self.group.agents.append(self)
        self.update(candidates or [])

    @property
    def state(self) -> Literal["checking", "nominated"]:
        """``nominated`` once a candidate pair is nominated."""
        return "nominated" if self.nominated is not None else "checking"

    def update(self, candidates: list[tuple[Address, int]]) -> None:
        """The party's candidates from its latest SDP: new ones become pairs. (Our role
        stays: the SDP changes it only with new credentials, which make a new agent.)"""
        if self.lite:
            return
        for address, priority in candidates:
            self._pair(address, priority)

    def join(self, group: Nomination) -> None:
        """Nominate together with ``group``'s agents (an alias socket joins its primary's)."""
        if group is not self.group:
            self.leave()
            self.group = group
            group.agents.append(self)

    def leave(self) -> None:
        """Leave the group (the socket is closed or has a new agent): nominate alone. A
        nomination of ours in flight passes to the group's best valid pair, due at once."""
        group = self.group
        if self in group.agents:
            group.agents.remove(self)
        if group.agent is self:
            group.agent = None
            if (best := group.best()) is not None:
                best[0]._nominate(best[1], 0.0)
        self.group = Nomination()
        self.group.agents.append(self)

    def _pair(self, remote: Address, priority: int) -> _Pair | None:
        pair = self.pairs.get(remote)
        if pair is None:
            version = 6 if ":" in remote[0] else 4
            if version != self.family or len(self.pairs) >= MAX_PAIRS:
                return None
            pair = self.pairs[remote] = _Pair(remote, priority)
        return pair

    # -- timers ---------------------------------------------------------------------------------

    def next_timeout(self) -> float | None:
        """When :meth:`handle_timeout` has something to do; None: nothing pending."""
        if self.lite or self._done():
            return None
        when: float | None = None
        for pair in self.pairs.values():
            if pair.state == "in-progress" and (when is None or pair.retry_at < when):
                when = pair.retry_at
        if any(p.state == "waiting" for p in self.pairs.values()):
            when = self._next_check if when is None else min(when, self._next_check)
        leader = self.group.agent
        if leader not in (None, self) and self.controlling and self._valid() is not None:
            # a sibling nominates: wake up when its check may fail, to nominate in its place
            for pair in leader.pairs.values():
                if pair.nominating and (when is None or pair.retry_at < when):
                    when = pair.retry_at
        return when

    def _done(self) -> bool:
        """A pair of this component is nominated: ICE is done for it (RFC 8445 §8.1.2)."""
        leader = self.group.agent
        return self.nominated is not None or (leader is not None and leader.nominated is not None)

    def handle_timeout(self, now: float) -> list[Send]:
        """Checks due at ``now``: retransmissions, then one ordinary check (RFC 8445 §6.1.4.2)."""
        sends: list[Send] = []
        if self._done():
            return sends
        for pair in list(self.pairs.values()):
            if pair.state != "in-progress" or pair.retry_at > now:
                continue
            if pair.sends >= MAX_SENDS:
                pair.state = "failed"
                self._transactions.pop(pair.tid, None)
                if pair.nominating:  # no answer to the nomination: try another valid pair
                    pair.nominating = False
                    self.group.agent = None
                    if (best := self.group.best()) is not None:
                        agent, valid = best
                        agent._nominate(valid, now)  # due at once, from the agent's socket
                        if agent is self:
                            sends.append(self._send_check(valid, now))
                continue
            sends.append(self._send_check(pair, now))
        if now >= self._next_check:
            waiting = [p for p in self.pairs.values() if p.state == "waiting"]
            if waiting:
                pair = max(waiting, key=lambda p: p.priority)
                sends.append(self._start_check(pair, now))
                self._next_check = now + PACE
        return sends

    # -- checks of ours --------------------------------------------------------------------------

    def _start_check(self, pair: _Pair, now: float) -> Send:
        self._begin(pair, now)
        return self._send_check(pair, now)

    def _begin(self, pair: _Pair, now: float) -> None:
        """A new transaction on ``pair``, its first check due at ``now``."""
        self._transactions.pop(pair.tid, None)
        pair.state = "in-progress"
        pair.tid = os.urandom(12)
        pair.sends = 0
        pair.retry_at = now
        self._transactions[pair.tid] = pair

    def _send_check(self, pair: _Pair, now: float) -> Send:
        """A Binding request on ``pair`` (RFC 8445 §7.2.2), retransmitted until answered."""
        priority = (
            (_PRFLX_TYPE_PREFERENCE << 24) | (65535 << 8) | (256 - self._component)
        ) & 0xFFFFFFFF
        role = Attr.ICE_CONTROLLING if self.controlling else Attr.ICE_CONTROLLED
        attributes: list[tuple[int, bytes]] = [
            (Attr.SOFTWARE, SOFTWARE),
            (Attr.USERNAME, f"{self.remote_ufrag}:{self.ufrag}".encode()),
            (Attr.PRIORITY, priority.to_bytes(4, "big")),
            (role, self.tie_breaker.to_bytes(8, "big")),
        ]
        if pair.nominating:
            attributes.append((Attr.USE_CANDIDATE, b""))
        pair.retry_at = now + RTO * (1 << pair.sends)
        pair.sends += 1
        data = encode(MessageType.BINDING_REQUEST, pair.tid, attributes, key=self._remote_key)
        return data, pair.remote

    # -- what arrives ---------------------------------------------------------------------------

    def handle(self, data: bytes, source: Address, now: float = 0.0) -> Answer:
        """What to do with one STUN datagram from ``source`` (the rules are the module's)."""
        try:
            message = parse(data)
        except StunError as exc:
            return Answer(error=str(exc))
        kind = message.message_type
        if kind in (MessageType.BINDING_SUCCESS, MessageType.BINDING_ERROR):
            return self._response(message.transaction_id, kind, message, source, now)
        if kind & 0x0110:
            return _IGNORE  # indications (keep-alives), responses of other methods
        if kind != MessageType.BINDING_REQUEST:
            return Answer(error=f"unexpected STUN request {kind:#06x}")
        username = message.get(Attr.USERNAME)
        if username is None or not username.startswith(self._prefix):
            return Answer(error="ICE check with a wrong username")
        if not message.check_integrity(self._key):
            return Answer(error="ICE check with bad MESSAGE-INTEGRITY")
        if not message.fingerprint:
            return Answer(error="ICE check without FINGERPRINT")
        self.checks += 1
        if self._conflict(message.get(Attr.ICE_CONTROLLING), message.get(Attr.ICE_CONTROLLED)):
            return Answer(_role_conflict(message.transaction_id, self._key))
        reply = encode(
            MessageType.BINDING_SUCCESS,
            message.transaction_id,
            [(Attr.XOR_MAPPED_ADDRESS, xor_address(source, message.transaction_id))],
            key=self._key,
        )
        nominated = message.get(Attr.USE_CANDIDATE) is not None and not self.controlling
        if nominated:
            self.nominated = source
        return Answer(reply, nominated, sends=self._triggered(message, source, now))

    def _conflict(self, controlling: bytes | None, controlled: bytes | None) -> bool:
        """RFC 8445 §7.3.1.1: True to answer 487; else we may have switched roles."""
        if self.controlling and controlling is not None:
            if self.tie_breaker >= int.from_bytes(controlling, "big"):
                return True
            self._switch_role()
        elif not self.controlling and controlled is not None:
            if self.lite or self.tie_breaker < int.from_bytes(controlled, "big"):
                return True
            self._switch_role()
        return False

    def _switch_role(self) -> None:
        """Take the other role (a role conflict, §7.2.5.1, §7.3.1.1). Turning controlled, a
        nomination of ours in flight is taken back: its checks go on without USE-CANDIDATE,
        and the group may nominate elsewhere should we ever turn controlling again."""
        self.controlling = not self.controlling
        if self.controlling:
            return
        for pair in self.pairs.values():
            pair.nominating = False
        if self.group.agent is self:
            self.group.agent = None

    def _triggered(self, message: StunMessage, source: Address, now: float) -> tuple[Send, ...]:
        """A check back to where a valid check came from (RFC 8445 §7.3.1.4)."""
        if self.lite or self.nominated not in (None, source):
            return ()
        pair = self.pairs.get(source)
        if pair is None:
            priority = message.get(Attr.PRIORITY)
            value = struct.unpack("!I", priority)[0] if priority and len(priority) == 4 else 0
            pair = self._pair(source, value)  # a peer-reflexive candidate
            if pair is None:
                return ()
        if pair.state in ("succeeded", "in-progress"):
            return ()
        return (self._start_check(pair, now),)

    def _response(
        self, tid: bytes, kind: int, message: StunMessage, source: Address, now: float
    ) -> Answer:
        pair = self._transactions.get(tid)
        if pair is None or pair.remote != source:
            return _IGNORE  # not ours, or not symmetric (RFC 8445 §7.2.5.2.1)
        if not message.check_integrity(self._remote_key):
            return Answer(error="ICE response with bad MESSAGE-INTEGRITY")
        del self._transactions[tid]
        if kind == MessageType.BINDING_ERROR:
            error = message.get(Attr.ERROR_CODE) or b""
            if len(error) >= 4 and error[2] * 100 + error[3] == 487:
                self._switch_role()
                return Answer(sends=(self._start_check(pair, now),))
            pair.state = "failed"
            return _IGNORE
        if pair.nominating:
            pair.state = "succeeded"
            self.nominated = pair.remote
            return Answer(nominated=True)
        pair.state = "succeeded"
        if self.controlling and self.nominated is None and self.group.agent is None:
            self._nominate(pair, now)
            return Answer(sends=(self._send_check(pair, now),))
        return _IGNORE

    def _nominate(self, pair: _Pair, now: float) -> None:
        """Check ``pair`` again with USE-CANDIDATE (RFC 8445 §8.1.1), for the whole group:
        the check is due at ``now``, and :meth:`handle_timeout` sends it unless the caller
        does at once (a sibling's pair waits for its own socket's timer)."""
        self.group.agent = self
        pair.nominating = True
        self._begin(pair, now)

    def _valid(self) -> _Pair | None:
        valid = [p for p in self.pairs.values() if p.state == "succeeded"]
        return max(valid, key=lambda p: p.priority) if valid else None


def _role_conflict(transaction_id: bytes, key: bytes) -> bytes:
    """A Binding error response 487 (Role Conflict), RFC 8445 §7.3.1.1 / RFC 5389 §15.6."""
    error = struct.pack("!HBB", 0, 4, 87) + b"Role Conflict"
    return encode(MessageType.BINDING_ERROR, transaction_id, [(Attr.ERROR_CODE, error)], key=key)
