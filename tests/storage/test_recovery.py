"""Recovery from crashes and damage: torn tails are cut, corruption in the middle is reported."""

from __future__ import annotations

import os

import pytest
from wal_helpers import SMALL, make_entries, no_fsync

from kvorum.consensus.replicated_log import HardState
from kvorum.storage import CorruptLogError, Storage, load
from kvorum.storage import record as rec
from kvorum.storage.replay import list_segments

# Every test below writes entries 1..4 with one ENTRIES record each; this is the size of one.
RECORD_BYTES = len(rec.encode_record(rec.RecordType.ENTRIES, rec.encode_entries(make_entries(4, 1, term=1))))


def write_four_records(path: str) -> tuple[str, list[int]]:
    """Write entries 1..4, one record each; return the segment path and where each record starts."""
    starts = []
    with Storage.open(path, SMALL, no_fsync) as storage:
        [segment] = storage.segment_paths()
        for entry in make_entries(1, 4, term=1):
            storage.sync()
            starts.append(os.path.getsize(segment))
            storage.append([entry], None)
    assert os.path.getsize(segment) == starts[-1] + RECORD_BYTES
    return segment, starts


def flip(path: str, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x40]))


def indexes(path: str) -> list[int]:
    return [e.index for e in load(path, SMALL, no_fsync).entries]


@pytest.mark.parametrize("kept_bytes", range(RECORD_BYTES))
def test_torn_last_record_at_every_offset_recovers_the_prefix(tmp_path, kept_bytes):
    path = str(tmp_path)
    segment, starts = write_four_records(path)
    os.truncate(segment, starts[-1] + kept_bytes)

    with Storage.open(path, SMALL, no_fsync) as storage:
        assert [e.index for e in storage.restored.entries] == [1, 2, 3]
        assert os.path.getsize(segment) == starts[-1]
        assert len(storage.repairs) == (0 if kept_bytes == 0 else 1)
        storage.append(make_entries(4, 1, term=2), None)
    assert indexes(path) == [1, 2, 3, 4]


@pytest.mark.parametrize("offset", range(RECORD_BYTES))
def test_bad_checksum_in_the_last_record_is_a_torn_tail(tmp_path, offset):
    path = str(tmp_path)
    segment, starts = write_four_records(path)
    flip(segment, starts[-1] + offset)
    assert indexes(path) == [1, 2, 3]
    assert os.path.getsize(segment) == starts[-1]


@pytest.mark.parametrize("offset", range(RECORD_BYTES))
def test_flipped_byte_in_a_middle_record_is_corruption(tmp_path, offset):
    path = str(tmp_path)
    segment, starts = write_four_records(path)
    size = os.path.getsize(segment)
    flip(segment, starts[1] + offset)

    with pytest.raises(CorruptLogError, match="followed by a valid record") as info:
        load(path, SMALL, no_fsync)
    assert (info.value.path, info.value.offset) == (segment, starts[1])
    assert str(starts[1]) in str(info.value)
    assert os.path.getsize(segment) == size, "a corrupt log must not be repaired"


def test_corruption_in_a_segment_that_is_not_the_last(tmp_path):
    path = str(tmp_path)
    with Storage.open(path, SMALL, no_fsync) as storage:
        storage.append(make_entries(1, 200, term=1, size=100), None)
    first, second = (p for _, p in list_segments(path)[:2])
    flip(first, os.path.getsize(first) - 1)
    with pytest.raises(CorruptLogError, match="not the last") as info:
        load(path, SMALL, no_fsync)
    assert info.value.path == first


@pytest.mark.parametrize("tail", [b"\0" * 4096, b"garbage without a record start" * 3, b"k"])
def test_junk_after_the_last_record_is_cut(tmp_path, tail):
    path = str(tmp_path)
    segment, starts = write_four_records(path)
    size = os.path.getsize(segment)
    with open(segment, "ab") as f:
        f.write(tail)
    assert indexes(path) == [1, 2, 3, 4]
    assert os.path.getsize(segment) == size


@pytest.mark.parametrize("header", [b"", b"kv\x01"])
def test_crash_while_creating_a_segment(tmp_path, header):
    path = str(tmp_path)
    segment, _ = write_four_records(path)
    torn = os.path.join(path, "%020d.wal" % 1)
    with open(torn, "wb") as f:
        f.write(header)
    with Storage.open(path, SMALL, no_fsync) as storage:
        assert [e.index for e in storage.restored.entries] == [1, 2, 3, 4]
        assert storage.segment_paths() == [segment]
        storage.append(make_entries(5, 1, term=1), HardState(term=1, commit=5))
    assert indexes(path) == [1, 2, 3, 4, 5]


def test_only_segment_torn_inside_its_header(tmp_path):
    path = str(tmp_path)
    Storage.open(path, SMALL, no_fsync).close()
    [(_, segment)] = list_segments(path)
    os.truncate(segment, 5)
    with Storage.open(path, SMALL, no_fsync) as storage:
        assert storage.restored.entries == ()
        storage.append(make_entries(1, 2, term=1), None)
    assert indexes(path) == [1, 2]
