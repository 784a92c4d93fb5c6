"""The replicated-log interface: what the server and the simulator drive.

Theory of operation
-------------------
A consensus engine is a pure state machine. It owns no socket, clock, thread
or global random generator: the caller feeds it logical ticks, peer messages
and client proposals, and collects a `Ready` describing everything the caller
must do next (persist, send, apply). After the caller has done that work it
calls `advance(ready)`, which tells the engine that the work is durable/done.

The caller's loop is always the same, whichever engine sits behind it:

    while running:
        feed ticks / messages / proposals into the engine
        if engine.has_ready():
            rd = engine.ready()
            1. if rd.snapshot: persist it and install it in the state machine
            2. persist rd.entries and rd.hard_state (fsync)   -- BEFORE step 3
            3. send rd.messages
            4. apply rd.committed_entries in order; answer rd.read_states
            engine.advance(rd)

Step 2 must complete before step 3: a vote or an acknowledgement that is sent
before the state it reports is durable can be forgotten by a crash, and then
two leaders can be elected in one term or a committed entry lost.

This module holds only engine-neutral vocabulary ("leader", "membership",
"read barrier"); words that belong to one algorithm (terms, ballots, probes)
stay inside that engine's package. Raft and Multi-Paxos both implement
`ReplicatedLog`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

NodeId = str


class EntryKind(enum.IntEnum):
    """What a log entry carries. The state machine only ever sees NORMAL data."""

    NORMAL = 0  # client data, opaque bytes
    NOOP = 1  # written by a new leader to commit earlier entries
    MEMBERSHIP = 2  # a membership change (data is an encoded `Membership`)


@dataclass(frozen=True, slots=True)
class Entry:
    """One slot of the replicated log.

    `term` is the engine's epoch number (a Raft term, a Paxos ballot round);
    `index` starts at 1 and has no gaps.
    """

    term: int
    index: int
    kind: EntryKind = EntryKind.NORMAL
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class Membership:
    """Who votes and who only listens.

    During a joint change (C_old,new) `voters_outgoing` is the old voter set
    and decisions need a majority of *both* `voters` and `voters_outgoing`.
    Outside a joint change `voters_outgoing` is empty.

    `learners_next` holds outgoing voters that the change demotes to learners:
    a node is never voter and learner at once, so they vote as outgoing voters
    during the joint phase and become learners when it is left. It is empty
    outside a joint change, and it travels with the membership everywhere (log
    entries, snapshots, InstallSnapshot): a node that learns the joint
    membership from a snapshot must still know whom to keep as learners.
    """

    voters: frozenset[NodeId]
    learners: frozenset[NodeId] = frozenset()
    voters_outgoing: frozenset[NodeId] = frozenset()
    learners_next: frozenset[NodeId] = frozenset()

    @property
    def joint(self) -> bool:
        return bool(self.voters_outgoing)

    def members(self) -> frozenset[NodeId]:
        return self.voters | self.learners | self.voters_outgoing | self.learners_next


@dataclass(frozen=True, slots=True)
class HardState:
    """The engine state that must survive a crash, besides the log itself."""

    term: int = 0
    vote: NodeId | None = None
    commit: int = 0


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A state-machine image covering every entry up to and including `index`."""

    index: int
    term: int
    membership: Membership
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class ReadState:
    """A read barrier passed: once `applied >= index`, a read tagged `ctx` is linearizable."""

    ctx: bytes
    index: int


