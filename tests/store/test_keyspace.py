"""The keyspace alone: versions, TTL, memory accounting, eviction, scan order."""

import gc
import random

import pytest

from kvorum.store import Keyspace
from kvorum.store.keyspace import (
    ENTRY_OVERHEAD_BYTES,
    EVICT_KEYS_PER_PLAN_MAX,
    FIELD_OVERHEAD_BYTES,
    HASH_VALUE,
    value_size,
)


def check_invariants(ks: Keyspace) -> None:
    """Accounting, entries and the side dicts match a recomputation from scratch."""
    data = {key: ks._value(key, entry) for key, entry in ks._entries.items()}
    assert ks.used_memory() == sum(len(k) + value_size(v) + ENTRY_OVERHEAD_BYTES for k, v in data.items())
    assert set(ks._slots) == set(data)
    assert set(ks._expires) <= set(data)
    hashes = {k for k, entry in ks._entries.items() if entry[0] is HASH_VALUE}
    assert set(ks._hash_bytes) == set(ks._hashes) == hashes == {k for k, v in data.items() if isinstance(v, dict)}
    live_slots = [k for k in ks._order_keys if k is not None]
    assert sorted(live_slots) == sorted(data)
    assert all(ks._order_keys[slot] == k for k, slot in ks._slots.items())
    assert ks._order_seqs == sorted(ks._order_seqs)
    assert all(0 < entry[1] <= ks._version_last for entry in ks._entries.values())


def test_no_per_key_objects_for_the_garbage_collector():
    ks = Keyspace()
    ks.set(b"s", b"v", 0, expire_at_ms=100)
    ks.hash_set(b"h", [(b"f", b"v")], 0)
    ks.set(b"x", b"v", 0)
    ks.get(b"x", 5000)
    for d in (ks._slots, ks._expires, ks._hash_bytes):
        assert not gc.is_tracked(d)
    # Entry tuples start tracked; the youngest generation's first collection
    # untracks them all, so none reaches an older generation.
    gc.collect(0)
    assert not any(gc.is_tracked(entry) for entry in ks._entries.values())
    assert not any(gc.is_tracked(fields) for fields in ks._hashes.values())


class Recorder:
    def __init__(self, ks: Keyspace):
        self.keys: list = []
        ks.on_key_modified = self.keys.append


def test_set_get_delete():
    ks = Keyspace()
    assert ks.get(b"k", 0) is None
    ks.set(b"k", b"v", 0)
    assert ks.get(b"k", 0) == b"v"
    assert len(ks) == 1
    assert ks.keyspace_hits == 1 and ks.keyspace_misses == 1
    assert ks.delete(b"k", 0)
    assert not ks.delete(b"k", 0)
    assert len(ks) == 0 and ks.used_memory() == 0


def test_versions_monotonic_and_never_repeat():
    ks = Keyspace()
    ks.set(b"a", b"1", 0)
    v1 = ks.version_of(b"a", 0)
    ks.set(b"a", b"2", 0)
    v2 = ks.version_of(b"a", 0)
    assert v2 > v1
    ks.delete(b"a", 0)
    assert ks.version_of(b"a", 0) == 0
    ks.set(b"b", b"x", 0)
    ks.set(b"a", b"3", 0)
    assert ks.version_of(b"a", 0) > v2
    ks.hash_set(b"h", [(b"f", b"v")], 0)
    vh = ks.version_of(b"h", 0)
    ks.hash_set(b"h", [(b"g", b"v")], 0)
    assert ks.version_of(b"h", 0) > vh
    vh = ks.version_of(b"h", 0)
    ks.set_expire(b"h", 100, 0)
    assert ks.version_of(b"h", 0) > vh
    vh = ks.version_of(b"h", 0)
    ks.persist(b"h", 0)
    assert ks.version_of(b"h", 0) > vh


