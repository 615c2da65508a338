"""Three relayd behind Kamailio's load balancing; one is killed mid-run and comes back.

The deployment guide's "Scaling out": several instances in Kamailio's ``rtpengine_sock``
(one set; the module picks an instance per new call by a hash of its Call-ID and keeps every
later request of the call on it), ``rtpengine_disable_tout`` taking an instance that stopped
answering out of use, and a ping bringing it back. Here: three relayd (userspace forwarding,
each its own ng port, port range and call journal), Kamailio 5.6 with all three in one set
(disable timeout 3 s, one try of 500 ms per request), a sipp UAC placing 150 calls at 10 per
second through it to a sipp UAS. Each call re-INVITEs once (same media) and then plays 2 s of
PCMU both ways (tests/interop/scenarios/uac-reinvite.xml, uas-reinvite.xml).

4 s in, instance 2 is killed with SIGKILL (its whole process group: supervisor and workers,
as a host dies); 8 s in it is started again on the same journal. Checked:

* every call that was not on instance 2 when it died completes (SIP) with its media both
  ways end to end, counted on the wire by dumpcap as the other interop tests do
  (tests/interop/test_kamailio.py): nothing of the failure reaches the survivors' calls,
  and no new call fails, during Kamailio's detection or after it;
* every re-INVITE of those calls reached the instance that owns the call: its answer names
  the same relay port as the first answer, on both sides (the port ranges tell the instances
  apart), and the media after it flowed;
* Kamailio reports no failed rtpengine function but for calls instance 2 held when it died;
* the restarted instance answers ``ping`` and takes new calls again (their media checked
  too) within the disable timeout and a margin.

The figures (detection time, calls lost, restart-to-ping and restart-to-use times) are
printed and written to ``failover.json`` in the test's directory; docs/operations.md ("High
availability") quotes them. Everything started is stopped on the way out, also on failure.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Iterator
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from relayd.ng.client import NgTimeout
from tests.interop.test_kamailio import Relay, _media_report
from tests.interop.test_kamailio import pytestmark as KAMAILIO_HARNESS
from tests.support.kamailio import (
    FAILURE_MARK,
    KamailioSettings,
    running_kamailio,
)
from tests.support.relayd import RelaydProcess
from tests.support.sipp import (
    SCENARIOS,
    TONE_PACKETS,
    SippResult,
    parse_sdp,
    running_capture,
    running_sipp,
    uac_agent,
    uas_agent,
)

pytestmark = KAMAILIO_HARNESS  # the interop mark and the Kamailio/sipp/capture skips

ADDRESS = "127.0.0.1"
NG_PORTS = (44011, 44012, 44013)
RANGES = ((44100, 44299), (44300, 44499), (44500, 44699))
PROXY = (ADDRESS, 44060)
UAC = ("127.0.0.11", 44061)
UAS = ("127.0.0.21", 44062)
MEDIA_PORT = 44100  # each agent's [auto_media_port] base, on its own address
CALLS = 180
RATE = 10.0
HOLD_MS = 2500  # after the re-INVITE: the 2 s tone, then the BYE
VICTIM = 1  # the instance killed (index into NG_PORTS)
KILL_AT = 4.0  # seconds after the first call
RESTART_AT = 8.0
DISABLE_TOUT = 3  # rtpengine_disable_tout, seconds
NG_TIMEOUT_MS = 500  # rtpengine_tout_ms, with rtpengine_retr 1
MIN_DELIVERED = 0.95
RUN_LIMIT_S = 40.0
# Each Kamailio child that sent to the dead instance keeps the ICMP error on its connected
# socket and reports it at its next send there, after the restart: "can't send command",
# the instance disabled once more. Two children bound that to two more disable timeouts.
KAMAILIO_CHILDREN = 2
_FAILED = re.compile(FAILURE_MARK + r" \w+ (\S+)")  # "RTPENGINE-FAILED offer CALL-ID"


@dataclass
class Timeline:
    """What happened when (monotonic seconds), and what instance 2 held when it died."""

    started: float = 0.0
    killed: float = 0.0
    detected: float | None = None
    restarted: float = 0.0
    answering: float = 0.0  # the restarted instance answered ping
    used: float | None = None  # ... and got its first new call
    held_at_kill: set[str] = field(default_factory=set)
    restored: set[str] = field(default_factory=set)  # what the restart took back
    new_after_restart: set[str] = field(default_factory=set)


def _instance_of(port: int) -> int | None:
    for index, (low, high) in enumerate(RANGES):
        if low <= port <= high:
            return index
    return None


def _relay(workdir: Path, index: int) -> RelaydProcess:
    home = workdir / f"relayd{index + 1}"
    home.mkdir(exist_ok=True)
    low, high = RANGES[index]
    return RelaydProcess(
        home,
        ng_port=NG_PORTS[index],
        port_min=low,
        port_max=high,
        interface=(ADDRESS,),
        extra=("--delete-delay", "0", "--num-threads", "1", "--log-level", "6"),
    )


def _calls_on(relay: RelaydProcess) -> set[str] | None:
    try:
        with relay.client(timeout=0.3, retries=0) as ng:
            reply = ng.call("list", limit=10000)
    except (NgTimeout, OSError):
        return None
    calls = reply.get("calls")
    return {c for c in calls if isinstance(c, str)} if isinstance(calls, list) else None


def _kill_group(relay: RelaydProcess) -> None:
    """SIGKILL to the instance's process group (its supervisor and its workers)."""
    proc = relay.proc
    assert proc is not None
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(5)