class Role(enum.Enum):
    FOLLOWER = "follower"
    CANDIDATE = "candidate"
    PRECANDIDATE = "precandidate"
    LEADER = "leader"
    LEARNER = "learner"


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile state the caller tracks (who leads, this node's role); not persisted."""

    leader: NodeId | None
    role: "Role"


@dataclass(frozen=True, slots=True)
class Ready:
    """Everything the caller must do after feeding the engine, in this order.

    - `snapshot`: persist and install first; it replaces every entry up to its index.
    - `entries`: append to durable storage (overwriting any stored suffix from
      the first entry's index on). Persist BEFORE sending `messages`.
    - `hard_state`: persist with `entries`, BEFORE sending `messages`; None if unchanged.
    - `messages`: send only after the above are durable. Delivery is best effort:
      the engine tolerates loss, duplication and reordering.
    - `committed_entries`: apply to the state machine in index order. They are
      committed, so they may be applied before or while persisting.
    - `read_states`: read barriers that passed; serve each once applied >= index.
    - `soft_state`: the leader and this node's role, when either changed since
      the last Ready (None otherwise): how a driver follows elections without
      reading engine internals.
    - `must_sync`: whether `entries` and `hard_state` must be made durable (fsync)
      before `messages` are sent: true when there are entries or the term or vote
      changed; a commit index alone need not be synced (a node that forgets how
      far the log was committed learns it again from the leader).
    - `dropped`: read-barrier contexts the engine gave up on (it lost leadership
      before the barrier was confirmed); answer those clients with an error.
      Proposals are refused synchronously by `propose` raising ProposalDropped;
      an accepted proposal is known to have committed when an entry with the same
      (index, term) is applied, and to be lost when another term's entry is
      applied at its index.
    - `must_sync`: True when this Ready's writes must be fsynced before
      `messages` go out: it carries entries or a snapshot, or the term or vote
      changed since the hard state last handed out. A change of the commit
      index alone needs no sync (as etcd-io/raft's MustSync): the commit index
      can always be learned again from the leader, and a lost one only delays
      applying. A snapshot needs a sync here too, unlike etcd, because the
      engine acknowledges it to the leader as stored.
    """

    snapshot: Snapshot | None = None
    entries: tuple[Entry, ...] = ()
    hard_state: HardState | None = None
    messages: tuple[Any, ...] = ()
    committed_entries: tuple[Entry, ...] = ()
    read_states: tuple[ReadState, ...] = ()
    dropped: tuple[bytes, ...] = ()
    soft_state: SoftState | None = None
    must_sync: bool = False


@dataclass(frozen=True, slots=True)
class Status:
    """A read-only view for dashboards, invariant checkers and routing."""

    id: NodeId
    role: Role
    term: int
    leader: NodeId | None
    commit: int
    applied: int
    first_index: int
    last_index: int
    membership: Membership
    lease_valid: bool = False
    progress: dict[NodeId, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RestoreState:
    """What a restarted node loads from durable storage to rebuild its engine."""

    hard_state: HardState = HardState()
    snapshot: Snapshot | None = None
    entries: tuple[Entry, ...] = ()


class EngineConfigError(ValueError):
    """An engine refuses its configuration (raised when it is built)."""


class MessageDecodeError(ValueError):
    """Protocol error: a peer sent bytes that are not a valid message of the engine."""


class ProposalDropped(Exception):
    """Operating error: the engine will not take this proposal now (retry elsewhere or later)."""


class ReplicatedLog(Protocol):
    """What every consensus engine offers to the server and the simulator."""

    id: NodeId

    def tick(self) -> None:
        """Advance logical time by one tick (the driver decides how long a tick is)."""

    def step(self, message: Any) -> None:
        """Feed one message received from a peer."""

    def propose(self, data: bytes) -> tuple[int, int]:
        """Append client data; returns the (index, term) it will occupy. Raises ProposalDropped."""

    def read_barrier(self, ctx: bytes) -> None:
        """Request a linearizable read point; answered through Ready.read_states.

        Raises ProposalDropped when this node cannot serve one (not the leader)."""

    def change_membership(self, membership: Membership) -> tuple[int, int]:
        """Propose moving to `membership` (joint when more than one voter changes)."""

    def transfer_leadership(self, to: NodeId) -> None:
        """Hand leadership to `to` once it is caught up."""

    def compact(self, snapshot: Snapshot) -> None:
        """The caller took a snapshot at `snapshot.index`; entries up to it may be dropped."""

    def membership_at(self, index: int) -> Membership:
        """The membership in force once the log up to `index` is applied.

        A snapshot at `index` must hold this one, not `status().membership`: a
        later membership entry may be in the log and still be undone."""

    def has_ready(self) -> bool: ...

    def ready(self) -> Ready: ...

    def advance(self, ready: Ready) -> None:
        """The caller has persisted, sent and applied everything in `ready`."""

    def status(self) -> Status: ...

    def log_entries(self, lo: int, hi: int) -> Sequence[Entry]:
        """Entries with lo <= index < hi that the engine still holds (for checkers)."""