def test_versions_deterministic_for_same_writes():
    def run() -> list[int]:
        ks = Keyspace()
        rng = random.Random(3)
        for i in range(500):
            key = b"k%d" % rng.randrange(20)
            op = rng.randrange(4)
            if op == 0:
                ks.set(key, b"v", i)
            elif op == 1:
                ks.delete(key, i)
            elif op == 2:
                ks.set_expire(key, i + rng.randrange(1, 50), i)
            else:
                ks.hash_delete(key, [b"f"], i) if isinstance(ks.peek(key, i), dict) else ks.hash_set(
                    key, [(b"f", b"v")], i) if ks.peek(key, i) is None else None
        return [ks.version_of(b"k%d" % j, 500) for j in range(20)]

    assert run() == run()


def test_lazy_expiry_fires_callback_and_counts():
    ks = Keyspace()
    rec = Recorder(ks)
    ks.set(b"k", b"v", 0, expire_at_ms=100)
    assert ks.expires_count() == 1
    assert ks.get(b"k", 99) == b"v"
    assert ks.get(b"k", 100) is None
    assert ks.expired_keys == 1
    assert rec.keys == [b"k", b"k"]
    assert ks.expires_count() == 0
    check_invariants(ks)


def test_active_expire_cycle_is_bounded():
    ks = Keyspace()
    rec = Recorder(ks)
    for i in range(100):
        ks.set(b"k%d" % i, b"v", 0, expire_at_ms=10 + i)
    ks.set(b"forever", b"v", 0)
    rec.keys.clear()
    assert ks.active_expire_cycle(5, 1000) == 0
    assert ks.active_expire_cycle(1000, 30) == 30
    assert len(ks) == 71
    assert ks.active_expire_cycle(1000, 1000) == 70
    assert len(ks) == 1 and ks.expired_keys == 100
    assert len(rec.keys) == 100
    check_invariants(ks)


def test_active_expire_skips_stale_heap_items():
    ks = Keyspace()
    ks.set(b"k", b"v", 0, expire_at_ms=10)
    ks.set_expire(b"k", 20, 0)
    ks.persist(b"k", 0)
    ks.set_expire(b"k", 30, 0)
    assert ks.active_expire_cycle(25, 100) == 0
    assert ks.get(b"k", 25) == b"v"
    assert ks.active_expire_cycle(30, 100) == 1


def test_expire_heap_stays_bounded():
    ks = Keyspace()
    ks.set(b"k", b"v", 0)
    for i in range(10_000):
        ks.set_expire(b"k", 1_000_000 + i, 0)
    assert len(ks._expire_heap) <= 2 * ks.expires_count() + 1024 + 1


def test_set_with_past_deadline_deletes():
    ks = Keyspace()
    ks.set(b"k", b"v", 0)
    ks.set(b"k", b"w", 50, expire_at_ms=10)
    assert ks.peek(b"k", 50) is None and len(ks) == 0


def test_keep_ttl():
    ks = Keyspace()
    ks.set(b"k", b"v", 0, expire_at_ms=100)
    ks.set(b"k", b"w", 0, keep_ttl=True)
    assert ks.expire_at_of(b"k", 0) == 100
    ks.set(b"k", b"x", 0)
    assert ks.expire_at_of(b"k", 0) == -1
    assert ks.expire_at_of(b"nokey", 0) == -2


def test_memory_accounting_through_hash_changes():
    ks = Keyspace()
    ks.hash_set(b"h", [(b"a", b"1"), (b"b", b"22")], 0)
    assert ks.used_memory() == len(b"h") + ENTRY_OVERHEAD_BYTES + 2 * FIELD_OVERHEAD_BYTES + 1 + 1 + 1 + 2
    ks.hash_set(b"h", [(b"a", b"1111"), (b"c", b"3")], 0)
    check_invariants(ks)
    ks.hash_delete(b"h", [b"a", b"zz"], 0)
    check_invariants(ks)
    ks.set(b"s", b"x" * 1000, 0)
    ks.set(b"s", b"x" * 10, 0)
    check_invariants(ks)
    ks.rename(b"s", b"t", 0)
    ks.copy(b"h", b"h2", 0, replace=False)
    check_invariants(ks)
    ks.hash_delete(b"h", [b"b", b"c"], 0)
    assert ks.peek(b"h", 0) is None
    check_invariants(ks)
    ks.flush()
    assert ks.used_memory() == 0 and len(ks) == 0


