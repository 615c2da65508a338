"""The relayd table as nftables JSON documents, and the parsing of its listings (pure).

Rules of the layout (docs/architecture.md "Kernel path", docs/kernel.md):

* One table, family ``inet``; relayd touches nothing else in the ruleset.
* A :class:`Forward` is one direction of one stream: packets from the learned
  source S to relay socket R leave from relay socket R' towards D. It is three
  elements keyed on the pre-NAT 4-tuple ``S . R`` (``ip saddr . udp sport .
  ip daddr . udp dport``), one per family-specific set:

  ``dnat4``/``dnat6`` (map, key → D)
      looked up in the ``nat`` prerouting chain;
  ``snat4``/``snat6`` (map, key → R')
      looked up in ``nat`` postrouting on the conntrack *original* tuple, which
      is the same 4-tuple;
  ``count4``/``count6`` (set with a counter per element, and a timeout)
      updated from a ``filter`` chain at prerouting priority mangle, which sees
      every packet, whereas nat chains only see a flow's first one. A packet of a
      forward (its key is in ``dnat4``/``dnat6``) adds to its element's counter
      and refreshes the element's timeout (:data:`ACTIVITY_TIMEOUT`), so the time
      left before it would expire says when its last packet came: relayd reads an
      element when it needs to know (a call's timeout due, ``query``), never on a
      clock (:mod:`relayd.nft.elements`). An element whose forward stays silent
      for the whole timeout expires; its forward's next packet adds it again,
      counting from zero.

  ``rec4``/``rec6`` (verdict map, key → ``jump record_G``)
      the forwards being recorded: the counting rule looks a forward's packet up
      here last, and a recorded one jumps to chain ``record_G``, whose one rule is
      ``log group G``: the kernel forwards the packet as before and hands a copy,
      as the party sent it (before DNAT), to the nfnetlink_log socket bound to
      group G (:mod:`relayd.nft.nflog`). Recording on or off is an element, never a
      rule change; an unrecorded forward's packet pays this one lookup, anyone
      else's packet none.

      The same maps carry the forwards whose DTMF events are reported (the DTMF event
      log: relayd/worker/dtmf.py): such a forward jumps to chain ``events_G_PT``, whose
      one rule copies to group G only the packets whose RTP payload type (the low 7
      bits of the UDP payload's second byte, ``@th,72,8 & 0x7f``) is PT, the call's
      telephone-event: its audio is forwarded and not copied. A forward's mark is one
      number, the *copy target* (:func:`events_target`): G alone for a recorded forward
      (every packet), G with PT for events only; recording wins, since its copies hold
      the events too.

  ``relayed4``/``relayed6`` (named counters)
      every packet of every forward, one counter per family, updated by the counting
      rule: the kernel's whole forwarded traffic in one object, which relayd reads once a
      second for ``max-bandwidth`` at a cost that does not grow with the forwards
      (:mod:`relayd.nft.relayed`).

  Anyone else's packets (another source, another port) match nothing and fall
  through to the worker socket: the kernel path is immune to RTP bleed.
* The constant rules never change with the streams; per-stream state lives in
  elements, so lookups stay O(1) and a batch of element changes is one
  transaction.
* DSCP: the nat prerouting rule (one run per flow) sets the ``ct mark`` bit
  :attr:`Table.mark` on the flows it translates; a ``filter`` chain on the
  forward hook sets ``ip dscp``/``ip6 dscp`` on every packet of a marked flow,
  in both directions. Locally generated traffic never passes ``forward``, and
  other DNAT'ed traffic of the host never gets the bit.

The four maps are declared in nft syntax (:func:`map_script`): libnftables
1.0.6's JSON parser cannot declare map data that is a concatenation.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from ipaddress import ip_address
from typing import Any, NamedTuple

__all__ = [
    "ACTIVITY_TIMEOUT",
    "CHAINS",
    "DEFAULT_MARK",
    "DEFAULT_TOS",
    "RELAYED",
    "Counter",
    "Endpoint",
    "Forward",
    "ForwardKey",
    "Table",
    "TableState",
    "add_commands",
    "count_commands",
    "delete_commands",
    "events_target",
    "list_set_command",
    "list_table_command",
    "map_script",
    "object_commands",
    "parse_counters",
    "parse_state",
    "record_chain",
    "record_chain_commands",
    "record_commands",
    "recount_commands",
    "rule_commands",
    "stream",
    "table_commands",
    "target_parts",
    "unrecord_commands",
]

Command = dict[str, Any]

DEFAULT_TOS = 0xB8
"""TOS byte as rtpengine's ``tos`` option gives it: 184 = DSCP 46 (EF)."""
DEFAULT_MARK = 0x00100000
"""The conntrack mark bit that flags a flow translated by relayd."""
RELAYED = "relayed"
"""The named counters (``relayed4``, ``relayed6``) of every packet the table forwards."""
ACTIVITY_TIMEOUT = 86400
"""Seconds a counter element lives without a packet (one day: longer than any media
timeout; rtpengine's ``timeout`` is 60 s by default)."""
DEFAULT_SIZE = 65536
"""Counter elements per address family: one per relay socket that the kernel forwards
to, so a port range's size per local address."""

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,31}")

