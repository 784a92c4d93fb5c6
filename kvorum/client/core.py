"""What `Client` and `AsyncClient` share: every decision the two clients make, with no I/O.

Theory of operation (sans-I/O, as in h11). The blocking client (client.py) and the asyncio client
(aio.py) are thin shells: they send commands and await (or block on) replies. replies.py builds
those commands and parses the replies; this module keeps the state both clients share (the near
cache, the tracking links, the `cached()` timers) and makes every decision that changes it: what
a VGET reply does to the near cache, which keys a write evicts, when a refresh is due, what
`get_or_load` does after each LEASEGET. So the two clients differ only in how they wait, never in
what they decide.

Locks. The blocking client is used from many threads and passes `threading.Lock` as `new_lock`;
the asyncio client touches this state only in synchronous code between two awaits on the one
event loop that owns it, and passes `contextlib.nullcontext`.
"""

from __future__ import annotations

import secrets
import time
from typing import Callable, ContextManager

from redis.exceptions import ClusterDownError, ConnectionError, MovedError, TimeoutError

from kvorum.client.near_cache import NearCache
from kvorum.client.replies import NEAR_CACHE_MODES, LeaseResult, invalidated_keys, parse_vget

HEALTH_CHECK_INTERVAL_S_DEFAULT = 1.0
WAIT_BACKOFF_S_MIN = 0.001
WAIT_BACKOFF_S_MAX = 0.1
WAIT_S_MAX_DEFAULT = 5.0
REFRESH_KEYS_MAX = 10_000  # keys whose refresh timers one client remembers (oldest forgotten)
TRACKING_ERRORS = (ConnectionError, TimeoutError, MovedError, ClusterDownError)
CLUSTER_CHOICES = ("auto", True, False)


def check_options(near_cache: str | None, cluster: bool | str) -> None:
    """Refuse a constructor's `near_cache` or `cluster` argument that names no choice."""
    if near_cache not in NEAR_CACHE_MODES:
        raise ValueError(f"near_cache must be one of {NEAR_CACHE_MODES}, not {near_cache!r}")
    if cluster not in CLUSTER_CHOICES:
        raise ValueError("cluster must be 'auto', True or False")


def refresh_key(key: bytes) -> bytes:
    """The key holding the refresh lease of `key`, in the same hash slot when `key` has no tag."""
    return key + b":refresh" if b"{" in key else b"{" + key + b"}:refresh"


def refresh_lease(key: bytes, refresh_every: float) -> tuple[bytes, str, int]:
    """(key, token, px) of the `SET key token NX PX px` that takes `key`'s refresh lease."""
    return refresh_key(key), secrets.token_hex(8), max(1, int(refresh_every * 1000))


def cached_px(refresh_every: float, ttl: float | None) -> int | None:
    """The PX a `cached()` value is stored with; refuses an interval that is not positive."""
    if refresh_every <= 0:
        raise ValueError("refresh_every must be positive")
    return None if ttl is None else max(1, int(ttl * 1000))


def tracking_connection(pool, health_check_interval_s: float):
    """A new, unconnected RESP3 connection shaped like `pool`'s, for a tracking link."""
    kwargs = dict(pool.connection_kwargs)
    kwargs.update(protocol=3, health_check_interval=health_check_interval_s)
    return pool.connection_class(**kwargs)


class LeaseWait:
    """What `get_or_load` does after each LEASEGET: serve, load (and store), or sleep and retry.

    Waiters back off from WAIT_BACKOFF_S_MIN, doubling up to WAIT_BACKOFF_S_MAX, and once the
    next sleep would pass `wait_s_max` they load for themselves without storing.
    """

    SERVE = "serve"  # return found.value
    LOAD_AND_STORE = "load_and_store"  # this caller holds the lease: load, lease_set, return
    LOAD = "load"  # waited long enough: load and return, storing nothing
    SLEEP = "sleep"  # sleep `sleep_s`, then LEASEGET again

    def __init__(self, use_stale: bool, wait_s_max: float):
        self.use_stale = use_stale
        self.deadline = time.monotonic() + wait_s_max
        self.sleep_s = WAIT_BACKOFF_S_MIN
        self._next_sleep_s = WAIT_BACKOFF_S_MIN

    def next_step(self, found: LeaseResult) -> str:
        if found.hit:
            return self.SERVE
        if found.lease:
            return self.LOAD_AND_STORE
        if self.use_stale and found.value is not None:
            return self.SERVE
        if time.monotonic() + self._next_sleep_s > self.deadline:
            return self.LOAD
        self.sleep_s = self._next_sleep_s
        self._next_sleep_s = min(self._next_sleep_s * 2, WAIT_BACKOFF_S_MAX)
        return self.SLEEP


