"""Media port pairs: even RTP + odd RTCP, inside the range, random order, exhaustion."""

from __future__ import annotations

import random

import pytest

from relayd.calls.ports import DescriptorsExhausted, PortAllocator, PortPool, PortsExhausted
from tests.unit.calls import FakeBinder


def _pool(port_min: int, port_max: int, seed: int = 1) -> PortPool:
    return PortPool(port_min, port_max, rng=random.Random(seed))


def _drain(pool: PortPool) -> list[int]:
    ports = []
    while True:
        try:
            ports.append(pool.allocate())
        except PortsExhausted:
            return ports


def test_pairs_are_even_odd_and_within_range() -> None:
    pool = _pool(30000, 30099)
    ports = _drain(pool)
    assert len(ports) == 50
    assert sorted(ports) == list(range(30000, 30100, 2))
    for port in ports:
        assert port % 2 == 0
        assert port >= 30000 and port + 1 <= 30099


def test_order_is_random_and_depends_on_the_generator() -> None:
    first = _drain(_pool(30000, 39999, seed=1))[:20]
    second = _drain(_pool(30000, 39999, seed=2))[:20]
    assert first != second
    assert first != sorted(first)
    assert _drain(_pool(30000, 39999, seed=1))[:20] == first


def test_default_generators_are_seeded_independently() -> None:
    # seeded from the OS: two pools (two daemons) never hand out the same sequence
    orders = {tuple(_drain(PortPool(30000, 39999))[:20]) for _ in range(5)}
    assert len(orders) == 5


def test_exhaustion_raises_ran_out_of_ports() -> None:
    pool = _pool(40000, 40003)
    assert sorted([pool.allocate(), pool.allocate()]) == [40000, 40002]
    with pytest.raises(PortsExhausted) as info:
        pool.allocate()
    assert str(info.value) == "Ran out of ports"
    assert pool.in_use == 2


def test_release_makes_a_pair_reusable() -> None:
    pool = _pool(40000, 40001)
    port = pool.allocate()
    assert port == 40000
    with pytest.raises(PortsExhausted):
        pool.allocate()
    pool.release(port)
    assert pool.in_use == 0
    assert pool.allocate() == 40000


def test_release_of_unknown_or_twice_released_port_is_harmless() -> None:
    pool = _pool(40000, 40005)
    port = pool.allocate()
    pool.release(port)
    pool.release(port)
    pool.release(12345)
    assert pool.capacity == 3
    assert sorted(_drain(pool)) == [40000, 40002, 40004]


def test_released_pair_goes_back_at_a_random_position() -> None:
    pool = _pool(30000, 31999)
    port = pool.allocate()
    pool.release(port)
    # not handed out again at once (seeded, so this holds every run)
    assert pool.allocate() != port


@pytest.mark.parametrize("seed", range(5))
def test_a_released_pair_waits_until_every_free_pair_was_handed_out(seed: int) -> None:
    """Its sockets may still be open in a worker for a moment: not reused while any pair
    that was free before it is left."""
    pool = PortPool(30000, 31999, rng=random.Random(seed))
    released = [pool.allocate() for _ in range(10)]
    for port in released:
        pool.release(port)
    free = pool.capacity - pool.in_use - len(released)
    first = [pool.allocate() for _ in range(free)]
    assert not set(first) & set(released)
    assert sorted(pool.allocate() for _ in released) == sorted(released)
    with pytest.raises(PortsExhausted):  # nothing lost, nothing handed out twice
        pool.allocate()
    assert sorted([*first, *released]) == [*range(30000, 31999, 2)]


@pytest.mark.parametrize(
    ("port_min", "port_max", "pairs"),
    [
        (30000, 40000, [*range(30000, 40000, 2)]),  # 39999/40000 is not a pair: 40000 is even
        (30000, 39999, [*range(30000, 39999, 2)]),
        (30001, 30004, [30002]),  # odd min: first pair starts above it; 30004/30005 overflows
        (30001, 30005, [30002, 30004]),
        (30000, 30001, [30000]),
        (30000, 30000, []),
        (30001, 30002, []),
        (30001, 30001, []),
        (65534, 65535, [65534]),
        (1, 4, [2]),
    ],
)
def test_capacity_at_range_edges(port_min: int, port_max: int, pairs: list[int]) -> None:
    pool = _pool(port_min, port_max)
    assert pool.capacity == len(pairs)
    assert sorted(_drain(pool)) == pairs
    assert pool.capacity == len(pairs)
    assert pool.in_use == len(pairs)


def test_reserve_specific_pair() -> None:
    pool = _pool(30000, 30009)
    assert pool.reserve(30004) is True
    assert pool.reserve(30004) is False  # taken
    assert pool.reserve(30005) is False  # odd
    assert pool.reserve(29998) is False  # below range
    assert pool.reserve(30010) is False  # above range
    assert pool.in_use == 1
    assert 30004 not in _drain(pool)


