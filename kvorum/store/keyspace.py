"""The keyspace: values, versions, TTL, memory accounting and eviction.

Theory of operation
-------------------
The store is sans-I/O: it never reads a clock or touches a socket. Every call
that can observe time takes `now_ms`, chosen by the caller (the server's cached
clock on a single node, the leader's stamp in a log entry on a replica), so
replaying the same calls with the same times yields the same keyspace, the same
versions and the same random choices (the RNG is seeded).

Each key's state is one tuple in `_entries`, (value, version, lru_clock): its
value (`bytes` for strings; for hashes `HASH_VALUE`, the `dict` of bytes ->
bytes being in `_hashes`), its version, and the time of its last access in
ticks of `LRU_CLOCK_RESOLUTION_MS`. A read or a write of a key thereby touches
one dict entry, where parallel dicts cost a cache miss each on a large
keyspace. Rarer state lives in dicts of its own: the key's slot in the scan
order and, for keys with a TTL only, its absolute expiry time (so
`expires_count` is one len()).

No per-key object stays tracked by Python's cyclic garbage collector. A tuple
starts tracked, but the collector's first pass over the youngest generation
untracks every tuple whose items are atomic (bytes, ints, str; not a dict, even
an untracked one, which is why hash fields sit in `_hashes`), so entries never
reach the older generations nor count towards the growth that triggers a full
collection. One tracked object per key would make every full collection
traverse all keys, and the key count itself would trigger them (hundreds of
milliseconds per million keys, each time the key count grows by a quarter).
What a full collection still visits is the items of the `_entries` dict and of
the scan-order list (tens of milliseconds per million keys).

Access times are an LRU clock that ticks once a second, as Redis' does: LRU
eviction and OBJECT IDLETIME (whole seconds) need no finer time, and a read
rewrites its key's entry only when the clock has ticked since the key's last
access, so reading a hot key mostly writes nothing.

Versions: every write to a key draws the next number from one keyspace-wide
counter, so a key's version only grows, and a key deleted and created again
never repeats a version it had before. `version_of` returns 0 for an absent key.

External versions: a key may also carry a version chosen by the application
(a database row version or commit timestamp, `SET ... IFNEWER`), kept in
`_ext_versions` for the keys that have one. It belongs to the value: a write
that replaces the value without giving one clears it, a delete drops it, and
RENAME / COPY carry it with the value. Changing only the TTL keeps it.

Listeners: `on_key_modified` is called after every change of a key (expiry,
eviction and flushes included). Several parts of a node want it (WATCH,
leases, client tracking), so they register with `add_key_listener`, and the
keyspace installs whatever is cheapest: nothing, the one listener itself, or a
fan-out over all of them. A write thereby pays nothing when nobody listens.

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
flagged denyoom), as in Redis. It is split in two steps so that a replicated
node can put the choice in its log: `eviction_plan` chooses victims without
removing them, `evict` removes one. A single node does both at once; a
replicated leader proposes the plan as one entry and every replica evicts when
it applies it, so all replicas drop the same keys at the same log position.
"""

from __future__ import annotations

import heapq
import random
from bisect import bisect_left
from typing import Callable, Iterable, Mapping

import msgpack

# Approximate bytes a key costs beyond its key and value bytes (its entry and
# tuple, its slot in the scan order), and a hash field beyond its field and
# value bytes.
ENTRY_OVERHEAD_BYTES = 64
FIELD_OVERHEAD_BYTES = 32

# Keys sampled per eviction for the LRU and random policies (Redis'
# maxmemory-samples default), and the size of the pool of best candidates kept
# between evictions (Redis' EVPOOL_SIZE).
EVICTION_SAMPLES = 5
EVICTION_POOL_MAX = 16

# One tick of the access clock kept per key (Redis' LRU_CLOCK_RESOLUTION).
LRU_CLOCK_RESOLUTION_MS = 1000

# What a hash's entry holds in place of its fields (see the module docstring):
# atomic, so that the entry stays untracked by the garbage collector, and
# neither bytes nor dict, so that no type test takes it for a value.
HASH_VALUE = "hash: fields in Keyspace._hashes"

