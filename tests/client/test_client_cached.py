"""cached(): one process of the fleet reloads a slow source per interval, on its own clock.

Each "process" is a client with its own fake monotonic clock, set far apart to stand for
machines whose clocks disagree. The refresh lease expires on the cluster's timer; the tests end
it by deleting the lease key, which is what its expiry does.
"""

from __future__ import annotations

import asyncio

import pytest

import kvorum
from client_support import url_of

INTERVAL_S = 30.0


class FakeClock:
    def __init__(self, start_s: float):
        self.now_s = start_s

    def __call__(self) -> float:
        return self.now_s


class Source:
    """A slow source that counts its loads."""

    def __init__(self, value: str):
        self.value = value
        self.loads = 0

    def __call__(self) -> str:
        self.loads += 1
        return self.value


@pytest.fixture
def fleet(node, client_factory):
    clocks = [FakeClock(start) for start in (0.0, 1e6, 42.5)]  # skewed on purpose
    clients = [client_factory("strict", clock_s=clock) for clock in clocks]
    return clients, clocks


def advance(clocks, seconds: float) -> None:
    for clock in clocks:
        clock.now_s += seconds


def test_one_process_loads_per_interval_the_others_see_the_new_version(fleet):
    clients, clocks = fleet
    source = Source("s1")
    # The loader's own value where it ran, the stored bytes elsewhere.
    assert [c.cached("cfg", source, refresh_every=INTERVAL_S) for c in clients] == \
        ["s1", b"s1", b"s1"]
    assert source.loads == 1
    # Within the interval nobody reloads, whatever the source does.
    source.value = "s2"
    advance(clocks, INTERVAL_S / 2)
    assert [c.cached("cfg", source, refresh_every=INTERVAL_S) for c in clients] == [b"s1"] * 3
    assert source.loads == 1
    # The interval passes on every process's own clock; the lease has expired on the cluster.
    advance(clocks, INTERVAL_S)
    clients[0].delete(b"{cfg}:refresh")
    values = [c.cached("cfg", source, refresh_every=INTERVAL_S) for c in clients]
    assert source.loads == 2
    assert values[0] == "s2" and values[1:] == [b"s2", b"s2"]
    assert sum(c.refreshes for c in clients) == 2


def test_the_refresh_lease_key_is_taken_for_one_interval(fleet):
    clients, _ = fleet
    clients[0].cached("cfg", Source("s1"), refresh_every=INTERVAL_S)
    ttl_ms = clients[0].pttl(b"{cfg}:refresh")
    assert 0 < ttl_ms <= INTERVAL_S * 1000


def test_a_missing_key_is_loaded_once_under_a_miss_lease(node, fleet):
    clients, _ = fleet
    source = Source("s1")
    clients[0].cached("cfg", source, refresh_every=INTERVAL_S, ttl=60)
    clients[0].delete("cfg")  # expired, say, before the next refresh is due
    # clients[1]'s timer is due but the refresh lease is still held: it loads under a miss lease.
    assert clients[1].cached("cfg", source, refresh_every=INTERVAL_S) == "s1"
    assert source.loads == 2 and clients[1].refreshes == 0
    assert clients[2].cached("cfg", source, refresh_every=INTERVAL_S) == b"s1"
    assert source.loads == 2


def test_async_cached_loads_once_per_interval(node):

    async def run():
        clock = FakeClock(7.0)
        source = Source("s1")

        async def load():
            return source()

        async with kvorum.AsyncClient(url_of(node), near_cache="strict", clock_s=clock) as c:
            assert await c.cached("cfg", load, refresh_every=INTERVAL_S) == "s1"
            assert await c.cached("cfg", load, refresh_every=INTERVAL_S) == b"s1"
            clock.now_s += INTERVAL_S
            await c.delete(b"{cfg}:refresh")
            source.value = "s2"
            assert await c.cached("cfg", load, refresh_every=INTERVAL_S) == "s2"
        return source.loads

    assert asyncio.run(run()) == 2
