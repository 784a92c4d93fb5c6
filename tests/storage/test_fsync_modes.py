"""What each fsync mode makes durable, counted with injected fsync and fdatasync functions.

Segments are preallocated and fsynced once when created, so that the sync
after each batch can be an fdatasync (see wal.py); these tests pin down which
of the two each step uses."""

from __future__ import annotations

import os

import pytest
from wal_helpers import SyncCounter, crash, data_end, make_entries, make_snapshot

from kvorum.consensus.replicated_log import HardState
from kvorum.storage import Storage, StorageConfig, load
from kvorum.storage.replay import replay

SMALL_KB = dict(record_bytes_max=4096, segment_bytes_max=8192, pending_bytes_max=4096)


def open_counted(path: str, fsync: str, **limits: int) -> tuple[Storage, SyncCounter]:
    counter = SyncCounter()
    config = StorageConfig(fsync=fsync, **(SMALL_KB | limits))
    storage = Storage.open(path, config, counter.fsync, counter.fdatasync)
    return storage, counter


def restored_indexes(path: str) -> list[int]:
    return [e.index for e in load(path, StorageConfig(fsync="never", **SMALL_KB)).entries]


@pytest.mark.parametrize("fsync, expected", [("always", 2), ("batch", 2), ("never", 0)])
def test_creating_a_log_makes_its_first_segment_durable(tmp_path, fsync, expected):
    storage, counter = open_counted(str(tmp_path), fsync)
    # The preallocated file with its header, and the directory entry.
    assert (counter.fsyncs, counter.fdatasyncs) == (expected, 0)
    [segment] = storage.segment_paths()
    assert os.path.getsize(segment) == SMALL_KB["segment_bytes_max"]
    storage.close()


def test_always_fdatasyncs_every_append_before_returning(tmp_path):
    storage, counter = open_counted(str(tmp_path), "always")
    [segment] = storage.segment_paths()
    counter.reset()
    for index in range(1, 6):
        storage.append(make_entries(index, 1, term=1), HardState(term=1, commit=index - 1))
        assert (counter.fsyncs, counter.fdatasyncs) == (0, index)
        on_disk = [e.index for e in replay(str(tmp_path)).model.items]
        assert on_disk == list(range(1, index + 1))
    assert os.path.getsize(segment) == SMALL_KB["segment_bytes_max"], "writes never change the size"
    storage.sync()
    assert counter.fdatasyncs == 5, "nothing pending, nothing to sync"
    storage.close()


def test_batch_fdatasyncs_once_per_group(tmp_path):
    storage, counter = open_counted(str(tmp_path), "batch")
    end = data_end(str(tmp_path))
    counter.reset()
    for index in range(1, 6):
        storage.append(make_entries(index, 1, term=1), HardState(term=1, commit=index - 1))
    assert (counter.fsyncs, counter.fdatasyncs) == (0, 0)
    assert data_end(str(tmp_path)) == end, "append only buffers"
    storage.sync()
    assert (counter.fsyncs, counter.fdatasyncs) == (0, 1)
    storage.sync()
    assert (counter.fsyncs, counter.fdatasyncs) == (0, 1)
    storage.close()
    assert restored_indexes(str(tmp_path)) == [1, 2, 3, 4, 5]


def test_batch_loses_only_what_was_never_synced(tmp_path):
    storage, _ = open_counted(str(tmp_path), "batch")
    storage.append(make_entries(1, 3, term=1), None)
    storage.sync()
    storage.append(make_entries(4, 2, term=1), None)
    crash(storage)
    assert restored_indexes(str(tmp_path)) == [1, 2, 3]


def test_batch_rotation_fsyncs_the_old_segment_the_new_one_and_the_directory(tmp_path):
    storage, counter = open_counted(str(tmp_path), "batch", pending_bytes_max=1 << 20)
    counter.reset()
    storage.append(make_entries(1, 50, term=1, size=100), None)
    storage.append(make_entries(51, 50, term=1, size=100), None)
    segments = len(storage.segment_paths())
    storage.sync()
    paths = storage.segment_paths()
    cuts = len(paths) - segments
    assert cuts >= 1
    # Per cut: the completed segment (trimmed) and the new one (preallocated);
    # then one for the directory. The records of the last one: one fdatasync.
    assert (counter.fsyncs, counter.fdatasyncs) == (2 * cuts + 1, 1)
    assert all(os.path.getsize(p) < SMALL_KB["segment_bytes_max"] for p in paths[:-1])
    assert os.path.getsize(paths[-1]) == SMALL_KB["segment_bytes_max"]
    storage.close()


def test_never_writes_at_sync_without_fsync(tmp_path):
    storage, counter = open_counted(str(tmp_path), "never")
    for start in range(1, 201, 20):
        storage.append(make_entries(start, 20, term=1, size=100), HardState(term=1, commit=start))
        storage.sync()
    assert len(storage.segment_paths()) > 1
    assert (counter.fsyncs, counter.fdatasyncs) == (0, 0)
    # A process crash keeps everything sync returned: the kernel holds it.
    crash(storage)
    assert restored_indexes(str(tmp_path)) == list(range(1, 201))


def test_never_still_fsyncs_snapshot_files(tmp_path):
    storage, counter = open_counted(str(tmp_path), "never")
    storage.append(make_entries(1, 10, term=1), None)
    storage.save_snapshot(make_snapshot(10, 1))
    # The snapshot file and its directory entry.
    assert (counter.fsyncs, counter.fdatasyncs) == (2, 0)
    storage.close()


def test_pending_buffer_is_written_when_it_reaches_its_limit(tmp_path):
    storage, counter = open_counted(str(tmp_path), "batch")
    end = data_end(str(tmp_path))
    counter.reset()
    storage.append(make_entries(1, 40, term=1, size=120), None)
    assert data_end(str(tmp_path)) > end, "over pending_bytes_max: written"
    assert (counter.fsyncs, counter.fdatasyncs) == (0, 0), "but not synced until sync"
    storage.sync()
    assert counter.fdatasyncs == 1, "sync syncs what was written early, even with nothing pending"
    storage.sync()
    assert (counter.fsyncs, counter.fdatasyncs) == (0, 1)
    storage.close()


def test_a_segment_cut_by_a_full_buffer_gets_its_directory_fsync_at_the_next_sync(tmp_path):
    storage, counter = open_counted(str(tmp_path), "batch")
    counter.reset()
    storage.append(make_entries(1, 80, term=1, size=100), None)  # over pending_bytes_max: written
    cuts = len(storage.segment_paths()) - 1
    assert cuts >= 1
    # On the write without sync, only the completed and the new segments.
    assert (counter.fsyncs, counter.fdatasyncs) == (2 * cuts, 0)
    storage.sync()
    # The records of the last segment, and the directory.
    assert (counter.fsyncs, counter.fdatasyncs) == (2 * cuts + 1, 1)
    storage.close()