def test_callback_for_every_change():
    ks = Keyspace()
    rec = Recorder(ks)
    ks.set(b"a", b"1", 0)
    ks.hash_set(b"h", [(b"f", b"v")], 0)
    ks.hash_delete(b"h", [b"f"], 0)
    ks.set_expire(b"a", 100, 0)
    ks.persist(b"a", 0)
    ks.rename(b"a", b"b", 0)
    ks.delete(b"b", 0)
    ks.flush()
    assert rec.keys == [b"a", b"h", b"h", b"a", b"a", b"a", b"b", b"b", None]
    rec.keys.clear()
    ks.get(b"x", 0)
    ks.delete(b"x", 0)
    ks.hash_delete(b"x", [b"f"], 0)
    assert rec.keys == []


def test_noeviction_reports_over_limit():
    ks = Keyspace(maxmemory=1000)
    for i in range(20):
        ks.set(b"k%d" % i, b"x" * 100, 0)
    assert not ks.free_memory_if_needed(0)
    assert len(ks) == 20 and ks.evicted_keys == 0
    ks.maxmemory = 0
    assert ks.free_memory_if_needed(0)


def test_unknown_policy_refused():
    ks = Keyspace()
    with pytest.raises(ValueError):
        ks.maxmemory_policy = "allkeys-lfu-ish"
    with pytest.raises(ValueError):
        Keyspace(maxmemory_policy="bogus")
    assert ks.maxmemory_policy == "noeviction"


def test_allkeys_lru_evicts_cold_keys():
    ks = Keyspace(maxmemory_policy="allkeys-lru")
    rec = Recorder(ks)
    for i in range(200):
        ks.set(b"k%d" % i, b"x" * 100, i)
    hot = [b"k%d" % i for i in range(0, 200, 4)]
    for key in hot:
        ks.get(key, 1000)
    rec.keys.clear()
    ks.maxmemory = ks.used_memory() // 2
    assert ks.free_memory_if_needed(1000)
    assert ks.used_memory() <= ks.maxmemory
    assert ks.evicted_keys == len(rec.keys) > 0
    assert sum(1 for key in hot if ks.peek(key, 1000) is not None) >= len(hot) * 0.9
    check_invariants(ks)


def test_volatile_ttl_evicts_nearest_deadline_first():
    ks = Keyspace(maxmemory_policy="volatile-ttl")
    ks.set(b"keep", b"x" * 100, 0)
    for i in range(10):
        ks.set(b"v%d" % i, b"x" * 100, 0, expire_at_ms=1000 + i)
    ks.maxmemory = ks.used_memory() - 1
    assert ks.free_memory_if_needed(0)
    assert ks.peek(b"v0", 0) is None and ks.peek(b"v1", 0) is not None
    ks.maxmemory = 1
    assert not ks.free_memory_if_needed(0)  # only keys without TTL remain
    assert len(ks) == 1 and ks.peek(b"keep", 0) is not None
    check_invariants(ks)


@pytest.mark.parametrize("policy", ["allkeys-random", "volatile-random", "volatile-lru"])
def test_other_policies_evict_until_under_limit(policy):
    ks = Keyspace(maxmemory_policy=policy)
    for i in range(100):
        ks.set(b"k%d" % i, b"x" * 100, 0, expire_at_ms=10_000)
    ks.maxmemory = ks.used_memory() // 3
    assert ks.free_memory_if_needed(0)
    assert ks.used_memory() <= ks.maxmemory
    check_invariants(ks)


ALL_POLICIES = ["allkeys-lru", "allkeys-random", "volatile-lru", "volatile-random", "volatile-ttl"]


def _filled(policy: str, keys: int = 100) -> Keyspace:
    ks = Keyspace(maxmemory_policy=policy)
    for i in range(keys):
        ks.set(b"k%d" % i, b"x" * 100, 0, expire_at_ms=10_000 + i)
    return ks


