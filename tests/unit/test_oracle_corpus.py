"""The rtpengine oracle corpus, replayed in process against relayd's ng core.

``tests/interop/test_oracle.py`` replays every case of ``tests/data/oracle/cases.json``
against a live rtpengine 10.5 and a live relayd daemon. Here the same cases go
through relayd's own ng shell (:class:`relayd.ng.server.NgService`: framing,
bencode/JSON decoding, error replies) into the pure core the supervisor builds
from its configuration (:class:`Commands` on :class:`Signalling`,
:class:`PortAllocator`, :class:`Interfaces`), with the interfaces and port range
the interop test gives relayd; no daemon, socket or root. The replies are
compared with rtpengine's recorded ones (``tests/data/oracle/expected/``) by the
same ``differences`` and ``port_problems`` as the interop test, from
``tests/support/oracle.py``.

What differs from the daemon: :class:`FakeBinder` binds nothing, the clock is
fixed (10 ms per request), each case gets a fresh core (the call-ids of the
corpus are unique, so state across cases never mattered), and the media plane,
kernel path and journal that ``Supervisor.dispatch`` also feeds are left out:
they never change a reply. Ports, ICE credentials, candidate foundations, SDES
keys, the DTLS fingerprint and the loop marker are drawn at random as in the
daemon; the normaliser replaces every one of them by a placeholder numbered by
first appearance, and the port rules are checked on the raw SDPs, so the
outcome does not depend on the draw.
"""

from __future__ import annotations

import itertools
import os
import traceback
from typing import Any

import pytest

from relayd.calls.commands import Commands
from relayd.calls.interfaces import resolve
from relayd.calls.playback import Playbacks
from relayd.calls.ports import PortAllocator
from relayd.certificate import Certificate, load_or_create
from relayd.config import Config, load
from relayd.ng.message import Request, split_cookie
from relayd.ng.server import NgService
from relayd.plane.playback import probe_source
from relayd.supervisor import limits_of, signalling_of
from tests.support import oracle
from tests.support.oracle import Case, StepResult
from tests.unit.calls import T0, FakeBinder

CASES = oracle.load_cases()
CASE_IDS = [case.name for case in CASES]

# The options tests/support/relayd.py starts the interop tier's relayd with, less the
# files (pidfile, state directory, admin socket) that only the daemon's shell uses.
ARGV = [
    "--config-file=none",
    *(f"--interface={address}" for address in oracle.INTERFACES),
    f"--listen-ng=127.0.0.1:{oracle.RELAYD_NG_PORT}",
    f"--port-min={oracle.RELAYD_PORTS[0]}",
    f"--port-max={oracle.RELAYD_PORTS[1]}",
    "--table=-1",
    "--log-level=7",
]

NG_SOURCE = ("127.0.0.1", 50000)  # where the requests "come from": only logged
TICK = 0.01  # seconds the clock moves per request


class InProcessRelayd:
    """One relayd as ``relayd.daemon`` and ``Supervisor`` build it, minus sockets and workers.

    :meth:`exchange` takes an ng body and returns the reply body, like the interop
    test's client does with a live daemon.
    """

    def __init__(self, config: Config, certificate: Certificate) -> None:
        self.now = T0
        self.binder = FakeBinder()
        workers = config.num_threads or len(os.sched_getaffinity(0))
        ports = PortAllocator(config.port_min, config.port_max, workers, self.binder)
        # addresses only: no device to look up
        signalling = signalling_of(config, resolve(config.interfaces, {}), ports, certificate)
        # play media opens its file as relayd does (PyAV), and sends nothing: no workers
        playbacks = Playbacks(probe_source)
        self.commands = Commands(
            signalling, limits_of(config), started=self.now, playbacks=playbacks
        )
        self.service = NgService(self._dispatch, clock=lambda: self.now)
        self.crashes: list[str] = []  # tracebacks behind "Internal error" replies
        self._cookies = itertools.count()

    def _dispatch(self, req: Request, source: tuple[Any, ...]) -> dict[str, Any]:
        # Supervisor.dispatch's reply is Commands.handle's; an exception becomes
        # "Internal error" there and in NgService alike
        try:
            return self.commands.handle(req, self.now)
        except Exception:
            self.crashes.append(traceback.format_exc())
            raise

    def exchange(self, body: bytes) -> bytes:
        self.now += TICK
        cookie = f"oracle_{next(self._cookies)}"  # never reused: a known cookie hits the cache
        reply = self.service.handle(cookie.encode() + b" " + body, NG_SOURCE)
        assert isinstance(reply, bytes), f"no reply (or a deferred one) to {body[:80]!r}"
        got, reply_body = split_cookie(reply)
        assert got == cookie, (got, cookie)
        return reply_body


@pytest.fixture(scope="module")
def config() -> Config:
    return load(ARGV)


@pytest.fixture(scope="module")
def certificate(config: Config) -> Certificate:
    # generated as the daemon does without tls-certificate: only its length shows
    return load_or_create(config.tls_certificate or None, config.tls_private_key or None)


def replay(case: Case, config: Config, certificate: Certificate) -> tuple[list[StepResult], str]:
    """relayd's replies to ``case``, and the tracebacks of any step that crashed."""
    relayd = InProcessRelayd(config, certificate)
    results = oracle.run_case(case, relayd.exchange)
    return results, "\n".join(relayd.crashes)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_relayd_core_matches_rtpengine(
    case: Case, config: Config, certificate: Certificate
) -> None:
    actual, crashes = replay(case, config, certificate)
    problems = oracle.differences(
        case,
        oracle.load_expected(case),
        oracle.RTPENGINE_PORTS,
        actual,
        oracle.RELAYD_PORTS,
        ("rtpengine", "relayd"),
    )
    problems += [f"relayd {p}" for p in oracle.port_problems(actual, oracle.RELAYD_PORTS)]
    if crashes:
        problems.append(f"relayd crashed:\n{crashes}")
    assert not problems, f"{case.name}: {case.about}\n\n" + "\n\n".join(problems)


def test_config_is_the_interop_relayds(config: Config) -> None:
    """The replay runs with the interop tier's interfaces and port range."""
    assert tuple(spec.local for spec in config.interfaces) == oracle.INTERFACES
    assert (config.port_min, config.port_max) == oracle.RELAYD_PORTS
    assert len(CASES) == len(set(CASE_IDS)) > 0
