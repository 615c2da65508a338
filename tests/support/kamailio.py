"""Run Debian's Kamailio with its rtpengine module as the SIP proxy of a test.

The script is the one operators run (deployment-guide.md, "The proxy side"):
``rtpengine_offer`` on an INVITE with SDP, ``rtpengine_answer`` on 18x/2xx
replies with SDP, ``rtpengine_delete`` on BYE/CANCEL, plus record-route and
loose routing so the BYE of a dialog passes through Kamailio too.  Kamailio
runs in the foreground (``-DD -E``), with its run directory, pid file and
config under the test's tmp dir, and is stopped by process group even when the
test fails.

Every rtpengine function that fails writes an ``RTPENGINE-FAILED`` line to the
log, so a test can prove that all offers, answers and deletes succeeded.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from string import Template

from tests.support.process import new_session_dying_with_parent

__all__ = [
    "DEFAULT_FLAGS",
    "FAILURE_MARK",
    "KAMAILIO_BIN",
    "KAMAILIO_MODULES",
    "KamailioProcess",
    "KamailioSettings",
    "kamailio_available",
    "render_config",
    "running_kamailio",
]


KAMAILIO_BIN = "/usr/sbin/kamailio"
KAMAILIO_MODULES = Path("/usr/lib/x86_64-linux-gnu/kamailio/modules")
DEFAULT_FLAGS = "trust-address replace-origin replace-session-connection"
FAILURE_MARK = "RTPENGINE-FAILED"

_REQUIRED_MODULES = (
    "tm",
    "sl",
    "rr",
    "pv",
    "maxfwd",
    "textops",
    "siputils",
    "xlog",
    "rtpengine",
)

# ``$``-placeholders are filled by string.Template; Kamailio's own pseudo
# variables are written ``$$`` so that Template leaves a single ``$``.
_CONFIG = Template(
    """#!KAMAILIO
# Written by tests/support/kamailio.py for one test run.

debug=$debug
log_stderror=yes
log_prefix="{$$mt $$ci} "
fork=yes
children=$children
disable_tcp=yes
auto_aliases=no
listen=udp:$sip_host:$sip_port
alias="$sip_host:$sip_port"
dns=no
rev_dns=no
use_dns_cache=off

mpath="$module_path"

loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "xlog.so"
loadmodule "rtpengine.so"

modparam("rtpengine", "rtpengine_sock", "$ng_socks")
modparam("rtpengine", "rtpengine_disable_tout", $disable_tout)
modparam("rtpengine", "rtpengine_allow_op", $allow_op)
modparam("rtpengine", "rtpengine_retr", $ng_retries)
modparam("rtpengine", "rtpengine_tout_ms", $ng_timeout_ms)

request_route {
    if (!mf_process_maxfwd_header("10")) {
        sl_send_reply("483", "Too Many Hops");
        exit;
    }

    if (is_method("OPTIONS") && uri == myself && $$rU == $$null) {
        # The harness's readiness probe.
        sl_send_reply("200", "Keepalive");
        exit;
    }

    if (has_totag()) {
        route(WITHINDLG);
        exit;
    }

    if (is_method("CANCEL")) {
        if (t_check_trans()) {
            route(DELETE);
            t_relay();
        }
        exit;
    }

    if (is_method("ACK")) {
        # ACK to a negative reply, absorbed by tm.
        t_check_trans();
        exit;
    }

    t_check_trans();

    if (is_method("INVITE|SUBSCRIBE")) {
        record_route();
    }

    if (is_method("INVITE") && has_body("application/sdp")) {
        if (!rtpengine_offer("$offer_flags")) {
            xlog("L_ERR", "$failure_mark offer $$ci\\n");
            sl_send_reply("503", "rtpengine offer failed");
            exit;
        }
    }

    if (uri == myself) {
        sl_send_reply("404", "Not Here");
        exit;
    }

    route(RELAY);
}

route[WITHINDLG] {
    if (!loose_route()) {
        if (is_method("ACK") && t_check_trans()) {
            t_relay();
            exit;
        }
        sl_send_reply("404", "Not Here");
        exit;
    }
    if (is_method("BYE")) {
        route(DELETE);
    }
    if (is_method("INVITE") && has_body("application/sdp")) {
        # A re-INVITE: the module sends it to the instance that owns the call (its
        # call-id table), so the call keeps its relay ports.
        if (!rtpengine_offer("$offer_flags")) {
            xlog("L_ERR", "$failure_mark reoffer $$ci\\n");
        }
    }
    route(RELAY);
}

route[DELETE] {
    if (!rtpengine_delete()) {
        xlog("L_ERR", "$failure_mark delete $$ci\\n");
    }
}

route[RELAY] {
    if (is_method("INVITE")) {
        t_on_failure("INVITE_FAILED");
    }
    if (!t_relay()) {
        sl_reply_error();
    }
    exit;
}

failure_route[INVITE_FAILED] {
    # The offer allocated a call in the media relay: release it.
    route(DELETE);
}