# chain name -> (type, hook, priority); names avoid nft keywords such as "dnat"
CHAINS: dict[str, tuple[str, str, int]] = {
    "prerouting_count": ("filter", "prerouting", -150),  # mangle
    "prerouting_nat": ("nat", "prerouting", -100),  # dstnat
    "postrouting_nat": ("nat", "postrouting", 100),  # srcnat
    "forward_dscp": ("filter", "forward", 0),  # filter
}

# family version -> (nft payload protocol, nfproto, address datatype)
_FAMILY = {4: ("ip", "ipv4", "ipv4_addr"), 6: ("ip6", "ipv6", "ipv6_addr")}


@lru_cache(maxsize=1 << 16)
def _normal(address: str) -> str:
    # listings of big tables repeat the same addresses: parse each once
    return str(ip_address(address))


@dataclass(frozen=True, slots=True)
class Endpoint:
    """An address and UDP port; the address is normalised (``fd00::1``, not ``fd00:0::01``)."""

    address: str
    port: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "address", _normal(self.address))
        if not 0 < self.port < 65536:
            raise ValueError(f"port out of range: {self.port}")

    @property
    def version(self) -> int:
        return 6 if ":" in self.address else 4

    def __str__(self) -> str:
        return (
            f"[{self.address}]:{self.port}" if self.version == 6 else f"{self.address}:{self.port}"
        )


@dataclass(frozen=True, slots=True)
class ForwardKey:
    """The pre-NAT 4-tuple of a direction: learned source → relay socket."""

    source: Endpoint
    relay: Endpoint

    def __post_init__(self) -> None:
        if self.source.version != self.relay.version:
            raise ValueError(f"mixed address families: {self.source} -> {self.relay}")

    @property
    def version(self) -> int:
        return self.relay.version


@dataclass(frozen=True, slots=True)
class Forward:
    """source → relay (pre-NAT) becomes out → dest; all four of one address family."""

    source: Endpoint
    relay: Endpoint
    out: Endpoint
    dest: Endpoint

    def __post_init__(self) -> None:
        if len({e.version for e in (self.source, self.relay, self.out, self.dest)}) != 1:
            raise ValueError(f"mixed address families in {self}")

    @property
    def key(self) -> ForwardKey:
        return ForwardKey(self.source, self.relay)

    @property
    def version(self) -> int:
        return self.relay.version


def stream(
    a: Endpoint, relay_a: Endpoint, relay_b: Endpoint, b: Endpoint
) -> tuple[Forward, Forward]:
    """Both directions of a stream between peers that send from where they receive."""
    return Forward(a, relay_a, relay_b, b), Forward(b, relay_b, relay_a, a)


class Counter(NamedTuple):
    packets: int
    bytes: int


