"""Chunked, resumable snapshot transfer from a leader to one follower, sans-I/O.

Theory of operation
-------------------
Raft catches up a follower whose needed entries were compacted away with one
InstallSnapshot holding the whole state-machine image. A peer payload is
bounded by the frame limit, so this module carries the image as a stream of
chunks instead, and lets a transfer survive lost chunks, lost acks and dropped
connections without starting over. It owns no socket, clock or task: payloads
go in and out as bytes, and time is the caller's `tick()`.

A transfer carries one image, named by its key (term, index): the leader's
term when its engine asked for the snapshot, and the snapshot's last index.
Terms only grow, and within a term a leader's snapshot index only grows, so a
higher key is the newer image and one key always names the same bytes.

The leader runs one `SnapshotSender` per follower, the follower one
`SnapshotReceiver`. Every chunk repeats the meta (key, the snapshot's own term,
its membership), the image's length and a BLAKE2b digest of the whole image,
so any chunk tells the receiver everything but the other bytes. The receiver
holds bytes [0, offset) of at most one image and answers each chunk of it with
an ack naming `offset`, the first byte it lacks:

- a chunk starting at or before `offset` extends the image (bytes already held are skipped);
- a chunk starting past `offset` (an earlier one was lost) is dropped, and the
  ack has `rewind` set: the sender goes back and sends again from `offset`;
- a chunk of an older image is ignored; a chunk of a newer one replaces the partial image.

With the last byte the receiver checks the digest: on a match it hands back
(meta, image) once; on a mismatch it drops the image and rewinds the sender to 0.

A lost chunk is noticed by the receiver (the next chunk leaves a gap) or, when
nothing follows it, by the sender: after `ack_timeout_ticks` ticks without
progress it sends again from the last offset acknowledged, and the receiver's
acks of those duplicates carry it forward to where the receiver really is.
After a reconnect the receiver's `resume_ack()` names its offset at once.
Either way a broken link costs about a window of chunks, never the whole image.

    sender   IDLE     --start------------------------> SENDING (from offset 0)
             SENDING  --start, a newer image---------> SENDING (from offset 0)
             SENDING  --start, the same image--------> SENDING (unchanged)
             SENDING  --ack of the last byte---------> DONE
             DONE     --start, same or newer image---> SENDING (from offset 0: the
                                                        follower needs it again)

    receiver: the table `_RECEIVER_ACTION`, (state, age of the chunk's image) -> action.

How a driver uses this
----------------------
- Leader: when the engine's Ready holds `InstallSnapshot(to=P, ...)`, the
  driver does not send it; it calls `senders[P].start(SnapshotMeta.of(m.term,
  m.snapshot), m.snapshot.data)`. After each start, ack and tick it sends
  `senders[P].next_chunks(budget_bytes)` to P, the budget being what it is
  willing to queue for P now; it calls `tick()` on every sender once per Raft
  tick, and `resend_unacked()` when its link to P comes back. Senders belong
  to one term of leadership: drop them when the node stops leading.
- Chunks and acks travel to the peer as their own payload kind, beside Raft
  messages: `transfer_kind(payload)` tells them apart (their kind tags are
  not Raft message tags), `on_chunk` and `on_ack` decode them.
- Follower: `ack, done = receiver.on_chunk(payload)`; the driver sends `ack`
  (when not None) back to the chunk's sender. When `done = (meta, data)`
  arrives it steps the engine with `InstallSnapshot(to=me, frm=leader,
  term=meta.term, snapshot=meta.snapshot(data))`, exactly as if the single
  message had arrived. When its link to the leader comes back it sends
  `receiver.resume_ack()`, if not None.
- `RemoteProtocolError` from `on_chunk` or `on_ack` means the peer sent
  something malformed or inconsistent: log it and drop the payload.
- The engine still tracks the snapshot itself (ProgressState.SNAPSHOT, and
  its re-probe after two election timeouts, which emits the same
  InstallSnapshot again). That re-send meets a transfer in progress with the
  same key and leaves it alone, so a long transfer is not restarted.

Limits
------
`chunk_bytes_max` bounds the image bytes in one chunk; a chunk payload adds at
most `CHUNK_OVERHEAD_BYTES_MAX` bytes of meta, so chunks fit one peer payload.
`chunks_in_flight_max` bounds the chunks sent and not yet acknowledged.
`snapshot_bytes_max` bounds an image: the sender refuses to start a larger one
(`LocalProtocolError`), the receiver refuses its first chunk
(`RemoteProtocolError`) before holding any of it. The receiver never holds
more than one partial image.
"""

