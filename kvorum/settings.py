"""Node settings: one dataclass, read from flags and YAML, shown and changed by CONFIG.

Every setting has one name that is used everywhere outside Python: the YAML
key, the CONFIG GET/SET name, and (with `--`) the command-line flag where there
is one. Names follow Redis where Redis has the setting; kvorum's own limits use
Redis' naming style. Field names in Python carry their unit last (`_bytes`,
`_s`, `_ms`).

`SETTINGS` describes each setting: its field, how to parse a value (errors
become CONFIG SET's error text), how to show it, and whether it can change at
runtime. Values are validated on load the same way as on CONFIG SET.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from dataclasses import dataclass
from typing import Any, Callable

POLICIES = ("noeviction", "allkeys-lru", "volatile-lru", "allkeys-random", "volatile-random", "volatile-ttl")
LOG_LEVELS = ("debug", "verbose", "notice", "warning")
LOG_LEVELS_PY = {"debug": logging.DEBUG, "verbose": logging.INFO, "notice": logging.INFO, "warning": logging.WARNING}

_MEMORY_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1024, "m": 1000**2, "mb": 1024**2, "g": 1000**3, "gb": 1024**3}
_MEMORY_RE = re.compile(r"^\s*(-?\d+)\s*([a-z]*)\s*$")


class SettingError(ValueError):
    """A value a setting does not accept; the message finishes Redis' sentence."""


def parse_memory(text: str) -> int:
    """Redis memory units: 1k = 1000, 1kb = 1024, likewise m/mb, g/gb; case-insensitive."""
    match = _MEMORY_RE.match(text.lower())
    if match is None or match.group(2) not in _MEMORY_UNITS:
        raise SettingError("argument must be a memory value")
    value = int(match.group(1)) * _MEMORY_UNITS[match.group(2)]
    if value < 0:
        raise SettingError("argument must be a memory value")
    return value