@dataclass(frozen=True, slots=True)
class Table:
    """Where relayd's elements live and how its constant rules read."""

    name: str = "relayd"
    tos: int | None = DEFAULT_TOS
    """TOS byte for forwarded packets (its DSCP bits are set; ECN is kept); None: leave it."""
    mark: int = DEFAULT_MARK
    size: int = DEFAULT_SIZE
    """The most counter elements per family (the kernel refuses more: ``ENFILE``)."""

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ValueError(f"invalid nft table name: {self.name!r}")
        if self.tos is not None and not 0 <= self.tos <= 255:
            raise ValueError(f"tos out of range: {self.tos}")
        if not 0 < self.mark < 1 << 32:
            raise ValueError(f"ct mark out of range: {self.mark}")
        if not 0 < self.size < 1 << 32:
            raise ValueError(f"set size out of range: {self.size}")

    def handle(self, **kw: Any) -> dict[str, Any]:
        return {"family": "inet", "table": self.name, **kw}


def map_script(table: Table) -> str:
    """nft syntax declaring the table and the four NAT maps (idempotent ``add``)."""
    lines = [f"add table inet {table.name}"]
    for version, (_, _, addr) in _FAMILY.items():
        key = f"{addr} . inet_service . {addr} . inet_service"
        for name in (f"dnat{version}", f"snat{version}"):
            lines.append(
                f"add map inet {table.name} {name} {{ type {key} : {addr} . inet_service; }}"
            )
    return "\n".join(lines) + "\n"


def _l4_udp() -> Command:
    return {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "udp"}}


def _nfproto(version: int) -> Command:
    return {
        "match": {"op": "==", "left": {"meta": {"key": "nfproto"}}, "right": _FAMILY[version][1]}
    }


def _packet_key(version: int) -> Command:
    proto = _FAMILY[version][0]
    fields = ((proto, "saddr"), ("udp", "sport"), (proto, "daddr"), ("udp", "dport"))
    return {"concat": [{"payload": {"protocol": p, "field": f}} for p, f in fields]}


def _original_key(version: int) -> Command:
    proto = _FAMILY[version][0]
    keys = (f"{proto} saddr", "proto-src", f"{proto} daddr", "proto-dst")
    return {"concat": [{"ct": {"key": k, "dir": "original"}} for k in keys]}


def _in_set(key: Command, name: str) -> Command:
    return {"match": {"op": "==", "left": key, "right": f"@{name}"}}


def _count(version: int) -> Command:
    key = _packet_key(version)
    return {"set": {"op": "update", "elem": key, "set": f"@count{version}"}}


def _recorded(version: int) -> Command:
    return {"vmap": {"key": _packet_key(version), "data": f"@rec{version}"}}


def _nat(kind: str, version: int, key: Command, name: str) -> Command:
    addr = {"map": {"key": key, "data": f"@{name}"}}
    return {kind: {"family": _FAMILY[version][0], "addr": addr}}


def _rules(table: Table, v: int) -> list[tuple[str, list[Command]]]:
    ct_mark = {"ct": {"key": "mark"}}
    mark = [{"mangle": {"key": ct_mark, "value": {"|": [ct_mark, table.mark]}}}]
    rules = [
        (
            "prerouting_count",
            [
                _l4_udp(),
                _in_set(_packet_key(v), f"dnat{v}"),
                {"counter": f"{RELAYED}{v}"},
                _count(v),
                _recorded(v),
            ],
        ),
        (
            "prerouting_nat",
            [
                _l4_udp(),
                _in_set(_packet_key(v), f"dnat{v}"),
                *(mark if table.tos is not None else []),
                _nat("dnat", v, _packet_key(v), f"dnat{v}"),
            ],
        ),
        # nft 1.0.6: "ct original proto-dst" needs the l4proto match before it
        (
            "postrouting_nat",
            [_nfproto(v), _l4_udp(), _nat("snat", v, _original_key(v), f"snat{v}")],
        ),
    ]
    if table.tos is not None:
        marked = {"match": {"op": "==", "left": {"&": [ct_mark, table.mark]}, "right": table.mark}}
        field = {"payload": {"protocol": _FAMILY[v][0], "field": "dscp"}}
        rules.append(
            ("forward_dscp", [marked, {"mangle": {"key": field, "value": table.tos >> 2}}])
        )
    return rules


def table_commands(table: Table) -> list[Command]:
    """Counter sets, chains and rules, after :func:`map_script`; idempotent, elements untouched:
    :func:`object_commands`, then :func:`rule_commands`."""
    return object_commands(table) + rule_commands(table)


