"""`kvorum.AsyncClient`: the asyncio twin of `kvorum.Client`, on redis.asyncio.

The modes, guarantees and methods are those of kvorum/client/client.py (read its theory of
operation first); only the I/O differs. The near cache needs no lock of its own here: every
touch of it is synchronous code between two awaits, on the one event loop that owns the client.
Before a hit is served, its tracking connection's pending pushes are read: those in its
StreamReader buffer, and those still in the kernel's socket buffer, which the loop has not moved
to the StreamReader yet (it does so only when it next polls; a write acknowledged on another
connection can resume the reading task first). So the staleness bound is the same as the
blocking client's.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import time
from typing import Any, Awaitable, Callable

import redis.asyncio as aredis
from redis.asyncio.cluster import RedisCluster

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


async def is_cluster(url: str, redis_kwargs: dict) -> bool:
    """Whether the server at `url` says `cluster_enabled:1` in INFO."""
    probe = aredis.Redis.from_url(url, **redis_kwargs)
    try:
        return int((await probe.info("cluster")).get("cluster_enabled", 0)) == 1
    finally:
        await probe.aclose()


def _socket_readable(conn) -> bool:
    """Whether the kernel holds bytes (or EOF) for `conn` that its StreamReader has not read yet."""
    sock = conn._writer.transport.get_extra_info("socket") if conn._writer is not None else None
    if sock is None:
        return False
    # poll, not select: select refuses descriptors past FD_SETSIZE (1024), which a busy process reaches.
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    return bool(poller.poll(0))


class _TrackingLink(TrackingLinkState):
    """One RESP3 connection to one node with CLIENT TRACKING ON, and the lock that serializes it."""

    def __init__(self, pool, client: "AsyncClient"):
        super().__init__(client, asyncio.Lock())
        self.conn = tracking_connection(pool, client._health_check_interval_s)
        self.conn.register_connect_callback(self._on_connect)

    async def _on_connect(self, conn) -> None:
        # Every connect, first or re-: invalidations sent while we were away are lost.
        self.reset()
        conn._parser.set_invalidation_push_handler(self._on_push)
        try:
            await conn.send_command("CLIENT", "TRACKING", "ON", check_health=False)
            check_tracking_on(await conn.read_response())
        except BaseException:
            # An open connection without tracking must never serve (see client.py).
            await conn.disconnect(nowait=True)
            raise

    async def _on_push(self, push) -> None:
        self.handle_push(push)

    async def drain(self) -> None:
        conn = self.conn
        if not conn.is_connected:
            await conn.connect()
        elif asyncio.get_running_loop().time() > conn.next_health_check:
            await self.call(*self.probe())
        while await conn.can_read() or _socket_readable(conn):
            await conn.read_response(push_request=True)

    async def call(self, *args):
        self.note_request(args)
        await self.conn.send_command(*args, check_health=False)
        return await self.conn.read_response()

    async def fail(self) -> None:
        self.reset()
        await self.conn.disconnect(nowait=True)

    async def close(self) -> None:
        await self.conn.disconnect()


class AsyncClient(ClientCore):
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
        check_options(near_cache, cluster)
        self._url = url
        self._redis_kwargs = redis_kwargs
        self.cluster = cluster
        self.redis = None if cluster == "auto" else self._open(cluster)
        self._ready = False  # set by initialize()
        # No locks: this state is touched only between awaits, on the loop that owns the client.
        super().__init__(near_cache, near_cache_max_entries, near_cache_max_bytes,
                         health_check_interval_s, clock_s, contextlib.nullcontext)

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
        for link in self._take_links():
            await link.close()
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
                self._forget_written(keys)

        return call

    # -- near-cache reads ----------------------------------------------------------------------

    async def get(self, key):
        await self.initialize()
        if self.mode is None:
            return await self.redis.get(key)
        if self.mode == "strict":
            k = key_bytes(key)
            entry, token = self._lookup(k)
            reply = await self.redis.execute_command(*vget_args(key, entry))
            return self._apply_vget(k, entry, token, reply)
        return await self._get_tracking(key)

    async def mget(self, keys, *args):
        await self.initialize()
        keys = mget_keys(keys, args)
        if self.mode is None:
            return await self.redis.mget(keys)
        if self.mode == "tracking":
            return [await self._get_tracking(k) for k in keys]
        looked = [self._lookup(key_bytes(k)) for k in keys]
        pipe = self.redis.pipeline(transaction=False)
        for k, (entry, _) in zip(keys, looked):
            pipe.execute_command(*vget_args(k, entry))
        replies = await pipe.execute()
        return [self._apply_vget(key_bytes(k), entry, token, reply)
                for k, (entry, token), reply in zip(keys, looked, replies)]

    def _link_for(self, key) -> _TrackingLink:
        if self.cluster:
            node = self.redis.get_node_from_key(key)
            name, pool = node.name, _NodePool(node)
        else:
            name, pool = "", self.redis.connection_pool
        return self._link_named(name, pool, _TrackingLink)

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
                entry, token = self._lookup(k)
                if entry is not None:
                    return entry.value
                value = await link.call("GET", key)
            except TRACKING_ERRORS:
                await link.fail()
                raise
            if value is not None:
                self._fill(k, value, 0, token)
            return value

    async def sync(self) -> None:
        """As `Client.sync`: one PING on each tracking connection."""
        for link in self._all_links():
            async with link.lock:
                try:
                    await link.call("PING")
                except TRACKING_ERRORS:
                    await link.fail()

    # -- leases --------------------------------------------------------------------------------

    async def lease_get(self, key, *, lease_ms: int | None = None,
                        stale_ms: int | None = None) -> LeaseResult:
        await self.initialize()
        args = leaseget_args(key, lease_ms, stale_ms)
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
        wait = LeaseWait(use_stale, wait_s_max)
        while True:
            found = await self.lease_get(key, lease_ms=lease_ms, stale_ms=stale_ms)
            step = wait.next_step(found)
            if step == LeaseWait.SERVE:
                return found.value
            if step == LeaseWait.LOAD_AND_STORE:
                value = await _call(loader)
                if value is not None:
                    await self.lease_set(key, value, found.token, ex=ex, px=px)
                return value
            if step == LeaseWait.LOAD:
                return await _call(loader)
            await asyncio.sleep(wait.sleep_s)

    async def cached(self, key, loader, *, refresh_every: float, ttl: float | None = None):
        """As `Client.cached`."""
        px = cached_px(refresh_every, ttl)
        await self.initialize()
        k = key_bytes(key)
        if self._refresh_turn(k, refresh_every):
            lease_key, token, lease_px = refresh_lease(k, refresh_every)
            won = await self.redis.set(lease_key, token, nx=True, px=lease_px)
            if won:
                value = await _call(loader)
                self.refreshes += 1
                await self.set(key, value, px=px)
                return value
        return await self.get_or_load(key, loader, px=px)

    # -- versions ------------------------------------------------------------------------------

    async def vget(self, key):
        await self.initialize()
        return vget_result(await self.redis.execute_command("VGET", key))

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


class _NodePool:
    """The connection class and arguments of one asyncio cluster node, shaped like a pool."""

    def __init__(self, node):
        self.connection_class = node.connection_class
        self.connection_kwargs = node.connection_kwargs


async def _call(loader):
    value = loader()
    if asyncio.iscoroutine(value):
        value = await value
    return value
