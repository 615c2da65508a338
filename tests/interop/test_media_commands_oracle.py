"""The recording and media-control commands' replies, relayd beside the live rtpengine 10.5.

Each command is asked, of both daemons, with every way of naming whom it acts on and every
way of getting it wrong (no call-id, an unknown call, an unknown label, tag or address, an
address that is not one); the replies must be the same, byte for byte: clients match
``error-reason`` strings, and these commands spell their unknown call "Unknown call-ID".
"""

from __future__ import annotations

from collections.abc import Iterator
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
COMMANDS = (
    "block media",
    "unblock media",
    "silence media",
    "unsilence media",
    "start forwarding",
    "stop forwarding",
    "start recording",
    "stop recording",
)
SELECTIONS: tuple[dict[str, Any], ...] = (
    {"call-id": "nope"},
    {},
    {"call-id": "c1", "label": "x"},
    {"call-id": "c1", "address": "not-an-address"},
    {"call-id": "c1", "address": "192.0.2.9"},
    {"call-id": "c1", "from-tag": "zz"},
    {"call-id": "c1", "from-tag": "a"},
    {"call-id": "c1", "address": "127.0.0.1"},
    {"call-id": "c1", "label": "caller"},
    {"call-id": "c1", "flags": ["all"]},
)


def _replies(client: NgClient) -> list[dict[str, Any]]:
    offer = {"call-id": "c1", "from-tag": "a", "sdp": SDP, "label": "caller"}
    assert client.request({"command": "offer", **offer})["result"] == "ok"
    replies = []
    for command in COMMANDS:
        for selection in SELECTIONS:
            replies.append(client.request({"command": command, **selection}))
    return replies


@pytest.fixture(scope="module")
def rtpengine_replies(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[dict[str, Any]]]:
    workdir: Path = tmp_path_factory.mktemp("rtpengine-media-commands")
    with (
        running_rtpengine(workdir, ng_port=22244, port_min=46000, port_max=46099) as daemon,
        daemon.client() as client,
    ):
        yield _replies(client)


def test_relayd_answers_as_rtpengine(
    rtpengine_replies: list[dict[str, Any]], tmp_path: Path
) -> None:
    with (
        running_relayd(tmp_path, ng_port=22245, port_min=46100, port_max=46199) as daemon,
        daemon.client() as client,
    ):
        ours = _replies(client)
    asked = [(command, selection) for command in COMMANDS for selection in SELECTIONS]
    differences = [
        f"{command} {selection}: rtpengine {theirs}, relayd {mine}"
        for (command, selection), theirs, mine in zip(asked, rtpengine_replies, ours, strict=True)
        if theirs != mine
    ]
    assert not differences, "\n".join(differences)
