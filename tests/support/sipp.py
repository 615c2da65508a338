"""Run sipp (Debian's sip-tester) as the UAC and UAS of an interop test.

Each agent runs in its own process group with bounded options (``-m`` calls,
``-timeout`` with ``-timeout_error``, ``-recv_timeout``) and is killed on exit
from its context even when the test fails.  Its traces go to the test's tmp
dir: ``-trace_stat`` (the cumulative counters are read back), ``-trace_err``
and ``-trace_msg``; the SIP messages of the last are parsed so a test can look
at the SDP each side actually sent and received.

Media: the scenarios give every call its own port (``[auto_media_port]``, see
:func:`auto_media_port`) and play ``tone-pcmu.pcap`` (tests/support/media_files.py) to the
peer's SDP address.  sipp 3.6 sends pcap audio through a raw socket and keeps
no per-call receive statistics (its ``rtp_stream`` would share one port among
all calls), so what flowed is counted on the wire: :func:`running_capture`
runs Wireshark's ``dumpcap`` on the loopback interface and
:func:`read_udp_pcap` reads the capture back, independently of the relay.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from tests.support.media_files import TONE_PACKETS, write_tone
from tests.support.process import new_session_dying_with_parent

__all__ = [
    "DUMPCAP_BIN",
    "SCENARIOS",
    "SIPP_BIN",
    "TONE_PACKETS",
    "TONE_PCAP",
    "MediaLine",
    "PacketCapture",
    "Role",
    "SdpSummary",
    "SippAgent",
    "SippMessage",
    "SippResult",
    "UdpPacket",
    "auto_media_port",
    "capture_available",
    "parse_messages",
    "parse_sdp",
    "read_udp_pcap",
    "running_capture",
    "running_sipp",
    "sipp_available",
    "uac_agent",
    "uas_agent",
    "wait_udp_bound",
]


SIPP_BIN = "/usr/bin/sipp"
DUMPCAP_BIN = "/usr/bin/dumpcap"
SCENARIOS = Path(__file__).resolve().parents[1] / "interop" / "scenarios"
# 2 s of a PCMU tone as 100 RTP packets, 20 ms apart (tests/support/media_files.py).
TONE_PCAP = "tone-pcmu.pcap"


class Role(Enum):
    UAC = "uac"
    UAS = "uas"


def sipp_available() -> bool:
    return shutil.which(SIPP_BIN) is not None


def capture_available() -> bool:
    """dumpcap is installed and this process may capture and send raw packets.

    Both need CAP_NET_RAW: dumpcap to capture on ``lo``, sipp to play pcap audio.
    """
    return shutil.which(DUMPCAP_BIN) is not None and os.geteuid() == 0


def auto_media_port(base: int, call_number: int) -> int:
    """sipp's ``[auto_media_port]`` of its ``call_number``-th call (from 1), ``-mp base``."""
    return base + (4 * (call_number - 1)) % 10000


# -- the SIP messages sipp traced ------------------------------------------------------

_TRACE_SEPARATOR = re.compile(r"^-{20,} .*$", re.MULTILINE)
_TRACE_HEAD = re.compile(
    r"^(?P<transport>\w+) message (?P<direction>sent|received) .*?:\n\n", re.DOTALL
)


@dataclass(frozen=True, slots=True)
class SippMessage:
    """One SIP message in a ``-trace_msg`` log, as sipp sent or received it."""

    received: bool
    transport: str
    start_line: str
    headers: tuple[tuple[str, str], ...]
    body: str

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        for key, value in self.headers:
            if key.lower() == wanted:
                return value
        return None

    @property
    def call_id(self) -> str:
        return self.header("Call-ID") or self.header("i") or ""

    @property
    def is_request(self) -> bool:
        return not self.start_line.startswith("SIP/2.0 ")

    @property
    def method(self) -> str:
        """The request method, or the CSeq method of a response."""
        if self.is_request:
            return self.start_line.split(" ", 1)[0]
        cseq = self.header("CSeq") or ""
        return cseq.split()[-1] if cseq else ""

    @property
    def status(self) -> int | None:
        return None if self.is_request else int(self.start_line.split()[1])

    @property
    def has_sdp(self) -> bool:
        content_type = self.header("Content-Type") or self.header("c") or ""
        return content_type.split(";")[0].strip().lower() == "application/sdp" and bool(
            self.body.strip()
        )


