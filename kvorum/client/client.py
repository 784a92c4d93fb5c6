"""`kvorum.Client`: redis-py with a near cache, leases and refresh-from-source.

Theory of operation. The client owns one redis-py client (`redis.Redis` for a single node,
`redis.cluster.RedisCluster` for a cluster) and passes every call it does not override straight
to it, so the whole Redis API is there. It overrides the reads the near cache covers (`get`,
`mget`) and, after any call that writes known keys (`set`, `delete`, `incr`, `mset`, ... see
`replies.WRITES_*`), evicts those keys from its own near cache so the process reads its writes.

- `strict` mode: a read of a held key sends `VGET key IFNOTVERSION held`. The cluster answers
  `[held]` (no payload) if the key's version is still `held`, else the new `[version, value]`,
  else nil. The reply is served by the partition leader as a linearizable read at some instant t
  inside the call; a version names exactly one value of one key (versions are never reused, not
  even by a key deleted and created again), so serving the held value after `[held]` returns the
  key's value at t. Since t is after the call began, the result is never older than a
  linearizable read started when the call began (DESIGN.md section 3).
- `tracking` mode: reads that miss go over a dedicated RESP3 connection per node with
  `CLIENT TRACKING ON`; the node then pushes `invalidate [keys]` when any of those keys is
  written, and `invalidate nil` on a flush. A hit is served from memory after draining the pushes
  already received (a non-blocking poll of the socket, no request). Any error, disconnect or
  reconnect of a tracking connection clears the whole near cache before anything is served again
  (the reconnect hook `_TrackingLink._on_connect` clears it, and so does every error path).
  Staleness bound: a hit may miss a write for as long as the invalidation takes to travel from the
  node (which sends it when it applies the write) into this process's socket buffer. If the
  connection goes silent, a hit is served only while the connection has heard from the node within
  `health_check_interval_s`; after that one probe round trip is made first: a linearizable
  `VERSION` of a key read through the link, which fails with MOVED on a node that has lost the
  leadership (and so clears the near cache), or a PING before any key was read.

Both modes share `NearCache` under one lock (`_near_lock`); the tracking connection has its own
lock, held for a whole read so that pushes and replies on it are handled in order.
"""

from __future__ import annotations

import secrets
import threading
import time
from typing import Any, Callable

import redis
from redis.cluster import RedisCluster
from redis.exceptions import ClusterDownError, ConnectionError, MovedError, TimeoutError

from kvorum.client.near_cache import MAX_BYTES_DEFAULT, MAX_ENTRIES_DEFAULT, NearCache
from kvorum.client.replies import (
    NEAR_CACHE_MODES,
    LeaseResult,
    expiry_args,
    invalidated_keys,
    key_bytes,
    parse_leaseget,
    parse_vget,
    written_keys,
)

HEALTH_CHECK_INTERVAL_S_DEFAULT = 1.0
WAIT_BACKOFF_S_MIN = 0.001
WAIT_BACKOFF_S_MAX = 0.1
WAIT_S_MAX_DEFAULT = 5.0
REFRESH_KEYS_MAX = 10_000  # keys whose refresh timers one client remembers (oldest forgotten)
TRACKING_ERRORS = (ConnectionError, TimeoutError, MovedError, ClusterDownError)


def refresh_key(key: bytes) -> bytes:
    """The key holding the refresh lease of `key`, in the same hash slot when `key` has no tag."""
    return key + b":refresh" if b"{" in key else b"{" + key + b"}:refresh"


def is_cluster(url: str, redis_kwargs: dict) -> bool:
    """Whether the server at `url` says `cluster_enabled:1` in INFO."""
    with redis.Redis.from_url(url, **redis_kwargs) as probe:
        return int(probe.info("cluster").get("cluster_enabled", 0)) == 1


