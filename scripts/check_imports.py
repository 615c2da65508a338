#!/usr/bin/env python3
"""Static import rules of the relayd package: no cycles, and the layering table RULES below.

Usage: python3 scripts/check_imports.py [ROOT]   (ROOT defaults to the repository root)

Every module under ROOT/relayd is parsed with ast, never imported, and every import statement
counts wherever it stands: module level, in a function, under ``if TYPE_CHECKING:``, relative
or absolute. ``from relayd.x import name`` is an edge to relayd.x.name where that is a module,
else to relayd.x; importing a package is an edge to its __init__ only. The rules, in words:

* No import cycles among relayd's modules, not even through a function-level or a
  TYPE_CHECKING import.
* 'nft is a leaf': relayd.nft and its modules import nothing of relayd outside relayd.nft.
* 'main process imports no worker': no module outside relayd.worker imports relayd.worker.
* 'worker imports only shared modules': relayd.worker's modules import of relayd only
  relayd.worker, relayd.ipc, relayd.log, relayd.rtcp, relayd.certificate, the
  recording library (relayd.recording's spool, recorder, pcap and metadata) and the
  nfnetlink_log reader (relayd.nft.nflog, relayd.nft.netlink) and the transcoding engine
  (relayd.transcode).
* 'the modules shared with the worker import only each other': relayd.ipc, relayd.log,
  relayd.rtcp, relayd.certificate and the recording library pull nothing else of relayd
  into the worker.
* 'pure': the modules in PURE (codecs, parsers, models, the call logic but the journal,
  counters) open no sockets, run no event loop, read no clock, start no process or thread,
  load no C library, touch no SQLite; of relayd they import only other PURE modules and the
  log, and never nft, the worker or a shell (SHELLS). Of socket they may take only the
  address parsers and constants: ``from socket import inet_pton, AF_INET``.

A pattern names a module and all below it (``relayd.nft`` matches relayd.nft.ruleset too) and
may hold fnmatch wildcards. An import's name is the module for relayd's own modules, else what
the statement names: ``import time`` is "time", ``from socket import inet_pton`` is
"socket.inet_pton". Exit status 1 on any violation, one line each.
"""

from __future__ import annotations

import ast
import sys
from collections import deque
from dataclasses import dataclass
from fnmatch import fnmatchcase
from itertools import pairwise
from pathlib import Path

PACKAGE = "relayd"


@dataclass(frozen=True)
class Rule:
    """Modules matching `modules` but not `exceptions` may import nothing matching
    `forbidden` unless it also matches `allowed`, and never anything matching `never`."""

    name: str
    modules: tuple[str, ...]
    exceptions: tuple[str, ...] = ()
    forbidden: tuple[str, ...] = ()
    allowed: tuple[str, ...] = ()
    never: tuple[str, ...] = ()


SHELLS = (
    "relayd.supervisor", "relayd.daemon", "relayd.calls.journal", "relayd.ng.server",
    "relayd.ng.client", "relayd.plane.media", "relayd.plane.workerpool", "relayd.plane.sockets",
    "relayd.plane.updates", "relayd.plane.kernel", "relayd.ops.operations", "relayd.ops.admin",
    "relayd.ops.httpd", "relayd.ops.homer", "relayd.ops.dtmflog", "relayd.recording.control",
    "relayd.plane.playback", "relayd.ha.writer", "relayd.ha.watcher", "relayd.ha.replica",
)  # fmt: skip
SYSTEM = (
    "asyncio", "uvloop", "socket", "select", "selectors", "time", "datetime", "subprocess",
    "multiprocessing", "threading", "signal", "sqlite3", "ctypes",
)  # fmt: skip
PURE = (
    "relayd.ng.bencode", "relayd.ng.message", "relayd.ng.cache", "relayd.sdp", "relayd.calls",
    "relayd.plane.forwarding", "relayd.plane.reports", "relayd.plane.offload",
    "relayd.ops.counters", "relayd.ops.hep", "relayd.ops.runtime", "relayd.config",
    "relayd.config_keys", "relayd.ipc", "relayd.rtcp", "relayd.transcode.plan",
    "relayd.ha.settings",
)  # fmt: skip
SHARED_WITH_WORKER = (
    "relayd.ipc", "relayd.log", "relayd.rtcp", "relayd.certificate",
    # the recording library the workers write with (relayd.recording.control is the main's)
    "relayd.recording.spool", "relayd.recording.recorder", "relayd.recording.pcap",
    "relayd.recording.metadata",
    # the nfnetlink_log reader: workers read the kernel's copies of recorded packets
    "relayd.nft.nflog", "relayd.nft.netlink",
    # the transcoding engine and its plan (the contract with the supervisor's negotiation)
    "relayd.transcode",
)  # fmt: skip

