"""The shard processes of a sharded relayd, as the front sees them: their lives and their links.

:class:`ShardPool` starts one ``python -m relayd.shards.shard`` per shard (with its end
of a link, its readiness pipe, its CPUs and the shards' sockets to each other:
relayd.shards.mesh), knows when each is up, tells it to join the ng address
(``listen``, one at a time, so that it knows the order of the ng address's group and
gives it a program that steers each datagram to its call's shard: relayd.shards.steer)
once the front serves, starts a dead one again (0.1 s after its death,
doubling to 5 s while it keeps dying young, as the workers are:
relayd.plane.workerpool), and carries the front's questions (:meth:`ShardPool.ask`)
and one-way messages (:meth:`ShardPool.send`) over the links. What a shard asks of the
front (``fanout``: a ``list`` or ``statistics`` of every shard) goes to ``on_request``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import itertools
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from relayd import log
from relayd.plane.workerpool import RESTART_STABLE, restart_delay
from relayd.shards import link, steer
from relayd.shards.mesh import Mesh

__all__ = ["Shard", "ShardPool", "shard_cpus"]

logger = log.get_logger("relayd.front")

_READY_TIMEOUT = 60.0  # seconds a shard may take to restore its journal and start
_ANSWER_TIMEOUT = 5.0  # seconds the front waits for a shard's answer
_PR_SET_PDEATHSIG = 1


def shard_cpus(cpus: list[int], index: int, count: int) -> list[int]:
    """The CPUs shard ``index`` and its workers run on: every ``count``-th of the CPUs
    relayd may use, so N shards on C cores share none while C >= N; all of them else."""
    if count > len(cpus):
        return cpus
    return cpus[index::count]


def _die_with_parent() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Shard:
    """One shard process and the front's end of its link."""

    index: int
    cpus: list[int]
    proc: subprocess.Popen[bytes] | None = None
    link: socket.socket | None = None
    up: bool = False
    spawned_at: float = 0.0
    quick_deaths: int = 0
    dropped: int = 0  # messages refused: shard down or its link full
    restart: asyncio.TimerHandle | None = None
    pending: set[int] = field(default_factory=set)  # tags it owes an answer


