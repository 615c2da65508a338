"""Steering each ng datagram to its call's shard in the kernel (a classic BPF program).

Every shard's socket on the ng address is one of a ``SO_REUSEPORT`` group, and without
more the kernel picks one by the hash of the client's address: a call's request reaches
its owner only one time in N, the others pass through a second shard first
(:mod:`relayd.shards.mesh`), which costs both shards a wake-up and a copy. A program
attached to the group (``SO_ATTACH_REUSEPORT_CBPF``) picks the socket instead: the
kernel runs it on every datagram for the group, it returns the index of the socket in
the group (the order the sockets joined it in), and an index past the last socket (as
:data:`FALLBACK`) leaves the choice to the hash, as before.

The program reads the call-id as :mod:`relayd.shards.route` does not: classic BPF has no
loops, so it looks for the bytes ``7:call-id`` in the last :data:`WINDOW` bytes of the
datagram (Kamailio and OpenSIPS put the SDP first and the call-id near the end), from
the end backwards, and takes the string after it when it has a one- or two-digit length
of at most :data:`LONGEST` bytes; then the CRC-32 of it, modulo the number of shards,
as :func:`relayd.shards.route.owner` computes it, and the group index of that shard.
Anything else falls back to the hash. It is a guess, never a decision: every shard still
routes what it receives (:func:`relayd.shards.route.where`) and passes on what is not
its own, so a datagram the program gets wrong (a call-id spelled otherwise, a key that
only looks like it) costs what it costs without the program, and nothing more.
"""

from __future__ import annotations

import ctypes
import socket
import struct
from collections.abc import Sequence

__all__ = ["FALLBACK", "LONGEST", "WINDOW", "Group", "attach", "program"]

WINDOW = 208
"""Bytes at the end of a datagram searched for the call-id key."""
LONGEST = 48
"""The longest call-id the program hashes (each byte costs 48 instructions of 4096)."""
FALLBACK = 0xFFFFFFFF
"""What the program returns when it finds no call-id: the kernel's hash chooses."""

SO_ATTACH_REUSEPORT_CBPF = getattr(socket, "SO_ATTACH_REUSEPORT_CBPF", 51)

_KEY = b"7:call-id"
_POLY = 0xEDB88320  # CRC-32 (zlib's), bit-reflected

# classic BPF (linux/filter.h): instruction classes, sizes, modes, operations
_LD, _LDX, _ST, _ALU, _JMP, _RET, _MISC = 0x00, 0x01, 0x02, 0x04, 0x05, 0x06, 0x07
_W, _H, _B = 0x00, 0x08, 0x10
_SIZES = {4: _W, 2: _H, 1: _B}
_IMM, _ABS, _IND, _MEM, _LEN = 0x00, 0x20, 0x40, 0x60, 0x80
_ADD, _SUB, _MUL, _RSH, _MOD, _XOR = 0x00, 0x10, 0x20, 0x70, 0x90, 0xA0
_JA, _JEQ, _JGT, _JGE, _JSET = 0x00, 0x10, 0x20, 0x30, 0x40
_K, _X = 0x00, 0x08
_TAX = 0x00

# scratch memory: the searched length, the key's offset, the call-id's length and offset,
# the CRC so far
_LIMIT, _AT, _SIZE, _START, _CRC = 0, 1, 2, 3, 4

Instruction = tuple[int, int, int, int]  # code, jump if true, jump if false, constant

# the key's bytes around an aligned word that holds its bytes from ``at`` on, by ``at``:
# (offset from the word, how many, from which of the key's bytes)
_AROUND = {
    0: [(4, 4, 4), (8, 1, 8)],
    1: [(-1, 1, 0), (4, 4, 5)],
    2: [(-2, 2, 0), (4, 2, 6)],  # its last byte: read with the call-id's length
    3: [(-3, 4, 0), (4, 2, 7)],
}


def _key(at: int, size: int) -> int:
    return int.from_bytes(_KEY[at : at + size], "big")


