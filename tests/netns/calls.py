"""Call helpers shared by the namespace tests: ng signalling, media exchange, checks.

The caller offers, the callee answers over ng; the caller then sends to the
port in the answer SDP it got, the callee to the port in the offer SDP it got.
"""

from __future__ import annotations

import errno
import json
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ipaddress import ip_address
from typing import Any

import psutil

from relayd.ng.client import NgClient
from relayd.ops.ctl import AdminClient
from tests.support.netns import Topology, exec_args, inside
from tests.support.relayd import RelaydProcess
from tests.support.rtp_peer import Peer, Received

CALLER_PORT = 6000
CALLEE_PORT = 7000
CALLER_TAG = "caller-tag"
CALLEE_TAG = "callee-tag"
CALLER_SSRC = 0x11111111
CALLEE_SSRC = 0x22222222
EF = 0xB8

Address = tuple[str, int]

# The deployment guide's ng flags for bridging WebRTC and plain RTP parties: the offer
# to the WebRTC side, the offer to the plain side, the answer to the plain side.
OFFER_TO_WEBRTC = {
    "ICE": "force",
    "DTLS": "passive",
    "SDES": ["off"],
    "transport-protocol": "UDP/TLS/RTP/SAVPF",
    "rtcp-mux": ["offer", "require"],
    "flags": ["generate-mid"],
}
OFFER_TO_PLAIN = {
    "ICE": "remove",
    "SDES": ["off"],
    "transport-protocol": "RTP/AVP",
    "rtcp-mux": ["demux"],
}
ANSWER_TO_PLAIN = {
    "ICE": "remove",
    "DTLS": "off",
    "SDES": ["off"],
    "transport-protocol": "RTP/AVP",
}


# -- signalling ---------------------------------------------------------------------------------


def sdp(address: str, port: int) -> str:
    ip = "IP6" if ":" in address else "IP4"
    return (
        "v=0\r\n"
        f"o=- 1545997027 1 IN {ip} {address}\r\n"
        "s=-\r\n"
        f"c=IN {ip} {address}\r\n"
        "t=0 0\r\n"
        f"m=audio {port} RTP/AVP 0\r\n"
        "a=rtpmap:0 PCMU/8000\r\n"
        "a=sendrecv\r\n"
    )


@dataclass(frozen=True, slots=True)
class Advertised:
    """The relay's media address and ports as one SDP announced them."""

    address: str
    rtp: int
    rtcp: int

    @property
    def rtp_to(self) -> Address:
        return (self.address, self.rtp)

    @property
    def rtcp_to(self) -> Address:
        return (self.address, self.rtcp)


def advertised(text: str) -> Advertised:
    address, rtp, rtcp = "", 0, 0
    for line in text.splitlines():
        if line.startswith("c=IN "):
            address = line.split()[2]
        elif line.startswith("m=audio "):
            rtp = int(line.split()[1])
        elif line.startswith("a=rtcp:"):
            rtcp = int(line[len("a=rtcp:") :].split()[0])
    assert address and rtp, text
    return Advertised(address, rtp, rtcp or rtp + 1)


@dataclass(frozen=True, slots=True)
class CallLegs:
    call_id: str
    to_callee: Advertised  # from the offer SDP: where the callee sends
    to_caller: Advertised | None  # from the answer SDP: where the caller sends


def ok(reply: dict[str, Any]) -> dict[str, Any]:
    assert reply.get("result") == "ok", reply
    return reply


def set_up_call(
    ng: NgClient,
    topo: Topology,
    *,
    call_id: str = "netns-call",
    ipv6: bool = False,
    caller_port: int = CALLER_PORT,
    callee_port: int = CALLEE_PORT,
    flags: Sequence[str] = (),
    answer: bool = True,
) -> CallLegs:
    """Offer from the caller (``direction`` caller → callee), then, if ``answer``, answer."""
    caller = topo.caller.ip6 if ipv6 else topo.caller.ip4
    offer = ok(
        ng.call(
            "offer",
            call_id=call_id,
            from_tag=CALLER_TAG,
            sdp=sdp(caller, caller_port),
            direction=["caller", "callee"],
            flags=list(flags),
        )
    )
    to_callee = advertised(offer["sdp"])
    assert to_callee.address == (topo.callee.relay6 if ipv6 else topo.callee.relay4)
    legs = CallLegs(call_id, to_callee, None)
    if answer:
        legs = answer_call(ng, topo, legs, ipv6=ipv6, callee_port=callee_port, flags=flags)
    return legs


