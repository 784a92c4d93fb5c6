"""Consensus engines the simulator can drive, looked up by name.

An engine registers a factory that builds one node from engine-neutral
`NodeSettings`, and a decoder for its MEMBERSHIP entries (the only engine
encoding the driver must read, to know the membership at a snapshot's index).
Adding Multi-Paxos is one more `register` call.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

from kvorum.consensus.replicated_log import Membership, NodeId, ReplicatedLog, RestoreState


@dataclass(frozen=True, slots=True)
class NodeSettings:
    id: NodeId
    membership: Membership
    rng: random.Random
    restore: RestoreState | None
    election_tick: int
    heartbeat_tick: int
    lease_reads: bool
    check_quorum: bool
    pre_vote: bool
    max_entries_per_msg: int
    bugs: frozenset[str]


@dataclass(frozen=True, slots=True)
class EngineSpec:
    name: str
    make: Callable[[NodeSettings], ReplicatedLog]
    decode_membership: Callable[[bytes], Membership]
    known_bugs: Callable[[], frozenset[str]]


_ENGINES: dict[str, EngineSpec] = {}


def register(spec: EngineSpec) -> None:
    assert spec.name not in _ENGINES, spec.name
    _ENGINES[spec.name] = spec


def get(name: str) -> EngineSpec:
    try:
        return _ENGINES[name]
    except KeyError:
        raise ValueError(f"unknown engine {name!r}; known: {', '.join(sorted(_ENGINES))}") from None


def names() -> list[str]:
    return sorted(_ENGINES)


def _make_raft(settings: NodeSettings) -> ReplicatedLog:
    from kvorum.consensus.raft import RaftConfig, RaftNode

    config = RaftConfig(
        id=settings.id,
        membership=settings.membership,
        rng=settings.rng,
        election_tick=settings.election_tick,
        heartbeat_tick=settings.heartbeat_tick,
        pre_vote=settings.pre_vote,
        check_quorum=settings.check_quorum,
        lease_reads=settings.lease_reads,
        max_entries_per_msg=settings.max_entries_per_msg,
        bugs=settings.bugs,
    )
    return RaftNode(config, settings.restore)


def _decode_raft_membership(data: bytes) -> Membership:
    from kvorum.consensus.raft.membership import decode_membership

    return decode_membership(data)


def _raft_bugs() -> frozenset[str]:
    from kvorum.consensus.raft.config import KNOWN_BUGS

    return KNOWN_BUGS


register(EngineSpec("raft", _make_raft, _decode_raft_membership, _raft_bugs))