RULES: list[Rule] = [
    Rule("nft is a leaf", modules=("relayd.nft",), forbidden=("relayd",), allowed=("relayd.nft",)),
    Rule(
        "main process imports no worker",
        modules=("relayd",),
        exceptions=("relayd.worker",),
        forbidden=("relayd.worker",),
    ),
    Rule(
        "worker imports only shared modules",
        modules=("relayd.worker",),
        forbidden=("relayd",),
        allowed=("relayd.worker", *SHARED_WITH_WORKER),
    ),
    Rule(
        "the modules shared with the worker import only each other",
        modules=SHARED_WITH_WORKER,
        forbidden=("relayd",),
        allowed=SHARED_WITH_WORKER,
    ),
    Rule(
        "pure",
        modules=PURE,
        exceptions=("relayd.calls.journal",),
        # of relayd's own modules only pure ones (and the log), whatever they import
        forbidden=(*SYSTEM, "relayd"),
        never=("relayd.nft", "relayd.worker", *SHELLS),
        allowed=(
            *PURE,
            "relayd.log",
            "socket.inet_pton",
            "socket.inet_ntop",
            "socket.AF_INET",
            "socket.AF_INET6",
            "socket.IPPROTO_UDP",
        ),
    ),
]


@dataclass(frozen=True)
class Import:
    target: str  # relayd's module, or the external name as written
    line: int
    internal: bool


def matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatchcase(name, p) or fnmatchcase(name, p + ".*") for p in patterns)


def discover(root: Path) -> dict[str, Path]:
    """Module name -> file, for every .py file of the package under root."""
    modules: dict[str, Path] = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _known(name: str, modules: dict[str, Path]) -> str:
    """The longest prefix of name that is a module (the package itself at worst)."""
    while name not in modules and "." in name:
        name = name.rpartition(".")[0]
    return name


def _is_internal(name: str) -> bool:
    return name == PACKAGE or name.startswith(PACKAGE + ".")


def imports_of(module: str, tree: ast.AST, modules: dict[str, Path]) -> list[Import]:
    """Every import statement anywhere in the tree, resolved to relayd's modules."""
    found: list[Import] = []
    is_package = modules[module].name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                internal = _is_internal(alias.name)
                target = _known(alias.name, modules) if internal else alias.name
                found.append(Import(target, node.lineno, internal))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                if node.level - 1 >= len(package):
                    continue  # beyond the top: Python refuses it too
                head = ".".join(package[: len(package) - node.level + 1])
                base = f"{head}.{base}" if base else head
            internal = _is_internal(base)
            for alias in node.names:
                name = base if alias.name == "*" else f"{base}.{alias.name}"
                target = _known(name, modules) if internal else name
                found.append(Import(target, node.lineno, internal))
    return found


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's components of more than one node, each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component: list[str] = []
            while not component or component[-1] != node:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def cycle_through(start: str, members: set[str], graph: dict[str, set[str]]) -> list[str]:
    """A shortest cycle from start back to start, within one component."""
    parent: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for succ in sorted(graph[node] & members):
            if succ == start:
                path = [node]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                return [*reversed(path), start]
            if succ not in parent:
                parent[succ] = node
                queue.append(succ)
    raise AssertionError(f"{start} is on no cycle")  # a component always has one


def check(root: Path, rules: list[Rule] = RULES) -> tuple[list[str], str]:
    """(violations, summary) for the package under root."""
    modules = discover(root)
    problems: list[str] = []
    imports: dict[str, list[Import]] = {}
    for module, path in modules.items():
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        except SyntaxError as err:
            problems.append(f"parse: {path}: {err}")
            continue
        imports[module] = imports_of(module, tree, modules)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    lines: dict[tuple[str, str], int] = {}
    for module, found in imports.items():
        for imp in found:
            if imp.internal and imp.target != module:
                graph[module].add(imp.target)
                key = (module, imp.target)
                lines[key] = min(lines.get(key, imp.line), imp.line)
    components = strongly_connected(graph)
    for component in components:
        cycle = cycle_through(component[0], set(component), graph)
        at = ", ".join(str(lines[a, b]) for a, b in pairwise(cycle))
        rest = sorted(set(component) - set(cycle))
        also = f"; its component also holds {', '.join(rest)}" if rest else ""
        problems.append(f"cycle: {' -> '.join(cycle)} (lines {at}){also}")
    for rule in rules:
        for module, found in imports.items():
            if not matches(module, rule.modules) or matches(module, rule.exceptions):
                continue
            broken = {
                (imp.line, imp.target)
                for imp in found
                if matches(imp.target, rule.never)
                or (matches(imp.target, rule.forbidden) and not matches(imp.target, rule.allowed))
            }
            for line, target in sorted(broken):
                problems.append(f"rule '{rule.name}': {module} imports {target} (line {line})")
    summary = f"imports: {len(modules)} modules, {sum(map(len, graph.values()))} edges, "
    summary += f"{len(problems)} violations" if problems else f"no cycles, {len(rules)} rules kept"
    return problems, summary


def main(argv: list[str]) -> int:
    root = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent.parent
    if not (root / PACKAGE).is_dir():
        print(f"imports: no {PACKAGE}/ package under {root}", file=sys.stderr)
        return 2
    problems, summary = check(root)
    for problem in problems:
        print(problem)
    print(summary)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
