"""The codec plan's text form: what the supervisor writes is what the worker reads."""

from __future__ import annotations

import pytest

from relayd.ipc import Forward, SocketSpec, decode, encode
from relayd.transcode.plan import CodecPlan, Format, PlanError, parse

PCMU = Format(0, "PCMU", 8000)
PCMA = Format(8, "PCMA", 8000, ptime=30)
OPUS = Format(96, "opus", 48000, 2, "useinbandfec=1", 20)
DTMF8 = Format(101, "telephone-event", 8000, fmtp="0-15")
DTMF48 = Format(110, "telephone-event", 48000, fmtp="0-15")


def test_round_trip() -> None:
    plan = CodecPlan(
        passthrough=(0,),
        decode=(PCMA, OPUS),
        encode=PCMU,
        dtmf=(DTMF48,),
        dtmf_out=DTMF8,
        cn=(Format(13, "CN", 8000),),
        extra={"later": 1},
    )
    assert parse(plan.to_text()) == plan


def test_empty_text_is_no_plan() -> None:
    assert parse("") is None
    assert parse(CodecPlan().to_text()) == CodecPlan()


@pytest.mark.parametrize(
    "text",
    [
        "{",
        "[]",
        '{"p": ["0"]}',
        '{"d": [[0, "PCMU"]]}',
        '{"e": 5}',
        '{"x": []}',
        '{"d": [[0, 1, 8000, 1, "", 0]]}',
    ],
)
def test_bad_text(text: str) -> None:
    with pytest.raises(PlanError):
        parse(text)


def test_carried_in_a_forward() -> None:
    plan = CodecPlan(decode=(PCMA,), encode=PCMU)
    forward = Forward("c 0", (SocketSpec("127.0.0.1 30000", codecs=plan.to_text()),))
    got = decode(encode(forward))
    assert isinstance(got, Forward)
    assert parse(got.sockets[0].codecs) == plan
