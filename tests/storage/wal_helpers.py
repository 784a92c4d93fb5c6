"""Builders and fakes shared by the storage tests."""

from __future__ import annotations

from kvorum.consensus.replicated_log import Entry, Membership, Snapshot
from kvorum.storage import StorageConfig
from kvorum.storage.replay import replay

# Small limits so that a few kilobytes of entries rotate segments.
SMALL = StorageConfig(record_bytes_max=4096, segment_bytes_max=8192, pending_bytes_max=4096)


def make_entries(first: int, count: int, term: int, size: int = 10) -> list[Entry]:
    """`count` entries from index `first`, each with `size` bytes of data naming its index."""
    return [
        Entry(term=term, index=i, data=(b"%d:%d|" % (term, i)).ljust(size, b".")[:size])
        for i in range(first, first + count)
    ]


def make_snapshot(index: int, term: int, data: bytes = b"image") -> Snapshot:
    return Snapshot(index=index, term=term, membership=Membership(frozenset({"n1", "n2", "n3"})), data=data)


class SyncCounter:
    """fsync and fdatasync functions that count their calls and do nothing else
    (no power loss is modelled)."""

    def __init__(self) -> None:
        self.fsyncs = 0
        self.fdatasyncs = 0

    def fsync(self, fd: int) -> None:
        self.fsyncs += 1

    def fdatasync(self, fd: int) -> None:
        self.fdatasyncs += 1

    def reset(self) -> None:
        self.fsyncs = self.fdatasyncs = 0


def no_fsync(fd: int) -> None:
    """Skip the real fsync or fdatasync: these tests reopen in the same process, where it adds nothing."""


def data_end(dir_path: str) -> int:
    """Where the records of the directory's last segment end (its preallocated zeros start)."""
    return replay(dir_path).last_valid_bytes


def write_at(path: str, offset: int, data: bytes) -> None:
    """Overwrite bytes in place, keeping the file's size (and its preallocated zeros after them)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def crash(storage) -> None:
    """Simulate a process crash: drop the pending buffer and the open files without writing.

    Reaches into the storage on purpose: a real crash gives no chance to run
    `close`, and what was already written stays in the operating system."""
    storage._release()
