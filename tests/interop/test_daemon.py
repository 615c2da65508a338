"""relayd as an operator runs it: the deployment guide's rtpengine.conf, relayctl, TCP ng."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from relayd.certificate import create
from relayd.ng import bencode
from relayd.ng.client import NgClient
from tests.support.relayd import REPO, running_relayd

pytestmark = pytest.mark.interop

GUIDE_CONF = REPO / "tests" / "data" / "config" / "deployment-guide.conf"
NG_PORT = 22360
SDP = (
    "v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n"
    "m=audio 6000 RTP/AVP 0 8\r\n"
)


def _relayctl(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "relayd.ops.ctl", *args],
        capture_output=True,
        text=True,
        timeout=20,
        env=env,
        check=False,
    )


def _guide_config(tmp_path: Path) -> Path:
    """The guide's file as it is, its certificate paths pointed at a test certificate."""
    certificate = create("relayd test")
    cert, key = tmp_path / "rtpengine.pem", tmp_path / "rtpengine.key"
    cert.write_text(certificate.pem)
    key.write_text(certificate.key_pem)
    text = GUIDE_CONF.read_text()
    text = text.replace("/etc/ssl/certs/rtpengine.pem", str(cert))
    text = text.replace("/etc/ssl/private/rtpengine.key", str(key))
    # and its recording spool at one of the test's own
    text = text.replace("/var/spool/rtpengine-recordings", str(tmp_path / "recordings"))
    assert str(cert) in text and str(key) in text and str(tmp_path / "recordings") in text
    conf = tmp_path / "rtpengine.conf"
    conf.write_text(text)
    return conf


def test_deployment_guide_config_starts_and_serves(tmp_path: Path) -> None:
    # only the ng ports are moved off 2223 for the test (command line overrides the file)
    with running_relayd(
        tmp_path,
        ng_port=NG_PORT,
        port_min=42000,
        port_max=42099,
        interface=(),
        config_file=_guide_config(tmp_path),
        extra=["--listen-tcp-ng", f"127.0.0.1:{NG_PORT}"],
    ) as daemon:
        with NgClient(("127.0.0.1", NG_PORT), tcp=True) as tcp:
            assert tcp.call("ping") == {"result": "pong"}
            # several requests on one connection, answered in order
            assert tcp.call("list")["calls"] == []
            assert tcp.call("query", call_id="nope")["error-reason"] == "Unknown call-id"
        log = daemon.log()
    # every key of the guide's file is acted on (recording was the last): metrics, Homer,
    # the RTCP log facility, the recording spool
    assert "config.unimplemented" not in log
    assert "recording.spool" in log and (tmp_path / "recordings" / "pcaps").is_dir()
    assert "http.listening" in log and "127.0.0.1:9900" in log
    assert "interfaces=['eth0/203.0.113.10!203.0.113.10']" in log


def test_malformed_config_names_key_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.conf"
    bad.write_text("[rtpengine]\ninterface = 127.0.0.1\nport-min = lots\n")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run(
        [sys.executable, "-m", "relayd", "--config-file", str(bad), "--foreground"],
        capture_output=True,
        text=True,
        timeout=20,
        env=env,
        check=False,
    )
    assert result.returncode != 0
    assert f"{bad}:3" in result.stderr and "port-min" in result.stderr


def test_relayctl_commands(tmp_path: Path) -> None:
    ng = f"127.0.0.1:{NG_PORT}"
    with running_relayd(tmp_path, ng_port=NG_PORT, port_min=42100, port_max=42199) as daemon:
        assert _relayctl("--ng", ng, "ping").stdout.strip() == "pong"
        with daemon.client() as client:
            reply = client.call("offer", sdp=SDP, call_id="ctl-1", from_tag="A")
            assert reply["result"] == "ok"
        listed = _relayctl("--ng", ng, "list")
        assert listed.returncode == 0 and listed.stdout.split() == ["ctl-1"]
        query = _relayctl("--ng", ng, "query", "ctl-1")
        assert query.returncode == 0 and '"tags"' in query.stdout and '"A"' in query.stdout
        stats = _relayctl("--ng", ng, "statistics")
        assert '"sessionsown": 1' in stats.stdout
        deleted = _relayctl("--ng", ng, "delete", "ctl-1")
        assert deleted.returncode == 0 and '"totals"' in deleted.stdout
        assert _relayctl("--ng", ng, "query", "never").stderr.strip().endswith("Unknown call-id")


def test_relayctl_unreachable() -> None:
    result = _relayctl("--ng", "127.0.0.1:9", "--timeout", "0.3", "ping")
    assert result.returncode == 2
    assert "not reachable" in result.stderr


def test_bad_input_gets_errors_and_loses_nothing(tmp_path: Path) -> None:
    with (
        running_relayd(tmp_path, ng_port=NG_PORT, port_min=42200, port_max=42299) as daemon,
        daemon.client() as client,
    ):
        assert client.call("offer", sdp=SDP, call_id="keep", from_tag="A")["result"] == "ok"
        raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        raw.settimeout(2.0)
        target = ("127.0.0.1", NG_PORT)
        cases = {
            b"c1 d7:command": "Could not decode bencode dictionary",
            b"c2 li1ee": "Invalid NG data format",
            b"c3 {not json": "Failed to parse JSON document",
            b"c4 " + bencode.encode({"command": "frobnicate"}): "Unrecognized command",
            b"c5 " + bencode.encode({"call-id": "x"}): 'Dictionary contains no key "command"',
            b"c6 "
            + bencode.encode(
                {"command": "offer", "call-id": "bad", "from-tag": "A", "sdp": "hello"}
            ): "Failed to parse SDP",
            b"c7 "
            + bencode.encode(
                {"command": "answer", "call-id": "keep", "from-tag": "A", "to-tag": "B"}
            ): "No SDP body in message",
        }
        for datagram, reason in cases.items():
            raw.sendto(datagram, target)
            cookie, _, body = raw.recv(65536).partition(b" ")
            assert cookie == datagram.split(b" ")[0]
            reply = NgClient.decode_body(body)
            assert reply == {"result": "error", "error-reason": reason}, datagram
        raw.sendto(b"no-cookie-at-all", target)  # dropped without a reply
        raw.sendto(b"c8 " + bencode.encode({"command": "ping"}), target)
        assert raw.recv(65536) == b"c8 " + bencode.encode({"result": "pong"})
        raw.close()
        # the established call is untouched and still answerable
        answer = client.call(
            "answer",
            sdp=SDP.replace("192.0.2.10", "192.0.2.20"),
            call_id="keep",
            from_tag="A",
            to_tag="B",
        )
        assert answer["result"] == "ok"
        assert set(client.call("query", call_id="keep")["tags"]) == {"A", "B"}
        assert client.call("list")["calls"] == ["keep"]
