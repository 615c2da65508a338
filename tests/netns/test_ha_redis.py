"""Two relayd hosts and a real Redis: the standby takes the active's calls over with their media.

Namespaces ``rds-<uid>-<role>`` on one Ethernet segment (a bridge in ``sw``, which also
runs Debian's ``redis-server`` on 10.97.0.254:43979, started here with its own
configuration)::

    caller 10.97.0.11   callee 10.97.0.12   a 10.97.0.1   b 10.97.0.2   sw 10.97.0.254 (redis)

The advertised address 10.97.0.100 (``interface`` of both relays) is on ``a``, as keepalived
would hold it. ``a`` writes its calls to database 1 and watches database 2; ``b`` the other
way round; both bind what is not local yet (``net.ipv4.ip_nonlocal_bind = 1``), keep the
media ports out of the ephemeral ones (``net.ipv4.ip_local_reserved_ports``) and have the
kernel path on. 50 calls get media both ways on ``a``; ``b`` holds them as foreign calls
(``query`` answers). Then ``a`` is killed with SIGKILL and the address moved to ``b``, the
peers' neighbour caches flushed (what keepalived's gratuitous ARP does): at least 95 % of
the calls must have media both ways again within 2 s, an SDES-SRTP call (in the workers)
too. ``a`` restarted does not take them back (it holds them as foreign), Redis killed and
started again (empty) costs no call and gets every call written again; ``relayctl standby``
on ``b`` and the address moved home give the calls back to ``a``, and deleting them there
leaves no port, nft element or conntrack entry on either host. Ports: media 43000-43299,
peers 43400-43603, ng 43900, Redis 43979.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pylibsrtp
import pytest
import redis

from relayd.ha.settings import INDEX_KEY, call_key
from relayd.ng.client import NgClient
from relayd.ops.ctl import AdminClient
from tests.netns.calls import (
    CALLEE_TAG,
    CALLER_TAG,
    advertised,
    conntrack_entries,
    ok,
    run_in,
    sdp,
    stream_flags,
    table_elements,
)
from tests.netns.test_sdes import Srtp, crypto_lines, inline, savp_sdp
from tests.support.netns import destroy, exec_args, inside, unavailable
from tests.support.process import new_session_dying_with_parent
from tests.support.relayd import RelaydProcess
from tests.support.rtp_peer import Peer, rtp_packet

_SKIP = unavailable() or (None if shutil.which("redis-server") else "redis-server not installed")
pytestmark = [pytest.mark.netns, pytest.mark.skipif(_SKIP is not None, reason=f"netns: {_SKIP}")]

NET = "10.97.0"
VIP = f"{NET}.100"
REDIS_HOST, REDIS_PORT = f"{NET}.254", 43979
NG_PORT = 43900
PORT_MIN, PORT_MAX = 43000, 43299
MEDIA_PORTS = range(PORT_MIN, PORT_MAX + 1)
CALLS = 50
CALLER_BASE, CALLEE_BASE = 43400, 43500
SRTP_CALLER, SRTP_CALLEE = 43600, 43602  # the SDES call's peers
SUITE = "AES_CM_128_HMAC_SHA1_80"
TAKEOVER_LIMIT = 2.0  # seconds from the address move to media both ways again
HOSTS = {"caller": 11, "callee": 12, "a": 1, "b": 2}


@dataclass(frozen=True)
class Net:
    uid: str

    def ns(self, role: str) -> str:
        return f"rds-{self.uid}-{role}"

    @property
    def all(self) -> list[str]:
        return [self.ns(r) for r in ("sw", *HOSTS)]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def _sysctl(ns: str, *settings: str) -> None:
    subprocess.run(
        exec_args(ns, ["sysctl", "-q", "-w", *settings]), check=True, capture_output=True
    )


@pytest.fixture
def net() -> Iterator[Net]:
    made = Net(secrets.token_hex(2))
    created: list[str] = []
    try:
        for ns in made.all:
            _ip("netns", "add", ns)
            created.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        sw = made.ns("sw")
        _ip("-n", sw, "link", "add", "br0", "type", "bridge")
        _ip("-n", sw, "addr", "add", f"{REDIS_HOST}/24", "dev", "br0")
        _ip("-n", sw, "link", "set", "br0", "up")
        for role, last in HOSTS.items():
            ns = made.ns(role)
            _ip("link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", f"p{role}",
                "netns", sw)  # fmt: skip
            _ip("-n", sw, "link", "set", f"p{role}", "master", "br0", "up")
            _ip("-n", ns, "addr", "add", f"{NET}.{last}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
        for role in ("a", "b"):
            _sysctl(
                made.ns(role),
                "net.ipv4.ip_forward=1",
                "net.ipv4.ip_nonlocal_bind=1",  # the advertised address, before it comes
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.eth0.rp_filter=0",
                "net.ipv4.conf.all.send_redirects=0",
                "net.ipv4.conf.eth0.send_redirects=0",
                # as the Ansible role sets it: the test's ng client here once got media
                # port 43026 as its source port just as the restarted relayd bound the
                # foreign calls' ports (it holds that call a second later now)
                f"net.ipv4.ip_local_reserved_ports={PORT_MIN}-{PORT_MAX}",
            )
        _ip("-n", made.ns("a"), "addr", "add", f"{VIP}/24", "dev", "eth0")
        yield made
    finally:
        problems = destroy(created)
        if problems:
            raise RuntimeError("namespace clean-up failed: " + "; ".join(problems))


class RedisServer:
    """Debian's redis-server in the switch namespace, with a configuration of its own."""

    def __init__(self, ns: str, workdir: Path) -> None:
        self.ns, self.workdir = ns, workdir
        self.conf = workdir / "redis.conf"
        self.conf.write_text(
            f'bind {REDIS_HOST}\nport {REDIS_PORT}\nprotected-mode no\nsave ""\n'
            f"appendonly no\ndir {workdir}\nnotify-keyspace-events K$gx\n"
            f"logfile {workdir / 'redis.log'}\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            exec_args(self.ns, ["redis-server", str(self.conf)]),
            preexec_fn=new_session_dying_with_parent,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.RedisError):
                if self.client(0).ping():
                    return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def client(self, db: int) -> redis.Redis:
        with inside(self.ns):
            conn = redis.Redis(REDIS_HOST, REDIS_PORT, db=db, socket_timeout=2)
            conn.ping()  # connected now, in this namespace
        return conn

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def _relay(net: Net, role: str, workdir: Path, own: int, peer: int) -> RelaydProcess:
    workdir.mkdir(exist_ok=True)
    return RelaydProcess(
        workdir,
        ng_port=NG_PORT,
        port_min=PORT_MIN,
        port_max=PORT_MAX,
        interface=(VIP,),
        netns=net.ns(role),
        extra=[
            *("--table", "0", "--num-threads", "2", "--endpoint-learning", "immediate"),
            *("--delete-delay", "0", "--timeout", "600"),
            *("--redis", f"{REDIS_HOST}:{REDIS_PORT}/{own}", "--subscribe-keyspace", str(peer)),
        ],
    )


