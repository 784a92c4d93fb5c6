"""Random sequences of append / overwrite / snapshot / sync / reopen / crash against a plain model.

The model is the log the consensus contract describes: entries after the
latest snapshot, overwritten from the first new entry's index on; a snapshot
keeps the entries after it only when the log holds its last entry with the
same term (Raft paper, section 7). The storage must restore exactly the
model after a clean reopen, and exactly the model as of the last sync after
a crash.
"""

from __future__ import annotations

import copy
import shutil
import tempfile
from dataclasses import dataclass, field

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from wal_helpers import crash, data_end, make_entries, make_snapshot, no_fsync, write_at

from kvorum.consensus.replicated_log import Entry, HardState, RestoreState, Snapshot
from kvorum.storage import Storage, StorageConfig
from kvorum.storage import record as rec
from kvorum.storage.snapshot import write_snapshot

# Small segments so that a run rotates and compacts many times; a pending buffer
# large enough that nothing is written before `sync`, so a crash loses exactly
# what was not synced.
CONFIG = StorageConfig(
    fsync="batch", record_bytes_max=4096, segment_bytes_max=8192, pending_bytes_max=1 << 22,
    snapshot_count_max=2,
)


@dataclass
class Model:
    snapshot: Snapshot | None = None
    entries: list[Entry] = field(default_factory=list)
    hard_state: HardState = HardState()

    @property
    def first_index(self) -> int:
        return self.snapshot.index + 1 if self.snapshot else 1

    @property
    def last_index(self) -> int:
        return self.first_index + len(self.entries) - 1

    def term_at(self, index: int) -> int | None:
        if index == self.first_index - 1:
            return self.snapshot.term if self.snapshot else 0
        if self.first_index <= index <= self.last_index:
            return self.entries[index - self.first_index].term
        return None

    def append(self, entries: list[Entry]) -> None:
        entries = [e for e in entries if e.index >= self.first_index]
        if entries:
            del self.entries[entries[0].index - self.first_index :]
            self.entries.extend(entries)

    def install(self, snapshot: Snapshot) -> bool:
        """Apply `snapshot`; False when it is stale and ignored."""
        if self.snapshot and snapshot.index <= self.snapshot.index:
            return False
        keep = self.term_at(snapshot.index) == snapshot.term
        self.entries = [e for e in self.entries if e.index > snapshot.index] if keep else []
        self.snapshot = snapshot
        return True

    def restore_state(self) -> RestoreState:
        return RestoreState(hard_state=self.hard_state, snapshot=self.snapshot, entries=tuple(self.entries))


class StorageMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.path = tempfile.mkdtemp(prefix="kvorum-wal-")
        self.storage = Storage.open(self.path, CONFIG, no_fsync, no_fsync)
        self.model = Model()
        self.durable = Model()
        self.term = 1

    def teardown(self) -> None:
        self.storage.close()
        shutil.rmtree(self.path)

    @rule(
        back=st.integers(0, 30),
        count=st.integers(1, 20),
        size=st.sampled_from([1, 20, 100, 700]),
        new_term=st.booleans(),
        vote=st.sampled_from([None, "n1", "n2"]),
        commit_step=st.integers(0, 5),
        with_hard_state=st.booleans(),
    )
    def append(self, back, count, size, new_term, vote, commit_step, with_hard_state):
        # Reaching back past the snapshot is allowed: the storage skips covered entries.
        first = max(1, self.model.last_index + 1 - back)
        self.term += new_term
        entries = make_entries(first, count, self.term, size)
        hard_state = None
        if with_hard_state:
            hard_state = HardState(self.term, vote, self.model.hard_state.commit + commit_step)
            self.model.hard_state = hard_state
        self.storage.append(entries, hard_state)
        self.model.append(entries)

    @rule()
    def sync(self):
        self.storage.sync()
        self.durable = copy.deepcopy(self.model)

    @rule(offset=st.integers(-3, 40), matching=st.booleans())
    def snapshot(self, offset, matching):
        """A negative offset gives a stale snapshot, which the storage ignores."""
        model = self.model
        if offset < 0:
            index = max(1, model.first_index - 1 + offset)
            term = self.term
        elif matching and model.entries:
            index = model.first_index + offset % len(model.entries)
            term = model.term_at(index)
        else:
            self.term += 1
            index = model.first_index + offset
            term = self.term
        snapshot = make_snapshot(index, term, data=b"state at %d" % index)
        self.storage.save_snapshot(snapshot)
        if model.install(snapshot):
            # Saving a snapshot syncs everything appended before it.
            self.durable = copy.deepcopy(model)

    @rule()
    def reopen(self):
        self.storage.close()
        self.durable = copy.deepcopy(self.model)
        self.storage = Storage.open(self.path, CONFIG, no_fsync, no_fsync)
        assert self.storage.restored == self.model.restore_state()

    @rule()
    def crash_and_recover(self):
        crash(self.storage)
        self.recover()

    def recover(self):
        self.storage = Storage.open(self.path, CONFIG, no_fsync, no_fsync)
        self.model = copy.deepcopy(self.durable)
        assert self.storage.restored == self.model.restore_state()

    @rule(kept=st.integers(0, 60), hole=st.integers(0, 20))
    def crash_during_a_write(self, kept, hole):
        """The crash tore the next record: only its first `kept` bytes reached the
        preallocated file, and the first `hole` of those stayed zero (pages that
        did not reach the disk)."""
        segment = self.storage.segment_paths()[-1]
        crash(self.storage)
        torn = make_entries(self.durable.last_index + 1, 1, self.term, 30)
        record = rec.encode_record(rec.RecordType.ENTRIES, rec.encode_entries(torn))
        written = record[: min(kept, len(record) - 1)]
        hole = min(hole, len(written))
        write_at(segment, data_end(self.path), bytes(hole) + written[hole:])
        self.recover()

    @rule(offset=st.integers(0, 40))
    def crash_between_snapshot_file_and_record(self, offset):
        """The snapshot file was renamed into place, then the node died before logging it."""
        self.storage.sync()
        self.durable = copy.deepcopy(self.model)
        self.term += 1
        snapshot = make_snapshot(self.model.first_index + offset, self.term, data=b"unlogged")
        write_snapshot(self.path, snapshot, no_fsync)
        self.durable.install(snapshot)
        crash(self.storage)
        self.recover()

    @invariant()
    def positions_agree(self):
        assert self.storage.first_index == self.model.first_index
        assert self.storage.last_index == self.model.last_index
        assert self.storage.hard_state == self.model.hard_state


StorageMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
TestStorageAgainstModel = StorageMachine.TestCase
