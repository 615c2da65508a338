"""Configuration: an rtpengine.conf read as it is, plus the same keys as long options.

One source of truth: :func:`load` parses the file section and the command line
once into a frozen :class:`Config`. Every key rtpengine 10.5 knows is accepted;
the ones relayd does not act on yet are reported by :func:`unimplemented` so the
daemon can warn once at start-up. A malformed value raises :class:`ConfigError`
naming the key and, for file values, the line.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from relayd.calls.model import is_address
from relayd.config_keys import KEYS, KeyInfo, Status
from relayd.ha.settings import redis_settings
from relayd.ipc import Learning, learning_mode
from relayd.log import FORMATS
from relayd.ops.hep import CaptureProtocol

__all__ = [
    "KEYS",
    "RELOADABLE",
    "Config",
    "ConfigError",
    "HomerSettings",
    "InterfaceSpec",
    "KeyInfo",
    "build_parser",
    "load",
    "parse_endpoint",
    "parse_interface",
    "reloaded",
    "unimplemented",
]

DEFAULT_CONFIG_FILE = "/etc/rtpengine/rtpengine.conf"
DEFAULT_ADMIN_SOCKET = "/run/relayd/admin.sock"


class ConfigError(ValueError):
    """A configuration value relayd cannot use; the message names key and line."""


@dataclass(frozen=True, slots=True)
class HomerSettings:
    """Where and what relayd sends to Homer (``homer``, ``homer-protocol``, ``homer-id``, …)."""

    address: tuple[str, int]
    protocol: str = "udp"  # or "tcp"
    capture_id: int = 0
    ng: bool = False
    rtcp: bool = True
    ng_protocol: int = CaptureProtocol.NG


@dataclass(frozen=True, slots=True)
class InterfaceSpec:
    """``[NAME/]LOCAL[!ADVERTISED]``: one address of a logical interface."""

    name: str
    local: str  # an IP address, or a system device name resolved at start-up
    advertised: str | None = None

    @property
    def is_device(self) -> bool:
        return not is_address(self.local)


def parse_interface(text: str) -> InterfaceSpec:
    """One ``interface`` value, ``[NAME/]LOCAL[!ADVERTISED]``; NAME defaults to ``default``.

    LOCAL is an address or a device name (resolved at start-up); ADVERTISED must be an
    address. Raises ValueError.
    """
    text = text.strip()
    name, slash, rest = text.partition("/")
    if not slash:
        name, rest = "default", text
    local, bang, advertised = rest.partition("!")
    if not name or not local or (bang and not advertised):
        raise ValueError(f"invalid interface specification {text!r}")
    if bang:
        ipaddress.ip_address(advertised)
    if ":" in local and not is_address(local):
        raise ValueError(f"invalid interface address {local!r}")
    return InterfaceSpec(name, local, advertised or None)


def parse_endpoint(text: str, default_host: str = "0.0.0.0") -> tuple[str, int]:
    """``[IP46|HOSTNAME:]PORT`` as rtpengine's listen options take it (``[::1]:2223`` too)."""
    text = text.strip()
    if text.startswith("["):
        host, _, port = text[1:].partition("]:")
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    elif text.count(":") > 1:
        host, _, port = text.rpartition(":")
    else:
        host, port = default_host, text
    if host == "localhost":
        host = "127.0.0.1"
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"invalid port in {text!r}")
    return host, int(port)


