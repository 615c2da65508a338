"""Every key of rtpengine 10.5's configuration, and what relayd does with it.

``KEYS`` maps each option (``rtpengine --help``, plus the spellings of the
deployment guide) to the kind of value it takes and whether relayd acts on it
(``SUPPORTED``) or accepts it with no effect yet (``IGNORED``, warned about once
at start-up, with ``note`` saying why). docs/configuration.md lists the same
keys; a unit test keeps the two in step.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

__all__ = ["KEYS", "KeyInfo", "Status"]


class Status(Enum):
    SUPPORTED = "supported"
    IGNORED = "ignored"  # accepted, has no effect yet: warned about at start-up


@dataclass(frozen=True, slots=True)
class KeyInfo:
    kind: str  # int, float, str, bool, list
    status: Status
    note: str = ""


_S, _I = Status.SUPPORTED, Status.IGNORED

# rtpengine 10.5's option set (``rtpengine --help``), plus the spellings of the
# deployment guide. ``note`` says why an ignored key has no effect.
KEYS: dict[str, KeyInfo] = {
    "interface": KeyInfo("list", _S),
    "listen-ng": KeyInfo("str", _S),
    "listen-tcp-ng": KeyInfo("str", _S),
    "port-min": KeyInfo("int", _S),
    "port-max": KeyInfo("int", _S),
    "offer-timeout": KeyInfo("int", _S),
    "final-timeout": KeyInfo("int", _S),
    "delete-delay": KeyInfo("int", _S),
    "max-sessions": KeyInfo("int", _S),
    "log-level": KeyInfo("int", _S),
    "log-stderr": KeyInfo("bool", _S),
    "log-facility": KeyInfo("str", _S),
    "no-log-timestamps": KeyInfo("bool", _S),
    "foreground": KeyInfo("bool", _S),
    "pidfile": KeyInfo("str", _S),
    "table": KeyInfo("int", _S),
    "sip-source": KeyInfo("bool", _S),
    "state-dir": KeyInfo("str", _S),
    "worker-socket": KeyInfo("str", _S),
    "dtls-passive": KeyInfo("bool", _S),
    "tls-certificate": KeyInfo("str", _S),
    "tls-private-key": KeyInfo("str", _S),
    "timeout": KeyInfo("int", _S),
    "silent-timeout": KeyInfo("int", _S),
    "tos": KeyInfo("int", _S),
    "control-tos": KeyInfo("int", _I, "ng replies are sent with the default TOS"),
    "num-threads": KeyInfo("int", _S),
    "shards": KeyInfo("int", _S),
    "endpoint-learning": KeyInfo("str", _S),
    "listen-http": KeyInfo("str", _S),
    "prometheus": KeyInfo("bool", _S),
    "prometheus-listen": KeyInfo("str", _S),
    "homer": KeyInfo("str", _S),
    "homer-ng": KeyInfo("str", _S),
    "homer-protocol": KeyInfo("str", _S),
    "homer-id": KeyInfo("int", _S),
    "homer-enable-ng": KeyInfo("bool", _S),
    "homer-disable-rtcp-stats": KeyInfo("bool", _S),
    "homer-ng-capture-proto": KeyInfo("int", _S),
    "log-format": KeyInfo("str", _S),
    "log-facility-rtcp": KeyInfo("str", _S),
    "log-facility-dtmf": KeyInfo("str", _S),
    "dtmf-log-dest": KeyInfo("str", _S),
    "dtmf-log-ng-tcp": KeyInfo("bool", _S),
    "admin-socket": KeyInfo("str", _S),
    "recording-dir": KeyInfo("str", _S),
    "recording-method": KeyInfo("str", _S),
    "recording-format": KeyInfo("str", _S),
    "recording-file-mode": KeyInfo("str", _S),
    "recording-dir-mode": KeyInfo("str", _S),
    "recording-nflog-group": KeyInfo("int", _S),
    # Redis high availability (relayd/ha/)
    "redis": KeyInfo("str", _S),
    "redis-write": KeyInfo("str", _S),
    "subscribe-keyspace": KeyInfo("str", _S),
    "redis-expires": KeyInfo("int", _S),
    "redis-connect-timeout": KeyInfo("int", _S),
    "redis-cmd-timeout": KeyInfo("int", _S),
}
for _key in [
    "log-level-core",
    "log-level-spandsp",
    "log-level-ffmpeg",
    "log-level-transcoding",
    "log-level-codec",
    "log-level-rtcp",
    "log-level-ice",
    "log-level-crypto",
    "log-level-srtp",
    "log-level-internals",
    "log-level-http",
    "log-level-control",
    "log-level-dtx",
    "max-log-line-length",
    "thread-stack",
    "redis-num-threads",
    "redis-allowed-errors",
    "redis-disable-time",
    "redis-delete-async-interval",
    "xmlrpc-format",
    "media-num-threads",
    "graphite-interval",
    "graphite-timeout",
    "priority",
    "idle-priority",
    "mysql-port",
    "jitter-buffer",
    "dtls-rsa-key-size",
    "dtls-mtu",
    "http-threads",
    "dtx-delay",
    "max-dtx",
    "dtx-buffer",
    "dtx-lag",
    "dtx-shift",
    "mqtt-port",
    "mqtt-keepalive",
    "mqtt-publish-qos",
    "mqtt-publish-interval",
    "socket-cpu-affinity",
]:
    KEYS[_key] = KeyInfo("int", _I)
KEYS["max-bandwidth"] = KeyInfo("int", _S)
for _key in ["max-load", "max-cpu"]:
    KEYS[_key] = KeyInfo("float", _S)
# the Redis keys relayd takes no value from (relayd/ha/: docs/configuration.md)
_NO_PAUSE = "relayd never pauses Redis use: failed writes are retried and counted"
KEYS["redis-num-threads"] = KeyInfo("int", _I, "restoring reads the calls pipelined, no threads")
KEYS["redis-allowed-errors"] = KeyInfo("int", _I, _NO_PAUSE)
KEYS["redis-disable-time"] = KeyInfo("int", _I, _NO_PAUSE)
KEYS["redis-delete-async-interval"] = KeyInfo("int", _I, "deletes are always asynchronous")
KEYS["silence-detect"] = KeyInfo("float", _S)
KEYS["codecs"] = KeyInfo("bool", _S)
for _key in [
    "split-logs",
    "no-fallback",
    "save-interface-ports",
    "no-redis-required",
    "redis-delete-async",
    "active-switchover",
    "dtmf-no-suppress",
    "dtmf-digit-delay",
    "log-srtp-keys",
    "jb-clock-drift",
    "debug-srtp",
    "reject-invalid-sdp",
    "poller-per-thread",
]:
    KEYS[_key] = KeyInfo("bool", _I)
KEYS["redis-delete-async"] = KeyInfo("bool", _I, "deletes are always asynchronous")
KEYS["no-redis-required"] = KeyInfo("bool", _I, "relayd always starts without Redis")
KEYS["active-switchover"] = KeyInfo("bool", _I, "activity is not watched for a takeover")
for _key in [
    "log-mark-prefix",
    "log-mark-suffix",
    "listen-tcp",
    "listen-udp",
    "listen-cli",
    "graphite",
    "graphite-prefix",
    "b2b-url",
    "log-facility-cdr",
    "iptables-chain",
    "scheduling",
    "idle-scheduling",
    "mysql-host",
    "mysql-user",
    "mysql-pass",
    "mysql-query",
    "dtls-cert-cipher",
    "dtls-ciphers",
    "dtls-signature",
    "listen-https",
    "https-cert",
    "https-key",
    "software-id",
    "dtx-cn-params",
    "amr-dtx",
    "cn-payload",
    "mqtt-host",
    "mqtt-id",
    "mqtt-user",
    "mqtt-pass",
    "mqtt-cafile",
    "mqtt-capath",
    "mqtt-certfile",
    "mqtt-keyfile",
    "mqtt-publish-topic",
    "mqtt-publish-scope",
    "mos",
    "janus-secret",
]:
    KEYS[_key] = KeyInfo("str", _I)
