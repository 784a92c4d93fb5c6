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
lock, held for a whole read so that pushes and replies on it are handled in order. Everything
that does no I/O (argument checks, near-cache bookkeeping, reply interpretation, refresh timers,
lease decisions) lives in core.py and is shared with the asyncio client; this file sends and
receives.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

import redis
from redis.cluster import RedisCluster

from kvorum.client.core import (
    HEALTH_CHECK_INTERVAL_S_DEFAULT,
    TRACKING_ERRORS,
    WAIT_S_MAX_DEFAULT,
    ClientCore,
    LeaseWait,
    TrackingLinkState,
    cached_px,
    check_options,
    refresh_lease,
    tracking_connection,
)
from kvorum.client.near_cache import MAX_BYTES_DEFAULT, MAX_ENTRIES_DEFAULT
from kvorum.client.replies import (
    LeaseResult,
    check_tracking_on,
    expiry_args,
    key_bytes,
    leaseget_args,
    mget_keys,
    parse_leaseget,
    vget_args,
    vget_result,
    written_keys,
)

def is_cluster(url: str, redis_kwargs: dict) -> bool:
    """Whether the server at `url` says `cluster_enabled:1` in INFO."""
    with redis.Redis.from_url(url, **redis_kwargs) as probe:
        return int(probe.info("cluster").get("cluster_enabled", 0)) == 1


class _TrackingLink(TrackingLinkState):
    """One RESP3 connection to one node with CLIENT TRACKING ON, and the lock that serializes it."""

    def __init__(self, pool, client: "Client"):
        super().__init__(client, threading.Lock())
        self.conn = tracking_connection(pool, client._health_check_interval_s)
        self.conn.register_connect_callback(self._on_connect)

    def _on_connect(self, conn) -> None:
        # Runs on every connect, first or re-: nothing held from before can be trusted, since
        # invalidations sent while we were away are lost.
        self.reset()
        conn._parser.set_invalidation_push_handler(self.handle_push)
        try:
            conn.send_command("CLIENT", "TRACKING", "ON", check_health=False)
            check_tracking_on(conn.read_response())
        except BaseException:
            # An open connection without tracking must never serve: close it, so the next
            # call connects (and asks for tracking) again.
            conn.disconnect()
            raise

    def drain(self) -> None:
        """Handle every push already received; probe first if the node has been silent too long."""
        conn = self.conn
        if conn._sock is not None and time.monotonic() > conn.next_health_check:
            self.call(*self.probe())
        while conn.can_read(timeout=0):
            conn.read_response(push_request=True)

    def call(self, *args):
        self.note_request(args)
        self.conn.send_command(*args, check_health=False)
        return self.conn.read_response()

    def fail(self) -> None:
        self.reset()
        self.conn.disconnect()

    def close(self) -> None:
        self.conn.disconnect()


class Client(ClientCore):
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
        check_options(near_cache, cluster)
        if cluster == "auto":
            cluster = is_cluster(url, redis_kwargs)
        self.cluster = cluster
        self.redis = (RedisCluster if cluster else redis.Redis).from_url(url, **redis_kwargs)
        super().__init__(near_cache, near_cache_max_entries, near_cache_max_bytes,
                         health_check_interval_s, clock_s, threading.Lock)

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
                self._forget_written(keys)

        return call

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for link in self._take_links():
            link.close()
        self.redis.close()

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
        keys = mget_keys(keys, args)
        if self.mode is None:
            return self.redis.mget(keys)
        if self.mode == "tracking":
            return [self._get_tracking(k) for k in keys]
        looked = [self._lookup(key_bytes(k)) for k in keys]
        pipe = self.redis.pipeline(transaction=False)
        for k, (entry, _) in zip(keys, looked):
            pipe.execute_command(*vget_args(k, entry))
        replies = pipe.execute()
        return [self._apply_vget(key_bytes(k), entry, token, reply)
                for k, (entry, token), reply in zip(keys, looked, replies)]

    def _get_strict(self, key):
        k = key_bytes(key)
        entry, token = self._lookup(k)
        reply = self.redis.execute_command(*vget_args(key, entry))
        return self._apply_vget(k, entry, token, reply)

    def _link_for(self, key) -> _TrackingLink:
        if self.cluster:
            node = self.redis.get_node_from_key(key)
            name, pool = node.name, node.redis_connection.connection_pool
        else:
            name, pool = "", self.redis.connection_pool
        return self._link_named(name, pool, _TrackingLink)

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
        for link in self._all_links():
            with link.lock:
                try:
                    link.call("PING")
                except TRACKING_ERRORS:
                    link.fail()

    # -- leases --------------------------------------------------------------------------------

    def lease_get(self, key, *, lease_ms: int | None = None, stale_ms: int | None = None) -> LeaseResult:
        """LEASEGET: the value, or on a miss a lease token (one caller) or "wait" (the others)."""
        args = leaseget_args(key, lease_ms, stale_ms)
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
        wait = LeaseWait(use_stale, wait_s_max)
        while True:
            found = self.lease_get(key, lease_ms=lease_ms, stale_ms=stale_ms)
            step = wait.next_step(found)
            if step == LeaseWait.SERVE:
                return found.value
            if step == LeaseWait.LOAD_AND_STORE:
                value = loader()
                if value is not None:
                    self.lease_set(key, value, found.token, ex=ex, px=px)
                return value
            if step == LeaseWait.LOAD:
                return loader()
            time.sleep(wait.sleep_s)

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
        px = cached_px(refresh_every, ttl)
        k = key_bytes(key)
        if self._refresh_turn(k, refresh_every):
            lease_key, token, lease_px = refresh_lease(k, refresh_every)
            won = self.redis.set(lease_key, token, nx=True, px=lease_px)
            if won:
                value = loader()
                self.refreshes += 1
                self.set(key, value, px=px)
                return value
        return self.get_or_load(key, loader, px=px)

    # -- versions ------------------------------------------------------------------------------

    def vget(self, key):
        """VGET: (version, value) of `key`, or None when it is missing."""
        return vget_result(self.redis.execute_command("VGET", key))

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
