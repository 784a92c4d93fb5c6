"""The keyspace: values, versions, TTL, memory accounting and eviction.

Theory of operation
-------------------
The store is sans-I/O: it never reads a clock or touches a socket. Every call
that can observe time takes `now_ms`, chosen by the caller (the server's cached
clock on a single node, the leader's stamp in a log entry on a replica), so
replaying the same calls with the same times yields the same keyspace, the same
versions and the same random choices (the RNG is seeded).

Each key maps to one `Entry` holding the value (`bytes` for strings, `dict` of
bytes -> bytes for hashes), its version, its absolute expiry time, its
accounted size and its last access time.

Versions: every write to a key draws the next number from one keyspace-wide
counter, so a key's version only grows, and a key deleted and created again
never repeats a version it had before. `version_of` returns 0 for an absent key.

Expiry is lazy and active. Lazy: every lookup checks the entry's deadline and
deletes a key whose time has come. Active: `active_expire_cycle` pops a min-heap
of (expire_at_ms, key). The heap is invalidated lazily: a popped item counts only
when the key still exists with that very deadline; the heap is rebuilt when
stale items outnumber live deadlines.

Scan order: every key created gets a sequence number from a counter and a slot
at the end of `_order_keys` (parallel to the strictly increasing
`_order_seqs`). Deleting a key leaves a hole (None) in its slot; holes are
squeezed out when they are the majority, which moves slots but never changes
sequence numbers. An iteration visits keys from the newest to the oldest, and a
SCAN cursor is the sequence number of the last slot examined. So every key that
exists for the whole iteration is returned exactly once, whatever is added or
deleted meanwhile (overwriting a key keeps its sequence number), and since keys
created during the iteration land behind the cursor, an iteration ends after
examining at most the keys that existed when it began, however fast keys are
created (Redis guarantees that only while the keyspace stays bounded). The
same array gives RANDOMKEY
and eviction sampling in O(1): holes are at most half the slots, so a random
slot hits a key with probability at least one half.

Memory accounting is approximate: key bytes + value bytes + a fixed per-entry
overhead, and for hashes field + value bytes + a per-field overhead. Eviction
runs only when the caller asks (`free_memory_if_needed`, before commands
flagged denyoom), as in Redis.
"""

from __future__ import annotations

import heapq
import random
from bisect import bisect_left
from typing import Callable, Iterable

# Approximate bytes a key costs beyond its key and value bytes (entry object,
# dict slot, order slot), and a hash field beyond its field and value bytes.
ENTRY_OVERHEAD_BYTES = 64
FIELD_OVERHEAD_BYTES = 32

# Keys sampled per eviction for the LRU and random policies (Redis'
# maxmemory-samples default), and the size of the pool of best candidates kept
# between evictions (Redis' EVPOOL_SIZE).
EVICTION_SAMPLES = 5
EVICTION_POOL_MAX = 16

# Holes in the scan order are squeezed out once they exceed this many and are
# more than half the slots.
ORDER_HOLES_MIN = 1024

# The expiry heap is rebuilt once it holds more than twice the live deadlines
# plus this slack.
EXPIRE_HEAP_SLACK = 1024

# Redis' default proto-max-bulk-len: the largest string a command may build.
STRING_BYTES_MAX = 512 * 1024 * 1024

POLICIES = frozenset(
    {"noeviction", "allkeys-lru", "allkeys-random", "volatile-lru", "volatile-random", "volatile-ttl"}
)


class Entry:
    """One key's value and bookkeeping."""

    __slots__ = ("value", "version", "expire_at_ms", "size", "access_ms", "seq", "slot")

    def __init__(self, value, version: int, size: int, access_ms: int, seq: int, slot: int):
        self.value = value
        self.version = version
        self.expire_at_ms = 0  # 0 = no TTL
        self.size = size
        self.access_ms = access_ms
        self.seq = seq  # creation order, the SCAN cursor unit
        self.slot = slot  # index in Keyspace._order_keys


def hash_fields_size(fields: dict) -> int:
    size = 0
    for field, value in fields.items():
        size += len(field) + len(value) + FIELD_OVERHEAD_BYTES
    return size


def value_size(value) -> int:
    if value.__class__ is bytes:
        return len(value)
    return hash_fields_size(value)


