"""rtpengine.conf as operators write it: the deployment guide's file, lists, IPv6, errors."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from relayd.config import (
    KEYS,
    Config,
    ConfigError,
    HomerSettings,
    InterfaceSpec,
    Status,
    load,
    parse_endpoint,
    parse_interface,
    unimplemented,
)

DATA = Path(__file__).resolve().parent.parent / "data" / "config"
GUIDE = DATA / "deployment-guide.conf"
REPO = Path(__file__).resolve().parents[2]


def _write(tmp_path: Path, body: str, name: str = "rtpengine.conf") -> Path:
    path = tmp_path / name
    path.write_text(body)
    return path


def _error(argv: list[str]) -> str:
    with pytest.raises(ConfigError) as info:
        load(argv)
    return str(info.value)


def test_deployment_guide_config_loads() -> None:
    config = load(["--config-file", str(GUIDE)])
    assert config.interfaces == (InterfaceSpec("eth0", "203.0.113.10"),)
    assert not config.interfaces[0].is_device
    assert config.listen_ng == ("127.0.0.1", 2223)
    assert config.listen_tcp_ng == ("127.0.0.1", 2223)
    assert (config.port_min, config.port_max) == (30000, 40000)
    assert config.tos == 184
    assert config.table == 0
    assert config.log_level == 5
    assert config.log_facility == "daemon"
    assert (config.timeout, config.silent_timeout) == (60, 3600)
    assert config.source == str(GUIDE)
    # the guide's own spellings are kept as parsed, for the start-up warning
    assert config.values["prometheus"] is True
    assert config.values["dtls-passive"] is True
    assert config.values["homer-protocol"] == "17"
    assert config.values["homer-id"] == 2002
    assert "codec-except" not in config.values  # a comment in the guide


def test_deployment_guide_unimplemented_keys() -> None:
    config = load(["--config-file", str(GUIDE)])
    ignored = unimplemented(config)
    assert ignored == sorted(ignored)
    # every key of the guide's configuration has its effect now (recording was the last)
    assert ignored == []
    # what relayd does act on is not reported, the guide's own spellings included
    acted_on = {
        "recording-dir",
        "recording-method",
        "recording-format",
        "interface",
        "listen-ng",
        "listen-tcp-ng",
        "port-min",
        "port-max",
        "table",
        "dtls-passive",
        "tls-certificate",
        "tls-private-key",
        "prometheus",
        "prometheus-listen",
        "homer-ng",
        "homer-protocol",
        "homer-id",
        "log-facility-rtcp",
    }
    assert acted_on | {"log-level", "log-facility"} <= set(config.values)
    assert not (acted_on | {"log-level", "log-facility"}) & set(ignored)
    # and exactly the keys set in the file whose status is "ignored"
    assert ignored == sorted(k for k in config.values if KEYS[k].status is Status.IGNORED)


def test_deployment_guide_operations_keys() -> None:
    config = load(["--config-file", str(GUIDE)])
    assert config.prometheus_listen == ("127.0.0.1", 9900)
    assert config.homer == HomerSettings(
        address=("127.0.0.1", 9060), protocol="udp", capture_id=2002, ng=True, rtcp=True
    )
    assert config.log_facility_rtcp == "local0"


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        # rtpengine's spelling: RTCP stats by default, ng only with homer-enable-ng
        (["homer = 192.0.2.9:9060"], HomerSettings(("192.0.2.9", 9060))),
        (
            ["homer = 192.0.2.9:9060", "homer-protocol = tcp", "homer-id = 7", "homer-enable-ng"],
            HomerSettings(("192.0.2.9", 9060), "tcp", 7, ng=True),
        ),
        (
            ["homer = [2001:db8::9]:9060", "homer-disable-rtcp-stats = yes"],
            HomerSettings(("2001:db8::9", 9060), rtcp=False),
        ),
        # the guide's: a transport prefix, the protocol number, ng capture implied
        (["homer-ng = tcp:192.0.2.9:9061"], HomerSettings(("192.0.2.9", 9061), "tcp", ng=True)),
        (
            ["homer-ng = 192.0.2.9:9061", "homer-protocol = 6"],
            HomerSettings(("192.0.2.9", 9061), "tcp", ng=True),
        ),
        (
            ["homer-ng = udp:192.0.2.9:9060", "homer-ng-capture-proto = 100"],
            HomerSettings(("192.0.2.9", 9060), ng=True, ng_protocol=100),
        ),
        ([], None),
        (["homer-id = 5"], None),
    ],
)
def test_homer_spellings(tmp_path: Path, lines: list[str], expected: HomerSettings | None) -> None:
    body = "[rtpengine]\n" + "".join(
        (line if "=" in line else f"{line} = yes") + "\n" for line in lines
    )
    assert load(["--config-file", str(_write(tmp_path, body))]).homer == expected


def test_bad_homer_protocol(tmp_path: Path) -> None:
    path = _write(tmp_path, "[rtpengine]\nhomer = 192.0.2.9:9060\nhomer-protocol = sctp\n")
    with pytest.raises(ConfigError, match="homer-protocol 'sctp' is not udp, tcp, 17 or 6"):
        load(["--config-file", str(path)])


def test_http_listeners_and_prometheus(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "[rtpengine]\nlisten-http = 127.0.0.1:2225;[::1]:2226\nprometheus-listen = 9100\n",
    )
    config = load(["--config-file", str(path)])
    assert config.listen_http == (("127.0.0.1", 2225), ("::1", 2226))
    assert config.prometheus_listen is None  # only with prometheus = yes
    config = load(["--config-file", str(path), "--prometheus"])
    assert config.prometheus_listen == ("127.0.0.1", 9100)


def test_log_format(tmp_path: Path) -> None:
    assert load(["--config-file", "none", "--log-format", "json"]).log_format == "json"
    with pytest.raises(ConfigError, match="'log-format': 'xml' \\(default, parsable or json\\)"):
        load(["--config-file", "none", "--log-format", "xml"])


def test_silence_detect() -> None:
    assert load(["--config-file", "none"]).silence_detect == 0.0
    assert load(["--config-file", "none", "--silence-detect", "1.5"]).silence_detect == 1.5


def test_admin_socket_default_and_override() -> None:
    assert load(["--config-file", "none"]).admin_socket == "/run/relayd/admin.sock"
    assert load(["--config-file", "none", "--admin-socket", "none"]).admin_socket == "none"


def test_no_file_gives_defaults() -> None:
    assert load(["--config-file", "none"]) == Config(source="command line")


def test_several_interface_lines_and_lists(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "[rtpengine]\n"
        "interface = internal/10.0.0.1;external/10.0.0.2!198.51.100.7\n"
        "interface = eth1\n"
        "interface = v6/2001:db8::10 ; v6/fd00::1!2001:db8::99\n",
    )
    config = load(["--config-file", str(path)])
    assert config.interfaces == (
        InterfaceSpec("internal", "10.0.0.1"),
        InterfaceSpec("external", "10.0.0.2", "198.51.100.7"),
        InterfaceSpec("default", "eth1"),
        InterfaceSpec("v6", "2001:db8::10"),
        InterfaceSpec("v6", "fd00::1", "2001:db8::99"),
    )
    assert [i.is_device for i in config.interfaces] == [False, False, True, False, False]


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("203.0.113.10", InterfaceSpec("default", "203.0.113.10")),
        ("eth0/203.0.113.10", InterfaceSpec("eth0", "203.0.113.10")),
        ("pub/10.0.0.1!203.0.113.1", InterfaceSpec("pub", "10.0.0.1", "203.0.113.1")),
        ("2001:db8::1", InterfaceSpec("default", "2001:db8::1")),
        (" v6/::1 ", InterfaceSpec("v6", "::1")),
        ("eth0", InterfaceSpec("default", "eth0")),
    ],
)
def test_parse_interface(text: str, spec: InterfaceSpec) -> None:
    assert parse_interface(text) == spec


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("/10.0.0.1", "invalid interface specification '/10.0.0.1'"),
        ("a/", "invalid interface specification 'a/'"),
        ("a/10.0.0.1!", "invalid interface specification 'a/10.0.0.1!'"),
        ("a/10.0.0.1!nat", "'nat' does not appear to be an IPv4 or IPv6 address"),
        ("a/2001:db8::zz", "invalid interface address '2001:db8::zz'"),
    ],
)
def test_parse_interface_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_interface(text)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("text", "endpoint"),
    [
        ("2223", ("0.0.0.0", 2223)),
        ("127.0.0.1:2223", ("127.0.0.1", 2223)),
        ("localhost:2223", ("127.0.0.1", 2223)),
        ("[::1]:2223", ("::1", 2223)),
        ("[2001:db8::5]:22222", ("2001:db8::5", 22222)),
        (" 10.0.0.1:1 ", ("10.0.0.1", 1)),
    ],
)
def test_parse_endpoint(text: str, endpoint: tuple[str, int]) -> None:
    assert parse_endpoint(text) == endpoint


@pytest.mark.parametrize("text", ["", "abc", "127.0.0.1:", "127.0.0.1:0", ":65536", "[::1]2223"])
def test_parse_endpoint_errors(text: str) -> None:
    with pytest.raises(ValueError, match=r"^invalid port in "):
        parse_endpoint(text)


def test_ipv6_listen_endpoints(tmp_path: Path) -> None:
    path = _write(tmp_path, "[rtpengine]\nlisten-ng = [::1]:2223\nlisten-tcp-ng = [::1]:2224\n")
    config = load(["--config-file", str(path)])
    assert config.listen_ng == ("::1", 2223)
    assert config.listen_tcp_ng == ("::1", 2224)


def test_command_line_overrides_file() -> None:
    config = load(
        [
            "--config-file",
            str(GUIDE),
            "--port-min",
            "31000",
            "-M",
            "31999",
            "-i",
            "a/10.0.0.1",
            "--interface",
            "b/10.0.0.2",
            "--listen-ng",
            "[::1]:5000",
            "--foreground",
            "--log-stderr=false",
        ]
    )
    assert (config.port_min, config.port_max) == (31000, 31999)
    assert config.interfaces == (InterfaceSpec("a", "10.0.0.1"), InterfaceSpec("b", "10.0.0.2"))
    assert config.listen_ng == ("::1", 5000)
    assert config.foreground is True
    assert config.log_stderr is False
    assert config.tos == 184  # untouched file value


def test_config_section(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "[rtpengine]\nport-min = 30000\n\n[rtpengine-testing]\nport-min = 20000\ntable = -1\n",
    )
    assert load(["--config-file", str(path)]).port_min == 30000
    testing = load(["--config-file", str(path), "--config-section", "rtpengine-testing"])
    assert (testing.port_min, testing.table) == (20000, -1)


def test_unknown_section_is_an_error(tmp_path: Path) -> None:
    path = _write(tmp_path, "[rtpengine]\nport-min = 30000\n")
    assert _error(["--config-file", str(path), "--config-section", "nope"]) == (
        f"{path}: no [nope] section"
    )


def test_malformed_value_names_key_and_line(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "# rtpengine.conf\n"
        "[rtpengine]\n"
        "interface = 10.0.0.1\n"
        "\n"
        "; a comment\n"
        "port-max = 40000\n"
        "port-min = abc\n",
    )
    assert _error(["--config-file", str(path)]) == (
        f"{path}:7: invalid value for 'port-min': invalid literal for int() with base 10: 'abc'"
    )


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("foreground = maybe", "invalid value for 'foreground': not a boolean: 'maybe'"),
        ("listen-ng = localhost", "invalid value for 'listen-ng': invalid port in 'localhost'"),
        (
            "interface = a/10.0.0.1!x",
            "invalid value for 'interface': 'x' does not appear to be an IPv4 or IPv6 address",
        ),
        ("tos = 256", "invalid value for 'tos': 256 (0..255)"),
        ("log-level = 8", "invalid value for 'log-level': 0..7"),
        ("timeout = -1", "invalid value for 'timeout': must not be negative"),
        (
            "silence-detect = 101",
            "invalid value for 'silence-detect': 101 (a percentage, 0 to 100)",
        ),
        (
            "max-load = high",
            "invalid value for 'max-load': could not convert string to float: 'high'",
        ),
        ("endpoint-learning = sometimes", "invalid value for 'endpoint-learning': 'sometimes'"),
        (
            "port-min = 50000",
            "invalid value for 'port-min'/'port-max': 50000..40000 is not a port range",
        ),
        ("just some words", "expected 'key = value', got 'just some words'"),
    ],
)
def test_malformed_values(tmp_path: Path, line: str, message: str) -> None:
    path = _write(tmp_path, f"[rtpengine]\nport-max = 40000\n{line}\n")
    assert _error(["--config-file", str(path)]) == f"{path}:3: {message}"


def test_malformed_command_line_value() -> None:
    assert _error(["--config-file", "none", "--port-min", "x"]) == (
        "command line: invalid value for 'port-min': invalid literal for int() with base 10: 'x'"
    )


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    missing = tmp_path / "missing.conf"
    assert _error(["--config-file", str(missing)]) == f"config file {missing} does not exist"
    assert _error(["--config-file", str(tmp_path)]).startswith(
        f"cannot read config file {tmp_path}: [Errno 21] Is a directory"
    )
    binary = tmp_path / "binary.conf"
    binary.write_bytes(b"[rtpengine]\nport-min = \xff\n")
    assert _error(["--config-file", str(binary)]).startswith(
        f"cannot read config file {binary}: 'utf-8' codec can't decode byte 0xff"
    )


def test_unknown_keys_are_kept_and_reported(tmp_path: Path) -> None:
    path = _write(tmp_path, "[rtpengine]\nno-such-option = 1\nlisten-https = 127.0.0.1:2225\n")
    config = load(["--config-file", str(path)])
    assert config.values["no-such-option"] == "1"
    assert unimplemented(config) == ["listen-https", "no-such-option"]


def test_other_sections_and_keys_before_a_section_are_ignored(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "port-min = nonsense\n[other]\nport-min = nonsense\n[rtpengine]\nport-min = 32000\n",
    )
    assert load(["--config-file", str(path)]).port_min == 32000


def test_daemon_exits_with_key_and_line_on_bad_config(tmp_path: Path) -> None:
    path = _write(tmp_path, "[rtpengine]\n\n\n\n\nport-max = 40000\nport-min = abc\n")
    result = subprocess.run(
        [sys.executable, "-m", "relayd", "--config-file", str(path), "--foreground"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 78  # EX_CONFIG
    assert result.stderr == (
        f"relayd: configuration error: {path}:7: invalid value for 'port-min': "
        "invalid literal for int() with base 10: 'abc'\n"
    )


def test_rtpengines_own_test_suite_command_line_starts_relayd() -> None:
    """The command line of rtpengine's t/auto-daemon-tests.pl, short options included."""
    config = load(
        shlex.split(
            "--config-file=none -t -1 -i 203.0.113.1 -i 2001:db8:4321::1 -n 2223 -c 12345"
            " -f -L 7 -E -u 2222 --silence-detect=1"
        )
    )
    assert [i.local for i in config.interfaces] == ["203.0.113.1", "2001:db8:4321::1"]
    assert config.listen_ng is not None and config.listen_ng[1] == 2223
    assert (config.table, config.log_level, config.foreground, config.log_stderr) == (
        -1,
        7,
        True,
        True,
    )
    assert config.values["listen-cli"] == "12345" and config.values["listen-udp"] == "2222"


def test_recording_keys() -> None:
    config = load(
        [
            "--config-file=none",
            "--recording-dir=/var/spool/rec",
            "--recording-format=eth",
            "--recording-file-mode=0660",
            "--recording-dir-mode=2770",
        ]
    )
    assert (config.recording_dir, config.recording_method, config.recording_format) == (
        "/var/spool/rec",
        "pcap",
        "eth",
    )
    assert (config.recording_file_mode, config.recording_dir_mode) == (0o660, 0o2770)
    for bad, key in (
        ("--recording-format=pcapng", "recording-format"),
        ("--recording-method=tcp", "recording-method"),
        ("--recording-file-mode=rw-r-----", "recording-file-mode"),
        ("--recording-dir-mode=17777", "recording-dir-mode"),
    ):
        with pytest.raises(ConfigError, match=key):
            load(["--config-file=none", bad])
