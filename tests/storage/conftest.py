"""Fixtures for the storage tests."""

from __future__ import annotations

import pytest
from wal_helpers import SMALL, no_fsync

from kvorum.storage import Storage, StorageConfig


@pytest.fixture
def open_storage(tmp_path):
    """Open (and on teardown close) storages in tmp_path/wal."""
    opened: list[Storage] = []
    path = str(tmp_path / "wal")

    def _open(config: StorageConfig = SMALL, fsync_fn=no_fsync, fdatasync_fn=no_fsync) -> Storage:
        storage = Storage.open(path, config, fsync_fn, fdatasync_fn)
        opened.append(storage)
        return storage

    _open.path = path
    yield _open
    for storage in opened:
        storage.close()
