"""The log as the WAL describes it, and how replaying segments rebuilds it.

Theory of operation
-------------------
`LogModel` is the single definition of what each record type means. The
writer (`wal.Storage`) applies every record to its own model at the moment it
emits the record, and recovery applies the same records to a fresh model when
it replays the segments, so the two cannot drift apart:

- SEGMENT [version, seq, next_index, prev_term]: the first record of a
  segment. Replay of the oldest surviving segment starts here, from an
  unknown prefix: the log is known to continue at `next_index`, and the entry
  before it had `prev_term`. In any later segment `next_index` must equal the
  model's next index, which catches a missing or reordered segment.
- ENTRIES [first_index, rows]: appended; `first_index` must be the model's
  next index (the writer emits a TRUNCATE first when it overwrites).
- TRUNCATE [from_index]: every entry from `from_index` on is discarded.
- SNAPSHOT [index, term]: every entry up to `index` is now held by the
  snapshot file for `index`; entries after it stay. The writer emits
  TRUNCATE [index + 1] first when the snapshot conflicts with the log.
- HARD_STATE [term, vote, commit]: replaces the previous hard state.

Every segment begins with SEGMENT, HARD_STATE and SNAPSHOT restating the state
at the moment the segment was cut, so deleting older segments after a
compaction loses nothing that replay needs.

The model keeps `items` for indexes first_index .. next_index - 1: Entry
objects during recovery, bare terms in the writer (which does not need the
data once it is on disk).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Generic, TypeVar

from kvorum.consensus.replicated_log import Entry, HardState
from kvorum.storage import record as rec
from kvorum.storage.record import CorruptLogError, RecordType

T = TypeVar("T")


class LogModel(Generic[T]):
    """A log with a possibly unknown prefix, a snapshot base, and a hard state."""

    def __init__(self, term_of: Callable[[T], int]) -> None:
        self._term_of = term_of
        self.items: list[T] = []
        # Invariant: items[i] is the entry at index first_index + i; no gaps.
        self.first_index = 1
        # The term of the entry at first_index - 1; None when replay cannot know it.
        self.prev_term: int | None = 0
        # Invariant: snapshot_index never decreases; 0 means no snapshot yet.
        self.snapshot_index = 0
        self.snapshot_term = 0
        self.hard_state = HardState()

    @property
    def next_index(self) -> int:
        return self.first_index + len(self.items)

    @property
    def last_index(self) -> int:
        return self.next_index - 1

    def term_at(self, index: int) -> int | None:
        if index == self.first_index - 1:
            return self.prev_term
        if self.first_index <= index < self.next_index:
            return self._term_of(self.items[index - self.first_index])
        return None

    def start_segment(self, next_index: int, prev_term: int | None) -> None:
        """Replay begins at the oldest surviving segment: everything before is unknown."""
        assert next_index >= 1
        self.items = []
        self.first_index = next_index
        self.prev_term = prev_term

    def truncate(self, from_index: int) -> None:
        assert self.snapshot_index < from_index <= self.next_index, (from_index, self.next_index)
        if from_index < self.first_index:
            self.first_index = from_index
            self.prev_term = None
            self.items = []
        else:
            del self.items[from_index - self.first_index :]
        assert self.next_index == from_index

    def extend(self, first_index: int, items: list[T]) -> None:
        assert first_index == self.next_index, (first_index, self.next_index)
        assert items
        self.items.extend(items)

    def conflicts_with_snapshot(self, index: int, term: int) -> bool:
        """Must entries after `index` go when a snapshot at (index, term) is installed?

        The rule of the Raft paper, section 7: the log keeps the entries after
        the snapshot only if it holds the snapshot's last entry with the same term."""
        return self.term_at(index) != term and self.last_index > index

    def snapshot(self, index: int, term: int) -> None:
        assert index >= self.snapshot_index, (index, self.snapshot_index)
        if index >= self.last_index:
            self.items = []
            self.first_index = index + 1
            self.prev_term = term
        elif index >= self.first_index - 1:
            del self.items[: index + 1 - self.first_index]
            self.first_index = index + 1
            self.prev_term = term
        self.snapshot_index = index
        self.snapshot_term = term


@dataclass(frozen=True, slots=True)
class SegmentFile:
    seq: int
    path: str
    next_index: int  # from its SEGMENT record: the log held next_index - 1 entries when it was cut


