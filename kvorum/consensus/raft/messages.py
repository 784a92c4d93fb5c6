"""Raft wire messages and their msgpack encoding.

Every message is a frozen, slotted dataclass whose fields are plain values
(str, int, bool, bytes, tuples of `Entry`, one `Snapshot`), with `to` (the
receiver) and `frm` (the sender) first, then `term`. `encode_message` and
`decode_message` are exact inverses; `decode_message` raises
`MessageDecodeError` (a peer's fault, shared by every engine's decoder) on
anything malformed.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Union

import msgpack

from kvorum.consensus.replicated_log import (
    Entry,
    EntryKind,
    Membership,
    MessageDecodeError,
    NodeId,
    Snapshot,
)


@dataclass(frozen=True, slots=True)
class AppendEntries:
    """Leader -> follower: entries after (index, log_term); empty entries make a probe."""

    to: NodeId
    frm: NodeId
    term: int
    index: int  # the index just before entries[0]
    log_term: int  # the term of the entry at `index`
    entries: tuple[Entry, ...]
    commit: int


@dataclass(frozen=True, slots=True)
class AppendResponse:
    """Follower -> leader.

    Accepted: the follower's log matches the leader's up to `index`.
    Rejected: the entry at `index` (the append's previous index) did not match;
    `hint_index`/`hint_term` name the follower's last entry that might match
    (the largest index <= hint_index whose term <= the leader's `log_term`),
    so the leader skips a whole term per round trip (thesis 5.3 optimization).
    """

    to: NodeId
    frm: NodeId
    term: int
    index: int
    reject: bool = False
    hint_index: int = 0
    hint_term: int = 0


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Leader -> follower: liveness, commit propagation and a ReadIndex/lease round."""

    to: NodeId
    frm: NodeId
    term: int
    commit: int
    round: int


@dataclass(frozen=True, slots=True)
class HeartbeatResponse:
    to: NodeId
    frm: NodeId
    term: int
    round: int


@dataclass(frozen=True, slots=True)
class RequestVote:
    """Candidate -> voter. `pre` marks a PreVote (term is the term it would use).

    `transfer` marks an election started by TimeoutNow, which voters must not
    ignore even while they believe in a live leader.
    """

    to: NodeId
    frm: NodeId
    term: int
    last_index: int
    last_term: int
    pre: bool = False
    transfer: bool = False


@dataclass(frozen=True, slots=True)
class VoteResponse:
    to: NodeId
    frm: NodeId
    term: int
    reject: bool
    pre: bool = False


@dataclass(frozen=True, slots=True)
class InstallSnapshot:
    """Leader -> follower whose needed entries were compacted away."""

    to: NodeId
    frm: NodeId
    term: int
    snapshot: Snapshot


@dataclass(frozen=True, slots=True)
class TimeoutNow:
    """Leader -> transfer target: start an election immediately (thesis 3.10)."""

    to: NodeId
    frm: NodeId
    term: int


Message = Union[
    AppendEntries,
    AppendResponse,
    Heartbeat,
    HeartbeatResponse,
    RequestVote,
    VoteResponse,
    InstallSnapshot,
    TimeoutNow,
]

# The wire tag of each message type. Tags are part of the format: never reuse one.
_TAGS: dict[type, int] = {
    AppendEntries: 1,
    AppendResponse: 2,
    Heartbeat: 3,
    HeartbeatResponse: 4,
    RequestVote: 5,
    VoteResponse: 6,
    InstallSnapshot: 7,
    TimeoutNow: 8,
}
_TYPES: dict[int, type] = {tag: cls for cls, tag in _TAGS.items()}
_FIELDS: dict[type, tuple[str, ...]] = {cls: tuple(f.name for f in fields(cls)) for cls in _TAGS}
assert len(_TYPES) == len(_TAGS), "message tags must be unique"


def _encode_value(value: Any) -> Any:
    if isinstance(value, tuple):
        return [[e.term, e.index, int(e.kind), e.data] for e in value]
    if isinstance(value, Snapshot):
        m = value.membership
        return [
            value.index,
            value.term,
            sorted(m.voters),
            sorted(m.learners),
            sorted(m.voters_outgoing),
            sorted(m.learners_next),
            value.data,
        ]
    return value


def encode_message(msg: Message) -> bytes:
    cls = type(msg)
    body = [_TAGS[cls]]
    for name in _FIELDS[cls]:
        body.append(_encode_value(getattr(msg, name)))
    return msgpack.packb(body, use_bin_type=True)


def _decode_entries(raw: Any) -> tuple[Entry, ...]:
    return tuple(Entry(int(t), int(i), EntryKind(k), bytes(d)) for t, i, k, d in raw)


def _decode_snapshot(raw: Any) -> Snapshot:
    index, term, voters, learners, outgoing, learners_next, data = raw
    membership = Membership(
        frozenset(voters), frozenset(learners), frozenset(outgoing), frozenset(learners_next)
    )
    return Snapshot(int(index), int(term), membership, bytes(data))


def decode_message(data: bytes) -> Message:
    try:
        body = msgpack.unpackb(data, raw=False, use_list=True)
        cls = _TYPES[body[0]]
        names = _FIELDS[cls]
        if len(body) != len(names) + 1:
            raise MessageDecodeError(f"{cls.__name__}: expected {len(names)} fields")
        values = dict(zip(names, body[1:]))
        if "entries" in values:
            values["entries"] = _decode_entries(values["entries"])
        if "snapshot" in values:
            values["snapshot"] = _decode_snapshot(values["snapshot"])
        return cls(**values)
    except MessageDecodeError:
        raise
    except (KeyError, IndexError, TypeError, ValueError, msgpack.UnpackException) as exc:
        raise MessageDecodeError(f"malformed raft message: {exc}") from exc


__all__ = [
    "AppendEntries",
    "AppendResponse",
    "Heartbeat",
    "HeartbeatResponse",
    "InstallSnapshot",
    "Message",
    "MessageDecodeError",
    "RequestVote",
    "TimeoutNow",
    "VoteResponse",
    "encode_message",
    "decode_message",
]
