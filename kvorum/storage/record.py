"""WAL record framing: how one record is laid out in a segment file, and how a segment is read back.

Theory of operation
-------------------
A segment file is a plain concatenation of records; there is no file header
other than the first record, which is always a SEGMENT record. One record is

    offset  size  field
    0       2     magic   b"kv"
    2       1     type    RecordType
    3       4     length  of the body in bytes, unsigned little-endian
    7       4     crc     CRC-32 (zlib.crc32) of bytes 0..7 followed by the body
    11      n     body    msgpack

The checksum covers the magic, type and length as well as the body, so a
flipped bit in the length field is caught rather than sending the reader off
to a wrong offset. The magic is not needed for correctness; it lets the reader
find candidate record starts with `bytes.find` when it has to decide whether a
bad record is the torn end of the file or damage in the middle of it.

Why CRC-32 and not CRC-32C: `zlib.crc32` ships with Python and runs in C at
gigabytes per second; CRC-32C would need a third-party extension. Both detect
every burst of up to 32 bits (a torn or zeroed stretch shorter than that, a
flipped byte) and any single or double bit flip, and miss random damage with
probability 2**-32. CRC-32C is the stronger code for long records (it also
catches every 3-bit error at any size we write, where CRC-32 guarantees that
only up to about 11 KB), but torn writes and bit rot are what this checksum
guards against, and it is not a defence against an adversary.

Reading a segment (`read_segment`): records are parsed one after another. The
first record that fails (short header, wrong magic or type, length over
RECORD_BYTES_CEILING or past the end of the file, checksum mismatch) ends the
good prefix.
What happens next depends on where it is:

- in any segment but the last, it is corruption: segments are fsynced before
  the next one is created, so their content is complete by construction;
- in the last segment, the rest of the file is searched for any valid record.
  If one exists, the failure is damage in the middle of the log and the reader
  raises `CorruptLogError`; if none exists, the records end there. When the
  rest is all zeros it is the segment's preallocated space, not yet written;
  otherwise the non-zero bytes (up to the last one) are the torn tail of a
  write that a crash interrupted, and the caller cuts them.

Why zeros are unambiguous: the last segment is preallocated with zeros (see
wal.py), so the records end where the zeros start. A zero header cannot be
mistaken for a record (its magic is wrong), so the end of the records is
the first offset that does not parse. A torn record followed by zeros, or
zeros followed by a fragment of a record whose start was lost, hold no valid
record past the end and are a torn tail; a valid record anywhere after the
end is corruption, as it was before preallocation.
"""

from __future__ import annotations

import enum
import struct
import threading
import zlib
from dataclasses import dataclass
from typing import Sequence

import msgpack

from kvorum.consensus.replicated_log import Entry, EntryKind, HardState

MAGIC = b"kv"
HEADER = struct.Struct("<2sBII")
HEADER_BYTES = HEADER.size
_CHECKED = struct.Struct("<2sBI")  # the header fields the checksum covers
_CRC = struct.Struct("<I")

# The reader accepts records up to this size whatever the writer's configured
# record_bytes_max, so that lowering that limit never makes an existing log
# unreadable (or, worse, makes its last record look like a torn tail).
RECORD_BYTES_CEILING = 256 * 1024 * 1024

assert HEADER_BYTES == 11
assert _CHECKED.size + _CRC.size == HEADER_BYTES


class CorruptLogError(Exception):
    """Operating error: durable state is damaged in a way recovery must not paper over.

    Raised instead of serving a log that might be wrong. `path` and `offset`
    name the first damaged byte (offset is None when the problem is not at one
    place, such as a missing segment).
    """

    def __init__(self, path: str, offset: int | None, reason: str) -> None:
        where = path if offset is None else f"{path} at offset {offset}"
        super().__init__(f"{where}: {reason}")
        self.path = path
        self.offset = offset
        self.reason = reason


class RecordType(enum.IntEnum):
    SEGMENT = 1  # first record of every segment: [format_version, seq, next_index, prev_term]
    ENTRIES = 2  # [first_index, [[term, kind, data], ...]], contiguous from first_index
    HARD_STATE = 3  # [term, vote, commit]
    SNAPSHOT = 4  # [index, term]: entries up to index now live in a snapshot file
    TRUNCATE = 5  # [from_index]: entries from from_index on are discarded


_TYPES = frozenset(int(t) for t in RecordType)


FORMAT_VERSION = 1


def encode_record(rtype: RecordType, body: bytes) -> bytes:
    head = _CHECKED.pack(MAGIC, rtype, len(body))
    return head + _CRC.pack(zlib.crc32(body, zlib.crc32(head))) + body


@dataclass(frozen=True, slots=True)
class Record:
    rtype: RecordType
    body: bytes
    offset: int  # where the record starts in its segment file


def _parse_at(data: bytes, offset: int) -> tuple[Record, int] | str:
    """Parse the record at `offset`; return (record, next offset) or the reason it is bad."""
    if len(data) - offset < HEADER_BYTES:
        return "short record header"
    magic, rtype, length, crc = HEADER.unpack_from(data, offset)
    if magic != MAGIC:
        return "bad record magic"
    if rtype not in _TYPES:
        return f"unknown record type {rtype}"
    if HEADER_BYTES + length > RECORD_BYTES_CEILING:
        return f"record length {length} over {RECORD_BYTES_CEILING} bytes"
    end = offset + HEADER_BYTES + length
    if end > len(data):
        return "record runs past the end of the file"
    body = data[offset + HEADER_BYTES : end]
    if zlib.crc32(body, zlib.crc32(data[offset : offset + _CHECKED.size])) != crc:
        return "record checksum mismatch"
    return Record(RecordType(rtype), body, offset), end