@dataclass(slots=True)
class Replay:
    model: LogModel[Entry]
    segments: list[SegmentFile]  # every segment with at least its SEGMENT record, oldest first
    last_valid_bytes: int  # good prefix of the last segment file: where its records end
    torn_reason: str | None  # why the last segment's tail is cut; None when only zeros follow
    torn_bytes: int  # how many damaged bytes the cut removes (the zeros after them not counted)
    empty_tail: str | None  # path of a last segment that holds no valid record at all
    empty_tail_seq: int | None


SEGMENT_SUFFIX = ".wal"


def segment_name(seq: int) -> str:
    assert seq >= 0
    return f"{seq:020d}{SEGMENT_SUFFIX}"


def list_segments(dir_path: str) -> list[tuple[int, str]]:
    """(seq, path) of every segment file, by seq; a gap in seq numbers is corruption."""
    found = []
    for name in os.listdir(dir_path):
        digits = name[: -len(SEGMENT_SUFFIX)]
        if name.endswith(SEGMENT_SUFFIX) and digits.isdigit() and len(digits) == 20:
            found.append((int(digits), os.path.join(dir_path, name)))
    found.sort()
    for (seq, _), (next_seq, path) in zip(found, found[1:]):
        if next_seq != seq + 1:
            raise CorruptLogError(path, None, f"segment {seq + 1} is missing before it")
    return found


def _apply(model: LogModel[Entry], path: str, record: rec.Record, first: bool) -> int | None:
    """Apply one record; return the segment's next_index when the record is SEGMENT."""
    rtype = record.rtype
    if rtype is RecordType.SEGMENT:
        _, next_index, prev_term = rec.decode_segment(record.body)
        if first:
            model.start_segment(next_index, prev_term)
        elif next_index != model.next_index:
            raise CorruptLogError(
                path, record.offset,
                f"segment starts at index {next_index} but the log before it ends at {model.last_index}",
            )
        return next_index
    if rtype is RecordType.ENTRIES:
        entries = rec.decode_entries(record.body)
        if entries[0].index != model.next_index:
            raise CorruptLogError(
                path, record.offset,
                f"entries start at index {entries[0].index}, expected {model.next_index}",
            )
        model.extend(entries[0].index, entries)
    elif rtype is RecordType.TRUNCATE:
        from_index = rec.decode_truncate(record.body)
        if not model.snapshot_index < from_index <= model.next_index:
            raise CorruptLogError(path, record.offset, f"truncate from {from_index} out of range")
        model.truncate(from_index)
    elif rtype is RecordType.SNAPSHOT:
        index, term = rec.decode_snapshot_marker(record.body)
        if index < model.snapshot_index:
            raise CorruptLogError(path, record.offset, f"snapshot index {index} goes backwards")
        model.snapshot(index, term)
    else:
        assert rtype is RecordType.HARD_STATE
        model.hard_state = rec.decode_hard_state(record.body)
    return None


def replay(dir_path: str) -> Replay:
    model: LogModel[Entry] = LogModel(lambda e: e.term)
    files = list_segments(dir_path)
    segments: list[SegmentFile] = []
    result = Replay(model, segments, 0, None, 0, None, None)
    for position, (seq, path) in enumerate(files):
        last = position == len(files) - 1
        with open(path, "rb") as f:
            data = f.read()
        read = rec.read_segment(path, data, last)
        if not read.records:
            # Only a crash while creating the last segment leaves it without its
            # SEGMENT record (read_segment raised for any other segment).
            assert last
            result.empty_tail = path
            result.empty_tail_seq = seq
            break
        if read.records[0].rtype is not RecordType.SEGMENT:
            raise CorruptLogError(path, 0, "segment does not begin with a SEGMENT record")
        for i, record in enumerate(read.records):
            if i > 0 and record.rtype is RecordType.SEGMENT:
                raise CorruptLogError(path, record.offset, "SEGMENT record inside a segment")
            try:
                next_index = _apply(model, path, record, first=position == 0)
            except (ValueError, TypeError, KeyError) as exc:
                raise CorruptLogError(path, record.offset, f"malformed record body: {exc}") from exc
            if next_index is not None:
                seq_in_record = rec.decode_segment(record.body)[0]
                if seq_in_record != seq:
                    raise CorruptLogError(path, 0, f"segment record says seq {seq_in_record}")
                segments.append(SegmentFile(seq, path, next_index))
        result.last_valid_bytes = read.valid_bytes
        result.torn_reason = read.torn_reason
        result.torn_bytes = read.torn_bytes
    return result
