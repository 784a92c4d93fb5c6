"""Builders and fakes shared by the storage tests."""

from __future__ import annotations

from kvorum.consensus.replicated_log import Entry, Membership, Snapshot
from kvorum.storage import StorageConfig

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


class FsyncCounter:
    """An fsync function that counts its calls and does nothing else (no power loss is modelled)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, fd: int) -> None:
        self.calls += 1


def no_fsync(fd: int) -> None:
    """Skip the real fsync: these tests reopen in the same process, where it adds nothing."""


def crash(storage) -> None:
    """Simulate a process crash: drop the pending buffer and the open files without writing.

    Reaches into the storage on purpose: a real crash gives no chance to run
    `close`, and what was already written stays in the operating system."""
    storage._release()
