"""scripts/check_imports.py: cycles and layering rules, on small synthetic package trees."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.scripts import load_script

checker = load_script("scripts/check_imports.py", "check_imports")


def tree(root: Path, files: dict[str, str]) -> Path:
    """Writes relayd/<name>.py files (dotted names, "pkg/__init__" for a package's own),
    with an empty __init__.py in every package that has none."""
    for name, source in files.items():
        path = root / "relayd" / f"{name.replace('.', '/')}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    for folder in [root / "relayd", *(root / "relayd").rglob("*")]:
        if folder.is_dir() and not (folder / "__init__.py").exists():
            (folder / "__init__.py").write_text("")
    return root


def problems(root: Path, files: dict[str, str]) -> list[str]:
    found, _summary = checker.check(tree(root, files))
    return list(found)


# name -> (the tree's modules, what the checker reports)
GRAPH_CASES: dict[str, tuple[dict[str, str], list[str]]] = {
    "a module-level cycle": (
        {"a": "from relayd import b\n", "b": "import os\nimport relayd.a\n"},
        ["cycle: relayd.a -> relayd.b -> relayd.a (lines 1, 2)"],
    ),
    "a cycle hidden in a function-level import": (
        {
            "a": "from relayd.b import helper\n",
            "b": "def helper() -> None:\n    from relayd.a import thing\n",
        },
        ["cycle: relayd.a -> relayd.b -> relayd.a (lines 1, 2)"],
    ),
    "a cycle hidden behind TYPE_CHECKING": (
        {
            "ops.x": "from relayd.plane.y import Y\n",
            "plane.y": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n"
                "    from relayd.ops.x import X\n"
            ),
        },
        ["cycle: relayd.ops.x -> relayd.plane.y -> relayd.ops.x (lines 1, 3)"],
    ),
    "a cycle of relative imports": (
        {
            "ops.x": "from . import y\n",
            "ops.y": "from ..plane.z import f\n",
            "plane.z": "from ..ops.x import g\n",
        },
        ["cycle: relayd.ops.x -> relayd.ops.y -> relayd.plane.z -> relayd.ops.x (lines 1, 1, 1)"],
    ),
    "a package's relative import resolves from the package": (
        {"ng.__init__": "from .sub import f\n", "ng.sub": "from relayd import ng\n"},
        ["cycle: relayd.ng -> relayd.ng.sub -> relayd.ng (lines 1, 1)"],
    ),
    "importing a submodule from its package is an edge to it": (
        {"a": "from relayd.pkg import m\n", "pkg.m": "import relayd.a\n"},
        ["cycle: relayd.a -> relayd.pkg.m -> relayd.a (lines 1, 1)"],
    ),
    "importing a package is an edge to its __init__ only": (
        {"a": "import relayd.pkg\nfrom relayd.pkg import name\n", "pkg.m": "import relayd.a\n"},
        [],
    ),
    "a larger component gives one cycle and its other members": (
        {
            "a": "import relayd.b\n",
            "b": "import relayd.a\nimport relayd.c\n",
            "c": "import relayd.b\n",
        },
        ["cycle: relayd.a -> relayd.b -> relayd.a (lines 1, 1); its component also holds relayd.c"],
    ),
}


@pytest.mark.parametrize("case", GRAPH_CASES)
def test_import_graph(tmp_path: Path, case: str) -> None:
    files, expected = GRAPH_CASES[case]
    assert problems(tmp_path, files) == expected


RULE_CASES = {
    "nft is a leaf": (
        {
            "log": "",
            "nft.__init__": "from relayd.nft.ruleset import build\n",
            "nft.ruleset": "import json\nfrom relayd.nft import libnft\n"
            "from relayd.log import get\n",
            "nft.libnft": "import ctypes\n",
        },
        ["rule 'nft is a leaf': relayd.nft.ruleset imports relayd.log (line 3)"],
    ),
    "the main process imports no worker": (
        {
            "plane.media": "def spawn() -> None:\n    from relayd.worker.loop import run\n",
            "daemon": "import relayd.worker\n",
            "worker.loop": "from relayd.worker import stun\n",
            "worker.stun": "",
        },
        [
            "rule 'main process imports no worker': relayd.daemon imports relayd.worker (line 1)",
            "rule 'main process imports no worker': relayd.plane.media"
            " imports relayd.worker.loop (line 2)",
        ],
    ),
    "the worker imports only shared modules": (
        {
            "ipc": "",
            "log": "",
            "rtcp": "",
            "certificate": "",
            "config": "",
            "worker.loop": (
                "import asyncio\n"
                "from relayd import ipc, log, rtcp, certificate\n"
                "from relayd.worker import stun\n"
                "from relayd.config import Config\n"
            ),
            "worker.stun": "",
        },
        [
            "rule 'worker imports only shared modules': relayd.worker.loop"
            " imports relayd.config (line 4)"
        ],
    ),
    "a pure module imports only pure modules (whatever the other imports)": (
        {
            "calls.model": "from relayd.ops import views\nfrom relayd.sdp import model\n",
            "ops.views": "import fcntl\n",
            "sdp.model": "",
        },
        ["rule 'pure': relayd.calls.model imports relayd.ops.views (line 1)"],
    ),
    "the modules shared with the worker import only each other": (
        {
            "ipc": "from relayd import log\n",
            "log": "",
            "certificate": "from relayd.config import Config\n",
            "config": "",
        },
        [
            "rule 'the modules shared with the worker import only each other':"
            " relayd.certificate imports relayd.config (line 1)"
        ],
    ),
    "a pure module imports no shell": (
        {
            "sdp.parse": "from relayd.calls import journal\n",
            "calls.journal": "import sqlite3\n",  # the journal itself is a shell: exempt
        },
        ["rule 'pure': relayd.sdp.parse imports relayd.calls.journal (line 1)"],
    ),
}


@pytest.mark.parametrize("case", RULE_CASES)
def test_layering_rule(tmp_path: Path, case: str) -> None:
    files, expected = RULE_CASES[case]
    assert problems(tmp_path, files) == expected


@pytest.mark.parametrize(
    ("source", "target"),
    [
        ("import asyncio", "asyncio"),
        ("import time", "time"),
        ("import socket", "socket"),
        ("from socket import socket", "socket.socket"),
        ("from time import monotonic", "time.monotonic"),
        ("import asyncio.subprocess", "asyncio.subprocess"),
        ("import sqlite3", "sqlite3"),
    ],
)
def test_pure_module_may_not_import_system_modules(
    tmp_path: Path, source: str, target: str
) -> None:
    files = {"calls.model": f"import json\n\n{source}\n"}
    assert problems(tmp_path, files) == [
        f"rule 'pure': relayd.calls.model imports {target} (line 3)"
    ]


def test_pure_module_may_take_the_address_parsers_of_socket(tmp_path: Path) -> None:
    files = {
        "calls.model": "from socket import inet_pton, inet_ntop\n",
        "ops.hep": "from socket import AF_INET, AF_INET6, inet_pton\n",
    }
    assert problems(tmp_path, files) == []


def test_a_clean_tree_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = {
        "ipc": "import json\n",
        "log": "import logging\n",
        "calls.model": "from socket import inet_pton\nfrom relayd.sdp import model\n",
        "sdp.model": "from dataclasses import dataclass\n",
        "supervisor": "import asyncio\nfrom relayd.calls import model\nimport relayd.nft.forward\n",
        "nft.forward": "from . import ruleset\n",
        "nft.ruleset": "import json\n",
        "worker.loop": "import asyncio\nfrom relayd import ipc, log\nfrom .stun import reply\n",
        "worker.stun": "import hmac\n",
    }
    found, summary = checker.check(tree(tmp_path, files))
    assert found == []
    # relayd, calls, sdp, nft, worker and the nine modules; seven edges
    assert summary == "imports: 14 modules, 7 edges, no cycles, 5 rules kept"
    assert checker.main(["check_imports.py", str(tmp_path)]) == 0
    assert capsys.readouterr().out == summary + "\n"


def test_main_fails_with_one_line_per_violation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tree(tmp_path, {"a": "import relayd.b\n", "b": "import relayd.a\n", "ipc": "import time\n"})
    assert checker.main(["check_imports.py", str(tmp_path)]) == 1
    assert capsys.readouterr().out.splitlines() == [
        "cycle: relayd.a -> relayd.b -> relayd.a (lines 1, 1)",
        "rule 'pure': relayd.ipc imports time (line 1)",
        "imports: 4 modules, 2 edges, 2 violations",
    ]
