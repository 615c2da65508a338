"""The Ansible role and playbook in ``ansible/``: ansible-lint (production profile),
``ansible-playbook --syntax-check``, and a real run on this machine (``connection: local``)
that converges and then reports no change.

The real run installs everything under a temporary directory (prefix, configuration,
units, sysctl.d and modules-load.d files, state directory), applies no kernel setting
and starts nothing: the role sees that systemd does not run this machine (or is told
``relayd_manage_services: false`` where it does), so it installs and enables the units
without starting them. The Debian packages the role asks for are the ones
``scripts/test`` installs; the test is skipped rather than let the role install any.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from relayd.config import load

pytestmark = pytest.mark.interop

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = REPO / "ansible"
BIN = Path(sys.executable).parent
PLAYBOOK = BIN / "ansible-playbook"
LINT = BIN / "ansible-lint"
TARGET_PYTHON = Path("/usr/bin/python3")
ROLE_PACKAGES = ("python3-venv", "nftables", "libnftables1", "conntrack", "iproute2", "python3-apt")
SOURCE_FILES = ("pyproject.toml", "README.md", "LICENSE", "relayd")

needs_ansible = pytest.mark.skipif(
    not PLAYBOOK.exists(), reason="ansible-core is not installed in .venv (scripts/test does it)"
)
needs_lint = pytest.mark.skipif(
    not LINT.exists(), reason="ansible-lint is not installed in .venv (scripts/test does it)"
)


def _env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        ANSIBLE_CONFIG=str(ANSIBLE_DIR / "ansible.cfg"),
        ANSIBLE_HOME=str(tmp / "ansible-home"),
        ANSIBLE_LOCAL_TEMP=str(tmp / "ansible-home" / "tmp"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
        NO_COLOR="1",
        PY_COLORS="0",
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
    )
    return env


def _run(args: list[str | Path], tmp: Path, cwd: Path = ANSIBLE_DIR) -> tuple[int, str]:
    result = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=_env(tmp),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return result.returncode, result.stdout + result.stderr


def _recap(output: str, host: str) -> dict[str, int]:
    match = re.search(rf"^{re.escape(host)}\s*:\s*(ok=.*)$", output, re.MULTILINE)
    assert match, output[-3000:]
    return {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", match.group(1))}


def _printed(output: str, kind: str, name: str) -> str | None:
    """What the default callback printed for one task or handler (``kind``: ``TASK`` or
    ``RUNNING HANDLER``) up to the next one or the recap; None if it did not run."""
    following = r"(?=^TASK \[|^RUNNING HANDLER|^PLAY RECAP)"
    match = re.search(
        rf"^{kind} \[relayd : {re.escape(name)}\].*?$(.*?){following}",
        output,
        re.MULTILINE | re.DOTALL,
    )
    return match.group(1) if match else None


# --- ansible-lint ------------------------------------------------------------------


@needs_lint
def test_ansible_lint_production_profile(tmp_path: Path) -> None:
    code, out = _run([LINT, "--profile", "production", "--offline", "--nocolor"], tmp_path)
    assert code == 0, out
    assert "Profile 'production' was required, and it passed" in out, out
    processed = re.search(r"(\d+) files processed", out)
    # not vacuous: the role's files were linted (a bad task in them fails this test)
    assert processed and int(processed.group(1)) >= 15, out


# --- syntax check --------------------------------------------------------------------


@needs_ansible
def test_playbook_syntax_check(tmp_path: Path) -> None:
    inventory = ANSIBLE_DIR / "inventory" / "example.yml"
    code, out = _run([PLAYBOOK, "--syntax-check", "-i", inventory, "site.yml"], tmp_path)
    assert code == 0, out
    assert "playbook: site.yml" in out, out
    code, out = _run([BIN / "ansible-inventory", "-i", inventory, "--graph"], tmp_path)
    assert code == 0 and "sbc-a" in out and "sbc-b" in out, out


@needs_ansible
def test_syntax_check_catches_a_broken_task(tmp_path: Path) -> None:
    copy = tmp_path / "ansible"
    shutil.copytree(ANSIBLE_DIR, copy, ignore=shutil.ignore_patterns(".ansible"))
    tasks = copy / "roles" / "relayd" / "tasks" / "systemd.yml"
    tasks.write_text(tasks.read_text() + "\n- name: Broken\n  no_such_keyword: true\n")
    code, out = _run([PLAYBOOK, "--syntax-check", "site.yml"], tmp_path, copy)
    assert code != 0, out


# --- a real run ------------------------------------------------------------------------


def _missing_packages() -> list[str]:
    missing = []
    for package in ROLE_PACKAGES:
        result = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", package],
            capture_output=True,
            text=True,
            check=False,
        )
        if "ok installed" not in result.stdout:
            missing.append(package)
    return missing


def _systemd_runs_this_machine() -> bool:
    return Path("/run/systemd/system").is_dir()


@needs_ansible
@pytest.mark.skipif(os.geteuid() != 0, reason="the role installs as root")
@pytest.mark.skipif(
    shutil.which("dpkg-query") is None or not TARGET_PYTHON.exists(), reason="not Debian"
)
def test_role_converges_and_second_run_changes_nothing(tmp_path: Path) -> None:
    missing = _missing_packages()
    if missing:
        pytest.skip(f"packages scripts/test installs are missing: {missing}")
    root = tmp_path / "root"
    source = tmp_path / "src"  # a snapshot: edits to the checkout meanwhile change nothing
    for name in SOURCE_FILES:
        if (REPO / name).is_dir():
            shutil.copytree(
                REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
            )
        else:
            source.mkdir(exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    prefix = root / "opt" / "relayd"
    config = root / "etc" / "relayd" / "rtpengine.conf"
    units = root / "etc" / "systemd" / "system"
    sysctl = root / "etc" / "sysctl.d" / "60-relayd.conf"
    state = root / "var" / "lib" / "relayd"
    spool = root / "var" / "spool" / "rtpengine-recordings"
    inventory = tmp_path / "inventory.ini"
    inventory.write_text(
        "[relayd]\n"
        f"ci-local ansible_connection=local ansible_python_interpreter={TARGET_PYTHON}"
        " ansible_become=false\n"
    )

    def variables(count: int, port_min: int) -> Path:
        path = tmp_path / f"vars-{count}-{port_min}.yml"
        lines = [
            f"relayd_source: {source}",
            f"relayd_prefix: {prefix}",
            f"relayd_config_dir: {config.parent}",
            f"relayd_systemd_dir: {units}",
            f"relayd_sysctl_file: {sysctl}",
            f"relayd_modules_load_file: {root}/etc/modules-load.d/relayd.conf",
            f"relayd_state_dir: {state}",
            "relayd_sysctl_apply: false",
            "relayd_apt_update_cache: false",
            f"relayd_workers: {count}",
            f"relayd_port_min: {port_min}",
            "relayd_port_max: 40999",
            "relayd_interfaces:",
            "  - {name: public, address: 127.0.0.1, advertised: 203.0.113.11}",
            '  - {name: private, address: "::1"}',
            "relayd_prometheus_listen: 127.0.0.1:9900",
            "relayd_homer: 127.0.0.1:9060",
            "relayd_homer_enable_ng: true",
            "relayd_config_extra: {dtls-passive: true, log-facility-rtcp: local0}",
            f"relayd_recording_dir: {spool}",
        ]
        if _systemd_runs_this_machine():  # never start services on the CI machine
            lines.append("relayd_manage_services: false")
        path.write_text("\n".join(lines) + "\n")
        return path

    def play(extra: Path) -> tuple[dict[str, int], str]:
        code, out = _run([PLAYBOOK, "-i", inventory, "-e", f"@{extra}", "site.yml"], tmp_path)
        recap = _recap(out, "ci-local")
        assert code == 0 and recap["failed"] == 0 and recap["unreachable"] == 0, out[-6000:]
        return recap, out

    workers = min(2, os.cpu_count() or 1)  # relay-worker@N is pinned to CPU N
    try:
        first, out = play(variables(workers, 30000))
        assert first["changed"] > 0, out
        # nothing was started or reloaded: no systemd here, or told not to
        assert "skipping:" in (_printed(out, "TASK", "Start relayd and its workers") or ""), out
        for handler in (
            "Reload systemd",
            "Restart relayd",
            "Load nf_conntrack",
            "Apply the kernel settings",
        ):
            printed = _printed(out, "RUNNING HANDLER", handler) or ""
            assert "changed:" not in printed and "ok:" not in printed, out

        # relayd in its virtualenv
        version = subprocess.run(
            [prefix / "venv" / "bin" / "relayd", "--version"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert version.returncode == 0 and "relayd" in version.stdout, version
        assert (prefix / "venv" / "bin" / "relay-worker").exists()

        # rtpengine.conf as relayd reads it
        loaded = load(["--config-file", str(config)])
        assert [(i.name, i.local, i.advertised) for i in loaded.interfaces] == [
            ("public", "127.0.0.1", "203.0.113.11"),
            ("private", "::1", None),
        ]
        assert loaded.listen_ng == ("127.0.0.1", 2223)
        assert loaded.listen_tcp_ng == ("127.0.0.1", 2223)
        assert (loaded.port_min, loaded.port_max) == (30000, 40999)
        assert (loaded.tos, loaded.table, loaded.timeout, loaded.silent_timeout) == (
            184,
            0,
            60,
            3600,
        )
        assert (loaded.offer_timeout, loaded.delete_delay) == (3600, 30)
        assert loaded.state_dir == str(state)
        assert loaded.worker_socket == "/run/relayd/workers.sock"
        assert loaded.num_threads == workers
        assert loaded.dtls_passive is True
        assert loaded.values["prometheus"] is True
        assert loaded.values["prometheus-listen"] == "127.0.0.1:9900"
        assert loaded.values["homer"] == "127.0.0.1:9060"
        assert loaded.values["homer-protocol"] == "udp"
        assert loaded.values["homer-enable-ng"] is True
        # the recording spool: written, made set-group-id, writable by both units
        assert (loaded.recording_dir, loaded.recording_format) == (str(spool), "eth")
        assert (loaded.recording_file_mode, loaded.recording_dir_mode) == (0o640, 0o2750)
        assert spool.is_dir() and stat.S_IMODE(spool.stat().st_mode) == 0o2750

        # kernel settings, written and not applied
        settings = dict(
            line.split(" = ", 1)
            for line in sysctl.read_text().splitlines()
            if line and not line.startswith("#")
        )
        assert settings["net.ipv4.ip_forward"] == "1"
        assert settings["net.ipv6.conf.all.forwarding"] == "1"  # ::1 is an interface address
        assert int(settings["net.netfilter.nf_conntrack_max"]) >= 262144
        assert settings["net.ipv4.conf.all.rp_filter"] == "2"
        assert settings["net.ipv4.ip_local_reserved_ports"] == "30000-40999"  # the media range

        # the repository's units, paths moved to the prefix, enabled with their workers
        relayd_unit = (units / "relayd.service").read_text()
        worker_unit = (units / "relay-worker@.service").read_text()
        assert f"ExecStart={prefix}/venv/bin/relayd --config-file {config} " in relayd_unit
        assert f"ExecStart={prefix}/venv/bin/relay-worker --worker %i" in worker_unit
        assert "CPUAffinity=%i" in worker_unit
        assert "/opt/relayd" not in (relayd_unit + worker_unit).replace(str(prefix), "PREFIX")
        assert f"ReadWritePaths={state}" in relayd_unit
        assert f"ReadWritePaths={spool}" in relayd_unit
        assert f"ReadWritePaths={spool}" in worker_unit  # the workers write the pcaps
        wants = units / "relayd.service.wants"
        assert sorted(p.name for p in wants.iterdir()) == [
            f"relay-worker@{n}.service" for n in range(workers)
        ]
        assert (wants / "relay-worker@0.service").resolve() == units / "relay-worker@.service"
        enabled = units / "multi-user.target.wants" / "relayd.service"
        assert enabled.resolve() == units / "relayd.service"
        if shutil.which("systemd-analyze"):
            check = tmp_path / "verify"
            check.mkdir()
            shutil.copy(units / "relayd.service", check / "relayd.service")
            shutil.copy(units / "relay-worker@.service", check / "relay-worker@0.service")
            result = subprocess.run(
                ["systemd-analyze", "verify", "relayd.service", "relay-worker@0.service"],
                cwd=check,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert result.returncode == 0, result.stdout + result.stderr

        # converged: the same run again changes nothing
        second, out = play(variables(workers, 30000))
        assert second["changed"] == 0, out

        # and a change is applied: one worker (the others disabled), another port range
        third, out = play(variables(1, 31000))
        assert third["changed"] > 0, out
        assert [p.name for p in wants.iterdir()] == ["relay-worker@0.service"]
        loaded = load(["--config-file", str(config)])
        assert (loaded.num_threads, loaded.port_min) == (1, 31000)
        # the source did not change: relayd was not reinstalled
        assert "changed:" not in (
            _printed(out, "TASK", "Install relayd and its dependencies") or ""
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(source, ignore_errors=True)
