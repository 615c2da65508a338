"""Cookie reply cache: two generations, a reply lives at least one and under two lifetimes."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from relayd.ng.cache import ReplyCache


def test_hit_and_miss() -> None:
    cache = ReplyCache(lifetime=30)
    assert cache.get("a", 0.0) is None
    cache.put("a", b"a d6:result2:oke", 0.0)
    assert cache.get("a", 0.0) == b"a d6:result2:oke"
    assert cache.get("b", 0.0) is None
    assert len(cache) == 1


def test_reply_survives_one_swap_and_dies_at_the_second() -> None:
    cache = ReplyCache(lifetime=30)
    cache.put("a", b"A", 100.0)  # the first call starts the first generation
    assert cache.get("a", 129.9) == b"A"
    assert cache.get("a", 130.0) == b"A"  # swapped into the previous generation
    assert cache.get("a", 159.9) == b"A"
    assert cache.get("a", 160.0) is None
    assert len(cache) == 0


def test_reply_put_late_in_a_generation_still_lives_a_full_lifetime() -> None:
    cache = ReplyCache(lifetime=30)
    cache.get("x", 0.0)
    cache.put("late", b"L", 29.0)
    assert cache.get("late", 59.0) == b"L"
    assert cache.get("late", 60.0) is None  # 31 s after it was stored


def test_late_swap_does_not_extend_a_reply_beyond_two_lifetimes() -> None:
    # the swap due at 30 only happens when the next request comes, at 59.9;
    # the reply stored at 0 must still be gone at 60, not at 89.9
    cache = ReplyCache(lifetime=30)
    cache.put("a", b"A", 0.0)
    assert cache.get("a", 59.9) == b"A"
    assert cache.get("a", 60.0) is None


def test_long_silence_expires_everything() -> None:
    cache = ReplyCache(lifetime=30)
    cache.put("a", b"A", 0.0)
    cache.put("b", b"B", 29.0)
    assert cache.get("b", 75.0) is None
    assert cache.get("a", 75.0) is None
    cache.put("c", b"C", 75.0)
    assert cache.get("c", 75.0 + 29.0) == b"C"


@settings(max_examples=300, deadline=None)
@given(
    lifetime=st.integers(min_value=1, max_value=60),
    gaps=st.lists(st.integers(min_value=0, max_value=100), min_size=1, max_size=40),
    stored_at_step=st.integers(min_value=0, max_value=39),
)
def test_lifetime_property(lifetime: int, gaps: list[int], stored_at_step: int) -> None:
    """Whatever the request timing: visible for ≥ lifetime, gone before 2 × lifetime."""
    cache = ReplyCache(lifetime=lifetime)
    now = 0
    stored: int | None = None
    for step, gap in enumerate(gaps):
        now += gap
        if step == min(stored_at_step, len(gaps) - 1):
            cache.put("k", b"R", now)
            stored = now
            continue
        got = cache.get("k", now)
        if stored is None:
            assert got is None
        elif now - stored <= lifetime:
            assert got == b"R", (stored, now)
        elif now - stored >= 2 * lifetime:
            assert got is None, (stored, now)
