"""Conntrack table dumps for the tests, over pyroute2 (a test dependency).

relayd itself deletes the entries of known 4-tuples with one hash lookup each
(:meth:`relayd.nft.conntrack.Ctnetlink.delete_flows`); the tests also want to
count and delete every UDP entry in which an address:port is the original
source or destination, including ones no key names (a spoofer's, a stale
peer's). That needs table dumps: each walks every bucket of the conntrack hash
(about 10 ms for 262,144 buckets) and pyroute2 parses about 3,000 entries a
second, fine for a test, far too slow for the offload path.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Iterator
from typing import Any

from pyroute2 import Conntrack
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

from relayd.nft.conntrack import AF, ConntrackError, delete_flows
from relayd.nft.ruleset import Endpoint

__all__ = ["count_entries", "delete_entries"]

_FILTERED_DUMPS_UP_TO = 16  # endpoints looked up with kernel-side filters; more: one full dump


def _open(version: int) -> Any:
    try:
        return Conntrack(nfgen_family=AF[version])
    except OSError as exc:
        raise ConntrackError(f"cannot open ctnetlink: {exc}") from exc


def _tuple(version: int, **fields: Any) -> Any:
    return NFCTAttrTuple(family=AF[version], proto=socket.IPPROTO_UDP, **fields)


def _matches(entry: Any, wanted: set[Endpoint]) -> bool:
    orig = entry.tuple_orig
    try:
        return (
            Endpoint(orig.saddr, orig.sport) in wanted or Endpoint(orig.daddr, orig.dport) in wanted
        )
    except (TypeError, ValueError):  # an entry without ports
        return False


def _entries(ct: Any, version: int, endpoints: set[Endpoint]) -> Iterator[Any]:
    """UDP entries with one of ``endpoints`` as original source or destination."""
    if len(endpoints) > _FILTERED_DUMPS_UP_TO:
        for entry in ct.dump_entries(tuple_orig=_tuple(version)):
            if _matches(entry, endpoints):
                yield entry
        return
    for ep in endpoints:  # kernel-side filters (CTA_FILTER, Linux 5.8+)
        yield from ct.dump_entries(tuple_orig=_tuple(version, saddr=ep.address, sport=ep.port))
        yield from ct.dump_entries(tuple_orig=_tuple(version, daddr=ep.address, dport=ep.port))


def _by_version(endpoints: Iterable[Endpoint]) -> dict[int, set[Endpoint]]:
    grouped: dict[int, set[Endpoint]] = {}
    for ep in endpoints:
        grouped.setdefault(ep.version, set()).add(ep)
    return grouped


def _orig(entry: Any) -> tuple[Endpoint, Endpoint]:
    t = entry.tuple_orig
    return Endpoint(t.saddr, t.sport), Endpoint(t.daddr, t.dport)


def delete_entries(endpoints: Iterable[Endpoint]) -> int:
    """Delete every UDP entry in which an endpoint is the original source or destination."""
    found: set[tuple[Endpoint, Endpoint]] = set()
    for version, wanted in _by_version(endpoints).items():
        ct = _open(version)
        try:
            found.update(_orig(e) for e in _entries(ct, version, wanted))
        except (NetlinkError, OSError) as exc:
            raise ConntrackError(f"conntrack dump: {exc}") from exc
        finally:
            ct.close()
    return delete_flows(found)


def count_entries(endpoint: Endpoint) -> int:
    """UDP entries with ``endpoint`` as original source or destination."""
    ct = _open(endpoint.version)
    try:
        return len({_orig(e) for e in _entries(ct, endpoint.version, {endpoint})})
    except (NetlinkError, OSError) as exc:
        raise ConntrackError(f"conntrack dump: {exc}") from exc
    finally:
        ct.close()