def object_commands(table: Table) -> list[Command]:
    """The table, its counter sets and chains (``add``: whatever exists is kept).

    A transaction of its own before :func:`rule_commands`: libnftables 1.0.6 resolves a
    JSON rule's ``@set`` against the sets it found in the kernel, not against one added
    earlier in the same batch (a missing counter set would fail the whole repair)."""
    cmds: list[Command] = [{"add": {"table": {"family": "inet", "name": table.name}}}]
    for version, (_, _, addr) in _FAMILY.items():
        set_type = [addr, "inet_service", addr, "inet_service"]
        counted = table.handle(
            name=f"count{version}",
            type=set_type,
            flags=["timeout"],  # nft adds "dynamic" itself: the counting rule updates it
            timeout=ACTIVITY_TIMEOUT,
            size=table.size,
            stmt=[{"counter": None}],
        )
        cmds.append({"add": {"set": counted}})
    for version in _FAMILY:
        cmds.append({"add": {"counter": table.handle(name=f"{RELAYED}{version}")}})
    for version, (_, _, addr) in _FAMILY.items():
        key_type = [addr, "inet_service", addr, "inet_service"]
        recorded = table.handle(name=f"rec{version}", type=key_type, map="verdict")
        cmds.append({"add": {"map": recorded}})
    for name, (kind, hook, prio) in CHAINS.items():
        base = table.handle(name=name, type=kind, hook=hook, prio=prio, policy="accept")
        cmds.append({"add": {"chain": base}})
    return cmds


def rule_commands(table: Table) -> list[Command]:
    """The chains flushed and their rules added again, in one transaction, so a changed
    ``tos`` or a damaged rule is repaired atomically while established flows (held by
    conntrack) keep going."""
    cmds: list[Command] = [{"flush": {"chain": table.handle(name=name)}} for name in CHAINS]
    for version in _FAMILY:
        for chain_name, expr in _rules(table, version):
            cmds.append({"add": {"rule": table.handle(chain=chain_name, expr=expr)}})
    return cmds


def _key_value(key: ForwardKey) -> Command:
    s, r = key.source, key.relay
    return {"concat": [s.address, s.port, r.address, r.port]}


def _endpoint_value(endpoint: Endpoint) -> Command:
    return {"concat": [endpoint.address, endpoint.port]}


def _elements(table: Table, op: str, name: str, elems: list[Any]) -> list[Command]:
    return [{op: {"element": table.handle(name=name, elem=elems)}}] if elems else []


def add_commands(table: Table, forwards: Iterable[Forward]) -> list[Command]:
    """Add every forward's three elements: one command per set, all in one transaction."""
    dnat: dict[int, list[Any]] = {4: [], 6: []}
    snat: dict[int, list[Any]] = {4: [], 6: []}
    count: dict[int, list[Any]] = {4: [], 6: []}
    for fwd in forwards:
        key = _key_value(fwd.key)
        dnat[fwd.version].append([key, _endpoint_value(fwd.dest)])
        snat[fwd.version].append([key, _endpoint_value(fwd.out)])
        count[fwd.version].append(key)
    cmds: list[Command] = []
    for v in _FAMILY:
        cmds += _elements(table, "add", f"dnat{v}", dnat[v])
        cmds += _elements(table, "add", f"snat{v}", snat[v])
        cmds += _elements(table, "add", f"count{v}", count[v])
    return cmds


def count_commands(table: Table, keys: Iterable[ForwardKey]) -> list[Command]:
    """Add the counter elements alone (after the counter sets were made anew)."""
    count: dict[int, list[Any]] = {4: [], 6: []}
    for key in keys:
        count[key.version].append(_key_value(key))
    return [cmd for v in _FAMILY for cmd in _elements(table, "add", f"count{v}", count[v])]


def recount_commands(table: Table) -> list[Command]:
    """Drop the counter sets (their chain flushed first, it refers to them), so that
    :func:`table_commands` makes them anew: how a table of an earlier layout, whose
    counter sets had no timeouts, is brought up to date."""
    cmds: list[Command] = [{"flush": {"chain": table.handle(name="prerouting_count")}}]
    for version in _FAMILY:
        cmds.append({"delete": {"set": table.handle(name=f"count{version}")}})
    return cmds