class _Assembler:
    """Instructions with named targets: conditional jumps go at most 255 ahead, ``ja`` any
    distance forward (classic BPF jumps only forward)."""

    def __init__(self) -> None:
        self.code: list[tuple[int, str | None, str | None, int | str]] = []
        self.labels: dict[str, int] = {}

    def label(self, name: str) -> None:
        self.labels[name] = len(self.code)

    def op(self, code: int, k: int = 0) -> None:
        self.code.append((code, None, None, k))

    def jump(self, code: int, k: int, true: str | None = None, false: str | None = None) -> None:
        self.code.append((code, true, false, k))

    def require(self, code: int, k: int, holds: bool = True) -> None:
        """Go on when the test does (or does not: ``holds`` False), else fall back."""
        self.code.append((code, "+1" if holds else None, None if holds else "+1", k))
        self.op(_RET | _K, FALLBACK)

    def ja(self, target: str) -> None:
        self.code.append((_JMP | _JA, None, None, target))

    def assemble(self) -> list[Instruction]:
        out: list[Instruction] = []
        labels = self.labels
        for at, (code, true, false, k) in enumerate(self.code):
            jt = 0 if true is None else 1 if true == "+1" else labels[true] - at - 1
            jf = 0 if false is None else 1 if false == "+1" else labels[false] - at - 1
            if isinstance(k, str):
                k = labels[k] - at - 1
            if not (0 <= jt <= 255 and 0 <= jf <= 255 and k >= 0):
                raise ValueError(f"jump out of reach at {at}")
            out.append((code, jt, jf, k))
        return out


def program(table: Sequence[int | None]) -> list[Instruction]:
    """The program for ``len(table)`` shards, ``table[i]`` being shard ``i``'s index in the
    group (None: not in it, its calls fall back to the hash)."""
    asm = _Assembler()
    op, jump = asm.op, asm.jump
    # X: where the searched window starts; M[LIMIT]: its length
    op(_LD | _W | _LEN)
    jump(_JMP | _JGE | _K, WINDOW, false="short")
    op(_ALU | _SUB | _K, WINDOW)
    op(_MISC | _TAX)
    op(_LD | _IMM, WINDOW)
    asm.ja("window")
    asm.label("short")
    op(_LDX | _IMM, 0)
    asm.label("window")
    op(_ST, _LIMIT)
    # the key has one aligned word of the window in its first four bytes, holding its
    # bytes from the 1st, 2nd, 3rd or 4th on: each word, last first, against each of those,
    # then the key's other bytes around it (a value after the key may hold some of its
    # bytes: "call-12@host")
    last = (WINDOW - len(_KEY)) // 4 * 4
    for word in range(last, -1, -4):
        following = f"w{word - 4}" if word else "fallback"
        asm.label(f"w{word}")
        op(_LD | _MEM, _LIMIT)
        jump(_JMP | _JGT | _K, word + len(_KEY) - 1, false=following)  # all of it inside
        op(_LD | _W | _IND, word)
        for at in range(4):
            jump(
                _JMP | _JEQ | _K,
                _key(at, 4),
                true=f"w{word}k{at}",
                false=following if at == 3 else None,
            )
        for at in range(4):
            asm.label(f"w{word}k{at}")
            begins = word - at
            if begins < 0:  # would start before the window
                asm.ja(following)
                continue
            for offset, size, first in _AROUND[at]:
                op(_LD | _SIZES[size] | _IND, word + offset)
                jump(_JMP | _JEQ | _K, _key(first, size), false=following)
            op(_LD | _IMM, begins)
            asm.ja("found")
    asm.label("fallback")
    op(_RET | _K, FALLBACK)

    # A: the key's offset in the window; all of it there, and the string after it
    asm.label("found")
    op(_ALU | _ADD | _X)
    op(_ST, _AT)
    op(_ALU | _ADD | _K, len(_KEY) + 3)  # the key, a digit, ':' and one byte at least
    op(_ST, _START)
    op(_LDX | _MEM, _START)
    op(_LD | _W | _LEN)
    asm.require(_JMP | _JGE | _X, 0)
    op(_LDX | _MEM, _AT)
    op(_LD | _W | _IND, 0)
    asm.require(_JMP | _JEQ | _K, _key(0, 4))
    op(_LD | _W | _IND, 4)
    asm.require(_JMP | _JEQ | _K, _key(4, 4))
    op(_LD | _B | _IND, 8)
    asm.require(_JMP | _JEQ | _K, _KEY[8])
    op(_LD | _B | _IND, len(_KEY) + 1)
    jump(_JMP | _JEQ | _K, ord(":"), true="one")
    op(_LD | _B | _IND, len(_KEY) + 2)
    asm.require(_JMP | _JEQ | _K, ord(":"))
    op(_LD | _B | _IND, len(_KEY))
    op(_ALU | _SUB | _K, ord("0"))
    op(_ALU | _MUL | _K, 10)
    op(_ST, _SIZE)
    op(_LD | _B | _IND, len(_KEY) + 1)
    op(_ALU | _SUB | _K, ord("0"))
    op(_LDX | _MEM, _SIZE)
    op(_ALU | _ADD | _X)
    op(_ST, _SIZE)
    op(_LD | _IMM, len(_KEY) + 3)
    asm.ja("start")
    asm.label("one")
    op(_LD | _B | _IND, len(_KEY))
    op(_ALU | _SUB | _K, ord("0"))
    op(_ST, _SIZE)
    op(_LD | _IMM, len(_KEY) + 2)
    asm.label("start")
    op(_LDX | _MEM, _AT)
    op(_ALU | _ADD | _X)
    op(_ST, _START)
    # a length that is no number reads as a large one: too long, like a long call-id
    op(_LD | _MEM, _SIZE)
    asm.require(_JMP | _JEQ | _K, 0, holds=False)  # an empty call-id: none (route.where)
    asm.require(_JMP | _JGT | _K, LONGEST, holds=False)
    op(_LDX | _MEM, _START)
    op(_ALU | _ADD | _X)
    op(_MISC | _TAX)
    op(_LD | _W | _LEN)
    asm.require(_JMP | _JGE | _X, 0)

    # CRC-32 of the call-id, a bit at a time
    op(_LD | _IMM, 0xFFFFFFFF)
    for at in range(LONGEST):
        op(_ST, _CRC)
        op(_LD | _MEM, _SIZE)
        jump(_JMP | _JEQ | _K, at, false=f"b{at}")
        asm.ja("done")
        asm.label(f"b{at}")
        op(_LDX | _MEM, _START)
        op(_LD | _B | _IND, at)
        op(_LDX | _MEM, _CRC)
        op(_ALU | _XOR | _X)
        for bit in range(8):
            jump(_JMP | _JSET | _K, 1, false=f"b{at}z{bit}")
            op(_ALU | _RSH | _K, 1)
            op(_ALU | _XOR | _K, _POLY)
            asm.ja(f"b{at}n{bit}")
            asm.label(f"b{at}z{bit}")
            op(_ALU | _RSH | _K, 1)
            asm.label(f"b{at}n{bit}")
    op(_ST, _CRC)
    asm.label("done")
    op(_LD | _MEM, _CRC)
    op(_ALU | _XOR | _K, 0xFFFFFFFF)
    op(_ALU | _MOD | _K, len(table))
    for shard, index in enumerate(table):
        if index is not None:
            jump(_JMP | _JEQ | _K, shard, false=f"not{shard}")
            op(_RET | _K, index)
            asm.label(f"not{shard}")
    op(_RET | _K, FALLBACK)
    return asm.assemble()


