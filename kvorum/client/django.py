"""A Django cache backend: Django's own RedisCache, talking through `kvorum.Client`.

Django's `django.core.cache.backends.redis.RedisCache` already speaks to kvorum unchanged (it
uses SET EX/NX, GET, MGET, DEL, INCRBY, EXPIRE, PERSIST, FLUSHDB and MULTI/MSET/EXPIRE/EXEC).
This backend keeps all of it and swaps the redis-py client it uses for a `kvorum.Client` per
server URL, so reads go through the near cache:

    CACHES = {
        "default": {
            "BACKEND": "kvorum.client.django.KvorumCache",
            "LOCATION": "redis://127.0.0.1:6379",
            "OPTIONS": {"near_cache": "strict", "near_cache_max_entries": 10_000},
        }
    }

OPTIONS `near_cache` ("strict", "tracking" or None), `near_cache_max_entries`,
`near_cache_max_bytes` and `cluster` go to `kvorum.Client`; the rest go to redis-py as with
Django's RedisCache. `cache.get` and `cache.get_many` are served through the near cache; every
write through this backend evicts its keys locally, and writes from elsewhere are caught by the
version check (strict) or the invalidation push (tracking). The clients, and so the near
cache, live as long as the backend: Django's `close()` after each request leaves them open, as
it leaves RedisCache's connection pools.
"""

from __future__ import annotations

from django.core.cache.backends.redis import RedisCache, RedisCacheClient

from kvorum.client.client import Client
from kvorum.client.replies import key_bytes

CLIENT_OPTIONS = ("near_cache", "near_cache_max_entries", "near_cache_max_bytes", "cluster")


class KvorumCacheClient(RedisCacheClient):
    """Django's RedisCacheClient with one `kvorum.Client` per server in place of redis.Redis."""

    def __init__(self, servers, **options):
        self._client_options = {name: options.pop(name) for name in CLIENT_OPTIONS
                                if name in options}
        super().__init__(servers, **options)
        self._clients: dict[int, Client] = {}

    def get_client(self, key=None, *, write=False):
        index = self._get_connection_pool_index(write)
        client = self._clients.get(index)
        if client is None:
            redis_options = {k: v for k, v in self._pool_options.items() if k != "parser_class"}
            client = self._clients[index] = Client(self._servers[index], **self._client_options,
                                                   **redis_options)
        return client

    def set_many(self, data, timeout):
        # Django writes these in one MULTI pipeline, which bypasses the client's per-call
        # eviction; evict here so this process reads its own writes.
        super().set_many(data, timeout)
        self.get_client(write=True)._invalidate([key_bytes(k) for k in data])


class KvorumCache(RedisCache):
    """`django.core.cache.backends.redis.RedisCache` with kvorum's near cache (module doc)."""

    def __init__(self, server, params):
        super().__init__(server, params)
        self._class = KvorumCacheClient
