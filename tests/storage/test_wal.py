"""Round trips through the WAL and snapshot files across reopen, rotation and compaction."""

from __future__ import annotations

import os
import threading

import pytest

from kvorum.consensus.replicated_log import Entry, EntryKind, HardState, RestoreState
from kvorum.storage import CorruptLogError, DirectoryLockedError, Storage, StorageConfig, StorageFailedError, load
from kvorum.storage.snapshot import list_snapshots, write_snapshot

from wal_helpers import SMALL, make_entries, make_snapshot, no_fsync


def reload(path: str, config: StorageConfig = SMALL) -> RestoreState:
    return load(path, config, no_fsync, no_fsync)


def test_empty_directory_restores_nothing(open_storage):
    storage = open_storage()
    assert storage.restored == RestoreState()
    assert (storage.first_index, storage.last_index) == (1, 0)
    storage.close()
    assert reload(open_storage.path) == RestoreState()


def test_entries_and_hard_state_survive_reopen(open_storage):
    storage = open_storage()
    first = make_entries(1, 3, term=1)
    storage.append(first, HardState(term=1, vote="n1", commit=0))
    storage.sync()
    kinds = [Entry(term=2, index=4, kind=EntryKind.NOOP), Entry(term=2, index=5, kind=EntryKind.MEMBERSHIP, data=b"m")]
    storage.append(kinds, HardState(term=2, vote=None, commit=4))
    storage.close()

    restored = reload(open_storage.path)
    assert restored.entries == tuple(first + kinds)
    assert restored.hard_state == HardState(term=2, vote=None, commit=4)
    assert restored.snapshot is None


def test_hard_state_without_entries_and_unchanged_hard_state(open_storage):
    storage = open_storage()
    storage.append([], HardState(term=7, vote="n2", commit=0))
    storage.append(make_entries(1, 2, term=7), None)
    storage.append([], HardState(term=7, vote="n2", commit=0))
    storage.close()
    restored = reload(open_storage.path)
    assert restored.hard_state == HardState(term=7, vote="n2", commit=0)
    assert [e.index for e in restored.entries] == [1, 2]


def test_overwriting_a_suffix_replays_to_the_new_log(open_storage):
    storage = open_storage()
    storage.append(make_entries(1, 10, term=1), None)
    storage.sync()
    # A follower learns that entries 6.. conflict with the leader's log.
    storage.append(make_entries(6, 2, term=2), HardState(term=2, commit=5))
    assert storage.last_index == 7
    storage.close()

    restored = reload(open_storage.path)
    assert restored.entries == tuple(make_entries(1, 5, term=1) + make_entries(6, 2, term=2))


def test_overwrite_reaching_back_into_an_older_segment(open_storage):
    storage = open_storage()
    storage.append(make_entries(1, 200, term=1, size=100), None)
    storage.sync()
    assert len(storage.segment_paths()) > 2
    storage.append(make_entries(3, 1, term=2), None)
    storage.close()
    restored = reload(open_storage.path)
    assert restored.entries == tuple(make_entries(1, 2, term=1, size=100) + make_entries(3, 1, term=2))


def test_rotation_cuts_segments_at_the_size_limit(open_storage):
    storage = open_storage()
    expected = []
    for start in range(1, 401, 20):
        batch = make_entries(start, 20, term=1, size=100)
        expected += batch
        storage.append(batch, HardState(term=1, commit=start))
        storage.sync()
    paths = storage.segment_paths()
    assert len(paths) >= 5
    assert all(os.path.getsize(p) <= SMALL.segment_bytes_max for p in paths)
    storage.close()
    restored = reload(open_storage.path)
    assert restored.entries == tuple(expected)
    assert restored.hard_state == HardState(term=1, commit=381)


def test_snapshot_compacts_segments_and_keeps_the_suffix(open_storage):
    storage = open_storage()
    storage.append(make_entries(1, 400, term=3, size=100), HardState(term=3, vote="n1", commit=400))
    storage.sync()
    before = storage.segment_paths()
    storage.save_snapshot(make_snapshot(350, 3))
    after = storage.segment_paths()
    assert len(after) < len(before)
    assert after == before[len(before) - len(after) :]
    assert storage.first_index == 351
    storage.close()

    restored = reload(open_storage.path)
    assert restored.snapshot == make_snapshot(350, 3)
    assert restored.entries == tuple(make_entries(351, 50, term=3, size=100))
    # The hard state was written in a deleted segment; every segment restates it.
    assert restored.hard_state == HardState(term=3, vote="n1", commit=400)


