"""Codec negotiation against rtpengine 10.5's own answers to 487 offer/answer probes.

The suite's 54 transcoding scenarios leave much of 10.5's codec negotiation unsaid (where
added codecs go, which payload types they take, CN and telephone-event per clock rate,
answers that mix passthrough and transcoded codecs, re-offers either way round). To pin
it down, ``tests/data/suite/probes.json`` holds what the live daemon (Debian's
rtpengine 10.5.3.5, its command line in the file) answered to 487 short sequences:
hand-written ones for each rule, and random ones (PCMU, PCMA, G722, opus,
telephone-event at 8 and 48 kHz, CN; ``transcode``, ``mask``, ``strip``, ``consume``,
``accept``, ``always transcode``, ``ptime``, ``single codec``). Each step's reply is
summed up as its ``m=`` formats, each with its rtpmap, and its ``a=ptime``.

Here every sequence goes through relayd's ng core in process and its replies must sum
up the same, but for those in ``DIFFERS`` (strict: one that starts to match fails too,
until its entry goes). The random probes name payload type 98 speex/16000 in the
answerer's SDP: 10.5 transcodes speex, relayd cannot, hence most of them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.unit.audio_sdp import audio_sdp
from tests.unit.calls import T0, build, req

PROBES = Path(__file__).resolve().parents[1] / "data" / "suite" / "probes.json"

# what the probes' SDPs map their dynamic payload types to
RTPMAPS = {
    "96": "opus/48000/2",
    "97": "telephone-event/48000",
    "101": "telephone-event/8000",
    "98": "speex/16000",
    "118": "CN/16000",
    "109": "EVS/16000",
}

_SPEEX = "the answer lists speex (98), which 10.5 transcodes and relayd cannot"
_PLAIN = (
    "no transcoding asked: 10.5 still adds telephone-event/CN for the clock rates the "
    "options touched (docs/compatibility.md), relayd only where it transcodes"
)
DIFFERS: dict[int, str] = {
    47: _SPEEX,
    50: _PLAIN,
    51: _SPEEX,
    65: _PLAIN,
    87: _PLAIN,
    98: _SPEEX,
    194: "accept telephone-event: 10.5 drops the answerer's telephone-event/48000 for it",
    286: _PLAIN,
    347: _SPEEX,
    401: _SPEEX,
    408: "accept opus with always-transcode: 10.5 answers the answerer's G722, not opus",
    417: _SPEEX,
    429: _SPEEX,
    430: _SPEEX,
    453: _SPEEX,
    473: _SPEEX,
}


def _sdp(address: str, port: int, formats: str, *extra: str) -> str:
    """An audio section listing ``formats`` (rtpmaps from :data:`RTPMAPS`)."""
    return audio_sdp(RTPMAPS, address, port, formats, *extra)


def _summary(reply: dict[str, Any]) -> str:
    """``PT=encoding`` per format of the reply's m= line, then ``ptime=N``."""
    lines = str(reply.get("sdp", "")).replace("\r\n", "\n").split("\n")
    m_lines = [ln for ln in lines if ln.startswith("m=audio")]
    if not m_lines:
        return f"error: {reply.get('error-reason', reply.get('result'))}"
    maps = {
        ln.split()[0].removeprefix("a=rtpmap:"): ln.split()[1]
        for ln in lines
        if ln.startswith("a=rtpmap:")
    }
    formats = " ".join(f"{pt}={maps.get(pt, '?')}" for pt in m_lines[0].split()[3:])
    ptimes = [ln.removeprefix("a=ptime:") for ln in lines if ln.startswith("a=ptime:")]
    return formats + (f" ptime={ptimes[0]}" if ptimes else "")


def _replay(steps: list[list[Any]]) -> list[str]:
    """A sequence as the probe sent it: party a or b (a offers unless a step says), the
    offer from its sender to the other, the answer back."""
    cmds, _ = build()
    replies = []
    offerer: str | None = None
    for step in steps:
        command, formats, keys = step[0], step[1], step[2]
        who = step[3] if len(step) > 3 else ("a" if command == "offer" else "b")
        other = "b" if who == "a" else "a"
        tags = {"from_tag": other, "to_tag": who}
        if command == "offer":
            tags = {"from_tag": who, **({"to_tag": other} if offerer is not None else {})}
            offerer = who
        address, port = ("198.51.100.1", 5000) if who == "a" else ("198.51.100.3", 6000)
        keys = {k.replace("-", "_"): v for k, v in keys.items()}
        reply = cmds.handle(req(command, sdp=_sdp(address, port, formats), **tags, **keys), T0)
        replies.append(_summary(reply))
    return replies


def test_relayd_negotiates_as_rtpengine_10_5_answered_the_probes() -> None:
    probes = json.loads(PROBES.read_text())["probes"]
    assert len(probes) == 487
    differing = {}
    for index, probe in enumerate(probes):
        replies = _replay(probe["steps"])
        if replies != probe["replies"]:
            differing[index] = (probe["steps"], probe["replies"], replies)
    unexpected = {i: d for i, d in differing.items() if i not in DIFFERS}
    mended = sorted(set(DIFFERS) - set(differing))
    assert not unexpected, "\n".join(
        f"#{i} {steps}\n  10.5:   {want}\n  relayd: {got}"
        for i, (steps, want, got) in unexpected.items()
    )
    assert not mended, f"matching now, remove from DIFFERS: {mended}"
