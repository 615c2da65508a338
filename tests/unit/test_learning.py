"""Endpoint learning on one relay socket (relayd.worker.session.Leg), as rtpengine does it."""

from __future__ import annotations

from relayd.ipc import Learning
from relayd.worker.session import Leg, Verdict

SDP = ("198.51.100.10", 5000)  # what the party's SDP said
NAT = ("192.0.2.77", 41000)  # where its packets really come from
SAME_ADDR = ("198.51.100.10", 7000)
SAME_PORT = ("192.0.2.88", 5000)
OTHER = ("192.0.2.99", 9999)


def _leg(
    learning: Learning = "delayed",
    learn_after: float = 3.0,
    *,
    asymmetric: bool = False,
    strict: bool = False,
    handover: bool = False,
) -> Leg:
    leg = Leg("203.0.113.1 30000", asymmetric=asymmetric, strict=strict, handover=handover)
    leg.reset(SDP, learning, learn_after)
    return leg


def test_reset_starts_at_the_sdp_address() -> None:
    leg = _leg()
    assert (leg.expect, leg.endpoint, leg.confirmed, leg.rank) == (SDP, SDP, False, -1)


def test_delayed_follows_sources_then_confirms_after_learn_after() -> None:
    leg = _leg("delayed", learn_after=3.0)
    assert leg.receive(NAT, 172, 1.0) == Verdict.FORWARD
    assert (leg.endpoint, leg.confirmed) == (NAT, False)
    assert leg.receive(OTHER, 172, 2.9) == Verdict.FORWARD
    assert (leg.endpoint, leg.confirmed) == (OTHER, False)
    assert leg.receive(NAT, 172, 3.0) == Verdict.FORWARD
    assert (leg.endpoint, leg.confirmed) == (NAT, True)
    # confirmed: another source is forwarded but does not move the endpoint
    assert leg.receive(OTHER, 100, 4.0) == Verdict.FORWARD
    assert (leg.endpoint, leg.confirmed) == (NAT, True)
    assert (leg.packets, leg.bytes, leg.errors, leg.last_packet) == (4, 616, 0, 4.0)


def test_immediate_confirms_the_first_source() -> None:
    leg = _leg("immediate", learn_after=0.0)
    leg.receive(NAT, 160, 0.5)
    assert (leg.endpoint, leg.confirmed) == (NAT, True)
    leg.receive(OTHER, 160, 0.6)
    assert leg.endpoint == NAT


def test_heuristic_exact_sdp_match_confirms_at_once() -> None:
    leg = _leg("heuristic", learn_after=3.0)
    leg.receive(SDP, 160, 0.1)
    assert (leg.endpoint, leg.confirmed) == (SDP, True)
    leg.receive(SAME_ADDR, 160, 0.2)
    assert leg.endpoint == SDP


def test_heuristic_better_source_replaces_a_worse_one() -> None:
    leg = _leg("heuristic", learn_after=3.0)
    leg.receive(OTHER, 160, 0.1)
    assert (leg.endpoint, leg.rank, leg.confirmed) == (OTHER, 0, False)
    leg.receive(SAME_PORT, 160, 0.2)
    assert (leg.endpoint, leg.rank) == (SAME_PORT, 1)
    leg.receive(SAME_ADDR, 160, 0.3)
    assert (leg.endpoint, leg.rank) == (SAME_ADDR, 2)
    leg.receive(SAME_PORT, 160, 0.4)  # worse: ignored
    leg.receive(OTHER, 160, 0.5)
    assert (leg.endpoint, leg.rank, leg.confirmed) == (SAME_ADDR, 2, False)
    # after the window the best source seen so far stays and is confirmed
    leg.receive(OTHER, 160, 3.0)
    assert (leg.endpoint, leg.confirmed) == (SAME_ADDR, True)
    leg.receive(SDP, 160, 3.1)  # confirmed: even the SDP address does not move it now
    assert leg.endpoint == SAME_ADDR
    assert leg.packets == 7


def test_heuristic_without_sdp_address_takes_the_latest_until_the_window() -> None:
    leg = Leg("k")
    leg.reset(None, "heuristic", 3.0)
    leg.receive(NAT, 10, 1.0)
    leg.receive(OTHER, 10, 2.0)
    assert (leg.endpoint, leg.confirmed) == (OTHER, False)
    leg.receive(NAT, 10, 3.0)
    assert (leg.endpoint, leg.confirmed) == (NAT, True)


def test_off_keeps_the_sdp_address() -> None:
    leg = _leg("off", learn_after=0.0)
    for now in (0.0, 5.0, 10.0):
        assert leg.receive(NAT, 160, now) == Verdict.FORWARD
    assert (leg.endpoint, leg.confirmed, leg.packets) == (SDP, False, 3)


def test_asymmetric_never_learns() -> None:
    leg = _leg("immediate", learn_after=0.0, asymmetric=True)
    leg.receive(NAT, 160, 0.0)
    leg.receive(NAT, 160, 10.0)
    assert (leg.endpoint, leg.confirmed, leg.packets) == (SDP, False, 2)