class Keyspace:
    """One database: keys to strings or hashes, with versions, TTLs and eviction."""

    def __init__(self, maxmemory: int = 0, maxmemory_policy: str = "noeviction", seed: int = 0):
        # Limits and policy, settable at runtime (CONFIG SET).
        self.maxmemory = maxmemory  # bytes; 0 = unlimited
        self._policy = "noeviction"
        self.maxmemory_policy = maxmemory_policy
        self.proto_max_bulk_len = STRING_BYTES_MAX  # largest string SETRANGE/APPEND may build

        # Called after every change of a key; None = everything flushed.
        self.on_key_modified: Callable[[bytes | None], None] | None = None

        # Stats (INFO stats).
        self.keyspace_hits = 0
        self.keyspace_misses = 0
        self.expired_keys = 0
        self.evicted_keys = 0

        # Seeded so that replicas applying the same writes make the same choices.
        self.random = random.Random(seed)

        self._version_last = 0  # Invariant: every entry's version <= _version_last.
        self._seq_last = 0
        self._reset()

    def _reset(self) -> None:
        self._data: dict[bytes, Entry] = {}
        self._used_bytes = 0
        self._expires_count = 0
        self._expire_heap: list[tuple[int, bytes]] = []
        self._order_seqs: list[int] = []
        self._order_keys: list[bytes | None] = []
        self._order_holes = 0
        self._eviction_pool: list[tuple[int, bytes]] = []

    # ------------------------------------------------------------------ config

    @property
    def maxmemory_policy(self) -> str:
        return self._policy

    @maxmemory_policy.setter
    def maxmemory_policy(self, policy: str) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown maxmemory policy {policy!r}")
        self._policy = policy
        self._eviction_pool = []

    # ------------------------------------------------------------------ sizes

    def used_memory(self) -> int:
        return self._used_bytes

    def __len__(self) -> int:
        return len(self._data)

    def expires_count(self) -> int:
        return self._expires_count

    # ------------------------------------------------------------------ reads

    def get(self, key: bytes, now_ms: int):
        """The value of a live key for a read (counts a hit or a miss), or None."""
        e = self._data.get(key)
        if e is None:
            self.keyspace_misses += 1
            return None
        if e.expire_at_ms and e.expire_at_ms <= now_ms:
            self._expire(key, e)
            self.keyspace_misses += 1
            return None
        e.access_ms = now_ms
        self.keyspace_hits += 1
        return e.value

    def get_for_write(self, key: bytes, now_ms: int):
        """The value of a live key about to be written (no hit/miss stats), or None."""
        e = self._data.get(key)
        if e is None:
            return None
        if e.expire_at_ms and e.expire_at_ms <= now_ms:
            self._expire(key, e)
            return None
        e.access_ms = now_ms
        return e.value

    def peek(self, key: bytes, now_ms: int):
        """The value of a live key without touching stats or access time, or None."""
        e = self._live(key, now_ms)
        return None if e is None else e.value

    def contains(self, key: bytes, now_ms: int) -> bool:
        return self._live(key, now_ms) is not None

    def version_of(self, key: bytes, now_ms: int) -> int:
        e = self._live(key, now_ms)
        return 0 if e is None else e.version

    def expire_at_of(self, key: bytes, now_ms: int) -> int:
        """Absolute expiry in ms; -1 when the key has no TTL, -2 when absent."""
        e = self._live(key, now_ms)
        if e is None:
            return -2
        return e.expire_at_ms or -1

    def idle_ms(self, key: bytes, now_ms: int) -> int | None:
        """Milliseconds since the key was last read or written, None if absent."""
        e = self._live(key, now_ms)
        return None if e is None else max(0, now_ms - e.access_ms)

    def touch(self, key: bytes, now_ms: int) -> bool:
        """Mark a key as just accessed (TOUCH); False if absent."""
        e = self._live(key, now_ms)
        if e is None:
            return False
        e.access_ms = now_ms
        return True

    def keys(self, now_ms: int) -> list[bytes]:
        """All live keys, expiring the dead ones met on the way."""
        out = []
        for key, e in list(self._data.items()):
            if e.expire_at_ms and e.expire_at_ms <= now_ms:
                self._expire(key, e)
            else:
                out.append(key)
        return out

    def random_key(self, now_ms: int) -> bytes | None:
        while self._data:
            key = self._random_slot_key()
            e = self._data[key]
            if e.expire_at_ms and e.expire_at_ms <= now_ms:
                self._expire(key, e)
                continue
            return key
        return None

    def scan(self, cursor: int, count: int, now_ms: int) -> tuple[int, list[bytes]]:
        """Up to `count` live keys older than the one `cursor` names, newest first.

        Returns (next cursor, keys); the next cursor is 0 when the iteration is
        complete. See the module docstring for the guarantee.
        """
        assert count > 0
        seqs = self._order_seqs
        keys = self._order_keys
        # Removing keys (expiry below) leaves holes, never moves these lists'
        # items; a compaction replaces the lists but keeps sequence numbers.
        i = len(keys) - 1 if cursor == 0 else bisect_left(seqs, cursor) - 1
        out = []
        examined = 0
        while i >= 0 and examined < count:
            key = keys[i]
            i -= 1
            if key is None:
                continue
            examined += 1
            e = self._data[key]
            if e.expire_at_ms and e.expire_at_ms <= now_ms:
                self._expire(key, e)
                continue
            out.append(key)
        if i < 0:
            return 0, out
        return seqs[i + 1], out

    # ------------------------------------------------------------------ writes

    def set(self, key: bytes, value, now_ms: int, expire_at_ms: int = 0, keep_ttl: bool = False) -> None:
        """Store a value (bytes or a dict of hash fields), replacing any old one.

        The TTL is cleared unless `keep_ttl`; `expire_at_ms` (absolute, > 0)
        sets a new one, and a deadline already past deletes the key instead.
        """
        e = self._data.get(key)
        if e is not None and e.expire_at_ms and e.expire_at_ms <= now_ms:
            self._expire(key, e)
            e = None
        if expire_at_ms and expire_at_ms <= now_ms:
            if e is not None:
                self._remove(key, e)
                self._modified(key)
            return
        size = len(key) + ENTRY_OVERHEAD_BYTES + (len(value) if value.__class__ is bytes else hash_fields_size(value))
        self._version_last += 1
        if e is None:
            e = self._add(key, value, size, now_ms)
        else:
            self._used_bytes += size - e.size
            e.value = value
            e.version = self._version_last
            e.size = size
            e.access_ms = now_ms
            if e.expire_at_ms and not keep_ttl:
                e.expire_at_ms = 0
                self._expires_count -= 1
        if expire_at_ms:
            self._set_deadline(key, e, expire_at_ms)
        cb = self.on_key_modified
        if cb is not None:
            cb(key)

    def set_plain(self, key: bytes, value: bytes, now_ms: int) -> None:
        """`set(key, value, now_ms)` for a string without TTL options: the SET hot path."""
        e = self._data.get(key)
        if e is None:
            self._version_last += 1
            self._add(key, value, len(key) + len(value) + ENTRY_OVERHEAD_BYTES, now_ms)
        elif e.expire_at_ms:
            self.set(key, value, now_ms)
            return
        else:
            size = len(key) + len(value) + ENTRY_OVERHEAD_BYTES
            self._used_bytes += size - e.size
            self._version_last = e.version = self._version_last + 1
            e.value = value
            e.size = size
            e.access_ms = now_ms
        cb = self.on_key_modified
        if cb is not None:
            cb(key)

    def delete(self, key: bytes, now_ms: int) -> bool:
        e = self._live(key, now_ms)
        if e is None:
            return False
        self._remove(key, e)
        self._modified(key)
        return True

    def set_expire(self, key: bytes, expire_at_ms: int, now_ms: int) -> bool:
        """Give a live key a deadline; one already past deletes it. False if absent."""
        e = self._live(key, now_ms)
        if e is None:
            return False
        if expire_at_ms <= now_ms:
            self._remove(key, e)
        else:
            self._bump(e)
            self._set_deadline(key, e, expire_at_ms)
        self._modified(key)
        return True

    def persist(self, key: bytes, now_ms: int) -> bool:
        """Remove a key's TTL; False if absent or without TTL."""
        e = self._live(key, now_ms)
        if e is None or not e.expire_at_ms:
            return False
        e.expire_at_ms = 0
        self._expires_count -= 1
        self._bump(e)
        self._modified(key)
        return True

    def hash_set(self, key: bytes, pairs: Iterable[tuple[bytes, bytes]], now_ms: int) -> int:
        """Set hash fields, creating the hash if absent; returns the number of new fields.

        The caller has checked that the key does not hold another type.
        """
        e = self._live(key, now_ms)
        if e is None:
            fields = dict(pairs)
            self._version_last += 1
            self._add(key, fields, len(key) + ENTRY_OVERHEAD_BYTES + hash_fields_size(fields), now_ms)
            self._modified(key)
            return len(fields)
        fields = e.value
        assert fields.__class__ is dict
        added = 0
        delta = 0
        for field, value in pairs:
            old = fields.get(field)
            if old is None:
                added += 1
                delta += len(field) + len(value) + FIELD_OVERHEAD_BYTES
            else:
                delta += len(value) - len(old)
            fields[field] = value
        e.size += delta
        self._used_bytes += delta
        e.access_ms = now_ms
        self._bump(e)
        self._modified(key)
        return added

    def hash_delete(self, key: bytes, fields_to_delete: Iterable[bytes], now_ms: int) -> int:
        """Delete hash fields; an emptied hash is deleted. Returns fields removed."""
        e = self._live(key, now_ms)
        if e is None:
            return 0
        fields = e.value
        assert fields.__class__ is dict
        removed = 0
        delta = 0
        for field in fields_to_delete:
            value = fields.pop(field, None)
            if value is not None:
                removed += 1
                delta += len(field) + len(value) + FIELD_OVERHEAD_BYTES
        if removed:
            if fields:
                e.size -= delta
                self._used_bytes -= delta
                self._bump(e)
            else:
                self._remove(key, e)
            self._modified(key)
        return removed

    def rename(self, src: bytes, dst: bytes, now_ms: int) -> bool:
        """Move src's value and TTL to dst, replacing dst. False if src is absent."""
        e = self._live(src, now_ms)
        if e is None:
            return False
        if src == dst:
            return True
        value, expire_at_ms = e.value, e.expire_at_ms
        self._remove(src, e)
        self._modified(src)
        self.set(dst, value, now_ms, expire_at_ms)
        return True

    def copy(self, src: bytes, dst: bytes, now_ms: int, replace: bool) -> bool:
        """Copy src's value and TTL to dst. False if src is absent, or dst exists and not `replace`."""
        e = self._live(src, now_ms)
        if e is None or (not replace and self._live(dst, now_ms) is not None):
            return False
        value = e.value if e.value.__class__ is bytes else dict(e.value)
        self.set(dst, value, now_ms, e.expire_at_ms)
        return True

    def flush(self) -> None:
        self._reset()
        cb = self.on_key_modified
        if cb is not None:
            cb(None)

    # ------------------------------------------------------------------ expiry

    def active_expire_cycle(self, now_ms: int, budget: int) -> int:
        """Delete keys whose deadline has passed, looking at most `budget` heap items.

        Returns the number of keys expired.
        """
        heap = self._expire_heap
        data = self._data
        expired = 0
        while budget > 0 and heap and heap[0][0] <= now_ms:
            budget -= 1
            at, key = heapq.heappop(heap)
            e = data.get(key)
            if e is not None and e.expire_at_ms == at:
                self._expire(key, e)
                expired += 1
        return expired

    # ------------------------------------------------------------------ eviction

    def free_memory_if_needed(self, now_ms: int) -> bool:
        """Evict keys per the policy until used memory is within maxmemory.

        Returns False when still over the limit (nothing evictable, or
        `noeviction`): the caller refuses denyoom commands with OOM.
        """
        if not self.maxmemory or self._used_bytes <= self.maxmemory:
            return True
        if self._policy == "noeviction":
            return False
        while self._used_bytes > self.maxmemory:
            key = self._eviction_victim(now_ms)
            if key is None:
                return False
            self._remove(key, self._data[key])
            self.evicted_keys += 1
            self._modified(key)
        return True

    def _eviction_victim(self, now_ms: int) -> bytes | None:
        policy = self._policy
        if policy == "volatile-ttl":
            return self._nearest_deadline_key()
        if policy == "allkeys-random":
            return self._random_slot_key() if self._data else None
        if policy == "volatile-random":
            return self._random_volatile_key()
        if policy == "allkeys-lru":
            return self._lru_victim(self._random_slot_key if self._data else None)
        assert policy == "volatile-lru", policy
        return self._lru_victim(self._random_volatile_key if self._expires_count else None)

    def _lru_victim(self, sample: Callable[[], bytes | None] | None) -> bytes | None:
        """Redis' approximated LRU: sample keys into a small pool, evict the idlest."""
        if sample is None:
            return None
        data = self._data
        pool = [(access_ms, key) for access_ms, key in self._eviction_pool
                if key in data and data[key].access_ms == access_ms]
        for _ in range(EVICTION_SAMPLES):
            key = sample()
            if key is not None:
                pool.append((data[key].access_ms, key))
        if not pool:
            return None
        pool = sorted(set(pool))[:EVICTION_POOL_MAX]
        victim = pool.pop(0)[1]
        self._eviction_pool = pool
        return victim

    def _nearest_deadline_key(self) -> bytes | None:
        heap = self._expire_heap
        data = self._data
        while heap:
            at, key = heap[0]
            e = data.get(key)
            if e is not None and e.expire_at_ms == at:
                return key
            heapq.heappop(heap)
        return None

    def _random_volatile_key(self) -> bytes | None:
        """A random key with a TTL, sampled from the expiry heap's live items."""
        if not self._expires_count:
            return None
        heap = self._expire_heap
        data = self._data
        # Once the heap is large, live items are at least half of it (see
        # _set_deadline), so this rarely loops long; after a bound, fall back
        # to the nearest deadline.
        for _ in range(64):
            at, key = heap[self.random.randrange(len(heap))]
            e = data.get(key)
            if e is not None and e.expire_at_ms == at:
                return key
        return self._nearest_deadline_key()

    # ------------------------------------------------------------------ internals

    def _live(self, key: bytes, now_ms: int) -> Entry | None:
        e = self._data.get(key)
        if e is not None and e.expire_at_ms and e.expire_at_ms <= now_ms:
            self._expire(key, e)
            return None
        return e

    def _add(self, key: bytes, value, size: int, now_ms: int) -> Entry:
        self._seq_last += 1
        e = Entry(value, self._version_last, size, now_ms, self._seq_last, len(self._order_keys))
        self._order_seqs.append(self._seq_last)
        self._order_keys.append(key)
        self._data[key] = e
        self._used_bytes += size
        return e

    def _remove(self, key: bytes, e: Entry) -> None:
        del self._data[key]
        self._used_bytes -= e.size
        if e.expire_at_ms:
            self._expires_count -= 1
        self._order_keys[e.slot] = None
        self._order_holes += 1
        if self._order_holes > ORDER_HOLES_MIN and self._order_holes * 2 > len(self._order_keys):
            self._compact_order()

    def _compact_order(self) -> None:
        data = self._data
        seqs: list[int] = []
        keys: list[bytes | None] = []
        for key in self._order_keys:
            if key is not None:
                e = data[key]
                e.slot = len(keys)
                seqs.append(e.seq)
                keys.append(key)
        self._order_seqs = seqs
        self._order_keys = keys
        self._order_holes = 0

    def _random_slot_key(self) -> bytes:
        assert self._data
        keys = self._order_keys
        while True:
            key = keys[self.random.randrange(len(keys))]
            if key is not None:
                return key

    def _expire(self, key: bytes, e: Entry) -> None:
        self._remove(key, e)
        self.expired_keys += 1
        self._modified(key)

    def _set_deadline(self, key: bytes, e: Entry, expire_at_ms: int) -> None:
        if not e.expire_at_ms:
            self._expires_count += 1
        e.expire_at_ms = expire_at_ms
        heap = self._expire_heap
        heapq.heappush(heap, (expire_at_ms, key))
        if len(heap) > 2 * self._expires_count + EXPIRE_HEAP_SLACK:
            self._rebuild_expire_heap()

    def _rebuild_expire_heap(self) -> None:
        heap = [(e.expire_at_ms, key) for key, e in self._data.items() if e.expire_at_ms]
        heapq.heapify(heap)
        self._expire_heap = heap

    def _bump(self, e: Entry) -> None:
        self._version_last += 1
        e.version = self._version_last

    def _modified(self, key: bytes) -> None:
        cb = self.on_key_modified
        if cb is not None:
            cb(key)