def _ha(relay: RelaydProcess) -> dict[str, Any]:
    return AdminClient(str(relay.admin_socket)).request("ha")


def _until(check: Any, timeout: float, what: str, detail: Any = None) -> None:
    """Wait for ``check()``; on a timeout ``detail()`` (if given) says what was found."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            try:
                found = f": {detail()}" if detail is not None else ""
            except Exception as exc:  # the diagnosis failed: the timeout is what counts
                found = f" (no detail: {exc!r})"
            raise AssertionError(f"timed out waiting for {what}{found}")
        time.sleep(0.05)


@dataclass
class CallMedia:
    call_id: str
    caller: Peer
    callee: Peer
    caller_sends_to: tuple[str, int] = ("", 0)  # the relay, as the answer says
    callee_sends_to: tuple[str, int] = ("", 0)  # the relay, as the offer says


def _set_up(ng: NgClient, net: Net, media: CallMedia) -> None:
    offer = ok(
        ng.call("offer", call_id=media.call_id, from_tag=CALLER_TAG,
                sdp=sdp(media.caller.address[0], media.caller.address[1]))
    )  # fmt: skip
    answer = ok(
        ng.call("answer", call_id=media.call_id, from_tag=CALLER_TAG, to_tag=CALLEE_TAG,
                sdp=sdp(media.callee.address[0], media.callee.address[1]))
    )  # fmt: skip
    media.callee_sends_to = advertised(offer["sdp"]).rtp_to
    media.caller_sends_to = advertised(answer["sdp"]).rtp_to
    assert media.callee_sends_to[0] == VIP and media.caller_sends_to[0] == VIP


def _flow(calls: list[CallMedia], limit: float, start: int) -> dict[str, float]:
    """Send one packet each way on every call every 20 ms for at most ``limit`` seconds;
    the seconds after which each call had media both ways (calls that never did: absent)."""
    began = time.monotonic()
    heard: dict[tuple[str, str], float] = {}
    both: dict[str, float] = {}
    seq = start
    while time.monotonic() - began < limit and len(both) < len(calls):
        for media in calls:
            if media.call_id in both:
                continue
            media.caller.send(rtp_packet(seq, 0x1111, 1), media.caller_sends_to)
            media.callee.send(rtp_packet(seq, 0x2222, 2), media.callee_sends_to)
        seq += 1
        pause = time.monotonic() + 0.02
        while time.monotonic() < pause:
            for media in calls:
                for side, peer in (("callee", media.callee), ("caller", media.caller)):
                    while peer.receive(1, timeout=0):
                        heard.setdefault((media.call_id, side), time.monotonic() - began)
                if (media.call_id, "caller") in heard and (media.call_id, "callee") in heard:
                    both.setdefault(
                        media.call_id,
                        max(heard[(media.call_id, "caller")], heard[(media.call_id, "callee")]),
                    )
            time.sleep(0.002)
    return both


@dataclass
class SdesCall:
    """One more call, SDES-SRTP from the caller, plain to the callee (in the workers)."""

    caller: Peer
    callee: Peer
    srtp: Srtp | None = None
    caller_sends_to: tuple[str, int] = ("", 0)
    callee_sends_to: tuple[str, int] = ("", 0)
    call_id: str = "rds-sdes"

    def set_up(self, ng: NgClient) -> None:
        own = os.urandom(30)
        crypto = f"1 {SUITE} inline:{inline(own)}"
        offer = ok(
            ng.call("offer", call_id=self.call_id, from_tag=CALLER_TAG,
                    sdp=savp_sdp(self.caller.address[0], self.caller.address[1], crypto),
                    transport_protocol="RTP/AVP")
        )  # fmt: skip
        answer = ok(
            ng.call("answer", call_id=self.call_id, from_tag=CALLER_TAG, to_tag=CALLEE_TAG,
                    sdp=sdp(self.callee.address[0], self.callee.address[1]))
        )  # fmt: skip
        [(_, suite, relays)] = crypto_lines(answer["sdp"])
        assert suite == SUITE
        self.srtp = Srtp.make(SUITE, own, relays)
        self.callee_sends_to = advertised(offer["sdp"]).rtp_to
        self.caller_sends_to = advertised(answer["sdp"]).rtp_to

    def flow(self, limit: float, start: int) -> float | None:
        """Packets both ways every 20 ms until each way delivered one, decrypted right: the
        seconds that took, None if not within ``limit``."""
        assert self.srtp is not None
        began = time.monotonic()
        heard: set[str] = set()
        seq = start
        while time.monotonic() - began < limit:
            to_callee = rtp_packet(seq, 0x3333, 3)
            to_caller = rtp_packet(seq, 0x4444, 4)
            self.caller.send(self.srtp.send.protect(to_callee), self.caller_sends_to)
            self.callee.send(to_caller, self.callee_sends_to)
            seq += 1
            time.sleep(0.02)
            for got in self.callee.receive(100, timeout=0):
                if got.data[8:12] == to_callee[8:12] and len(got.data) == len(to_callee):
                    heard.add("callee")
            for got in self.caller.receive(100, timeout=0):
                with contextlib.suppress(pylibsrtp.Error):
                    if self.srtp.receive.unprotect(got.data)[8:12] == to_caller[8:12]:
                        heard.add("caller")
            if heard == {"caller", "callee"}:
                return time.monotonic() - began
        return None


def _confirmed_in_redis(conn: redis.Redis, call_ids: list[str]) -> bool:
    return not _unconfirmed_in_redis(conn, call_ids)


def _unconfirmed_in_redis(conn: redis.Redis, call_ids: list[str]) -> dict[str, int | None]:
    """The calls whose value lacks two confirmed streams: how many it has (None: no value)."""
    values = conn.mget([call_key(c) for c in call_ids])
    counts = {
        c: None if v is None else str(v).count('"confirmed":true')
        for c, v in zip(call_ids, values, strict=True)
    }
    return {c: n for c, n in counts.items() if n is None or n < 2}


def _streams(relay: RelaydProcess, call_ids: list[str]) -> dict[str, Any]:
    """What relayd says of these calls' streams: each stream's flags, per tag."""
    with relay.client() as ng:
        return {c: stream_flags(ng.call("query", call_id=c)) for c in call_ids}


def _media_sockets(ns: str) -> list[str]:
    lines = run_in(ns, "ss", "-Hulnp").splitlines()
    return [line for line in lines if any(f":{p} " in line for p in MEDIA_PORTS)]


def test_the_standby_takes_the_calls_over_with_their_media(net: Net, tmp_path: Path) -> None:
    server = RedisServer(net.ns("sw"), tmp_path)
    server.start()
    a = _relay(net, "a", tmp_path / "a", own=1, peer=2)
    b = _relay(net, "b", tmp_path / "b", own=2, peer=1)
    again = _relay(net, "a", tmp_path / "a", own=1, peer=2)  # a, restarted
    peers: list[Peer] = []
    try:
        a.start()
        b.start()
        calls = []
        for i in range(CALLS):
            caller = Peer(net.ns("caller"), f"{NET}.11", CALLER_BASE + 2 * i)
            callee = Peer(net.ns("callee"), f"{NET}.12", CALLEE_BASE + 2 * i)
            peers += [caller, callee]
            calls.append(CallMedia(f"rds-{i}", caller, callee))
        sdes = SdesCall(
            Peer(net.ns("caller"), f"{NET}.11", SRTP_CALLER),
            Peer(net.ns("callee"), f"{NET}.12", SRTP_CALLEE),
        )
        peers += [sdes.caller, sdes.callee]
        ids = [m.call_id for m in calls]
        with a.client() as ng:
            for media in calls:
                _set_up(ng, net, media)
            sdes.set_up(ng)
        flowing = _flow(calls, 5.0, 0)
        assert len(flowing) == CALLS, f"media both ways on {len(flowing)} of {CALLS} calls on a"
        assert sdes.flow(3.0, 0) is not None, "the SDES call's media on a"
        db1 = server.client(1)
        _until(
            lambda: _confirmed_in_redis(db1, ids),
            5.0,
            "the confirmed endpoints in Redis",
            lambda: (
                f"{_unconfirmed_in_redis(db1, ids)}; a: {_ha(a)}; "
                f"{_streams(a, list(_unconfirmed_in_redis(db1, ids))[:3])}"
            ),
        )
        _until(lambda: _ha(b)["foreign_calls"] == CALLS + 1, 5.0, "b holding every call")
        with b.client() as ng:
            listed = ok(ng.call("list", limit=100))["calls"]
            assert sorted(listed) == sorted([*ids, sdes.call_id])  # as 10.5
            for call_id in ids:  # foreign: answered as the active would
                assert set(ok(ng.call("query", call_id=call_id))["tags"]) == {
                    CALLER_TAG,
                    CALLEE_TAG,
                }
        assert _ha(a)["own_calls"] == CALLS + 1 and _ha(b)["own_calls"] == 0
        time.sleep(0.5)  # the last writes (the hand-over to the kernel) reach b

        # the active dies; keepalived moves the address and announces it
        assert a.proc is not None
        a.proc.send_signal(signal.SIGKILL)
        a.proc.wait(10)
        _ip("-n", net.ns("a"), "addr", "del", f"{VIP}/24", "dev", "eth0")
        _ip("-n", net.ns("b"), "addr", "add", f"{VIP}/24", "dev", "eth0")
        for role in ("caller", "callee"):
            _ip("-n", net.ns(role), "neigh", "flush", "dev", "eth0")
        back = _flow(calls, TAKEOVER_LIMIT, 1000)
        slow = sorted(set(ids) - set(back))
        assert len(back) >= 0.95 * CALLS, f"{len(back)} calls back within 2 s; not: {slow}"
        srtp_back = sdes.flow(2.0, 1000)  # the same keys, now in b's worker
        assert srtp_back is not None, "the SDES call's media on b"
        times = sorted(back.values())
        print(  # the figures of docs/operations.md
            f"takeover: {len(back)}/{CALLS} calls both ways again, first {times[0]:.3f} s, "
            f"median {times[len(times) // 2]:.3f} s, last {times[-1]:.3f} s; "
            f"the SDES call {srtp_back:.3f} s after them"
        )
        status = _ha(b)
        assert status["own_calls"] == CALLS + 1 and status["takeovers"] == CALLS + 1, status
        with b.client() as ng:
            for call_id in ids:
                ok(ng.call("query", call_id=call_id))
        assert table_elements(net.ns("b")), "b's kernel forwards"

        # the old active comes back: it takes nothing back, it holds b's calls as foreign
        again.start()
        _until(
            lambda: _ha(again)["foreign_calls"] == CALLS + 1,
            5.0,
            "a holding b's calls",
            lambda: _ha(again),
        )
        assert _ha(again)["own_calls"] == 0
        elements = table_elements(net.ns("a"))
        assert elements is not None and all(v == [] for v in elements.values()), elements
        assert len(_flow(calls, 2.0, 2000)) == CALLS  # b still carries them all

        # Redis goes away: calls go on; back empty, it gets every call again
        server.kill()
        assert len(_flow(calls, 2.0, 3000)) == CALLS
        _until(lambda: _ha(b)["redis_errors"] > 0, 5.0, "b counting Redis errors")
        server.start()
        db2 = server.client(2)
        _until(lambda: db2.scard(INDEX_KEY) == CALLS + 1, 8.0, "b's calls written again")
        values = db2.mget([call_key(c) for c in ids])
        assert all(v is not None and json.loads(v)["call"]["call_id"] for v in values)
        _until(lambda: _ha(again)["foreign_calls"] == CALLS + 1, 8.0, "a following b again")

        # a planned switch back: b steps down, the address goes home, a takes the calls
        released = AdminClient(str(b.admin_socket)).request("standby")
        assert released["released"] == CALLS + 1, released
        _ip("-n", net.ns("b"), "addr", "del", f"{VIP}/24", "dev", "eth0")
        _ip("-n", net.ns("a"), "addr", "add", f"{VIP}/24", "dev", "eth0")
        for role in ("caller", "callee"):
            _ip("-n", net.ns(role), "neigh", "flush", "dev", "eth0")
        home = _flow(calls, TAKEOVER_LIMIT, 4000)
        assert len(home) >= 0.95 * CALLS, f"{len(home)} calls back on a within 2 s"
        assert sdes.flow(2.0, 2000) is not None, "the SDES call's media back on a"
        assert _ha(again)["own_calls"] == CALLS + 1 and _ha(b)["own_calls"] == 0
        db1 = server.client(1)
        _until(lambda: db1.scard(INDEX_KEY) == CALLS + 1, 5.0, "a's calls in a's database")

        with again.client() as ng:
            for call_id in [*ids, sdes.call_id]:
                ok(ng.call("delete", call_id=call_id))
        _until(lambda: _ha(b)["foreign_calls"] == 0, 5.0, "b dropping the ended calls")
        _until(lambda: db1.scard(INDEX_KEY) == 0, 5.0, "the calls' keys deleted")
        assert db2.scard(INDEX_KEY) == 0
        for role in ("a", "b"):
            ns = net.ns(role)
            _until(lambda ns=ns: not _media_sockets(ns), 5.0, f"{role}'s media ports closed")
            elements = table_elements(ns)
            assert elements is not None and all(v == [] for v in elements.values()), elements
            _until(lambda ns=ns: not conntrack_entries(ns, MEDIA_PORTS), 5.0, f"{role}'s conntrack")
    finally:
        for peer in peers:
            peer.close()
        for relay in (again, b, a):
            relay.stop()
        server.kill()