def parse_messages(text: str) -> list[SippMessage]:
    """The messages of a sipp ``-trace_msg`` file, in the order logged."""
    messages: list[SippMessage] = []
    for chunk in _TRACE_SEPARATOR.split(text.replace("\r\n", "\n")):
        head = _TRACE_HEAD.match(chunk.lstrip("\n"))
        if head is None:
            continue
        raw = chunk.lstrip("\n")[head.end() :]
        header_block, _, body = raw.partition("\n\n")
        lines = header_block.split("\n")
        headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            if line[:1] in (" ", "\t") and headers:
                name, value = headers[-1]
                headers[-1] = (name, f"{value} {line.strip()}")
            elif ":" in line:
                name, _, value = line.partition(":")
                headers.append((name.strip(), value.strip()))
        messages.append(
            SippMessage(
                received=head["direction"] == "received",
                transport=head["transport"],
                start_line=lines[0].strip(),
                headers=tuple(headers),
                body=body.strip("\n"),
            )
        )
    return messages


# -- the SDP fields the tests look at --------------------------------------------------


@dataclass(frozen=True, slots=True)
class MediaLine:
    """An ``m=`` section with the address and RTCP port that apply to it."""

    media: str
    port: int
    protocol: str
    formats: tuple[str, ...]
    connection: str | None
    rtcp_port: int | None
    attributes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SdpSummary:
    """Just enough of an SDP (RFC 8866) to check what a relay rewrote."""

    origin_address: str | None
    session_connection: str | None
    media: tuple[MediaLine, ...]
    text: str


@dataclass(slots=True)
class _Section:
    media: str
    port: int
    protocol: str
    formats: tuple[str, ...]
    connection: str | None = None
    rtcp_port: int | None = None
    attributes: list[str] = field(default_factory=list)


def parse_sdp(text: str) -> SdpSummary:
    """Parse ``o=``, ``c=``, ``m=`` and ``a=rtcp:`` (RFC 3605) out of ``text``.

    Deliberately independent of relayd's own SDP code: this is the oracle.
    """
    origin: str | None = None
    session_connection: str | None = None
    sections: list[_Section] = []
    for line in text.replace("\r\n", "\n").split("\n"):
        key, _, value = line.strip().partition("=")
        if key == "o":
            origin = value.split()[-1]
        elif key == "c":
            address = value.split()[-1].split("/")[0]
            if sections:
                sections[-1].connection = address
            else:
                session_connection = address
        elif key == "m":
            kind, port, protocol, *formats = value.split()
            sections.append(_Section(kind, int(port.split("/")[0]), protocol, tuple(formats)))
        elif key == "a" and sections:
            sections[-1].attributes.append(value)
            if value.startswith("rtcp:"):
                sections[-1].rtcp_port = int(value[5:].split()[0])
    media = tuple(
        MediaLine(
            media=section.media,
            port=section.port,
            protocol=section.protocol,
            formats=section.formats,
            connection=section.connection or session_connection,
            rtcp_port=section.rtcp_port,
            attributes=tuple(section.attributes),
        )
        for section in sections
    )
    return SdpSummary(origin, session_connection, media, text)


# -- results ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SippResult:
    """What one sipp run left behind."""

    role: Role
    returncode: int | None
    stats: Mapping[str, str]
    messages: Sequence[SippMessage]
    errors: str
    screen: str
    timed_out: bool
    args: Sequence[str] = field(repr=False)

    def counter(self, name: str) -> int:
        """A cumulative counter of the stat file, e.g. ``SuccessfulCall``."""
        value = self.stats.get(f"{name}(C)", "0")
        return int(value) if value.isdigit() else 0

    @property
    def successful_calls(self) -> int:
        return self.counter("SuccessfulCall")

    @property
    def failed_calls(self) -> int:
        return self.counter("FailedCall")

    def received_sdp(self) -> dict[str, SdpSummary]:
        """The first SDP this side received in each call, keyed by Call-ID."""
        return self._first_sdp(received=True)

    def sent_sdp(self) -> dict[str, SdpSummary]:
        """The first SDP this side sent in each call (its own media port), by Call-ID."""
        return self._first_sdp(received=False)

    def _first_sdp(self, *, received: bool) -> dict[str, SdpSummary]:
        found: dict[str, SdpSummary] = {}
        for message in self.messages:
            if message.received == received and message.has_sdp:
                found.setdefault(message.call_id, parse_sdp(message.body))
        return found

    def received(self, call_id: str) -> list[SippMessage]:
        return [m for m in self.messages if m.received and m.call_id == call_id]

    def describe(self) -> str:
        """A failure message with the run's own words."""
        return (
            f"sipp {self.role.value} exited {self.returncode}"
            f"{' after being stopped' if self.timed_out else ''}; "
            f"successful={self.successful_calls} failed={self.failed_calls}\n"
            f"args: {' '.join(self.args)}\n--- errors\n{self.errors[-4000:]}\n"
            f"--- screen\n{self.screen[-4000:]}"
        )