def test_snapshot_past_the_log_end_discards_the_log(open_storage):
    storage = open_storage()
    storage.append(make_entries(1, 5, term=1), None)
    storage.save_snapshot(make_snapshot(20, 4))
    assert (storage.first_index, storage.last_index) == (21, 20)
    storage.append(make_entries(21, 2, term=4), None)
    storage.close()
    restored = reload(open_storage.path)
    assert restored.snapshot.index == 20
    assert restored.entries == tuple(make_entries(21, 2, term=4))


def test_snapshot_conflicting_with_the_log_discards_the_suffix(open_storage):
    storage = open_storage()
    storage.append(make_entries(1, 5, term=1) + make_entries(6, 5, term=2), None)
    # The leader's snapshot at 7 has term 3: entry 7 here (term 2) conflicts.
    storage.save_snapshot(make_snapshot(7, 3))
    assert (storage.first_index, storage.last_index) == (8, 7)
    storage.close()
    restored = reload(open_storage.path)
    assert restored.entries == ()
    assert restored.snapshot.index == 7


def test_only_the_newest_snapshots_are_kept(open_storage):
    storage = open_storage(StorageConfig(record_bytes_max=4096, segment_bytes_max=8192, pending_bytes_max=4096, snapshot_count_max=2))
    storage.append(make_entries(1, 40, term=1), None)
    for index in (10, 20, 30, 40):
        storage.save_snapshot(make_snapshot(index, 1, data=b"at %d" % index))
    assert [index for index, _ in list_snapshots(open_storage.path)] == [30, 40]
    storage.close()
    assert reload(open_storage.path).snapshot == make_snapshot(40, 1, data=b"at 40")


def test_snapshot_file_without_its_wal_record_is_applied(open_storage):
    """A crash between renaming the snapshot file and syncing its SNAPSHOT record."""
    storage = open_storage()
    storage.append(make_entries(1, 10, term=1), None)
    storage.close()
    write_snapshot(open_storage.path, make_snapshot(6, 1), no_fsync)

    reopened = open_storage()
    assert reopened.restored.snapshot == make_snapshot(6, 1)
    assert reopened.restored.entries == tuple(make_entries(7, 4, term=1))
    reopened.close()
    assert reload(open_storage.path).entries == tuple(make_entries(7, 4, term=1))


def test_unrecorded_snapshot_conflicting_with_the_log_stays_applied(open_storage):
    """Recovery must write TRUNCATE as well as SNAPSHOT, or the next replay revives entry 2."""
    storage = open_storage()
    storage.append(make_entries(1, 2, term=1), None)
    storage.close()
    write_snapshot(open_storage.path, make_snapshot(1, 2), no_fsync)
    for _ in range(2):
        restored = reload(open_storage.path)
        assert (restored.snapshot, restored.entries) == (make_snapshot(1, 2), ())


def test_leftover_temp_snapshot_is_removed(open_storage):
    open_storage().close()
    temp = os.path.join(open_storage.path, "snap-00000000000000000009.snap.tmp")
    with open(temp, "wb") as f:
        f.write(b"half a snap")
    assert reload(open_storage.path) == RestoreState()
    assert not os.path.exists(temp)


def test_corrupt_snapshot_file_is_reported(open_storage):
    storage = open_storage()
    storage.append(make_entries(1, 5, term=1), None)
    storage.save_snapshot(make_snapshot(5, 1, data=b"x" * 100))
    storage.close()
    [(_, path)] = list_snapshots(open_storage.path)
    with open(path, "r+b") as f:
        f.seek(-10, os.SEEK_END)
        f.write(b"!")
    with pytest.raises(CorruptLogError, match="snapshot checksum") as info:
        reload(open_storage.path)
    assert info.value.path == path


def test_missing_snapshot_file_is_reported(open_storage):
    storage = open_storage()
    storage.append(make_entries(1, 5, term=1), None)
    storage.save_snapshot(make_snapshot(5, 1))
    storage.close()
    os.unlink(list_snapshots(open_storage.path)[0][1])
    with pytest.raises(CorruptLogError, match="no snapshot file"):
        reload(open_storage.path)


def test_missing_middle_segment_is_reported(open_storage):
    storage = open_storage()
    storage.append(make_entries(1, 300, term=1, size=100), None)
    storage.close()
    paths = sorted(os.listdir(open_storage.path))
    assert len(paths) >= 3
    os.unlink(os.path.join(open_storage.path, paths[1]))
    with pytest.raises(CorruptLogError, match="missing"):
        reload(open_storage.path)


