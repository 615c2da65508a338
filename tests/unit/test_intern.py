"""relayd.sdp.intern.Shared: one copy per distinct value, within a bound."""

from __future__ import annotations

from relayd.sdp.intern import Shared


def test_equal_values_come_back_as_the_first_copy() -> None:
    shared = Shared[str](4)
    first = "".join(["au", "dio"])
    again = "".join(["aud", "io"])
    assert again is not first
    assert shared(first) is first
    assert shared(again) is first


def test_past_the_bound_new_values_are_used_as_they_are() -> None:
    shared = Shared[str](2)
    kept = [shared(f"w{n}") for n in range(2)]
    late = "".join(["w", "9"])
    assert shared(late) is late
    assert shared("".join(["w", "9"])) is not late  # not kept: the table is full
    assert shared("".join(["w", "0"])) is kept[0]
