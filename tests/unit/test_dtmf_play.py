"""relayd.calls.dtmf_play: ``play DTMF``'s values as rtpengine 10.5 reads them."""

from __future__ import annotations

import pytest

from relayd.calls.dtmf_play import DtmfOrder, code_of, order_of
from relayd.ng.message import NgError


@pytest.mark.parametrize(
    ("value", "code"),
    [
        ("0", 0),
        ("9", 9),
        ("*", 10),
        ("#", 11),
        ("A", 12),
        ("D", 15),
        (b"#", 11),
        (0, 0),
        (15, 15),
        ("12", 12),  # a longer string is a number
        (" 7", 7),
        (42, 10),  # not a code: the character "*"
        (305, 1),  # cut to a char: 49, "1"
    ],
)
def test_code_of(value: object, code: int) -> None:
    assert code_of(value) == code


@pytest.mark.parametrize("value", [None, "x", "a", "", "16x", 16, -1, "1_0", True])
def test_code_out_of_range(value: object) -> None:
    with pytest.raises(NgError, match=r"^Out of range 'code' specified$"):
        code_of(value)


def test_defaults() -> None:
    assert order_of({"code": "5"}) == DtmfOrder(code=5, duration=250, volume=-9999, pause=100)


def test_clamps_and_volume() -> None:
    assert order_of({"digit": 3, "duration": 50, "pause": 9000, "volume": 10}) == DtmfOrder(
        3, 100, -10, 5000
    )
    assert order_of({"digit": "#", "duration": "6000", "pause": "30", "volume": "-8"}) == DtmfOrder(
        11, 5000, -8, 100
    )
    assert order_of({"code": 1, "duration": 0, "pause": 0}).duration == 250


def test_later_key_counts() -> None:
    assert order_of({"code": "1", "digit": "2"}).code == 2
    assert order_of({"digit": "2", "code": "1"}).code == 1


def test_missing_digit() -> None:
    with pytest.raises(NgError, match=r"^Out of range 'code' specified$"):
        order_of({"duration": 100})
