"""A simulated durable store for one node: written vs fsynced.

Theory of operation
-------------------
The disk keeps two images of a node's persistent state (snapshot, log,
hard state):

- `synced`: what survives any crash;
- a queue of writes issued since, each with a sequence number.

`write_*` queues a write; `fsync(upto)` folds every queued write with a
sequence number <= `upto` into the synced image. A crash keeps the synced
image plus a random *prefix* of the queued writes (the kernel may have
flushed some pages in order, or none), and throws the rest away; `lose_unsynced`
= False keeps them all, which models a disk with a battery-backed cache.

The node driver holds every outgoing message until the writes issued before
it are fsynced, which is how the simulator honours "persist before send".
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from kvorum.consensus.replicated_log import Entry, HardState, RestoreState, Snapshot


@dataclass(slots=True)
class Image:
    """A node's persistent state: snapshot, then entries snapshot.index+1 ... on."""

    hard_state: HardState = HardState()
    snapshot: Snapshot | None = None
    entries: list[Entry] = field(default_factory=list)

    def first_index(self) -> int:
        return (self.snapshot.index if self.snapshot else 0) + 1

    def apply(self, write: tuple[str, object]) -> None:
        kind, value = write
        if kind == "entries":
            self._append(value)
        elif kind == "hard_state":
            self.hard_state = value
        else:
            assert kind == "snapshot", kind
            self._install(value)

    def _append(self, entries: tuple[Entry, ...]) -> None:
        first = entries[0].index
        offset = first - self.first_index()
        if offset < 0:
            # Entries the snapshot already covers are not stored again.
            entries = entries[-offset:]
            offset = 0
            if not entries:
                return
        # Invariant: the log has no gaps, so an append starts at most one past the end.
        assert offset <= len(self.entries), (first, self.first_index(), len(self.entries))
        del self.entries[offset:]
        self.entries.extend(entries)

    def _install(self, snapshot: Snapshot) -> None:
        keep: list[Entry] = []
        offset = snapshot.index - self.first_index()
        if 0 <= offset < len(self.entries) and self.entries[offset].term == snapshot.term:
            keep = self.entries[offset + 1 :]
        if self.snapshot is None or snapshot.index >= self.snapshot.index:
            self.snapshot = snapshot
            self.entries = keep

    def copy(self) -> Image:
        return Image(self.hard_state, self.snapshot, list(self.entries))

    def restore_state(self) -> RestoreState:
        return RestoreState(hard_state=self.hard_state, snapshot=self.snapshot, entries=tuple(self.entries))


class Disk:
    """One node's durable storage across crashes."""

    def __init__(self) -> None:
        self.synced = Image()
        self._queued: list[tuple[int, tuple[str, object]]] = []
        self.seq = 0  # sequence number of the last write issued
        self.synced_seq = 0

    @property
    def dirty(self) -> bool:
        return bool(self._queued)

    def _write(self, kind: str, value: object) -> None:
        self.seq += 1
        self._queued.append((self.seq, (kind, value)))

    def write_entries(self, entries: tuple[Entry, ...]) -> None:
        if entries:
            self._write("entries", entries)

    def write_hard_state(self, hard_state: HardState) -> None:
        self._write("hard_state", hard_state)

    def write_snapshot(self, snapshot: Snapshot) -> None:
        self._write("snapshot", snapshot)

    def fsync(self, upto: int) -> None:
        assert upto <= self.seq, (upto, self.seq)
        while self._queued and self._queued[0][0] <= upto:
            _, write = self._queued.pop(0)
            self.synced.apply(write)
        self.synced_seq = max(self.synced_seq, upto)

    def crash(self, rng: random.Random, lose_unsynced: bool) -> int:
        """Lose power: keep the synced image plus a prefix of queued writes; returns writes lost."""
        kept = rng.randint(0, len(self._queued)) if lose_unsynced else len(self._queued)
        for _, write in self._queued[:kept]:
            self.synced.apply(write)
        lost = len(self._queued) - kept
        self._queued = []
        self.synced_seq = self.seq
        return lost

    def restore_state(self) -> RestoreState:
        assert not self._queued, "restore only after a crash"
        return self.synced.restore_state()
