"""Which sockets take the workers' crypto branch: any crypto field of a SocketSpec."""

from __future__ import annotations

import dataclasses
from dataclasses import fields
from typing import Any

import pytest

from relayd.ipc import SocketSpec
from relayd.worker.sockets import SecureConfig


def test_a_plain_socket_shares_the_empty_config() -> None:
    config = SecureConfig.of(SocketSpec("192.0.2.1 30000", out="192.0.2.1 30002"))
    assert config.empty
    assert config is SecureConfig.of(SocketSpec("192.0.2.1 30001", rtcp=True))


@pytest.mark.parametrize("name", [f.name for f in fields(SecureConfig)])
def test_every_crypto_field_alone_makes_a_secure_socket(name: str) -> None:
    crypto: dict[str, Any] = {name: "x"}  # every crypto field is a str
    config = SecureConfig.of(dataclasses.replace(SocketSpec("192.0.2.1 30000"), **crypto))
    assert not config.empty
    assert getattr(config, name) == "x"
