"""How relayd/plane/kernel.py reads the kernel's counter elements: per call (its forwards
only), or all of them in kernel-buffer chunks with the event loop free in between, never
counting a packet twice when both happen at once. The forwarder is a stand-in holding
elements as the kernel reports them (tests/netns/test_nft_forward.py reads real ones)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from relayd.calls.model import Endpoint as ModelEndpoint
from relayd.nft import Endpoint, Forward, ForwardKey
from relayd.nft.elements import ElementCount, decode_key, encode_key
from relayd.nft.ruleset import ACTIVITY_TIMEOUT
from relayd.plane.kernel import KernelPath, Traffic
from relayd.plane.offload import KernelLeg

DAY_MS = ACTIVITY_TIMEOUT * 1000


@dataclass
class Elements:
    """The counter sets as the kernel would report them, and what was asked of them."""

    counts: dict[ForwardKey, ElementCount] = field(default_factory=dict)
    chunk: int = 2  # elements per kernel buffer in a dump
    asked: list[list[ForwardKey]] = field(default_factory=list)

    def install(self, forwards: Iterable[Forward]) -> None:
        for forward in forwards:
            self.counts.setdefault(forward.key, ElementCount(0, 0, DAY_MS))

    def remove(self, keys: Iterable[ForwardKey]) -> None:
        for key in keys:
            self.counts.pop(key, None)

    def counts_of(self, wires: Iterable[bytes]) -> dict[bytes, ElementCount]:
        wanted = {decode_key(wire): wire for wire in wires}
        self.asked.append(list(wanted))
        return {wire: self.counts[k] for k, wire in wanted.items() if k in self.counts}

    def count_chunks(self) -> Iterator[list[tuple[bytes, ElementCount]]]:
        # what the dump sends was read when it began (a kernel buffer can be older than a
        # lookup made while the dump goes on)
        items = [(encode_key(k), c) for k, c in self.counts.items()]
        for start in range(0, len(items), self.chunk):
            yield items[start : start + self.chunk]


def leg(n: int) -> KernelLeg:
    def ep(address: str, port: int) -> ModelEndpoint:
        return ModelEndpoint(address, port)

    return KernelLeg(
        f"203.0.113.1 {30000 + 2 * n}",
        ep("198.51.100.7", 4000 + 2 * n),
        ep("203.0.113.1", 30000 + 2 * n),
        ep("203.0.113.1", 31000 + 2 * n),
        ep("198.51.100.8", 6000 + 2 * n),
    )


def kernel_with(calls: int) -> tuple[KernelPath, Elements, dict[str, KernelLeg]]:
    kernel = KernelPath(0, 0)
    elements = Elements()
    forwarder = kernel.forwarder
    forwarder.install = elements.install  # type: ignore[method-assign]
    forwarder.remove = elements.remove  # type: ignore[method-assign]
    forwarder.element_counts = elements.counts_of  # type: ignore[method-assign]
    forwarder.count_chunks = elements.count_chunks  # type: ignore[method-assign]
    forwarder.forget_flows = lambda forwards: None  # type: ignore[method-assign]
    kernel.enabled = True
    legs = {}
    for n in range(calls):
        legs[f"c{n}"] = leg(n)
        kernel.sync(f"c{n}", [legs[f"c{n}"]])
    return kernel, elements, legs


def key_of(one: KernelLeg) -> ForwardKey:
    return ForwardKey(
        Endpoint(one.source.address, one.source.port), Endpoint(one.relay.address, one.relay.port)
    )


def test_a_call_read_asks_for_its_forwards_only_and_says_when_the_last_packet_came() -> None:
    kernel, elements, legs = kernel_with(3)
    elements.counts[key_of(legs["c1"])] = ElementCount(10, 10 * 200, DAY_MS - 2500)
    assert kernel.read(["c1"]) == {legs["c1"].socket: Traffic(10, 10 * 172, 2.5)}
    assert elements.asked == [[key_of(legs["c1"])]]
    assert kernel.read(["c1"]) == {}  # nothing new since
    elements.counts[key_of(legs["c1"])] = ElementCount(12, 12 * 200, DAY_MS - 100)
    assert kernel.read(["c1"]) == {legs["c1"].socket: Traffic(2, 2 * 172, 0.1)}


def test_an_element_that_expired_and_came_back_counts_from_zero() -> None:
    kernel, elements, legs = kernel_with(1)
    key = key_of(legs["c0"])
    elements.counts[key] = ElementCount(500, 500 * 200, DAY_MS)
    kernel.read(["c0"])
    elements.counts[key] = ElementCount(3, 3 * 200, DAY_MS)  # a day silent, then 3 packets
    assert kernel.read(["c0"]) == {legs["c0"].socket: Traffic(3, 3 * 172, 0.0)}


def test_reading_everything_lets_the_loop_run_between_kernel_buffers() -> None:
    kernel, elements, legs = kernel_with(6)
    for n, one in enumerate(legs.values()):
        elements.counts[key_of(one)] = ElementCount(n + 1, (n + 1) * 200, DAY_MS)
    turns = 0

    async def meanwhile() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    async def scrape() -> dict[str, Traffic]:
        other = asyncio.ensure_future(meanwhile())
        try:
            return await kernel.read_all()
        finally:
            other.cancel()

    result = asyncio.run(scrape())
    assert {s: t.packets for s, t in result.items()} == {
        one.socket: n + 1 for n, one in enumerate(legs.values())
    }
    assert turns >= 3  # six elements in buffers of two: the loop ran after each


def test_a_call_read_during_a_full_read_is_not_counted_twice() -> None:
    kernel, elements, legs = kernel_with(4)
    for one in legs.values():
        elements.counts[key_of(one)] = ElementCount(5, 1000, DAY_MS)
    last = legs["c3"]  # in the dump's last buffer
    folded: dict[str, int] = {}

    async def both() -> dict[str, Traffic]:
        dump = asyncio.ensure_future(kernel.read_all())
        await asyncio.sleep(0)  # the dump is under way, past its first buffer
        # three more packets, which the query sees and the dump's older buffer does not
        elements.counts[key_of(last)] = ElementCount(8, 1600, DAY_MS)
        for socket, traffic in kernel.read(["c3"]).items():  # a query meanwhile
            folded[socket] = folded.get(socket, 0) + traffic.packets
        return await dump

    for socket, traffic in asyncio.run(both()).items():
        folded[socket] = folded.get(socket, 0) + traffic.packets
    assert folded == {**{one.socket: 5 for one in legs.values()}, last.socket: 8}


def test_a_full_read_finds_each_forward_by_its_whole_key_when_relay_ports_are_shared() -> None:
    """The records are found by the relay port in a dumped key; two sources towards one
    socket (and the same port on another address) share a port, and an element relayd no
    longer holds (another source, a removed forward) counts for no one."""
    kernel, elements, legs = kernel_with(1)
    kernel.ipv6 = True
    one = legs["c0"]
    second = KernelLeg(
        one.socket, ModelEndpoint("198.51.100.9", 4100), one.relay, one.out, one.dest
    )
    v6 = KernelLeg(
        f"2001:db8::1 {one.relay.port}",
        ModelEndpoint("2001:db8::7", 4000),
        ModelEndpoint("2001:db8::1", one.relay.port),
        ModelEndpoint("2001:db8::1", 31000),
        ModelEndpoint("2001:db8::8", 6000),
    )
    kernel.sync("c0", [one, second])
    kernel.sync("c1", [v6])
    stranger = ForwardKey(Endpoint("198.51.100.66", 4000), Endpoint("203.0.113.1", one.relay.port))
    for n, (key, packets) in enumerate(
        [(key_of(one), 1), (key_of(second), 2), (key_of(v6), 4), (stranger, 8)]
    ):
        elements.counts[key] = ElementCount(packets, packets * 200, DAY_MS - n)
    result = asyncio.run(kernel.read_all())
    assert {s: t.packets for s, t in result.items()} == {one.socket: 3, v6.socket: 4}
    kernel.sync("c0", [second])  # the first source's forward leaves: the other stays found
    elements.counts[key_of(second)] = ElementCount(7, 7 * 200, DAY_MS)
    elements.counts[key_of(v6)] = ElementCount(5, 5 * 200, DAY_MS)
    result = asyncio.run(kernel.read_all())
    assert {s: t.packets for s, t in result.items()} == {one.socket: 5, v6.socket: 1}
    kernel.drop("c0")
    kernel.drop("c1")
    assert asyncio.run(kernel.read_all()) == {}
