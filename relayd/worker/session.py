"""Per-socket media state in a worker: endpoint learning and counters (pure logic).

Endpoint learning follows rtpengine (ng ``endpoint-learning``):

* ``delayed`` (default): every packet's source becomes the endpoint, but the
  endpoint is only *confirmed* by the first packet that arrives once
  ``learn_after`` (3 s after the last signalling) has passed.
* ``immediate``: the first packet confirms its source.
* ``heuristic``: a source matching the SDP address and port confirms at once;
  otherwise sources are ranked (same address > same port > other) and a better
  one replaces a worse one until the delayed confirmation.
* ``off``: media is only ever sent to the SDP address.

``asymmetric`` parties are never learned from. Once confirmed, a packet from
another source is dropped with ``strict`` (counted as an error), moves the
endpoint with ``handover``, and otherwise is forwarded without moving it.
A packet is forwarded only once the other party's endpoint is known.

A worker hears of signalling after relayd has answered it (relayd/plane/updates.py),
so a party that sends as soon as it reads the reply can reach its socket while the
old configuration still holds: the answerer's side of an early forward, which learns
nothing, or a confirmed leg, which a new source does not move. Such a packet is not
lost for learning: the source that was not learned from is kept (``heard``), and when
the new configuration comes, a packet that came after the signalling is judged by it.
"""

from __future__ import annotations

from dataclasses import dataclass

from relayd.ipc import Learning, signalled_at

__all__ = ["Leg", "Verdict"]

Address = tuple[str, int]
Datagram = bytes | bytearray  # (a name of its own: Leg has a field called bytes)


def _rank(source: Address, expect: Address | None) -> int:
    if expect is None:
        return 0
    if source == expect:
        return 3
    if source[0] == expect[0]:
        return 2
    if source[1] == expect[1]:
        return 1
    return 0


class Verdict:
    FORWARD = 0
    DROP = 1


@dataclass(slots=True)
class Leg:
    """One local socket: the party that sends to it, and where that party is reached."""

    key: str
    expect: Address | None = None
    learning: Learning = "delayed"
    learn_after: float = 0.0
    asymmetric: bool = False
    strict: bool = False
    handover: bool = False
    rtcp: bool = False
    kernel: bool = False  # the stream is forwarded by nftables: nothing here is forwarded
    block: bool = False  # ``block media``: what arrives is counted, never forwarded
    silence: dict[int, int] | None = None  # ``silence media``: payload type -> fill byte
    endpoint: Address | None = None  # where packets for this party are sent
    confirmed: bool = False
    rank: int = -1
    packets: int = 0
    bytes: int = 0
    errors: int = 0
    last_packet: float = 0.0
    ssrc: int = -1
    # what the media player's report block reads (relayd/worker/player.py): the first bytes
    # of the party's latest datagram here (4 of RTP: its sequence number; 20 of RTCP on an
    # RTCP socket: its SR's time), and under rtcp-mux its latest RTCP and when that came
    # (CLOCK_MONOTONIC); copies, so that no whole datagram stays alive per socket
    last: Datagram = b""
    last_rtcp: Datagram = b""
    rtcp_at: float = 0.0
    # packets, errors and confirmation as last reported to relayd (three slots: less than
    # one tuple per socket, made anew for every report)
    reported_packets: int = 0
    reported_errors: int = 0
    reported_confirmed: bool = False
    # the source of the latest packet that was not learned from (learning off, or another
    # source than the confirmed one) and when it came: judged again by the next
    # signalling's rules if it came after that signalling (reset)
    heard: tuple[Address, float] | None = None

    def unreported(self) -> bool:
        """Counters or confirmation changed since the last report; now they count as reported."""
        if (self.packets, self.errors, self.confirmed) == (
            self.reported_packets,
            self.reported_errors,
            self.reported_confirmed,
        ):
            return False
        self.reported_packets, self.reported_errors = self.packets, self.errors
        self.reported_confirmed = self.confirmed
        return True

    def reset(self, expect: Address | None, learning: Learning, learn_after: float) -> None:
        """A new signalling event: forget confirmation, restart learning.

        Except where the endpoint is confirmed at exactly the SDP's new address under
        ``immediate`` or ``heuristic`` learning: the next packet from there would confirm it
        at once, and one came already (a party that stops sending across a re-INVITE, put
        on hold, would otherwise wait unconfirmed for a packet that does not come)."""
        keep = (
            self.confirmed
            and expect is not None
            and self.endpoint == expect
            and learning in ("immediate", "heuristic")
            and not self.asymmetric
        )
        heard, self.heard = self.heard, None
        self.expect = expect
        self.learning = learning
        self.learn_after = learn_after
        self.confirmed = keep
        # relayd forgot its copy of the confirmation with the signalling that brought this
        # configuration (plane/offload.py): a confirmation from here on is reported anew,
        # whether kept, learned from ``heard`` or from the next packet
        self.reported_confirmed = False
        self.rank = -1
        if keep:
            self.endpoint = expect  # the SDP's tuple itself, as _learn keeps it
            return
        if self.endpoint is None or learning == "off" or self.asymmetric:
            self.endpoint = expect
        if (
            heard is not None
            and learning != "off"
            and not self.asymmetric
            and heard[1] >= signalled_at(learning, learn_after)
        ):
            # it came after the signalling, before this configuration reached us: as if
            # it had come after it
            self._learn(*heard)

    def receive(self, source: Address, size: int, now: float) -> int:
        """Account one packet from ``source``; say whether to forward it."""
        if self.kernel:
            self.errors += 1
            return Verdict.DROP
        if self.confirmed and source != self.endpoint:
            if self.strict:
                self.errors += 1
                return Verdict.DROP
            if self.handover:
                self.endpoint = source
            else:
                self.heard = (source, now)
        elif not self.confirmed and not self.asymmetric:
            if self.learning != "off":
                self._learn(source, now)
            else:
                self.heard = (source, now)
        self.packets += 1
        self.bytes += size
        self.last_packet = now
        return Verdict.FORWARD

    def _learn(self, source: Address, now: float) -> None:
        if source == self.expect:
            source = self.expect  # the SDP's address, mostly: kept, not a second copy of it
        mode = self.learning
        if mode == "immediate":
            self.endpoint, self.confirmed = source, True
            return
        if mode == "heuristic":
            rank = _rank(source, self.expect)
            if rank == 3:
                self.endpoint, self.confirmed = source, True
            elif rank >= self.rank:
                self.endpoint, self.rank = source, rank
            # after the learning window the best source seen so far is kept
            self.confirmed = self.confirmed or now >= self.learn_after
            return
        self.endpoint = source
        self.confirmed = now >= self.learn_after
