"""Workers' reports folded into streams: deltas, restarts, ICE candidate sockets."""

from __future__ import annotations

from relayd.calls.model import Endpoint, LocalAddress, Stream
from relayd.ipc import SocketStats, Stats
from relayd.plane.reports import OnTraffic, Reports

LAN = LocalAddress("default", "192.0.2.1", "192.0.2.1")
NOW = 1_800_000_000.0  # wall clock when a report arrives; reports say now=100.0 (monotonic)
OWN = "192.0.2.1 30000"
ALIAS = "198.51.100.1 30000"  # the same stream's ICE candidate on a second address


def stream() -> Stream:
    return Stream(LAN, 30000, rtcp=False, call_id="call-1")


def report(*sockets: SocketStats, worker: int = 0) -> Stats:
    return Stats(worker=worker, sockets=sockets, now=100.0)


def counters(
    key: str,
    packets: int,
    *,
    errors: int = 0,
    endpoint: str = "",
    confirmed: bool = False,
    dtls: str = "",
    ice: str = "",
) -> SocketStats:
    """A worker's totals for one socket: 160 bytes a packet."""
    return SocketStats(
        key, packets, 160 * packets, errors, 99.0, endpoint, confirmed, dtls=dtls, ice=ice
    )


def fold(reports: Reports, stats: Stats, on_traffic: OnTraffic | None) -> tuple[int, set[str]]:
    return reports.fold(stats, on_traffic, NOW)


def test_totals_from_the_worker_become_deltas_on_the_stream() -> None:
    reports, s = Reports(), stream()
    reports.track(OWN, s)
    seen: list[tuple[int, int, int]] = []

    first = fold(
        reports, report(counters(OWN, 10, errors=1)), lambda _s, p, b, e: seen.append((p, b, e))
    )
    second = fold(
        reports, report(counters(OWN, 25, errors=1)), lambda _s, p, b, e: seen.append((p, b, e))
    )

    assert (first[0], second[0]) == (10, 15)
    assert (s.stats.packets, s.stats.bytes, s.stats.errors) == (25, 4000, 1)
    assert seen == [(10, 1600, 1), (15, 2400, 0)]


def test_a_restarted_worker_counts_from_zero_and_nothing_is_lost_or_subtracted() -> None:
    reports, s = Reports(), stream()
    reports.track(OWN, s)
    fold(reports, report(counters(OWN, 50)), None)

    packets, _ = fold(reports, report(counters(OWN, 7)), None)  # the new worker's first report

    assert packets == 7
    assert s.stats.packets == 57


def test_reports_about_untracked_or_forgotten_sockets_are_ignored() -> None:
    reports, s = Reports(), stream()
    reports.track(OWN, s)
    reports.forget(OWN)

    assert fold(reports, report(counters(OWN, 5), counters("192.0.2.9 4000", 3)), None) == (
        0,
        set(),
    )
    assert s.stats.packets == 0


def test_learned_endpoint_and_a_change_of_confirmation_are_reported_once() -> None:
    reports, s = Reports(), stream()
    reports.track(OWN, s)

    _, changed = fold(
        reports, report(counters(OWN, 1, endpoint="203.0.113.5 4000", confirmed=True)), None
    )
    _, again = fold(
        reports, report(counters(OWN, 2, endpoint="203.0.113.5 4000", confirmed=True)), None
    )

    assert s.endpoint == Endpoint("203.0.113.5", 4000)
    assert s.confirmed
    assert changed == {"call-1"}
    assert again == set()


def test_a_learned_endpoint_is_held_once_per_stream_not_once_per_report() -> None:
    """Memory per call: the SDP's endpoint object is kept when the party sends from it, a
    learned one is made once; the counters of the stream's own socket are kept in the
    stream, and a candidate socket's under the key it was tracked with, not under each
    report's decoded copy of it."""
    reports, s = Reports(), stream()
    sdp = s.endpoint = s.advertised_endpoint = Endpoint("203.0.113.5", 4000)
    tracked = "".join(["198.51.100.1", " 30000"])  # a string of its own, as socket_key's
    reports.track(OWN, s)
    reports.track(tracked, s)

    fold(reports, report(counters(OWN, 1, endpoint="203.0.113.5 4000")), None)
    assert s.endpoint is sdp
    assert (s.reported_packets, s.reported_bytes) == (1, 160)
    fold(reports, report(counters(ALIAS, 1)), None)
    assert list(reports.reported) == [ALIAS]
    assert next(iter(reports.reported)) is tracked

    fold(reports, report(counters(OWN, 2, endpoint="203.0.113.9 5000")), None)
    learned = s.endpoint
    fold(reports, report(counters(OWN, 3, endpoint="203.0.113.9 5000")), None)
    assert learned == Endpoint("203.0.113.9", 5000)
    assert s.endpoint is learned
    assert s.advertised_endpoint is sdp


def test_the_nominated_candidate_socket_speaks_for_the_stream_until_it_loses_it() -> None:
    reports, s = Reports(), stream()
    assert reports.track(OWN, s)
    assert reports.track(ALIAS, s)
    assert not reports.track(ALIAS, s)  # already known: no second share of the key

    # the party nominated the candidate on the second address
    fold(reports, report(counters(ALIAS, 1, endpoint="203.0.113.5 4000", confirmed=True)), None)
    # the primary socket's unconfirmed report does not undo it
    fold(reports, report(counters(OWN, 1, endpoint="203.0.113.9 5000", confirmed=False)), None)
    assert (s.endpoint, s.confirmed) == (Endpoint("203.0.113.5", 4000), True)

    # the candidate socket loses its confirmation: the stream is free again
    fold(reports, report(counters(ALIAS, 2, endpoint="203.0.113.5 4000", confirmed=False)), None)
    assert not s.confirmed
    fold(reports, report(counters(OWN, 2, endpoint="203.0.113.9 5000", confirmed=True)), None)
    assert (s.endpoint, s.confirmed) == (Endpoint("203.0.113.9", 5000), True)