def test_asymmetric_reset_follows_the_new_sdp_address() -> None:
    leg = _leg("delayed", learn_after=0.0, asymmetric=True)
    leg.reset(("198.51.100.11", 5002), "delayed", 0.0)
    assert leg.endpoint == ("198.51.100.11", 5002)


def test_strict_source_drops_other_sources_after_confirmation() -> None:
    leg = _leg("delayed", learn_after=3.0, strict=True)
    assert leg.receive(OTHER, 160, 1.0) == Verdict.FORWARD  # still learning
    assert leg.receive(NAT, 160, 3.5) == Verdict.FORWARD
    assert (leg.endpoint, leg.confirmed) == (NAT, True)
    assert leg.receive(OTHER, 160, 4.0) == Verdict.DROP
    assert leg.receive(OTHER, 160, 4.1) == Verdict.DROP
    assert leg.receive(NAT, 160, 4.2) == Verdict.FORWARD
    assert leg.endpoint == NAT
    assert (leg.packets, leg.bytes, leg.errors, leg.last_packet) == (3, 480, 2, 4.2)


def test_media_handover_moves_to_a_new_source() -> None:
    leg = _leg("immediate", learn_after=0.0, handover=True)
    leg.receive(NAT, 160, 1.0)
    assert leg.receive(OTHER, 160, 2.0) == Verdict.FORWARD
    assert (leg.endpoint, leg.confirmed) == (OTHER, True)
    leg.receive(NAT, 160, 3.0)
    assert leg.endpoint == NAT
    assert leg.errors == 0


def test_default_is_not_strict_and_not_stolen() -> None:
    leg = _leg("immediate", learn_after=0.0)
    leg.receive(NAT, 160, 1.0)
    for n in range(3):
        assert leg.receive(OTHER, 160, 2.0 + n) == Verdict.FORWARD
    assert (leg.endpoint, leg.confirmed, leg.errors, leg.packets) == (NAT, True, 0, 4)


def test_reset_on_re_signalling_restarts_learning() -> None:
    leg = _leg("delayed", learn_after=3.0)
    leg.receive(NAT, 160, 4.0)
    assert (leg.endpoint, leg.confirmed) == (NAT, True)
    new_sdp = ("198.51.100.10", 5010)
    leg.reset(new_sdp, "delayed", 20.0)
    # unconfirmed again; the learned source stays the destination until a new one is seen
    assert (leg.expect, leg.endpoint, leg.confirmed, leg.rank) == (new_sdp, NAT, False, -1)
    leg.receive(OTHER, 160, 10.0)
    assert (leg.endpoint, leg.confirmed) == (OTHER, False)
    leg.receive(NAT, 160, 20.0)
    assert (leg.endpoint, leg.confirmed) == (NAT, True)
    assert leg.packets == 3  # counters survive re-signalling


def test_a_source_confirmed_where_the_new_sdp_says_stays_confirmed() -> None:
    """A re-INVITE that leaves a confirmed party where it was (one put on hold, that stops
    sending): immediate and heuristic learning would confirm the SDP's address at its next
    packet, so the one seen counts."""
    modes: tuple[Learning, ...] = ("immediate", "heuristic")
    for mode in modes:
        leg = Leg("k")
        leg.reset(SDP, mode, 0.0)
        leg.receive(("198.51.100.10", int("5000")), 160, 1.0)  # a new tuple, as recvfrom's
        assert leg.confirmed
        assert leg.unreported() and not leg.unreported()  # reported once
        leg.reset(SDP, mode, 5.0)  # the re-INVITE's answer: the same address, no packet since
        assert (leg.endpoint, leg.confirmed) == (SDP, True) and leg.endpoint is SDP
        assert leg.unreported()  # relayd forgot it with the signalling: reported again
        leg.reset(("198.51.100.10", 5010), mode, 9.0)  # a re-INVITE moves it: learned anew
        assert (leg.endpoint, leg.confirmed) == (SDP, False)
    leg = _leg("delayed", learn_after=3.0)  # delayed: confirmed only after the new window
    leg.receive(SDP, 160, 4.0)
    leg.reset(SDP, "delayed", 20.0)
    assert (leg.endpoint, leg.confirmed) == (SDP, False)
    leg = _leg("immediate", learn_after=0.0)  # a source elsewhere is learned again
    leg.receive(NAT, 160, 1.0)
    leg.reset(SDP, "immediate", 2.0)
    assert (leg.endpoint, leg.confirmed) == (NAT, False)


