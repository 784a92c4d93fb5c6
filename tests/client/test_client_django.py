"""The Django cache backend: Django's RedisCache over kvorum.Client, with the near cache."""

from __future__ import annotations

import pytest

from client_support import url_of

django = pytest.importorskip("django")
from django.conf import settings  # noqa: E402

if not settings.configured:
    settings.configure(USE_TZ=True)

from kvorum.client.django import KvorumCache  # noqa: E402


@pytest.fixture
def make_cache(node):
    def make(**options):
        return KvorumCache(url_of(node), {"OPTIONS": options, "TIMEOUT": 60})
    return make


def test_django_cache_api_with_strict_near_cache(node, make_cache):
    writer, reader = make_cache(), make_cache(near_cache="strict")
    writer.set("user:1", {"name": "ada"})
    assert reader.get("user:1") == {"name": "ada"}
    assert reader.get("user:1") == {"name": "ada"}
    client = reader._cache.get_client()
    assert client.near_cache_stats()["not_modified"] == 1
    writer.set("user:1", {"name": "grace"})
    assert reader.get("user:1") == {"name": "grace"}
    assert reader.add("user:1", "x") is False
    reader.set_many({"a": 1, "b": 2})
    assert reader.get_many(["a", "b", "c"]) == {"a": 1, "b": 2}
    assert reader.incr("a") == 2 and reader.get("a") == 2
    reader.delete("a")
    assert reader.get("a") is None and reader.has_key("b")
    reader.clear()
    assert reader.get("b") is None


def test_django_cache_close_keeps_the_near_cache(node, make_cache):
    cache = make_cache(near_cache="strict")
    cache.set("k", "v")
    assert cache.get("k") == "v"
    cache.close()  # Django calls this after every request
    client = cache._cache.get_client()
    assert cache.get("k") == "v" and client.near_cache_stats()["not_modified"] == 1


def test_django_cache_with_tracking_near_cache(node, make_cache):
    writer, reader = make_cache(), make_cache(near_cache="tracking")
    writer.set("user:1", {"name": "ada"})
    assert reader.get("user:1") == {"name": "ada"}
    assert reader.get("user:1") == {"name": "ada"}
    client = reader._cache.get_client()
    assert client.near_cache_stats()["hits"] == 1
    writer.set("user:1", {"name": "grace"})
    client.sync()
    assert reader.get("user:1") == {"name": "grace"}
    reader.set_many({"user:1": "mine"})
    assert reader.get("user:1") == "mine"  # its own write, without waiting for the push


def test_django_plain_backend_without_near_cache(node, make_cache):
    cache = make_cache()
    cache.set("k", "v", timeout=30)
    assert cache.get("k") == "v" and cache.touch("k", 60)
    assert cache._cache.get_client().near is None
