"""Multi-Paxos wire messages and their msgpack encoding.

Every message is a frozen, slotted dataclass of plain values with `to` (the
receiver) and `frm` (the sender) first, then `ballot`: the ballot the sender
acts in (a proposer's own ballot, or an acceptor's promised one). `term` is
an alias of `ballot`, the contract's engine-neutral word that drivers and
traces read. `encode_message` and `decode_message` are exact inverses;
`decode_message` raises `MessageDecodeError` (the peer's fault) on anything
malformed.

Phase 1 is `Prepare` / `Promise`, phase 2 is `Accept` / `Accepted`; `Heartbeat`
carries the commit point and a read round, `Catchup` a whole snapshot for an
acceptor whose missing slots were compacted, and `TimeoutNow` hands leadership
over.
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


class _Ballot:
    """Mixin: `term` is the contract's name for a message's ballot."""

    __slots__ = ()

    @property
    def term(self) -> int:
        return self.ballot  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class Prepare(_Ballot):
    """Phase 1a, proposer -> acceptor: promise `ballot` and report what you accepted
    after my commit point `commit`. `transfer` marks a campaign the leader asked for."""

    to: NodeId
    frm: NodeId
    ballot: int
    commit: int
    transfer: bool = False


@dataclass(frozen=True, slots=True)
class Promise(_Ballot):
    """Phase 1b, acceptor -> proposer.

    Granted (`reject` False): the acceptor promised `ballot`. `commit` is its
    commit point; `accepted` the ballot at which it accepted every entry after
    `commit` (0 when there are none); `entries` its slots after the proposer's
    commit point (those up to `commit` are chosen values); `snapshot` its
    snapshot when it compacted slots the proposer lacks.
    Refused: `ballot` is the higher ballot the acceptor promised.
    """

    to: NodeId
    frm: NodeId
    ballot: int
    reject: bool
    commit: int = 0
    accepted: int = 0
    entries: tuple[Entry, ...] = ()
    snapshot: Snapshot | None = None


@dataclass(frozen=True, slots=True)
class Accept(_Ballot):
    """Phase 2a, leader -> acceptor: accept `entries` (slots `index`+1 on) in `ballot`.
    `commit` is the leader's commit point."""

    to: NodeId
    frm: NodeId
    ballot: int
    index: int  # the slot just before entries[0]
    entries: tuple[Entry, ...]
    commit: int


@dataclass(frozen=True, slots=True)
class Accepted(_Ballot):
    """Phase 2b, acceptor -> leader.

    Accepted: the acceptor's slots up to `index` hold the leader's values.
    Refused with `ballot` equal to the leader's: the acceptor cannot take slots
    after `index` yet; `hint` is where the leader should resume (its last slot
    after a gap, its commit point when it must first switch to this ballot).
    Refused with a higher `ballot`: the acceptor promised another proposer.
    """

    to: NodeId
    frm: NodeId
    ballot: int
    index: int
    reject: bool = False
    hint: int = 0


@dataclass(frozen=True, slots=True)
class Heartbeat(_Ballot):
    """Leader -> member: liveness, the commit point it may apply, and a read round."""

    to: NodeId
    frm: NodeId
    ballot: int
    commit: int
    round: int


@dataclass(frozen=True, slots=True)
class HeartbeatAck(_Ballot):
    to: NodeId
    frm: NodeId
    ballot: int
    round: int


@dataclass(frozen=True, slots=True)
class Catchup(_Ballot):
    """Leader -> member whose missing slots were compacted: the leader's snapshot."""

    to: NodeId
    frm: NodeId
    ballot: int
    snapshot: Snapshot


@dataclass(frozen=True, slots=True)
class TimeoutNow(_Ballot):
    """Leader -> transfer target: run phase 1 now; acceptors answer despite the lease."""

    to: NodeId
    frm: NodeId
    ballot: int


Message = Union[Prepare, Promise, Accept, Accepted, Heartbeat, HeartbeatAck, Catchup, TimeoutNow]

# The wire tag of each message type. Tags are part of the format: never reuse one.
_TAGS: dict[type, int] = {
    Prepare: 1,
    Promise: 2,
    Accept: 3,
    Accepted: 4,
    Heartbeat: 5,
    HeartbeatAck: 6,
    Catchup: 7,
    TimeoutNow: 8,
}
_TYPES: dict[int, type] = {tag: cls for cls, tag in _TAGS.items()}
_FIELDS: dict[type, tuple[str, ...]] = {cls: tuple(f.name for f in fields(cls)) for cls in _TAGS}
assert len(_TYPES) == len(_TAGS), "message tags must be unique"


def _encode_snapshot(s: Snapshot) -> list[Any]:
    m = s.membership
    return [
        s.index,
        s.term,
        sorted(m.voters),
        sorted(m.learners),
        sorted(m.voters_outgoing),
        sorted(m.learners_next),
        s.data,
    ]


def _encode_value(value: Any) -> Any:
    if isinstance(value, tuple):
        return [[e.term, e.index, int(e.kind), e.data] for e in value]
    if isinstance(value, Snapshot):
        return _encode_snapshot(value)
    return value


def encode_message(msg: Message) -> bytes:
    cls = type(msg)
    body = [_TAGS[cls]]
    for name in _FIELDS[cls]:
        body.append(_encode_value(getattr(msg, name)))
    return msgpack.packb(body, use_bin_type=True)


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
            values["entries"] = tuple(
                Entry(int(t), int(i), EntryKind(k), bytes(d)) for t, i, k, d in values["entries"]
            )
        if values.get("snapshot") is not None:
            values["snapshot"] = _decode_snapshot(values["snapshot"])
        return cls(**values)
    except MessageDecodeError:
        raise
    except (KeyError, IndexError, TypeError, ValueError, msgpack.UnpackException) as exc:
        raise MessageDecodeError(f"malformed paxos message: {exc}") from exc


__all__ = [
    "Accept",
    "Accepted",
    "Catchup",
    "Heartbeat",
    "HeartbeatAck",
    "Message",
    "Prepare",
    "Promise",
    "TimeoutNow",
    "decode_message",
    "encode_message",
]