@dataclass(frozen=True, slots=True)
class Config:
    """The configuration relayd acts on, parsed and checked (:func:`load`, :func:`reloaded`).

    ``values`` holds every key given, as parsed, including those relayd does not act on;
    ``source`` is the file read, ``command line`` or ``defaults``.
    """

    interfaces: tuple[InterfaceSpec, ...] = (InterfaceSpec("default", "127.0.0.1"),)
    listen_ng: tuple[str, int] | None = ("127.0.0.1", 2223)
    listen_tcp_ng: tuple[str, int] | None = None
    port_min: int = 30000
    port_max: int = 40000
    timeout: int = 60
    silent_timeout: int = 3600
    offer_timeout: int = 3600
    final_timeout: int = 0
    delete_delay: int = 30
    max_sessions: int = -1
    max_load: float = 0.0
    max_cpu: float = 0.0
    max_bandwidth: int = 0
    tos: int = 0
    table: int = -1
    log_level: int = 6
    log_stderr: bool = False
    log_facility: str = "daemon"
    log_timestamps: bool = True
    foreground: bool = False
    pidfile: str | None = None
    sip_source: bool = False
    endpoint_learning: Learning = "delayed"
    state_dir: str = ""  # "" = the default journal (calls/journal.py), "none" = no journal
    dtls_passive: bool = False
    tls_certificate: str = ""
    tls_private_key: str = ""
    worker_socket: str = ""  # workers are systemd units connecting here ("" = spawn them)
    num_threads: int = 0
    shards: int = 1  # supervisor processes the calls are split over (relayd.shards)
    log_format: str = "default"  # default, parsable, json
    log_facility_rtcp: str = ""
    # DTMF event reports (relayd/ops/dtmflog.py): the syslog facility of their log lines
    # ("" = none), where their JSON goes over UDP (None = nowhere)
    log_facility_dtmf: str = ""
    dtmf_log_dest: tuple[str, int] | None = None
    dtmf_log_ng_tcp: bool = False  # and as bencode to every ng TCP client
    admin_socket: str = DEFAULT_ADMIN_SOCKET  # "none": no admin socket
    listen_http: tuple[tuple[str, int], ...] = ()
    prometheus_listen: tuple[str, int] | None = None  # only with prometheus = yes
    homer: HomerSettings | None = None
    recording_dir: str = ""  # the recording spool; "" records nothing (relayd/recording/)
    recording_method: str = "pcap"  # pcap; proc and all are recorded as pcap, with a warning
    recording_format: str = "raw"  # raw (DLT_RAW) or eth (a fake Ethernet header)
    recording_file_mode: int = 0o640  # relayd's own: the recordings' mode, whatever the umask
    # percent of full scale under which a transcoded packet of audio counts as silence and
    # goes out as comfort noise where the receiver takes CN (docs/transcoding.md); 0: off
    silence_detect: float = 0.0
    recording_dir_mode: int = 0o750  # and the spool directories' it creates
    # relayd's own: the nflog group of worker 0's copies of kernel-forwarded recorded packets
    # (worker i: + i; shard s: + 256 s)
    recording_nflog_group: int = 2223
    source: str = "defaults"
    values: dict[str, Any] = field(default_factory=dict)  # every key given, as parsed


_PARSERS: dict[str, Callable[[str], Any]] = {
    "int": int,
    "float": float,
    "str": str,
    "bool": lambda v: _parse_bool(v),
    "list": lambda v: [item.strip() for item in v.split(";") if item.strip()],
}


def _parse_bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("true", "yes", "on", "1"):
        return True
    if lowered in ("false", "no", "off", "0"):
        return False
    raise ValueError(f"not a boolean: {value!r}")


def read_config_file(path: Path, section: str) -> dict[str, tuple[str, int]]:
    """The ``key = value`` pairs of ``section`` with their line numbers (GKeyFile syntax)."""
    values: dict[str, tuple[str, int]] = {}
    current: str | None = None
    seen_section = False
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#") or line.startswith(";"):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1].strip()
            seen_section = seen_section or current == section
            continue
        if current != section:
            continue
        key, eq, value = line.partition("=")
        if not eq:
            raise ConfigError(f"{path}:{number}: expected 'key = value', got {raw!r}")
        key = key.strip()
        if key in values and key == "interface":
            # several interface lines add up, as operators write them
            previous, _ = values[key]
            values[key] = (previous + ";" + value.strip(), number)
        else:
            values[key] = (value.strip(), number)
    if not seen_section:
        raise ConfigError(f"{path}: no [{section}] section")
    return values