class _TrackingLink:
    """One RESP3 connection to one node with CLIENT TRACKING ON, and the lock that serializes it."""

    def __init__(self, pool, client: "Client", health_check_interval_s: float):
        kwargs = dict(pool.connection_kwargs)
        kwargs.update(protocol=3, health_check_interval=health_check_interval_s)
        self.conn = pool.connection_class(**kwargs)
        self.conn.register_connect_callback(self._on_connect)
        self.lock = threading.Lock()
        self._client = client
        self.resets = 0  # how many times this link cleared the near cache (connects and errors)
        self.probe_key = None  # the last key read through this link

    def _on_connect(self, conn) -> None:
        # Runs on every connect, first or re-: nothing held from before can be trusted, since
        # invalidations sent while we were away are lost.
        self.reset()
        conn._parser.set_invalidation_push_handler(self._on_push)
        try:
            conn.send_command("CLIENT", "TRACKING", "ON", check_health=False)
            reply = conn.read_response()
            if reply not in (b"OK", "OK"):
                raise ConnectionError(f"CLIENT TRACKING ON refused: {reply!r}")
        except BaseException:
            # An open connection without tracking must never serve: close it, so the next
            # call connects (and asks for tracking) again.
            conn.disconnect()
            raise

    def _on_push(self, push) -> None:
        self._client._invalidate(invalidated_keys(push))

    def reset(self) -> None:
        self.resets += 1
        self._client._invalidate(None)

    def drain(self) -> None:
        """Handle every push already received; probe first if the node has been silent too long."""
        conn = self.conn
        if conn._sock is not None and time.monotonic() > conn.next_health_check:
            self.call(*self.probe())
        while conn.can_read(timeout=0):
            conn.read_response(push_request=True)

    def probe(self) -> list:
        # A linearizable read of a key this link tracks: it fails with MOVED (or CLUSTERDOWN) on
        # a node that no longer leads the key's partition, whose tracking would have gone quiet
        # while another node takes the writes. PING proves only that the socket is alive.
        return ["PING"] if self.probe_key is None else ["VERSION", self.probe_key]

    def call(self, *args):
        if args[0] == "GET":
            self.probe_key = args[1]
        self.conn.send_command(*args, check_health=False)
        return self.conn.read_response()

    def fail(self) -> None:
        self.reset()
        self.conn.disconnect()

    def close(self) -> None:
        self.conn.disconnect()