def delete_commands(
    table: Table, keys: Iterable[ForwardKey], present: TableState | None = None
) -> list[Command]:
    """Delete the keys' elements; with ``present``, only those it holds (nft refuses others)."""
    elems: dict[str, list[Any]] = {
        f"{s}{v}": [] for v in _FAMILY for s in ("dnat", "snat", "count")
    }
    for key in keys:
        for name in ("dnat", "snat", "count"):
            if present is None or key in present.elements(name):
                elems[f"{name}{key.version}"].append(_key_value(key))
    return [cmd for name, items in elems.items() for cmd in _elements(table, "delete", name, items)]


# copy targets from here on copy one payload type's packets: 1 << 24 | pt << 16 | group
# (a recording's target is its group, 0-65535; the numbers between are no target)
_EVENTS = 1 << 24


def events_target(group: int, pt: int) -> int:
    """The copy target of a forward whose packets of RTP payload type ``pt`` (its
    telephone-event) are copied to nflog ``group``, and no others."""
    if not 0 <= group <= 0xFFFF or not 0 <= pt <= 127:
        raise ValueError(f"nflog group or payload type out of range: {group}, {pt}")
    return _EVENTS | pt << 16 | group


def target_parts(target: int) -> tuple[int, int | None]:
    """A copy target's nflog group and payload type (None: every packet, a recording)."""
    if target >= _EVENTS:
        return target & 0xFFFF, (target - _EVENTS) >> 16
    return target, None


def record_chain(group: int) -> str:
    """The chain that copies the packets of forwards marked with copy target ``group``: a
    recorded forward's (``record_G``), or one whose events are reported (``events_G_PT``)."""
    group, pt = target_parts(group)
    if not 0 <= group <= 0xFFFF or (pt is not None and not 0 <= pt <= 127):
        raise ValueError(f"nflog group out of range: {group}")
    return f"record_{group}" if pt is None else f"events_{group}_{pt}"


def record_chain_commands(table: Table, group: int) -> list[Command]:
    """Chain ``record_G`` with its one rule, ``log prefix <table> group G`` (made anew:
    idempotent), or for an events target ``events_G_PT``, the same ``log`` behind a match
    of the RTP payload type. The snap length, batching and buffer are the reader's
    (:class:`relayd.nft.nflog.NflogReader`); the prefix says which table a copy came from."""
    chain = table.handle(name=record_chain(group))
    nflog, pt = target_parts(group)
    expr: list[Command] = [{"log": {"prefix": table.name, "group": nflog}}]
    if pt is not None:
        rtp_pt = {"&": [{"payload": {"base": "th", "offset": 72, "len": 8}}, 0x7F]}
        expr.insert(0, {"match": {"op": "==", "left": rtp_pt, "right": pt}})
    return [
        {"add": {"chain": chain}},
        {"flush": {"chain": chain}},
        {"add": {"rule": table.handle(chain=chain["name"], expr=expr)}},
    ]


def record_commands(table: Table, keys: Iterable[ForwardKey], group: int) -> list[Command]:
    """Mark forwards recorded to nflog ``group`` (its chain must exist); nft refuses a key
    that is marked already, even to the same group."""
    jump = {"jump": {"target": record_chain(group)}}
    elems: dict[int, list[Any]] = {4: [], 6: []}
    for key in keys:
        elems[key.version].append([_key_value(key), jump])
    return [cmd for v in _FAMILY for cmd in _elements(table, "add", f"rec{v}", elems[v])]


def unrecord_commands(table: Table, keys: Iterable[ForwardKey]) -> list[Command]:
    """Unmark forwards; nft refuses a key that is not marked."""
    elems: dict[int, list[Any]] = {4: [], 6: []}
    for key in keys:
        elems[key.version].append(_key_value(key))
    return [cmd for v in _FAMILY for cmd in _elements(table, "delete", f"rec{v}", elems[v])]


def list_table_command(table: Table) -> Command:
    return {"list": {"table": {"family": "inet", "name": table.name}}}