def test_oversized_entry_is_refused_without_changing_anything(open_storage):
    storage = open_storage()
    storage.append(make_entries(1, 2, term=1), None)
    with pytest.raises(ValueError, match="record_bytes_max"):
        storage.append([Entry(term=1, index=3, data=b"x" * 10)] + make_entries(4, 1, term=1, size=5000), None)
    assert storage.last_index == 2
    storage.close()
    assert len(reload(open_storage.path).entries) == 2


def test_many_entries_are_split_across_records(open_storage):
    storage = open_storage()
    batch = make_entries(1, 300, term=1, size=1000)
    storage.append(batch, None)
    storage.close()
    assert reload(open_storage.path).entries == tuple(batch)


def test_a_gap_is_a_programmer_error(open_storage):
    storage = open_storage()
    storage.append(make_entries(1, 5, term=1), None)
    with pytest.raises(AssertionError, match="gap"):
        storage.append(make_entries(7, 1, term=1), None)


def test_entries_the_snapshot_covers_are_skipped(open_storage):
    """The driver applied and snapshotted entries 1..6 before persisting 4..8."""
    storage = open_storage()
    storage.append(make_entries(1, 3, term=1), None)
    storage.save_snapshot(make_snapshot(6, 1))
    storage.append(make_entries(4, 5, term=1), None)
    storage.append(make_entries(2, 3, term=1), None)
    assert (storage.first_index, storage.last_index) == (7, 8)
    storage.close()
    assert reload(open_storage.path).entries == tuple(make_entries(7, 2, term=1))


def test_a_snapshot_no_newer_than_the_latest_is_ignored(open_storage):
    storage = open_storage()
    storage.append(make_entries(1, 10, term=1), None)
    storage.save_snapshot(make_snapshot(6, 1, data=b"six"))
    storage.save_snapshot(make_snapshot(6, 2, data=b"six again"))
    storage.save_snapshot(make_snapshot(4, 1, data=b"four"))
    assert (storage.first_index, storage.last_index) == (7, 10)
    storage.close()
    restored = reload(open_storage.path)
    assert restored.snapshot == make_snapshot(6, 1, data=b"six")
    assert [e.index for e in restored.entries] == [7, 8, 9, 10]


def test_sync_in_a_worker_thread_while_appending(open_storage):
    """Group commit as the server drives it: fsync in a thread, appends on the loop thread."""
    storage = open_storage()
    done = threading.Event()

    def syncer() -> None:
        while not done.is_set():
            storage.sync()

    worker = threading.Thread(target=syncer)
    worker.start()
    expected = []
    for start in range(1, 2001, 10):
        batch = make_entries(start, 10, term=1, size=50)
        expected += batch
        storage.append(batch, HardState(term=1, commit=start))
    done.set()
    worker.join()
    storage.close()
    restored = reload(open_storage.path)
    assert restored.entries == tuple(expected)
    assert restored.hard_state.commit == 1991


def test_a_failed_fsync_poisons_the_storage(open_storage):
    disk_ok = True

    def fsync(fd: int) -> None:
        if not disk_ok:
            raise OSError(5, "Input/output error")

    storage = open_storage(fsync_fn=fsync, fdatasync_fn=fsync)
    storage.append(make_entries(1, 1, term=1), None)
    disk_ok = False
    with pytest.raises(OSError):
        storage.sync()
    with pytest.raises(StorageFailedError):
        storage.append(make_entries(2, 1, term=1), None)
    with pytest.raises(StorageFailedError):
        storage.sync()
    storage.close()
    # Nothing was acknowledged after the failure; a reopen recovers what the disk has.
    assert [e.index for e in reload(open_storage.path).entries] == [1]


def test_lowering_record_bytes_max_keeps_old_logs_readable(open_storage):
    roomy = StorageConfig(record_bytes_max=64 * 1024, segment_bytes_max=1 << 20)
    big = make_entries(1, 1, term=1, size=20_000)
    storage = open_storage(roomy)
    storage.append(big, None)
    storage.close()
    assert reload(open_storage.path, SMALL).entries == tuple(big)


@pytest.mark.parametrize(
    "limits",
    [
        dict(fsync="sometimes"),
        dict(record_bytes_max=100),
        dict(record_bytes_max=1 << 20, segment_bytes_max=1 << 20),
        dict(record_bytes_max=1 << 20, pending_bytes_max=1 << 10),
        dict(snapshot_count_max=0),
    ],
)
def test_bad_limits_are_refused_when_the_config_is_built(limits):
    with pytest.raises(ValueError):
        StorageConfig(**limits)


def test_a_directory_has_one_writer_at_a_time(open_storage):
    storage = open_storage()
    with pytest.raises(DirectoryLockedError):
        Storage.open(open_storage.path, SMALL, no_fsync, no_fsync)
    storage.close()
    open_storage().close()