class ShardPool:
    """The shards: started with the daemon's own arguments after ``--``. Once ``serving``
    (the front's listeners are open) each shard that is up joins the ng address."""

    def __init__(self, count: int, argv: list[str]) -> None:
        self.argv = argv
        cpus = sorted(os.sched_getaffinity(0))
        self.shards = [Shard(i, shard_cpus(cpus, i, count)) for i in range(count)]
        self.mesh = Mesh(count)
        self.serving = False
        self.group = steer.Group(count)  # the order of the shards' ng sockets in the kernel
        self._joining: int | None = None  # the shard told to join, until it says it has
        self._to_join: list[int] = []  # the shards to tell next, in turn
        self.on_request: Callable[[Shard, tuple[Any, ...]], None] | None = None
        self._tags = itertools.count(1)
        self._answers: dict[int, asyncio.Future[Any]] = {}
        self._stopping = False

    def __len__(self) -> int:
        return len(self.shards)

    def __getitem__(self, index: int) -> Shard:
        return self.shards[index]

    # -- lives --------------------------------------------------------------------------------

    def start(self) -> None:
        for shard in self.shards:
            self._spawn(shard)

    async def all_ready(self, stop: asyncio.Event) -> bool:
        """Wait until every shard says it is ready (or ``stop``, or the time is up)."""
        deadline = time.monotonic() + _READY_TIMEOUT
        while not all(s.up for s in self.shards):
            if time.monotonic() > deadline or stop.is_set():
                return False
            await asyncio.sleep(0.05)
        return True

    def serve(self) -> None:
        """The front serves: every shard that is up joins the ng address (and every shard
        from now on as soon as it is up)."""
        self.serving = True
        for shard in self.shards:
            if shard.up:
                self._join(shard)

    def signal_all(self, signum: int) -> None:
        for shard in self.shards:
            if shard.proc is not None and shard.proc.poll() is None:
                shard.proc.send_signal(signum)

    async def stop(self) -> None:
        """SIGTERM to every shard (no restarts from here on), then wait for each."""
        self._stopping = True
        for shard in self.shards:
            if shard.restart is not None:
                shard.restart.cancel()
        self.signal_all(signal.SIGTERM)
        for shard in self.shards:
            if shard.proc is not None:
                try:
                    await asyncio.to_thread(shard.proc.wait, 15.0)
                except subprocess.TimeoutExpired:
                    shard.proc.kill()

    def _spawn(self, shard: Shard) -> None:
        front_end, shard_end = link.pair()
        ready_read, ready_write = os.pipe()
        inbound, peers = self.mesh.descriptors(shard.index)
        passed = [shard_end.fileno(), ready_write, inbound, *peers]
        args = [
            sys.executable,
            "-m",
            "relayd.shards.shard",
            "--index",
            str(shard.index),
            "--shards",
            str(len(self.shards)),
            "--link",
            str(shard_end.fileno()),
            "--ready",
            str(ready_write),
            "--cpus",
            ",".join(map(str, shard.cpus)),
            "--inbound",
            str(inbound),
            "--peers",
            ",".join(map(str, peers)),
            "--",
            *self.argv,
        ]
        shard.proc = subprocess.Popen(args, pass_fds=passed, preexec_fn=_die_with_parent)
        shard.spawned_at = time.monotonic()
        shard_end.close()
        os.close(ready_write)
        shard.link = front_end
        loop = asyncio.get_running_loop()
        loop.add_reader(front_end.fileno(), self._readable, shard)
        loop.add_reader(ready_read, self._ready, shard, ready_read)
        logger.info("shard.spawned", shard=shard.index, pid=shard.proc.pid, cpus=shard.cpus)

    def _ready(self, shard: Shard, fd: int) -> None:
        asyncio.get_running_loop().remove_reader(fd)
        try:
            ready = os.read(fd, 1) == b"1"
        except OSError:
            ready = False
        os.close(fd)
        if ready:
            shard.up = True
            logger.info("shard.ready", shard=shard.index)
            if self.serving:
                self._join(shard)

    # -- the ng address's group ---------------------------------------------------------------

    def _join(self, shard: Shard) -> None:
        """Have the shard join the ng address once no other is joining: one at a time, so
        that the front knows the order of the group (steer.Group)."""
        if shard.index not in self._to_join:
            self._to_join.append(shard.index)
        self._next_join()

    def _next_join(self) -> None:
        while self._joining is None and self._to_join:
            shard = self.shards[self._to_join.pop(0)]
            if shard.up and self.send(shard, ("listen", 0)):
                self._joining = shard.index

    def _listening(self, shard: Shard, joined: bool) -> None:
        """The shard has joined the ng address (or has none to join)."""
        if self._joining != shard.index:
            return
        self._joining = None
        if joined:
            self.group.joined(shard.index)
            self._steer()
        self._next_join()

    def _steer(self) -> None:
        """Give the group its program for the order it has now (any shard in it attaches it)."""
        table = self.group.table()
        for index in reversed(self.group.order):
            if self.send(self.shards[index], ("steer", 0, table)):
                return

    def _readable(self, shard: Shard) -> None:
        sock = shard.link
        if sock is None:
            return
        try:
            messages = link.receive(sock)
        except link.Closed:
            self._died(shard)
            return
        for message in messages:
            if message[0] == "reply":
                shard.pending.discard(message[1])
                future = self._answers.pop(message[1], None)
                if future is not None and not future.done():
                    future.set_result(message[2])
            elif message[0] == "listening":
                self._listening(shard, message[2])
            elif self.on_request is not None:
                self.on_request(shard, message)

    def _died(self, shard: Shard) -> None:
        loop = asyncio.get_running_loop()
        if shard.link is not None:
            loop.remove_reader(shard.link.fileno())
            shard.link.close()
            shard.link = None
        shard.up = False
        status = None
        if shard.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                status = shard.proc.wait(timeout=1.0)
            if status is None:
                shard.proc.kill()
                status = shard.proc.wait()
        for tag in shard.pending:
            future = self._answers.pop(tag, None)
            if future is not None and not future.done():
                future.set_exception(link.Closed(f"shard {shard.index} died"))
        shard.pending.clear()
        if self._stopping:
            return
        # its socket left the group (the process is gone): the last one took its place
        if shard.index in self._to_join:
            self._to_join.remove(shard.index)
        if self._joining == shard.index:
            self._joining = None
        if self.group.left(shard.index):
            self._steer()
        self._next_join()
        young = time.monotonic() - shard.spawned_at < RESTART_STABLE
        shard.quick_deaths = shard.quick_deaths + 1 if young else 0
        delay = restart_delay(shard.quick_deaths)
        logger.error("shard.died", shard=shard.index, status=status, restart_in=delay)
        shard.restart = loop.call_later(delay, self._spawn, shard)

    # -- the links ----------------------------------------------------------------------------

    def send(self, shard: Shard, message: tuple[Any, ...]) -> bool:
        """A one-way message (the shard answers the client itself); False, counted, when
        the shard is not up or its link is full."""
        if not shard.up or shard.link is None:
            shard.dropped += 1
            return False
        try:
            sent = link.send(shard.link, message)
        except link.Closed:
            sent = False
        if not sent:
            shard.dropped += 1
            logger.warning("shard.refused", shard=shard.index, up=shard.up)
        return sent

    async def ask(self, shard: Shard, kind: str, *body: Any) -> Any:
        """Send ``(kind, tag, *body)`` and wait for the answer; link.Closed or TimeoutError
        when none comes."""
        tag = next(self._tags)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._answers[tag] = future
        if not self.send(shard, (kind, tag, *body)):
            self._answers.pop(tag, None)
            raise link.Closed(f"shard {shard.index} is not up")
        shard.pending.add(tag)
        try:
            return await asyncio.wait_for(future, _ANSWER_TIMEOUT)
        finally:
            self._answers.pop(tag, None)
            shard.pending.discard(tag)

    async def ask_all(self, kind: str, *body: Any) -> list[Any]:
        return list(await asyncio.gather(*(self.ask(s, kind, *body) for s in self.shards)))

    def metrics(self) -> str:
        """The front's own families: which shards are up, what could not be passed on."""
        shards = self.shards
        lines = [
            "# HELP relayd_shard_up Whether a shard process is up and serving",
            "# TYPE relayd_shard_up gauge",
            *(f'relayd_shard_up{{shard="{s.index}"}} {int(s.up)}' for s in shards),
            "# HELP relayd_shard_dropped_total ng messages the front could not pass to a shard",
            "# TYPE relayd_shard_dropped_total counter",
            *(f'relayd_shard_dropped_total{{shard="{s.index}"}} {s.dropped}' for s in shards),
        ]
        return "\n".join(lines) + "\n"
