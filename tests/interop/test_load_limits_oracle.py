"""Load-limit refusals, relayd beside the live rtpengine 10.5 (relayd/calls/load.py).

Both daemons start with the same limit and get the same requests: offers of new calls with
and without ``supports: ["load limit"]`` (and with a feature neither knows beside it), an
answer, a query and a delete of a call that was refused, then ``statistics``. The replies
must be the same, byte for byte, and so must ``rejectedsessions`` and the error count:
Kamailio moves a call to the next instance on exactly these answers.

``max-load`` compares the host's load average: with ``max-load = 0.01`` both refuse while
the load is above that (always on a machine that runs this test; the test is skipped on one
whose load reads 0.05 or less). ``max-cpu`` and ``max-bandwidth`` need a second of samples
and a busy host or media; tests/unit/test_load_limits.py and tests/netns/test_load_limits.py
hold their cases.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from relayd.ng.client import NgClient
from tests.support.relayd import running_relayd
from tests.support.rtpengine import rtpengine_installed, running_rtpengine

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(rtpengine_installed() is None, reason="rtpengine not installed"),
]

SDP = (
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio 40000 RTP/AVP 0\r\n"
)
LIMITS = {"max-sessions": "0", "max-load": "0.01"}


def _conversation(client: NgClient) -> list[Any]:
    offer = {"command": "offer", "from-tag": "a", "sdp": SDP}
    replies: list[Any] = [
        client.request({**offer, "call-id": "c1", "supports": ["load limit"]}),
        client.request({**offer, "call-id": "c2"}),
        client.request({**offer, "call-id": "c3", "supports": ["load limit", "x"]}),
        client.request(
            {"command": "answer", "call-id": "c1", "from-tag": "a", "to-tag": "b", "sdp": SDP}
        ),
        client.request({"command": "query", "call-id": "c1"}),
        client.request({"command": "delete", "call-id": "c1", "from-tag": "a"}),
    ]
    statistics = client.request({"command": "statistics"})["statistics"]
    control = statistics["controlstatistics"]
    proxies = control.get("proxies") or [{}]
    errors = proxies[0].get("errorcount", control.get("errorcount"))
    replies.append(
        {"rejectedsessions": statistics["totalstatistics"]["rejectedsessions"], "errors": errors}
    )
    return replies


@pytest.mark.parametrize("limit", sorted(LIMITS))
def test_refusals_as_rtpengine(limit: str, tmp_path: Path) -> None:
    if limit == "max-load" and os.getloadavg()[0] <= 0.05:
        pytest.skip("the host's load average is too low to be over max-load 0.01")
    value = LIMITS[limit]
    theirs_dir, ours_dir = tmp_path / "rtpengine", tmp_path / "relayd"
    theirs_dir.mkdir()
    ours_dir.mkdir()
    with (
        running_rtpengine(
            theirs_dir, ng_port=44021, port_min=44700, port_max=44749, extra=[f"--{limit}={value}"]
        ) as rtpengine,
        rtpengine.client() as client,
    ):
        theirs = _conversation(client)
    with (
        running_relayd(
            ours_dir, ng_port=44022, port_min=44750, port_max=44799, extra=[f"--{limit}", value]
        ) as relayd,
        relayd.client() as client,
    ):
        ours = _conversation(client)
    assert ours == theirs
    assert theirs[0]["result"] == "load limit"  # the limit did refuse: the test means something