def test_a_packet_after_the_signalling_is_judged_by_the_configuration_it_brings() -> None:
    """The worker hears of an answer after relayd has replied: a callee that sends as soon
    as it has the 200 OK reaches its socket while the early forward still holds (learning
    off: nothing learned). When the answer's configuration comes, that packet counts as if
    it had come after it; one from before the signalling does not."""
    for sent_at, confirmed in ((5.0, True), (4.0, False)):
        leg = Leg("k")
        leg.reset(None, "off", 0.0)  # the answerer's side of an early forward
        assert leg.receive(NAT, 160, sent_at) == Verdict.FORWARD  # early media, forwarded
        assert (leg.endpoint, leg.confirmed) == (None, False)
        leg.reset(SDP, "immediate", 4.9)  # the answer, signalled at 4.9
        assert (leg.endpoint, leg.confirmed) == ((NAT, True) if confirmed else (SDP, False))
        assert leg.heard is None  # judged once
    leg = Leg("k")  # delayed: the source becomes the endpoint, confirmed 3 s on as ever
    leg.reset(None, "off", 0.0)
    leg.receive(NAT, 160, 5.0)
    leg.reset(SDP, "delayed", 4.9 + 3.0)
    assert (leg.endpoint, leg.confirmed) == (NAT, False)
    leg.receive(NAT, 160, 7.9)
    assert leg.confirmed
    leg = Leg("k")  # heuristic: the SDP's own address confirms at once
    leg.reset(None, "off", 0.0)
    leg.receive(SDP, 160, 5.0)
    leg.reset(SDP, "heuristic", 4.9 + 3.0)
    assert (leg.endpoint, leg.confirmed) == (SDP, True)


def test_a_new_source_after_a_re_invite_is_learned_by_the_new_configuration() -> None:
    """A confirmed party moves (a re-INVITE with its new address): its first packet from there
    can beat the re-INVITE's configuration to the worker and is not learned under the old
    one; the new one learns it. Not where the rules forbid it: strict source before, off or
    asymmetric after."""
    moved = ("198.51.100.20", 6000)
    leg = _leg("immediate", learn_after=0.0)
    leg.receive(NAT, 160, 1.0)
    leg.receive(moved, 160, 5.0)  # after the re-INVITE (4.9), before its configuration
    assert (leg.endpoint, leg.confirmed) == (NAT, True)
    assert leg.unreported() and not leg.unreported()
    leg.reset(moved, "immediate", 4.9)
    assert (leg.endpoint, leg.confirmed) == (moved, True)
    # relayd cleared its copy with the re-INVITE: the confirmation, though the leg was
    # confirmed before and no packet came since, is reported again
    assert leg.unreported()
    leg = _leg("immediate", learn_after=0.0)  # a stray before the re-INVITE is not learned,
    leg.receive(NAT, 160, 1.0)
    leg.receive(OTHER, 160, 2.0)
    leg.receive(NAT, 160, 5.0)  # even with the party's own packets after it
    leg.reset(moved, "immediate", 4.9)
    assert (leg.endpoint, leg.confirmed) == (NAT, False)
    for after in ("off", "asymmetric"):
        leg = _leg("immediate", learn_after=0.0, asymmetric=after == "asymmetric")
        leg.receive(NAT, 160, 1.0)
        leg.receive(moved, 160, 5.0)
        leg.reset(moved, "off" if after == "off" else "immediate", 4.9)
        assert leg.confirmed is False, after
    leg = _leg("immediate", learn_after=0.0, strict=True)  # strict: dropped, not heard
    leg.receive(NAT, 160, 1.0)
    assert leg.receive(moved, 160, 5.0) == Verdict.DROP
    leg.reset(moved, "immediate", 4.9)
    assert (leg.endpoint, leg.confirmed) == (NAT, False)


def test_reset_to_off_goes_back_to_the_sdp_address() -> None:
    leg = _leg("immediate", learn_after=0.0)
    leg.receive(NAT, 160, 1.0)
    leg.reset(SDP, "off", 0.0)
    assert (leg.endpoint, leg.confirmed) == (SDP, False)


def test_heuristic_reset_forgets_the_rank() -> None:
    leg = _leg("heuristic", learn_after=3.0)
    leg.receive(SAME_ADDR, 160, 1.0)
    assert leg.rank == 2
    leg.reset(SDP, "heuristic", 10.0)
    leg.receive(OTHER, 160, 2.0)  # rank 0 wins against the forgotten rank 2
    assert (leg.endpoint, leg.rank) == (OTHER, 0)


def test_a_source_at_the_sdp_address_is_kept_as_the_sdp_address_itself() -> None:
    """Memory per socket: a worker holds the SDP's address tuple, not a copy per learning."""
    expect = ("192.0.2.10", 4000)
    modes: tuple[Learning, ...] = ("immediate", "heuristic", "delayed")
    for mode in modes:
        leg = Leg("k")
        leg.reset(expect, mode, learn_after=0.0)
        leg.receive(("192.0.2.10", int("4000")), 172, 1.0)  # a new tuple, as recvfrom's
        assert leg.endpoint is expect
        assert leg.confirmed


def test_a_leg_is_reported_again_only_once_its_counters_or_confirmation_change() -> None:
    leg = _leg("immediate")
    assert not leg.unreported()  # nothing yet
    leg.receive(NAT, 172, 1.0)
    assert leg.unreported()  # a packet, and the confirmation
    assert not leg.unreported()
    leg.strict = True
    leg.receive(OTHER, 172, 2.0)  # dropped: an error
    assert leg.unreported()
    assert not leg.unreported()
