"""relayd/plane/kernel.py's record of one forward: the call model's own values, the
nftables values made from them when asked, the key as the kernel holds it."""

from __future__ import annotations

from relayd.calls.model import Endpoint as ModelEndpoint
from relayd.ipc import socket_key
from relayd.nft import Endpoint, Forward, ForwardKey, NftError
from relayd.nft.elements import decode_key, encode_key
from relayd.plane.kernel import Installed, KernelPath
from relayd.plane.offload import KernelLeg

CALLER, CALLEE = ModelEndpoint("192.0.2.10", 6000), ModelEndpoint("198.51.100.20", 7000)
RELAY_A, RELAY_B = ModelEndpoint("203.0.113.1", 30000), ModelEndpoint("203.0.113.1", 30002)
LEG = KernelLeg(socket_key("203.0.113.1", 30000), CALLER, RELAY_A, RELAY_B, CALLEE)


def test_a_record_holds_the_models_values_and_makes_the_nft_ones() -> None:
    record = Installed.of(LEG)
    # no copies: the stream's endpoints, the relay socket's own string and int
    assert record.source is CALLER and record.dest is CALLEE
    assert record.relay_address is RELAY_A.address and record.relay_port is RELAY_A.port
    assert record.out_address is RELAY_B.address and record.out_port is RELAY_B.port
    assert record.forward == Forward(
        Endpoint("192.0.2.10", 6000),
        Endpoint("203.0.113.1", 30000),
        Endpoint("203.0.113.1", 30002),
        Endpoint("198.51.100.20", 7000),
    )
    assert record.key == record.forward.key
    assert record.wire == encode_key(record.key)
    assert decode_key(record.wire) == ForwardKey(
        Endpoint("192.0.2.10", 6000), Endpoint("203.0.113.1", 30000)
    )
    assert record.socket == LEG.socket == "203.0.113.1 30000"


def test_records_are_the_same_forward_whatever_they_counted() -> None:
    one, other = Installed.of(LEG), Installed.of(LEG)
    other.packets, other.bytes = 5, 1000
    assert one.same(other)
    moved = KernelLeg(LEG.socket, CALLER, RELAY_A, RELAY_B, ModelEndpoint("198.51.100.20", 7002))
    assert not one.same(Installed.of(moved))
    elsewhere = KernelLeg(LEG.socket, CALLER, RELAY_A, RELAY_A, CALLEE)
    assert not one.same(Installed.of(elsewhere))


def test_a_forward_already_in_the_table_keeps_its_record_and_its_counts() -> None:
    installed: list[list[Forward]] = []
    path = KernelPath(0, 0)
    path.forwarder.install = installed.append  # type: ignore[method-assign,assignment]
    path.forwarder.remove = lambda keys: None  # type: ignore[method-assign]
    path.enabled = True
    assert path.sync("c1", [LEG]) == {LEG.socket}
    [record] = path.installed["c1"]
    record.packets = 9
    assert path.sync("c1", [LEG]) == {LEG.socket}
    assert path.installed["c1"] == (record,) and record.packets == 9
    assert len(installed) == 1  # nothing installed again


def test_a_failure_names_the_calls_that_had_forwards() -> None:
    """``installed``'s keys are the calls in the kernel (the hand-over keeps no set of its
    own); when nftables fails they move to ``dropped``, whose streams the hand-over gives
    back to the workers."""
    path = KernelPath(0, 0)
    path.forwarder.install = lambda forwards: None  # type: ignore[method-assign]
    path.enabled = True
    path.sync("c1", [LEG])
    other = KernelLeg(socket_key("203.0.113.1", 30004), CALLER, RELAY_B, RELAY_A, CALLEE)
    path.sync("c2", [other])
    assert list(path.installed) == ["c1", "c2"] and path.dropped == []

    def fails(keys: object) -> None:
        raise NftError("gone")

    path.forwarder.remove = fails  # type: ignore[method-assign]
    assert path.drop("c2")  # taken out of the map first, then nftables fails
    assert not path.enabled and path.installed == {} and path.dropped == ["c1"]
