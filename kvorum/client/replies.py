"""Pure pieces shared by the blocking and the asyncio client: commands, replies and keys.

Nothing here does I/O or keeps state; `Client` and `AsyncClient` build their commands with these
functions, send them and hand the replies back here, so both clients speak to kvorum in exactly
one way. The state both clients keep, and the decisions that change it, are in core.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redis.exceptions import ConnectionError

NEAR_CACHE_MODES = (None, "strict", "tracking")

# Plain redis-py methods that write the key given as their first argument: the client evicts
# that key from its own near cache after the call, so a process reads its own writes.
WRITES_FIRST_KEY = frozenset({
    "set", "setex", "psetex", "setnx", "getset", "getdel", "getex", "append", "setrange",
    "incr", "incrby", "incrbyfloat", "decr", "decrby", "expire", "pexpire", "expireat",
    "pexpireat", "persist", "hset", "hdel", "hincrby", "hincrbyfloat", "hsetnx", "hmset",
})
# Methods whose positional arguments are all keys that they write.
WRITES_ALL_KEYS = frozenset({"delete", "unlink"})
# Methods whose first argument is a mapping of key -> value.
WRITES_MAPPING = frozenset({"mset", "msetnx"})
# Methods that empty the whole keyspace.
WRITES_EVERYTHING = frozenset({"flushdb", "flushall"})


def key_bytes(key: Any) -> bytes:
    """The near cache's spelling of a key: bytes, as the cluster and invalidation pushes name it."""
    if isinstance(key, bytes):
        return key
    if isinstance(key, str):
        return key.encode()
    if isinstance(key, (int, float)):
        return repr(key).encode()
    return bytes(key)


def written_keys(method: str, args: tuple) -> list[bytes] | None:
    """Keys a delegated redis-py call writes: a list, or None for "every key"; [] for none known."""
    if method in WRITES_FIRST_KEY and args:
        return [key_bytes(args[0])]
    if method in WRITES_ALL_KEYS:
        return [key_bytes(k) for k in args]
    if method in WRITES_MAPPING and args:
        return [key_bytes(k) for k in args[0]]
    if method in WRITES_EVERYTHING:
        return None
    return []


@dataclass(frozen=True, slots=True)
class VGetReply:
    """A VGET reply: `missing`, `not_modified` (the held version is current) or a new value."""

    missing: bool
    not_modified: bool
    version: int
    value: Any


def parse_vget(reply) -> VGetReply:
    """`VGET key [IFNOTVERSION v]` -> nil | [v] | [version, value]."""
    if reply is None:
        return VGetReply(True, False, 0, None)
    if len(reply) == 1:
        return VGetReply(False, True, int(reply[0]), None)
    assert len(reply) == 2, reply
    return VGetReply(False, False, int(reply[0]), reply[1])


@dataclass(frozen=True, slots=True)
class LeaseResult:
    """What `lease_get` found.

    - `hit`: the key holds `value` at `version`.
    - `lease`: a miss, and this caller holds `token`; it should load the value and `lease_set` it.
    - `wait`: a miss, and another caller holds the lease; `value` is the last value the key had
      (if the server still has it within the STALE window) or None. Retry after a short wait, or
      serve the stale value if the application tolerates it.
    """

    status: str  # "hit" | "lease" | "wait"
    value: Any = None
    version: int = 0
    token: Any = None

    @property
    def hit(self) -> bool:
        return self.status == "hit"

    @property
    def lease(self) -> bool:
        return self.status == "lease"

    @property
    def wait(self) -> bool:
        return self.status == "wait"


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def parse_leaseget(reply) -> LeaseResult:
    """`LEASEGET` -> ["HIT", value, version] | ["LEASE", token] | ["WAIT", stale_or_nil]."""
    status = _text(reply[0]).upper()
    if status == "HIT":
        return LeaseResult("hit", reply[1], int(reply[2]))
    if status == "LEASE":
        return LeaseResult("lease", token=reply[1])
    if status == "WAIT":
        return LeaseResult("wait", reply[1] if len(reply) > 1 else None)
    raise ValueError(f"unexpected LEASEGET reply {reply!r}")


def expiry_args(ex: float | None, px: int | None) -> list:
    if ex is not None and px is not None:
        raise ValueError("give ex or px, not both")
    if ex is not None:
        return ["EX", int(ex)]
    if px is not None:
        return ["PX", int(px)]
    return []


def invalidated_keys(push) -> list[bytes] | None:
    """The keys of an `invalidate` push, or None when it invalidates everything (a flush)."""
    keys = push[1] if len(push) > 1 else None
    if keys is None:
        return None
    return [key_bytes(k) for k in keys]


def mget_keys(keys, args: tuple) -> list:
    """MGET's keys, given as one iterable or as separate arguments (redis-py accepts both)."""
    return list(keys) + list(args) if not isinstance(keys, (str, bytes)) else [keys, *args]


def vget_args(key, entry) -> list:
    """VGET of `key`, asking only for a version other than the held `entry`'s."""
    if entry is None:
        return ["VGET", key]
    return ["VGET", key, "IFNOTVERSION", entry.version]


def vget_result(reply):
    """`Client.vget`'s answer: (version, value), or None when the key is missing."""
    vget = parse_vget(reply)
    return None if vget.missing else (vget.version, vget.value)


def leaseget_args(key, lease_ms: int | None, stale_ms: int | None) -> list:
    args = ["LEASEGET", key]
    if lease_ms is not None:
        args += ["LEASE", int(lease_ms)]
    if stale_ms is not None:
        args += ["STALE", int(stale_ms)]
    return args


def check_tracking_on(reply) -> None:
    if reply not in (b"OK", "OK"):
        raise ConnectionError(f"CLIENT TRACKING ON refused: {reply!r}")
