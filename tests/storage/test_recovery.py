"""Recovery from crashes and damage: torn tails are cut, corruption in the middle is reported.

The last segment is preallocated with zeros, so its records end where the
zeros start; damage is written in place (`write_at`), keeping the file's size,
as a crash inside a preallocated file leaves it."""

from __future__ import annotations

import errno
import os

import pytest
from wal_helpers import SMALL, data_end, make_entries, no_fsync, write_at

from kvorum.consensus.replicated_log import HardState
from kvorum.storage import CorruptLogError, Storage, load
from kvorum.storage import record as rec
from kvorum.storage.replay import list_segments

# Every test below writes entries 1..4 with one ENTRIES record each; this is the size of one.
RECORD_BYTES = len(rec.encode_record(rec.RecordType.ENTRIES, rec.encode_entries(make_entries(4, 1, term=1))))


def write_four_records(path: str) -> tuple[str, list[int]]:
    """Write entries 1..4, one record each; return the segment path and where each record starts."""
    starts = []
    with Storage.open(path, SMALL, no_fsync, no_fsync) as storage:
        [segment] = storage.segment_paths()
        for entry in make_entries(1, 4, term=1):
            storage.sync()
            starts.append(data_end(path))
            storage.append([entry], None)
    assert data_end(path) == starts[-1] + RECORD_BYTES
    assert os.path.getsize(segment) == SMALL.segment_bytes_max
    return segment, starts


def assert_records_end_at(segment: str, end: int) -> None:
    """The segment holds records up to `end`, then preallocated zeros to its full size."""
    with open(segment, "rb") as f:
        data = f.read()
    assert len(data) == SMALL.segment_bytes_max
    assert data_end(os.path.dirname(segment)) == end
    assert data[end:] == bytes(len(data) - end)


def flip(path: str, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x40]))


def indexes(path: str) -> list[int]:
    return [e.index for e in load(path, SMALL, no_fsync, no_fsync).entries]


@pytest.mark.parametrize("layout", ["zeros after it", "end of file"])
@pytest.mark.parametrize("kept_bytes", range(RECORD_BYTES))
def test_torn_last_record_at_every_offset_recovers_the_prefix(tmp_path, kept_bytes, layout):
    """A crash wrote only `kept_bytes` of the last record. In a preallocated
    segment the rest of the record stays zero; a segment written before
    segments were preallocated ends where the write stopped."""
    path = str(tmp_path)
    segment, starts = write_four_records(path)
    torn_at = starts[-1] + kept_bytes
    if layout == "zeros after it":
        write_at(segment, torn_at, bytes(SMALL.segment_bytes_max - torn_at))
    else:
        os.truncate(segment, torn_at)

    with Storage.open(path, SMALL, no_fsync, no_fsync) as storage:
        assert [e.index for e in storage.restored.entries] == [1, 2, 3]
        assert_records_end_at(segment, starts[-1])
        assert len(storage.repairs) == (0 if kept_bytes == 0 else 1)
        storage.append(make_entries(4, 1, term=2), None)
    assert indexes(path) == [1, 2, 3, 4]


@pytest.mark.parametrize("offset", range(RECORD_BYTES))
def test_bad_checksum_in_the_last_record_is_a_torn_tail(tmp_path, offset):
    path = str(tmp_path)
    segment, starts = write_four_records(path)
    flip(segment, starts[-1] + offset)
    assert indexes(path) == [1, 2, 3]
    assert_records_end_at(segment, starts[-1])


@pytest.mark.parametrize("offset", range(RECORD_BYTES))
def test_flipped_byte_in_a_middle_record_is_corruption(tmp_path, offset):
    path = str(tmp_path)
    segment, starts = write_four_records(path)
    size = os.path.getsize(segment)
    flip(segment, starts[1] + offset)

    with pytest.raises(CorruptLogError, match="followed by a valid record") as info:
        load(path, SMALL, no_fsync, no_fsync)
    assert (info.value.path, info.value.offset) == (segment, starts[1])
    assert str(starts[1]) in str(info.value)
    assert os.path.getsize(segment) == size, "a corrupt log must not be repaired"


