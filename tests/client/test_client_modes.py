"""The near cache against a real kvorum node: strict and tracking modes, plain pass-through,
a writer on one client and readers on others, a tracking connection killed under a reader, and
redis-py's own client-side cache."""

from __future__ import annotations

import asyncio
import threading

import pytest
import redis
from redis.cache import CacheConfig

import kvorum
from client_support import url_of

READERS = 3


def test_plain_api_passes_through(client_factory):
    c = client_factory()
    assert c.set("k", "v") is True
    assert c.get("k") == b"v"
    assert c.incr("n") == 1 and c.hset("h", "f", "x") == 1
    assert c.hgetall("h") == {b"f": b"x"}
    assert c.cluster is False and c.near_cache_stats() == {}


def test_unknown_mode_is_refused(node):
    with pytest.raises(ValueError):
        kvorum.Client(url_of(node), near_cache="sometimes")


def test_strict_readers_see_every_acknowledged_write(node, client_factory):
    writer = client_factory()
    readers = [client_factory("strict") for _ in range(READERS)]
    for i in range(20):
        writer.set("config", f"v{i}")
        # Each read begins after the write was acknowledged, so each must return it.
        assert [r.get("config") for r in readers] == [f"v{i}".encode()] * READERS
        assert [r.get("config") for r in readers] == [f"v{i}".encode()] * READERS
    for r in readers:
        stats = r.near_cache_stats()
        assert stats["not_modified"] == 20  # the second read of each round moved no value


COUNT_TO = 300


class CountingWriter(threading.Thread):
    """Sets "counter" to 1, 2, ... COUNT_TO; `acked` is the last value acknowledged."""

    def __init__(self, writer):
        super().__init__()
        self.writer = writer
        self.acked = 0
        self.done = threading.Event()
        writer.set("counter", 0)

    def run(self) -> None:
        for i in range(1, COUNT_TO + 1):
            self.writer.set("counter", i)
            self.acked = i
        self.done.set()


@pytest.mark.parametrize("mode", ["strict", "tracking"])
def test_reads_never_older_than_the_last_write_acknowledged_before_them(node, client_factory, mode):
    """A writer thread counts up; each near-cache read returns at least the count acknowledged
    when the read began (DESIGN.md section 3), with the writer running concurrently."""
    counter, reader = CountingWriter(client_factory()), client_factory(mode)
    counter.start()
    reads = 0
    while not counter.done.is_set() or reads < 10:
        floor = counter.acked
        assert int(reader.get("counter")) >= floor
        reads += 1
    counter.join()
    assert int(reader.get("counter")) == COUNT_TO


def test_strict_sees_deletes_and_recreations(node, client_factory):
    writer, reader = client_factory(), client_factory("strict")
    writer.set("k", "a")
    assert reader.get("k") == b"a"
    writer.delete("k")
    assert reader.get("k") is None and reader.near_cache_stats()["entries"] == 0
    writer.set("k", "a")  # the same bytes again, under a new version
    assert reader.get("k") == b"a"


def test_strict_mget_validates_in_one_pipeline(node, client_factory):
    writer, reader = client_factory(), client_factory("strict")
    writer.mset({"a": "1", "b": "2"})
    assert reader.mget(["a", "b", "c"]) == [b"1", b"2", None]
    writer.set("b", "3")
    assert reader.mget("a", "b", "c") == [b"1", b"3", None]
    assert reader.near_cache_stats()["not_modified"] == 1


def test_own_writes_evict_locally(node, client_factory):
    c = client_factory("strict")
    c.set("k", "1")
    assert c.get("k") == b"1"
    c.set("k", "2")
    assert "k".encode() not in c.near
    c.mset({"k": "3"})
    assert c.get("k") == b"3"
    c.flushdb()
    assert len(c.near) == 0


def test_near_cache_is_bounded(node, client_factory):
    c = client_factory("strict", near_cache_max_entries=4, near_cache_max_bytes=1000)
    for i in range(10):
        c.set(f"k{i}", "x" * 100)
        c.get(f"k{i}")
    stats = c.near_cache_stats()
    assert stats["entries"] <= 4 and stats["bytes"] <= 1000 and stats["evictions"] >= 6


def test_tracking_hits_make_no_request(node, client_factory):
    writer, reader = client_factory(), client_factory("tracking")
    writer.set("k", "v")
    assert reader.get("k") == b"v"
    with node.client() as admin:
        before = int(admin.info("stats")["total_commands_processed"])
        for _ in range(50):
            assert reader.get("k") == b"v"
        after = int(admin.info("stats")["total_commands_processed"])
    assert after - before == 1  # the admin's own INFO, none from the reader


def test_tracking_silent_link_is_probed_before_a_hit(node, client_factory):
    writer = client_factory()
    reader = client_factory("tracking", health_check_interval_s=0)
    writer.set("k", "v")
    assert reader.get("k") == b"v"
    with node.client() as admin:
        before = int(admin.info("stats")["total_commands_processed"])
        for _ in range(5):
            assert reader.get("k") == b"v"
        after = int(admin.info("stats")["total_commands_processed"])
    assert after - before == 5 + 1  # one VERSION probe per hit, and the admin's INFO
    assert reader.near_cache_stats()["hits"] == 5


