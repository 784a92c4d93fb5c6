"""Durable storage for one consensus group: the write-ahead log and its snapshots.

Theory of operation
-------------------
The driver hands every `Ready` to this module in the order the consensus
contract demands (kvorum/consensus/replicated_log.py):

    if rd.snapshot: storage.save_snapshot(rd.snapshot)   # durable on return
    storage.append(rd.entries, rd.hard_state)            # buffered
    storage.sync()                                       # one write + one fdatasync
    ... only now send rd.messages ...

Group commit. `append` only validates the call, applies it to an in-memory
`LogModel` and encodes its records into a pending buffer. `sync` writes the
whole buffer with one `pwrite` and makes it durable with one fdatasync. A driver
that gathers several Readies calls `append` for each and `sync` once, before
sending any of their messages. `sync` may run in a worker thread while the
event loop keeps calling `append`: records appended during an fsync wait for
the next `sync`, which is what makes a group. Two locks keep that safe:
`_io_lock` serialises everything that touches files (sync, snapshots,
compaction, close), `_state_lock` guards the model and the pending buffer and
is only ever taken inside `_io_lock` or on its own, never the other way round.

Fsync modes (what each can lose is stated in docs/storage.md as well):

- "always": every `append` writes and fsyncs before it returns. Nothing
  returned from `append` is lost by any crash. One fsync per call.
- "batch": `append` buffers, `sync` writes and fsyncs once for the group. As
  long as the driver calls `sync` before sending the messages that depend on
  the group, nothing acknowledged to a peer or a client is lost by any crash.
- "never": `sync` writes to the operating system and never fsyncs (segment
  files, directory entries, segment deletion). A process crash loses nothing
  that `sync` returned, because the kernel still has the data; a machine crash
  or power loss can lose acknowledged writes and votes, which breaks Raft's
  safety for that node, and can leave the directory unrecoverable (the node
  must then be rebuilt from its peers). Snapshot files are fsynced even here.

Segments. Records go to the current segment until the next record would take
it past `segment_bytes_max`; then the segment is cut: the old file is trimmed
to its records and fsynced (so every segment but the last is exactly its
records, complete, which recovery relies on), a new file is created starting
with SEGMENT, HARD_STATE and SNAPSHOT records that restate the state at the
cut, and the directory is fsynced. The decision to cut is taken in `append`,
where the model state at that point is known; the pending buffer carries it
to `sync` as a `_Cut`.

Preallocation, and why the per-batch sync is an fdatasync. A new segment is
preallocated to `segment_bytes_max` with zeros (posix_fallocate; where the
filesystem cannot, ftruncate makes a sparse file of that size), its header
records are written, and the file is fsynced once: from then on its size and
its block map are durable. Records are written with `pwrite` at a tracked
offset inside that space, so a write never changes the file's size, and
fdatasync (which skips metadata that reading the data back does not need,
such as timestamps) has no size change to commit. Appending to a growing
file instead changes the size on every write, so every sync must also commit
the inode to the filesystem journal. (On ext4 and XFS the first write into a
fallocated block still converts its extent from unwritten to written, a
metadata update that fdatasync must commit. Small syncs reach a new block only
every few dozen syncs; a sync of several kilobytes reaches one every time and
gains little. Filling a segment by writing zeros would avoid the conversion,
at the price of writing every segment twice.)
The reader finds the end of the records where the zeros start (see
record.py). The last segment stays preallocated across restarts: trimming it
at recovery would make every sync until the next cut pay for the size change
again. Only a torn tail is cut, and the space after it zeroed again
(truncate, then preallocate), so no fragment of it is left behind the
records written next.

Snapshots and compaction. `save_snapshot` writes the snapshot file atomically,
appends a SNAPSHOT record (preceded by TRUNCATE when the snapshot conflicts
with the log, by the rule of the Raft paper, section 7: keep the entries after
the snapshot only if the log holds the snapshot's last entry with the same
term), syncs, deletes every segment whose entries all lie at or below the
snapshot, and deletes all but the newest `snapshot_count_max` snapshot files.

Recovery (`Storage.open`, `load`) replays the segments (see replay.py),
truncates a torn tail, loads the newest snapshot and checks that the snapshot
and the log join without a gap. A crash between writing a snapshot file and
its SNAPSHOT record leaves a snapshot newer than the log says; recovery
applies it by the same rule and writes the missing records.

One writer. `open` takes an exclusive flock on the directory's LOCK file and
holds it until `close`, so a second Storage on the same directory (another
process started with the same --data-dir) fails with DirectoryLockedError
instead of interleaving records with the first.

Failures. A failed write or fsync leaves the file in an unknown state (after a
failed fsync, Linux may already have dropped the dirty pages), so the storage
refuses every later call with `StorageFailedError`; restarting the node
recovers from what is really on disk.
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
from dataclasses import dataclass
from typing import Sequence

from kvorum.consensus.replicated_log import Entry, HardState, RestoreState, Snapshot
from kvorum.storage import record as rec
from kvorum.storage import snapshot as snap
from kvorum.storage.record import CorruptLogError, RecordType
from kvorum.storage.snapshot import FsyncFn
from kvorum.storage.replay import LogModel, Replay, SegmentFile, replay, segment_name

FSYNC_MODES = ("always", "batch", "never")
LOCK_FILE = "LOCK"
MiB = 1024 * 1024

# A row of an ENTRIES record costs at most this much besides the entry's data:
# msgpack array header, term and index-free kind integers, bin header.
_ENTRY_OVERHEAD_BYTES_MAX = 1 + 9 + 2 + 5
# The ENTRIES record body's own framing: outer array, first index, rows array header.
_ENTRIES_FRAMING_BYTES_MAX = 1 + 9 + 5
# posix_fallocate errors meaning "this filesystem cannot preallocate", as
# opposed to ENOSPC, which is a full disk and must fail the segment's creation.
_FALLOCATE_UNSUPPORTED = frozenset({errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL})
# macOS has neither fdatasync nor posix_fallocate; there fsync and a sparse file stand in.
_fdatasync: FsyncFn = getattr(os, "fdatasync", os.fsync)


@dataclass(frozen=True, slots=True)
class StorageConfig:
    """Limits and durability of one storage directory; checked once, here."""

    fsync: str = "batch"
    # A segment is cut before a record that would take it past this size.
    segment_bytes_max: int = 64 * MiB
    # Largest record, header included; an entry that cannot fit is refused.
    record_bytes_max: int = 8 * MiB
    # Bytes appended but not yet written; past this, `append` writes (without
    # fsync) before returning, so memory stays bounded even without `sync`.
    pending_bytes_max: int = 16 * MiB
    # Snapshot files kept on disk; older ones are deleted after a new one is saved.
    snapshot_count_max: int = 2
    # Largest snapshot file body that recovery will read into memory.
    snapshot_bytes_max: int = 4096 * MiB

    def __post_init__(self) -> None:
        if self.fsync not in FSYNC_MODES:
            raise ValueError(f"fsync must be one of {FSYNC_MODES}, not {self.fsync!r}")
        if not 4096 <= self.record_bytes_max <= rec.RECORD_BYTES_CEILING:
            raise ValueError(f"record_bytes_max must be within 4096..{rec.RECORD_BYTES_CEILING}")
        if self.segment_bytes_max < 2 * self.record_bytes_max:
            raise ValueError("segment_bytes_max must be at least twice record_bytes_max")
        if self.pending_bytes_max < self.record_bytes_max:
            raise ValueError("pending_bytes_max must be at least record_bytes_max")
        if self.snapshot_count_max < 1:
            raise ValueError("snapshot_count_max must be at least 1")
        if self.snapshot_bytes_max < 1:
            raise ValueError("snapshot_bytes_max must be positive")


class StorageFailedError(Exception):
    """Operating error: an earlier write or fsync failed; reopen the storage to recover."""


class DirectoryLockedError(Exception):
    """Operating error: another Storage (in this or another process) has the directory open."""


@dataclass(frozen=True, slots=True)
class _Cut:
    """Pending marker: close the current segment and start `seq` with `header`."""

    seq: int
    next_index: int
    header: bytes


class Storage:
    """The WAL and snapshots of one consensus group in one directory."""

    def __init__(
        self, dir_path: str, config: StorageConfig, fsync_fn: FsyncFn, fdatasync_fn: FsyncFn
    ) -> None:
        """Use `Storage.open`; this only sets fields."""
        # Fixed for the lifetime of the object.
        self.dir_path = dir_path
        self.config = config
        self._fsync_fn = fsync_fn  # files whose size or directory entries change
        self._fdatasync_fn = fdatasync_fn  # the per-batch sync of records in preallocated space
        self._durable = config.fsync != "never"
        self._io_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._failed: BaseException | None = None
        self.restored = RestoreState()
        # What recovery changed on disk, one sentence each, for the server to log.
        self.repairs: list[str] = []
        # What the log looks like once every pending record is written; guarded by _state_lock.
        self._model: LogModel[int] = LogModel(lambda term: term)
        self._pending: list[bytes | _Cut] = []
        self._pending_bytes = 0
        # Invariant: _pending_bytes == total size of the bytes items in _pending.
        self._segment_bytes = 0  # size of the segment the next record goes to, pending included
        self._segment_has_records = False  # anything besides the header records
        self._next_seq = 0
        # On-disk state; guarded by _io_lock.
        self._segments: list[SegmentFile] = []
        self._fd = -1  # the last segment, open for writing
        self._offset = 0  # where the next record goes in the last segment: the end of its records
        self._lock_fd = -1  # holds an exclusive flock on LOCK_FILE while open
        self._dir_dirty = False  # a segment was created since the directory was last fsynced
        # Bytes were written to the last segment without fsync (pending buffer
        # full, or fsync="never"); the next durable sync must fsync even if
        # nothing is pending.
        self._unsynced = False

    # ------------------------------------------------------------------ open

    @classmethod
    def open(
        cls,
        dir_path: str,
        config: StorageConfig | None = None,
        fsync_fn: FsyncFn = os.fsync,
        fdatasync_fn: FsyncFn = _fdatasync,
    ) -> Storage:
        """Recover the directory (creating it if needed) and return storage ready to append.

        `restored` holds what recovery found. Raises CorruptLogError when the
        directory is damaged beyond a torn tail. `fsync_fn` and `fdatasync_fn`
        are injected by tests and benchmarks to count or skip syncs."""
        storage = cls(dir_path, config or StorageConfig(), fsync_fn, fdatasync_fn)
        os.makedirs(dir_path, exist_ok=True)
        with storage._io_lock:
            try:
                storage._lock_directory()
                storage._recover()
            except BaseException:
                storage._release()
                raise
        return storage

    def _lock_directory(self) -> None:
        """Two writers interleaving records would destroy the log; the second one is refused."""
        self._lock_fd = os.open(os.path.join(self.dir_path, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DirectoryLockedError(f"{self.dir_path} is already open in another Storage") from None

    def _release(self) -> None:
        """Close the segment and give up the directory lock (closing the file drops the flock)."""
        for fd in (self._fd, self._lock_fd):
            if fd >= 0:
                os.close(fd)
        self._fd = self._lock_fd = -1

    def _recover(self) -> None:
        """Replay, check, and only then repair: a directory found corrupt is left untouched."""
        found = replay(self.dir_path)
        snapshots = snap.list_snapshots(self.dir_path)
        if not found.segments and snapshots:
            raise CorruptLogError(self.dir_path, None, "snapshot files but no WAL segment")
        newest = None
        if snapshots:
            newest = snap.read_snapshot(snapshots[-1][1], self.config.snapshot_bytes_max)
        unrecorded = self._check_snapshot(found.model, newest)
        # The writer's model starts from the log as the WAL has it; an unrecorded
        # snapshot is installed into it further down, emitting the records it lacks.
        self._seed(found.model)
        if unrecorded:
            assert newest is not None
            if found.model.conflicts_with_snapshot(newest.index, newest.term):
                found.model.truncate(newest.index + 1)
            found.model.snapshot(newest.index, newest.term)
        self._check_joined(found.model)
        entries = tuple(found.model.items)
        self.restored = RestoreState(hard_state=found.model.hard_state, snapshot=newest, entries=entries)
        self._repair(found)
        if unrecorded:
            assert newest is not None
            with self._state_lock:
                self._emit_snapshot(newest.index, newest.term)
            self._flush_locked(self._durable)
            self.repairs.append(f"logged snapshot {newest.index}, whose record a crash had prevented")
        with self._state_lock:
            assert self._model.next_index == found.model.next_index
            assert self._model.first_index == found.model.first_index
        self._compact_locked()

    def _seed(self, model: LogModel[Entry]) -> None:
        """Start the writer's model from the replayed one (terms only)."""
        with self._state_lock:
            live = self._model
            live.snapshot_index = model.snapshot_index
            live.snapshot_term = model.snapshot_term
            live.start_segment(model.first_index, model.prev_term)
            live.hard_state = model.hard_state
            if model.items:
                live.extend(model.first_index, [e.term for e in model.items])

    def _check_joined(self, model: LogModel[Entry]) -> None:
        """The newest snapshot and the log must join without a gap; entries must be contiguous."""
        if model.first_index != model.snapshot_index + 1:
            raise CorruptLogError(
                self.dir_path, None,
                f"entries {model.snapshot_index + 1}..{model.first_index - 1} are missing: "
                f"the log starts at {model.first_index} and the newest snapshot ends at "
                f"{model.snapshot_index}",
            )
        for offset, entry in enumerate(model.items):
            assert entry.index == model.first_index + offset

    def _repair(self, found: Replay) -> None:
        """Cut a torn tail, drop a segment that a crash left without its header, open for append."""
        for path in snap.remove_temp_files(self.dir_path):
            self.repairs.append(f"removed {path}, left by a crash while writing a snapshot")
        self._segments = found.segments
        if found.empty_tail is not None:
            os.unlink(found.empty_tail)
            self._fsync_dir()
            self.repairs.append(f"removed {found.empty_tail}, a segment a crash left without its header")
        if not self._segments:
            self._next_seq = found.empty_tail_seq or 0
            self._start_first_segment()
            return
        last = self._segments[-1]
        self._fd = os.open(last.path, os.O_WRONLY)
        self._offset = found.last_valid_bytes
        if found.torn_reason is not None:
            # Zero the space after the records again, so that no fragment of the
            # torn write survives behind the records written next.
            os.ftruncate(self._fd, self._offset)
            self.repairs.append(
                f"cut a torn tail of {found.torn_bytes} bytes from {last.path} at offset "
                f"{found.last_valid_bytes} ({found.torn_reason})"
            )
        if os.fstat(self._fd).st_size < self.config.segment_bytes_max:
            # After a cut, or a segment written before segments were preallocated.
            self._preallocate(self._fd)
            if self._durable:
                self._fsync_fn(self._fd)
        with self._state_lock:
            self._segment_bytes = self._offset
            self._segment_has_records = True
            self._next_seq = last.seq + 1

    def _start_first_segment(self) -> None:
        """Create the first segment of an empty directory, durably."""
        with self._state_lock:
            cut = self._new_cut()
        self._create_segment(cut)
        self._fsync_dir()

    def _check_snapshot(self, model: LogModel[Entry], newest: Snapshot | None) -> bool:
        """Check the newest snapshot file against the WAL; True if the WAL does not record it yet."""
        marker = model.snapshot_index
        if newest is None:
            if marker > 0:
                reason = f"the WAL records a snapshot at {marker} but no snapshot file exists"
                raise CorruptLogError(self.dir_path, None, reason)
            return False
        if newest.index < marker:
            reason = f"the WAL records a snapshot at {marker}, the newest file is at {newest.index}"
            raise CorruptLogError(self.dir_path, None, reason)
        if newest.index == marker and newest.term != model.snapshot_term:
            raise CorruptLogError(
                self.dir_path, None,
                f"snapshot at {marker} has term {newest.term}, the WAL says {model.snapshot_term}",
            )
        return newest.index > marker

    # ------------------------------------------------------------ appending

    @property
    def first_index(self) -> int:
        """Index of the first entry in the log (snapshot index + 1)."""
        with self._state_lock:
            return self._model.first_index

    @property
    def last_index(self) -> int:
        """Index of the last entry appended (pending ones included), or the snapshot index."""
        with self._state_lock:
            return self._model.last_index

    @property
    def hard_state(self) -> HardState:
        with self._state_lock:
            return self._model.hard_state

    @property
    def snapshot_index(self) -> int:
        with self._state_lock:
            return self._model.snapshot_index

    def append(self, entries: Sequence[Entry], hard_state: HardState | None) -> None:
        """Append `entries` (overwriting any stored suffix from the first one's index) and
        record `hard_state` (None: unchanged).

        Entries that the latest snapshot already covers are skipped: they are
        committed, so the snapshot holds them (the driver may apply committed
        entries, and snapshot them, before it persists them). Durable on return
        only in "always" mode; otherwise after the next `sync`. Raises
        ValueError, changing nothing, when an entry cannot fit in one record."""
        self._check_usable()
        with self._state_lock:
            covered = self._model.snapshot_index - entries[0].index + 1 if entries else 0
            if covered > 0:
                entries = entries[covered:]
            self._append_locked(entries, self._batch(entries), hard_state)
            overflow = self._pending_bytes > self.config.pending_bytes_max
        if self.config.fsync == "always":
            self.sync()
        elif overflow:
            with self._io_lock:
                self._flush_locked(False)

    def _batch(self, entries: Sequence[Entry]) -> list[Sequence[Entry]]:
        """Split `entries` into runs that each fit one ENTRIES record."""
        body_bytes_max = self.config.record_bytes_max - rec.HEADER_BYTES - _ENTRIES_FRAMING_BYTES_MAX
        batches: list[Sequence[Entry]] = []
        start = 0
        size = 0
        for i, entry in enumerate(entries):
            row = len(entry.data) + _ENTRY_OVERHEAD_BYTES_MAX
            if row > body_bytes_max:
                raise ValueError(
                    f"entry {entry.index} holds {len(entry.data)} bytes; with its framing it "
                    f"exceeds record_bytes_max {self.config.record_bytes_max}"
                )
            if size + row > body_bytes_max:
                batches.append(entries[start:i])
                start, size = i, 0
            size += row
        if start < len(entries):
            batches.append(entries[start:])
        return batches

    def _append_locked(
        self, entries: Sequence[Entry], batches: list[Sequence[Entry]], hard_state: HardState | None
    ) -> None:
        model = self._model
        if hard_state is not None:
            assert hard_state.term >= model.hard_state.term, "term never decreases"
            assert hard_state.commit >= model.hard_state.commit, "commit never decreases"
        if entries:
            first = entries[0].index
            for prev, entry in zip(entries, entries[1:]):
                assert entry.index == prev.index + 1, "entries must be contiguous"
            assert first > model.snapshot_index, "cannot overwrite entries covered by a snapshot"
            assert first <= model.next_index, f"gap: appending {first} after {model.last_index}"
            if first < model.next_index:
                self._emit(RecordType.TRUNCATE, rec.encode_truncate(first))
                model.truncate(first)
            for batch in batches:
                self._emit(RecordType.ENTRIES, rec.encode_entries(batch))
                model.extend(batch[0].index, [e.term for e in batch])
        if hard_state is not None and hard_state != model.hard_state:
            self._emit(RecordType.HARD_STATE, rec.encode_hard_state(hard_state))
            model.hard_state = hard_state

    def _emit(self, rtype: RecordType, body: bytes) -> None:
        """Queue one record, cutting a new segment first if it would overflow this one."""
        record = rec.encode_record(rtype, body)
        size = len(record)
        assert size <= self.config.record_bytes_max
        if self._segment_bytes + size > self.config.segment_bytes_max and self._segment_has_records:
            self._pending.append(self._new_cut())
        self._pending.append(record)
        self._pending_bytes += size
        self._segment_bytes += size
        self._segment_has_records = True

    def _new_cut(self) -> _Cut:
        """Start a new segment whose header restates the model's current state."""
        model = self._model
        prev_term = model.term_at(model.last_index)
        assert prev_term is not None
        seq = self._next_seq
        segment = rec.encode_segment(seq, model.next_index, prev_term)
        marker = rec.encode_snapshot_marker(model.snapshot_index, model.snapshot_term)
        header = b"".join(
            (
                rec.encode_record(RecordType.SEGMENT, segment),
                rec.encode_record(RecordType.HARD_STATE, rec.encode_hard_state(model.hard_state)),
                rec.encode_record(RecordType.SNAPSHOT, marker),
            )
        )
        cut = _Cut(seq, model.next_index, header)
        self._next_seq += 1
        self._segment_bytes = len(header)
        self._segment_has_records = False
        return cut

    def _emit_snapshot(self, index: int, term: int) -> None:
        """Queue the records that install a snapshot at (index, term) into the log."""
        model = self._model
        if model.conflicts_with_snapshot(index, term):
            self._emit(RecordType.TRUNCATE, rec.encode_truncate(index + 1))
            model.truncate(index + 1)
        self._emit(RecordType.SNAPSHOT, rec.encode_snapshot_marker(index, term))
        model.snapshot(index, term)
        assert model.first_index == index + 1

    # -------------------------------------------------------------- syncing

    def sync(self) -> None:
        """Write everything appended before this call and, unless fsync="never", fsync it.

        Safe to call from a worker thread while another thread appends; what is
        appended meanwhile is left for the next `sync`."""
        self._check_usable()
        with self._io_lock:
            self._flush_locked(self._durable)

    def _flush_locked(self, fsync: bool) -> None:
        assert self._io_lock.locked()
        with self._state_lock:
            batch, self._pending = self._pending, []
            assert self._pending_bytes == sum(len(item) for item in batch if isinstance(item, bytes))
            self._pending_bytes = 0
        if not batch and not (fsync and self._unsynced):
            return
        try:
            self._write_batch(batch, fsync)
        except BaseException as exc:
            self._failed = exc
            raise

    def _write_batch(self, batch: list[bytes | _Cut], fsync: bool) -> None:
        chunk: list[bytes] = []
        for item in batch:
            if isinstance(item, bytes):
                chunk.append(item)
                continue
            self._write_records(b"".join(chunk))
            chunk = []
            self._seal_segment()
            self._create_segment(item)
        self._write_records(b"".join(chunk))
        self._unsynced = True
        if fsync:
            # The size and block map were made durable when the segment was
            # created; the records' data is all that is left to flush.
            self._fdatasync_fn(self._fd)
            self._unsynced = False
            # A segment created by an earlier write without fsync (pending buffer
            # full) still needs its directory entry made durable.
            if self._dir_dirty:
                self._fsync_dir()

    def _write_records(self, data: bytes) -> None:
        """Write `data` at the end of the last segment's records."""
        view = memoryview(data)
        while view:
            written = os.pwrite(self._fd, view, self._offset)
            self._offset += written
            view = view[written:]

    def _seal_segment(self) -> None:
        """Trim the last segment to its records and make it complete on disk.

        Every segment but the last must be complete before the next one
        exists: recovery treats any damage in it, its preallocated zeros
        included, as corruption."""
        os.ftruncate(self._fd, self._offset)
        if self._durable:
            self._fsync_fn(self._fd)
        os.close(self._fd)
        self._fd = -1

    def _create_segment(self, cut: _Cut) -> None:
        """Create segment `cut.seq`, preallocated, holding its header records; make it the last.

        Durable modes fsync it once here, which makes its size and block map
        durable together with the header; the directory entry is fsynced by the
        caller (at once for the first segment, at the end of the batch for a cut)."""
        path = os.path.join(self.dir_path, segment_name(cut.seq))
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        self._offset = 0
        self._segments.append(SegmentFile(cut.seq, path, cut.next_index))
        self._dir_dirty = True
        self._preallocate(self._fd)
        self._write_records(cut.header)
        if self._durable:
            self._fsync_fn(self._fd)

    def _preallocate(self, fd: int) -> None:
        """Give the segment its full size in zeros, so that writing records never changes it."""
        size = self.config.segment_bytes_max
        if hasattr(os, "posix_fallocate"):
            try:
                os.posix_fallocate(fd, 0, size)
                return
            except OSError as exc:
                if exc.errno not in _FALLOCATE_UNSUPPORTED:
                    raise
        # A sparse file: its blocks are allocated as records are written, but
        # its size is already final, and holes read as zeros all the same.
        if os.fstat(fd).st_size < size:
            os.ftruncate(fd, size)

    def _fsync_dir(self) -> None:
        if self._durable:
            snap.fsync_dir(self.dir_path, self._fsync_fn)
            self._dir_dirty = False

    # ------------------------------------------------------------ snapshots

    def save_snapshot(self, snapshot: Snapshot) -> None:
        """Persist `snapshot`, install it into the log, and compact; durable on return.

        Used both for snapshots this node takes of its own state machine and for
        snapshots installed from a leader. Entries after the snapshot are kept
        only if the log holds (snapshot.index, snapshot.term). A snapshot no
        newer than the latest one is ignored, as the engines ignore it."""
        self._check_usable()
        with self._io_lock:
            with self._state_lock:
                if snapshot.index <= self._model.snapshot_index:
                    return
            try:
                snap.write_snapshot(self.dir_path, snapshot, self._fsync_fn)
            except BaseException as exc:
                self._failed = exc
                raise
            with self._state_lock:
                self._emit_snapshot(snapshot.index, snapshot.term)
            self._flush_locked(self._durable)
            self._compact_locked()

    def _compact_locked(self) -> None:
        """Delete segments wholly covered by the snapshot, and surplus snapshot files."""
        assert self._io_lock.locked()
        with self._state_lock:
            covered = self._model.snapshot_index
        doomed = 0
        while doomed + 1 < len(self._segments) and self._segments[doomed + 1].next_index - 1 <= covered:
            doomed += 1
        for segment in self._segments[:doomed]:
            os.unlink(segment.path)
        del self._segments[:doomed]
        pruned = snap.prune_snapshots(self.dir_path, self.config.snapshot_count_max)
        if doomed or pruned:
            self._fsync_dir()

    # ------------------------------------------------------------- lifetime

    def segment_paths(self) -> list[str]:
        """Paths of the segment files on disk, oldest first (for tests and tools)."""
        with self._io_lock:
            return [segment.path for segment in self._segments]

    def _check_usable(self) -> None:
        if self._failed is not None:
            raise StorageFailedError(f"{self.dir_path}: an earlier write failed") from self._failed
        if self._fd < 0:
            raise StorageFailedError(f"{self.dir_path}: storage is closed")

    def close(self) -> None:
        """Sync what is pending (by the fsync mode) and release the segment file."""
        with self._io_lock:
            if self._fd < 0:
                return
            try:
                if self._failed is None:
                    self._flush_locked(self._durable)
            finally:
                self._release()

    def __enter__(self) -> Storage:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def load(
    dir_path: str,
    config: StorageConfig | None = None,
    fsync_fn: FsyncFn = os.fsync,
    fdatasync_fn: FsyncFn = _fdatasync,
) -> RestoreState:
    """Recover `dir_path` (cutting a torn tail) and return what a restarted node loads.

    Raises CorruptLogError when the directory is damaged beyond a torn tail."""
    with Storage.open(dir_path, config, fsync_fn, fdatasync_fn) as storage:
        return storage.restored