def _valid_record_after(data: bytes, offset: int) -> int | None:
    """The offset of the first valid record that starts after `offset`, if any."""
    at = data.find(MAGIC, offset + 1)
    while at != -1:
        if not isinstance(_parse_at(data, at), str):
            return at
        at = data.find(MAGIC, at + 1)
    return None


def _nonzero_end(data: bytes, offset: int) -> int:
    """One past the last non-zero byte at or after `offset`; `offset` when all of them are zero."""
    return offset + len(data[offset:].rstrip(b"\0"))


@dataclass(frozen=True, slots=True)
class SegmentRead:
    records: tuple[Record, ...]
    valid_bytes: int  # length of the good prefix: where the records end
    torn_reason: str | None  # why the tail must be cut; None when only zeros follow the records
    torn_bytes: int  # from valid_bytes to the last non-zero byte; 0 when not torn
    # Invariant: torn_reason is None exactly when torn_bytes == 0.


def read_segment(path: str, data: bytes, last: bool) -> SegmentRead:
    records: list[Record] = []
    offset = 0
    while offset < len(data):
        parsed = _parse_at(data, offset)
        if isinstance(parsed, str):
            if not last:
                raise CorruptLogError(path, offset, f"{parsed} in a segment that is not the last")
            later = _valid_record_after(data, offset)
            if later is not None:
                raise CorruptLogError(
                    path, offset, f"{parsed}, followed by a valid record at offset {later}"
                )
            torn_bytes = _nonzero_end(data, offset) - offset
            torn_reason = parsed if torn_bytes else None
            assert (torn_reason is None) == (torn_bytes == 0)
            return SegmentRead(tuple(records), offset, torn_reason, torn_bytes)
        record, offset = parsed
        records.append(record)
    assert offset == len(data)
    return SegmentRead(tuple(records), offset, None, 0)


# Record bodies. Each encoder has its decoder next to it; a decoder that meets a
# well-formed checksum but a malformed body raises ValueError, which the replay
# turns into CorruptLogError with the record's file and offset.


# msgpack.packb builds a Packer per call, which costs more than packing a
# small record; a Packer is not safe to share between threads, so each thread
# that writes (several storages may run in several threads) keeps its own.
_packers = threading.local()


def _pack(obj: object) -> bytes:
    packer = getattr(_packers, "packer", None)
    if packer is None:
        packer = _packers.packer = msgpack.Packer(use_bin_type=True)
    return packer.pack(obj)


def _unpack(body: bytes) -> list:
    obj = msgpack.unpackb(body, raw=False, use_list=True)
    if not isinstance(obj, list):
        raise ValueError("record body is not an array")
    return obj


def _ints(values: list, n: int) -> list[int]:
    if len(values) != n or not all(type(v) is int and v >= 0 for v in values):
        raise ValueError(f"expected {n} non-negative integers, got {values!r}")
    return values


def encode_segment(seq: int, next_index: int, prev_term: int) -> bytes:
    return _pack([FORMAT_VERSION, seq, next_index, prev_term])


def decode_segment(body: bytes) -> tuple[int, int, int]:
    version, seq, next_index, prev_term = _ints(_unpack(body), 4)
    if version != FORMAT_VERSION:
        raise ValueError(f"segment format version {version}, this build reads {FORMAT_VERSION}")
    if next_index < 1:
        raise ValueError(f"segment next_index {next_index} < 1")
    return seq, next_index, prev_term


def encode_entries(entries: Sequence[Entry]) -> bytes:
    assert entries
    return _pack([entries[0].index, [[e.term, int(e.kind), e.data] for e in entries]])


def decode_entries(body: bytes) -> list[Entry]:
    obj = _unpack(body)
    if len(obj) != 2 or type(obj[0]) is not int or not isinstance(obj[1], list) or not obj[1]:
        raise ValueError("malformed entries record")
    first, rows = obj
    entries = []
    for offset, row in enumerate(rows):
        term, kind, data = row
        if type(term) is not int or not isinstance(data, bytes):
            raise ValueError(f"malformed entry at index {first + offset}")
        entries.append(Entry(term=term, index=first + offset, kind=EntryKind(kind), data=data))
    return entries


def encode_hard_state(hs: HardState) -> bytes:
    return _pack([hs.term, hs.vote, hs.commit])


def decode_hard_state(body: bytes) -> HardState:
    term, vote, commit = _unpack(body)
    if type(term) is not int or type(commit) is not int or not (vote is None or isinstance(vote, str)):
        raise ValueError("malformed hard state record")
    return HardState(term=term, vote=vote, commit=commit)


def encode_snapshot_marker(index: int, term: int) -> bytes:
    return _pack([index, term])


def decode_snapshot_marker(body: bytes) -> tuple[int, int]:
    index, term = _ints(_unpack(body), 2)
    return index, term


def encode_truncate(from_index: int) -> bytes:
    assert from_index >= 1
    return _pack([from_index])


def decode_truncate(body: bytes) -> int:
    (from_index,) = _ints(_unpack(body), 1)
    if from_index < 1:
        raise ValueError("truncate from index 0")
    return from_index