# Tries to find a live key with a TTL by sampling the expiry heap before
# falling back to the nearest deadline.
VOLATILE_SAMPLE_TRIES_MAX = 64

# Samples an eviction plan draws to find a key it has not chosen yet before it
# gives up on the random policies (see `eviction_plan`).
VICTIM_SAMPLE_TRIES_MAX = 64

# Keys one eviction plan chooses at most (one EVICT log entry on a replicated node).
EVICT_KEYS_PER_PLAN_MAX = 256

# Holes in the scan order are squeezed out once they exceed this many and are
# more than half the slots.
ORDER_HOLES_MIN = 1024

# The expiry heap is rebuilt once it holds more than twice the live deadlines
# plus this slack.
EXPIRE_HEAP_SLACK = 1024

# Version of the layout `dump` writes; `load` refuses any other.
DUMP_FORMAT = 1

# Redis' default proto-max-bulk-len: the largest string a command may build.
STRING_BYTES_MAX = 512 * 1024 * 1024

POLICIES = frozenset(
    {"noeviction", "allkeys-lru", "allkeys-random", "volatile-lru", "volatile-random", "volatile-ttl"}
)


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
        # Installed by add_key_listener / remove_key_listener, never set directly.
        self.on_key_modified: Callable[[bytes | None], None] | None = None
        self._key_listeners: list[Callable[[bytes | None], None]] = []

        # Stats (INFO stats).
        self.keyspace_hits = 0
        self.keyspace_misses = 0
        self.expired_keys = 0
        self.evicted_keys = 0

        # Seeded so that replicas applying the same writes make the same choices.
        self.random = random.Random(seed)

        self._version_last = 0  # Invariant: every key's version <= _version_last.
        self._seq_last = 0
        self._reset()

    def _reset(self) -> None:
        # Invariant: _slots has exactly the keys of _entries; _hashes and
        # _hash_bytes exactly those whose entry holds HASH_VALUE; _expires and
        # _ext_versions a subset of them.
        # key -> (value, version, lru_clock); see the module docstring.
        self._entries: dict[bytes, tuple[bytes | str, int, int]] = {}
        self._hashes: dict[bytes, dict[bytes, bytes]] = {}  # fields of each hash
        self._slots: dict[bytes, int] = {}  # index in _order_keys
        self._expires: dict[bytes, int] = {}  # absolute deadline, ms; keys with a TTL only
        self._hash_bytes: dict[bytes, int] = {}  # accounted field bytes of each hash
        self._ext_versions: dict[bytes, int] = {}  # external version; keys that have one only
        self._used_bytes = 0
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

    # ------------------------------------------------------------------ listeners

    def add_key_listener(self, listener: Callable[[bytes | None], None]) -> None:
        """Call `listener(key)` after every change of a key, `listener(None)` after a flush."""
        assert listener not in self._key_listeners
        self._key_listeners.append(listener)
        self._install_listeners()

    def remove_key_listener(self, listener: Callable[[bytes | None], None]) -> None:
        self._key_listeners.remove(listener)
        self._install_listeners()

    def has_key_listener(self, listener: Callable[[bytes | None], None]) -> bool:
        return listener in self._key_listeners

    def _install_listeners(self) -> None:
        listeners = tuple(self._key_listeners)
        if not listeners:
            self.on_key_modified = None
        elif len(listeners) == 1:
            self.on_key_modified = listeners[0]
        else:
            def fan_out(key: bytes | None) -> None:
                for listener in listeners:
                    listener(key)

            self.on_key_modified = fan_out

    # ------------------------------------------------------------------ sizes

    def used_memory(self) -> int:
        return self._used_bytes

    def __len__(self) -> int:
        return len(self._entries)

    def expires_count(self) -> int:
        return len(self._expires)

    # ------------------------------------------------------------------ reads

    def get(self, key: bytes, now_ms: int):
        """The value of a live key for a read (counts a hit or a miss), or None."""
        entries = self._entries
        entry = entries.get(key)
        if entry is None:
            self.keyspace_misses += 1
            return None
        expires = self._expires
        if expires:
            at = expires.get(key)
            if at is not None and at <= now_ms:
                self._expire(key)
                self.keyspace_misses += 1
                return None
        value = entry[0]
        clock = now_ms // LRU_CLOCK_RESOLUTION_MS
        if entry[2] != clock:
            entries[key] = (value, entry[1], clock)
        self.keyspace_hits += 1
        if value is HASH_VALUE:
            return self._hashes[key]
        return value

    def get_for_write(self, key: bytes, now_ms: int):
        """The value of a live key about to be written (no hit/miss stats), or None."""
        entry = self._live_entry(key, now_ms)
        if entry is None:
            return None
        self._entries[key] = (entry[0], entry[1], now_ms // LRU_CLOCK_RESOLUTION_MS)
        return self._value(key, entry)

    def peek(self, key: bytes, now_ms: int):
        """The value of a live key without touching stats or access time, or None."""
        return self._live(key, now_ms)

    def contains(self, key: bytes, now_ms: int) -> bool:
        return self._live(key, now_ms) is not None

    def version_of(self, key: bytes, now_ms: int) -> int:
        entry = self._live_entry(key, now_ms)
        return 0 if entry is None else entry[1]

    def ext_version_of(self, key: bytes, now_ms: int) -> int | None:
        """The external version stored with a live key, None if absent or without one."""
        if self._live(key, now_ms) is None:
            return None
        return self._ext_versions.get(key)

    def expire_at_of(self, key: bytes, now_ms: int) -> int:
        """Absolute expiry in ms; -1 when the key has no TTL, -2 when absent."""
        if self._live(key, now_ms) is None:
            return -2
        return self._expires.get(key, -1)

    def idle_ms(self, key: bytes, now_ms: int) -> int | None:
        """Milliseconds since the key was last read or written, None if absent."""
        entry = self._live_entry(key, now_ms)
        if entry is None:
            return None
        return max(0, now_ms - entry[2] * LRU_CLOCK_RESOLUTION_MS)

    def touch(self, key: bytes, now_ms: int) -> bool:
        """Mark a key as just accessed (TOUCH); False if absent."""
        entry = self._live_entry(key, now_ms)
        if entry is None:
            return False
        self._entries[key] = (entry[0], entry[1], now_ms // LRU_CLOCK_RESOLUTION_MS)
        return True

    def keys(self, now_ms: int) -> list[bytes]:
        """All live keys, expiring the dead ones met on the way."""
        expires = self._expires
        if not expires:
            return list(self._entries)
        out = []
        for key in list(self._entries):
            at = expires.get(key)
            if at is not None and at <= now_ms:
                self._expire(key)
            else:
                out.append(key)
        return out

    def random_key(self, now_ms: int) -> bytes | None:
        expires = self._expires
        while self._entries:
            key = self._random_slot_key()
            at = expires.get(key)
            if at is not None and at <= now_ms:
                self._expire(key)
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
        expires = self._expires
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
            at = expires.get(key)
            if at is not None and at <= now_ms:
                self._expire(key)
                continue
            out.append(key)
        if i < 0:
            return 0, out
        return seqs[i + 1], out

    # ------------------------------------------------------------------ writes

    def set(self, key: bytes, value, now_ms: int, expire_at_ms: int = 0, keep_ttl: bool = False,
            ext_version: int | None = None) -> None:
        """Store a value (bytes or a dict of hash fields), replacing any old one.

        The TTL is cleared unless `keep_ttl`; `expire_at_ms` (absolute, > 0)
        sets a new one, and a deadline already past deletes the key instead.
        The external version becomes `ext_version` (None clears it).
        """
        old = self._live(key, now_ms)
        if expire_at_ms and expire_at_ms <= now_ms:
            if old is not None:
                self._remove(key)
                self._modified(key)
            return
        self._version_last += 1
        if old is None:
            self._add(key, value, now_ms)
        else:
            self._used_bytes -= self._size(key, old)
            self._store(key, value, self._version_last, now_ms // LRU_CLOCK_RESOLUTION_MS)
            if not keep_ttl:
                self._expires.pop(key, None)
        if ext_version is None:
            self._ext_versions.pop(key, None)
        else:
            self._ext_versions[key] = ext_version
        if expire_at_ms:
            self._set_deadline(key, expire_at_ms)
        self._modified(key)

    def set_plain(self, key: bytes, value: bytes, now_ms: int) -> None:
        """`set(key, value, now_ms)` for a string without TTL options: the SET hot path.

        Must leave the keyspace as `set` does; it takes `set` itself for a key
        that holds a hash or has a TTL.
        """
        entries = self._entries
        old = entries.get(key)
        if old is None:
            self._version_last += 1
            self._add(key, value, now_ms)
        else:
            old_value = old[0]
            if old_value.__class__ is not bytes or (self._expires and key in self._expires):
                self.set(key, value, now_ms)
                return
            self._used_bytes += len(value) - len(old_value)
            if self._ext_versions:
                self._ext_versions.pop(key, None)
            self._version_last = version = self._version_last + 1
            entries[key] = (value, version, now_ms // LRU_CLOCK_RESOLUTION_MS)
        cb = self.on_key_modified
        if cb is not None:
            cb(key)

    def delete(self, key: bytes, now_ms: int) -> bool:
        if self._live(key, now_ms) is None:
            return False
        self._remove(key)
        self._modified(key)
        return True

    def set_expire(self, key: bytes, expire_at_ms: int, now_ms: int) -> bool:
        """Give a live key a deadline; one already past deletes it. False if absent."""
        if self._live(key, now_ms) is None:
            return False
        if expire_at_ms <= now_ms:
            self._remove(key)
        else:
            self._bump(key)
            self._set_deadline(key, expire_at_ms)
        self._modified(key)
        return True

    def persist(self, key: bytes, now_ms: int) -> bool:
        """Remove a key's TTL; False if absent or without TTL."""
        if self._live(key, now_ms) is None or key not in self._expires:
            return False
        del self._expires[key]
        self._bump(key)
        self._modified(key)
        return True

    def hash_set(self, key: bytes, pairs: Iterable[tuple[bytes, bytes]], now_ms: int) -> int:
        """Set hash fields, creating the hash if absent; returns the number of new fields.

        The caller has checked that the key does not hold another type.
        """
        fields = self._live(key, now_ms)
        self._version_last += 1
        if fields is None:
            fields = dict(pairs)
            self._add(key, fields, now_ms)
            self._modified(key)
            return len(fields)
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
        self._hash_bytes[key] += delta
        self._used_bytes += delta
        self._entries[key] = (HASH_VALUE, self._version_last, now_ms // LRU_CLOCK_RESOLUTION_MS)
        self._modified(key)
        return added

    def hash_delete(self, key: bytes, fields_to_delete: Iterable[bytes], now_ms: int) -> int:
        """Delete hash fields; an emptied hash is deleted. Returns fields removed."""
        fields = self._live(key, now_ms)
        if fields is None:
            return 0
        assert fields.__class__ is dict
        removed = 0
        delta = 0
        for field in fields_to_delete:
            value = fields.pop(field, None)
            if value is not None:
                removed += 1
                delta += len(field) + len(value) + FIELD_OVERHEAD_BYTES
        if removed:
            self._hash_bytes[key] -= delta
            self._used_bytes -= delta
            if fields:
                self._bump(key)
            else:
                self._remove(key)
            self._modified(key)
        return removed

    def rename(self, src: bytes, dst: bytes, now_ms: int) -> bool:
        """Move src's value and TTL to dst, replacing dst. False if src is absent."""
        value = self._live(src, now_ms)
        if value is None:
            return False
        if src == dst:
            return True
        expire_at_ms = self._expires.get(src, 0)
        ext_version = self._ext_versions.get(src)
        self._remove(src)
        self._modified(src)
        self.set(dst, value, now_ms, expire_at_ms, ext_version=ext_version)
        return True

    def copy(self, src: bytes, dst: bytes, now_ms: int, replace: bool) -> bool:
        """Copy src's value and TTL to dst. False if src is absent, or dst exists and not `replace`."""
        value = self._live(src, now_ms)
        if value is None or (not replace and self._live(dst, now_ms) is not None):
            return False
        if value.__class__ is dict:
            value = dict(value)
        self.set(dst, value, now_ms, self._expires.get(src, 0), ext_version=self._ext_versions.get(src))
        return True

    def copy_keys_to(self, other: "Keyspace", keys: Iterable[bytes], now_ms: int) -> None:
        """Copy live keys, with their versions, deadlines and external versions, into `other`
        (a scratch keyspace that a script runs on before its effects are replicated)."""
        for key in keys:
            value = self._live(key, now_ms)
            if value is None:
                continue
            if value.__class__ is dict:
                value = dict(value)
            other.set(key, value, now_ms, self._expires.get(key, 0), ext_version=self._ext_versions.get(key))
            entry = other._entries[key]
            other._entries[key] = (entry[0], self._entries[key][1], entry[2])
        other._version_last = max(other._version_last, self._version_last)

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
        expires = self._expires
        expired = 0
        while budget > 0 and heap and heap[0][0] <= now_ms:
            budget -= 1
            at, key = heapq.heappop(heap)
            if expires.get(key) == at:
                self._expire(key)
                expired += 1
        return expired

    def due_keys(self, now_ms: int, limit: int) -> list[bytes]:
        """Up to `limit` keys whose deadline is at or before now_ms, without expiring them.

        A replicated node expires keys only through the log: its leader asks this,
        then proposes the deletion, so every replica removes them at one log position.
        """
        heap = self._expire_heap
        expires = self._expires
        due: list[tuple[int, bytes]] = []
        while len(due) < limit and heap and heap[0][0] <= now_ms:
            at, key = heapq.heappop(heap)
            if expires.get(key) == at:
                due.append((at, key))
        for item in due:
            heapq.heappush(heap, item)
        return [key for _, key in due]

    # ------------------------------------------------------------------ snapshots

    def dump(self) -> bytes:
        """The keyspace as bytes, for a replica's snapshot; `load` rebuilds it.

        Kept: values, versions, external versions, deadlines, the version counter and the scan order
        (keys are written oldest first). Not kept: access times (LRU restarts),
        stats, and the limits, which belong to the node's settings.
        """
        entries, expires, ext = self._entries, self._expires, self._ext_versions
        items = [
            [key, self._value(key, entries[key]), entries[key][1], expires.get(key, 0), ext.get(key)]
            for key in self._order_keys
            if key is not None
        ]
        return msgpack.packb([DUMP_FORMAT, self._version_last, items], use_bin_type=True)

    def load(self, blob: bytes) -> None:
        """Replace the whole keyspace with what `dump` wrote."""
        fmt, version_last, items = msgpack.unpackb(blob, raw=False, strict_map_key=False)
        if fmt != DUMP_FORMAT:
            raise ValueError(f"keyspace dump format {fmt} is not {DUMP_FORMAT}")
        self._reset()
        for key, value, version, expire_at_ms, ext_version in items:
            self._add(key, value, 0, version)
            if expire_at_ms:
                self._set_deadline(key, expire_at_ms)
            if ext_version is not None:
                self._ext_versions[key] = ext_version
        self._version_last = version_last
        # Invariant: every key's version <= _version_last.
        assert all(entry[1] <= version_last for entry in self._entries.values())
        cb = self.on_key_modified
        if cb is not None:
            cb(None)

    # ------------------------------------------------------------------ eviction

    def free_memory_if_needed(self, now_ms: int) -> bool:
        """Evict keys per the policy until used memory is within maxmemory (a single node).

        Returns False when still over the limit (nothing evictable, or
        `noeviction`): the caller refuses denyoom commands with OOM.
        """
        if not self.maxmemory:
            return True
        while self._used_bytes > self.maxmemory:
            victims, _within = self.eviction_plan({})
            if not victims:
                return False
            for key, _size in victims:
                self.evict(key)
        return True

    def eviction_plan(self, pending: Mapping[bytes, int]) -> tuple[list[tuple[bytes, int]], bool]:
        """Keys to evict, as (key, bytes) pairs, for used memory to come within maxmemory.

        Chooses only; nothing is removed (the sampling state aside). `pending`
        holds keys chosen before whose removal has not happened yet (key ->
        bytes), as on a replicated leader whose EVICT entry is not applied yet:
        they count as gone and are not chosen again. At most
        EVICT_KEYS_PER_PLAN_MAX keys. The flag says whether used memory is
        within maxmemory once the victims and the pending keys are gone; it is
        False with no victims under `noeviction` or when nothing is evictable.
        """
        victims: list[tuple[bytes, int]] = []
        if not self.maxmemory:
            return victims, True
        excess = self._used_bytes - sum(pending.values()) - self.maxmemory
        if excess <= 0:
            return victims, True
        if self._policy == "noeviction":
            return victims, False
        chosen = set(pending)
        while excess > 0 and len(victims) < EVICT_KEYS_PER_PLAN_MAX:
            key = self._eviction_victim(chosen)
            if key is None:
                break
            size = self._size(key, self._entries[key][0])
            chosen.add(key)
            victims.append((key, size))
            excess -= size
        return victims, excess <= 0

    def evict(self, key: bytes) -> bool:
        """Remove a key that `eviction_plan` chose, counted as evicted; False if it is gone already."""
        if key not in self._entries:
            return False
        self._remove(key)
        self.evicted_keys += 1
        self._modified(key)
        return True

    def _eviction_victim(self, exclude: set[bytes]) -> bytes | None:
        policy = self._policy
        if policy == "volatile-ttl":
            return self._nearest_deadline_key(exclude)
        if policy == "allkeys-random":
            return self._sample_excluding(self._random_slot_key, exclude) if self._entries else None
        if policy == "volatile-random":
            return self._sample_excluding(self._random_volatile_key, exclude) if self._expires else None
        if policy == "allkeys-lru":
            return self._lru_victim(self._random_slot_key if self._entries else None, exclude)
        assert policy == "volatile-lru", policy
        return self._lru_victim(self._random_volatile_key if self._expires else None, exclude)

    @staticmethod
    def _sample_excluding(sample: Callable[[], bytes | None], exclude: set[bytes]) -> bytes | None:
        for _ in range(VICTIM_SAMPLE_TRIES_MAX):
            key = sample()
            if key is not None and key not in exclude:
                return key
        return None

    def _lru_victim(self, sample: Callable[[], bytes | None] | None, exclude: set[bytes]) -> bytes | None:
        """Redis' approximated LRU: sample keys into a small pool, evict the idlest."""
        if sample is None:
            return None
        entries = self._entries
        pool = [(clock, key) for clock, key in self._eviction_pool
                if key in entries and entries[key][2] == clock and key not in exclude]
        for _ in range(EVICTION_SAMPLES):
            key = sample()
            if key is not None and key not in exclude:
                pool.append((entries[key][2], key))
        if not pool:
            return None
        pool = sorted(set(pool))[:EVICTION_POOL_MAX]
        victim = pool.pop(0)[1]
        self._eviction_pool = pool
        return victim

    def _nearest_deadline_key(self, exclude: set[bytes] = frozenset()) -> bytes | None:
        """The live key with the nearest deadline that is not in `exclude`."""
        heap = self._expire_heap
        expires = self._expires
        while heap:
            at, key = heap[0]
            if expires.get(key) == at:
                break
            heapq.heappop(heap)
        if not exclude:
            return heap[0][1] if heap else None
        # Past the excluded keys; stale items may sit among the smallest, so look
        # a little further, then (rarely) through the whole heap in order.
        for items in (heapq.nsmallest(len(exclude) + VICTIM_SAMPLE_TRIES_MAX, heap), sorted(heap)):
            for at, key in items:
                if expires.get(key) == at and key not in exclude:
                    return key
        return None

    def _random_volatile_key(self) -> bytes | None:
        """A random key with a TTL, sampled from the expiry heap's live items."""
        if not self._expires:
            return None
        heap = self._expire_heap
        expires = self._expires
        # Once the heap is large, live items are at least half of it (see
        # _set_deadline), so this rarely loops long.
        for _ in range(VOLATILE_SAMPLE_TRIES_MAX):
            at, key = heap[self.random.randrange(len(heap))]
            if expires.get(key) == at:
                return key
        return self._nearest_deadline_key()

    # ------------------------------------------------------------------ internals

    def _live(self, key: bytes, now_ms: int):
        """The value of key, expiring it first if its deadline has passed; None if absent."""
        entry = self._live_entry(key, now_ms)
        return None if entry is None else self._value(key, entry)

    def _value(self, key: bytes, entry: tuple):
        """The value an entry stands for: its bytes, or its hash's fields."""
        value = entry[0]
        return self._hashes[key] if value is HASH_VALUE else value

    def _live_entry(self, key: bytes, now_ms: int) -> tuple | None:
        """The entry of key, expiring it first if its deadline has passed; None if absent."""
        entry = self._entries.get(key)
        if entry is not None:
            expires = self._expires
            if expires:
                at = expires.get(key)
                if at is not None and at <= now_ms:
                    self._expire(key)
                    return None
        return entry

    def _size(self, key: bytes, value) -> int:
        if value.__class__ is bytes:
            return len(key) + len(value) + ENTRY_OVERHEAD_BYTES
        return len(key) + self._hash_bytes[key] + ENTRY_OVERHEAD_BYTES

    def _store(self, key: bytes, value, version: int, lru_clock: int) -> None:
        """Put a value in place and account for it (the old one already unaccounted)."""
        if value.__class__ is bytes:
            self._entries[key] = (value, version, lru_clock)
            if self._hashes:
                self._hashes.pop(key, None)
                self._hash_bytes.pop(key, None)
            self._used_bytes += len(key) + len(value) + ENTRY_OVERHEAD_BYTES
        else:
            self._entries[key] = (HASH_VALUE, version, lru_clock)
            self._hashes[key] = value
            field_bytes = hash_fields_size(value)
            self._hash_bytes[key] = field_bytes
            self._used_bytes += len(key) + field_bytes + ENTRY_OVERHEAD_BYTES

    def _add(self, key: bytes, value, now_ms: int, version: int | None = None) -> None:
        """Create a key at `version`, by default _version_last."""
        self._seq_last += 1
        self._slots[key] = len(self._order_keys)
        self._order_seqs.append(self._seq_last)
        self._order_keys.append(key)
        self._store(key, value, self._version_last if version is None else version,
                    now_ms // LRU_CLOCK_RESOLUTION_MS)

    def _remove(self, key: bytes) -> None:
        self._used_bytes -= self._size(key, self._entries.pop(key)[0])
        self._hashes.pop(key, None)
        self._hash_bytes.pop(key, None)
        self._expires.pop(key, None)
        self._ext_versions.pop(key, None)
        self._order_keys[self._slots.pop(key)] = None
        self._order_holes += 1
        if self._order_holes > ORDER_HOLES_MIN and self._order_holes * 2 > len(self._order_keys):
            self._compact_order()

    def _compact_order(self) -> None:
        slots = self._slots
        seqs: list[int] = []
        keys: list[bytes | None] = []
        for seq, key in zip(self._order_seqs, self._order_keys):
            if key is not None:
                slots[key] = len(keys)
                seqs.append(seq)
                keys.append(key)
        self._order_seqs = seqs
        self._order_keys = keys
        self._order_holes = 0

    def _random_slot_key(self) -> bytes:
        assert self._entries
        keys = self._order_keys
        while True:
            key = keys[self.random.randrange(len(keys))]
            if key is not None:
                return key

    def _expire(self, key: bytes) -> None:
        self._remove(key)
        self.expired_keys += 1
        self._modified(key)

    def _set_deadline(self, key: bytes, expire_at_ms: int) -> None:
        self._expires[key] = expire_at_ms
        heap = self._expire_heap
        heapq.heappush(heap, (expire_at_ms, key))
        if len(heap) > 2 * len(self._expires) + EXPIRE_HEAP_SLACK:
            heap = [(at, k) for k, at in self._expires.items()]
            heapq.heapify(heap)
            self._expire_heap = heap

    def _bump(self, key: bytes) -> None:
        """Give a key the next version, keeping its value and access time."""
        self._version_last += 1
        value, _, lru_clock = self._entries[key]
        self._entries[key] = (value, self._version_last, lru_clock)

    def _modified(self, key: bytes) -> None:
        cb = self.on_key_modified
        if cb is not None:
            cb(key)