from __future__ import annotations

import enum
import hashlib
from collections import deque
from dataclasses import dataclass

import msgpack

from kvorum.consensus.replicated_log import Membership, NodeId, Snapshot
from kvorum.server.peer_frames import (
    FRAME_BYTES_MAX_DEFAULT,
    IDENTIFIER_BYTES_MAX,
    LocalProtocolError,
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


# ---------------------------------------------------------------- sender


class SenderState(enum.Enum):
    IDLE = "idle"  # never started
    SENDING = "sending"  # some of the image is not acknowledged yet
    DONE = "done"  # the receiver acknowledged the whole image


class SnapshotSender:
    """The leader's side of the transfers to one follower; see the module doc.

    `start(meta, data)` names the image to deliver. `next_chunks(budget_bytes)`
    returns chunk payloads to send now, `on_ack(payload)` takes the follower's
    ack, `tick()` runs the ack timeout.
    """

    def __init__(
        self,
        chunk_bytes_max: int = CHUNK_BYTES_MAX_DEFAULT,
        chunks_in_flight_max: int = CHUNKS_IN_FLIGHT_MAX_DEFAULT,
        snapshot_bytes_max: int = SNAPSHOT_BYTES_MAX_DEFAULT,
        ack_timeout_ticks: int = ACK_TIMEOUT_TICKS_DEFAULT,
    ) -> None:
        assert chunk_bytes_max > 0 and chunks_in_flight_max > 0 and ack_timeout_ticks > 0
        assert chunk_bytes_max + CHUNK_OVERHEAD_BYTES_MAX <= payload_bytes_max(FRAME_BYTES_MAX_DEFAULT)
        self.chunk_bytes_max = chunk_bytes_max
        self.chunks_in_flight_max = chunks_in_flight_max
        self.snapshot_bytes_max = snapshot_bytes_max
        self.ack_timeout_ticks = ack_timeout_ticks
        # Counters for the whole life of the sender.
        self.bytes_sent = 0  # image bytes in chunks, resends included
        self.resends = 0  # times the sender went back to send bytes again (rewind ack or timeout)
        # The current transfer.
        self.state = SenderState.IDLE
        self.meta: SnapshotMeta | None = None
        self._data = b""
        self._digest = b""
        self._overhead_bytes = 0  # payload bytes of a chunk besides its data, at most
        # Invariant: acked <= every end in inflight <= next <= len(data).
        self._acked = 0  # the receiver holds [0, acked)
        self._next = 0  # the next chunk starts here
        self._inflight: deque[int] = deque()  # end offsets of the unacknowledged chunks, ascending
        self._idle_ticks = 0  # ticks since the last progress, while chunks are in flight
        # The offset last rewound to: gap acks for it are already being answered.
        self._rewound_to: int | None = None

    @property
    def acked_bytes(self) -> int:
        return self._acked

    @property
    def total_bytes(self) -> int:
        return len(self._data)

    def start(self, meta: SnapshotMeta, data: bytes) -> bool:
        """Deliver image `data` of snapshot `meta`; True if a transfer starts from offset 0.

        The same image while it is being sent keeps its progress (the engine
        re-sends a snapshot it has not heard about). `LocalProtocolError` if
        the image is larger than `snapshot_bytes_max`.
        """
        if self.meta is not None:
            assert meta.key >= self.meta.key, f"snapshot {meta.key} is older than {self.meta.key}"
            if meta.key == self.meta.key and self.state is SenderState.SENDING:
                assert len(data) == len(self._data), "one key names one image"
                return False
        if len(data) > self.snapshot_bytes_max:
            raise LocalProtocolError(
                f"snapshot of {len(data)} bytes exceeds snapshot_bytes_max={self.snapshot_bytes_max}"
            )
        digest = image_digest(data)
        overhead_bytes = self._chunk_overhead_bytes(meta, len(data), digest)
        if overhead_bytes > CHUNK_OVERHEAD_BYTES_MAX:
            raise LocalProtocolError(
                f"snapshot meta of {overhead_bytes} bytes per chunk exceeds"
                f" CHUNK_OVERHEAD_BYTES_MAX={CHUNK_OVERHEAD_BYTES_MAX}"
            )
        self.state = SenderState.SENDING
        self.meta = meta
        self._data = data
        self._digest = digest
        self._overhead_bytes = overhead_bytes
        self._acked = self._next = 0
        self._inflight.clear()
        self._idle_ticks = 0
        self._rewound_to = None
        return True

    @staticmethod
    def _chunk_overhead_bytes(meta: SnapshotMeta, total_bytes: int, digest: bytes) -> int:
        # The largest offset encodes longest, and a bin header grows from 2
        # bytes (empty) to at most 5 (bin32).
        empty = Chunk(meta, total_bytes, digest, total_bytes, b"")
        return len(encode_chunk(empty)) + 3

    def _has_unsent(self) -> bool:
        # An empty image still travels, as one empty chunk.
        return self._next < len(self._data) or (not self._data and not self._inflight)

    def next_chunks(self, budget_bytes: int) -> list[bytes]:
        """Chunk payloads to send now, at most `budget_bytes` payload bytes in all.

        Stops at the window (`chunks_in_flight_max` unacknowledged chunks), at
        the end of the image, or when the budget has no room for a chunk with
        at least one byte of image; a small budget makes smaller chunks.
        """
        chunks: list[bytes] = []
        if self.state is not SenderState.SENDING:
            return chunks
        assert self.meta is not None
        data = self._data
        while self._has_unsent() and len(self._inflight) < self.chunks_in_flight_max:
            room_bytes = budget_bytes - self._overhead_bytes
            if room_bytes < (1 if data else 0):
                break
            start = self._next
            end = min(start + self.chunk_bytes_max, start + room_bytes, len(data))
            payload = encode_chunk(Chunk(self.meta, len(data), self._digest, start, data[start:end]))
            assert len(payload) <= budget_bytes
            budget_bytes -= len(payload)
            chunks.append(payload)
            self._inflight.append(end)
            self._next = end
            self.bytes_sent += end - start
        self._check()
        return chunks

    def on_ack(self, payload: bytes) -> None:
        """Take the follower's ack. Acks of another image are stale and ignored.

        `RemoteProtocolError` if the payload is malformed or claims bytes past
        the end of the image.
        """
        ack = decode_ack(payload)
        if self.state is not SenderState.SENDING or self.meta is None or ack.key != self.meta.key:
            return
        if ack.offset > len(self._data):
            raise RemoteProtocolError(
                f"snapshot ack at {ack.offset} is past the image's {len(self._data)} bytes"
            )
        if ack.offset == len(self._data):
            self._finish()
        elif ack.rewind:
            self._rewind(ack.offset)
        elif ack.offset > self._acked:
            self._advance(ack.offset)
        self._check()

    def tick(self) -> None:
        """One Raft tick: after `ack_timeout_ticks` without progress, send again."""
        if self.state is not SenderState.SENDING or not self._inflight:
            return
        self._idle_ticks += 1
        if self._idle_ticks >= self.ack_timeout_ticks:
            self.resend_unacked()
        self._check()

    def resend_unacked(self) -> None:
        """Send again from the last offset acknowledged (the ack timeout, or a link that came back)."""
        if self.state is SenderState.SENDING:
            self._rewind(self._acked, repeat=True)

    def _finish(self) -> None:
        self.state = SenderState.DONE
        self._acked = self._next = len(self._data)
        self._inflight.clear()

    def _advance(self, offset: int) -> None:
        self._acked = offset
        self._next = max(self._next, offset)
        inflight = self._inflight
        while inflight and inflight[0] <= offset:
            inflight.popleft()
        self._idle_ticks = 0
        self._rewound_to = None

    def _rewind(self, offset: int, repeat: bool = False) -> None:
        # Every chunk after a lost one draws a gap ack for the same offset;
        # the first of them already sent everything again from there. If that
        # resend is lost too, the ack timeout goes back once more (`repeat`).
        if offset == self._rewound_to and not repeat:
            return
        self._rewound_to = offset
        if offset < self._next:
            self.resends += 1
        # Going below `acked` is right: the receiver lost what it held (it
        # restarted, or the image failed its digest). Going above it is too:
        # acks were lost, and the receiver holds more than we knew.
        self._acked = self._next = offset
        self._inflight.clear()
        self._idle_ticks = 0

    def _check(self) -> None:
        assert self._acked <= self._next <= len(self._data)
        assert all(self._acked <= end <= self._next for end in self._inflight)
        assert len(self._inflight) <= self.chunks_in_flight_max


# ---------------------------------------------------------------- receiver


class ReceiverState(enum.Enum):
    IDLE = "idle"  # no image seen yet
    RECEIVING = "receiving"  # holds the first `offset` bytes of one image
    COMPLETE = "complete"  # handed back the last image; remembers only its meta


class Age(enum.Enum):
    """How a chunk's image compares with the one the receiver holds or last completed."""

    OLDER = "older"
    SAME = "same"
    NEWER = "newer"


class Action(enum.Enum):
    IGNORE = "ignore"  # a stale leader's image: no answer
    BEGIN = "begin"  # drop whatever is held, take this image from offset 0
    EXTEND = "extend"  # add the chunk's new bytes, or ask for the missing ones
    CONFIRM = "confirm"  # a late chunk of the completed image: ack its end again, deliver nothing


# (state, age of the chunk's image) -> what the receiver does. An IDLE
# receiver holds no image, so every chunk is NEWER to it.
_RECEIVER_ACTION = {
    (ReceiverState.IDLE, Age.NEWER): Action.BEGIN,
    (ReceiverState.RECEIVING, Age.OLDER): Action.IGNORE,
    (ReceiverState.RECEIVING, Age.SAME): Action.EXTEND,
    (ReceiverState.RECEIVING, Age.NEWER): Action.BEGIN,
    (ReceiverState.COMPLETE, Age.OLDER): Action.IGNORE,
    (ReceiverState.COMPLETE, Age.SAME): Action.CONFIRM,
    (ReceiverState.COMPLETE, Age.NEWER): Action.BEGIN,
}

Received = tuple[SnapshotMeta, bytes]


@dataclass(frozen=True, slots=True)
class _Held:
    """What every chunk of one image must agree on."""

    meta: SnapshotMeta
    total_bytes: int
    digest: bytes


class SnapshotReceiver:
    """The follower's side: reassembles at most one image at a time; see the module doc."""

    def __init__(
        self,
        chunk_bytes_max: int = CHUNK_BYTES_MAX_DEFAULT,
        snapshot_bytes_max: int = SNAPSHOT_BYTES_MAX_DEFAULT,
    ) -> None:
        assert chunk_bytes_max > 0 and snapshot_bytes_max >= 0
        self.chunk_bytes_max = chunk_bytes_max
        self.snapshot_bytes_max = snapshot_bytes_max
        # Counters for the whole life of the receiver.
        self.gaps = 0  # chunks that started past the offset held
        self.duplicates = 0  # chunks holding only bytes already held
        self.stale_chunks = 0  # chunks of an older image, ignored
        self.digest_mismatches = 0  # complete images that failed their digest
        # The image held (RECEIVING) or last completed (COMPLETE).
        # Invariant: state is IDLE exactly when `_held` is None.
        self.state = ReceiverState.IDLE
        self._held: _Held | None = None
        # Invariant: len(_image) <= total_bytes <= snapshot_bytes_max; empty unless RECEIVING.
        self._image = bytearray()
        self._hash = hashlib.blake2b(digest_size=DIGEST_BYTES)

    @property
    def offset(self) -> int:
        """The first byte of the held image that has not arrived."""
        return len(self._image)

    def on_chunk(self, payload: bytes) -> tuple[bytes | None, Received | None]:
        """Take one chunk: the ack to send back (None for a stale chunk) and,
        once, the complete (meta, image).

        `RemoteProtocolError` if the payload is malformed, breaks a limit, or
        disagrees with earlier chunks of the same image about its meta, length
        or digest; the state is then unchanged.
        """
        chunk = decode_chunk(payload, self.chunk_bytes_max, self.snapshot_bytes_max)
        action = _RECEIVER_ACTION[(self.state, self._age(chunk))]
        if action is Action.IGNORE:
            self.stale_chunks += 1
            return None, None
        if action is Action.BEGIN:
            self._begin(chunk)
        else:
            self._check_same_image(chunk)
        if action is Action.CONFIRM:
            self.duplicates += 1
            return self._ack(chunk.total_bytes), None
        ack, received = self._extend(chunk)
        self._check()
        return ack, received

    def resume_ack(self) -> bytes | None:
        """An ack naming the offset held, for the driver to send when the link to the leader comes back."""
        if self.state is not ReceiverState.RECEIVING:
            return None
        return self._ack(self.offset, rewind=True)

    def _age(self, chunk: Chunk) -> Age:
        if self._held is None:
            return Age.NEWER
        held, key = self._held.meta.key, chunk.meta.key
        return Age.OLDER if key < held else Age.SAME if key == held else Age.NEWER

    def _check_same_image(self, chunk: Chunk) -> None:
        held = self._held
        assert held is not None
        if (chunk.meta, chunk.total_bytes, chunk.digest) != (held.meta, held.total_bytes, held.digest):
            raise RemoteProtocolError(
                f"snapshot chunk of image {chunk.meta.key} disagrees with earlier chunks about its meta,"
                " length or digest"
            )

    def _begin(self, chunk: Chunk) -> None:
        self.state = ReceiverState.RECEIVING
        self._held = _Held(chunk.meta, chunk.total_bytes, chunk.digest)
        self._restart_image()

    def _restart_image(self) -> None:
        self._image = bytearray()
        self._hash = hashlib.blake2b(digest_size=DIGEST_BYTES)

    def _extend(self, chunk: Chunk) -> tuple[bytes, Received | None]:
        held = self._held
        assert held is not None and self.state is ReceiverState.RECEIVING
        offset = self.offset
        if chunk.offset > offset:
            self.gaps += 1
            return self._ack(offset, rewind=True), None
        new = chunk.data[offset - chunk.offset:]
        if not new and held.total_bytes > 0:
            self.duplicates += 1
            return self._ack(offset), None
        self._image += new
        self._hash.update(new)
        if self.offset < held.total_bytes:
            return self._ack(self.offset), None
        return self._complete()

    def _complete(self) -> tuple[bytes, Received | None]:
        held = self._held
        assert held is not None and self.offset == held.total_bytes
        if self._hash.digest() != held.digest:
            # Damaged in flight or spliced wrongly: the image is worthless,
            # so ask for all of it again rather than blame the leader.
            self.digest_mismatches += 1
            self._restart_image()
            return self._ack(0, rewind=True), None
        data = bytes(self._image)
        self.state = ReceiverState.COMPLETE
        self._restart_image()
        return self._ack(held.total_bytes), (held.meta, data)

    def _ack(self, offset: int, rewind: bool = False) -> bytes:
        assert self._held is not None
        return encode_ack(Ack(self._held.meta.term, self._held.meta.index, offset, rewind))

    def _check(self) -> None:
        held = self._held
        assert (self.state is ReceiverState.IDLE) == (held is None)
        assert held is None or self.offset <= held.total_bytes <= self.snapshot_bytes_max
        assert self.state is ReceiverState.RECEIVING or not self._image