def answer_call(
    ng: NgClient,
    topo: Topology,
    legs: CallLegs,
    *,
    ipv6: bool = False,
    callee_port: int = CALLEE_PORT,
    flags: Sequence[str] = (),
) -> CallLegs:
    callee = topo.callee.ip6 if ipv6 else topo.callee.ip4
    reply = ok(
        ng.call(
            "answer",
            call_id=legs.call_id,
            from_tag=CALLER_TAG,
            to_tag=CALLEE_TAG,
            sdp=sdp(callee, callee_port),
            flags=list(flags),
        )
    )
    to_caller = advertised(reply["sdp"])
    assert to_caller.address == (topo.caller.relay6 if ipv6 else topo.caller.relay4)
    return CallLegs(legs.call_id, legs.to_callee, to_caller)


def stream_of(reply: dict[str, Any], tag: str, rtcp: bool = False) -> dict[str, Any]:
    """The query tree of ``tag``'s RTP (or RTCP) stream of the first media section."""
    streams = reply["tags"][tag]["medias"][0]["streams"]
    found: dict[str, Any] = streams[1 if rtcp else 0]
    return found


def stream_flags(reply: dict[str, Any]) -> dict[str, list[list[str]]]:
    """A ``query`` reply's stream flags, per tag, stream by stream over every media section
    (for a failing test's message)."""
    return {
        tag: [s.get("flags", []) for m in party.get("medias", []) for s in m.get("streams", [])]
        for tag, party in reply.get("tags", {}).items()
    }


def wait_for(
    ng: NgClient, call_id: str, check: Callable[[dict[str, Any]], bool], timeout: float = 8.0
) -> dict[str, Any]:
    """Query until ``check`` holds (workers report counters once a second)."""
    deadline = time.monotonic() + timeout
    while True:
        reply = ok(ng.call("query", call_id=call_id))
        if check(reply) or time.monotonic() > deadline:
            return reply
        time.sleep(0.1)


# -- media checks -------------------------------------------------------------------------------


def assert_received(got: list[Received], sent: list[bytes], source: Address) -> None:
    """Every packet, in order, byte for byte, from ``source``."""
    seqs = [p.seq for p in got]
    assert len(got) == len(sent), f"received {len(got)} of {len(sent)}: {seqs}"
    for index, (packet, expected) in enumerate(zip(got, sent, strict=True)):
        assert packet.data == expected, f"packet {index} (seq {packet.seq}) differs"
        assert packet.source == source, f"packet {index} from {packet.source}, not {source}"


def exchange(
    caller: Peer, callee: Peer, legs: CallLegs, count: int, *, rtcp: bool = False, first: int = 0
) -> tuple[list[bytes], list[bytes]]:
    """Both sides send ``count`` packets, interleaved; returns (caller's, callee's)."""
    assert legs.to_caller is not None
    to_relay_a = legs.to_caller.rtcp_to if rtcp else legs.to_caller.rtp_to
    to_relay_b = legs.to_callee.rtcp_to if rtcp else legs.to_callee.rtp_to
    from_caller: list[bytes] = []
    from_callee: list[bytes] = []
    for seq in range(first, first + count):
        from_caller += caller.send_rtp(to_relay_a, 1, first=seq, ssrc=CALLER_SSRC, tag=1, rtcp=rtcp)
        from_callee += callee.send_rtp(to_relay_b, 1, first=seq, ssrc=CALLEE_SSRC, tag=2, rtcp=rtcp)
    return from_caller, from_callee