def _sdp_ports(result: SippResult, call_id: str) -> list[int]:
    """The audio port of every SDP this side received in the call, in order."""
    return [
        parse_sdp(m.body).media[0].port
        for m in result.messages
        if m.received and m.call_id == call_id and m.has_sdp
    ]


def _completed(result: SippResult) -> set[str]:
    """Calls whose BYE got its 200 (the UAC's side)."""
    return {
        m.call_id for m in result.messages if m.received and m.status == 200 and m.method == "BYE"
    }


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    with ExitStack() as exits:
        yield exits


def test_failover_behind_kamailio(tmp_path: Path, stack: ExitStack) -> None:
    relays = [_relay(tmp_path, index) for index in range(len(NG_PORTS))]
    for relay in relays:
        relay.start()
        stack.callback(relay.stop)
    settings = KamailioSettings(
        ng_port=NG_PORTS[0],
        more_ng_ports=NG_PORTS[1:],
        sip_host=PROXY[0],
        sip_port=PROXY[1],
        ng_retries=1,
        ng_timeout_ms=NG_TIMEOUT_MS,
        disable_tout=DISABLE_TOUT,
        allow_op=1,
        children=KAMAILIO_CHILDREN,
    )
    proxy = stack.enter_context(running_kamailio(tmp_path, settings))
    everything = Relay("relayd", ng_port=NG_PORTS[0], port_min=RANGES[0][0], port_max=RANGES[-1][1])
    ports = f"{RANGES[0][0]}-{RANGES[-1][1] + 1}"
    bpf = (
        f"udp and (host {UAC[0]} or host {UAS[0]}) and ((src host {ADDRESS} and src portrange "
        f"{ports}) or (dst host {ADDRESS} and dst portrange {ports}))"
    )
    capture = stack.enter_context(running_capture(tmp_path, bpf=bpf))
    timeout_s = CALLS / RATE + 15.0
    uas = stack.enter_context(
        running_sipp(
            uas_agent(
                tmp_path,
                calls=CALLS,
                local=UAS,
                media_port=MEDIA_PORT,
                scenario=SCENARIOS / "uas-reinvite.xml",
                timeout_s=timeout_s,
            )
        )
    )
    uac = stack.enter_context(
        running_sipp(
            uac_agent(
                tmp_path,
                proxy=PROXY,
                uas=UAS,
                calls=CALLS,
                rate=RATE,
                call_duration_ms=HOLD_MS,
                local=UAC,
                media_port=MEDIA_PORT,
                scenario=SCENARIOS / "uac-reinvite.xml",
                timeout_s=timeout_s,
            )
        )
    )
    line = Timeline(started=time.monotonic())
    victim = relays[VICTIM]
    victim_node = f"{ADDRESS}:{NG_PORTS[VICTIM]}"
    kamailio_log_at = 0
    deadline = line.started + RUN_LIMIT_S
    while uac.running() and time.monotonic() < deadline:
        now = time.monotonic() - line.started
        if not line.killed and now >= KILL_AT:
            line.held_at_kill = _calls_on(victim) or set()
            kamailio_log_at = len(proxy.log())
            _kill_group(victim)
            line.killed = time.monotonic()
        if line.killed and line.detected is None and victim_node in proxy.log()[kamailio_log_at:]:
            line.detected = time.monotonic()
        if line.killed and not line.restarted and now >= RESTART_AT:
            line.restarted = time.monotonic()
            victim.start()  # the same journal: it takes back what it held
            line.answering = time.monotonic()
            line.restored = _calls_on(victim) or set()
        if line.answering and line.used is None:
            new = (_calls_on(victim) or set()) - line.restored - line.held_at_kill
            if new:
                line.used = time.monotonic()
                line.new_after_restart |= new
        time.sleep(0.05)
    uac_result = uac.wait(timeout=max(1.0, deadline - time.monotonic()))
    uas_result = uas.wait(timeout=5.0)
    time.sleep(0.2)  # the last forwarded packets into the capture
    capture.stop()
    media = _media_report(capture, uac_result, uas_result, everything)

    # where each call went: the relay port its first offer got (the UAS's first SDP)
    instance = {
        call_id: _instance_of(sdp.media[0].port)
        for call_id, sdp in uas_result.received_sdp().items()
    }
    on_restarted = {
        c
        for c, i in instance.items()
        if i == VICTIM and c not in line.held_at_kill and c not in line.restored
    } | line.new_after_restart
    survivors = {c for c, i in instance.items() if i is not None and i != VICTIM}
    checked = survivors | on_restarted
    completed = _completed(uac_result)
    # the dead instance's calls: how many lost media (a direction under MIN_DELIVERED)
    media_cut = sorted(
        call_id
        for call_id in line.held_at_kill
        if (call := media.calls.get(call_id)) is None
        or any(
            leg.delivered < MIN_DELIVERED * max(leg.sent, 1) for leg in (call.to_uas, call.to_uac)
        )
    )
    lost = sorted(line.held_at_kill - completed)
    figures = {
        "calls": CALLS,
        "per_instance": [sum(1 for i in instance.values() if i == n) for n in range(3)],
        "held_by_killed_instance": len(line.held_at_kill),
        "restored_by_restart": len(line.restored),
        "calls_not_completed": CALLS - len(completed),
        "sip_failed_of_killed_instance": len(lost),
        "media_cut_of_killed_instance": len(media_cut),
        "detection_s": None if line.detected is None else round(line.detected - line.killed, 2),
        "restart_to_ping_s": round(line.answering - line.restarted, 2),
        "restart_to_use_s": None if line.used is None else round(line.used - line.answering, 2),
        "new_calls_on_restarted": len(on_restarted),
        "sipp_failed": uac_result.failed_calls,
    }
    (tmp_path / "failover.json").write_text(json.dumps(figures, indent=2))
    print("failover figures:", json.dumps(figures))

    assert not uac_result.timed_out, uac_result.describe()
    assert line.killed and line.restarted, "the run ended before the kill and restart"
    assert line.held_at_kill, "the killed instance held no call: nothing was tested"
    # no call that was not on the dead instance failed, during detection or after it
    not_completed = sorted(set(instance) - completed - line.held_at_kill)
    assert not not_completed, (not_completed[:10], uac_result.describe())
    assert len(instance) == CALLS, f"{len(instance)} of {CALLS} calls reached the UAS"
    # Kamailio's rtpengine functions failed only for calls the dead instance held
    failed = {m.group(1) for f in proxy.failures() if (m := _FAILED.search(f))}
    assert failed <= line.held_at_kill, (sorted(failed - line.held_at_kill), proxy.log()[-3000:])
    # re-INVITEs reached the owner: the same relay port in both answers, on both sides
    moved = [
        (c, _sdp_ports(uac_result, c), _sdp_ports(uas_result, c))
        for c in sorted(checked)
        if len(set(_sdp_ports(uac_result, c))) != 1
        or len(_sdp_ports(uac_result, c)) != 2
        or len(set(_sdp_ports(uas_result, c))) != 1
        or len(_sdp_ports(uas_result, c)) != 2
    ]
    assert not moved, moved[:10]
    # media both ways, end to end, for the survivors' calls and the restarted one's new calls
    assert media.dropped == 0, f"capture lost {media.dropped} packets; counts unreliable"
    short = []
    for call_id in sorted(checked):
        call = media.calls.get(call_id)
        if call is None:
            short.append(f"{call_id}: no media seen")
            continue
        for name, leg in (("uac->uas", call.to_uas), ("uas->uac", call.to_uac)):
            if leg.sent != TONE_PACKETS or leg.delivered < MIN_DELIVERED * leg.sent or leg.altered:
                short.append(f"{call_id} {name}: {leg.describe()}")
    assert not short, f"{len(short)} directions short:\n" + "\n".join(short[:20])
    # the restarted instance was used again, within the disable timeout and a margin
    assert line.used is not None and on_restarted, "the restarted instance got no new call"
    assert line.used - line.answering <= DISABLE_TOUT * (KAMAILIO_CHILDREN + 1) + 1.0, figures
    assert line.detected is not None, "Kamailio never reported the dead instance"