class Client:
    """A kvorum client: the redis-py API, plus a near cache, leases and `cached()`.

    `url`: "redis://host:port[/db]". `near_cache`: None, "strict" or "tracking" (see the module
    doc and docs/client.md). `cluster`: "auto" asks the node (INFO cluster_enabled), True or
    False decide. `health_check_interval_s`: in tracking mode, how long a silent tracking
    connection may serve hits before a PING proves it alive. `clock_s`: the monotonic clock that
    times `cached()` refreshes. Other keyword arguments go to redis-py (`decode_responses`,
    `password`, ...).
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379",
        *,
        near_cache: str | None = None,
        near_cache_max_entries: int = MAX_ENTRIES_DEFAULT,
        near_cache_max_bytes: int = MAX_BYTES_DEFAULT,
        cluster: bool | str = "auto",
        health_check_interval_s: float = HEALTH_CHECK_INTERVAL_S_DEFAULT,
        clock_s: Callable[[], float] = time.monotonic,
        **redis_kwargs: Any,
    ):
        if near_cache not in NEAR_CACHE_MODES:
            raise ValueError(f"near_cache must be one of {NEAR_CACHE_MODES}, not {near_cache!r}")
        if cluster not in ("auto", True, False):
            raise ValueError("cluster must be 'auto', True or False")
        if cluster == "auto":
            cluster = is_cluster(url, redis_kwargs)
        self.cluster = cluster
        self.redis = (RedisCluster if cluster else redis.Redis).from_url(url, **redis_kwargs)
        self.mode = near_cache
        self.near = NearCache(near_cache_max_entries, near_cache_max_bytes) if near_cache else None
        self._near_lock = threading.Lock()
        self._health_check_interval_s = health_check_interval_s
        self._links: dict[str, _TrackingLink] = {}  # node name -> link; one per node at most
        self._links_lock = threading.Lock()
        self._clock_s = clock_s  # cached() intervals; tests pass a fake one
        self._refresh_due: dict[bytes, float] = {}  # key -> time.monotonic() of next refresh try
        self._refresh_lock = threading.Lock()
        self.refreshes = 0  # loads this process made for cached()
        self.not_modified = 0  # strict-mode reads answered "still current" (no payload moved)

    # -- plumbing ------------------------------------------------------------------------------

    def __getattr__(self, name: str):
        if name == "redis":  # only when __init__ failed before opening it
            raise AttributeError(name)
        attr = getattr(self.redis, name)
        if self.near is None or not callable(attr):
            return attr

        def call(*args, **kwargs):
            keys = written_keys(name, args)
            try:
                return attr(*args, **kwargs)
            finally:
                if keys is None or keys:
                    self._invalidate(keys)

        return call

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        with self._links_lock:
            for link in self._links.values():
                link.close()
            self._links.clear()
        self.redis.close()

    def _invalidate(self, keys: list[bytes] | None) -> None:
        """Forget `keys` (None: everything) and refuse fills in flight."""
        if self.near is None:
            return
        with self._near_lock:
            if keys is None:
                self.near.clear()
            else:
                self.near.invalidate_many(keys)

    def _lookup(self, key: bytes):
        with self._near_lock:
            return self.near.get(key), self.near.fill_token()

    def _fill(self, key: bytes, value, version: int, token: int) -> None:
        with self._near_lock:
            self.near.fill(key, value, version, token)

    # -- near-cache reads ----------------------------------------------------------------------

    def get(self, key):
        """GET through the near cache (see the module doc for what each mode guarantees)."""
        if self.mode is None:
            return self.redis.get(key)
        if self.mode == "strict":
            return self._get_strict(key)
        return self._get_tracking(key)

    def mget(self, keys, *args):
        """MGET through the near cache: strict mode sends every VGET in one pipeline."""
        keys = list(keys) + list(args) if not isinstance(keys, (str, bytes)) else [keys, *args]
        if self.mode is None:
            return self.redis.mget(keys)
        if self.mode == "tracking":
            return [self._get_tracking(k) for k in keys]
        looked = [self._lookup(key_bytes(k)) for k in keys]
        pipe = self.redis.pipeline(transaction=False)
        for k, (entry, _) in zip(keys, looked):
            pipe.execute_command(*self._vget_args(k, entry))
        replies = pipe.execute()
        return [self._apply_vget(key_bytes(k), entry, token, reply)
                for k, (entry, token), reply in zip(keys, looked, replies)]

    @staticmethod
    def _vget_args(key, entry) -> list:
        if entry is None:
            return ["VGET", key]
        return ["VGET", key, "IFNOTVERSION", entry.version]

    def _apply_vget(self, k: bytes, entry, token: int, reply):
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

    def _get_strict(self, key):
        k = key_bytes(key)
        entry, token = self._lookup(k)
        reply = self.redis.execute_command(*self._vget_args(key, entry))
        return self._apply_vget(k, entry, token, reply)

    def _link_for(self, key) -> _TrackingLink:
        if self.cluster:
            node = self.redis.get_node_from_key(key)
            name, pool = node.name, node.redis_connection.connection_pool
        else:
            name, pool = "", self.redis.connection_pool
        with self._links_lock:
            link = self._links.get(name)
            if link is None:
                link = self._links[name] = _TrackingLink(pool, self, self._health_check_interval_s)
            return link

    def _get_tracking(self, key):
        k = key_bytes(key)
        try:
            return self._get_tracking_once(k, key)
        except TRACKING_ERRORS:
            # The link was cleared and closed; a cluster may have moved the slot. One retry
            # reconnects (clearing again) and re-reads the map when the node changed.
            if self.cluster:
                self.redis.nodes_manager.initialize()
            return self._get_tracking_once(k, key)

    def _get_tracking_once(self, k: bytes, key):
        link = self._link_for(key)
        with link.lock:
            try:
                link.drain()
                entry, token = self._lookup(k)
                if entry is not None:
                    return entry.value
                value = link.call("GET", key)
            except TRACKING_ERRORS:
                link.fail()
                raise
            if value is not None:
                self._fill(k, value, 0, token)
            return value

    def sync(self) -> None:
        """Apply every invalidation for writes acknowledged before this call (tracking mode).

        One PING round trip on each tracking connection: the node queues an invalidation when it
        applies a write, before it acknowledges the write, so the PING reply comes after every
        such push. A failed link clears the near cache instead, which is just as fresh.
        """
        with self._links_lock:
            links = list(self._links.values())
        for link in links:
            with link.lock:
                try:
                    link.call("PING")
                except TRACKING_ERRORS:
                    link.fail()

    # -- leases --------------------------------------------------------------------------------

    def lease_get(self, key, *, lease_ms: int | None = None, stale_ms: int | None = None) -> LeaseResult:
        """LEASEGET: the value, or on a miss a lease token (one caller) or "wait" (the others)."""
        args = ["LEASEGET", key]
        if lease_ms is not None:
            args += ["LEASE", int(lease_ms)]
        if stale_ms is not None:
            args += ["STALE", int(stale_ms)]
        return parse_leaseget(self.redis.execute_command(*args))

    def lease_set(self, key, value, token, *, ex: float | None = None, px: int | None = None) -> bool:
        """LEASESET: store `value` only if nothing wrote or deleted `key` since `token` was issued."""
        try:
            reply = self.redis.execute_command("LEASESET", key, value, token, *expiry_args(ex, px))
        finally:
            self._invalidate([key_bytes(key)])
        return reply is not None

    def get_or_load(
        self,
        key,
        loader: Callable[[], Any],
        *,
        lease_ms: int | None = None,
        ex: float | None = None,
        px: int | None = None,
        use_stale: bool = False,
        stale_ms: int | None = None,
        wait_s_max: float = WAIT_S_MAX_DEFAULT,
    ):
        """The value of `key`, loading it with `loader()` under a lease on a miss.

        Exactly one caller per miss gets the lease, loads and sets; the others wait with a
        bounded, doubling back-off (from WAIT_BACKOFF_S_MIN to WAIT_BACKOFF_S_MAX) and read
        again, or return the stale value at once when `use_stale` is set and the server offers
        one (asked for with `stale_ms`, LEASEGET's STALE window).
        After `wait_s_max` a waiter loads for itself and returns without storing, so a lease
        holder that died delays readers by at most that long. `loader()` returning None is not
        stored.
        """
        if self.near is not None:
            value = self.get(key)
            if value is not None:
                return value
        deadline = time.monotonic() + wait_s_max
        backoff_s = WAIT_BACKOFF_S_MIN
        while True:
            found = self.lease_get(key, lease_ms=lease_ms, stale_ms=stale_ms)
            if found.hit:
                return found.value
            if found.lease:
                value = loader()
                if value is not None:
                    self.lease_set(key, value, found.token, ex=ex, px=px)
                return value
            if use_stale and found.value is not None:
                return found.value
            if time.monotonic() + backoff_s > deadline:
                return loader()
            time.sleep(backoff_s)
            backoff_s = min(backoff_s * 2, WAIT_BACKOFF_S_MAX)

    # -- refresh from a slow source ------------------------------------------------------------

    def cached(self, key, loader: Callable[[], Any], *, refresh_every: float, ttl: float | None = None):
        """The value of `key`, reloaded from `loader()` by one process of the fleet per interval.

        Each process keeps its own timer on time.monotonic(). When its timer is due, it tries
        to take the refresh lease (`SET {key}:refresh <token> NX PX refresh_every`); the one
        process that gets it calls `loader()` and writes the key, and every other process reads
        the new version through its near cache (strict: the version check; tracking: the
        invalidation). No wall clock is compared across machines: the lease expires on the
        cluster's own timer and each process measures its intervals locally. While any process
        calls `cached()`, the key is reloaded at most once and at least once every two intervals
        (a process whose try found the lease taken waits one more interval of its own).
        A missing key (first use, or expired by `ttl`) is loaded once under a miss lease.
        The process that ran `loader()` gets its return value; the others get what the cluster
        stores (bytes, or str with `decode_responses=True`).
        """
        if refresh_every <= 0:
            raise ValueError("refresh_every must be positive")
        k = key_bytes(key)
        px = None if ttl is None else max(1, int(ttl * 1000))
        if self._refresh_turn(k, refresh_every):
            won = self.redis.set(refresh_key(k), secrets.token_hex(8), nx=True,
                                 px=max(1, int(refresh_every * 1000)))
            if won:
                value = loader()
                self.refreshes += 1
                self.set(key, value, px=px)
                return value
        return self.get_or_load(key, loader, px=px)

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

    # -- versions ------------------------------------------------------------------------------

    def vget(self, key):
        """VGET: (version, value) of `key`, or None when it is missing."""
        reply = parse_vget(self.redis.execute_command("VGET", key))
        return None if reply.missing else (reply.version, reply.value)

    def versions(self, *keys) -> list[int]:
        """VERSION: each key's version, 0 for a missing key."""
        return [int(v) for v in self.redis.execute_command("VERSION", *keys)]

    def set_ifnewer(self, key, value, ext_version: int, *, ex: float | None = None,
                    px: int | None = None) -> bool:
        """SET ... IFNEWER: store unless the key's external version is already >= `ext_version`."""
        try:
            reply = self.redis.execute_command("SET", key, value, *expiry_args(ex, px),
                                               "IFNEWER", int(ext_version))
        finally:
            self._invalidate([key_bytes(key)])
        return reply is not None

    def near_cache_stats(self) -> dict:
        """Entries, bytes, hits, misses and evictions of the near cache ({} when there is none)."""
        if self.near is None:
            return {}
        with self._near_lock:
            n = self.near
            return {"entries": len(n), "bytes": n.bytes_used, "hits": n.hits,
                    "misses": n.misses, "evictions": n.evictions,
                    "not_modified": self.not_modified}
