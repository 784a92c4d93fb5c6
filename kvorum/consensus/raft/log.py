"""The Raft log as one Python list with an offset.

Theory of operation
-------------------
`entries[i]` holds the entry with index `offset + i`. Everything before
`offset` was compacted into a snapshot whose last entry is
(`snap_index`, `snap_term`), so `offset == snap_index + 1` always. The engine
keeps the whole uncompacted log in memory; `stable` marks how far it is known
to be on disk, so the unstable suffix `(stable, last_index]` is what the next
`Ready` asks the caller to persist. Appends and commits touch only the tail,
so per-entry work is constant; compaction (`del entries[:n]`) is the only
operation proportional to the log length and runs once per snapshot.
"""

from __future__ import annotations

from kvorum.consensus.replicated_log import Entry, EntryKind, Snapshot

# `Entry` is a frozen dataclass, whose __init__ assigns each field through
# object.__setattr__; a leader creates one per proposal, so it fills the slots
# through their descriptors instead, which is about twice as fast.
_entry_alloc = object.__new__
_set_term = Entry.term.__set__  # type: ignore[attr-defined]
_set_index = Entry.index.__set__  # type: ignore[attr-defined]
_set_kind = Entry.kind.__set__  # type: ignore[attr-defined]
_set_data = Entry.data.__set__  # type: ignore[attr-defined]


def new_entry(term: int, index: int, kind: EntryKind, data: bytes) -> Entry:
    """Exactly `Entry(term, index, kind, data)`, faster."""
    e = _entry_alloc(Entry)
    _set_term(e, term)
    _set_index(e, index)
    _set_kind(e, kind)
    _set_data(e, data)
    return e


assert new_entry(2, 3, EntryKind.NOOP, b"x") == Entry(2, 3, EntryKind.NOOP, b"x")


class RaftLog:
    __slots__ = ("entries", "offset", "snap_index", "snap_term", "snapshot", "committed", "stable")

    def __init__(self) -> None:
        self.entries: list[Entry] = []
        # Invariant: offset == snap_index + 1; entries[i].index == offset + i.
        self.offset = 1
        self.snap_index = 0
        self.snap_term = 0
        # The latest snapshot (what a lagging follower is sent); None before the first compaction.
        self.snapshot: Snapshot | None = None
        # Invariant: snap_index <= committed <= last_index().
        self.committed = 0
        # Invariant: snap_index <= stable <= last_index(); entries up to stable are durable.
        self.stable = 0

    def check(self) -> None:
        assert self.offset == self.snap_index + 1
        assert not self.entries or self.entries[0].index == self.offset
        assert not self.entries or self.entries[-1].index == self.last_index()
        assert self.snap_index <= self.committed <= self.last_index(), (
            self.snap_index,
            self.committed,
            self.last_index(),
        )
        assert self.snap_index <= self.stable <= self.last_index()

    def last_index(self) -> int:
        return self.offset + len(self.entries) - 1

    def last_term(self) -> int:
        return self.entries[-1].term if self.entries else self.snap_term

    def term(self, index: int) -> int | None:
        """The term at `index`, or None when it is compacted away or beyond the end."""
        i = index - self.offset
        if i >= 0:
            if i < len(self.entries):
                return self.entries[i].term
            return None
        if index == self.snap_index:
            return self.snap_term
        return None

    def match_term(self, index: int, term: int) -> bool:
        return self.term(index) == term

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Raft paper §5.4.1: a candidate's log is at least as up-to-date as ours."""
        mine = self.last_term()
        return last_term > mine or (last_term == mine and last_index >= self.last_index())

    def slice(self, lo: int, hi: int) -> list[Entry]:
        """Entries with lo <= index < hi that are still held."""
        lo = max(lo, self.offset)
        hi = min(hi, self.last_index() + 1)
        if lo >= hi:
            return []
        return self.entries[lo - self.offset : hi - self.offset]

    def batch(self, lo: int, count_max: int, bytes_max: int) -> tuple[Entry, ...]:
        """Up to `count_max` entries from `lo` whose data fits `bytes_max` (at least one)."""
        start = lo - self.offset
        assert 0 <= start < len(self.entries)
        chunk = self.entries[start : start + count_max]
        if sum([len(e.data) for e in chunk]) <= bytes_max:
            return tuple(chunk)
        total = 0
        for n, e in enumerate(chunk):
            total += len(e.data)
            if total > bytes_max and n > 0:
                return tuple(chunk[:n])
        return tuple(chunk)

    def find_conflict(self, entries: tuple[Entry, ...]) -> int:
        """The index of the first entry not already in our log with the same term (0: none)."""
        for e in entries:
            if self.term(e.index) != e.term:
                return e.index
        return 0

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """The largest index <= `index` whose term is <= `term`, with that term.

        This is the follower's rejection hint: every entry after it belongs to a
        term the leader's log cannot hold at that position, so the leader can
        skip them all in one round trip.
        """
        while True:
            t = self.term(index)
            if t is None:
                return index, 0
            if t <= term:
                return index, t
            index -= 1

    def append(self, entry: Entry) -> None:
        assert entry.index == self.last_index() + 1
        self.entries.append(entry)

    def truncate_after(self, index: int) -> None:
        """Drop every entry after `index` (a follower overwriting a conflicting suffix)."""
        assert index >= self.committed, "a committed entry can never be truncated"
        del self.entries[index + 1 - self.offset :]
        if self.stable > index:
            self.stable = index

    def extend(self, entries: tuple[Entry, ...] | list[Entry]) -> None:
        assert not entries or entries[0].index == self.last_index() + 1
        self.entries.extend(entries)

    def commit_to(self, index: int) -> bool:
        if index > self.committed:
            assert index <= self.last_index(), (index, self.last_index())
            self.committed = index
            return True
        return False

    def compact(self, snapshot: Snapshot) -> None:
        """Drop the entries covered by `snapshot` (taken from our own applied state)."""
        assert self.snap_index < snapshot.index <= min(self.stable, self.committed)
        assert self.term(snapshot.index) == snapshot.term
        del self.entries[: snapshot.index + 1 - self.offset]
        self.snap_index = snapshot.index
        self.snap_term = snapshot.term
        self.offset = snapshot.index + 1
        self.snapshot = snapshot

    def restore(self, snapshot: Snapshot) -> None:
        """Replace the whole log by `snapshot` (a follower installing the leader's)."""
        self.entries = []
        self.snap_index = snapshot.index
        self.snap_term = snapshot.term
        self.offset = snapshot.index + 1
        self.snapshot = snapshot
        self.committed = snapshot.index
        self.stable = snapshot.index
