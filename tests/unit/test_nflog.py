"""nfnetlink_log: decoding the kernel's copies, the configuration sent, and the reader's
counting, on bytes (two batches captured from Linux 6.18, and messages built here)."""

from __future__ import annotations

import asyncio
import errno
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from relayd.nft import nflog
from relayd.nft.elements import encode_key
from relayd.nft.netlink import NLMSG_DONE, NLMSG_ERROR, attr, message, nfgenmsg
from relayd.nft.nflog import (
    Copy,
    NflogError,
    NflogReader,
    config_request,
    key_addresses,
    parse_copies,
    udp_copies,
)
from relayd.nft.ruleset import Endpoint, ForwardKey
from tests.support.nflog import key_of

DATA = Path(__file__).parents[1] / "data" / "nft"
RTP = bytes.fromhex("80000000000000a012345678") + b"\xff" * 20  # 12-byte header, 20 bytes


def _captured(name: str) -> bytes:
    return bytes.fromhex((DATA / name).read_text().strip())


def _ipv4_udp(src: bytes, sport: int, dst: bytes, dport: int, payload: bytes) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28 + len(payload), 0, 0, 64, 17, 0, src, dst)
    return header + struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def _packet_message(
    packet: bytes, *, seq: int | None = None, family: int = socket.AF_INET, group: int = 5
) -> bytes:
    """One NFULNL_MSG_PACKET as the kernel lays it out (the attributes relayd reads)."""
    body = nfgenmsg(family, group)
    body += attr(nflog.NFULA_PACKET_HDR, struct.pack("!HBB", 0x0800, 0, 0))
    body += attr(nflog.NFULA_PREFIX, b"relayd\0")
    body += attr(nflog.NFULA_IFINDEX_INDEV, struct.pack("!I", 2))
    body += attr(nflog.NFULA_TIMESTAMP, struct.pack("!QQ", 1_796_553_847, 354_236))
    body += attr(nflog.NFULA_PAYLOAD, packet)
    if seq is not None:
        body += attr(nflog.NFULA_SEQ, struct.pack("!I", seq))
    return message(nflog.PACKET, 0, 0, body)


def _batch(*seqs: int) -> bytes:
    """A datagram of copies with these sequence numbers, ended as the kernel ends one."""
    packet = _ipv4_udp(bytes([10, 99, 1, 2]), 35000, bytes([10, 99, 1, 1]), 35100, RTP)
    done = message(NLMSG_DONE, 0, 0, nfgenmsg(socket.AF_UNSPEC, 5))
    return b"".join(_packet_message(packet, seq=s) for s in seqs) + done


def _ack(seq: int, error: int = 0) -> bytes:
    """The kernel's answer to request ``seq``: errno (0: acknowledged), then the request's
    header (its body left out, as with NETLINK_CAP_ACK)."""
    return message(NLMSG_ERROR, 0, seq, struct.pack("=i", -error) + bytes(16))


CALLER = ForwardKey(Endpoint("10.99.1.2", 35000), Endpoint("10.99.1.1", 35100))
CALLER6 = ForwardKey(Endpoint("fd00:99::1:2", 35000), Endpoint("fd00:99::1:1", 35100))


def test_a_captured_ipv4_batch() -> None:
    """Two copies of 60-byte packets and the NLMSG_DONE that ends a batch, as Linux 6.18
    sent them for ``log prefix "relayd" group 5`` in relayd's prerouting_count chain."""
    copies = parse_copies(_captured("nflog-batch4.hex"))
    assert [(c.seq, c.hook, c.family, c.prefix, c.indev) for c in copies] == [
        (0, nflog.NF_INET_PRE_ROUTING, socket.AF_INET, "relayd", 2),
        (1, nflog.NF_INET_PRE_ROUTING, socket.AF_INET, "relayd", 2),
    ]
    assert [c.time_us for c in copies] == [1_796_553_847_354_236, 1_796_553_847_354_329]
    first = copies[0]
    assert len(first.packet) == 60 and not first.truncated
    # before DNAT: from the party to relayd's socket, as the party sent it
    assert key_of(first) == CALLER
    assert first.wire_key() == encode_key(CALLER)
    assert [c.udp_payload() for c in copies] == [RTP, RTP[:3] + b"\x01" + RTP[4:]]