class TrackingLinkState:
    """The part of a tracking link that does no I/O: resets, push handling and the probe key."""

    def __init__(self, client: "ClientCore", lock):
        self.lock = lock  # held for a whole read, so pushes and replies are handled in order
        self._client = client
        self.resets = 0  # how many times this link cleared the near cache (connects and errors)
        self.probe_key = None  # the last key read through this link

    def reset(self) -> None:
        self.resets += 1
        self._client._invalidate(None)

    def handle_push(self, push) -> None:
        self._client._invalidate(invalidated_keys(push))

    def probe(self) -> list:
        # A linearizable read of a key this link tracks: it fails with MOVED (or CLUSTERDOWN) on
        # a node that no longer leads the key's partition, whose tracking would have gone quiet
        # while another node takes the writes. PING proves only that the socket is alive.
        return ["PING"] if self.probe_key is None else ["VERSION", self.probe_key]

    def note_request(self, args: tuple) -> None:
        if args[0] == "GET":
            self.probe_key = args[1]


class ClientCore:
    """The state both clients keep, and every change to it: near cache, links, refresh timers.

    Subclasses set `self.redis` and `self.cluster` and do the I/O.
    """

    def __init__(
        self,
        near_cache: str | None,
        near_cache_max_entries: int,
        near_cache_max_bytes: int,
        health_check_interval_s: float,
        clock_s: Callable[[], float],
        new_lock: Callable[[], ContextManager],
    ):
        self.mode = near_cache
        self.near = NearCache(near_cache_max_entries, near_cache_max_bytes) if near_cache else None
        self._near_lock = new_lock()
        self._health_check_interval_s = health_check_interval_s
        self._links: dict[str, TrackingLinkState] = {}  # node name -> link; one per node at most
        self._links_lock = new_lock()
        self._clock_s = clock_s  # cached() intervals; tests pass a fake one
        self._refresh_due: dict[bytes, float] = {}  # key -> clock_s() of the next refresh try
        self._refresh_lock = new_lock()
        self.refreshes = 0  # loads this process made for cached()
        self.not_modified = 0  # strict-mode reads answered "still current" (no payload moved)

    # -- near cache ----------------------------------------------------------------------------

    def _invalidate(self, keys: list[bytes] | None) -> None:
        """Forget `keys` (None: everything) and refuse fills in flight."""
        if self.near is None:
            return
        with self._near_lock:
            if keys is None:
                self.near.clear()
            else:
                self.near.invalidate_many(keys)

    def _forget_written(self, keys: list[bytes] | None) -> None:
        """After a delegated call: evict what `written_keys` named ([]: nothing known written)."""
        if keys is None or keys:
            self._invalidate(keys)

    def _lookup(self, key: bytes):
        with self._near_lock:
            return self.near.get(key), self.near.fill_token()

    def _fill(self, key: bytes, value, version: int, token: int) -> None:
        with self._near_lock:
            self.near.fill(key, value, version, token)

    def _apply_vget(self, k: bytes, entry, token: int, reply):
        """The value a strict read returns for VGET `reply`, keeping the near cache in step."""
        vget = parse_vget(reply)
        if vget.missing:
            self._invalidate([k])
            return None
        if vget.not_modified:
            assert entry is not None and entry.version == vget.version
            self.not_modified += 1
            return entry.value
        self._fill(k, vget.value, vget.version, token)
        return vget.value

    def near_cache_stats(self) -> dict:
        """Entries, bytes, hits, misses and evictions of the near cache ({} when there is none)."""
        if self.near is None:
            return {}
        with self._near_lock:
            n = self.near
            return {"entries": len(n), "bytes": n.bytes_used, "hits": n.hits,
                    "misses": n.misses, "evictions": n.evictions,
                    "not_modified": self.not_modified}

    # -- tracking links ------------------------------------------------------------------------

    def _link_named(self, name: str, pool, link_class):
        """The link to node `name`, made with `link_class(pool, self)` the first time."""
        with self._links_lock:
            link = self._links.get(name)
            if link is None:
                link = self._links[name] = link_class(pool, self)
            return link

    def _take_links(self) -> list:
        """Every link, forgotten by the client (for close)."""
        with self._links_lock:
            links = list(self._links.values())
            self._links.clear()
            return links

    def _all_links(self) -> list:
        with self._links_lock:
            return list(self._links.values())

    # -- cached() ------------------------------------------------------------------------------

    def _refresh_turn(self, k: bytes, refresh_every: float) -> bool:
        """Whether this process's timer for `k` is due; if so, restart it (one thread wins)."""
        with self._refresh_lock:
            now = self._clock_s()
            if now < self._refresh_due.get(k, 0.0):
                return False
            self._refresh_due.pop(k, None)
            self._refresh_due[k] = now + refresh_every
            while len(self._refresh_due) > REFRESH_KEYS_MAX:
                del self._refresh_due[next(iter(self._refresh_due))]
            return True
