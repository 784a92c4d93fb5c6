"""What each fsync mode makes durable, counted with an injected fsync function."""

from __future__ import annotations

import os

import pytest
from wal_helpers import FsyncCounter, crash, make_entries, make_snapshot

from kvorum.consensus.replicated_log import HardState
from kvorum.storage import Storage, StorageConfig, load
from kvorum.storage.replay import replay

SMALL_KB = dict(record_bytes_max=4096, segment_bytes_max=8192, pending_bytes_max=4096)


def open_counted(path: str, fsync: str, **limits: int) -> tuple[Storage, FsyncCounter]:
    counter = FsyncCounter()
    storage = Storage.open(path, StorageConfig(fsync=fsync, **(SMALL_KB | limits)), counter)
    return storage, counter


def restored_indexes(path: str) -> list[int]:
    return [e.index for e in load(path, StorageConfig(fsync="never", **SMALL_KB)).entries]


@pytest.mark.parametrize("fsync, expected", [("always", 2), ("batch", 2), ("never", 0)])
def test_creating_a_log_makes_its_first_segment_durable(tmp_path, fsync, expected):
    storage, counter = open_counted(str(tmp_path), fsync)
    assert counter.calls == expected  # the segment file and the directory entry
    storage.close()


def test_always_fsyncs_every_append_before_returning(tmp_path):
    storage, counter = open_counted(str(tmp_path), "always")
    counter.calls = 0
    for index in range(1, 6):
        storage.append(make_entries(index, 1, term=1), HardState(term=1, commit=index - 1))
        assert counter.calls == index
        on_disk = [e.index for e in replay(str(tmp_path)).model.items]
        assert on_disk == list(range(1, index + 1))
    storage.sync()
    assert counter.calls == 5, "nothing pending, nothing to fsync"
    storage.close()


def test_batch_fsyncs_once_per_group(tmp_path):
    storage, counter = open_counted(str(tmp_path), "batch")
    [segment] = storage.segment_paths()
    size = os.path.getsize(segment)
    counter.calls = 0
    for index in range(1, 6):
        storage.append(make_entries(index, 1, term=1), HardState(term=1, commit=index - 1))
    assert counter.calls == 0
    assert os.path.getsize(segment) == size, "append only buffers"
    storage.sync()
    assert counter.calls == 1
    storage.sync()
    assert counter.calls == 1
    storage.close()
    assert restored_indexes(str(tmp_path)) == [1, 2, 3, 4, 5]


def test_batch_loses_only_what_was_never_synced(tmp_path):
    storage, _ = open_counted(str(tmp_path), "batch")
    storage.append(make_entries(1, 3, term=1), None)
    storage.sync()
    storage.append(make_entries(4, 2, term=1), None)
    crash(storage)
    assert restored_indexes(str(tmp_path)) == [1, 2, 3]


def test_batch_rotation_fsyncs_the_old_segment_and_the_directory(tmp_path):
    storage, counter = open_counted(str(tmp_path), "batch", pending_bytes_max=1 << 20)
    counter.calls = 0
    storage.append(make_entries(1, 50, term=1, size=100), None)
    storage.append(make_entries(51, 50, term=1, size=100), None)
    segments = len(storage.segment_paths())
    storage.sync()
    cuts = len(storage.segment_paths()) - segments
    assert cuts >= 1
    # One fsync per completed segment, one for the last, one for the directory.
    assert counter.calls == cuts + 2
    storage.close()


def test_never_writes_at_sync_without_fsync(tmp_path):
    storage, counter = open_counted(str(tmp_path), "never")
    for start in range(1, 201, 20):
        storage.append(make_entries(start, 20, term=1, size=100), HardState(term=1, commit=start))
        storage.sync()
    assert len(storage.segment_paths()) > 1
    assert counter.calls == 0
    # A process crash keeps everything sync returned: the kernel holds it.
    crash(storage)
    assert restored_indexes(str(tmp_path)) == list(range(1, 201))


def test_never_still_fsyncs_snapshot_files(tmp_path):
    storage, counter = open_counted(str(tmp_path), "never")
    storage.append(make_entries(1, 10, term=1), None)
    storage.save_snapshot(make_snapshot(10, 1))
    assert counter.calls == 2  # the snapshot file and its directory entry
    storage.close()


def test_pending_buffer_is_written_when_it_reaches_its_limit(tmp_path):
    storage, counter = open_counted(str(tmp_path), "batch")
    [segment] = storage.segment_paths()
    size = os.path.getsize(segment)
    counter.calls = 0
    storage.append(make_entries(1, 40, term=1, size=120), None)
    assert os.path.getsize(segment) > size, "over pending_bytes_max: written"
    assert counter.calls == 0, "but not fsynced until sync"
    storage.sync()
    assert counter.calls == 1, "sync fsyncs what was written early, even with nothing pending"
    storage.sync()
    assert counter.calls == 1
    storage.close()


def test_a_segment_cut_by_a_full_buffer_gets_its_directory_fsync_at_the_next_sync(tmp_path):
    storage, counter = open_counted(str(tmp_path), "batch")
    counter.calls = 0
    storage.append(make_entries(1, 80, term=1, size=100), None)  # over pending_bytes_max: written
    cuts = len(storage.segment_paths()) - 1
    assert cuts >= 1
    assert counter.calls == cuts, "only the completed segments, on the write without fsync"
    storage.sync()
    assert counter.calls == cuts + 2  # the last segment and the directory
    storage.close()
