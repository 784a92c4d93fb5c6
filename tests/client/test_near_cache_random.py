"""A near cache against the server under a random single-threaded workload: never a stale read.

The workload is `client_support.check_near_cache_under_random_writes`; both modes,
the same seeded stream each time. tests/client/test_client_cluster.py runs it
against a 3-node cluster.
"""

from __future__ import annotations

import pytest

from client_support import BlockingAsync, check_near_cache_under_random_writes

KEYS = [f"r{i}" for i in range(6)]
STEPS = 3000


@pytest.mark.parametrize("mode", ["strict", "tracking"])
def test_near_cache_never_serves_a_value_older_than_the_last_acknowledged_write(node, client_factory, mode):
    cached = client_factory(near_cache=mode)
    with node.client() as plain:
        check_near_cache_under_random_writes(cached, plain, KEYS, STEPS, seed=5)
    stats = cached.near_cache_stats()
    assert stats["hits" if mode == "tracking" else "not_modified"] > 100, stats


@pytest.mark.parametrize("mode", ["strict", "tracking"])
def test_async_near_cache_never_serves_a_value_older_than_the_last_acknowledged_write(node, mode):
    import asyncio

    import kvorum
    from client_support import url_of

    loop = asyncio.new_event_loop()
    cached = kvorum.AsyncClient(url_of(node), near_cache=mode, socket_timeout=10)
    try:
        loop.run_until_complete(cached.initialize())
        with node.client() as plain:
            check_near_cache_under_random_writes(BlockingAsync(cached, loop), plain, KEYS, STEPS, seed=7)
        stats = cached.near_cache_stats()
        assert stats["hits" if mode == "tracking" else "not_modified"] > 100, stats
    finally:
        loop.run_until_complete(cached.aclose())
        loop.close()
