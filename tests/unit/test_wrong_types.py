"""A call-id, from-tag, to-tag or sdp that is not a string is refused and creates nothing.

rtpengine 10.5 reads such a value as absent: a required one fails with its "No X in
message" error, an optional one is dropped (an offer whose to-tag is a list creates
the call; a delete whose from-tag is a dictionary deletes the whole call). relayd
refuses each of them with rtpengine's error for the missing key, before any call is
created or any port taken; the other calls go on as before. Driven through the ng
service (bencode and JSON framing, the reply cache) and relayd's ng core in process.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relayd.ng import bencode
from relayd.ng.server import NgService
from tests.unit.calls import T0, build, sdp

MISSING = {
    "call-id": "No call-id in message",
    "from-tag": "No from-tag in message",
    "to-tag": "No to-tag in message",
    "sdp": "No SDP body in message",
}
# What each command carries besides the key under test, all well-typed.
COMMANDS: dict[str, dict[str, Any]] = {
    "offer": {"call-id": "new", "from-tag": "f1", "sdp": sdp()},
    "answer": {"call-id": "existing", "from-tag": "f0", "to-tag": "t0", "sdp": sdp(port=6000)},
    "delete": {"call-id": "existing", "from-tag": "f0"},
    "query": {"call-id": "existing"},
}
NOT_A_STRING = [0, 5, -1, [], ["x", 1], {}, {"a": "b"}, [{"sdp": "v=0"}]]

# bencode has integers, lists and dictionaries besides strings; JSON adds floats,
# booleans and null. Any of them, nested, in place of a string.
json_scalars = st.one_of(st.integers(), st.floats(allow_nan=False), st.booleans(), st.none())
wrong_values = st.recursive(
    st.integers(min_value=-(2**62), max_value=2**62),
    lambda inner: st.one_of(
        st.lists(inner | st.binary(max_size=8), max_size=3),
        st.dictionaries(st.text(max_size=8), inner | st.binary(max_size=8), max_size=3),
    ),
    max_leaves=6,
)


class Daemon:
    """relayd's ng core behind its ng service, with one answered call, "existing"."""

    def __init__(self) -> None:
        self.commands, self.binder = build()
        self.service = NgService(lambda req, source: self.commands.handle(req, T0))
        self.cookie = 0
        for step in (
            {"command": "offer", "call-id": "existing", "from-tag": "f0", "sdp": sdp()},
            {
                "command": "answer",
                "call-id": "existing",
                "from-tag": "f0",
                "to-tag": "t0",
                "sdp": sdp(port=6000),
            },
        ):
            assert self.send(step)["result"] == "ok"
        self.ports = len(self.binder.bound)

    def send(self, message: dict[str, Any], as_json: bool = False) -> dict[str, Any]:
        self.cookie += 1
        body = json.dumps(message).encode() if as_json else bencode.encode(message)
        reply = self.service.handle(f"c{self.cookie} ".encode() + body, ("127.0.0.1", 5060))
        assert isinstance(reply, bytes)
        decoded = bencode.decode(reply.split(b" ", 1)[1]) if not as_json else None
        if as_json:
            decoded = json.loads(reply.split(b" ", 1)[1])
        assert isinstance(decoded, dict)
        return {k if isinstance(k, str) else k.decode(): v for k, v in decoded.items()}

    def calls(self) -> list[str]:
        return sorted(self.commands.calls)

    def unchanged(self) -> None:
        """Nothing created, nothing lost, no port taken or freed."""
        assert self.calls() == ["existing"]
        assert len(self.binder.bound) == self.ports
        assert not self.binder.released


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def test_each_command_key_and_type_is_refused_with_rtpengines_error() -> None:
    for command, keys in COMMANDS.items():
        for key, reason in MISSING.items():
            for value in NOT_A_STRING:
                for as_json in (False, True):
                    daemon = Daemon()
                    message = {"command": command, **keys, key: value}
                    reply = daemon.send(message, as_json)
                    assert _text(reply["result"]) == "error", (command, key, value)
                    assert _text(reply["error-reason"]) == reason, (command, key, value)
                    daemon.unchanged()


def test_a_command_that_is_not_a_string_is_no_command() -> None:
    daemon = Daemon()
    for value in NOT_A_STRING:
        reply = daemon.send({"command": value, "call-id": "new", "from-tag": "f", "sdp": sdp()})
        assert _text(reply["error-reason"]) == 'Dictionary contains no key "command"'
    daemon.unchanged()


def test_the_same_request_with_strings_goes_through() -> None:
    """The refusal is about the type: the well-typed request succeeds (the test can fail)."""
    daemon = Daemon()
    reply = daemon.send({"command": "offer", **COMMANDS["offer"]})
    assert _text(reply["result"]) == "ok"
    assert daemon.calls() == ["existing", "new"]
    assert len(daemon.binder.bound) > daemon.ports


def test_no_call_is_named_after_a_python_repr() -> None:
    daemon = Daemon()
    daemon.send({"command": "offer", "call-id": ["x", 1], "from-tag": "f", "sdp": sdp()})
    reply = daemon.send({"command": "list"})
    assert [_text(c) for c in reply["calls"]] == ["existing"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    command=st.sampled_from(sorted(COMMANDS)),
    key=st.sampled_from(sorted(MISSING)),
    value=wrong_values,
    as_json=st.booleans(),
)
def test_property_any_wrong_type_is_an_error_and_changes_nothing(
    command: str, key: str, value: Any, as_json: bool
) -> None:
    if as_json:  # JSON has no byte strings; its own scalars stand in
        value = json.loads(json.dumps(value, default=lambda b: 1))
    daemon = Daemon()
    reply = daemon.send({"command": command, **COMMANDS[command], key: value}, as_json)
    assert _text(reply["result"]) == "error"
    assert _text(reply["error-reason"]) == MISSING[key]
    daemon.unchanged()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    command=st.sampled_from(sorted(COMMANDS)),
    key=st.sampled_from(sorted(MISSING)),
    value=json_scalars,
)
def test_property_json_scalars_are_refused_too(command: str, key: str, value: Any) -> None:
    daemon = Daemon()
    reply = daemon.send({"command": command, **COMMANDS[command], key: value}, as_json=True)
    assert _text(reply["error-reason"]) == MISSING[key]
    daemon.unchanged()