def test_corruption_in_a_segment_that_is_not_the_last(tmp_path):
    path = str(tmp_path)
    with Storage.open(path, SMALL, no_fsync, no_fsync) as storage:
        storage.append(make_entries(1, 200, term=1, size=100), None)
    first, second = (p for _, p in list_segments(path)[:2])
    flip(first, os.path.getsize(first) - 1)
    with pytest.raises(CorruptLogError, match="not the last") as info:
        load(path, SMALL, no_fsync, no_fsync)
    assert info.value.path == first


@pytest.mark.parametrize("tail", [b"garbage without a record start" * 3, b"k", b"kv\x02\x07"])
def test_junk_after_the_last_record_is_cut(tmp_path, tail):
    path = str(tmp_path)
    segment, starts = write_four_records(path)
    end = starts[-1] + RECORD_BYTES
    write_at(segment, end, tail)
    with Storage.open(path, SMALL, no_fsync, no_fsync) as storage:
        assert [e.index for e in storage.restored.entries] == [1, 2, 3, 4]
        [repair] = storage.repairs
        assert repair.startswith(f"cut a torn tail of {len(tail)} bytes from {segment} at offset {end} (")
    assert_records_end_at(segment, end)


def test_preallocated_zeros_are_the_end_of_the_log_not_damage(tmp_path):
    path = str(tmp_path)
    segment, starts = write_four_records(path)
    with Storage.open(path, SMALL, no_fsync, no_fsync) as storage:
        assert [e.index for e in storage.restored.entries] == [1, 2, 3, 4]
        assert storage.repairs == []
        storage.append(make_entries(5, 1, term=1), None)
    assert_records_end_at(segment, starts[-1] + 2 * RECORD_BYTES)
    assert indexes(path) == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("kept_bytes", [0, 5, RECORD_BYTES - 1])
def test_a_valid_record_after_a_torn_one_and_zeros_is_corruption(tmp_path, kept_bytes):
    """Only the end of the records may be torn: a record that survived beyond a
    hole means the hole is damage in the middle, however many zeros precede it."""
    path = str(tmp_path)
    segment, starts = write_four_records(path)
    with open(segment, "rb") as f:
        last = f.read()[starts[-1] : starts[-1] + RECORD_BYTES]
    write_at(segment, starts[-1], last[:kept_bytes] + bytes(RECORD_BYTES - kept_bytes))
    write_at(segment, 6000, last)
    with pytest.raises(CorruptLogError, match="followed by a valid record at offset 6000") as info:
        load(path, SMALL, no_fsync, no_fsync)
    assert info.value.offset == starts[-1]


def test_zeros_then_a_fragment_of_a_record_is_a_torn_tail(tmp_path):
    """Pages of an unsynced write reached the disk out of order: the start of
    the record is still zeros, a later piece of it is not."""
    path = str(tmp_path)
    segment, starts = write_four_records(path)
    with open(segment, "rb") as f:
        last = f.read()[starts[-1] : starts[-1] + RECORD_BYTES]
    write_at(segment, starts[-1], bytes(RECORD_BYTES))
    write_at(segment, starts[-1] + 20, last[20:])
    with Storage.open(path, SMALL, no_fsync, no_fsync) as storage:
        assert [e.index for e in storage.restored.entries] == [1, 2, 3]
        assert f"cut a torn tail of {RECORD_BYTES} bytes" in storage.repairs[0]
    assert_records_end_at(segment, starts[-1])


def test_no_fragment_of_a_torn_tail_survives_behind_new_records(tmp_path):
    """Recovery zeros the space after the records, so a shorter record written
    over a torn long one leaves nothing for the next recovery to trip on."""
    path = str(tmp_path)
    segment, starts = write_four_records(path)
    long_record = rec.encode_record(rec.RecordType.ENTRIES, rec.encode_entries(make_entries(5, 1, term=1, size=3000)))
    end = starts[-1] + RECORD_BYTES
    write_at(segment, end, long_record[:-1])
    with Storage.open(path, SMALL, no_fsync, no_fsync) as storage:
        assert len(storage.repairs) == 1
        storage.append(make_entries(5, 1, term=1), None)
    with Storage.open(path, SMALL, no_fsync, no_fsync) as storage:
        assert storage.repairs == []
        assert [e.index for e in storage.restored.entries] == [1, 2, 3, 4, 5]
    assert_records_end_at(segment, end + RECORD_BYTES)


