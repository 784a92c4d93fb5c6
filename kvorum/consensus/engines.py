"""Consensus engines by name: what the simulator, benchmarks and tools drive.

An engine registers an `EngineSpec`: a factory that builds one node from
engine-neutral `NodeSettings`, the decoder of its MEMBERSHIP entries (the only
engine encoding a driver must read, to know the membership at a snapshot's
index), and its wire codec (every message object it emits has `.to` and
`.frm`). Two engines are registered: "raft" and "paxos".

Engines are imported only when a node is built, so looking up the registry
costs nothing; the deliberately broken variants an engine offers for the
simulator (`NodeSettings.bugs`) are loaded only when one is asked for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from kvorum.consensus.replicated_log import (
    Membership,
    MessageDecodeError,
    NodeId,
    ReplicatedLog,
    RestoreState,
    Snapshot,
)

if TYPE_CHECKING:
    import random

__all__ = ["EngineSpec", "MessageDecodeError", "NodeSettings", "get", "names", "register"]


@dataclass(frozen=True, slots=True)
class NodeSettings:
    """How to build one node, in words every engine understands. Times are in ticks.

    - `membership`: the group's initial membership (the restored state wins on restart).
    - `rng`: the node's only source of randomness.
    - `restore`: what the node persisted before a restart; None for a fresh node.
    - `election_tick`, `heartbeat_tick`: failure detection and heartbeat periods.
    - `lease_reads`, `check_quorum`, `pre_vote`: the engine's read and election
      safeguards (an engine without an equivalent ignores the knob).
    - `max_entries_per_msg`: batch limit of one replication message.
    - `bugs`: names from the spec's `known_bugs()`; each builds a deliberately
      broken variant for proving that the simulator catches it. Empty in production.
    - `lease_drift_ticks`: the lease's margin for clock-rate drift.
    - `max_pending_reads`: read barriers a leader holds waiting for confirmation.
    - `max_uncommitted_bytes`: data of uncommitted proposals a leader accepts.
    """

    id: NodeId
    membership: Membership
    rng: "random.Random"
    restore: RestoreState | None = None
    election_tick: int = 10
    heartbeat_tick: int = 1
    lease_reads: bool = False
    check_quorum: bool = True
    pre_vote: bool = True
    max_entries_per_msg: int = 256
    bugs: frozenset[str] = frozenset()
    lease_drift_ticks: int = 2
    max_pending_reads: int = 4096
    max_uncommitted_bytes: int = 1 << 30


@dataclass(frozen=True, slots=True)
class EngineSpec:
    """One engine: how to build a node, read its membership entries, and put its messages on a wire.

    `decode_message` raises `MessageDecodeError` (a ValueError, the peer's fault)
    on bytes that are not one of the engine's messages.
    """

    name: str
    make: Callable[[NodeSettings], ReplicatedLog]
    decode_membership: Callable[[bytes], Membership]
    encode_message: Callable[[Any], bytes]
    decode_message: Callable[[bytes], Any]
    known_bugs: Callable[[], frozenset[str]]
    # A message that carries a whole snapshot: (sender's term, snapshot), else None. A
    # driver sends the image out of band, in chunks, and rebuilds the message on the
    # other side with `snapshot_message(to, frm, term, snapshot)`.
    snapshot_in: Callable[[Any], tuple[int, Snapshot] | None] = lambda message: None
    snapshot_message: Callable[[NodeId, NodeId, int, Snapshot], Any] | None = None
    # Raft's log matching: two logs that hold the same (index, term) hold the same
    # prefix. Multi-Paxos chooses each slot on its own, so its checker asks only
    # that one (index, term) be one entry.
    prefix_matching: bool = True


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


# --- raft ----------------------------------------------------------------------


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
        lease_drift_ticks=settings.lease_drift_ticks,
        max_entries_per_msg=settings.max_entries_per_msg,
        max_uncommitted_bytes=settings.max_uncommitted_bytes,
        max_pending_reads=settings.max_pending_reads,
    )
    if settings.bugs:
        from kvorum.consensus.raft.bugs import node_class

        return node_class(settings.bugs)(config, settings.restore)
    return RaftNode(config, settings.restore)


def _decode_raft_membership(data: bytes) -> Membership:
    from kvorum.consensus.raft.membership import decode_membership

    return decode_membership(data)


def _encode_raft_message(message: Any) -> bytes:
    from kvorum.consensus.raft.messages import encode_message

    return encode_message(message)


def _decode_raft_message(data: bytes) -> Any:
    from kvorum.consensus.raft.messages import decode_message

    return decode_message(data)


def _raft_snapshot_in(message: Any) -> tuple[int, Snapshot] | None:
    from kvorum.consensus.raft.messages import InstallSnapshot

    if type(message) is InstallSnapshot:
        return message.term, message.snapshot
    return None


def _raft_snapshot_message(to: NodeId, frm: NodeId, term: int, snapshot: Snapshot) -> Any:
    from kvorum.consensus.raft.messages import InstallSnapshot

    return InstallSnapshot(to, frm, term, snapshot)


def _raft_bugs() -> frozenset[str]:
    from kvorum.consensus.raft.bugs import KNOWN_BUGS

    return KNOWN_BUGS


register(
    EngineSpec(
        name="raft",
        make=_make_raft,
        decode_membership=_decode_raft_membership,
        encode_message=_encode_raft_message,
        decode_message=_decode_raft_message,
        known_bugs=_raft_bugs,
        snapshot_in=_raft_snapshot_in,
        snapshot_message=_raft_snapshot_message,
    )
)


# --- paxos ---------------------------------------------------------------------


def _make_paxos(settings: NodeSettings) -> ReplicatedLog:
    from kvorum.consensus.paxos import PaxosConfig, PaxosNode

    # Multi-Paxos has no PreVote: acceptors already refuse new proposers while
    # they hear a leader (check_quorum), which is what PreVote buys Raft.
    config = PaxosConfig(
        id=settings.id,
        membership=settings.membership,
        rng=settings.rng,
        election_tick=settings.election_tick,
        heartbeat_tick=settings.heartbeat_tick,
        check_quorum=settings.check_quorum,
        lease_reads=settings.lease_reads,
        lease_drift_ticks=settings.lease_drift_ticks,
        max_entries_per_msg=settings.max_entries_per_msg,
        max_uncommitted_bytes=settings.max_uncommitted_bytes,
        max_pending_reads=settings.max_pending_reads,
    )
    if settings.bugs:
        from kvorum.consensus.paxos.bugs import node_class

        return node_class(settings.bugs)(config, settings.restore)
    return PaxosNode(config, settings.restore)


def _encode_paxos_message(message: Any) -> bytes:
    from kvorum.consensus.paxos.messages import encode_message

    return encode_message(message)


def _decode_paxos_message(data: bytes) -> Any:
    from kvorum.consensus.paxos.messages import decode_message

    return decode_message(data)


def _paxos_snapshot_in(message: Any) -> tuple[int, Snapshot] | None:
    from kvorum.consensus.paxos.messages import Catchup

    if type(message) is Catchup:
        return message.ballot, message.snapshot
    return None


def _paxos_snapshot_message(to: NodeId, frm: NodeId, ballot: int, snapshot: Snapshot) -> Any:
    from kvorum.consensus.paxos.messages import Catchup

    return Catchup(to, frm, ballot, snapshot)


def _paxos_bugs() -> frozenset[str]:
    from kvorum.consensus.paxos.bugs import KNOWN_BUGS

    return KNOWN_BUGS


register(
    EngineSpec(
        name="paxos",
        make=_make_paxos,
        # MEMBERSHIP entries are encoded as Raft's: one format for both engines.
        decode_membership=_decode_raft_membership,
        encode_message=_encode_paxos_message,
        decode_message=_decode_paxos_message,
        known_bugs=_paxos_bugs,
        snapshot_in=_paxos_snapshot_in,
        snapshot_message=_paxos_snapshot_message,
        prefix_matching=False,
    )
)
