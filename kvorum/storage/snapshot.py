"""Snapshot files: one state-machine image per file, written atomically.

Theory of operation
-------------------
A snapshot file is named `snap-<index, 20 digits>.snap` so that a directory
listing sorts by log index. Its content is

    offset  size  field
    0       8     magic   b"KVSNAP01"
    8       8     length  of the body in bytes, unsigned little-endian
    16      4     crc     CRC-32 (zlib.crc32) of bytes 0..16 followed by the body
    20      n     body    msgpack [index, term, voters, learners, voters_outgoing,
                                   learners_next, data]

Writing is atomic by the usual sequence: write `<name>.tmp`, fsync it, rename
it over `<name>`, fsync the directory. A crash leaves either no file, a `.tmp`
file (deleted on the next open), or the complete file; never a half-written
file under the final name. A final-named file that fails its checksum is
therefore damage, not a crash artefact, and reading it raises CorruptLogError.

Snapshot files are always fsynced, whatever the WAL's fsync mode: they are
rare, and once the log has been compacted behind a snapshot the log can no
longer rebuild what the snapshot held.
"""

from __future__ import annotations

import os
import struct
import zlib
from typing import Callable

import msgpack

from kvorum.consensus.replicated_log import Membership, Snapshot
from kvorum.storage.record import CorruptLogError

FsyncFn = Callable[[int], None]

SNAPSHOT_MAGIC = b"KVSNAP01"
_HEAD = struct.Struct("<8sQ")
_CRC = struct.Struct("<I")
SNAPSHOT_HEADER_BYTES = _HEAD.size + _CRC.size
_PREFIX = "snap-"
_SUFFIX = ".snap"
_TEMP_SUFFIX = ".tmp"

assert SNAPSHOT_HEADER_BYTES == 20


def snapshot_name(index: int) -> str:
    assert index >= 0
    return f"{_PREFIX}{index:020d}{_SUFFIX}"


def encode_snapshot(snapshot: Snapshot) -> bytes:
    m = snapshot.membership
    body = msgpack.packb(
        [
            snapshot.index,
            snapshot.term,
            sorted(m.voters),
            sorted(m.learners),
            sorted(m.voters_outgoing),
            sorted(m.learners_next),
            snapshot.data,
        ],
        use_bin_type=True,
    )
    head = _HEAD.pack(SNAPSHOT_MAGIC, len(body))
    return head + _CRC.pack(zlib.crc32(body, zlib.crc32(head))) + body


def decode_snapshot(path: str, data: bytes, snapshot_bytes_max: int) -> Snapshot:
    if len(data) < SNAPSHOT_HEADER_BYTES:
        raise CorruptLogError(path, 0, "snapshot file shorter than its header")
    magic, length = _HEAD.unpack_from(data, 0)
    if magic != SNAPSHOT_MAGIC:
        raise CorruptLogError(path, 0, "bad snapshot magic")
    if length > snapshot_bytes_max:
        raise CorruptLogError(path, 8, f"snapshot length {length} over snapshot_bytes_max")
    if SNAPSHOT_HEADER_BYTES + length != len(data):
        raise CorruptLogError(path, 8, f"snapshot length {length} does not match the file size")
    (crc,) = _CRC.unpack_from(data, _HEAD.size)
    body = data[SNAPSHOT_HEADER_BYTES:]
    if zlib.crc32(body, zlib.crc32(data[: _HEAD.size])) != crc:
        raise CorruptLogError(path, _HEAD.size, "snapshot checksum mismatch")
    fields = msgpack.unpackb(body, raw=False)
    if len(fields) == 6:
        # Written before memberships carried learners_next: it was empty then.
        fields.insert(5, [])
    index, term, voters, learners, outgoing, learners_next, payload = fields
    membership = Membership(
        frozenset(voters), frozenset(learners), frozenset(outgoing), frozenset(learners_next)
    )
    return Snapshot(index=index, term=term, membership=membership, data=payload)


def fsync_dir(dir_path: str, fsync_fn: FsyncFn) -> None:
    """Make renames, creations and deletions in `dir_path` durable."""
    fd = os.open(dir_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fsync_fn(fd)
    finally:
        os.close(fd)


def write_snapshot(dir_path: str, snapshot: Snapshot, fsync_fn: FsyncFn) -> str:
    """Write `snapshot` atomically; return its path. Durable when this returns."""
    path = os.path.join(dir_path, snapshot_name(snapshot.index))
    temp = path + _TEMP_SUFFIX
    data = encode_snapshot(snapshot)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        fsync_fn(fd)
    finally:
        os.close(fd)
    os.replace(temp, path)
    fsync_dir(dir_path, fsync_fn)
    return path


def list_snapshots(dir_path: str) -> list[tuple[int, str]]:
    """(index, path) of every complete-named snapshot file, oldest first."""
    found = []
    for name in os.listdir(dir_path):
        if name.startswith(_PREFIX) and name.endswith(_SUFFIX):
            digits = name[len(_PREFIX) : -len(_SUFFIX)]
            if digits.isdigit() and len(digits) == 20:
                found.append((int(digits), os.path.join(dir_path, name)))
    found.sort()
    return found


def read_snapshot(path: str, snapshot_bytes_max: int) -> Snapshot:
    with open(path, "rb") as f:
        data = f.read(SNAPSHOT_HEADER_BYTES + snapshot_bytes_max + 1)
    snapshot = decode_snapshot(path, data, snapshot_bytes_max)
    if os.path.basename(path) != snapshot_name(snapshot.index):
        raise CorruptLogError(path, None, f"file holds a snapshot at index {snapshot.index}")
    return snapshot


def remove_temp_files(dir_path: str) -> list[str]:
    """Delete `.tmp` files left by a crash during `write_snapshot`; return their paths."""
    removed = []
    for name in sorted(os.listdir(dir_path)):
        if name.startswith(_PREFIX) and name.endswith(_SUFFIX + _TEMP_SUFFIX):
            os.unlink(os.path.join(dir_path, name))
            removed.append(os.path.join(dir_path, name))
    return removed


def prune_snapshots(dir_path: str, snapshot_count_max: int) -> list[str]:
    """Delete all but the newest `snapshot_count_max` snapshot files; return the deleted paths."""
    assert snapshot_count_max >= 1
    doomed = [path for _, path in list_snapshots(dir_path)[:-snapshot_count_max]]
    for path in doomed:
        os.unlink(path)
    return doomed