def test_a_captured_ipv6_batch() -> None:
    copies = parse_copies(_captured("nflog-batch6.hex"))
    assert [(c.seq, c.family) for c in copies] == [(2, socket.AF_INET6), (3, socket.AF_INET6)]
    assert {key_of(c) for c in copies} == {CALLER6}
    assert {c.wire_key() for c in copies} == {encode_key(CALLER6)}
    assert copies[1].udp_payload() == RTP[:3] + b"\x01" + RTP[4:]
    assert len(copies[0].packet) == 40 + 8 + len(RTP) and not copies[0].truncated


def test_a_cut_packet_and_one_that_is_not_udp() -> None:
    packet = _ipv4_udp(bytes([10, 0, 0, 1]), 4000, bytes([10, 0, 0, 2]), 30000, RTP)
    (cut,) = parse_copies(_packet_message(packet[:40]))
    assert cut.truncated and cut.udp_payload() == RTP[:12]
    assert key_of(cut) == ForwardKey(Endpoint("10.0.0.1", 4000), Endpoint("10.0.0.2", 30000))
    assert cut.seq is None  # not asked for
    icmp = packet[:9] + bytes([1]) + packet[10:]
    (other,) = parse_copies(_packet_message(icmp))
    assert key_of(other) is None and other.wire_key() is None and other.udp_payload() == b""
    assert Copy(b"", socket.AF_INET, 0).truncated


def test_messages_without_a_payload_and_other_messages_are_skipped() -> None:
    meta_only = message(nflog.PACKET, 0, 0, nfgenmsg(socket.AF_INET, 5) + attr(2, bytes(4)))
    assert parse_copies(meta_only + _ack(1) + _batch()) == []
    assert parse_copies(b"") == []


def test_the_configuration_relayd_sends() -> None:
    """Bind group 5, then whole packets, a 32 KiB batch buffer flushed after 100 ms (10
    hundredths) or at 64 copies, sequence numbers on: big-endian, as the kernel reads."""
    bind = config_request(1, 5, nflog.NFULNL_CFG_CMD_BIND)
    assert bind == bytes.fromhex(
        "1c000000" "0104" "0500" "01000000" "00000000"  # nlmsghdr: CONFIG, REQUEST|ACK, seq 1
        "00000005"  # nfgenmsg: AF_UNSPEC, version 0, group 5
        "0500010001000000"  # NFULA_CFG_CMD: BIND
    )  # fmt: skip
    settings = config_request(
        2, 5, snaplen=65531, nlbufsiz=32768, flush_ms=100, qthreshold=64, flags=1
    )
    assert settings[16:] == bytes.fromhex(
        "00000005"
        "0a000200" "0000fffb" "0200" "0000"  # NFULA_CFG_MODE: range 65531, COPY_PACKET
        "08000300" "00008000"  # NFULA_CFG_NLBUFSIZ
        "08000400" "0000000a"  # NFULA_CFG_TIMEOUT, hundredths of a second
        "08000500" "00000040"  # NFULA_CFG_QTHRESH
        "06000600" "0001" "0000"  # NFULA_CFG_FLAGS: NFULNL_CFG_F_SEQ
    )  # fmt: skip
    # a flush under 10 ms is 10 ms: the kernel's clock ticks in hundredths
    assert config_request(3, 5, flush_ms=1)[-4:] == struct.pack("!I", 1)


@given(st.binary(max_size=600))
def test_any_bytes_decode_without_raising(data: bytes) -> None:
    for copy in parse_copies(data):
        key_of(copy)
        copy.wire_key()
        copy.udp_payload()


