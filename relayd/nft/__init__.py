"""relayd's kernel path: forwards as elements of one nftables table, plus their conntrack entries.

Standalone: nothing here imports the rest of relayd (scripts/check_imports.py keeps
it so). :class:`KernelForwarder` is the facade; :mod:`relayd.nft.ruleset` builds
and parses the JSON (pure); :mod:`relayd.nft.libnft` is the only module that talks
to libnftables and :mod:`relayd.nft.conntrack` the only one that talks to ctnetlink.
"""

from relayd.nft.conntrack import (
    ConntrackError,
    Ctnetlink,
    delete_flows,
)
from relayd.nft.forward import Availability, KernelForwarder, ReconcileResult
from relayd.nft.libnft import Libnft, NftError
from relayd.nft.ruleset import (
    DEFAULT_MARK,
    DEFAULT_TOS,
    Counter,
    Endpoint,
    Forward,
    ForwardKey,
    Table,
    TableState,
    stream,
)

__all__ = [
    "DEFAULT_MARK",
    "DEFAULT_TOS",
    "Availability",
    "ConntrackError",
    "Counter",
    "Ctnetlink",
    "Endpoint",
    "Forward",
    "ForwardKey",
    "KernelForwarder",
    "Libnft",
    "NftError",
    "ReconcileResult",
    "Table",
    "TableState",
    "delete_flows",
    "stream",
]