def list_set_command(table: Table, name: str) -> Command:
    """One ``list set``/``list map`` (``count*`` are sets, the others maps); libnftables
    1.0.6 mishandles several lists in one run."""
    kind = "set" if name.startswith("count") else "map"
    return {"list": {kind: table.handle(name=name)}}


@dataclass
class TableState:
    """The elements found in a listing, per set kind, keyed on the pre-NAT 4-tuple;
    ``recorded``: the nflog group of each recorded forward."""

    dnat: dict[ForwardKey, Endpoint] = field(default_factory=dict)
    snat: dict[ForwardKey, Endpoint] = field(default_factory=dict)
    count: dict[ForwardKey, Counter] = field(default_factory=dict)
    recorded: dict[ForwardKey, int] = field(default_factory=dict)

    def elements(self, kind: str) -> Mapping[ForwardKey, object]:
        if kind == "dnat":
            return self.dnat
        return self.snat if kind == "snat" else self.count

    def all_keys(self) -> set[ForwardKey]:
        return set(self.dnat) | set(self.snat) | set(self.count)

    def forwards(self) -> dict[ForwardKey, Forward]:
        """Complete forwards: a key with both its NAT elements."""
        return {
            k: Forward(k.source, k.relay, self.snat[k], dest)
            for k, dest in self.dnat.items()
            if k in self.snat
        }

    def holds(self, fwd: Forward) -> bool:
        """All three elements of ``fwd`` are present with its values."""
        key = fwd.key
        return (
            self.dnat.get(key) == fwd.dest and self.snat.get(key) == fwd.out and key in self.count
        )


def _objects(doc: Mapping[str, Any] | None, table: Table) -> Iterable[tuple[str, dict[str, Any]]]:
    for obj in (doc or {}).get("nftables", []):
        for kind in ("set", "map"):
            body = obj.get(kind)
            if body and body.get("family") == "inet" and body.get("table") == table.name:
                yield body["name"], body


def _parse_key(value: Any) -> ForwardKey:
    saddr, sport, daddr, dport = value["concat"]
    return ForwardKey(Endpoint(saddr, int(sport)), Endpoint(daddr, int(dport)))


def _parse_endpoint(value: Any) -> Endpoint:
    addr, port = value["concat"]
    return Endpoint(addr, int(port))


def _parse_group(verdict: Any) -> int | None:
    # {"jump": {"target": "record_7"}} or "events_7_101" (a copy target); any other verdict
    # is not relayd's
    target = verdict.get("jump", {}).get("target", "") if isinstance(verdict, dict) else ""
    prefix, _, group = target.partition("_")
    if prefix == "record" and group.isdigit():
        return int(group)
    nflog, _, pt = group.partition("_")
    if prefix == "events" and nflog.isdigit() and pt.isdigit():
        with contextlib.suppress(ValueError):
            return events_target(int(nflog), int(pt))
    return None


def _counted(item: Any) -> tuple[ForwardKey, Counter]:
    # an element with a counter reads {"elem": {"val": KEY, "counter": {...}}}
    elem = item.get("elem", {"val": item}) if isinstance(item, dict) else {"val": item}
    counter = elem.get("counter") or {}
    return _parse_key(elem["val"]), Counter(
        int(counter.get("packets", 0)), int(counter.get("bytes", 0))
    )


def parse_state(docs: Iterable[Mapping[str, Any] | None], table: Table) -> TableState:
    """Collect relayd's elements from ``list table`` or ``list set`` outputs."""
    state = TableState()
    for doc in docs:
        for name, body in _objects(doc, table):
            kind = name[:-1]
            for item in body.get("elem", []):
                if kind == "count":
                    key, counter = _counted(item)
                    state.count[key] = counter
                elif kind in ("dnat", "snat"):
                    key_json, value_json = item
                    nat = state.dnat if kind == "dnat" else state.snat
                    nat[_parse_key(key_json)] = _parse_endpoint(value_json)
                elif kind == "rec":
                    group = _parse_group(item[1])
                    if group is not None:
                        state.recorded[_parse_key(item[0])] = group
    return state


def parse_counters(
    docs: Iterable[Mapping[str, Any] | None], table: Table
) -> dict[ForwardKey, Counter]:
    """Per-direction packet and byte counters from listings of ``count4``/``count6``."""
    return parse_state(docs, table).count
