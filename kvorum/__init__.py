"""kvorum: a strongly consistent, Redis-compatible, distributed in-memory cache."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # The client pulls in redis-py's client side; the server never asks for it, so it is
    # imported only when a program first names kvorum.Client or kvorum.AsyncClient.
    if name in ("Client", "AsyncClient"):
        import kvorum.client
        return getattr(kvorum.client, name)
    raise AttributeError(f"module 'kvorum' has no attribute {name!r}")