def build_parser() -> argparse.ArgumentParser:
    """The command line: every rtpengine key as ``--key``, a few with a short option too.

    Options not given stay out of the result (``SUPPRESS``), so the file's values apply
    beneath them; a bool option alone means true, and a list option may be repeated.
    """
    parser = argparse.ArgumentParser(
        prog="relayd",
        description="RTP media proxy driven over rtpengine's ng protocol.",
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument(
        "--config-file", default=None, help="rtpengine.conf to read ('none': no file)"
    )
    parser.add_argument("--config-section", default="rtpengine")
    parser.add_argument("-v", "--version", action="store_true", default=False)
    short = {
        "interface": "-i",
        "listen-ng": "-n",
        "listen-tcp-ng": "-N",
        "port-min": "-m",
        "port-max": "-M",
        "timeout": "-o",
        "silent-timeout": "-s",
        "final-timeout": "-a",
        "tos": "-T",
        "table": "-t",
        "log-level": "-L",
        "log-stderr": "-E",
        "foreground": "-f",
        "pidfile": "-p",
        "delete-delay": "-d",
        "no-fallback": "-F",
        "save-interface-ports": "-S",
        "subscribe-keyspace": "-k",
        "listen-tcp": "-l",
        "listen-udp": "-u",
        "listen-cli": "-c",
        "graphite": "-g",
        "graphite-interval": "-G",
        "redis": "-r",
        "redis-write": "-w",
        "no-redis-required": "-q",
        "xmlrpc-format": "-x",
    }
    for key, info in KEYS.items():
        flags = [f"--{key}"] + ([short[key]] if key in short else [])
        dest = key.replace("-", "_")
        if info.kind == "bool":
            parser.add_argument(*flags, dest=dest, nargs="?", const="true", metavar="BOOL")
        elif info.kind == "list":
            parser.add_argument(*flags, dest=dest, action="append", metavar="VALUE")
        else:
            parser.add_argument(*flags, dest=dest, metavar=info.kind.upper())
    return parser


def load(argv: Sequence[str] | None = None) -> Config:
    """Parse the command line and the configuration file it names."""
    args = vars(build_parser().parse_args(argv))
    raw: dict[str, tuple[str | list[str], str]] = {}
    config_file = args.pop("config_file", None)
    section = args.pop("config_section", "rtpengine")
    args.pop("version", None)
    source = "command line"
    if config_file is None and Path(DEFAULT_CONFIG_FILE).exists():
        config_file = DEFAULT_CONFIG_FILE
    if config_file and config_file != "none":
        path = Path(config_file)
        if not path.exists():
            raise ConfigError(f"config file {path} does not exist")
        try:
            entries = read_config_file(path, section)
        except (OSError, UnicodeDecodeError) as exc:  # a directory, no permission, not text
            raise ConfigError(f"cannot read config file {path}: {exc}") from None
        for key, (value, line) in entries.items():
            raw[key] = (value, f"{path}:{line}")
        source = str(path)
    for dest, value in args.items():
        key = dest.replace("_", "-")
        if KEYS[key].kind == "list":
            raw[key] = (";".join(value), "command line")
        else:
            raw[key] = (value, "command line")
    values: dict[str, Any] = {}
    for key, (text, where) in raw.items():
        info = KEYS.get(key)
        if info is None:
            values[key] = text
            continue
        try:
            values[key] = _PARSERS[info.kind](str(text))
        except ValueError as exc:
            raise ConfigError(f"{where}: invalid value for '{key}': {exc}") from None
    return _to_config(values, raw, source)


def _to_config(values: dict[str, Any], raw: dict[str, Any], source: str) -> Config:
    def where(key: str) -> str:
        return raw[key][1] if key in raw else "default"

    kwargs: dict[str, Any] = {"source": source, "values": values}
    try:
        if "interface" in values:
            kwargs["interfaces"] = tuple(parse_interface(i) for i in values["interface"])
            if not kwargs["interfaces"]:
                raise ValueError("no interface given")
    except ValueError as exc:
        raise ConfigError(f"{where('interface')}: invalid value for 'interface': {exc}") from None
    for key in ("listen-ng", "listen-tcp-ng"):
        if key in values:
            try:
                kwargs[key.replace("-", "_")] = parse_endpoint(values[key])
            except ValueError as exc:
                raise ConfigError(f"{where(key)}: invalid value for '{key}': {exc}") from None
    simple = (
        "port-min",
        "port-max",
        "timeout",
        "silent-timeout",
        "offer-timeout",
        "final-timeout",
        "delete-delay",
        "max-sessions",
        "max-load",
        "max-cpu",
        "max-bandwidth",
        "tos",
        "table",
        "log-level",
        "log-stderr",
        "log-facility",
        "foreground",
        "pidfile",
        "sip-source",
        "endpoint-learning",
        "state-dir",
        "dtls-passive",
        "tls-certificate",
        "tls-private-key",
        "worker-socket",
        "num-threads",
        "shards",
        "log-format",
        "log-facility-rtcp",
        "log-facility-dtmf",
        "dtmf-log-ng-tcp",
        "admin-socket",
        "recording-dir",
        "recording-method",
        "recording-format",
        "recording-nflog-group",
        "silence-detect",
    )
    for key in simple:
        if key in values:
            kwargs[key.replace("-", "_")] = values[key]
    if "no-log-timestamps" in values:
        kwargs["log_timestamps"] = not values["no-log-timestamps"]
    try:
        key = "listen-http"
        if key in values:
            kwargs["listen_http"] = tuple(
                parse_endpoint(item) for item in values[key].split(";") if item.strip()
            )
        key = "prometheus-listen"
        if key in values and values.get("prometheus", False):
            kwargs["prometheus_listen"] = parse_endpoint(values[key], "127.0.0.1")
        key = "dtmf-log-dest"
        if values.get(key):
            kwargs["dtmf_log_dest"] = parse_endpoint(values[key], "127.0.0.1")
        key = "homer"
        kwargs["homer"] = _homer(values)
        for key in ("recording-file-mode", "recording-dir-mode"):
            if key in values:
                kwargs[key.replace("-", "_")] = _mode(values[key])
    except ValueError as exc:
        raise ConfigError(f"{where(key)}: invalid value for '{key}': {exc}") from None
    config = Config(**kwargs)
    _check(config, where)
    return config


def _mode(value: str) -> int:
    """A file mode in octal, as chmod takes it: ``0640``, ``640``, ``0o640``."""
    text = value.strip().lower().removeprefix("0o")
    mode = int(text, 8)
    if not 0 <= mode <= 0o7777:
        raise ValueError(f"{value!r} is not a file mode")
    return mode


_HOMER_PROTOCOLS = {"udp": "udp", "tcp": "tcp", "17": "udp", "6": "tcp"}


def _homer(values: dict[str, Any]) -> HomerSettings | None:
    """``homer``/``homer-protocol`` as rtpengine spells them, or the guide's
    ``homer-ng = udp:ADDR:PORT`` (which also turns on ng capture)."""
    target = values.get("homer", "")
    protocol = str(values.get("homer-protocol", "udp")).strip().lower()
    guide = str(values.get("homer-ng", "")).strip()
    if guide:
        scheme, colon, rest = guide.partition(":")
        if colon and scheme.lower() in _HOMER_PROTOCOLS:
            guide = rest
            if "homer-protocol" not in values:
                protocol = scheme.lower()
        target = target or guide
    if not target:
        return None
    if protocol not in _HOMER_PROTOCOLS:
        raise ValueError(f"homer-protocol {protocol!r} is not udp, tcp, 17 or 6")
    address = parse_endpoint(target, "127.0.0.1")
    proto = values.get("homer-ng-capture-proto", int(CaptureProtocol.NG))
    if not 0 <= proto <= 255:
        raise ValueError(f"homer-ng-capture-proto {proto} is not 0..255")
    return HomerSettings(
        address=address,
        protocol=_HOMER_PROTOCOLS[protocol],
        capture_id=values.get("homer-id", 0),
        ng=bool(values.get("homer-enable-ng", False) or guide),
        rtcp=not values.get("homer-disable-rtcp-stats", False),
        ng_protocol=proto,
    )


def _check(config: Config, where: Callable[[str], str]) -> None:
    if not 1 <= config.port_min <= config.port_max <= 65535:
        raise ConfigError(
            f"{where('port-min')}: invalid value for 'port-min'/'port-max': "
            f"{config.port_min}..{config.port_max} is not a port range"
        )
    if not 0 <= config.tos <= 255:
        raise ConfigError(f"{where('tos')}: invalid value for 'tos': {config.tos} (0..255)")
    if not 1 <= config.shards <= 64:
        raise ConfigError(f"{where('shards')}: invalid value for 'shards': 1..64")
    if config.shards > 1 and (config.port_max - config.port_min + 1) // config.shards < 4:
        raise ConfigError(
            f"{where('shards')}: invalid value for 'shards': {config.shards} shards need "
            f"at least {4 * config.shards} ports in port-min..port-max"
        )
    if config.shards > 1 and config.worker_socket:
        raise ConfigError(
            f"{where('shards')}: 'shards' and 'worker-socket' cannot be combined: "
            "each shard starts its own workers"
        )
    if not 0 <= config.log_level <= 7:
        raise ConfigError(f"{where('log-level')}: invalid value for 'log-level': 0..7")
    if config.log_format not in FORMATS:
        raise ConfigError(
            f"{where('log-format')}: invalid value for 'log-format': "
            f"{config.log_format!r} ({', '.join(FORMATS[:-1])} or {FORMATS[-1]})"
        )
    if learning_mode(config.endpoint_learning) is None:
        raise ConfigError(
            f"{where('endpoint-learning')}: invalid value for 'endpoint-learning': "
            f"{config.endpoint_learning!r}"
        )
    if config.recording_method not in ("pcap", "proc", "all"):
        raise ConfigError(
            f"{where('recording-method')}: invalid value for 'recording-method': "
            f"{config.recording_method!r} (pcap, proc or all)"
        )
    if not 0 <= config.recording_nflog_group <= 65535 - 256 * config.shards:
        raise ConfigError(
            f"{where('recording-nflog-group')}: invalid value for 'recording-nflog-group': "
            f"0..{65535 - 256 * config.shards} (each shard takes 256 groups from it)"
        )
    if config.recording_format not in ("raw", "eth"):
        raise ConfigError(
            f"{where('recording-format')}: invalid value for 'recording-format': "
            f"{config.recording_format!r} (raw or eth)"
        )
    if not 0 <= config.silence_detect <= 100:
        raise ConfigError(
            f"{where('silence-detect')}: invalid value for 'silence-detect': "
            f"{config.silence_detect:g} (a percentage, 0 to 100)"
        )
    try:
        redis = redis_settings(config.values, {})
    except ValueError as exc:
        raise ConfigError(f"{where('redis')}: {exc}") from None
    if redis is not None and config.shards > 1:
        raise ConfigError(
            f"{where('redis')}: 'redis' and 'shards' cannot be combined: "
            "one process restores and holds the calls of a database"
        )
    for key in ("timeout", "silent-timeout", "offer-timeout", "final-timeout", "delete-delay"):
        if getattr(config, key.replace("-", "_")) < 0:
            raise ConfigError(f"{where(key)}: invalid value for '{key}': must not be negative")


def unimplemented(config: Config) -> list[str]:
    """Keys that were set but have no effect in this version (and unknown keys)."""
    return sorted(
        key for key in config.values if key not in KEYS or KEYS[key].status is Status.IGNORED
    )


# what ``relayctl reload`` (and SIGHUP) can change in a running relayd
RELOADABLE = (
    "log_level",
    "timeout",
    "silent_timeout",
    "offer_timeout",
    "final_timeout",
    "delete_delay",
    "max_sessions",
    "max_load",
    "max_cpu",
    "max_bandwidth",
)


def reloaded(old: Config, fresh: Config) -> tuple[Config, dict[str, list[Any]], list[str]]:
    """The configuration to run with after a reload, what changed in it, and what changed
    in the file but needs a restart (those keep their running values)."""
    applied: dict[str, list[Any]] = {}
    restart: list[str] = []
    for item in dataclasses.fields(Config):
        if item.name in ("values", "source"):
            continue
        before, after = getattr(old, item.name), getattr(fresh, item.name)
        if before == after:
            continue
        key = item.name.replace("_", "-")
        if item.name in RELOADABLE:
            applied[key] = [before, after]
        else:
            restart.append(key)
    running = dataclasses.replace(old, **{name: getattr(fresh, name) for name in RELOADABLE})
    return running, applied, restart
