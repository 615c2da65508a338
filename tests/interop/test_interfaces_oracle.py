"""Round-robin interface pools, relayd beside the live rtpengine 10.5.

Both daemons get the same interfaces (``pub:1``, ``pub:2``, ``pub:3`` and ``priv`` on
127.0.0.1-4) and the same offers and answers: ``direction`` naming the pool ``pub``, no
``direction`` (the first interface is ``pub:1``, so its pool), rtpengine's legacy
``round-robin-calls``, one side named and the other pooled. Which address each party gets,
in what order, must be the same; so must the pool that skips a full interface and the
"Ran out of ports" when every one is full. Kamailio does not see the difference: it is the
operator's way to carry more calls than one address has ports.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from relayd.ng.client import NgClient
from tests.support.relayd import running_relayd
from tests.support.rtpengine import rtpengine_installed, running_rtpengine

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(rtpengine_installed() is None, reason="rtpengine not installed"),
]

INTERFACES = ("pub:1/127.0.0.1", "pub:2/127.0.0.2", "pub:3/127.0.0.3", "priv/127.0.0.4")
RTPENGINE_NG, RELAYD_NG = 22294, 22295
RTPENGINE_PORTS, RELAYD_PORTS = (49600, 49699), (49700, 49799)
SMALL = 2  # pairs per address in the exhaustion case: ports port_min .. port_min + 3

Reply = tuple[str, str]  # (result or error-reason, the c= address of the SDP)


def _sdp(port: int) -> str:
    return (
        "v=0\r\no=- 1 1 IN IP4 198.51.100.1\r\ns=-\r\nc=IN IP4 198.51.100.1\r\nt=0 0\r\n"
        f"m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n"
    )


def _seen(reply: dict[str, object]) -> Reply:
    if reply.get("result") != "ok":
        return (str(reply.get("error-reason")), "")
    match = re.search(r"c=IN IP4 (\S+)", str(reply["sdp"]))
    assert match is not None, reply
    return ("ok", match.group(1))


def _call(client: NgClient, direction: list[str] | None) -> tuple[Reply, Reply]:
    """An offer and its answer; what the callee and then the caller were told."""
    call_id = uuid.uuid4().hex
    extra = {"direction": direction} if direction else {}
    offer = client.call(
        "offer", **{"call-id": call_id, "from-tag": "a", "sdp": _sdp(5000)}, **extra
    )
    answer = client.call(
        "answer",
        **{"call-id": call_id, "from-tag": "a", "to-tag": "b", "sdp": _sdp(6000)},
        **({"direction": direction[::-1]} if direction else {}),
    )
    return _seen(offer), _seen(answer)


def _turns(client: NgClient) -> list[tuple[Reply, Reply]]:
    directions: list[list[str] | None] = [
        ["pub", "pub"],
        ["pub", "pub"],
        None,
        None,
        None,
        ["round-robin-calls", "round-robin-calls"],
        ["round-robin-calls", "round-robin-calls"],
        ["pub:2", "pub"],
        ["pub:2", "pub"],
        ["pub", "priv"],
        ["pub", "priv"],
    ]
    return [_call(client, d) for d in directions]


def _exhaustion(client: NgClient) -> list[Reply]:
    """pub:1 filled by name, then offers to the pool until nothing is left. (No offer fails
    half-way before the last ones: rtpengine gives the ports of a failed offer back a
    moment later, from another thread, so what follows one would be a race.)"""
    seen = []
    for direction in [["pub:1", "pub:1"]] + [["pub", "pub"]] * 4:
        offer = {"call-id": uuid.uuid4().hex, "from-tag": "a", "sdp": _sdp(5000)}
        seen.append(_seen(client.call("offer", **offer, direction=direction)))
    return seen


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("interfaces-oracle")


@contextmanager
def _both(workdir: Path, name: str, *, small: bool) -> Iterator[tuple[NgClient, NgClient]]:
    """rtpengine and relayd with the same interfaces: their ng clients."""
    spans = [
        (low, low + 2 * SMALL - 1) if small else (low, high)
        for low, high in (RTPENGINE_PORTS, RELAYD_PORTS)
    ]
    (rte_min, rte_max), (rel_min, rel_max) = spans
    for daemon in ("rtpengine", "relayd"):
        (workdir / f"{daemon}-{name}").mkdir()
    with (
        running_rtpengine(
            workdir / f"rtpengine-{name}",
            ng_port=RTPENGINE_NG,
            port_min=rte_min,
            port_max=rte_max,
            interface=INTERFACES,
        ) as rtpengine,
        running_relayd(
            workdir / f"relayd-{name}",
            ng_port=RELAYD_NG,
            port_min=rel_min,
            port_max=rel_max,
            interface=INTERFACES,
            extra=["--num-threads", "1"],  # one worker: the whole range is one slice
        ) as relayd,
        rtpengine.client(timeout=3) as rte_client,
        relayd.client(timeout=3) as relayd_client,
    ):
        yield rte_client, relayd_client


def test_pools_take_turns_as_rtpengine(workdir: Path) -> None:
    with _both(workdir, "turns", small=False) as (rtpengine, relayd):
        expected = _turns(rtpengine)
        got = _turns(relayd)
    assert got == expected
    # the sequence itself, so that a change on both sides is seen too: the callee (receiver
    # of the offer) takes its turn before the caller, each party keeps its interface
    assert [(o[1], a[1]) for o, a in expected[:2]] == [
        ("127.0.0.1", "127.0.0.2"),
        ("127.0.0.3", "127.0.0.1"),
    ]
    assert {o[0] for o, _ in expected} == {"ok"}


def test_a_full_interface_is_skipped_as_rtpengine(workdir: Path) -> None:
    with _both(workdir, "small", small=True) as (rtpengine, relayd):
        expected = _exhaustion(rtpengine)
        got = _exhaustion(relayd)
    assert got == expected
    # pub:1 is full after the first call; its turns are skipped (callees on pub:2, callers
    # on pub:3) until no interface has room
    assert expected == [
        ("ok", "127.0.0.1"),
        ("ok", "127.0.0.2"),
        ("ok", "127.0.0.2"),
        ("Ran out of ports", ""),
        ("Ran out of ports", ""),
    ]
