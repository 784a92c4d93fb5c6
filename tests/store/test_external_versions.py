"""The keyspace's external versions (SET ... IFNEWER) and its composable key listeners."""

from kvorum.store import Keyspace


def check_ext_subset(ks: Keyspace) -> None:
    assert set(ks._ext_versions) <= set(ks._entries)


def test_set_stores_and_overwrite_without_one_clears():
    ks = Keyspace()
    ks.set(b"k", b"v1", 0, ext_version=7)
    assert ks.ext_version_of(b"k", 0) == 7
    ks.set(b"k", b"v2", 0, ext_version=9)
    assert ks.ext_version_of(b"k", 0) == 9
    ks.set(b"k", b"v3", 0)
    assert ks.ext_version_of(b"k", 0) is None
    ks.set(b"k", b"v4", 0, ext_version=3)
    ks.set_plain(b"k", b"v5", 0)
    assert ks.ext_version_of(b"k", 0) is None
    check_ext_subset(ks)


def test_absent_key_has_none():
    ks = Keyspace()
    assert ks.ext_version_of(b"nope", 0) is None
    ks.set(b"k", b"v", 0)
    assert ks.ext_version_of(b"k", 0) is None


def test_delete_expiry_eviction_and_flush_drop_it():
    ks = Keyspace(maxmemory=1, maxmemory_policy="allkeys-random")
    ks.set(b"d", b"v", 0, ext_version=1)
    ks.delete(b"d", 0)
    assert ks.ext_version_of(b"d", 0) is None
    ks.set(b"e", b"v", 0, expire_at_ms=10, ext_version=1)
    assert ks.ext_version_of(b"e", 9) == 1
    assert ks.ext_version_of(b"e", 10) is None
    ks.set(b"v", b"v", 0, ext_version=1)
    assert ks.free_memory_if_needed(0) is True
    assert ks.ext_version_of(b"v", 0) is None
    ks.maxmemory = 0
    ks.set(b"f", b"v", 0, ext_version=1)
    ks.flush()
    assert ks.ext_version_of(b"f", 0) is None
    check_ext_subset(ks)


def test_ttl_changes_keep_it_and_rename_copy_carry_it():
    ks = Keyspace()
    ks.set(b"k", b"v", 0, ext_version=5)
    ks.set_expire(b"k", 1000, 0)
    ks.persist(b"k", 0)
    assert ks.ext_version_of(b"k", 0) == 5
    ks.copy(b"k", b"c", 0, replace=False)
    assert ks.ext_version_of(b"c", 0) == 5
    ks.rename(b"k", b"r", 0)
    assert ks.ext_version_of(b"r", 0) == 5
    assert ks.ext_version_of(b"k", 0) is None
    check_ext_subset(ks)


def test_key_listeners_compose():
    ks = Keyspace()
    first, second = [], []
    ks.add_key_listener(first.append)
    ks.set(b"a", b"1", 0)
    ks.add_key_listener(second.append)
    ks.set_plain(b"b", b"2", 0)
    ks.flush()
    assert first == [b"a", b"b", None]
    assert second == [b"b", None]
    ks.remove_key_listener(first.append)
    assert ks.on_key_modified == second.append
    ks.remove_key_listener(second.append)
    assert ks.on_key_modified is None
    assert not ks.has_key_listener(second.append)