def _int_in(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise SettingError("argument couldn't be parsed into an integer") from None
        if not low <= value <= high:
            raise SettingError(f"argument must be between {low} and {high} inclusive")
        return value

    return parse


def _memory_in(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = parse_memory(text)
        if not low <= value <= high:
            raise SettingError(f"argument must be between {low} and {high} inclusive")
        return value

    return parse


def _one_of(choices: tuple[str, ...]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.lower()
        if value not in choices:
            raise SettingError("argument(s) must be one of the following: " + ", ".join(choices))
        return value

    return parse


def _yes_no(text: str) -> bool:
    value = text.lower()
    if value not in ("yes", "no"):
        raise SettingError("argument must be 'yes' or 'no'")
    return value == "yes"


def _text(text: str) -> str:
    return text


def _appendonly(text: str) -> bool:
    if _yes_no(text):
        raise SettingError("kvorum keeps no append-only file")
    return False


@dataclass(frozen=True, slots=True)
class OutputBufferLimit:
    """Redis' client-output-buffer-limit for one client class; 0 = no limit."""

    hard_bytes: int = 0
    soft_bytes: int = 0
    soft_s: int = 0


def _parse_output_limits(text: str) -> OutputBufferLimit:
    """`normal <hard> <soft> <soft-seconds>` (other classes are accepted and ignored)."""
    words = text.split()
    if not words or len(words) % 4:
        raise SettingError("Wrong number of arguments in buffer limit configuration.")
    normal = None
    for i in range(0, len(words), 4):
        cls, hard, soft, seconds = words[i:i + 4]
        if cls.lower() not in ("normal", "replica", "slave", "pubsub"):
            raise SettingError("Invalid client class specified in buffer limit configuration.")
        try:
            limit = OutputBufferLimit(parse_memory(hard), parse_memory(soft), int(seconds))
        except (SettingError, ValueError):
            raise SettingError("Error in hard, soft or soft_seconds setting in buffer limit configuration.") from None
        if limit.soft_s < 0:
            raise SettingError("Error in hard, soft or soft_seconds setting in buffer limit configuration.")
        if cls.lower() == "normal":
            normal = limit
    if normal is None:
        raise SettingError("the normal class is the only one kvorum has; set 'normal <hard> <soft> <seconds>'")
    return normal


def _show_output_limits(limit: OutputBufferLimit) -> str:
    return f"normal {limit.hard_bytes} {limit.soft_bytes} {limit.soft_s} replica 0 0 0 pubsub 0 0 0"


INT_MAX = 2**31 - 1
LONG_MAX = 2**63 - 1
# The slow log is a collection held in memory: bounded, unlike Redis' LONG_MAX.
SLOWLOG_MAX_LEN_MAX = 1_000_000


@dataclass(slots=True)
class Settings:
    """Everything a node can be told. Defaults are Redis' where Redis has the setting."""

    port: int = 6379
    bind: str = "127.0.0.1"
    protected_mode: bool = True
    requirepass: str = ""
    maxmemory_bytes: int = 0  # 0 = no limit
    maxmemory_policy: str = "noeviction"
    loglevel: str = "notice"
    timeout_s: int = 0  # close clients idle this long; 0 = never
    hz: int = 10  # background cycles (active expiry, client timeouts) per second
    active_expire_keys_per_cycle: int = 1000
    maxclients: int = 10000
    proto_max_bulk_len_bytes: int = 512 * 1024 * 1024
    proto_max_multibulk_len: int = INT_MAX
    proto_inline_max_size_bytes: int = 64 * 1024
    client_query_buffer_limit_bytes: int = 1024 * 1024 * 1024
    client_output_buffer_limit: OutputBufferLimit = dataclasses.field(default_factory=OutputBufferLimit)
    # Reading from a client pauses while this much output waits for it (back-pressure).
    client_output_pause_bytes: int = 1024 * 1024
    # Read by OBJECT ENCODING: hashes up to these sizes report "listpack" as in Redis.
    hash_max_listpack_entries: int = 128
    hash_max_listpack_value_bytes: int = 64
    # The slow log: calls slower than this are logged (negative: none; 0: every call).
    slowlog_log_slower_than_us: int = 10_000
    slowlog_max_len: int = 128
    # The admin HTTP port (health, metrics, dashboard; docs/operations.md); 0 = off.
    admin_port: int = 0
    admin_bind: str = "127.0.0.1"
    save: str = ""
    appendonly: bool = False
    config_file: str = ""
    # Replication (docs/cluster.md). Without `peers` the node is a single node.
    node_id: str = ""
    peers: str = ""  # id@host:port[@busport],... naming every voter, this node included
    join: str = ""  # host:port of any member: join that cluster (instead of peers)
    cluster_announce_bus_port: int = 0  # with join: the bus port peers dial (a proxy, a NAT); 0 = bus_port
    learner: bool = False  # with join: stay a non-voting learner
    bus_port: int = 0  # peer traffic; 0 = client port + 10000
    data_dir: str = ""  # the write-ahead log and snapshots; required with peers
    fsync: str = "batch"
    cluster_id: str = "kvorum"
    # The secret every node of the cluster proves it holds before its peers accept a payload
    # (docs/cluster.md); empty = no authentication, for trusted networks only. The file form
    # keeps it out of process lists; give at most one of the two.
    cluster_secret: str = ""
    cluster_secret_file: str = ""
    write_concern: str = "majority"
    raft_tick_ms: int = 100
    raft_election_ticks: int = 10
    snapshot_entries: int = 10_000


@dataclass(frozen=True, slots=True)
class Setting:
    name: str  # the YAML key and the CONFIG name
    field: str
    parse: Callable[[str], Any]
    show: Callable[[Any], str] = str
    mutable: bool = True
    doc: str = ""


def _show_secret(value: str) -> str:
    # CONFIG GET says whether a secret is set, never what it is.
    return "(set)" if value else ""


def _show_bool(value: bool) -> str:
    return "yes" if value else "no"


SETTINGS: dict[str, Setting] = {
    s.name: s
    for s in (
        Setting("port", "port", _int_in(0, 65535), mutable=False, doc="TCP port for RESP clients"),
        Setting("bind", "bind", _text, mutable=False, doc="address to listen on"),
        Setting("protected-mode", "protected_mode", _yes_no, _show_bool,
                doc="refuse non-loopback clients while no password is set"),
        Setting("requirepass", "requirepass", _text, doc="password clients must AUTH with; empty = none"),
        Setting("maxmemory", "maxmemory_bytes", parse_memory, doc="memory limit (100mb, 1gb); 0 = none"),
        Setting("maxmemory-policy", "maxmemory_policy", _one_of(POLICIES), doc="what to evict at maxmemory"),
        Setting("loglevel", "loglevel", _one_of(LOG_LEVELS), doc="debug, verbose, notice or warning"),
        Setting("timeout", "timeout_s", _int_in(0, INT_MAX), doc="close clients idle this many seconds; 0 = never"),
        Setting("hz", "hz", _int_in(1, 500), doc="background cycles per second"),
        Setting("active-expire-keys-per-cycle", "active_expire_keys_per_cycle", _int_in(1, 1_000_000),
                doc="most keys one active expiry cycle looks at"),
        Setting("maxclients", "maxclients", _int_in(1, 1_000_000), doc="most connected clients"),
        Setting("proto-max-bulk-len", "proto_max_bulk_len_bytes", _memory_in(1024 * 1024, LONG_MAX),
                doc="largest bulk string in a request"),
        Setting("proto-max-multibulk-len", "proto_max_multibulk_len", _int_in(1, INT_MAX),
                doc="most arguments in one request"),
        Setting("proto-inline-max-size", "proto_inline_max_size_bytes", _memory_in(1024, 1024 * 1024 * 1024),
                doc="longest inline request or request header line"),
        Setting("client-query-buffer-limit", "client_query_buffer_limit_bytes",
                _memory_in(1024 * 1024, LONG_MAX), doc="most unparsed input buffered per client"),
        Setting("client-output-buffer-limit", "client_output_buffer_limit", _parse_output_limits,
                _show_output_limits, doc="'normal <hard> <soft> <soft-seconds>'; clients over it are closed"),
        Setting("client-output-pause-bytes", "client_output_pause_bytes", _memory_in(1024, LONG_MAX),
                doc="pending output at which reading from the client pauses"),
        Setting("hash-max-listpack-entries", "hash_max_listpack_entries", _int_in(0, LONG_MAX),
                doc="hashes with at most this many fields report the listpack encoding"),
        Setting("hash-max-listpack-value", "hash_max_listpack_value_bytes", _memory_in(0, LONG_MAX),
                doc="... and with fields and values at most this long"),
        Setting("hash-max-ziplist-entries", "hash_max_listpack_entries", _int_in(0, LONG_MAX),
                doc="alias of hash-max-listpack-entries"),
        Setting("hash-max-ziplist-value", "hash_max_listpack_value_bytes", _memory_in(0, LONG_MAX),
                doc="alias of hash-max-listpack-value"),
        Setting("slowlog-log-slower-than", "slowlog_log_slower_than_us", _int_in(-1, LONG_MAX),
                doc="log calls slower than this many microseconds in SLOWLOG; -1 = none, 0 = all"),
        Setting("slowlog-max-len", "slowlog_max_len", _int_in(0, SLOWLOG_MAX_LEN_MAX),
                doc=f"most SLOWLOG entries kept (at most {SLOWLOG_MAX_LEN_MAX})"),
        Setting("admin-port", "admin_port", _int_in(0, 65535), mutable=False,
                doc="HTTP port for /health, /metrics and the dashboard; 0 = off (the default)"),
        Setting("admin-bind", "admin_bind", _text, mutable=False,
                doc="address the admin port listens on (loopback unless told otherwise)"),
        Setting("save", "save", _text, doc="accepted for tools that read it; kvorum writes no RDB file"),
        Setting("appendonly", "appendonly", _appendonly, _show_bool, doc="always 'no'"),
        Setting("databases", "", _text, lambda _: "1", mutable=False, doc="always 1 (SELECT 0 only)"),
        Setting("node-id", "node_id", _text, mutable=False, doc="this node's id in peers"),
        Setting("peers", "peers", _text, mutable=False,
                doc="id@host:port[@busport],... of every voter; empty = single node"),
        Setting("join", "join", _text, mutable=False,
                doc="host:port of any member of a running cluster to join (instead of peers)"),
        Setting("learner", "learner", _yes_no, _show_bool, mutable=False,
                doc="with join: stay a non-voting learner"),
        Setting("cluster-announce-bus-port", "cluster_announce_bus_port", _int_in(0, 65535), mutable=False,
                doc="with join: the bus port peers are told to dial, when it differs from bus-port; 0 = bus-port"),
        Setting("bus-port", "bus_port", _int_in(0, 65535), mutable=False,
                doc="port for peer traffic; 0 = port + 10000"),
        Setting("data-dir", "data_dir", _text, mutable=False, doc="directory of the write-ahead log and snapshots"),
        Setting("fsync", "fsync", _one_of(("always", "batch", "never")), mutable=False,
                doc="always, batch or never (docs/storage.md)"),
        Setting("cluster-id", "cluster_id", _text, mutable=False, doc="peers of another cluster id are refused"),
        Setting("cluster-secret", "cluster_secret", _text, _show_secret, mutable=False,
                doc="secret peers must prove they hold (16 to 4096 bytes); empty = trusted network only"),
        Setting("cluster-secret-file", "cluster_secret_file", _text, mutable=False,
                doc="file holding cluster-secret (one trailing newline ignored), out of process lists"),
        Setting("write-concern", "write_concern", _one_of(("one", "majority", "all")),
                doc="default acknowledgement of writes: one, majority or all"),
        Setting("raft-tick-ms", "raft_tick_ms", _int_in(1, 10_000), mutable=False,
                doc="length of one Raft tick, ms (heartbeat every tick)"),
        Setting("raft-election-ticks", "raft_election_ticks", _int_in(3, 1000), mutable=False,
                doc="ticks without a leader before an election (randomised up to twice this)"),
        Setting("snapshot-entries", "snapshot_entries", _int_in(1, INT_MAX), mutable=False,
                doc="applied log entries between two snapshots of the keyspace"),
    )
}


def get_value(settings: Settings, setting: Setting) -> str:
    if not setting.field:
        return setting.show(None)
    return setting.show(getattr(settings, setting.field))


def parse_value(setting: Setting, raw: Any) -> Any:
    """Parse a YAML or CONFIG SET value; raise SettingError with the reason."""
    if isinstance(raw, bool):
        raw = "yes" if raw else "no"
    return setting.parse(str(raw))


def from_mapping(values: dict[str, Any], base: Settings | None = None) -> Settings:
    """Settings from a YAML mapping (keys are setting names); unknown keys are errors."""
    settings = dataclasses.replace(base) if base is not None else Settings()
    for name, raw in values.items():
        setting = SETTINGS.get(str(name).lower())
        if setting is None or not setting.field:
            raise SettingError(f"unknown setting {name!r}")
        try:
            setattr(settings, setting.field, parse_value(setting, raw))
        except SettingError as exc:
            raise SettingError(f"{name}: {exc}") from None
    return settings
