"""Bencode codec for ng messages.

Lenient where Kamailio and OpenSIPS need it: dictionary keys are accepted in
any order (their rtpengine modules add ``sdp`` first), and the encoder keeps
insertion order, as rtpengine itself does. Strings are decoded to ``str`` with
``surrogateescape`` so that SDP bodies that are not valid UTF-8 survive a
round trip byte for byte.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping

__all__ = ["BencodeError", "Encoded", "Value", "decode", "decode_prefix", "encode", "string"]

Value = int | str | bytes | list["Value"] | dict[str, "Value"]

_MAX_DEPTH = 32

# BEP 3 canonical forms, as rtpengine's own validator wants them: no leading
# zeros and no "-0" (rtpengine rejects "i01e" and "01:a" on every path and
# "i-0e" on TCP streams; Kamailio and OpenSIPS never send them).
_INT = re.compile(rb"0|-?[1-9][0-9]*")
_INT_PREFIX = re.compile(rb"-?(?:[1-9][0-9]*)?|0")
_LENGTH = re.compile(rb"0|[1-9][0-9]*")


class BencodeError(ValueError):
    """The data is not a well-formed bencode value."""


def encode(value: object) -> bytes:
    """Encode ``value`` (int, str, bytes, list, tuple, dict with str keys).

    Built as text and encoded once at the end: cheaper than encoding each of the
    hundreds of values of a query tree on its own. Length prefixes count bytes; a reply is
    nearly always ASCII, where bytes are characters, so strings are measured with ``len``
    and the whole is checked once at the end. Text that is not ASCII is built again with
    each string measured in UTF-8 (``surrogateescape``: a body that was not UTF-8 goes back
    out as the bytes it came as).
    """
    out: list[str] = []
    _encode(value, out, len)
    text = "".join(out)
    if text.isascii():
        return text.encode("ascii")
    out.clear()
    _encode(value, out, _size)
    return "".join(out).encode("utf-8", "surrogateescape")


def _size(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogateescape"))


def string(text: str) -> str:
    """``text`` as a bencode string, for an :class:`Encoded` value: its length in bytes (UTF-8,
    ``surrogateescape``), a colon, and the text itself."""
    return f"{_size(text)}:{text}"


class Encoded(Mapping[str, Value]):
    """A dictionary written as bencode already, which :func:`encode` copies as it is.

    ``text`` is what :func:`encode` would write for the dictionary, before its last step
    (length prefixes in bytes, the text not yet encoded to UTF-8; :func:`string` writes
    each string so). A large reply part written straight as text costs a fraction of
    building its dictionaries and walking them (the statistics tree of a ``delete``:
    relayd/calls/calltree.py). Read as a mapping (a JSON reply, a test), it is decoded
    once, on the first read.
    """

    __slots__ = ("_value", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self._value: dict[str, Value] | None = None

    def _decoded(self) -> dict[str, Value]:
        if self._value is None:
            value = decode(self.text.encode("utf-8", "surrogateescape"))
            if not isinstance(value, dict):
                raise TypeError("bencode.Encoded holds a dictionary")
            self._value = value
        return self._value

    def __getitem__(self, key: str) -> Value:
        return self._decoded()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._decoded())

    def __len__(self) -> int:
        return len(self._decoded())

    def __repr__(self) -> str:
        return f"Encoded({self._decoded()!r})"


Size = Callable[[str], int]

# What formatting an integer would make, made once: a string's length prefix ("12:") and a
# small integer ("i0e": the zero counters of a query tree). A lookup costs a quarter of
# the formatting, and a delete's reply has a hundred of them.
_PREFIXES = tuple(f"{n}:" for n in range(1024))
_INTEGERS = tuple(f"i{n}e" for n in range(1024))

# Dictionary keys repeat in every reply ("result", "sdp", "tags"…): each is written
# once. Bounded, since some keys are per call (the tags of a query tree).
_KEYS: dict[str, str] = {}
_KEYS_LIMIT = 512


def _key(key: object) -> str:
    encoded = string(key if type(key) is str else str(key))
    if len(_KEYS) < _KEYS_LIMIT and type(key) is str:
        _KEYS[key] = encoded
    return encoded


def _encode(value: object, out: list[str], size: Size) -> None:
    # Exact type checks first, and the values of a dict or list handled in its own loop:
    # replies are mostly str/int/dict/list, and a query tree has hundreds of them.
    kind = type(value)
    if kind is dict:
        _encode_dict(value, out, size)  # type: ignore[arg-type]
    elif kind is list or kind is tuple:
        _encode_list(value, out, size)  # type: ignore[arg-type]
    elif kind is str:
        length = size(value)  # type: ignore[arg-type]
        out.append(_PREFIXES[length] if length < 1024 else f"{length}:")
        out.append(value)  # type: ignore[arg-type]
    elif kind is int:
        out.append(_INTEGERS[value] if 0 <= value < 1024 else f"i{value}e")  # type: ignore[call-overload, operator]
    else:
        _encode_other(value, out, size)


def _encode_dict(value: dict[object, object], out: list[str], size: Size) -> None:
    append = out.append
    append("d")
    for key, item in value.items():
        append(_KEYS.get(key) or _key(key))  # type: ignore[call-overload]
        kind = type(item)
        if kind is str:
            length = size(item)  # type: ignore[arg-type]
            append(_PREFIXES[length] if length < 1024 else f"{length}:")
            append(item)  # type: ignore[arg-type]
        elif kind is int:
            append(_INTEGERS[item] if 0 <= item < 1024 else f"i{item}e")  # type: ignore[call-overload, operator]
        elif kind is dict:
            _encode_dict(item, out, size)  # type: ignore[arg-type]
        elif kind is list:
            _encode_list(item, out, size)  # type: ignore[arg-type]
        else:
            _encode(item, out, size)
    append("e")


def _encode_list(value: list[object] | tuple[object, ...], out: list[str], size: Size) -> None:
    append = out.append
    append("l")
    for item in value:
        kind = type(item)
        if kind is str:
            length = size(item)  # type: ignore[arg-type]
            append(_PREFIXES[length] if length < 1024 else f"{length}:")
            append(item)  # type: ignore[arg-type]
        elif kind is dict:
            _encode_dict(item, out, size)  # type: ignore[arg-type]
        else:
            _encode(item, out, size)
    append("e")


def _encode_other(value: object, out: list[str], size: Size) -> None:
    """Subclasses and the rarer types, folded onto the exact ones."""
    if type(value) is Encoded:
        out.append(value.text)  # its strings measured in bytes already, whichever pass this is
    elif isinstance(value, int):  # bool and other int subclasses as plain numbers
        out.append(f"i{int(value)}e")
    elif isinstance(value, str):
        _encode(str(value), out, size)
    elif isinstance(value, bytes | bytearray):
        # back to these very bytes when the whole is encoded with surrogateescape
        out.append(f"{len(value)}:{bytes(value).decode('utf-8', 'surrogateescape')}")
    elif isinstance(value, list | tuple):
        _encode(list(value), out, size)
    elif isinstance(value, dict):
        _encode(dict(value), out, size)
    elif isinstance(value, float):
        _encode(int(value), out, size)
    else:
        raise TypeError(f"cannot bencode {type(value).__name__}")


def decode(data: bytes) -> Value:
    """Decode exactly one bencode value that fills all of ``data``.

    A request that is all ASCII (nearly every one) is decoded to text once and read by
    :func:`_quick`; anything it does not take as it is, is read again by the careful
    decoder, which finds what is wrong with it, if anything.
    """
    if data.isascii():
        try:
            value, end = _quick(data.decode("ascii"), 0, 0)
        except (_NotQuick, ValueError, IndexError):
            pass
        else:
            if end == len(data):
                return value
    value, end = decode_prefix(data, 0)
    if end != len(data):
        raise BencodeError(f"trailing data at offset {end}")
    return value


def decode_prefix(data: bytes, start: int = 0) -> tuple[Value, int]:
    """Decode one value starting at ``start``; return it and the offset after it.

    Raises :class:`BencodeError` for malformed input, including input that
    ends before the value does (the TCP framer uses that to wait for more).
    """
    try:
        return _decode(data, start, 0)
    except IndexError:
        raise BencodeError("truncated data") from None


def _to_int(digits: bytes, error: str) -> int:
    try:
        return int(digits)
    except ValueError:  # more digits than int() converts (sys.get_int_max_str_digits)
        raise BencodeError(error) from None


def _decode(data: bytes, pos: int, depth: int) -> tuple[Value, int]:
    if depth > _MAX_DEPTH:
        raise BencodeError("nesting too deep")
    lead = data[pos]
    if lead == 0x69:  # 'i'
        end = data.find(b"e", pos + 1)
        if end < 0:
            # wait for more only if what we have can still become an integer
            if _INT_PREFIX.fullmatch(data, pos + 1):
                raise IndexError
            raise BencodeError(f"bad integer at offset {pos}")
        digits = data[pos + 1 : end]
        if not _INT.fullmatch(digits):
            raise BencodeError(f"bad integer at offset {pos}")
        return _to_int(digits, f"bad integer at offset {pos}"), end + 1
    if 0x30 <= lead <= 0x39:  # '0'..'9'
        colon = data.find(b":", pos)
        digits = data[pos:colon] if colon >= 0 else data[pos:]
        if not _LENGTH.fullmatch(digits):
            raise BencodeError(f"bad string length at offset {pos}")
        if colon < 0:
            raise IndexError
        length = _to_int(digits, f"bad string length at offset {pos}")
        end = colon + 1 + length
        if end > len(data):
            raise IndexError
        raw = data[colon + 1 : end]
        try:
            return raw.decode(), end
        except UnicodeDecodeError:  # keep bytes that are not UTF-8 for a byte-exact reply
            return raw.decode("utf-8", "surrogateescape"), end
    if lead == 0x6C:  # 'l'
        items: list[Value] = []
        pos += 1
        while data[pos] != 0x65:
            item, pos = _string(data, pos) or _decode(data, pos, depth + 1)
            items.append(item)
        return items, pos + 1
    if lead == 0x64:  # 'd'
        result: dict[str, Value] = {}
        pos += 1
        while data[pos] != 0x65:
            key_at = pos
            key, pos = _string(data, pos) or _decode(data, pos, depth + 1)
            if not isinstance(key, str):
                raise BencodeError(f"dictionary key is not a string at offset {key_at}")
            result[key], pos = _string(data, pos) or _decode(data, pos, depth + 1)
        return result, pos + 1
    raise BencodeError(f"unexpected byte {lead:#04x} at offset {pos}")


class _NotQuick(Exception):
    """Something :func:`_quick` leaves to the careful decoder."""


_INT_TEXT = re.compile(r"0|-?[1-9][0-9]*")


def _quick(text: str, pos: int, depth: int) -> tuple[Value, int]:
    """One value of ASCII ``text`` at ``pos``, and the offset after it (bytes are characters
    there): the common case of :func:`_decode` with one slice per string and no decoding of
    its own. Raises :class:`_NotQuick`, ``ValueError`` or ``IndexError`` on anything that is
    not canonical, complete bencode. A string's length prefix is read where the string is,
    without a call: most of a request is short strings."""
    if depth > _MAX_DEPTH:
        raise _NotQuick
    lead = text[pos]
    index = text.index
    if lead == "d":
        result: dict[str, Value] = {}
        pos += 1
        while text[pos] != "e":
            colon = index(":", pos, pos + 11)
            pos = colon + 1 + (_LENGTHS.get(text[pos:colon]) or _length(text[pos:colon]))
            key = text[colon + 1 : pos]
            if "0" <= text[pos] <= "9":
                colon = index(":", pos, pos + 11)
                pos = colon + 1 + (_LENGTHS.get(text[pos:colon]) or _length(text[pos:colon]))
                result[key] = text[colon + 1 : pos]
            else:
                result[key], pos = _quick(text, pos, depth + 1)
        return result, pos + 1
    if lead == "l":
        items: list[Value] = []
        pos += 1
        while text[pos] != "e":
            if "0" <= text[pos] <= "9":
                colon = index(":", pos, pos + 11)
                pos = colon + 1 + (_LENGTHS.get(text[pos:colon]) or _length(text[pos:colon]))
                items.append(text[colon + 1 : pos])
            else:
                item, pos = _quick(text, pos, depth + 1)
                items.append(item)
        return items, pos + 1
    if "0" <= lead <= "9":
        colon = index(":", pos, pos + 11)
        end = colon + 1 + (_LENGTHS.get(text[pos:colon]) or _length(text[pos:colon]))
        return text[colon + 1 : end], end
    if lead == "i":
        end = index("e", pos)
        digits = text[pos + 1 : end]
        if not _INT_TEXT.fullmatch(digits):
            raise _NotQuick
        return int(digits), end + 1
    raise _NotQuick


def _length(digits: str) -> int:
    """A string's length past the table below (an SDP body's; or 0, which the table holds
    too but reads as false); :class:`_NotQuick` where the prefix is not a canonical one."""
    if digits == "0":
        return 0
    if not digits.isdigit() or digits[0] == "0":
        raise _NotQuick
    return int(digits)


# The canonical length prefixes of the short strings (nearly every one of a request), each
# with its value: one lookup checks and converts the digits.
_LENGTHS = {str(n): n for n in range(1024)}


def _string(data: bytes, pos: int) -> tuple[str, int] | None:
    """A well-formed, complete string at ``pos`` (most values of a request are), or None:
    then :func:`_decode` reads whatever is there, with its checks and its errors."""
    colon = data.find(b":", pos, pos + 10)
    if colon <= pos:
        return None
    digits = data[pos:colon]
    if not digits.isdigit() or (digits[0] == 0x30 and colon - pos > 1):
        return None
    end = colon + 1 + int(digits)
    if end > len(data):
        return None
    raw = data[colon + 1 : end]
    try:
        return raw.decode(), end
    except UnicodeDecodeError:
        return raw.decode("utf-8", "surrogateescape"), end
