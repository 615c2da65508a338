"""docs/configuration.md lists every key of relayd.config_keys.KEYS with its status and reason."""

from __future__ import annotations

import re
from pathlib import Path

from relayd.config_keys import KEYS, Status

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
ROW = re.compile(r"^\| `(?P<key>[^`]+)` \| (?P<status>[a-z]+) \| (?P<notes>.*) \|$")


def _rows() -> list[tuple[str, str, str]]:
    rows = []
    for line in DOC.read_text().splitlines():
        if line.startswith("| `"):
            match = ROW.match(line)
            assert match, f"malformed table row: {line!r}"
            rows.append((match["key"], match["status"], match["notes"]))
    return rows


def test_every_key_is_documented_once_and_nothing_else() -> None:
    keys = [key for key, _, _ in _rows()]
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    assert duplicates == []
    assert sorted(set(KEYS) - set(keys)) == [], "keys missing from docs/configuration.md"
    assert sorted(set(keys) - set(KEYS)) == [], "documented keys that relayd.config_keys lacks"


def test_status_matches() -> None:
    wrong = [
        (key, status, KEYS[key].status.value)
        for key, status, _ in _rows()
        if key in KEYS and status != KEYS[key].status.value
    ]
    assert wrong == []


def test_every_row_has_notes_and_logged_reasons_are_quoted() -> None:
    for key, status, notes in _rows():
        assert notes.strip(), f"{key}: no notes"
        info = KEYS[key]
        # the reason relayd logs (config.unimplemented's detail) reads the same here
        assert info.note in notes, f"{key}: notes must contain {info.note!r}"
        if status == Status.SUPPORTED.value:
            assert "Default:" in notes, f"{key}: a supported key states its default"


def test_intro_names_the_startup_warning_and_overrides() -> None:
    text = DOC.read_text()
    assert "`config.unimplemented`" in text
    assert "--config-file" in text and "--config-section" in text
    assert "overrides the file" in text