def attach(sock: socket.socket, instructions: Sequence[Instruction]) -> None:
    """Make ``instructions`` the program of the ``SO_REUSEPORT`` group ``sock`` is in (it
    replaces the group's program, whoever attached it)."""
    code = b"".join(struct.pack("=HBBI", *insn) for insn in instructions)
    buffer = ctypes.create_string_buffer(code, len(code))
    fprog = struct.pack("HP", len(instructions), ctypes.addressof(buffer))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)


class Group:
    """The order of the shards' sockets in the kernel's ``SO_REUSEPORT`` group, as the front
    keeps it: it tells one shard at a time to join, so a socket joins at the end; the socket
    of a shard that dies leaves, and the last takes its place (the kernel's own bookkeeping,
    net/core/sock_reuseport.c). Two shards dying at once may leave in another order than
    the front hears of it: then the program guesses wrong, and costs what no program costs,
    until the next join or death puts it right."""

    def __init__(self, shards: int) -> None:
        self.shards = shards
        self.order: list[int] = []  # shard indices by group index

    def joined(self, shard: int) -> None:
        self.order.append(shard)

    def left(self, shard: int) -> bool:
        """Shard ``shard``'s socket left; False when it was not in the group."""
        if shard not in self.order:
            return False
        at = self.order.index(shard)
        last = self.order.pop()
        if at < len(self.order):
            self.order[at] = last
        return True

    def table(self) -> list[int | None]:
        """Each shard's index in the group, for :func:`program`."""
        return [self.order.index(s) if s in self.order else None for s in range(self.shards)]
