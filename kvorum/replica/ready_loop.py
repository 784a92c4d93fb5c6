"""The Ready loop's logic, once for the server and the simulator: apply, answer, snapshot.

Theory of operation
-------------------
`kvorum.consensus.replicated_log` fixes what a driver does with each Ready:
persist, send after the writes are durable, apply committed entries, answer
read barriers, advance. Persisting and sending differ between the server (a
write-ahead log fsynced in a worker thread, a TCP transport) and the
simulator (a simulated disk whose fsync completes later, a simulated
network); everything else is the same, and lives here, sans-I/O:

- `propose` / `read_barrier` feed the engine and remember who waits
  (a `Waiter`: a client's future on the server, a simulated client);
- `process(rd)` does, in the contract's order, what a Ready asks of the state
  machine: install a snapshot, follow the leader and term, apply committed
  entries (answering their proposers: applied in the term they were proposed
  in, or lost to another term's entry), and serve read barriers once applied
  reaches their index;
- `snapshot()` / `compacted(snapshot)` take a snapshot of the applied state
  (with the membership in force at that index, not the engine's latest) and
  let the engine drop the entries it covers, once the caller has persisted it.

The driver calls, per Ready: `process(rd)`, then persists `rd.entries` and
`rd.hard_state` (and syncs when `rd.must_sync`), sends `rd.messages` only after
that, and calls `engine.advance(rd)`.
"""

from __future__ import annotations

from typing import Any, Protocol

from kvorum.consensus.replicated_log import (
    Entry,
    EntryKind,
    Membership,
    Ready,
    ReplicatedLog,
    Role,
    Snapshot,
)


class Waiter(Protocol):
    """Someone waiting for a proposal or a read barrier; answered exactly once."""

    origin: Any  # handed to the state machine with the entry it proposed (may be None)

    def applied(self, index: int, reply: Any) -> None:
        """The proposal applied with `reply` (for a read barrier: the read may be served now)."""

    def failed(self, message: str) -> None:
        """Refused or lost: `message` is a Redis error line without the '-'."""


class StateMachine(Protocol):
    def apply(self, data: bytes, origin: Any) -> Any: ...

    def dump(self) -> bytes: ...

    def load(self, blob: bytes) -> None: ...

    def on_membership(self, membership: Membership, index: int) -> None: ...


LOST_TO_ANOTHER_TERM = "TRYAGAIN the write was not applied: leadership changed before it committed"
COVERED_BY_SNAPSHOT = "TIMEOUT the write's outcome is unknown: a snapshot replaced the log"
READ_DROPPED = "TRYAGAIN leadership changed during the read"


class ReadyLoop:
    """One engine, the state machine it feeds, and everyone waiting on them."""

    def __init__(self, engine: ReplicatedLog, machine: StateMachine,
                 decode_membership, applied_index: int = 0, applied_term: int = 0) -> None:
        self.engine = engine
        self.machine = machine
        self.decode_membership = decode_membership
        # Invariant: snapshot_index <= applied_index.
        self.applied_index = applied_index
        self.applied_term = applied_term
        self.snapshot_index = applied_index
        # What the engine last reported (Ready.soft_state, Ready.hard_state).
        self.leader: str | None = None
        self.role = Role.FOLLOWER
        self.term = 0
        # Waiting: proposals by log index (with the term they were proposed in), reads by context.
        self.writes: dict[int, tuple[int, Waiter]] = {}
        self.reads_waiting: dict[bytes, Waiter] = {}
        self.reads_ready: list[tuple[int, Waiter]] = []  # (index, waiter): barrier passed, not applied yet

    # Inputs.

    def propose(self, data: bytes, waiter: Waiter) -> tuple[int, int]:
        """Raises ProposalDropped; otherwise `waiter` hears back once the entry applies."""
        index, term = self.engine.propose(data)
        self.writes[index] = (term, waiter)
        return index, term

    def read_barrier(self, ctx: bytes, waiter: Waiter) -> None:
        """Raises ProposalDropped; otherwise `waiter.applied` once a read may be served."""
        self.engine.read_barrier(ctx)
        self.reads_waiting[ctx] = waiter

    def take_write(self, index: int, term: int) -> Waiter | None:
        """The waiter of the proposal at (index, term), removed, if any (answered early)."""
        found = self.writes.get(index)
        if found is None or found[0] != term:
            return None
        del self.writes[index]
        return found[1]

    # The Ready.

    def process(self, rd: Ready) -> None:
        """Everything a Ready asks of the state machine, in the contract's order."""
        if rd.snapshot is not None:
            self._install(rd.snapshot)
        if rd.hard_state is not None:
            self.term = rd.hard_state.term
        if rd.soft_state is not None:
            self.leader = rd.soft_state.leader
            self.role = rd.soft_state.role
        for entry in rd.committed_entries:
            self._apply(entry)
        for read in rd.read_states:
            waiter = self.reads_waiting.pop(read.ctx, None)
            if waiter is not None:
                self.reads_ready.append((read.index, waiter))
        for ctx in rd.dropped:
            waiter = self.reads_waiting.pop(ctx, None)
            if waiter is not None:
                waiter.failed(READ_DROPPED)
        if self.reads_ready:
            self._serve_reads()

    def _install(self, snapshot: Snapshot) -> None:
        """A leader's snapshot replaces the state machine; writes it covers have unknown outcomes."""
        self.machine.load(snapshot.data)
        self.applied_index = self.snapshot_index = snapshot.index
        self.applied_term = snapshot.term
        self.machine.on_membership(snapshot.membership, snapshot.index)
        for index in [i for i in self.writes if i <= snapshot.index]:
            self.writes.pop(index)[1].failed(COVERED_BY_SNAPSHOT)

    def _apply(self, entry: Entry) -> None:
        assert entry.index == self.applied_index + 1, (entry.index, self.applied_index)
        write = self.writes.pop(entry.index, None)
        mine = write is not None and write[0] == entry.term
        reply = None
        if entry.kind is EntryKind.NORMAL:
            reply = self.machine.apply(entry.data, write[1].origin if mine else None)
        elif entry.kind is EntryKind.MEMBERSHIP:
            self.machine.on_membership(self.decode_membership(entry.data), entry.index)
        self.applied_index = entry.index
        self.applied_term = entry.term
        if write is None:
            return
        if mine:
            write[1].applied(entry.index, reply)
        else:
            write[1].failed(LOST_TO_ANOTHER_TERM)

    def _serve_reads(self) -> None:
        applied = self.applied_index
        waiting = []
        for index, waiter in self.reads_ready:
            if index <= applied:
                waiter.applied(index, None)
            else:
                waiting.append((index, waiter))
        self.reads_ready = waiting

    # Snapshots.

    def snapshot(self) -> Snapshot:
        """An image of the applied state; persist it, then call `compacted`."""
        # The membership in force at the applied index: the engine's status may already hold
        # a later, uncommitted membership entry that a new leader could still undo.
        membership = self.engine.membership_at(self.applied_index)
        return Snapshot(self.applied_index, self.applied_term, membership, self.machine.dump())

    def compacted(self, snapshot: Snapshot) -> None:
        """`snapshot` is durable: the engine may drop the entries it covers."""
        self.engine.compact(snapshot)
        self.snapshot_index = snapshot.index

    # Failure.

    def fail_all(self, message: str) -> None:
        for _term, waiter in self.writes.values():
            waiter.failed(message)
        for waiter in self.reads_waiting.values():
            waiter.failed(message)
        for _index, waiter in self.reads_ready:
            waiter.failed(message)
        self.writes.clear()
        self.reads_waiting.clear()
        self.reads_ready.clear()