def test_tracking_readers_see_writes_once_invalidations_arrive(node, client_factory):
    writer = client_factory()
    readers = [client_factory("tracking") for _ in range(READERS)]
    for i in range(20):
        writer.set("config", f"v{i}")
        for r in readers:
            value = r.get("config")
            # Before its invalidation arrives a reader may hold the previous value, never older.
            assert value in (f"v{i}".encode(), f"v{i - 1}".encode())
            r.sync()
            assert r.get("config") == f"v{i}".encode()
    assert all(r.near_cache_stats()["hits"] > 0 for r in readers)


def test_tracking_flush_drops_everything(node, client_factory):
    writer, reader = client_factory(), client_factory("tracking")
    writer.mset({"a": "1", "b": "2"})
    assert reader.mget(["a", "b"]) == [b"1", b"2"]
    writer.flushall()
    reader.sync()
    assert reader.near_cache_stats()["entries"] == 0
    assert reader.get("a") is None


def test_tracking_connection_killed_never_serves_stale(node, client_factory):
    writer, reader = client_factory(), client_factory("tracking")
    writer.set("k", "old")
    assert reader.get("k") == b"old"
    link = reader._links[""]
    tracking_id = link.call("CLIENT", "ID")
    assert writer.execute_command("CLIENT", "KILL", "ID", tracking_id) == 1
    # The write happens while the reader has no tracking connection: its invalidation is lost.
    writer.set("k", "new")
    resets = link.resets
    assert reader.get("k") == b"new"
    assert link.resets > resets  # the near cache was dropped before serving again
    assert reader.get("k") == b"new" and reader.near_cache_stats()["hits"] >= 1


def test_async_client_strict_and_tracking(node):

    async def run():
        async with kvorum.AsyncClient(url_of(node)) as writer, \
                kvorum.AsyncClient(url_of(node), near_cache="strict") as reader:
            await writer.set("k", "1")
            assert await reader.get("k") == b"1"
            assert await reader.get("k") == b"1"
            await writer.set("k", "2")
            assert await reader.get("k") == b"2"
            assert reader.near_cache_stats()["not_modified"] == 1
            assert await reader.mget(["k", "nope"]) == [b"2", None]

    asyncio.run(run())


def test_async_client_tracking_survives_a_kill(node):

    async def run():
        async with kvorum.AsyncClient(url_of(node)) as writer, \
                kvorum.AsyncClient(url_of(node), near_cache="tracking") as reader:
            await writer.set("k", "old")
            assert await reader.get("k") == b"old"
            await writer.set("k", "mid")
            await reader.sync()
            assert await reader.get("k") == b"mid"
            tracking_id = await reader._links[""].call("CLIENT", "ID")
            await writer.execute_command("CLIENT", "KILL", "ID", tracking_id)
            await writer.set("k", "new")
            assert await reader.get("k") == b"new"

    asyncio.run(run())


def test_redis_py_client_side_cache(node):
    with node.client(protocol=3, cache_config=CacheConfig()) as cached, node.client() as writer:
        writer.set("k", "1")
        assert cached.get("k") == b"1"
        assert cached.get("k") == b"1"
        assert cached.get_cache().size == 1
        writer.set("k", "2")
        cached.ping()  # a round trip on the cached client's connection delivers the push
        assert cached.get("k") == b"2"


def test_cluster_mode_follows_the_node(node):
    """A single node says cluster_enabled:0, so "auto" picks the plain client."""
    with kvorum.Client(url_of(node)) as c:
        assert c.cluster is False and isinstance(c.redis, redis.Redis)


def test_async_tracking_reads_never_older_than_the_last_write_acknowledged_before_them(node, client_factory):
    """As above for AsyncClient in a running event loop, with the writer in a thread: a read that
    begins right after an acknowledgement, before the loop has polled the tracking socket, must
    still see the invalidation that came before the acknowledgement."""
    import asyncio

    from client_support import url_of

    counter = CountingWriter(client_factory())

    async def read():
        async with kvorum.AsyncClient(url_of(node), near_cache="tracking", socket_timeout=10) as reader:
            assert int(await reader.get("counter")) == 0
            counter.start()
            reads = 0
            while not counter.done.is_set() or reads < 10:
                floor = counter.acked
                assert int(await reader.get("counter")) >= floor
                reads += 1
            counter.join()
            assert int(await reader.get("counter")) == COUNT_TO
            return reader.near_cache_stats()["hits"]

    assert asyncio.run(read()) > 0


def test_async_tracking_works_with_descriptors_past_fd_setsize(node):
    """The check for invalidations still in the kernel must not use select(), which refuses
    descriptors past 1024: a busy process hands the tracking connection one of those."""
    import asyncio
    import os
    import resource

    from client_support import url_of

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2048:
        pytest.skip(f"the hard descriptor limit {hard} leaves no room past 1024")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2048), hard))
    spare = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        async def reads():
            async with kvorum.AsyncClient(url_of(node), near_cache="tracking", socket_timeout=10) as reader:
                with node.client() as writer:
                    writer.set("fd", "a")
                    assert await reader.get("fd") == b"a"
                    writer.set("fd", "b")
                    assert await reader.get("fd") == b"b"
                    assert await reader.get("fd") == b"b"
                return reader.near_cache_stats()["hits"]

        assert asyncio.run(reads()) >= 1
    finally:
        for fd in spare:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
