"""Durable storage for a consensus group: write-ahead log segments and snapshot files.

Plain file I/O, no asyncio and no networking; the server's driver calls it
(possibly from a worker thread for `sync`). Start with wal.py for the theory
of operation; record.py holds the on-disk record format, replay.py what each
record means, snapshot.py the snapshot files. docs/storage.md describes the
format and the fsync modes for operators.
"""

from kvorum.storage.record import CorruptLogError
from kvorum.storage.wal import (
    FSYNC_MODES,
    DirectoryLockedError,
    Storage,
    StorageConfig,
    StorageFailedError,
    load,
)

__all__ = [
    "FSYNC_MODES",
    "CorruptLogError",
    "DirectoryLockedError",
    "Storage",
    "StorageConfig",
    "StorageFailedError",
    "load",
]