@pytest.mark.parametrize("policy", ALL_POLICIES)
def test_eviction_plan_chooses_without_removing(policy):
    ks = _filled(policy)
    ks.maxmemory = ks.used_memory() // 2
    before = (len(ks), ks.used_memory(), ks.evicted_keys)
    victims, within = ks.eviction_plan({})
    assert within and (len(ks), ks.used_memory(), ks.evicted_keys) == before
    keys = [key for key, _size in victims]
    assert len(set(keys)) == len(keys)
    assert sum(size for _key, size in victims) >= before[1] - ks.maxmemory
    assert all(size == len(key) + 100 + ENTRY_OVERHEAD_BYTES for key, size in victims)
    # Evicting them is exactly what it takes; a second plan then has nothing to do.
    assert all(ks.evict(key) for key in keys)
    assert ks.used_memory() <= ks.maxmemory and ks.evicted_keys == len(keys)
    assert ks.eviction_plan({}) == ([], True)
    assert not ks.evict(keys[0])  # gone already: not counted twice
    check_invariants(ks)


@pytest.mark.parametrize("policy", ALL_POLICIES)
def test_eviction_plan_counts_pending_keys_as_gone_and_never_chooses_them_again(policy):
    ks = _filled(policy)
    ks.maxmemory = ks.used_memory() - 1000
    first, within = ks.eviction_plan({})
    assert within and first
    pending = dict(first)
    # Nothing was removed yet (the EVICT entry is in flight): the pending keys already free enough.
    assert ks.eviction_plan(pending) == ([], True)
    ks.maxmemory -= 2000
    more, within = ks.eviction_plan(pending)
    assert within and more and not {key for key, _ in more} & set(pending)


def test_eviction_plan_is_bounded_and_reports_what_cannot_be_freed():
    ks = _filled("allkeys-random", keys=1000)
    ks.maxmemory = 1
    victims, within = ks.eviction_plan({})
    assert len(victims) == EVICT_KEYS_PER_PLAN_MAX and not within
    assert ks.free_memory_if_needed(0) and len(ks) == 0  # a single node goes on, plan after plan
    ks = _filled("noeviction")
    ks.maxmemory = 1
    assert ks.eviction_plan({}) == ([], False)
    ks = Keyspace(maxmemory_policy="volatile-ttl", maxmemory=1)
    ks.set(b"no-ttl", b"v", 0)
    assert ks.eviction_plan({}) == ([], False)


def test_scan_returns_every_stable_key_once():
    ks = Keyspace()
    rng = random.Random(11)
    for i in range(3000):
        ks.set(b"stable%d" % i, b"v", 0)
    seen: list[bytes] = []
    cursor = 0
    churn = 0
    while True:
        cursor, keys = ks.scan(cursor, 25, 0)
        seen.extend(keys)
        for _ in range(40):
            ks.set(b"churn%d" % churn, b"v", 0)
            ks.delete(b"churn%d" % rng.randrange(churn + 1), 0)
            churn += 1
        if cursor == 0:
            break
        check_invariants(ks)
    stable = [k for k in seen if k.startswith(b"stable")]
    assert len(stable) == 3000 and len(set(stable)) == 3000


def test_scan_order_compaction_keeps_cursors_valid():
    ks = Keyspace()
    for i in range(5000):
        ks.set(b"k%d" % i, b"v", 0)
    cursor, first = ks.scan(0, 100, 0)
    for i in range(100, 4900):
        ks.delete(b"k%d" % i, 0)
    assert ks._order_holes < 2000  # compaction ran
    rest = []
    while cursor:
        cursor, keys = ks.scan(cursor, 100, 0)
        rest.extend(keys)
    assert set(first).isdisjoint(rest)
    assert set(first) | set(rest) == set(ks.keys(0))
    check_invariants(ks)


def test_scan_and_keys_and_random_skip_expired():
    ks = Keyspace()
    ks.set(b"dead", b"v", 0, expire_at_ms=5)
    ks.set(b"live", b"v", 0)
    assert ks.scan(0, 10, 5) == (0, [b"live"])
    ks.set(b"dead", b"v", 0, expire_at_ms=5)
    assert ks.keys(5) == [b"live"]
    ks.set(b"dead", b"v", 0, expire_at_ms=5)
    assert {ks.random_key(5) for _ in range(20)} == {b"live"}
    assert ks.expired_keys == 3


