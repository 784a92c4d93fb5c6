"""Near-cache modes against a 3-node replicated kvorum cluster, with a leader failover in the middle.

The clients find the cluster by themselves (INFO says cluster_enabled:1) and route with redis-py's
RedisCluster. After the leader is killed, a write is retried until the new leader takes it (the
only waiting here is for the election); from then on every read that begins after the write was
acknowledged must return it, and a key nobody wrote keeps its version across the failover.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import redis

import kvorum
from client_support import BlockingAsync, check_near_cache_under_random_writes, lease_fill, stale_rounds
from cluster_process import Cluster

ELECTION_TIMEOUT_S = 30.0
POLL_S = 0.05


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    try:
        c.wait_leader()
        yield c
    finally:
        c.stop()


def eventually(call, timeout_s: float = ELECTION_TIMEOUT_S):
    """`call()` retried through the election that follows a leader's death."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return call()
        except (redis.ConnectionError, redis.TimeoutError, redis.exceptions.ClusterError,
                redis.ResponseError):
            if time.monotonic() > deadline:
                raise
            time.sleep(POLL_S)


def failover_round(cluster, mode: str) -> None:
    with kvorum.Client(cluster.url, socket_timeout=5) as writer:
        readers = [kvorum.Client(cluster.url, near_cache=mode, socket_timeout=5) for _ in range(2)]
        try:
            assert writer.cluster and all(r.cluster for r in readers)
            writer.set("cfg", "v1")
            writer.set("other", "o1")
            for r in readers:
                assert r.mget(["cfg", "other"]) == [b"v1", b"o1"]
                assert r.get("cfg") == b"v1"
            cluster.kill(cluster.wait_leader())
            eventually(lambda: writer.set("cfg", "v2"))
            for r in readers:
                # No sync() first: whatever the reader's connections went through, a read that
                # returns at all returns the acknowledged write.
                assert eventually(lambda: r.get("cfg")) == b"v2"
                assert eventually(lambda: r.get("other")) == b"o1"
            writer.set("cfg", "v3")
            for r in readers:
                r.sync()
                assert r.get("cfg") == b"v3"
        finally:
            for r in readers:
                r.close()
        return readers


def test_strict_near_cache_across_a_leader_failover(cluster):
    readers = failover_round(cluster, "strict")
    # One check before the failover ("cfg"); one after it ("other", not written: its version
    # survived the failover, so the check moved no value).
    assert [r.near_cache_stats()["not_modified"] for r in readers] == [2, 2]

    async def async_reads():
        async with kvorum.AsyncClient(cluster.url, near_cache="strict") as reader:
            assert reader.cluster
            assert await reader.get("cfg") == b"v3"
            assert await reader.mget(["cfg", "other"]) == [b"v3", b"o1"]
            return reader.near_cache_stats()["not_modified"]

    assert asyncio.run(async_reads()) == 1


def test_tracking_near_cache_across_a_leader_failover(cluster):
    readers = failover_round(cluster, "tracking")
    assert all(r.near_cache_stats()["hits"] >= 1 for r in readers)


async def eventually_async(call, timeout_s: float = ELECTION_TIMEOUT_S):
    """`await call()` retried through the election that follows a leader's death."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return await call()
        except (redis.ConnectionError, redis.TimeoutError, redis.exceptions.ClusterError,
                redis.ResponseError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(POLL_S)


def test_async_tracking_near_cache_across_a_leader_failover(cluster):
    async def scenario():
        with kvorum.Client(cluster.url, socket_timeout=5) as writer:
            writer.set("cfg", "v1")
            writer.set("other", "o1")
            async with kvorum.AsyncClient(cluster.url, near_cache="tracking", socket_timeout=5) as reader:
                assert reader.cluster
                assert await reader.get("cfg") == b"v1"
                assert await reader.get("cfg") == b"v1"  # from memory
                hits_before = reader.near_cache_stats()["hits"]
                assert hits_before >= 1
                writer.set("cfg", "v2")
                await reader.sync()
                assert await reader.get("cfg") == b"v2"  # the invalidation dropped v1
                cluster.kill(cluster.wait_leader())
                eventually(lambda: writer.set("cfg", "v3"))
                # The tracking connection died with the leader: the whole cache went with
                # it, so whatever read returns at all returns the acknowledged write.
                assert await eventually_async(lambda: reader.get("cfg")) == b"v3"
                assert await eventually_async(lambda: reader.get("other")) == b"o1"
                writer.set("cfg", "v4")
                await reader.sync()
                assert await reader.get("cfg") == b"v4"

    asyncio.run(scenario())


def test_lease_round_trip_against_the_cluster(cluster):
    with kvorum.Client(cluster.url, socket_timeout=5) as client:
        assert client.cluster
        first = client.lease_get("item")
        assert first.lease and client.lease_get("item").wait
        assert client.lease_set("item", "loaded", first.token)
        assert client.lease_get("item").hit and client.get("item") == b"loaded"
        missed = client.lease_get("gone")
        client.delete("gone")  # the writer's delete of a missing key voids the reader's lease
        assert not client.lease_set("gone", "stale", missed.token)


@pytest.mark.parametrize("mode", ["strict", "tracking"])
def test_near_cache_under_random_writes_on_the_cluster(cluster, mode):
    keys = [f"{{r}}{i}" for i in range(6)]  # one hash tag: RENAME and MGET stay in one slot for redis-py
    with kvorum.Client(cluster.url, socket_timeout=5) as plain, \
            kvorum.Client(cluster.url, near_cache=mode, socket_timeout=5) as cached:
        assert plain.cluster and cached.cluster
        check_near_cache_under_random_writes(cached, plain, keys, 1500, seed=6)
        stats = cached.near_cache_stats()
    assert stats["hits" if mode == "tracking" else "not_modified"] > 50, stats



@pytest.mark.parametrize("mode", ["strict", "tracking"])
def test_async_near_cache_under_random_writes_on_the_cluster(cluster, mode):
    keys = [f"{{r}}{i}" for i in range(6)]
    loop = asyncio.new_event_loop()
    cached = kvorum.AsyncClient(cluster.url, near_cache=mode, socket_timeout=5)
    try:
        loop.run_until_complete(cached.initialize())
        assert cached.cluster
        with kvorum.Client(cluster.url, socket_timeout=5) as plain:
            check_near_cache_under_random_writes(BlockingAsync(cached, loop), plain, keys, 1500, seed=8)
        stats = cached.near_cache_stats()
        assert stats["hits" if mode == "tracking" else "not_modified"] > 50, stats
    finally:
        loop.run_until_complete(cached.aclose())
        loop.close()



def test_leases_never_leave_the_cache_older_than_the_database_on_the_cluster(cluster):
    with kvorum.Client(cluster.url, socket_timeout=5) as client:
        assert client.cluster
        assert stale_rounds(client, lease_fill, seed=4) == 0
