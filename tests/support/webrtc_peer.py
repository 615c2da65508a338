"""A real WebRTC peer (aiortc: full ICE agent, DTLS-SRTP, rtcp-mux) for end-to-end tests.

Run it in a party's namespace, as its own process (aiortc gathers the addresses
of the namespace it runs in)::

    ip netns exec NS python -m tests.support.webrtc_peer offer|answer --tone HZ

It talks JSON lines on stdin/stdout (:class:`WebRtcPeer` drives it from a test):

* ``offer``: prints ``{"offer": SDP}`` and waits for ``{"answer": SDP}``;
  ``answer``: waits for ``{"offer": SDP}`` and prints ``{"answer": SDP}``;
* then ``{"cmd": "report"}`` → the current :func:`report`, ``{"cmd": "close"}`` →
  closes the connection (DTLS close_notify) and prints the last report.

``--nominate-every-pair`` makes aiortc check (and, as the controlling agent facing
a full ICE agent, nominate) all its candidate pairs at once instead of one every
20 ms: the relay sees several nominations, as it does from browsers that
renominate or race their pairs (an aioice patch, for tests only).

It sends a continuous sine of ``--tone`` Hz (8 kHz mono; aiortc encodes it with
whatever codec was negotiated) and decodes what it receives: the report says how
many audio frames arrived and the frequency they carry. STUN servers are off:
the namespaces reach nothing but each other.
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from tests.support.netns import exec_args
from tests.support.process import new_session_dying_with_parent
from tests.support.tone import RATE, dominant_hz, pcm16, tone

__all__ = ["WebRtcPeer"]

REPO = Path(__file__).resolve().parents[2]
_FRAME = 160  # 20 ms at 8 kHz


def _tone_track(hz: float) -> Any:
    import av
    from aiortc.mediastreams import MediaStreamTrack

    class ToneTrack(MediaStreamTrack):
        kind = "audio"

        def __init__(self) -> None:
            super().__init__()
            self._frame = 0
            self._start = 0.0

        async def recv(self) -> Any:
            if self._frame == 0:
                self._start = time.monotonic()
            else:
                wait = self._start + self._frame * _FRAME / RATE - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
            samples = tone(hz, self._frame * _FRAME, _FRAME)
            frame = av.AudioFrame(format="s16", layout="mono", samples=_FRAME)
            frame.planes[0].update(b"".join(s.to_bytes(2, "little", signed=True) for s in samples))
            frame.sample_rate = RATE
            frame.pts = self._frame * _FRAME
            frame.time_base = fractions.Fraction(1, RATE)
            self._frame += 1
            return frame

    return ToneTrack()


class _Received:
    def __init__(self) -> None:
        self.frames = 0
        self.samples: list[int] = []  # the latest second or so, at the frames' own rate
        self.rate = 0
        self.codec = ""

    def add(self, frame: Any) -> None:
        self.frames += 1
        self.rate = frame.sample_rate
        data = bytes(frame.planes[0])[: frame.samples * 2 * len(frame.layout.channels)]
        samples = pcm16(data)[:: len(frame.layout.channels)]
        self.samples = (self.samples + samples)[-self.rate :]


async def _report(pc: Any, received: _Received) -> dict[str, Any]:
    from aioice.ice import CandidatePair

    ice = dtls = ""
    pair: list[Any] = []  # the selected pair: local and remote address
    # the local address of every pair checked: facing a full agent (no a=ice-lite), aioice
    # nominates aggressively, so each of these checks carried USE-CANDIDATE
    checked: list[Any] = []
    for transceiver in pc.getTransceivers():
        transport = transceiver.sender.transport
        if transport is not None:
            dtls = transport.state
            ice = transport.transport.state
            connection = transport.transport._connection
            selected = connection._nominated.get(1)
            if selected is not None:
                pair = [list(selected.local_addr), list(selected.remote_addr)]
            waiting = (CandidatePair.State.FROZEN, CandidatePair.State.WAITING)
            checked = [list(p.local_addr) for p in connection._check_list if p.state not in waiting]
    # the plain party's RTCP sender reports, as aiortc decrypted and parsed them
    stats = await pc.getStats() if pc.connectionState != "closed" else {}
    sender_reports = {
        s.ssrc: s.packetsSent for s in stats.values() if s.type == "remote-outbound-rtp"
    }
    return {
        "sender_reports": sender_reports,
        "connection": pc.connectionState,
        "ice": ice,
        "dtls": dtls,
        "frames": received.frames,
        "rate": received.rate,
        "pair": pair,
        "checked": checked,
        "hz": round(dominant_hz(received.samples, received.rate or RATE), 1),
    }


def _nominate_every_pair() -> None:
    from aioice import ice

    state = ice.CandidatePair.State

    def all_at_once(self: Any) -> bool:
        if self._check_list_done:
            return False
        pending = [p for p in self._check_list if p.state in (state.WAITING, state.FROZEN)]
        for pair in pending:
            self.check_start_task(pair)
        return bool(pending) or bool(self._remote_candidates_expected())

    ice.Connection._check_periodic = all_at_once  # type: ignore[method-assign]


async def _main(role: str, hz: float) -> None:
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    loop = asyncio.get_running_loop()

    async def read() -> dict[str, Any]:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            raise SystemExit(0)
        message: dict[str, Any] = json.loads(line)
        return message

    def write(message: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    received = _Received()
    consumers: list[asyncio.Task[None]] = []

    @pc.on("track")
    def on_track(track: Any) -> None:
        async def consume() -> None:
            while True:
                try:
                    received.add(await track.recv())
                except Exception:
                    return

        consumers.append(asyncio.ensure_future(consume()))

    pc.addTrack(_tone_track(hz))
    if role == "offer":
        await pc.setLocalDescription(await pc.createOffer())
        write({"offer": pc.localDescription.sdp})
        answer = await read()
        await pc.setRemoteDescription(RTCSessionDescription(answer["answer"], "answer"))
    else:
        offer = await read()
        await pc.setRemoteDescription(RTCSessionDescription(offer["offer"], "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        write({"answer": pc.localDescription.sdp})
    while True:
        command = (await read()).get("cmd")
        if command == "close":
            await pc.close()
            for task in consumers:
                task.cancel()
            write(await _report(pc, received))
            return
        write(await _report(pc, received))


class WebRtcPeer:
    """Drives one ``webrtc_peer`` process in namespace ``ns`` from a test; every read is
    bounded in time, and :meth:`stop` kills it whatever state it is in."""

    def __init__(
        self,
        ns: str,
        role: str,
        hz: float,
        log: Path,
        *,
        nominate_every_pair: bool = False,
        debug: bool = False,
    ) -> None:
        args = [sys.executable, "-m", "tests.support.webrtc_peer", role, "--tone", str(hz)]
        if nominate_every_pair:
            args.append("--nominate-every-pair")
        if debug:
            args.append("--debug")
        self.log_path = log
        self._log: IO[bytes] = open(log, "wb")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(
            exec_args(ns, args),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            cwd=REPO,
            env={"PYTHONPATH": str(REPO), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
            preexec_fn=new_session_dying_with_parent,
        )
        self._lines: list[str] = []
        self._ready = threading.Condition()
        self._reader = threading.Thread(target=self._read_lines, daemon=True)
        self._reader.start()

    def _read_lines(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self._ready:
                self._lines.append(raw.decode())
                self._ready.notify_all()
        with self._ready:
            self._ready.notify_all()

    def receive(self, timeout: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self._ready:
            while not self._lines:
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(f"webrtc peer silent:\n{self.log()}")
                self._ready.wait(min(left, 0.2))
            message: dict[str, Any] = json.loads(self._lines.pop(0))
            return message

    def send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(message) + "\n").encode())
        self.proc.stdin.flush()

    def report(self) -> dict[str, Any]:
        self.send({"cmd": "report"})
        return self.receive()

    def close(self) -> dict[str, Any]:
        self.send({"cmd": "close"})
        return self.receive()

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")[-20000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()
        self._log.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("role", choices=["offer", "answer"])
    parser.add_argument("--tone", type=float, default=600.0)
    parser.add_argument("--nominate-every-pair", action="store_true")
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args(argv)
    if args.nominate_every_pair:
        _nominate_every_pair()
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="%(relativeCreated)d %(name)s %(message)s",
        stream=sys.stderr,
    )
    asyncio.run(_main(args.role, args.tone))


if __name__ == "__main__":
    main()