def test_random_key_is_seeded():
    def picks(seed: int) -> list:
        ks = Keyspace(seed=seed)
        for i in range(50):
            ks.set(b"k%d" % i, b"v", 0)
        return [ks.random_key(0) for _ in range(10)]

    assert picks(1) == picks(1)
    assert Keyspace().random_key(0) is None


def test_rename_and_copy_keep_ttl():
    ks = Keyspace()
    ks.set(b"a", b"1", 0, expire_at_ms=100)
    assert ks.rename(b"a", b"b", 0)
    assert ks.expire_at_of(b"b", 0) == 100
    assert ks.copy(b"b", b"c", 0, replace=False)
    assert ks.expire_at_of(b"c", 0) == 100
    assert not ks.copy(b"b", b"c", 0, replace=False)
    assert not ks.rename(b"nokey", b"x", 0)


def test_touch_and_idle():
    ks = Keyspace()
    ks.set(b"k", b"v", 0)
    assert ks.idle_ms(b"k", 5000) == 5000
    assert ks.touch(b"k", 5000)
    assert ks.idle_ms(b"k", 6000) == 1000
    assert not ks.touch(b"x", 0)
    assert ks.idle_ms(b"x", 0) is None


def test_set_plain_matches_set():
    ks = Keyspace()
    rec = Recorder(ks)
    ks.set_plain(b"a", b"1", 0)
    ks.set_plain(b"a", b"22", 0)
    ks.set(b"t", b"v", 0, expire_at_ms=100)
    ks.set_plain(b"t", b"w", 0)
    assert ks.expire_at_of(b"t", 0) == -1
    ks.set(b"e", b"v", 0, expire_at_ms=10)
    ks.set_plain(b"e", b"w", 20)
    assert ks.get(b"e", 20) == b"w" and ks.expired_keys == 1
    assert rec.keys == [b"a", b"a", b"t", b"t", b"e", b"e", b"e"]
    assert ks.version_of(b"a", 0) < ks.version_of(b"t", 0) < ks.version_of(b"e", 20)
    check_invariants(ks)


@pytest.mark.parametrize("seed", range(5))
def test_random_operations_against_a_model(seed):
    """Random writes, reads and clock steps: the keyspace agrees with a plain dict model."""
    rng = random.Random(seed)
    ks = Keyspace()
    model: dict[bytes, tuple[object, int]] = {}  # key -> (value, deadline or 0)
    now = 0

    def live(key):
        entry = model.get(key)
        if entry is not None and entry[1] and entry[1] <= now:
            del model[key]
            return None
        return entry

    keys = [b"k%d" % i for i in range(12)]
    for _ in range(3000):
        now += rng.randrange(0, 5)
        key, other = rng.choice(keys), rng.choice(keys)
        op = rng.randrange(11)
        entry = live(key)
        if op == 0:
            ks.set_plain(key, b"v%d" % now, now)
            model[key] = (b"v%d" % now, 0)
        elif op == 1:
            at = now + rng.randrange(-3, 20)
            ks.set(key, b"t", now, expire_at_ms=at)
            if at <= now:
                model.pop(key, None)
            else:
                model[key] = (b"t", at)
        elif op == 2:
            assert ks.delete(key, now) == (entry is not None)
            model.pop(key, None)
        elif op == 3:
            at = now + rng.randrange(-3, 20)
            assert ks.set_expire(key, at, now) == (entry is not None)
            if entry is not None:
                if at <= now:
                    del model[key]
                else:
                    model[key] = (entry[0], at)
        elif op == 4:
            assert ks.persist(key, now) == (entry is not None and entry[1] != 0)
            if entry is not None:
                model[key] = (entry[0], 0)
        elif op == 5 and (entry is None or isinstance(entry[0], dict)):
            fields = dict(entry[0]) if entry else {}
            pairs = [(b"f%d" % rng.randrange(4), b"x" * rng.randrange(5)) for _ in range(2)]
            ks.hash_set(key, pairs, now)
            fields.update(pairs)
            model[key] = (fields, entry[1] if entry else 0)
        elif op == 6 and entry is not None and isinstance(entry[0], dict):
            names = [b"f%d" % rng.randrange(4) for _ in range(2)]
            fields = {f: v for f, v in entry[0].items() if f not in names}
            assert ks.hash_delete(key, names, now) == len(set(names) & set(entry[0]))
            if fields:
                model[key] = (fields, entry[1])
            else:
                del model[key]
        elif op == 7:
            live(other)
            assert ks.rename(key, other, now) == (entry is not None)
            if entry is not None and key != other:
                model[other] = model.pop(key)
        elif op == 8 and key != other:
            exists = live(other) is not None
            replace = rng.random() < 0.5
            assert ks.copy(key, other, now, replace) == (entry is not None and (replace or not exists))
            if entry is not None and (replace or not exists):
                value = dict(entry[0]) if isinstance(entry[0], dict) else entry[0]
                model[other] = (value, entry[1])
        elif op == 9:
            ks.active_expire_cycle(now, rng.randrange(1, 4))
        else:
            got = ks.get(key, now)
            assert got == (entry[0] if entry else None)
        for k in keys:
            entry = live(k)
            assert ks.peek(k, now) == (entry[0] if entry else None), k
            assert ks.expire_at_of(k, now) == (-2 if entry is None else entry[1] or -1)
        check_invariants(ks)