def bind_free(ns: str, address: str, ports: Sequence[int], timeout: float = 2.0) -> None:
    """Bind each port in ``ns`` (retrying briefly while the relay closes it)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    for port in ports:
        deadline = time.monotonic() + timeout
        while True:
            with inside(ns):
                sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                sock.bind((address, port))
                break
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE or time.monotonic() > deadline:
                    raise AssertionError(f"{address}:{port} still taken: {exc}") from None
                time.sleep(0.05)
            finally:
                sock.close()


def worker_pids(relay: RelaydProcess) -> list[int]:
    assert relay.proc is not None
    found = []
    for child in psutil.Process(relay.proc.pid).children():
        try:
            with_args = child.cmdline()
        except (psutil.ZombieProcess, psutil.NoSuchProcess):
            continue  # a worker killed and not reaped yet, or gone: not a worker any more
        if "relayd.worker" in with_args and "--worker" in with_args:
            found.append(child.pid)
    return found


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# -- the kernel path ------------------------------------------------------------------------------

Key = tuple[str, int, str, int]  # source address, source port, relay address, relay port


def run_in(ns: str, *args: str, check: bool = True) -> str:
    proc = subprocess.run(exec_args(ns, args), capture_output=True, text=True, timeout=20)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} in {ns}: {proc.stderr.strip()}")
    return proc.stdout


def nft_objects(ns: str, *what: str) -> list[dict[str, Any]] | None:
    """``nft -j list WHAT`` in ``ns``; None when the object does not exist."""
    proc = subprocess.run(
        exec_args(ns, ["nft", "-j", "list", *what]), capture_output=True, text=True, timeout=20
    )
    if proc.returncode != 0:
        if "No such file or directory" in proc.stderr:
            return None
        raise AssertionError(f"nft list {' '.join(what)}: {proc.stderr.strip()}")
    objects: list[dict[str, Any]] = json.loads(proc.stdout)["nftables"]
    return objects


def table_elements(ns: str, table: str = "relayd") -> dict[str, list[Any]] | None:
    """Every set and map of ``inet table`` with its elements; None without the table."""
    objects = nft_objects(ns, "table", "inet", table)
    if objects is None:
        return None
    found: dict[str, list[Any]] = {}
    for obj in objects:
        for kind in ("set", "map"):
            if kind in obj:
                found[obj[kind]["name"]] = list(obj[kind].get("elem", []))
    return found


def table_rules(ns: str, table: str = "relayd") -> list[tuple[str, str]]:
    """(chain, rule expressions as JSON) of every rule of ``inet table``, handles left out."""
    objects = nft_objects(ns, "table", "inet", table) or []
    return [
        (obj["rule"]["chain"], json.dumps(obj["rule"]["expr"], sort_keys=True))
        for obj in objects
        if "rule" in obj
    ]


def element_counters(
    ns: str, version: int = 4, table: str = "relayd"
) -> dict[Key, tuple[int, int]]:
    """(packets, bytes) per direction, read from the ``count4``/``count6`` set."""
    objects = nft_objects(ns, "set", "inet", table, f"count{version}") or []
    found: dict[Key, tuple[int, int]] = {}
    for obj in objects:
        for item in obj.get("set", {}).get("elem", []):
            elem = item["elem"]
            saddr, sport, daddr, dport = elem["val"]["concat"]
            counter = elem.get("counter", {})
            key = (str(ip_address(saddr)), int(sport), str(ip_address(daddr)), int(dport))
            found[key] = (int(counter.get("packets", 0)), int(counter.get("bytes", 0)))
    return found


def _host_port(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def kernel_counted(relay: RelaydProcess, ns: str, timeout: float = 5.0) -> None:
    """Wait until relayd's last read of the nft counters (a kernel tick, about once a
    second) is what the kernel has counted so far: every packet forwarded until now is in
    the streams' stats and the metrics. For when no media flows.

    relayctl's ``kernel`` shows the counters as relayd last read them; a tick folds the
    difference into the stats in the same step.
    """
    admin = AdminClient(str(relay.admin_socket))
    want = {
        (_host_port(*key[:2]), _host_port(*key[2:])): packets
        for version in (4, 6)
        for key, (packets, _) in element_counters(ns, version).items()
    }
    deadline = time.monotonic() + timeout
    while True:
        forwards = admin.request("kernel")["forwards"]
        read = {(f["source"], f["relay"]): f["packets"] for f in forwards}
        if read == want:
            return
        assert time.monotonic() < deadline, f"relayd read {read}, the kernel counts {want}"
        time.sleep(0.05)


def conntrack_entries(ns: str, ports: range) -> list[str]:
    """``conntrack -L`` lines (UDP, IPv4 and IPv6) in which a port of ``ports`` appears.

    Loopback flows (the tests' ng requests, from ephemeral ports) are left out.
    """
    found = []
    for family in ("ipv4", "ipv6"):
        for line in run_in(ns, "conntrack", "-L", "-f", family, "-p", "udp").splitlines():
            fields = [word.partition("=") for word in line.split()]
            if any(k == "src" and v in ("127.0.0.1", "::1") for k, _, v in fields):
                continue
            numbers = [int(v) for k, _, v in fields if k in ("sport", "dport") and v.isdigit()]
            if any(n in ports for n in numbers):
                found.append(line)
    return found


def udp_delivered(ns: str) -> int:
    """UDP datagrams delivered to sockets in ``ns`` so far (``InDatagrams``, IPv4 and IPv6).

    Every datagram a relay worker's socket receives is counted here, ng requests too.
    """
    text = run_in(ns, "cat", "/proc/net/snmp", "/proc/net/snmp6")
    udp = [line.split() for line in text.splitlines() if line.startswith("Udp:")]
    names, values = udp[0], udp[1]
    total = int(values[names.index("InDatagrams")])
    for line in text.splitlines():
        if line.startswith("Udp6InDatagrams"):
            total += int(line.split()[1])
    return total


def kernelized(reply: dict[str, Any], tag: str, rtcp: bool = False) -> bool:
    return "kernelized" in stream_of(reply, tag, rtcp)["flags"]
