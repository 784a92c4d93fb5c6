"""Unit tests of the near cache alone: LRU order, both limits, fill tokens, versions."""

from __future__ import annotations

import pytest

from kvorum.client.near_cache import NearCache, size_of


def fill(cache: NearCache, key: bytes, value, version: int = 0) -> bool:
    return cache.fill(key, value, version, cache.fill_token())


def test_get_after_fill_and_miss_counts():
    cache = NearCache()
    assert cache.get(b"k") is None
    assert fill(cache, b"k", b"v", 3)
    entry = cache.get(b"k")
    assert (entry.value, entry.version) == (b"v", 3)
    assert (cache.hits, cache.misses) == (1, 1)


def test_entry_limit_drops_least_recently_used():
    cache = NearCache(max_entries=2)
    fill(cache, b"a", b"1")
    fill(cache, b"b", b"2")
    cache.get(b"a")  # b is now the least recently used
    fill(cache, b"c", b"3")
    assert b"a" in cache and b"c" in cache and b"b" not in cache
    assert cache.evictions == 1


def test_byte_limit_counts_keys_and_values():
    cache = NearCache(max_bytes=20)
    fill(cache, b"a", b"x" * 9)   # 10 bytes
    fill(cache, b"b", b"x" * 9)   # 20 bytes: at the limit, kept
    assert cache.bytes_used == 20 and len(cache) == 2
    fill(cache, b"c", b"x" * 4)   # 25 bytes: a goes
    assert b"a" not in cache and cache.bytes_used == 15


def test_entry_larger_than_the_byte_limit_is_not_stored_and_drops_the_old_one():
    cache = NearCache(max_bytes=10)
    fill(cache, b"k", b"v")
    assert not fill(cache, b"k", b"x" * 100)
    assert b"k" not in cache and cache.bytes_used == 0


def test_replacing_an_entry_keeps_the_byte_count_exact():
    cache = NearCache()
    fill(cache, b"k", b"x" * 10, 1)
    fill(cache, b"k", b"x" * 3, 2)
    assert cache.bytes_used == size_of(b"k", b"x" * 3) == 4


def test_fill_taken_before_an_invalidation_is_refused():
    cache = NearCache()
    token = cache.fill_token()
    cache.invalidate(b"other")
    assert not cache.fill(b"k", b"old", 1, token)
    assert b"k" not in cache


def test_fill_taken_before_a_clear_is_refused():
    cache = NearCache()
    token = cache.fill_token()
    cache.clear()
    assert not cache.fill(b"k", b"old", 1, token)


def test_an_older_version_never_replaces_a_newer_one():
    cache = NearCache()
    fill(cache, b"k", b"new", 7)
    assert not fill(cache, b"k", b"old", 5)
    assert cache.get(b"k").value == b"new"


def test_invalidate_many_and_clear():
    cache = NearCache()
    for k in (b"a", b"b", b"c"):
        fill(cache, k, b"v")
    cache.invalidate_many([b"a", b"b", b"missing"])
    assert len(cache) == 1 and cache.bytes_used == size_of(b"c", b"v")
    cache.clear()
    assert len(cache) == 0 and cache.bytes_used == 0


def test_str_values_are_charged_in_utf8():
    assert size_of(b"k", "é") == 3


@pytest.mark.parametrize("entries,nbytes", [(0, 10), (10, 0)])
def test_limits_must_be_positive(entries, nbytes):
    with pytest.raises(ValueError):
        NearCache(max_entries=entries, max_bytes=nbytes)