def test_versions_keep_growing_across_flush():
    ks = Keyspace()
    ks.set(b"k", b"v", 0)
    before = ks.version_of(b"k", 0)
    ks.flush()
    assert ks.version_of(b"k", 0) == 0 and len(ks) == 0 and ks.expires_count() == 0
    ks.set(b"k", b"v", 0)
    assert ks.version_of(b"k", 0) > before
    cursor, keys = ks.scan(0, 10, 0)
    assert (cursor, keys) == (0, [b"k"])


def test_dump_and_load_keep_values_versions_deadlines_and_scan_order():
    ks = Keyspace()
    ks.set(b"a", b"1", 0)
    ks.set(b"b", b"2", 0, expire_at_ms=500)
    ks.hash_set(b"h", [(b"f", b"v"), (b"g", b"w")], 0)
    ks.set(b"a", b"3", 0)
    ks.delete(b"b", 0)
    ks.set(b"c", b"4", 0, expire_at_ms=900, ext_version=7)
    copy = Keyspace()
    copy.set(b"stale", b"x", 0)
    copy.load(ks.dump())
    check_invariants(copy)
    assert copy.keys(0) == ks.keys(0)
    for key in (b"a", b"c", b"h"):
        assert copy.get(key, 0) == ks.get(key, 0)
        assert copy.version_of(key, 0) == ks.version_of(key, 0)
        assert copy.expire_at_of(key, 0) == ks.expire_at_of(key, 0)
        assert copy.ext_version_of(key, 0) == ks.ext_version_of(key, 0)
    assert copy.ext_version_of(b"c", 0) == 7
    assert copy.get(b"stale", 0) is None
    copy.set(b"d", b"5", 0)
    ks.set(b"d", b"5", 0)
    assert copy.version_of(b"d", 0) == ks.version_of(b"d", 0)
    assert copy.scan(0, 10, 0) == ks.scan(0, 10, 0)


def test_load_refuses_another_format():
    import msgpack

    with pytest.raises(ValueError):
        Keyspace().load(msgpack.packb([99, 0, []]))


def test_due_keys_lists_expired_keys_without_removing_them():
    ks = Keyspace()
    ks.set(b"a", b"1", 0, expire_at_ms=100)
    ks.set(b"b", b"1", 0, expire_at_ms=200)
    ks.set(b"c", b"1", 0, expire_at_ms=300)
    ks.set(b"a", b"2", 0, expire_at_ms=400)  # the old deadline of a is stale
    assert ks.due_keys(250, 10) == [b"b"]
    assert ks.due_keys(1000, 2) == [b"b", b"c"]
    assert len(ks) == 3
    check_invariants(ks)
    assert ks.active_expire_cycle(1000, 10) == 3
