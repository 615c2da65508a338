"""Where the call journal goes: ``state-dir``, or a default relayd creates, one file per
instance. Every default here is pointed into tmp_path (``RELAYD_STATE_DIR`` or a home of
the test's own); /var/lib/relayd is only ever named, never touched."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from relayd.calls.journal import (
    ENVIRONMENT,
    SYSTEM_DIRECTORY,
    Journal,
    Placement,
    default_directory,
    instance_name,
    journal_place,
)

INSTANCE = instance_name(("127.0.0.1", 2223), None)


def test_state_dir_none_turns_the_journal_off(tmp_path: Path) -> None:
    place = journal_place("none", INSTANCE, environ={ENVIRONMENT: str(tmp_path)}, euid=0)
    assert place == Placement(None, why="state-dir = none")
    assert list(tmp_path.iterdir()) == []


def test_a_state_dir_that_is_set_keeps_calls_sqlite(tmp_path: Path) -> None:
    place = journal_place(str(tmp_path / "journal"), INSTANCE, environ={}, euid=1000)
    assert place.path == tmp_path / "journal" / "calls.sqlite"


@pytest.mark.parametrize(
    ("environ", "euid", "expected"),
    [
        ({}, 0, SYSTEM_DIRECTORY),
        ({"XDG_STATE_HOME": "/elsewhere"}, 0, SYSTEM_DIRECTORY),  # root: the system's
        ({ENVIRONMENT: "/srv/relayd"}, 0, Path("/srv/relayd")),
        ({ENVIRONMENT: "/srv/relayd"}, 1000, Path("/srv/relayd")),
        ({}, 1000, Path("/home/u/.local/state/relayd")),
        ({"XDG_STATE_HOME": "/xdg"}, 1000, Path("/xdg/relayd")),
        ({"XDG_STATE_HOME": "relative"}, 1000, Path("/home/u/.local/state/relayd")),  # ignored
        ({ENVIRONMENT: ""}, 1000, Path("/home/u/.local/state/relayd")),
    ],
)
def test_default_directory(environ: dict[str, str], euid: int, expected: Path) -> None:
    assert default_directory(environ, euid, Path("/home/u")) == expected


def test_root_default_is_created_0750(tmp_path: Path) -> None:
    chosen = tmp_path / "var" / "lib" / "relayd"
    place = journal_place("", INSTANCE, environ={ENVIRONMENT: str(chosen)}, euid=0)
    assert place == Placement(chosen, "calls-ng-127.0.0.1-2223.sqlite")
    assert stat.S_IMODE(chosen.stat().st_mode) == 0o750 & ~_umask()


def test_a_users_default_is_created_0700_under_its_home(tmp_path: Path) -> None:
    place = journal_place("", INSTANCE, environ={}, euid=1000, home=tmp_path)
    directory = tmp_path / ".local" / "state" / "relayd"
    assert place.path == directory / "calls-ng-127.0.0.1-2223.sqlite"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700 & ~_umask()


def test_a_default_that_cannot_be_created_means_no_journal_and_says_why(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    place = journal_place("", INSTANCE, environ={ENVIRONMENT: str(blocker / "relayd")}, euid=0)
    assert place.directory is None
    assert place.why.startswith(f"cannot create {blocker / 'relayd'}: ")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_a_default_that_is_not_writable_means_no_journal(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    place = journal_place("", INSTANCE, environ={ENVIRONMENT: str(locked)}, euid=os.geteuid())
    assert place == Placement(None, why=f"{locked} is not writable")


@pytest.mark.parametrize(
    ("udp", "tcp", "name"),
    [
        (("127.0.0.1", 2223), None, "calls-ng-127.0.0.1-2223.sqlite"),
        (("127.0.0.1", 2224), ("127.0.0.1", 2223), "calls-ng-127.0.0.1-2224.sqlite"),
        (None, ("::1", 2223), "calls-ng-__1-2223.sqlite"),
        (("ng.example", 22222), None, "calls-ng-ng.example-22222.sqlite"),
        (None, None, "calls-no-ng.sqlite"),
    ],
)
def test_instance_names(
    udp: tuple[str, int] | None, tcp: tuple[str, int] | None, name: str
) -> None:
    assert instance_name(udp, tcp) == name


def test_two_instances_keep_two_journals(tmp_path: Path) -> None:
    environ = {ENVIRONMENT: str(tmp_path)}
    first = journal_place("", instance_name(("127.0.0.1", 2223), None), environ=environ, euid=0)
    second = journal_place("", instance_name(("127.0.0.1", 2225), None), environ=environ, euid=0)
    assert first.directory == second.directory == tmp_path
    assert first.path != second.path


def test_the_shared_journal_of_earlier_releases_becomes_the_first_instances(
    tmp_path: Path,
) -> None:
    old = Journal(tmp_path)  # calls.sqlite, as every default daemon wrote it before
    old._db.execute("INSERT INTO calls VALUES ('c1', '{}')")
    (tmp_path / "calls.sqlite-shm").write_bytes(b"")
    wal = (tmp_path / "calls.sqlite-wal").exists()
    environ = {ENVIRONMENT: str(tmp_path)}
    place = journal_place("", INSTANCE, environ=environ, euid=0)
    assert place.path is not None
    assert place.path.exists()
    assert not (tmp_path / "calls.sqlite").exists()
    assert (tmp_path / f"{INSTANCE}-wal").exists() == wal
    other = journal_place("", instance_name(("127.0.0.1", 2225), None), environ=environ, euid=0)
    assert other.path is not None
    assert not other.path.exists()  # taken once, by one instance
    old.close()


def test_an_instances_own_journal_is_never_replaced(tmp_path: Path) -> None:
    (tmp_path / INSTANCE).write_bytes(b"mine")
    (tmp_path / "calls.sqlite").write_bytes(b"old")
    journal_place("", INSTANCE, environ={ENVIRONMENT: str(tmp_path)}, euid=0)
    assert (tmp_path / INSTANCE).read_bytes() == b"mine"
    assert (tmp_path / "calls.sqlite").read_bytes() == b"old"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