def test_allocate_like_takes_the_same_number_on_another_address_where_it_is_free() -> None:
    """rtpengine binds one port number on every address of a logical interface."""
    ports = PortAllocator(30000, 30999, 1)
    first = ports.allocate("203.0.113.1")
    assert ports.allocate_like("2001:db8::1", first) == first
    # taken there already: any other free pair
    again = ports.allocate_like("2001:db8::1", first)
    assert again != first and again % 2 == 0 and 30000 <= again <= 30998


def test_allocate_like_skips_a_port_another_program_holds() -> None:
    binder = FakeBinder(taken={("2001:db8::1", 30100)})
    ports = PortAllocator(30000, 30999, 1, binder)
    assert ports.allocate_like("2001:db8::1", 30100) != 30100
    assert ("2001:db8::1", 30100) in binder.refused


def test_allocate_like_leaves_a_cooling_pair_alone() -> None:
    """A pair just released may still be open in a worker: not taken again at once."""
    ports = PortAllocator(30000, 30999, 1)
    other = ports.allocate("2001:db8::1")
    ports.release("2001:db8::1", other)
    assert ports.allocate_like("2001:db8::1", other) != other


def test_claim_takes_a_restored_calls_pairs_back_all_or_nothing() -> None:
    binder = FakeBinder(taken={("203.0.113.1", 30500)})
    ports = PortAllocator(30000, 30999, 2, binder)  # two workers: 30000-30499, 30500-30999
    assert ports.claim([("203.0.113.1", 30600), ("2001:db8::1", 30600)]) == 1
    assert binder.bound == [("203.0.113.1", 30600), ("2001:db8::1", 30600)]
    assert ports.pool("203.0.113.1", 1).reserve(30600) is False  # kept
    # one pair another program holds: nothing of the call is kept
    assert ports.claim([("203.0.113.1", 30700), ("203.0.113.1", 30500)]) is None
    assert binder.released == [("203.0.113.1", 30700)]
    assert ports.pool("203.0.113.1", 1).reserve(30700) is True  # given back
    assert ports.pool("203.0.113.1", 1).reserve(30500) is True  # never kept
    # a pair already taken (another restored call has it): refused the same way, and the
    # call that has it keeps it
    assert ports.claim([("203.0.113.1", 30600)]) is None
    assert ports.pool("203.0.113.1", 1).reserve(30600) is False
    assert ports.claim([]) == 0  # a call with no media yet


# -- one descriptor per port: a worker's budget ----------------------------------------------


def test_a_worker_gets_no_more_pairs_than_its_descriptor_budget() -> None:
    full: list[int] = []
    ports = PortAllocator(30000, 30999, 2, budget=6, on_full=full.append)  # 3 pairs a worker
    taken = [ports.allocate("203.0.113.1", 0) for _ in range(2)]
    taken.append(ports.allocate_like("2001:db8::1", taken[0], 0))
    with pytest.raises(PortsExhausted):
        ports.allocate("203.0.113.1", 0)
    with pytest.raises(PortsExhausted):
        ports.allocate_like("2001:db8::1", taken[1], 0)
    assert full == [0, 0] and ports.sockets == [6, 0]
    assert ports.allocate("203.0.113.1", 1) >= 30500  # the other worker has its own budget
    ports.release("2001:db8::1", taken[0])  # a pair given back makes room again
    assert ports.sockets[0] == 4
    ports.allocate("203.0.113.1", 0)
    ports.release("2001:db8::1", taken[0])  # twice: nothing more given back
    assert ports.sockets == [6, 2]


def test_a_restored_call_past_the_budget_is_refused_whole() -> None:
    ports = PortAllocator(30000, 30999, 1, budget=4)
    assert ports.claim([("203.0.113.1", 30100), ("2001:db8::1", 30100)]) == 0
    assert ports.claim([("203.0.113.1", 30200)]) is None
    assert ports.sockets == [4]
    assert ports.pool("203.0.113.1", 0).reserve(30200) is True  # not kept by the refusal


class _NoDescriptors(FakeBinder):
    """Binds until ``left`` pairs are bound, then has no descriptor for any socket."""

    def __init__(self, left: int) -> None:
        super().__init__()
        self.left = left

    def bind(self, address: str, port: int) -> bool:
        if self.left == 0:
            raise DescriptorsExhausted("[Errno 24] Too many open files")
        self.left -= 1
        return super().bind(address, port)


def test_no_descriptor_left_refuses_at_once_and_keeps_every_pair_usable() -> None:
    """A bind that fails for want of descriptors is no fault of the port: the pair goes back
    (it does not stay out of use as one another program holds would), and no other pair is
    tried: the offer gets "Ran out of ports" at once."""
    binder = _NoDescriptors(left=1)
    ports = PortAllocator(30000, 30009, 1, binder)  # five pairs
    first = ports.allocate("203.0.113.1")
    for _ in range(3):
        with pytest.raises(PortsExhausted):
            ports.allocate("203.0.113.1")
        with pytest.raises(PortsExhausted):
            ports.allocate_like("2001:db8::1", first)
    pool = ports.pool("203.0.113.1")
    assert (pool.in_use, pool.free) == (1, 4)  # the four others still there to hand out
    binder.left = 4  # descriptors again (calls ended elsewhere)
    assert len({ports.allocate("203.0.113.1") for _ in range(4)}) == 4