onreply_route {
    if ((t_check_status("18[0-9]") || t_check_status("2[0-9][0-9]"))
            && has_body("application/sdp")) {
        if (!rtpengine_answer("$flags")) {
            xlog("L_ERR", "$failure_mark answer $$ci $$rs\\n");
        }
    }
}
"""
)


@dataclass(frozen=True, slots=True)
class KamailioSettings:
    """What varies between runs of the proxy script."""

    ng_port: int
    ng_host: str = "127.0.0.1"
    sip_host: str = "127.0.0.1"
    sip_port: int = 25060
    flags: str = DEFAULT_FLAGS
    offer_flags: str = ""  # added to ``flags`` for rtpengine_offer only (``transcode-PCMA``)
    children: int = 4
    debug: int = 2
    ng_retries: int = 2
    ng_timeout_ms: int = 1000
    # more relay instances in the same set (rtpengine_sock): Kamailio picks one per new call
    # by a hash of its Call-ID and keeps every later request of the call on it
    more_ng_ports: tuple[int, ...] = ()
    disable_tout: int = 20  # seconds an instance that stopped answering stays out of use
    # 1: a call's in-dialog requests still go to its instance while that one is disabled
    allow_op: int = 0


def kamailio_available() -> bool:
    """Kamailio and every module the script loads are installed."""
    if not Path(KAMAILIO_BIN).is_file() or shutil.which(KAMAILIO_BIN) is None:
        return False
    return all((KAMAILIO_MODULES / f"{name}.so").is_file() for name in _REQUIRED_MODULES)


def render_config(settings: KamailioSettings) -> str:
    """The kamailio.cfg text for ``settings``."""
    return _CONFIG.substitute(
        debug=settings.debug,
        children=settings.children,
        sip_host=settings.sip_host,
        sip_port=settings.sip_port,
        module_path=f"{KAMAILIO_MODULES}/",
        ng_socks=" ".join(
            f"udp:{settings.ng_host}:{port}" for port in (settings.ng_port, *settings.more_ng_ports)
        ),
        disable_tout=settings.disable_tout,
        allow_op=settings.allow_op,
        ng_retries=settings.ng_retries,
        ng_timeout_ms=settings.ng_timeout_ms,
        flags=settings.flags,
        offer_flags=f"{settings.flags} {settings.offer_flags}".strip(),
        failure_mark=FAILURE_MARK,
    )


class KamailioProcess:
    """One foreground Kamailio with its config, run dir and log under ``workdir``."""

    def __init__(self, workdir: Path, settings: KamailioSettings) -> None:
        self.workdir = workdir
        self.settings = settings
        self.config_path = workdir / "kamailio.cfg"
        self.run_dir = workdir / "kamailio-run"
        self.pid_path = self.run_dir / "kamailio.pid"
        self.log_path = workdir / "kamailio.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def sip_address(self) -> tuple[str, int]:
        return (self.settings.sip_host, self.settings.sip_port)

    def args(self) -> list[str]:
        # -DD: no daemonising, children still forked; -E: log to stderr.
        return [
            KAMAILIO_BIN,
            "-DD",
            "-E",
            "-f",
            str(self.config_path),
            "-Y",
            str(self.run_dir),
            "-P",
            str(self.pid_path),
            "-m",
            "64",
            "-M",
            "8",
        ]

    def check_config(self) -> None:
        """``kamailio -c``: fail early, with Kamailio's own words, on a bad script."""
        self._write_config()
        done = subprocess.run(
            [*self.args(), "-c"], capture_output=True, timeout=20, cwd=self.workdir
        )
        if done.returncode != 0:
            raise RuntimeError(
                "kamailio -c rejected the config:\n" + done.stderr.decode(errors="replace")
            )

    def start(self, wait: float = 10.0) -> None:
        self._write_config()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.args(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                preexec_fn=new_session_dying_with_parent,
            )
        try:
            self._wait_ready(wait)
        except BaseException:
            self.stop()
            raise

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def failures(self) -> list[str]:
        """Log lines of rtpengine functions that returned false."""
        return [line for line in self.log().splitlines() if FAILURE_MARK in line]

    def stop(self, timeout: float = 5.0) -> int | None:
        """Stop Kamailio and every child it forked (they share its process group)."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait(timeout)
        # Children that outlived the main process are still in its group.
        _signal_group(proc.pid, signal.SIGKILL)
        return proc.returncode

    def _write_config(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(render_config(self.settings))

    def _wait_ready(self, wait: float) -> None:
        """Kamailio answers an OPTIONS probe once its SIP workers run."""
        assert self.proc is not None
        deadline = time.monotonic() + wait
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((self.settings.sip_host, 0))
            sock.settimeout(0.2)
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"kamailio exited at start-up:\n{self.log()}")
                sock.sendto(_options_probe(sock.getsockname(), self.sip_address), self.sip_address)
                try:
                    reply = sock.recv(65535)
                except (TimeoutError, ConnectionRefusedError):
                    continue
                if reply.startswith(b"SIP/2.0 200"):
                    return
        raise RuntimeError(f"kamailio did not answer OPTIONS within {wait} s:\n{self.log()}")


def _options_probe(local: tuple[str, int], remote: tuple[str, int]) -> bytes:
    tag = uuid.uuid4().hex[:8]
    return (
        f"OPTIONS sip:{remote[0]}:{remote[1]} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {local[0]}:{local[1]};branch=z9hG4bK{uuid.uuid4().hex}\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:probe@{local[0]}:{local[1]}>;tag={tag}\r\n"
        f"To: <sip:{remote[0]}:{remote[1]}>\r\n"
        f"Call-ID: probe-{uuid.uuid4().hex}\r\n"
        "CSeq: 1 OPTIONS\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with suppress(ProcessLookupError):
        os.killpg(pgid, sig)


@contextmanager
def running_kamailio(workdir: Path, settings: KamailioSettings) -> Iterator[KamailioProcess]:
    """Kamailio running with ``settings`` for the duration of the block."""
    proxy = KamailioProcess(workdir, settings)
    proxy.check_config()
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()
