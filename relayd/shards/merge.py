"""One answer from the answers of every shard (pure): ng ``list`` and ``statistics``,
``relayctl`` requests and ``/metrics``.

Each shard answers for its own calls exactly as a single relayd would; these functions
make the answer a single relayd holding all the calls would give. Counts add up,
averages are recomputed from their sums, lists are concatenated (``list`` keeps its
``limit``), and the port figures of one address add up across the shards' slices of
the range. Metrics get a ``shard`` label per sample, so Prometheus can sum them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["merge_admin", "merge_list", "merge_metrics", "merge_statistics"]

Reply = dict[str, Any]


def _error(replies: Sequence[Reply]) -> Reply | None:
    for reply in replies:
        if reply.get("result") not in (None, "ok", "pong"):
            return reply
    return None


def merge_list(replies: Sequence[Reply], limit: int = 32) -> Reply:
    """ng ``list``: every shard's call-ids, at most ``limit`` of them."""
    failed = _error(replies)
    if failed is not None:
        return failed
    calls = [cid for reply in replies for cid in reply.get("calls", [])]
    return {"result": "ok", "calls": calls[: max(limit, 0)]}


def _fixed(value: float) -> str:
    return f"{value:.6f}"


def _add(into: dict[str, Any], other: dict[str, Any]) -> None:
    """Add numbers key by key, recursing into dictionaries; the first shard's other values
    (strings) stand until recomputed by the caller."""
    for key, value in other.items():
        mine = into.get(key)
        if isinstance(value, bool) or mine is None:
            into.setdefault(key, value)
        elif isinstance(value, int | float) and isinstance(mine, int | float):
            into[key] = mine + value
        elif isinstance(value, dict) and isinstance(mine, dict):
            _add(mine, value)


_FINISHED = (
    "timeoutsessions",
    "silenttimeoutsessions",
    "finaltimeoutsessions",
    "offertimeoutsessions",
    "regularterminatedsessions",
    "forcedterminatedsessions",
)


def merge_statistics(replies: Sequence[Reply]) -> Reply:
    """ng ``statistics`` (its tree under ``statistics``) and ``relayctl list totals`` (the
    tree itself): rtpengine 10.5's figures over all calls. Session, traffic and command
    counts add up (a ``list`` or ``statistics`` that every shard answered counts once); the
    average call duration is the sum of the durations over the calls finished; uptime is
    the oldest shard's; each interface's ports add up over the shards' slices."""
    failed = _error(replies)
    if failed is not None:
        return failed
    if replies and isinstance(replies[0].get("statistics"), dict):
        tree = _tree([r.get("statistics", {}) for r in replies])
        return {"statistics": tree, "result": "ok"}
    return {**_tree(replies), "result": "ok"}


_FANNED_OUT = ("totallistcount", "totalstatscount")  # counted by every shard for one request


def _tree(trees: Sequence[Reply]) -> Reply:
    merged: Reply = {}
    for tree in trees:
        _add(merged, {k: v for k, v in tree.items() if k not in _SPECIAL})
    control = merged.get("controlstatistics")
    if isinstance(control, dict) and trees:
        for key in _FANNED_OUT:
            if isinstance(control.get(key), int):
                control[key] //= len(trees)
    parts = [t["totalstatistics"] for t in trees if isinstance(t.get("totalstatistics"), dict)]
    if parts:
        total: Reply = {}
        for part in parts:
            _add(total, {k: v for k, v in part.items() if isinstance(v, int | float | dict)})
        duration = sum(float(part.get("totalcallsduration", 0) or 0) for part in parts)
        finished = sum(int(total.get(key, 0)) for key in _FINISHED)
        total["uptime"] = str(max(int(part.get("uptime", 0) or 0) for part in parts))
        total["avgcallduration"] = _fixed(duration / finished if finished else 0.0)
        total["totalcallsduration"] = _fixed(duration)
        merged["totalstatistics"] = {key: total.get(key, parts[0][key]) for key in parts[0]}
    if any("interfaces" in t for t in trees):
        merged["interfaces"] = _interfaces([t.get("interfaces") or [] for t in trees])
    return merged


