"""Logical interfaces: ``interface`` lines resolved to local/advertised addresses, by family."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from relayd.calls.interfaces import Interfaces, resolve
from relayd.calls.model import LocalAddress
from relayd.config import parse_interface

DEVICES = {
    "lo": ["127.0.0.1", "::1"],
    "eth0": ["192.0.2.10", "2001:db8::10", "fe80::1"],
    "eth1": ["10.0.0.10"],
}


def _resolve(*lines: str) -> Interfaces:
    return resolve([parse_interface(line) for line in lines], DEVICES)


def test_plain_addresses_and_advertised() -> None:
    ifaces = _resolve("203.0.113.1", "pub/10.0.0.1!192.0.2.1", "pub/2001:db8::1")
    assert ifaces.all == [
        LocalAddress("default", "203.0.113.1", "203.0.113.1"),
        LocalAddress("pub", "10.0.0.1", "192.0.2.1"),
        LocalAddress("pub", "2001:db8::1", "2001:db8::1"),
    ]
    assert ifaces.default == "default"
    assert list(ifaces.by_name) == ["default", "pub"]


def test_first_named_interface_is_the_default() -> None:
    ifaces = _resolve("int/10.0.0.1", "ext/192.0.2.1")
    assert ifaces.default == "int"
    assert ifaces.select("nope", "IP4").local == "10.0.0.1"


def test_device_names_are_looked_up() -> None:
    ifaces = _resolve("ext/eth0!198.51.100.1", "int/eth1")
    assert ifaces.all == [
        LocalAddress("ext", "192.0.2.10", "198.51.100.1"),
        LocalAddress("ext", "2001:db8::10", "198.51.100.1"),  # fe80::1 cannot be bound
        LocalAddress("int", "10.0.0.10", "10.0.0.10"),
    ]


def test_loopback_device_is_usable_by_name() -> None:
    assert [a.local for a in _resolve("lo").all] == ["127.0.0.1", "::1"]


def test_device_with_only_a_link_local_address_is_an_error() -> None:
    with pytest.raises(ValueError, match="interface 'eth0' has no address"):
        resolve([parse_interface("eth0")], {"eth0": ["fe80::2"]})


def test_unknown_device_is_an_error() -> None:
    with pytest.raises(ValueError, match="interface 'eth9' has no address"):
        _resolve("eth9")


def test_any_takes_every_address_but_loopback_and_link_local() -> None:
    ifaces = _resolve("any")
    assert [a.local for a in ifaces.all] == ["192.0.2.10", "2001:db8::10", "10.0.0.10"]
    assert {a.interface for a in ifaces.all} == {"default"}
    assert all(a.advertised == a.local for a in ifaces.all)


def test_any_with_an_advertised_address() -> None:
    ifaces = resolve([parse_interface("pub/any!198.51.100.1")], {"eth0": ["192.0.2.10"]})
    assert ifaces.all == [LocalAddress("pub", "192.0.2.10", "198.51.100.1")]


def test_any_without_addresses_is_an_error() -> None:
    with pytest.raises(ValueError, match="interface 'any' found no address"):
        resolve([parse_interface("any")], {"lo": ["127.0.0.1", "::1"], "eth0": ["fe80::2"]})


def test_no_address_at_all_is_an_error() -> None:
    with pytest.raises(ValueError, match="no usable interface address"):
        Interfaces([])


def test_select_by_family_with_fallback() -> None:
    ifaces = _resolve("203.0.113.1", "2001:db8::1", "v4only/10.0.0.1", "v6only/2001:db8::2")
    assert ifaces.select("default", "IP4").local == "203.0.113.1"
    assert ifaces.select("default", "IP6").local == "2001:db8::1"
    # a family the interface lacks: its first address
    assert ifaces.select("v4only", "IP6").local == "10.0.0.1"
    assert ifaces.select("v6only", "IP4").local == "2001:db8::2"
    # an unknown name: the default interface
    assert ifaces.select("missing", "IP6").local == "2001:db8::1"


def test_has_and_families() -> None:
    ifaces = _resolve("203.0.113.1", "2001:db8::1", "v4only/10.0.0.1")
    assert ifaces.has("v4only") and ifaces.has("default")
    assert not ifaces.has("internal")
    assert ifaces.families("default") == {"IP4", "IP6"}
    assert ifaces.families("v4only") == {"IP4"}
    assert ifaces.families("missing") == {"IP4", "IP6"}


def test_local_address_family() -> None:
    assert LocalAddress("x", "2001:db8::1", "192.0.2.1").family == "IP6"
    assert LocalAddress("x", "192.0.2.1", "2001:db8::1").family == "IP4"


# --- round-robin pools (rtpengine's BASE:SUFFIX names and round-robin-calls) ------------------


def _pools() -> Interfaces:
    return _resolve(
        "pub:1/10.0.0.1",
        "pub:1/2001:db8::1",
        "pub:2/10.0.0.2",
        "pub:3/2001:db8::3",
        "priv/10.1.0.1",
    )


def _room(*full: str) -> Callable[[LocalAddress], bool]:
    return lambda address: address.local not in full


def test_base_names_make_pools_and_round_robin_calls_has_every_interface() -> None:
    ifaces = _pools()
    assert ifaces.pools == {
        "pub": ["pub:1", "pub:2", "pub:3"],
        "round-robin-calls": ["pub:1", "pub:2", "pub:3", "priv"],
    }
    assert ifaces.has("pub") and ifaces.has("pub:2") and ifaces.has("round-robin-calls")
    assert not ifaces.has("pub:4") and not ifaces.has("priv:1")
    assert ifaces.pool_of("pub") == "pub" and ifaces.pool_of("pub:2") is None
    assert ifaces.pool_of("priv") is None
    # the first interface is pub:1, so a party that names none takes the pool "pub"
    assert ifaces.pool_of("") == "pub"
    assert _resolve("int/10.0.0.1", "pub:1/10.0.0.2").pool_of("") is None


def test_a_pool_takes_turns_per_family() -> None:
    ifaces = _pools()
    four = [ifaces.choose("pub", "IP4", _room()).local for _ in range(3)]
    assert four == ["10.0.0.1", "10.0.0.2", "10.0.0.1"]  # pub:3 has no IPv4 address
    six = [ifaces.choose("pub", "IP6", _room()).local for _ in range(3)]
    assert six == ["2001:db8::1", "2001:db8::3", "2001:db8::1"]
    # the default (no name) shares the pool's turn with "pub"
    assert ifaces.choose("", "IP4", _room()).local == "10.0.0.2"
    # a named interface is not a pool: always itself
    assert ifaces.choose("pub:2", "IP4", _room("10.0.0.2")).local == "10.0.0.2"


def test_a_pool_skips_interfaces_without_a_free_pair_on_every_address() -> None:
    ifaces = _pools()
    # pub:1's IPv6 address is full: pub:1 is skipped even for IPv4
    got = [ifaces.choose("pub", "IP4", _room("2001:db8::1")).local for _ in range(3)]
    assert got == ["10.0.0.2"] * 3
    # nothing has room: the one whose turn it is (its allocation then runs out of ports)
    assert ifaces.choose("pub", "IP4", _room("10.0.0.1", "10.0.0.2")).local == "10.0.0.1"
    assert ifaces.choose("pub", "IP4", _room("10.0.0.1", "10.0.0.2")).local == "10.0.0.1"


def test_looking_does_not_take_a_turn() -> None:
    ifaces = _pools()
    assert ifaces.choose("pub", "IP4", _room(), take_turn=False).local == "10.0.0.1"
    assert ifaces.choose("pub", "IP4", _room()).local == "10.0.0.1"
    assert ifaces.choose("pub", "IP4", _room(), take_turn=False).local == "10.0.0.2"


def test_membership_keeps_what_a_name_asks_for() -> None:
    ifaces = _pools()
    assert ifaces.member("pub", "pub:3") and not ifaces.member("pub", "priv")
    assert ifaces.member("round-robin-calls", "priv")
    assert ifaces.member("", "pub:2")  # no name: the default's pool
    assert ifaces.member("priv", "priv") and not ifaces.member("priv", "pub:1")
    plain = _resolve("int/10.0.0.1", "ext/10.0.0.2")
    assert plain.member("", "int") and not plain.member("", "ext")
    assert plain.member("nope", "int")  # an unknown name is the default interface