@given(st.binary(min_size=0, max_size=120), st.sampled_from([socket.AF_INET, socket.AF_INET6]))
def test_any_payload_in_a_well_formed_message(packet: bytes, family: int) -> None:
    copies = parse_copies(_packet_message(packet, family=family, seq=7))
    if not packet:
        assert copies == []
        return
    (copy,) = copies
    assert copy.packet == packet and copy.seq == 7
    wire = copy.wire_key()
    assert wire is None or len(wire) == (16 if family == socket.AF_INET else 40)
    key = key_of(copy)
    assert key is None or encode_key(key) == wire
    copy.udp_payload()
    _ = copy.truncated


# -- the reader, over a datagram socket pair standing for the netlink socket ---------------


@pytest.fixture
def kernel(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """The kernel's end: what is written to it, the reader receives; what the reader sends
    (its configuration) can be read from it."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    ours.setblocking(False)

    def fake(timeout: float, rcvbuf: int = 0, *, force: bool = False) -> socket.socket:
        assert timeout == 0.0 and force and rcvbuf == 1 << 22
        return ours

    monkeypatch.setattr(nflog, "netfilter_socket", fake)
    yield theirs
    theirs.close()
    ours.close()


def test_open_binds_then_configures_and_keeps_early_copies(kernel: socket.socket) -> None:
    kernel.send(_ack(1))
    kernel.send(_batch(0))  # a copy before the second acknowledgement
    kernel.send(_ack(2))
    reader = NflogReader(5)
    reader.open()
    assert kernel.recv(4096) == config_request(1, 5, nflog.NFULNL_CFG_CMD_BIND)
    assert kernel.recv(4096) == config_request(
        2, 5, snaplen=65531, nlbufsiz=1 << 15, flush_ms=100, qthreshold=64, flags=1
    )
    kernel.send(_batch(1, 2))
    assert [c.seq for c in reader.read(3, timeout=1.0)] == [0, 1, 2]
    assert (reader.received, reader.lost, reader.overruns) == (3, 0, 0)
    reader.close()
    assert kernel.recv(4096) == config_request(3, 5, nflog.NFULNL_CFG_CMD_UNBIND)
    with pytest.raises(NflogError, match="not open"):
        reader.drain()


def test_gaps_in_the_sequence_are_counted_as_lost(kernel: socket.socket) -> None:
    kernel.send(_ack(1))
    kernel.send(_ack(2))
    with NflogReader(5) as reader:
        kernel.send(_batch(2, 3))  # 0 and 1 never came
        kernel.send(_batch(4))
        kernel.send(_batch(9, 10))
        assert [c.seq for c in reader.read(5, timeout=1.0)] == [2, 3, 4, 9, 10]
        assert (reader.received, reader.lost) == (5, 2 + 4)
        kernel.send(_batch(11))
        assert reader.drain() != [] and reader.lost == 6
        assert reader.drain() == []  # nothing waiting: no blocking


def test_the_sequence_wraps(kernel: socket.socket) -> None:
    kernel.send(_ack(1))
    kernel.send(_ack(2))
    with NflogReader(5) as reader:
        reader._expected = 0xFFFFFFFE
        kernel.send(_batch(0xFFFFFFFE, 0xFFFFFFFF, 0, 2))
        assert len(reader.read(4, timeout=1.0)) == 4
        assert reader.lost == 1


def test_a_group_bound_by_another_socket(kernel: socket.socket) -> None:
    kernel.send(_ack(1, errno.EPERM))
    reader = NflogReader(5)
    with pytest.raises(NflogError, match="group 5: bound by another socket"):
        reader.open()
    with pytest.raises(NflogError, match="not open"):
        reader.fileno()


def test_a_refused_setting_closes_the_reader(kernel: socket.socket) -> None:
    kernel.send(_ack(1))
    kernel.send(_ack(2, errno.EINVAL))
    reader = NflogReader(5)
    with pytest.raises(NflogError, match="Invalid argument"):
        reader.open()
    with pytest.raises(NflogError, match="not open"):
        reader.drain()


def test_copies_reach_an_event_loop(kernel: socket.socket) -> None:
    kernel.send(_ack(1))
    kernel.send(_ack(2))
    reader = NflogReader(5)
    reader.open()

    async def main() -> list[int]:
        got: list[int] = []
        done = asyncio.Event()

        def deliver(copies: list[Copy]) -> None:
            got.extend(c.seq or 0 for c in copies)
            if len(got) >= 3:
                done.set()

        reader.attach(asyncio.get_running_loop(), deliver)
        kernel.send(_batch(0, 1))
        kernel.send(_batch(2))
        await asyncio.wait_for(done.wait(), 2.0)
        reader.close()  # stops watching too
        return got

    assert asyncio.run(main()) == [0, 1, 2]


def test_settings_are_validated() -> None:
    for kwargs in (
        {"group": 65536},
        {"group": -1},
        {"group": 1, "snaplen": 0},
        {"group": 1, "snaplen": 65532},
        {"group": 1, "qthreshold": 0},
        {"group": 1, "flush_ms": 0},
        {"group": 1, "nlbufsiz": 1024},
        {"group": 1, "nlbufsiz": 1 << 16, "rcvbuf": 1 << 15},
    ):
        with pytest.raises(ValueError):
            NflogReader(**kwargs)


# -- the workers' way: udp_copies, key_addresses, drain_udp ---------------------------------


@pytest.mark.parametrize("name", ["nflog-batch4.hex", "nflog-batch6.hex"])
def test_udp_copies_give_what_the_copies_do(name: str) -> None:
    data = _captured(name)
    expected = [(c.wire_key(), c.time_us, c.udp_payload(), c.seq) for c in parse_copies(data)]
    assert list(udp_copies(data)) == expected
    for copy in parse_copies(data):
        wire = copy.wire_key()
        assert wire is not None and key_addresses(wire) == copy.addresses()


@given(st.binary(min_size=0, max_size=120), st.sampled_from([socket.AF_INET, socket.AF_INET6]))
# found by Hypothesis: an IP version of 0 with UDP's protocol number, and a header length of
# 0 (the two readers once disagreed on whether that is UDP)
@example(bytes.fromhex("0500") + bytes(7) + b"\x11" + bytes(18), socket.AF_INET)
@example(bytes.fromhex("4000") + bytes(7) + b"\x11" + bytes(18), socket.AF_INET)
def test_udp_copies_on_any_payload(packet: bytes, family: int) -> None:
    data = _packet_message(packet, family=family, seq=7)
    expected = [
        (c.wire_key(), c.time_us, c.udp_payload() if c.wire_key() else b"", c.seq)
        for c in parse_copies(data)
    ]
    assert list(udp_copies(data)) == expected


@given(st.binary(max_size=600))
def test_udp_copies_of_any_bytes_do_not_raise(data: bytes) -> None:
    for wire, _time_us, _payload, _seq in udp_copies(data):
        if wire is not None:
            key_addresses(wire)


def test_drain_udp_counts_as_drain_does(kernel: socket.socket) -> None:
    kernel.send(_ack(1))
    kernel.send(_ack(2))
    with NflogReader(5) as reader:
        kernel.send(_batch(2, 3))  # 0 and 1 never came
        kernel.send(_batch(9))
        deadline = time.monotonic() + 1.0
        found: list[tuple[bytes, int | None, bytes]] = []
        while len(found) < 3 and time.monotonic() < deadline:
            found += reader.drain_udp()
        assert len(found) == 3
        assert (reader.received, reader.lost) == (3, 2 + 5)
        assert reader.drain_udp() == []
