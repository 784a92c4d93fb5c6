"""`kvorum.AsyncClient`: the asyncio twin of `kvorum.Client`, on redis.asyncio.

The modes, guarantees and methods are those of kvorum/client/client.py (read its theory of
operation first); only the I/O differs. The near cache needs no lock of its own here: every
touch of it is synchronous code between two awaits, on the one event loop that owns the client.
A tracking connection's pushes land in its StreamReader buffer whenever the loop runs, and a hit
drains that buffer before it is served, so the staleness bound is the same as the blocking
client's.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any, Awaitable, Callable

import redis.asyncio as aredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ConnectionError

from kvorum.client.client import (
    HEALTH_CHECK_INTERVAL_S_DEFAULT,
    REFRESH_KEYS_MAX,
    TRACKING_ERRORS,
    WAIT_BACKOFF_S_MAX,
    WAIT_BACKOFF_S_MIN,
    WAIT_S_MAX_DEFAULT,
    refresh_key,
)
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


async def is_cluster(url: str, redis_kwargs: dict) -> bool:
    """Whether the server at `url` says `cluster_enabled:1` in INFO."""
    probe = aredis.Redis.from_url(url, **redis_kwargs)
    try:
        return int((await probe.info("cluster")).get("cluster_enabled", 0)) == 1
    finally:
        await probe.aclose()


class _TrackingLink:
    """One RESP3 connection to one node with CLIENT TRACKING ON, and the lock that serializes it."""

    def __init__(self, pool, client: "AsyncClient", health_check_interval_s: float):
        kwargs = dict(pool.connection_kwargs)
        kwargs.update(protocol=3, health_check_interval=health_check_interval_s)
        self.conn = pool.connection_class(**kwargs)
        self.conn.register_connect_callback(self._on_connect)
        self.lock = asyncio.Lock()
        self._client = client
        self.resets = 0
        self.probe_key = None  # the last key read through this link

    async def _on_connect(self, conn) -> None:
        # Every connect, first or re-: invalidations sent while we were away are lost.
        self.reset()
        conn._parser.set_invalidation_push_handler(self._on_push)
        try:
            await conn.send_command("CLIENT", "TRACKING", "ON", check_health=False)
            reply = await conn.read_response()
            if reply not in (b"OK", "OK"):
                raise ConnectionError(f"CLIENT TRACKING ON refused: {reply!r}")
        except BaseException:
            # An open connection without tracking must never serve (see client.py).
            await conn.disconnect(nowait=True)
            raise

    async def _on_push(self, push) -> None:
        self._client._invalidate(invalidated_keys(push))

    def reset(self) -> None:
        self.resets += 1
        self._client._invalidate(None)

    async def drain(self) -> None:
        conn = self.conn
        if not conn.is_connected:
            await conn.connect()
        elif asyncio.get_running_loop().time() > conn.next_health_check:
            await self.call(*self.probe())
        while await conn.can_read():
            await conn.read_response(push_request=True)

    def probe(self) -> list:
        # As in client.py: a linearizable read that fails on a node that no longer leads.
        return ["PING"] if self.probe_key is None else ["VERSION", self.probe_key]

    async def call(self, *args):
        if args[0] == "GET":
            self.probe_key = args[1]
        await self.conn.send_command(*args, check_health=False)
        return await self.conn.read_response()

    async def fail(self) -> None:
        self.reset()
        await self.conn.disconnect(nowait=True)

    async def close(self) -> None:
        await self.conn.disconnect()


class AsyncClient:
    """The asyncio kvorum client; `await AsyncClient.connect(url, ...)` or construct and `await
    client.initialize()`. Same arguments and methods as `kvorum.Client`, as coroutines."""

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
        self._url = url
        self._redis_kwargs = redis_kwargs
        self.cluster = cluster
        self.redis = None if cluster == "auto" else self._open(cluster)
        self._ready = False  # set by initialize()
        self.mode = near_cache
        self.near = NearCache(near_cache_max_entries, near_cache_max_bytes) if near_cache else None
        self._health_check_interval_s = health_check_interval_s
        self._links: dict[str, _TrackingLink] = {}
        self._clock_s = clock_s  # cached() intervals; tests pass a fake one
        self._refresh_due: dict[bytes, float] = {}
        self.refreshes = 0
        self.not_modified = 0

    def _open(self, cluster: bool):
        return (RedisCluster if cluster else aredis.Redis).from_url(self._url, **self._redis_kwargs)

    @classmethod
    async def connect(cls, url: str = "redis://127.0.0.1:6379", **kwargs) -> "AsyncClient":
        client = cls(url, **kwargs)
        await client.initialize()
        return client

    async def initialize(self) -> "AsyncClient":
        """Decide single node or cluster (when `cluster="auto"`) and learn the slot map; idempotent."""
        if self._ready:
            return self
        if self.redis is None:
            self.cluster = await is_cluster(self._url, self._redis_kwargs)
            self.redis = self._open(self.cluster)
        if self.cluster:
            # Tracking mode picks a node by key before any command would have loaded the map.
            await self.redis.initialize()
        self._ready = True
        return self

    async def __aenter__(self):
        return await self.initialize()

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        for link in self._links.values():
            await link.close()
        self._links.clear()
        if self.redis is not None:
            await self.redis.aclose()

    def __getattr__(self, name: str):
        if name in ("redis", "_ready"):  # only when __init__ failed before setting them
            raise AttributeError(name)
        if self.redis is None:
            raise RuntimeError("AsyncClient used before initialize() (or async with)")
        attr = getattr(self.redis, name)
        if self.near is None or not callable(attr):
            return attr

        async def call(*args, **kwargs):
            keys = written_keys(name, args)
            try:
                return await attr(*args, **kwargs)
            finally:
                if keys is None or keys:
                    self._invalidate(keys)

        return call

    def _invalidate(self, keys: list[bytes] | None) -> None:
        if self.near is None:
            return
        if keys is None:
            self.near.clear()
        else:
            self.near.invalidate_many(keys)

    # -- near-cache reads ----------------------------------------------------------------------

    async def get(self, key):
        await self.initialize()
        if self.mode is None:
            return await self.redis.get(key)
        if self.mode == "strict":
            k = key_bytes(key)
            entry, token = self.near.get(k), self.near.fill_token()
            reply = await self.redis.execute_command(*_vget_args(key, entry))
            return self._apply_vget(k, entry, token, reply)
        return await self._get_tracking(key)

    async def mget(self, keys, *args):
        await self.initialize()
        keys = list(keys) + list(args) if not isinstance(keys, (str, bytes)) else [keys, *args]
        if self.mode is None:
            return await self.redis.mget(keys)
        if self.mode == "tracking":
            return [await self._get_tracking(k) for k in keys]
        looked = [(self.near.get(key_bytes(k)), self.near.fill_token()) for k in keys]
        pipe = self.redis.pipeline(transaction=False)
        for k, (entry, _) in zip(keys, looked):
            pipe.execute_command(*_vget_args(k, entry))
        replies = await pipe.execute()
        return [self._apply_vget(key_bytes(k), entry, token, reply)
                for k, (entry, token), reply in zip(keys, looked, replies)]

    def _apply_vget(self, k: bytes, entry, token: int, reply):
        vget = parse_vget(reply)
        if vget.missing:
            self._invalidate([k])
            return None
        if vget.not_modified:
            assert entry is not None and entry.version == vget.version
            self.not_modified += 1
            return entry.value
        self.near.fill(k, vget.value, vget.version, token)
        return vget.value

    def _link_for(self, key) -> _TrackingLink:
        if self.cluster:
            node = self.redis.get_node_from_key(key)
            name, pool = node.name, _NodePool(node)
        else:
            name, pool = "", self.redis.connection_pool
        link = self._links.get(name)
        if link is None:
            link = self._links[name] = _TrackingLink(pool, self, self._health_check_interval_s)
        return link

    async def _get_tracking(self, key):
        k = key_bytes(key)
        try:
            return await self._get_tracking_once(k, key)
        except TRACKING_ERRORS:
            if self.cluster:
                await self.redis.nodes_manager.initialize()
            return await self._get_tracking_once(k, key)

    async def _get_tracking_once(self, k: bytes, key):
        link = self._link_for(key)
        async with link.lock:
            try:
                await link.drain()
                entry, token = self.near.get(k), self.near.fill_token()
                if entry is not None:
                    return entry.value
                value = await link.call("GET", key)
            except TRACKING_ERRORS:
                await link.fail()
                raise
            if value is not None:
                self.near.fill(k, value, 0, token)
            return value

    async def sync(self) -> None:
        """As `Client.sync`: one PING on each tracking connection."""
        for link in list(self._links.values()):
            async with link.lock:
                try:
                    await link.call("PING")
                except TRACKING_ERRORS:
                    await link.fail()

    # -- leases --------------------------------------------------------------------------------

    async def lease_get(self, key, *, lease_ms: int | None = None,
                        stale_ms: int | None = None) -> LeaseResult:
        await self.initialize()
        args = ["LEASEGET", key]
        if lease_ms is not None:
            args += ["LEASE", int(lease_ms)]
        if stale_ms is not None:
            args += ["STALE", int(stale_ms)]
        return parse_leaseget(await self.redis.execute_command(*args))

    async def lease_set(self, key, value, token, *, ex: float | None = None,
                        px: int | None = None) -> bool:
        await self.initialize()
        try:
            reply = await self.redis.execute_command("LEASESET", key, value, token,
                                                     *expiry_args(ex, px))
        finally:
            self._invalidate([key_bytes(key)])
        return reply is not None

    async def get_or_load(
        self,
        key,
        loader: Callable[[], Awaitable[Any] | Any],
        *,
        lease_ms: int | None = None,
        ex: float | None = None,
        px: int | None = None,
        use_stale: bool = False,
        stale_ms: int | None = None,
        wait_s_max: float = WAIT_S_MAX_DEFAULT,
    ):
        """As `Client.get_or_load`; `loader` may be a plain function or a coroutine function."""
        if self.near is not None:
            value = await self.get(key)
            if value is not None:
                return value
        deadline = time.monotonic() + wait_s_max
        backoff_s = WAIT_BACKOFF_S_MIN
        while True:
            found = await self.lease_get(key, lease_ms=lease_ms, stale_ms=stale_ms)
            if found.hit:
                return found.value
            if found.lease:
                value = await _call(loader)
                if value is not None:
                    await self.lease_set(key, value, found.token, ex=ex, px=px)
                return value
            if use_stale and found.value is not None:
                return found.value
            if time.monotonic() + backoff_s > deadline:
                return await _call(loader)
            await asyncio.sleep(backoff_s)
            backoff_s = min(backoff_s * 2, WAIT_BACKOFF_S_MAX)

    async def cached(self, key, loader, *, refresh_every: float, ttl: float | None = None):
        """As `Client.cached`."""
        if refresh_every <= 0:
            raise ValueError("refresh_every must be positive")
        await self.initialize()
        k = key_bytes(key)
        px = None if ttl is None else max(1, int(ttl * 1000))
        if self._refresh_turn(k, refresh_every):
            won = await self.redis.set(refresh_key(k), secrets.token_hex(8), nx=True,
                                       px=max(1, int(refresh_every * 1000)))
            if won:
                value = await _call(loader)
                self.refreshes += 1
                await self.set(key, value, px=px)
                return value
        return await self.get_or_load(key, loader, px=px)

    def _refresh_turn(self, k: bytes, refresh_every: float) -> bool:
        """Whether this process's timer for `k` is due; if so, restart it."""
        now = self._clock_s()
        if now < self._refresh_due.get(k, 0.0):
            return False
        self._refresh_due.pop(k, None)
        self._refresh_due[k] = now + refresh_every
        while len(self._refresh_due) > REFRESH_KEYS_MAX:
            del self._refresh_due[next(iter(self._refresh_due))]
        return True

    # -- versions ------------------------------------------------------------------------------

    async def vget(self, key):
        await self.initialize()
        reply = parse_vget(await self.redis.execute_command("VGET", key))
        return None if reply.missing else (reply.version, reply.value)

    async def versions(self, *keys) -> list[int]:
        await self.initialize()
        return [int(v) for v in await self.redis.execute_command("VERSION", *keys)]

    async def set_ifnewer(self, key, value, ext_version: int, *, ex: float | None = None,
                          px: int | None = None) -> bool:
        await self.initialize()
        try:
            reply = await self.redis.execute_command("SET", key, value, *expiry_args(ex, px),
                                                     "IFNEWER", int(ext_version))
        finally:
            self._invalidate([key_bytes(key)])
        return reply is not None

    def near_cache_stats(self) -> dict:
        if self.near is None:
            return {}
        n = self.near
        return {"entries": len(n), "bytes": n.bytes_used, "hits": n.hits, "misses": n.misses,
                "evictions": n.evictions, "not_modified": self.not_modified}


class _NodePool:
    """The connection class and arguments of one asyncio cluster node, shaped like a pool."""

    def __init__(self, node):
        self.connection_class = node.connection_class
        self.connection_kwargs = node.connection_kwargs


def _vget_args(key, entry) -> list:
    if entry is None:
        return ["VGET", key]
    return ["VGET", key, "IFNOTVERSION", entry.version]


async def _call(loader):
    value = loader()
    if asyncio.iscoroutine(value):
        value = await value
    return value