_SPECIAL = frozenset({"interfaces", "totalstatistics", "result"})


def _interfaces(per_shard: Sequence[Sequence[dict[str, Any]]]) -> list[dict[str, Any]]:
    merged: dict[str, dict[str, Any]] = {}
    for interfaces in per_shard:
        for interface in interfaces:
            address = str(interface.get("address", ""))
            ports = interface.get("ports", {})
            if address not in merged:
                merged[address] = {**interface, "ports": dict(ports)}
                continue
            mine = merged[address]["ports"]
            mine["min"] = min(mine.get("min", 0), ports.get("min", 0))
            mine["max"] = max(mine.get("max", 0), ports.get("max", 0))
            for key in ("used", "free", "totals"):
                mine[key] = mine.get(key, 0) + ports.get(key, 0)
    for interface in merged.values():
        ports = interface["ports"]
        if "used_pct" in ports:
            capacity = ports.get("totals") or ports.get("used", 0) + ports.get("free", 0)
            ports["used_pct"] = f"{100.0 * ports.get('used', 0) / max(capacity, 1):.2f}"
    return list(merged.values())


def merge_admin(command: str, args: Sequence[str], replies: Sequence[Reply]) -> Reply:
    """``relayctl`` over every shard: the reply a single relayd would give."""
    failed = _error(replies)
    if failed is not None:
        return failed
    what = args[0] if args else ""
    if command == "list" and what == "numsessions":
        merged: Reply = {"result": "ok"}
        for key in ("own", "foreign", "total"):
            merged[key] = sum(int(r.get(key, 0)) for r in replies)
        return merged
    if command == "list" and what == "sessions":
        return {"result": "ok", "sessions": [s for r in replies for s in r.get("sessions", [])]}
    if command == "list" and what == "totals":
        return merge_statistics(replies)
    if command == "terminate":
        return {"result": "ok", "terminated": [c for r in replies for c in r.get("terminated", [])]}
    if command == "workers":
        workers = []
        for shard, reply in enumerate(replies):
            workers += [{**w, "shard": shard} for w in reply.get("workers", [])]
        return {"result": "ok", "workers": workers}
    if command == "kernel":
        merged = dict(replies[0]) if replies else {"result": "ok"}
        merged["forwards"] = [f for r in replies for f in r.get("forwards", [])]
        merged["kernel_streams"] = sum(int(r.get("kernel_streams", 0) or 0) for r in replies)
        merged["enabled"] = all(r.get("enabled") for r in replies)
        merged["reason"] = "; ".join(dict.fromkeys(r["reason"] for r in replies if r.get("reason")))
        return merged
    if command == "reload":
        return replies[0] if replies else {"result": "ok"}
    return replies[0] if replies else {"result": "error", "error": "no shard answered"}


def merge_metrics(texts: Sequence[str]) -> str:
    """Prometheus text of every shard as one exposition: each family's HELP and TYPE once,
    every sample labelled with its ``shard``."""
    order: list[str] = []
    heads: dict[str, list[str]] = {}
    samples: dict[str, list[str]] = {}
    for shard, text in enumerate(texts):
        family = ""
        for line in text.splitlines():
            if not line.strip():
                continue
            if line.startswith("#"):
                parts = line.split(" ", 3)
                family = parts[2] if len(parts) >= 3 else family
            if family not in heads:
                order.append(family)
                heads[family], samples[family] = [], []
            if line.startswith("#"):
                if line not in heads[family]:
                    heads[family].append(line)
            else:
                samples[family].append(_labelled(line, shard))
    out: list[str] = []
    for family in order:
        out += heads[family] + samples[family]
    return "\n".join(out) + "\n"


def _labelled(sample: str, shard: int) -> str:
    metric, _, value = sample.rpartition(" ")
    name, brace, rest = metric.partition("{")
    if not brace or rest == "}":
        return f'{name}{{shard="{shard}"}} {value}'
    return f'{name}{{shard="{shard}",{rest} {value}'
