"""KernelForwarder: relayd's nft table and the conntrack entries of its relay sockets.

Every change is one libnftables transaction (elements of many streams at
once), followed by the deletion of the conntrack entries that carry the
changed forwards' packets (:func:`relayd.nft.conntrack.delete_flows`: each key
``S → R`` and each translated reply ``D → R'``, in either direction of an
entry): elements first, then conntrack, so the next packet takes the new path
and none is lost. Install both directions of a stream in the same call: either
side may speak first, and one conntrack entry carries both directions of a
flow, so removing one direction alone does not stop the other.

The forwarder works in the network namespace of the thread that first uses it
(libnftables binds its netlink socket there); conntrack sockets are opened per
call, in the caller's namespace at that time.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from relayd.nft import conntrack
from relayd.nft.elements import ElementCount, SetElements, encode_key
from relayd.nft.libnft import DEFAULT_LIBRARY, Libnft, NftError
from relayd.nft.relayed import ObjectCount, RelayedCounters
from relayd.nft.ruleset import (
    DEFAULT_MARK,
    DEFAULT_SIZE,
    DEFAULT_TOS,
    RELAYED,
    Counter,
    Endpoint,
    Forward,
    ForwardKey,
    Table,
    TableState,
    add_commands,
    count_commands,
    delete_commands,
    list_set_command,
    list_table_command,
    map_script,
    object_commands,
    parse_counters,
    parse_state,
    record_chain_commands,
    record_commands,
    recount_commands,
    rule_commands,
    table_commands,
    unrecord_commands,
)

__all__ = ["Availability", "KernelForwarder", "ReconcileResult"]

_CAP_NET_ADMIN = 12
_IPV4_KEY = 16  # bytes of an IPv4 forward's key (encode_key)


@dataclass(frozen=True, slots=True)
class Availability:
    """Whether the kernel path can be used; false with the reason to log."""

    ok: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.ok


@dataclass(frozen=True, slots=True)
class ReconcileResult:
    """What a reconcile did: forwards kept as they were, added (or changed), removed."""

    kept: int
    added: int
    removed: int


def _has_net_admin() -> bool:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> _CAP_NET_ADMIN & 1)
    except OSError:
        pass
    return os.geteuid() == 0


def _missing(exc: NftError) -> bool:
    return "No such file or directory" in str(exc)


class KernelForwarder:
    """relayd's ``inet`` table: forwards as map/set elements, read back with their counters."""

    def __init__(
        self,
        table: str = "relayd",
        *,
        tos: int | None = DEFAULT_TOS,
        mark: int = DEFAULT_MARK,
        size: int = DEFAULT_SIZE,
        library: str = DEFAULT_LIBRARY,
        owned: tuple[int, int] | None = None,
    ) -> None:
        self.table = Table(table, tos, mark, size)
        # relay ports whose forwards this forwarder manages (None: all); several processes
        # may share a table, each reconciling only its own slice of the port range
        self.owned = owned
        self._library = library
        self._nft: Libnft | None = None
        self._reader: Libnft | None = None
        self._ctnetlink = conntrack.Ctnetlink()
        self._elements = SetElements(table)
        self._dumper = SetElements(table)  # whole-set dumps: a socket of their own
        self._relayed = RelayedCounters(table)  # the table's whole traffic (max-bandwidth)
        # forwards marked recorded (rec4/rec6), with their nflog group: few, and their
        # marks go with them when they are removed
        self._recorded: dict[ForwardKey, int] = {}

    @property
    def nft(self) -> Libnft:
        """The context that makes changes."""
        if self._nft is None:
            self._nft = Libnft(self._library)
        return self._nft

    @property
    def _lister(self) -> Libnft:
        # Listings get a context of their own: a context keeps the cache of its
        # last command, and the first change after a listing of 10,000 streams
        # spends 80-150 ms releasing it (0.5 ms in a context that only edits).
        if self._reader is None:
            self._reader = Libnft(self._library)
        return self._reader

    def close(self) -> None:
        for ctx in (self._nft, self._reader):
            if ctx is not None:
                ctx.close()
        self._nft = self._reader = None
        self._ctnetlink.close()
        self._elements.close()
        self._dumper.close()
        self._relayed.close()

    def available(self) -> Availability:
        """Check root, libnftables, nft and ctnetlink without changing anything; never raises."""
        if not _has_net_admin():
            return Availability(False, "CAP_NET_ADMIN missing (not root)")
        try:
            self.nft.run([{"list": {"tables": None}}])
        except NftError as exc:
            return Availability(False, f"nftables unusable: {exc}")
        except Exception as exc:  # never raise from a probe
            return Availability(False, f"nftables unusable: {exc!r}")
        try:
            # the raw ctnetlink socket the deletes use (pyroute2's conntrack runs an
            # asyncio loop of its own, which cannot run inside relayd's)
            self._ctnetlink.probe()
        except Exception as exc:
            return Availability(False, f"conntrack unusable: {exc}")
        try:
            self._elements.exists("count4")  # the sockets the counter reads use, opened now
            self._dumper.exists("count4")
        except Exception as exc:
            return Availability(False, f"nf_tables netlink unusable: {exc}")
        return Availability(True)

    def ensure_table(self) -> None:
        """Create the table, or repair its sets, chains and rules; elements are kept.

        A table of an earlier layout (counter sets without timeouts, which nft cannot
        change in place) gets new counter sets, with an element for every forward it
        holds, in one transaction: its forwards keep going, their counts start at zero.
        """
        self.nft.run_script(map_script(self.table))
        try:
            self.nft.run(object_commands(self.table))
        except NftError as exc:
            if "File exists" not in str(exc):
                raise
            keys = self.state().forwards().keys()
            self.nft.run(
                recount_commands(self.table)
                + table_commands(self.table)
                + count_commands(self.table, keys)
            )
            return
        self.nft.run(rule_commands(self.table))

    def destroy_table(self) -> None:
        """Delete the table (if present), then the conntrack entries of its forwards."""
        try:
            installed = self.state()
        except NftError as exc:
            if _missing(exc):
                return
            raise
        self.nft.run([{"delete": {"table": {"family": "inet", "name": self.table.name}}}])
        self._recorded.clear()
        self._forget_flows(_key_flows(installed.all_keys()) | _flows(installed.forwards().values()))

    def install(self, forwards: Iterable[Forward]) -> None:
        """Add or replace forwards in one transaction, then reset their relay sockets' flows.

        Forwards already present with the same values are left as they are; one
        whose key is present with other values (a changed destination) is
        replaced in the same transaction.
        """
        wanted = {f.key: f for f in forwards}
        if not wanted:
            return
        try:
            self.nft.run(add_commands(self.table, wanted.values()))
        except NftError:
            # a key present with other values: replace what differs, keep the rest
            state = self.state()
            present = state.all_keys()
            changed = [f for f in wanted.values() if not state.holds(f)]
            replaced = [f.key for f in changed if f.key in present]
            self.nft.run(
                delete_commands(self.table, replaced, state) + add_commands(self.table, changed)
            )
        self._forget_flows(_flows(wanted.values()))

    def remove(self, keys: Iterable[ForwardKey]) -> None:
        """Delete forwards in one transaction, then their sockets' flows; absent keys are no-ops."""
        doomed = set(keys)
        if not doomed:
            return
        marked = [key for key in doomed if key in self._recorded]
        try:
            self.nft.run(
                delete_commands(self.table, doomed) + unrecord_commands(self.table, marked)
            )
        except NftError:
            state = self.state()
            self.nft.run(
                delete_commands(self.table, doomed & state.all_keys(), state)
                + unrecord_commands(self.table, doomed & state.recorded.keys())
            )
        for key in marked:
            del self._recorded[key]
        self._forget_flows(_key_flows(doomed))

    def reconcile(self, wanted: Iterable[Forward]) -> ReconcileResult:
        """Make the table hold exactly ``wanted``: elements already right are not touched.

        Their flows keep going without a gap; extra elements are removed and
        missing or different ones added, in one transaction, then the flows of
        the relay sockets that changed are reset.
        """
        target = {f.key: f for f in wanted}
        state = self.state()
        present = {key for key in state.all_keys() if self._owns(key)}
        changed = [f for f in target.values() if not state.holds(f)]
        stale = present - target.keys()
        redo = stale | {f.key for f in changed if f.key in present}
        # marks of forwards that are not wanted go; the others are adopted as they are
        marks = {key: g for key, g in state.recorded.items() if self._owns(key)}
        unmarked = marks.keys() - target.keys()
        cmds = (
            delete_commands(self.table, redo, state)
            + unrecord_commands(self.table, unmarked)
            + add_commands(self.table, changed)
        )
        if cmds:
            self.nft.run(cmds)
        self._recorded = {key: g for key, g in marks.items() if key in target}
        gone = [f for k, f in state.forwards().items() if k in stale]
        self._forget_flows(_flows(changed) | _flows(gone) | _key_flows(stale))
        return ReconcileResult(len(target) - len(changed), len(changed), len(stale))

    # -- recording: copies of a forward's packets to nfnetlink_log (relayd/nft/nflog.py) ---

    def ensure_recording(self, group: int) -> None:
        """Make (or repair) chain ``record_<group>``, which copies the packets of forwards
        recorded to that nflog group; once per group, before :meth:`record`."""
        self.nft.run(record_chain_commands(self.table, group))

    def record(self, keys: Iterable[ForwardKey], group: int) -> None:
        """Copy these forwards' packets to nflog ``group`` from their next packet on, in one
        transaction (a forward recorded to another group moves); the forwards need not be
        installed yet, their marks only take effect when they are."""
        wanted = {key for key in keys if self._recorded.get(key) != group}
        if not wanted:
            return
        moved = [key for key in wanted if key in self._recorded]
        try:
            self.nft.run(
                unrecord_commands(self.table, moved) + record_commands(self.table, wanted, group)
            )
        except NftError:
            # the chain is missing, or the marks are not what this forwarder remembers
            # (the table was changed from outside): read them, and make the chain
            present = self.recorded()
            again = [key for key in wanted if key in present]
            self.nft.run(
                record_chain_commands(self.table, group)
                + unrecord_commands(self.table, again)
                + record_commands(self.table, wanted, group)
            )
        self._recorded.update(dict.fromkeys(wanted, group))

    def unrecord(self, keys: Iterable[ForwardKey]) -> None:
        """Stop copying these forwards' packets (from the next one on); keys this forwarder
        did not mark (or adopt in :meth:`reconcile`) are no-ops."""
        doomed = {key for key in keys if key in self._recorded}
        if not doomed:
            return
        try:
            self.nft.run(unrecord_commands(self.table, doomed))
        except NftError:
            present = self.recorded()
            self.nft.run(unrecord_commands(self.table, doomed & present.keys()))
        for key in doomed:
            del self._recorded[key]

    @property
    def marking(self) -> bool:
        """Whether any forward is marked recorded (as this forwarder knows it)."""
        return bool(self._recorded)

    def recorded(self) -> dict[ForwardKey, int]:
        """The forwards marked recorded in the kernel, with their nflog group (a listing of
        ``rec4`` and ``rec6``, which hold only the recorded forwards)."""
        docs: list[dict[str, Any] | None] = [
            self._lister.run([list_set_command(self.table, name)]) for name in ("rec4", "rec6")
        ]
        return parse_state(docs, self.table).recorded

    def _owns(self, key: ForwardKey) -> bool:
        return self.owned is None or self.owned[0] <= key.relay.port <= self.owned[1]

    def state(self) -> TableState:
        """Every element of the table (one ``list table``); NftError if there is no table."""
        return parse_state([self._lister.run([list_table_command(self.table)])], self.table)

    def list_installed(self) -> dict[ForwardKey, Forward]:
        return self.state().forwards()

    def counters(self) -> dict[ForwardKey, Counter]:
        """Packets and bytes per forward, counted before NAT on every packet (a listing of
        both counter sets through libnftables: for start-up and tests; the kernel path
        reads with :meth:`counts` and :meth:`all_counts`)."""
        docs: list[dict[str, Any] | None] = [
            self._lister.run([list_set_command(self.table, name)]) for name in ("count4", "count6")
        ]
        return parse_counters(docs, self.table)

    def counts(self, keys: Iterable[ForwardKey]) -> dict[ForwardKey, ElementCount]:
        """The counter elements of these forwards, each read alone (a hash lookup in the
        kernel, whatever the table's size); a key without an element is left out."""
        wanted = {encode_key(key): key for key in keys}
        return {wanted[data]: count for data, count in self.element_counts(wanted).items()}

    def element_counts(self, wires: Iterable[bytes]) -> dict[bytes, ElementCount]:
        """:meth:`counts` by the keys as the kernel holds them (:func:`encode_key`: 16 bytes
        for an IPv4 forward, 40 for IPv6), with no :class:`ForwardKey` made for them."""
        by_set: dict[str, list[bytes]] = {"count4": [], "count6": []}
        for wire in wires:
            by_set["count4" if len(wire) == _IPV4_KEY else "count6"].append(wire)
        found: dict[bytes, ElementCount] = {}
        for name, wanted in by_set.items():
            if wanted:
                found.update(self._elements.get(name, wanted))
        return found

    def relayed(self) -> dict[int, ObjectCount]:
        """Every packet the table forwarded, by IP version (``relayed4``/``relayed6``: two
        netlink lookups, whatever the table holds); a version whose counter is missing (a
        table made by an older relayd, not repaired yet) is left out."""
        found = {}
        for version in (4, 6):
            count = self._relayed.get(f"{RELAYED}{version}")
            if count is not None:
                found[version] = count
        return found

    def present(self) -> bool:
        """Whether the table (its IPv4 counter set) is still there: a cheap look, whatever
        the table holds."""
        return self._elements.exists("count4")

    def all_counts(self) -> dict[bytes, ElementCount]:
        """Every counter element of both families, by its key as the kernel holds it
        (:func:`relayd.nft.elements.encode_key`)."""
        found: dict[bytes, ElementCount] = {}
        for chunk in self.count_chunks():
            found.update(chunk)
        return found

    def count_chunks(self) -> Iterator[list[tuple[bytes, ElementCount]]]:
        """Every counter element of both families, a few hundred at a time (one buffer the
        kernel fills), over a socket of their own: :meth:`counts` may run in between."""
        for name in ("count4", "count6"):
            yield from self._dumper.dump_chunks(name)

    def forget_flows(self, forwards: Iterable[Forward]) -> None:
        """Delete the conntrack entries of installed forwards again: one made in between by
        a packet the relay's own socket sent would otherwise clash with their NAT."""
        self._forget_flows(_flows(forwards))

    def _forget_flows(self, tuples: set[tuple[Endpoint, Endpoint]]) -> None:
        if tuples:
            self._ctnetlink.delete_flows(tuples)


def _flows(forwards: Iterable[Forward]) -> set[tuple[Endpoint, Endpoint]]:
    """The tuples a forward's packets use: its key, and its reply as translated by NAT."""
    return {t for f in forwards for t in ((f.source, f.relay), (f.dest, f.out))}


def _key_flows(keys: Iterable[ForwardKey]) -> set[tuple[Endpoint, Endpoint]]:
    return {(k.source, k.relay) for k in keys}