def test_dtls_state_comes_only_from_the_primary_socket_and_ice_keeps_nominated() -> None:
    reports, s = Reports(), stream()
    reports.track(OWN, s)
    reports.track(ALIAS, s)

    fold(reports, report(counters(OWN, 1, dtls="connected", ice="nominated")), None)
    fold(reports, report(counters(ALIAS, 1, dtls="failed: alias", ice="checking")), None)

    assert s.dtls == "connected"
    assert s.ice == "nominated"


def test_last_packet_is_moved_from_the_workers_clock_to_the_wall_clock() -> None:
    reports, s = Reports(), stream()
    reports.track(OWN, s)
    fold(reports, report(counters(OWN, 1)), None)  # the packet came 1 s before the report
    assert s.stats.last_packet == NOW - 1.0


def test_a_socket_forgotten_and_tracked_again_counts_from_its_next_report() -> None:
    reports, s = Reports(), stream()
    reports.track(OWN, s)
    fold(reports, report(counters(OWN, 40)), None)
    reports.forget(OWN)  # the worker let it go (a fork moved away) …
    assert reports.track(OWN, s)  # … and it came back: a new worker-side count from zero
    packets, _ = fold(reports, report(counters(OWN, 45)), None)
    assert packets == 45  # not 45 - 40: the old total went with the socket
    assert s.stats.packets == 85


def test_a_socket_that_counts_into_another_stream_keeps_its_totals() -> None:
    """A plan that gives a socket another stream object (the same socket, or a candidate
    socket becoming a stream's own) moves its worker totals along: nothing counted twice."""
    reports, first, second = Reports(), stream(), stream()
    reports.track(OWN, first)
    fold(reports, report(counters(OWN, 10)), None)
    reports.track(OWN, second)
    packets, _ = fold(reports, report(counters(OWN, 12)), None)
    assert (packets, first.stats.packets, second.stats.packets) == (2, 10, 2)

    other = Stream(LocalAddress("b", "198.51.100.1", "198.51.100.1"), 30000, rtcp=False)
    reports.track(ALIAS, first)  # a candidate socket of the first stream …
    fold(reports, report(counters(ALIAS, 5)), None)
    reports.track(ALIAS, other)  # … now the own socket of another
    assert reports.reported == {}
    packets, _ = fold(reports, report(counters(ALIAS, 7)), None)
    assert (packets, other.stats.packets, other.reported_packets) == (2, 2, 7)


def test_errors_never_count_backwards() -> None:
    reports, s = Reports(), stream()
    reports.track(OWN, s)
    fold(reports, report(counters(OWN, 10, errors=3)), None)
    fold(reports, report(counters(OWN, 12, errors=1)), None)  # a report out of step
    assert s.stats.errors == 3


def transcoding(
    key: str, packets: int, codec: str, frames: int, sent: int, errors: int = 0
) -> SocketStats:
    return SocketStats(
        key,
        packets,
        160 * packets,
        0,
        99.0,
        codec=codec,
        frames=frames,
        codec_sent=sent,
        codec_errors=errors,
    )


def test_codec_counters_sum_by_codec_pair_across_reports_and_restarts() -> None:
    reports, s, t = Reports(), stream(), stream()
    reports.track(OWN, s)
    reports.track(ALIAS, t)
    fold(reports, report(transcoding(OWN, 10, "PCMU->PCMA", 10, 10)), None)
    fold(reports, report(transcoding(OWN, 25, "PCMU->PCMA", 25, 24, errors=1)), None)
    fold(reports, report(transcoding(ALIAS, 5, "PCMU->PCMA", 5, 5)), None)
    # the worker restarted: its engine counts from zero again, nothing is subtracted
    fold(reports, report(transcoding(OWN, 3, "PCMU->PCMA", 3, 3), worker=1), None)
    totals = reports.codec_totals["PCMU->PCMA"]
    assert (totals.frames, totals.sent, totals.errors) == (33, 32, 1)
    assert reports.transcoding() == ({"PCMU->PCMA": 2}, 0)


def test_a_failed_plan_is_counted_apart_and_a_dropped_plan_or_socket_transcodes_nothing() -> None:
    reports, s, t = Reports(), stream(), stream()
    reports.track(OWN, s)
    reports.track(ALIAS, t)
    fold(reports, report(transcoding(OWN, 4, "failed: no encoder for AMR", 0, 0)), None)
    fold(reports, report(transcoding(ALIAS, 4, "opus->PCMU", 4, 4)), None)
    assert reports.transcoding() == ({"opus->PCMU": 1}, 1)
    assert "failed: no encoder for AMR" not in reports.codec_totals
    fold(reports, report(counters(ALIAS, 6)), None)  # re-planned: no codec work any more
    reports.forget(OWN)
    assert reports.transcoding() == ({}, 0)
    assert reports.codec_totals["opus->PCMU"].frames == 4
