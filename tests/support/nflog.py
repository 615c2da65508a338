"""What the nflog tests share: a copy's addresses as the forward key relayd's records use."""

from __future__ import annotations

from relayd.nft.nflog import Copy
from relayd.nft.ruleset import Endpoint, ForwardKey

__all__ = ["key_of"]


def key_of(copy: Copy) -> ForwardKey | None:
    """The forward key of a copy's addresses (None: not UDP, or a port 0)."""
    found = copy.addresses()
    if found is None:
        return None
    (source, sport), (dest, dport) = found
    return ForwardKey(Endpoint(source, sport), Endpoint(dest, dport))
