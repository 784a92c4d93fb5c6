"""Chunked snapshot transfer from a leader to one follower: the wire format.

Theory of operation
-------------------
Raft catches up a follower whose needed entries were compacted away with one
InstallSnapshot holding the whole state-machine image, but a peer payload is
bounded by the frame limit. The image therefore travels as chunks, each a
payload of its own beside the Raft messages, answered by acks:

    CHUNK  [32, term, index, log_term, voters, learners, voters_outgoing,
            learners_next, total_bytes, digest, offset, data]
    ACK    [33, term, index, offset, rewind]

A transfer carries one image, named by its key (term, index): the leader's
term when its engine asked for the snapshot, and the snapshot's last index.
Every chunk repeats the meta, the image's length and a BLAKE2b digest of the
whole image. The kind tags are not Raft message tags, so `transfer_kind`
tells the payloads apart by their first two bytes. The decoders check every
type and size; anything malformed is the peer's fault (`RemoteProtocolError`).

Limits
------
`chunk_bytes_max` bounds the image bytes in one chunk; a chunk payload adds at
most `CHUNK_OVERHEAD_BYTES_MAX` bytes of meta, so chunks fit one peer payload.
`snapshot_bytes_max` bounds an image.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass

import msgpack

from kvorum.consensus.replicated_log import Membership, NodeId, Snapshot
from kvorum.server.peer_frames import (
    FRAME_BYTES_MAX_DEFAULT,
    IDENTIFIER_BYTES_MAX,
    RemoteProtocolError,
    payload_bytes_max,
)

# Image bytes in one chunk. Large enough that the per-chunk meta and the ack
# round trip cost little; small enough that a lost chunk is cheap to resend
# and one chunk never holds up the Raft messages queued behind it for long.
CHUNK_BYTES_MAX_DEFAULT = 1024 * 1024
# Unacknowledged chunks per follower: enough to keep a link busy while acks
# travel back, few enough that a reconnect resends little.
CHUNKS_IN_FLIGHT_MAX_DEFAULT = 4
# Largest image sent or accepted, in bytes. The follower holds the partial
# image in memory while it arrives, beside its current keyspace.
SNAPSHOT_BYTES_MAX_DEFAULT = 4 * 1024 * 1024 * 1024
# Sender ticks without progress before it sends again from the last offset
# acknowledged. At a 100 ms Raft tick, two seconds: longer than a window of
# chunks takes on a healthy link, so a slow link is not flooded with resends.
ACK_TIMEOUT_TICKS_DEFAULT = 20

# Everything in a chunk payload besides its image bytes, in bytes: the kind,
# the integers, the digest, the msgpack headers, and the membership's node ids.
CHUNK_OVERHEAD_BYTES_MAX = 64 * 1024
# An ack is five small values; anything longer is not an ack.
ACK_BYTES_MAX = 64

DIGEST_BYTES = 16

assert CHUNK_BYTES_MAX_DEFAULT + CHUNK_OVERHEAD_BYTES_MAX <= payload_bytes_max(FRAME_BYTES_MAX_DEFAULT)

# msgpack integers are at most 64 bits; offsets, terms and indexes are never negative.
_UINT_MAX = 2**64 - 1


class TransferKind(enum.IntEnum):
    """First element of a transfer payload. Raft message tags are 1..8: never reuse those."""

    CHUNK = 32
    ACK = 33


def transfer_kind(payload: bytes) -> TransferKind | None:
    """The kind of a transfer payload, or None for any other payload (a Raft message).

    Looks at two bytes only: a fixarray header and a positive fixint kind,
    which is how msgpack writes both transfer payloads.
    """
    if len(payload) < 2 or payload[0] & 0xF0 != 0x90:
        return None
    try:
        return TransferKind(payload[1])
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    """Everything of an InstallSnapshot but the image: what every chunk repeats."""

    term: int  # the leader's term when its engine sent the snapshot
    index: int  # the snapshot's last index
    log_term: int  # the term of the entry at `index`
    membership: Membership

    @classmethod
    def of(cls, term: int, snapshot: Snapshot) -> SnapshotMeta:
        return cls(term, snapshot.index, snapshot.term, snapshot.membership)

    @property
    def key(self) -> tuple[int, int]:
        """What names one image: a higher key is a newer image."""
        return (self.term, self.index)

    def snapshot(self, data: bytes) -> Snapshot:
        return Snapshot(self.index, self.log_term, self.membership, data)


@dataclass(frozen=True, slots=True)
class Chunk:
    """Bytes [offset, offset + len(data)) of an image of `total_bytes` bytes."""

    meta: SnapshotMeta
    total_bytes: int
    digest: bytes  # BLAKE2b of the whole image, DIGEST_BYTES long
    offset: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Ack:
    """The receiver holds bytes [0, offset) of image (term, index).

    `rewind`: it lacks what the sender may believe delivered, so the sender
    sends again from `offset` (a gap, a digest mismatch, or a reconnect).
    """

    term: int
    index: int
    offset: int
    rewind: bool = False

    @property
    def key(self) -> tuple[int, int]:
        return (self.term, self.index)


def image_digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=DIGEST_BYTES).digest()


# ---------------------------------------------------------------- encoding


def _membership_fields(m: Membership) -> list[list[str]]:
    return [sorted(m.voters), sorted(m.learners), sorted(m.voters_outgoing), sorted(m.learners_next)]


def encode_chunk(chunk: Chunk) -> bytes:
    meta = chunk.meta
    assert chunk.offset + len(chunk.data) <= chunk.total_bytes, chunk.offset
    assert len(chunk.digest) == DIGEST_BYTES
    return msgpack.packb(
        [TransferKind.CHUNK, meta.term, meta.index, meta.log_term, *_membership_fields(meta.membership),
         chunk.total_bytes, chunk.digest, chunk.offset, chunk.data],
        use_bin_type=True,
    )


def encode_ack(ack: Ack) -> bytes:
    return msgpack.packb([TransferKind.ACK, ack.term, ack.index, ack.offset, ack.rewind], use_bin_type=True)


def _unpack(payload: bytes, kind: TransferKind, length: int) -> list:
    try:
        body = msgpack.unpackb(payload, raw=False, use_list=True, strict_map_key=True)
    except (ValueError, TypeError, msgpack.UnpackException) as error:
        raise RemoteProtocolError(f"snapshot transfer payload is not valid msgpack: {error}") from None
    if type(body) is not list or len(body) != length or type(body[0]) is not int or body[0] != kind:
        raise RemoteProtocolError(f"malformed snapshot {kind.name.lower()}")
    return body


def _is_uint(value: object) -> bool:
    # `type(...) is int` rejects booleans, which msgpack keeps distinct.
    return type(value) is int and 0 <= value <= _UINT_MAX


def _node_ids(value: object) -> frozenset[NodeId]:
    if type(value) is not list or not all(
        type(n) is str and 0 < len(n) <= IDENTIFIER_BYTES_MAX for n in value
    ):
        raise RemoteProtocolError("snapshot chunk membership is not a list of node ids")
    return frozenset(value)


def decode_chunk(
    payload: bytes,
    chunk_bytes_max: int = CHUNK_BYTES_MAX_DEFAULT,
    snapshot_bytes_max: int = SNAPSHOT_BYTES_MAX_DEFAULT,
) -> Chunk:
    """A chunk from its payload; `RemoteProtocolError` unless well-formed and within the limits."""
    if len(payload) > chunk_bytes_max + CHUNK_OVERHEAD_BYTES_MAX:
        raise RemoteProtocolError(
            f"snapshot chunk of {len(payload)} bytes exceeds chunk_bytes_max={chunk_bytes_max}"
            f" plus {CHUNK_OVERHEAD_BYTES_MAX} bytes of meta"
        )
    body = _unpack(payload, TransferKind.CHUNK, 12)
    _, term, index, log_term, voters, learners, outgoing, learners_next, total, digest, offset, data = body
    if not all(map(_is_uint, (term, index, log_term, total, offset))):
        raise RemoteProtocolError("snapshot chunk integers must be unsigned 64-bit")
    if type(digest) is not bytes or len(digest) != DIGEST_BYTES or type(data) is not bytes:
        raise RemoteProtocolError("snapshot chunk digest and data must be bytes")
    membership = Membership(
        _node_ids(voters), _node_ids(learners), _node_ids(outgoing), _node_ids(learners_next)
    )
    if total > snapshot_bytes_max:
        raise RemoteProtocolError(
            f"snapshot of {total} bytes exceeds snapshot_bytes_max={snapshot_bytes_max}"
        )
    if len(data) > chunk_bytes_max:
        raise RemoteProtocolError(
            f"snapshot chunk of {len(data)} data bytes exceeds chunk_bytes_max={chunk_bytes_max}"
        )
    if offset + len(data) > total:
        raise RemoteProtocolError(
            f"snapshot chunk [{offset}, {offset + len(data)}) ends past the image's {total} bytes"
        )
    if not data and total > 0:
        raise RemoteProtocolError("empty snapshot chunk of a non-empty image")
    return Chunk(SnapshotMeta(term, index, log_term, membership), total, digest, offset, data)


def decode_ack(payload: bytes) -> Ack:
    """An ack from its payload; `RemoteProtocolError` unless well-formed."""
    if len(payload) > ACK_BYTES_MAX:
        raise RemoteProtocolError(f"snapshot ack of {len(payload)} bytes exceeds {ACK_BYTES_MAX}")
    _, term, index, offset, rewind = _unpack(payload, TransferKind.ACK, 5)
    if not all(map(_is_uint, (term, index, offset))) or type(rewind) is not bool:
        raise RemoteProtocolError("malformed snapshot ack")
    return Ack(term, index, offset, rewind)
