"""The kvorum Python client: redis-py with a near cache, leases and cache/database helpers.

`Client` (blocking) and `AsyncClient` (asyncio) have the same API; docs/client.md describes it.
They are imported on first use, so that importing `kvorum` (as the server does) costs nothing.
"""

__all__ = ["AsyncClient", "Client", "LeaseResult", "NearCache"]


def __getattr__(name: str):
    if name == "Client":
        from kvorum.client.client import Client
        return Client
    if name == "AsyncClient":
        from kvorum.client.aio import AsyncClient
        return AsyncClient
    if name == "LeaseResult":
        from kvorum.client.replies import LeaseResult
        return LeaseResult
    if name == "NearCache":
        from kvorum.client.near_cache import NearCache
        return NearCache
    raise AttributeError(f"module 'kvorum.client' has no attribute {name!r}")
