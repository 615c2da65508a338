"""Call state to and from plain JSON-able values (pure), for the state journal.

Generic over the model's dataclasses: values are converted following their
type annotations, so a new field needs no code here. A field marked
``metadata={"flatten": True}`` (a media's SRTP, DTLS and ICE state) is a
dataclass whose fields are written among its holder's own, as they were before
they moved into it: journals of either layout load the same. A field marked
``metadata={"unsaved": True}`` (:data:`relayd.calls.model.UNSAVED`) is left out, and
takes its default when loaded. The only special case is
the call itself, whose ``monologues`` and ``branches`` maps may name the same
party several times (tag aliases, a branch answered under its tag): parties are
stored once in a list and the maps hold indexes into it.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Any

from relayd.calls.model import Call, Monologue, Stream

__all__ = ["dump_call", "load_call"]


def _dump(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        data = {}
        for f in dataclasses.fields(value):
            if f.metadata.get("unsaved"):  # bookkeeping that means nothing after a restart
                continue
            if f.metadata.get("flatten"):  # its fields stand among the holder's own
                data.update(_dump(getattr(value, f.name)))
            else:
                data[f.name] = _dump(getattr(value, f.name))
        return data
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, frozenset | set):
        return sorted(_dump(v) for v in value)
    if isinstance(value, list | tuple):
        return [_dump(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _dump(v) for k, v in value.items()}
    return value


@functools.cache
def _shape(kind: type) -> tuple[dict[str, Any], tuple[dataclasses.Field[Any], ...]]:
    """A dataclass's resolved annotations and fields, worked out once per class: resolving
    them (``typing.get_type_hints`` compiles every annotation string) took three quarters of
    a restart's journal load, and a restarted relayd answers ``ping`` only once its calls are
    back."""
    return typing.get_type_hints(kind), dataclasses.fields(kind)


def _load(kind: Any, value: Any) -> Any:
    origin = typing.get_origin(kind)
    args = typing.get_args(kind)
    if origin in (types.UnionType, typing.Union):
        if value is None:
            return None
        return _load(next(a for a in args if a is not type(None)), value)
    if origin is list:
        return [_load(args[0], v) for v in value]
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:  # tuple[X, ...]
            return tuple(_load(args[0], v) for v in value)
        return tuple(_load(a, v) for a, v in zip(args, value, strict=True))
    if origin is frozenset:
        return frozenset(_load(args[0], v) for v in value)
    if origin is set:
        return {_load(args[0], v) for v in value}
    if origin is dict:
        return {k: _load(args[1], v) for k, v in value.items()}
    if kind is bytes:
        return bytes.fromhex(value)
    if isinstance(kind, type) and dataclasses.is_dataclass(kind):
        if kind is Stream and "stats" in value:
            # journals written before a stream's counters became its own fields
            value = {**value, **value["stats"]}
        hints, fields = _shape(kind)
        loaded = {}
        for f in fields:
            if f.metadata.get("flatten"):
                part = _load(hints[f.name], value)
                default = f.default_factory() if callable(f.default_factory) else f.default
                loaded[f.name] = default if part == default else part  # a shared default kept
            elif f.name in value and not f.metadata.get("unsaved"):
                loaded[f.name] = _load(hints[f.name], value[f.name])
        return kind(**loaded)
    return value


_SHARED = ("monologues", "branches")


def dump_call(call: Call) -> dict[str, Any]:
    """``call`` as JSON-able values: every field but ``monologues`` and ``branches``, the
    parties once each under ``parties``, and those two maps as indexes into that list."""
    parties = call.parties()
    index = {id(p): i for i, p in enumerate(parties)}
    data = {
        f.name: _dump(getattr(call, f.name))
        for f in dataclasses.fields(call)
        if f.name not in _SHARED
    }
    data["parties"] = [_dump(p) for p in parties]
    for name in _SHARED:
        data[name] = {tag: index[id(p)] for tag, p in getattr(call, name).items()}
    return data


def load_call(data: dict[str, Any]) -> Call:
    """The call that :func:`dump_call` wrote.

    Fields the data lacks (an older journal) take their defaults. ``learn_after`` is reset:
    a CLOCK_MONOTONIC time means nothing after a reboot, and the streams keep what they had
    confirmed.
    """
    parties = [_load(Monologue, p) for p in data["parties"]]
    hints = _shape(Call)[0]
    call = Call(
        **{
            f.name: _load(hints[f.name], data[f.name])
            for f in dataclasses.fields(Call)
            if f.name not in _SHARED and f.name in data
        }
    )
    for name in _SHARED:
        getattr(call, name).update({tag: parties[i] for tag, i in data[name].items()})
    for party in call.parties():
        # a CLOCK_MONOTONIC time, meaningless in another boot: after a reboot it could lie
        # days ahead and hold delayed learning off until then (the learning window of a
        # restored call is over; what its streams had confirmed comes back with them)
        party.learn_after = 0.0
    for media in call.all_medias():
        for stream in media.streams:
            stream.call_id = call.call_id  # journals written before streams named it
    return call
