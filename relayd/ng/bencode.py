"""Bencode codec for ng messages.

Lenient where Kamailio and OpenSIPS need it: dictionary keys are accepted in
any order (their rtpengine modules add ``sdp`` first), and the encoder keeps
insertion order, as rtpengine itself does. Strings are decoded to ``str`` with
``surrogateescape`` so that SDP bodies that are not valid UTF-8 survive a
round trip byte for byte.
"""

from __future__ import annotations

import re

__all__ = ["BencodeError", "Value", "decode", "decode_prefix", "encode"]

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
    hundreds of values of a query tree on its own. Length prefixes count bytes, so
    a value that is not ASCII is measured in UTF-8 (``surrogateescape``: a body that
    was not UTF-8 goes back out as the bytes it came as).
    """
    out: list[str] = []
    _encode(value, out)
    return "".join(out).encode("utf-8", "surrogateescape")


def _size(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogateescape"))


# Dictionary keys repeat in every reply ("result", "sdp", "tags"…): each is written
# once. Bounded, since some keys are per call (the tags of a query tree).
_KEYS: dict[str, str] = {}
_KEYS_LIMIT = 512


def _key(key: object) -> str:
    text = key if type(key) is str else str(key)
    encoded = f"{_size(text)}:{text}"
    if len(_KEYS) < _KEYS_LIMIT and type(key) is str:
        _KEYS[key] = encoded
    return encoded


def _encode(value: object, out: list[str]) -> None:
    # Exact type checks first, and the values of a dict or list handled in its own loop:
    # replies are mostly str/int/dict/list, and a query tree has hundreds of them.
    kind = type(value)
    if kind is dict:
        _encode_dict(value, out)  # type: ignore[arg-type]
    elif kind is list or kind is tuple:
        _encode_list(value, out)  # type: ignore[arg-type]
    elif kind is str:
        out.append(f"{_size(value)}:{value}")  # type: ignore[arg-type]
    elif kind is int:
        out.append(f"i{value}e")
    else:
        _encode_other(value, out)


def _encode_dict(value: dict[object, object], out: list[str]) -> None:
    append = out.append
    append("d")
    for key, item in value.items():
        append(_KEYS.get(key) or _key(key))  # type: ignore[call-overload]
        kind = type(item)
        if kind is str:
            # ASCII (nearly every value) measured without a call
            size = len(item) if item.isascii() else _size(item)  # type: ignore[attr-defined, arg-type]
            append(f"{size}:{item}")
        elif kind is int:
            append(f"i{item}e")
        elif kind is dict:
            _encode_dict(item, out)  # type: ignore[arg-type]
        elif kind is list:
            _encode_list(item, out)  # type: ignore[arg-type]
        else:
            _encode(item, out)
    append("e")


def _encode_list(value: list[object] | tuple[object, ...], out: list[str]) -> None:
    append = out.append
    append("l")
    for item in value:
        kind = type(item)
        if kind is str:
            # ASCII (nearly every value) measured without a call
            size = len(item) if item.isascii() else _size(item)  # type: ignore[attr-defined, arg-type]
            append(f"{size}:{item}")
        elif kind is int:
            append(f"i{item}e")
        else:
            _encode(item, out)
    append("e")


def _encode_other(value: object, out: list[str]) -> None:
    """Subclasses and the rarer types, folded onto the exact ones."""
    if isinstance(value, int):  # bool and other int subclasses as plain numbers
        out.append(f"i{int(value)}e")
    elif isinstance(value, str):
        _encode(str(value), out)
    elif isinstance(value, bytes | bytearray):
        # back to these very bytes when the whole is encoded with surrogateescape
        out.append(f"{len(value)}:{bytes(value).decode('utf-8', 'surrogateescape')}")
    elif isinstance(value, list | tuple):
        _encode(list(value), out)
    elif isinstance(value, dict):
        _encode(dict(value), out)
    elif isinstance(value, float):
        _encode(int(value), out)
    else:
        raise TypeError(f"cannot bencode {type(value).__name__}")


def decode(data: bytes) -> Value:
    """Decode exactly one bencode value that fills all of ``data``."""
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