# -- running sipp -------------------------------------------------------------------------


class SippAgent:
    """One sipp process, bounded in calls and time, traced into ``workdir``."""

    def __init__(
        self,
        workdir: Path,
        role: Role,
        *,
        scenario: Path,
        local: tuple[str, int],
        media: tuple[str, int],
        calls: int,
        remote: tuple[str, int] | None = None,
        rate: float | None = None,
        rate_period_ms: int = 1000,
        max_concurrent: int | None = None,
        call_duration_ms: int | None = None,
        keys: Mapping[str, str] | None = None,
        service: str = "relayd",
        timeout_s: float = 30.0,
        recv_timeout_ms: int = 10000,
        media_files: Sequence[str] = (TONE_PCAP,),
        extra: Sequence[str] = (),
    ) -> None:
        self.workdir = workdir
        self.media_files = tuple(media_files)
        self.role = role
        self.timeout_s = timeout_s
        name = role.value
        self.stat_path = workdir / f"sipp-{name}-stat.csv"
        self.error_path = workdir / f"sipp-{name}-errors.log"
        self.message_path = workdir / f"sipp-{name}-messages.log"
        self.screen_path = workdir / f"sipp-{name}-screen.log"
        args = [SIPP_BIN]
        if remote is not None:
            args.append(f"{remote[0]}:{remote[1]}")
        args += [
            "-sf", str(scenario),
            "-i", local[0],
            "-p", str(local[1]),
            "-mi", media[0],
            "-mp", str(media[1]),
            "-t", "u1",
            "-m", str(calls),
            "-s", service,
            "-nostdin",
            "-timeout", f"{timeout_s:g}s",
            "-timeout_error",
            "-recv_timeout", str(recv_timeout_ms),
            "-trace_stat", "-stf", str(self.stat_path), "-fd", "1",
            "-trace_err", "-error_file", str(self.error_path),
            "-trace_msg", "-message_file", str(self.message_path),
        ]  # fmt: skip
        if rate is not None:
            args += ["-r", f"{rate:g}", "-rp", str(rate_period_ms)]
        if max_concurrent is not None:
            args += ["-l", str(max_concurrent)]
        if call_duration_ms is not None:
            args += ["-d", str(call_duration_ms)]
        for key, value in (keys or {}).items():
            args += ["-key", key, value]
        args += list(extra)
        self.args = args
        self.local = local
        self.proc: subprocess.Popen[bytes] | None = None
        self.timed_out = False

    def start(self) -> None:
        # The scenarios name their pcap files relative to sipp's working directory.
        for name in self.media_files:
            if not (self.workdir / name).exists():
                write_tone(name, self.workdir)
        with open(self.screen_path, "wb") as screen:
            self.proc = subprocess.Popen(
                self.args,
                stdin=subprocess.DEVNULL,
                stdout=screen,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                preexec_fn=new_session_dying_with_parent,
            )

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait(self, timeout: float | None = None) -> SippResult:
        """Wait for sipp to finish on its own (killing it past ``timeout``)."""
        assert self.proc is not None, "start() first"
        limit = self.timeout_s + 5.0 if timeout is None else timeout
        try:
            self.proc.wait(limit)
        except subprocess.TimeoutExpired:
            self.timed_out = True
            self.stop()
        return self.result()

    def stop(self, grace: float = 2.0) -> None:
        """Soft exit first (SIGUSR1 lets sipp write its stats), then kill."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            _signal_group(proc.pid, signal.SIGUSR1)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait(grace)
        _signal_group(proc.pid, signal.SIGKILL)

    def result(self) -> SippResult:
        return SippResult(
            role=self.role,
            returncode=None if self.proc is None else self.proc.poll(),
            stats=_read_stats(self.stat_path),
            messages=parse_messages(_read(self.message_path)),
            errors=_read(self.error_path),
            screen=_read(self.screen_path),
            timed_out=self.timed_out,
            args=tuple(self.args),
        )


def uas_agent(
    workdir: Path,
    *,
    calls: int,
    local: tuple[str, int] = ("127.0.0.20", 25062),
    media_port: int = 27000,
    scenario: Path = SCENARIOS / "uas.xml",
    media_files: Sequence[str] = (TONE_PCAP,),
    timeout_s: float = 30.0,
    extra: Sequence[str] = (),
) -> SippAgent:
    """The answering side: exits after ``calls`` calls have ended."""
    return SippAgent(
        workdir,
        Role.UAS,
        scenario=scenario,
        local=local,
        media=(local[0], media_port),
        calls=calls,
        timeout_s=timeout_s,
        media_files=media_files,
        extra=extra,
    )


def uac_agent(
    workdir: Path,
    *,
    proxy: tuple[str, int],
    uas: tuple[str, int],
    calls: int,
    rate: float = 10.0,
    call_duration_ms: int = 200,
    max_concurrent: int | None = None,
    local: tuple[str, int] = ("127.0.0.10", 25061),
    media_port: int = 26000,
    scenario: Path = SCENARIOS / "uac.xml",
    media_files: Sequence[str] = (TONE_PCAP,),
    timeout_s: float = 30.0,
    extra: Sequence[str] = (),
) -> SippAgent:
    """The calling side: ``calls`` calls at ``rate`` per second through ``proxy``."""
    return SippAgent(
        workdir,
        Role.UAC,
        scenario=scenario,
        remote=proxy,
        local=local,
        media=(local[0], media_port),
        calls=calls,
        rate=rate,
        max_concurrent=max_concurrent if max_concurrent is not None else calls,
        call_duration_ms=call_duration_ms,
        keys={"uas_host": f"{uas[0]}:{uas[1]}"},
        timeout_s=timeout_s,
        media_files=media_files,
        extra=extra,
    )


@contextmanager
def running_sipp(agent: SippAgent, *, wait_bound: bool = True) -> Iterator[SippAgent]:
    """``agent`` started (and, by default, listening) for the block; killed after it."""
    agent.start()
    try:
        if wait_bound:
            wait_udp_bound(agent.local, process=agent)
        yield agent
    finally:
        agent.stop()


def wait_udp_bound(
    address: tuple[str, int], *, timeout: float = 5.0, process: SippAgent | None = None
) -> None:
    """Wait until some socket is bound to the IPv4 UDP ``address`` (/proc/net/udp)."""
    host, port = address
    wanted = "{:08X}:{:04X}".format(
        int.from_bytes(bytes(int(part) for part in host.split(".")), "little"), port
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.proc is not None and process.proc.poll() is not None:
            raise RuntimeError(f"sipp exited before binding:\n{process.result().describe()}")
        with open("/proc/net/udp") as table:
            if any(line.split()[1] == wanted for line in list(table)[1:]):
                return
        time.sleep(0.02)
    raise RuntimeError(f"nothing bound to udp {host}:{port} within {timeout} s")


# -- what flowed on the wire --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UdpPacket:
    """One IPv4 UDP datagram seen on the wire."""

    src: tuple[str, int]
    dst: tuple[str, int]
    payload: bytes


# Link-layer header length by libpcap LINKTYPE: Ethernet, Linux cooked v1 and v2.
_LINK_HEADER = {1: 14, 113: 16, 276: 20}
_ETHERTYPE_AT = {1: 12, 113: 14, 276: 0}


def read_udp_pcap(path: Path) -> list[UdpPacket]:
    """The IPv4 UDP datagrams of a classic libpcap file, in capture order.

    Written against the file format (pcap-savefile(5)), not relayd's code, so
    that what the relay forwarded is judged by an independent reader.
    """
    data = path.read_bytes()
    if len(data) < 24:
        raise ValueError(f"{path}: no libpcap header ({len(data)} bytes)")
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        endian = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        endian = ">"
    else:
        raise ValueError(f"{path}: not a libpcap file (pcapng? dumpcap needs -P)")
    (linktype,) = struct.unpack_from(endian + "I", data, 20)
    linktype &= 0x0FFFFFFF
    if linktype not in _LINK_HEADER:
        raise ValueError(f"{path}: link type {linktype} not supported")
    link = _LINK_HEADER[linktype]
    ethertype_at = _ETHERTYPE_AT[linktype]
    packets: list[UdpPacket] = []
    offset = 24
    while offset + 16 <= len(data):
        _, _, caplen, _ = struct.unpack_from(endian + "IIII", data, offset)
        frame = data[offset + 16 : offset + 16 + caplen]
        offset += 16 + caplen
        if len(frame) < link + 28 or frame[ethertype_at : ethertype_at + 2] != b"\x08\x00":
            continue
        ip = frame[link:]
        ihl = (ip[0] & 0x0F) * 4
        (total_length,) = struct.unpack_from("!H", ip, 2)
        (fragment,) = struct.unpack_from("!H", ip, 6)
        if ip[0] >> 4 != 4 or ip[9] != 17 or fragment & 0x3FFF:
            continue
        udp = ip[ihl:total_length]
        if len(udp) < 8:
            continue
        sport, dport, length = struct.unpack_from("!HHH", udp)
        packets.append(
            UdpPacket(
                src=(socket.inet_ntoa(ip[12:16]), sport),
                dst=(socket.inet_ntoa(ip[16:20]), dport),
                payload=bytes(udp[8:length]),
            )
        )
    return packets


_DUMPCAP_COUNTS = re.compile(r"Packets received/dropped on interface .*: (\d+)/(\d+)")


class PacketCapture:
    """Wireshark's ``dumpcap`` writing what ``bpf`` matches on ``interface`` to a pcap."""

    def __init__(
        self, workdir: Path, *, bpf: str, interface: str = "lo", name: str = "media"
    ) -> None:
        self.path = workdir / f"{name}.pcap"
        self.log_path = workdir / f"{name}-dumpcap.log"
        # -P: classic libpcap format; -B: a kernel buffer (MiB) that copes with bursts.
        self.args = [
            DUMPCAP_BIN, "-q", "-i", interface, "-f", bpf, "-P", "-B", "64", "-w", str(self.path),
        ]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait: float = 10.0) -> None:
        """Start dumpcap and return once it has opened the interface and its file."""
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.path.parent,
                preexec_fn=new_session_dying_with_parent,
            )
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dumpcap exited at start-up:\n{self.log()}")
            if "File:" in self.log() and self.path.exists() and self.path.stat().st_size >= 24:
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"dumpcap did not start capturing within {wait} s:\n{self.log()}")

    def stop(self, timeout: float = 5.0) -> None:
        """SIGINT makes dumpcap flush its file and report its counts; kill if it hangs."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            _signal_group(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait(timeout)
        _signal_group(proc.pid, signal.SIGKILL)

    def log(self) -> str:
        return _read(self.log_path)

    def dropped(self) -> int | None:
        """Packets the capture lost (None until dumpcap reported its counts)."""
        found = _DUMPCAP_COUNTS.findall(self.log())
        return sum(int(lost) for _, lost in found) if found else None

    def packets(self) -> list[UdpPacket]:
        return read_udp_pcap(self.path)


@contextmanager
def running_capture(
    workdir: Path, *, bpf: str, interface: str = "lo", name: str = "media"
) -> Iterator[PacketCapture]:
    """A capture running for the block, stopped (and its file complete) after it."""
    capture = PacketCapture(workdir, bpf=bpf, interface=interface, name=name)
    capture.start()
    try:
        yield capture
    finally:
        capture.stop()


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def _read_stats(path: Path) -> dict[str, str]:
    """The last row of a ``-trace_stat`` file: cumulative counters by column name."""
    lines = [line for line in _read(path).splitlines() if line.strip()]
    if len(lines) < 2:
        return {}
    names = lines[0].rstrip(";").split(";")
    values = lines[-1].rstrip(";").split(";")
    return dict(zip(names, values, strict=False))


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with suppress(ProcessLookupError):
        os.killpg(pgid, sig)
