"""The nft JSON relayd sends, exactly, and the parsing of captured nft 1.0.6 listings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from relayd.nft.ruleset import (
    CHAINS,
    Counter,
    Endpoint,
    Forward,
    ForwardKey,
    Table,
    TableState,
    add_commands,
    delete_commands,
    list_set_command,
    list_table_command,
    map_script,
    parse_counters,
    parse_state,
    record_chain_commands,
    record_commands,
    stream,
    table_commands,
    unrecord_commands,
)

DATA = Path(__file__).parents[1] / "data" / "nft"
T = {"family": "inet", "table": "relayd"}

CALLER4, CALLEE4 = Endpoint("10.88.1.2", 4000), Endpoint("10.88.2.2", 5000)
RELAY_A4, RELAY_B4 = Endpoint("10.88.1.1", 30000), Endpoint("10.88.2.1", 30002)
CALLER6, CALLEE6 = Endpoint("fd00:88::1:2", 4000), Endpoint("fd00:88::2:2", 5000)
RELAY_A6, RELAY_B6 = Endpoint("fd00:88::1:1", 30000), Endpoint("fd00:88::2:1", 30002)


def _load(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((DATA / name).read_text())
    return doc


def _payload(protocol: str, field: str) -> dict[str, Any]:
    return {"payload": {"protocol": protocol, "field": field}}


def _key(proto: str) -> dict[str, Any]:
    return {
        "concat": [
            _payload(proto, "saddr"),
            _payload("udp", "sport"),
            _payload(proto, "daddr"),
            _payload("udp", "dport"),
        ]
    }


UDP = {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "udp"}}
CT_MARK = {"ct": {"key": "mark"}}


def _rules(proto: str, v: int, nfproto: str) -> list[dict[str, Any]]:
    original = {
        "concat": [
            {"ct": {"key": f"{proto} saddr", "dir": "original"}},
            {"ct": {"key": "proto-src", "dir": "original"}},
            {"ct": {"key": f"{proto} daddr", "dir": "original"}},
            {"ct": {"key": "proto-dst", "dir": "original"}},
        ]
    }
    marked = {"match": {"op": "==", "left": {"&": [CT_MARK, 0x100000]}, "right": 0x100000}}
    exprs = {
        "prerouting_count": [
            UDP,
            {"match": {"op": "==", "left": _key(proto), "right": f"@dnat{v}"}},
            # every forwarded packet, in one named counter per family (max-bandwidth)
            {"counter": f"relayed{v}"},
            {"set": {"op": "update", "elem": _key(proto), "set": f"@count{v}"}},
            # a recorded forward's packet jumps to its nflog group's chain
            {"vmap": {"key": _key(proto), "data": f"@rec{v}"}},
        ],
        "prerouting_nat": [
            UDP,
            {"match": {"op": "==", "left": _key(proto), "right": f"@dnat{v}"}},
            {"mangle": {"key": CT_MARK, "value": {"|": [CT_MARK, 0x100000]}}},
            {"dnat": {"family": proto, "addr": {"map": {"key": _key(proto), "data": f"@dnat{v}"}}}},
        ],
        "postrouting_nat": [
            {"match": {"op": "==", "left": {"meta": {"key": "nfproto"}}, "right": nfproto}},
            UDP,
            {"snat": {"family": proto, "addr": {"map": {"key": original, "data": f"@snat{v}"}}}},
        ],
        "forward_dscp": [
            marked,
            {"mangle": {"key": _payload(proto, "dscp"), "value": 46}},
        ],
    }
    return [{"add": {"rule": {**T, "chain": chain, "expr": expr}}} for chain, expr in exprs.items()]


def test_table_commands_are_exact() -> None:
    # counters that every packet refreshes, expiring after a day of silence
    timed = {"flags": ["timeout"], "timeout": 86400, "size": 65536}
    counter = {"stmt": [{"counter": None}]}
    assert table_commands(Table()) == [
        {"add": {"table": {"family": "inet", "name": "relayd"}}},
        {
            "add": {
                "set": {
                    **T,
                    "name": "count4",
                    "type": ["ipv4_addr", "inet_service", "ipv4_addr", "inet_service"],
                    **timed,
                    **counter,
                }
            }
        },
        {
            "add": {
                "set": {
                    **T,
                    "name": "count6",
                    "type": ["ipv6_addr", "inet_service", "ipv6_addr", "inet_service"],
                    **timed,
                    **counter,
                }
            }
        },
        {"add": {"counter": {**T, "name": "relayed4"}}},
        {"add": {"counter": {**T, "name": "relayed6"}}},
        *(
            {"add": {"map": {**T, "name": f"rec{v}", "type": [a, s, a, s], "map": "verdict"}}}
            for v, a, s in ((4, "ipv4_addr", "inet_service"), (6, "ipv6_addr", "inet_service"))
        ),
        *(
            {
                "add": {
                    "chain": {**T, "name": n, "type": t, "hook": h, "prio": p, "policy": "accept"}
                }
            }
            for n, t, h, p in (
                ("prerouting_count", "filter", "prerouting", -150),
                ("prerouting_nat", "nat", "prerouting", -100),
                ("postrouting_nat", "nat", "postrouting", 100),
                ("forward_dscp", "filter", "forward", 0),
            )
        ),
        *({"flush": {"chain": {**T, "name": n}}} for n in CHAINS),
        *_rules("ip", 4, "ipv4"),
        *_rules("ip6", 6, "ipv6"),
    ]


def test_without_tos_no_mark_and_no_dscp_rule() -> None:
    cmds = table_commands(Table(tos=None))
    rules = [c["add"]["rule"] for c in cmds if "rule" in c.get("add", {})]
    assert {r["chain"] for r in rules} == {"prerouting_count", "prerouting_nat", "postrouting_nat"}
    assert "mangle" not in json.dumps(rules)
    assert "forward_dscp" in CHAINS  # the chain stays, empty: a later tos just fills it


def test_tos_sets_the_dscp_bits_and_a_custom_mark() -> None:
    cmds = table_commands(Table("media", tos=0x28, mark=0x4))
    dscp = [
        c["add"]["rule"]
        for c in cmds
        if c.get("add", {}).get("rule", {}).get("chain") == "forward_dscp"
    ]
    assert [r["table"] for r in dscp] == ["media", "media"]
    assert [r["expr"][1]["mangle"]["value"] for r in dscp] == [10, 10]  # 0x28 >> 2 = AF11
    assert dscp[0]["expr"][0] == {"match": {"op": "==", "left": {"&": [CT_MARK, 4]}, "right": 4}}


def test_map_script_declares_the_concatenated_maps() -> None:
    v4 = "ipv4_addr . inet_service . ipv4_addr . inet_service : ipv4_addr . inet_service"
    v6 = "ipv6_addr . inet_service . ipv6_addr . inet_service : ipv6_addr . inet_service"
    assert map_script(Table()) == (
        "add table inet relayd\n"
        f"add map inet relayd dnat4 {{ type {v4}; }}\n"
        f"add map inet relayd snat4 {{ type {v4}; }}\n"
        f"add map inet relayd dnat6 {{ type {v6}; }}\n"
        f"add map inet relayd snat6 {{ type {v6}; }}\n"
    )


def test_a_v4_stream_is_three_elements_per_direction() -> None:
    to_callee, to_caller = stream(CALLER4, RELAY_A4, RELAY_B4, CALLEE4)
    assert to_caller == Forward(CALLEE4, RELAY_B4, RELAY_A4, CALLER4)
    key_a = {"concat": ["10.88.1.2", 4000, "10.88.1.1", 30000]}
    key_b = {"concat": ["10.88.2.2", 5000, "10.88.2.1", 30002]}
    assert add_commands(Table(), [to_callee, to_caller]) == [
        {
            "add": {
                "element": {
                    **T,
                    "name": "dnat4",
                    "elem": [
                        [key_a, {"concat": ["10.88.2.2", 5000]}],
                        [key_b, {"concat": ["10.88.1.2", 4000]}],
                    ],
                }
            }
        },
        {
            "add": {
                "element": {
                    **T,
                    "name": "snat4",
                    "elem": [
                        [key_a, {"concat": ["10.88.2.1", 30002]}],
                        [key_b, {"concat": ["10.88.1.1", 30000]}],
                    ],
                }
            }
        },
        {"add": {"element": {**T, "name": "count4", "elem": [key_a, key_b]}}},
    ]


def test_a_v6_forward_normalises_addresses() -> None:
    fwd = Forward(
        Endpoint("FD00:88:0::1:2", 4000), RELAY_A6, RELAY_B6, Endpoint("fd00:0088::2:2", 5000)
    )
    key = {"concat": ["fd00:88::1:2", 4000, "fd00:88::1:1", 30000]}
    t6 = {**T, "table": "t"}
    dest, out = {"concat": ["fd00:88::2:2", 5000]}, {"concat": ["fd00:88::2:1", 30002]}
    assert add_commands(Table("t"), [fwd]) == [
        {"add": {"element": {**t6, "name": "dnat6", "elem": [[key, dest]]}}},
        {"add": {"element": {**t6, "name": "snat6", "elem": [[key, out]]}}},
        {"add": {"element": {**t6, "name": "count6", "elem": [key]}}},
    ]


def test_delete_names_keys_only_and_can_skip_absent_elements() -> None:
    a4 = ForwardKey(CALLER4, RELAY_A4)
    a6 = ForwardKey(CALLER6, RELAY_A6)
    key4 = {"concat": ["10.88.1.2", 4000, "10.88.1.1", 30000]}
    key6 = {"concat": ["fd00:88::1:2", 4000, "fd00:88::1:1", 30000]}
    assert delete_commands(Table(), [a4, a6]) == [
        {"delete": {"element": {**T, "name": name, "elem": [key]}}}
        for name, key in (
            ("dnat4", key4), ("snat4", key4), ("count4", key4),
            ("dnat6", key6), ("snat6", key6), ("count6", key6),
        )
    ]  # fmt: skip
    present = TableState(dnat={a4: CALLEE4}, count={a6: Counter(0, 0)})
    assert delete_commands(Table(), [a4, a6], present) == [
        {"delete": {"element": {**T, "name": "dnat4", "elem": [key4]}}},
        {"delete": {"element": {**T, "name": "count6", "elem": [key6]}}},
    ]
    assert delete_commands(Table(), []) == []
    assert add_commands(Table(), []) == []


def test_recording_is_a_chain_per_group_and_an_element_per_forward() -> None:
    assert record_chain_commands(Table("t"), 7) == [
        {"add": {"chain": {"family": "inet", "table": "t", "name": "record_7"}}},
        {"flush": {"chain": {"family": "inet", "table": "t", "name": "record_7"}}},
        {
            "add": {
                "rule": {
                    "family": "inet",
                    "table": "t",
                    "chain": "record_7",
                    "expr": [{"log": {"prefix": "t", "group": 7}}],
                }
            }
        },
    ]
    a4, b4 = ForwardKey(CALLER4, RELAY_A4), ForwardKey(CALLEE4, RELAY_B4)
    a6 = ForwardKey(CALLER6, RELAY_A6)
    key_a = {"concat": ["10.88.1.2", 4000, "10.88.1.1", 30000]}
    key_b = {"concat": ["10.88.2.2", 5000, "10.88.2.1", 30002]}
    key6 = {"concat": ["fd00:88::1:2", 4000, "fd00:88::1:1", 30000]}
    jump = {"jump": {"target": "record_7"}}
    assert record_commands(Table(), [a4, b4, a6], 7) == [
        {"add": {"element": {**T, "name": "rec4", "elem": [[key_a, jump], [key_b, jump]]}}},
        {"add": {"element": {**T, "name": "rec6", "elem": [[key6, jump]]}}},
    ]
    assert unrecord_commands(Table(), [a6]) == [
        {"delete": {"element": {**T, "name": "rec6", "elem": [key6]}}}
    ]
    assert record_commands(Table(), [], 7) == unrecord_commands(Table(), []) == []
    with pytest.raises(ValueError, match="group"):
        record_commands(Table(), [a4], 65536)


def test_recorded_forwards_from_a_listing() -> None:
    """``nft -j list map inet relayd rec4`` as nft 1.0.6 prints it (captured); a verdict
    that is not a jump to a record chain is not relayd's and is left out."""
    doc = {
        "nftables": [
            {"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
            {
                "map": {
                    **T,
                    "name": "rec4",
                    "type": ["ipv4_addr", "inet_service", "ipv4_addr", "inet_service"],
                    "handle": 19,
                    "map": "verdict",
                    "elem": [
                        [
                            {"concat": ["10.88.1.2", 4000, "10.88.1.1", 30000]},
                            {"jump": {"target": "record_7"}},
                        ],
                        [{"concat": ["10.88.2.2", 5000, "10.88.2.1", 30002]}, {"accept": None}],
                    ],
                }
            },
        ]
    }
    state = parse_state([doc], Table())
    assert state.recorded == {ForwardKey(CALLER4, RELAY_A4): 7}
    assert state.all_keys() == set()  # a mark alone is no forward


def test_list_commands() -> None:
    assert list_table_command(Table()) == {"list": {"table": {"family": "inet", "name": "relayd"}}}
    assert list_set_command(Table(), "count6") == {"list": {"set": {**T, "name": "count6"}}}
    assert list_set_command(Table(), "dnat4") == {"list": {"map": {**T, "name": "dnat4"}}}
    assert list_set_command(Table(), "rec6") == {"list": {"map": {**T, "name": "rec6"}}}


def test_counters_from_captured_listings() -> None:
    docs = [_load("list-set-count4.json"), _load("list-set-count6.json")]
    assert parse_counters(docs, Table()) == {
        ForwardKey(CALLER4, RELAY_A4): (3, 600),  # 3 x (20 + 8 + 172)
        ForwardKey(CALLEE4, RELAY_B4): (2, 400),
        ForwardKey(CALLER6, RELAY_A6): (3, 660),  # 3 x (40 + 8 + 172)
        ForwardKey(CALLEE6, RELAY_B6): (2, 440),
    }
    assert parse_counters(docs, Table("other")) == {}
    assert parse_counters([None, {"nftables": []}], Table()) == {}


def test_state_from_a_captured_table_listing() -> None:
    state = parse_state([_load("list-table.json")], Table())
    expected = [
        *stream(CALLER4, RELAY_A4, RELAY_B4, CALLEE4),
        *stream(CALLER6, RELAY_A6, RELAY_B6, CALLEE6),
    ]
    assert state.forwards() == {f.key: f for f in expected}
    assert all(state.holds(f) for f in expected)
    assert state.count[ForwardKey(CALLER6, RELAY_A6)] == Counter(3, 660)
    moved = Forward(CALLER4, RELAY_A4, RELAY_B4, Endpoint("10.88.2.2", 5002))
    assert not state.holds(moved)


def test_a_key_with_one_nat_element_is_not_a_forward() -> None:
    key = ForwardKey(CALLER4, RELAY_A4)
    state = TableState(dnat={key: CALLEE4}, count={key: Counter(1, 200)})
    assert state.forwards() == {}
    assert state.all_keys() == {key}
    assert not state.holds(Forward(CALLER4, RELAY_A4, RELAY_B4, CALLEE4))


def test_values_are_validated() -> None:
    with pytest.raises(ValueError):
        Endpoint("10.0.0.1", 0)
    with pytest.raises(ValueError):
        Endpoint("not-an-address", 5000)
    with pytest.raises(ValueError, match="mixed address families"):
        Forward(CALLER4, RELAY_A6, RELAY_B4, CALLEE4)
    with pytest.raises(ValueError, match="mixed address families"):
        ForwardKey(CALLER6, RELAY_A4)
    for name in ("", "1table", "a b", "x" * 33, "semi;colon", "dot.ted"):
        with pytest.raises(ValueError, match="table name"):
            Table(name)
    with pytest.raises(ValueError, match="tos"):
        Table(tos=256)
    with pytest.raises(ValueError, match="mark"):
        Table(mark=0)
    assert str(CALLER6) == "[fd00:88::1:2]:4000" and str(CALLER4) == "10.88.1.2:4000"