def test_a_segment_written_without_preallocation_is_preallocated_on_open(tmp_path):
    """A log written before segments were preallocated, or on a crash-free trim."""
    path = str(tmp_path)
    segment, starts = write_four_records(path)
    end = starts[-1] + RECORD_BYTES
    os.truncate(segment, end)
    with Storage.open(path, SMALL, no_fsync, no_fsync) as storage:
        assert storage.repairs == []
        assert_records_end_at(segment, end)
        storage.append(make_entries(5, 1, term=1), None)
    assert indexes(path) == [1, 2, 3, 4, 5]


def test_zeros_in_a_segment_that_is_not_the_last_are_corruption(tmp_path):
    """A segment is trimmed to its records and fsynced before the next one is created."""
    path = str(tmp_path)
    with Storage.open(path, SMALL, no_fsync, no_fsync) as storage:
        storage.append(make_entries(1, 200, term=1, size=100), None)
    first = list_segments(path)[0][1]
    size = os.path.getsize(first)
    assert size < SMALL.segment_bytes_max
    with open(first, "ab") as f:
        f.write(bytes(SMALL.segment_bytes_max - size))
    with pytest.raises(CorruptLogError, match="not the last") as info:
        load(path, SMALL, no_fsync, no_fsync)
    assert (info.value.path, info.value.offset) == (first, size)


@pytest.mark.parametrize("errno_value", [errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL])
def test_a_filesystem_without_fallocate_gets_a_sparse_segment(tmp_path, monkeypatch, errno_value):
    def unsupported(fd: int, offset: int, length: int) -> None:
        raise OSError(errno_value, os.strerror(errno_value))

    monkeypatch.setattr(os, "posix_fallocate", unsupported)
    path = str(tmp_path)
    segment, starts = write_four_records(path)
    assert_records_end_at(segment, starts[-1] + RECORD_BYTES)
    assert indexes(path) == [1, 2, 3, 4]


def test_a_full_disk_fails_the_segment_creation(tmp_path, monkeypatch):
    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(OSError) as info:
        Storage.open(str(tmp_path), SMALL, no_fsync, no_fsync)
    assert info.value.errno == errno.ENOSPC


@pytest.mark.parametrize(
    "content",
    [b"", b"kv\x01", bytes(SMALL.segment_bytes_max), b"kv\x01" + bytes(SMALL.segment_bytes_max - 3)],
    ids=["empty", "torn header", "preallocated", "torn header, preallocated"],
)
def test_crash_while_creating_a_segment(tmp_path, content):
    path = str(tmp_path)
    segment, _ = write_four_records(path)
    os.truncate(segment, data_end(path))  # sealed, as a cut leaves it
    torn = os.path.join(path, "%020d.wal" % 1)
    with open(torn, "wb") as f:
        f.write(content)
    with Storage.open(path, SMALL, no_fsync, no_fsync) as storage:
        assert [e.index for e in storage.restored.entries] == [1, 2, 3, 4]
        assert storage.segment_paths() == [segment]
        storage.append(make_entries(5, 1, term=1), HardState(term=1, commit=5))
    assert indexes(path) == [1, 2, 3, 4, 5]


def test_only_segment_torn_inside_its_header(tmp_path):
    path = str(tmp_path)
    Storage.open(path, SMALL, no_fsync, no_fsync).close()
    [(_, segment)] = list_segments(path)
    os.truncate(segment, 5)
    with Storage.open(path, SMALL, no_fsync, no_fsync) as storage:
        assert storage.restored.entries == ()
        storage.append(make_entries(1, 2, term=1), None)
    assert indexes(path) == [1, 2]
