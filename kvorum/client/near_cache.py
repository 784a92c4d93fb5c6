"""The near cache: a bounded, least-recently-used map of key -> (value, version), with no I/O.

Theory of operation. The client keeps hot keys here, in process memory, in front of the
cluster. This module only stores and forgets; it never decides whether an entry is still fresh
(strict mode asks the cluster on every read, tracking mode evicts on invalidation pushes, see
docs/client.md). It is not thread-safe: the client holds one lock around every call.

Two limits bound it, and both are checked after every insert: `max_entries` and `max_bytes`
(the sum of each entry's `entry_bytes`: key length plus value length, an estimate of the payload,
not of Python's object overhead). The least recently used entries go first.

Fills race with invalidations. A reader asks the cluster for a key, and while the reply is in
flight a write to that key is invalidated here; if the reply were then stored, the near cache
would hold a value older than the invalidation. So a reader takes a `fill_token()` before it
sends its request and stores the reply with `fill(..., token)`, which refuses the entry if any
invalidation or clear happened after the token was taken. The check is coarse (an invalidation
of any key refuses every fill in flight), which costs a few refused fills under heavy writes and
never admits a stale one.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

MAX_ENTRIES_DEFAULT = 10_000
MAX_BYTES_DEFAULT = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Entry:
    value: Any
    version: int  # the cluster's version of the key; 0 when the mode does not track versions
    entry_bytes: int


def size_of(key: bytes, value: Any) -> int:
    """Bytes an entry is charged: key length plus value length (str counted in UTF-8)."""
    if isinstance(value, str):
        return len(key) + len(value.encode())
    if isinstance(value, (bytes, bytearray, memoryview)):
        return len(key) + len(value)
    return len(key) + len(repr(value))


class NearCache:
    """An LRU map bounded by `max_entries` and `max_bytes`, with fill tokens (see module doc)."""

    def __init__(self, max_entries: int = MAX_ENTRIES_DEFAULT, max_bytes: int = MAX_BYTES_DEFAULT):
        if max_entries < 1:
            raise ValueError("near cache max_entries must be at least 1")
        if max_bytes < 1:
            raise ValueError("near cache max_bytes must be at least 1")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[bytes, Entry] = OrderedDict()  # least recently used first
        # Invariant: bytes_used == sum of entry_bytes over _entries.
        self.bytes_used = 0
        # Bumped by every invalidation and clear; fills taken before a bump are refused.
        self._epoch = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0  # entries dropped to stay within the limits

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: bytes) -> bool:
        return key in self._entries

    def get(self, key: bytes) -> Entry | None:
        """The entry for `key`, marked most recently used; counts a hit or a miss."""
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry

    def fill_token(self) -> int:
        return self._epoch

    def fill(self, key: bytes, value: Any, version: int, token: int) -> bool:
        """Store `value` unless an invalidation happened since `token`, or a newer version is held.

        Returns whether the entry was stored. An entry larger than `max_bytes` is not stored.
        """
        if token != self._epoch:
            return False
        held = self._entries.get(key)
        if held is not None and version and held.version > version:
            return False
        entry_bytes = size_of(key, value)
        if entry_bytes > self.max_bytes:
            self._remove(key)
            return False
        self._remove(key)
        self._entries[key] = Entry(value, version, entry_bytes)
        self.bytes_used += entry_bytes
        self._shrink()
        return True

    def invalidate(self, key: bytes) -> None:
        """Forget `key` and refuse every fill in flight."""
        self._epoch += 1
        self._remove(key)

    def invalidate_many(self, keys) -> None:
        self._epoch += 1
        for key in keys:
            self._remove(key)

    def clear(self) -> None:
        """Forget everything and refuse every fill in flight."""
        self._epoch += 1
        self._entries.clear()
        self.bytes_used = 0

    def _remove(self, key: bytes) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.bytes_used -= entry.entry_bytes

    def _shrink(self) -> None:
        while len(self._entries) > self.max_entries or self.bytes_used > self.max_bytes:
            _, entry = self._entries.popitem(last=False)
            self.bytes_used -= entry.entry_bytes
            self.evictions += 1
        assert self.bytes_used >= 0
