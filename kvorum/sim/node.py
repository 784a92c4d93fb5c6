"""One simulated server: an engine, its disk, its state machine, and the Ready loop.

Theory of operation
-------------------
`SimNode.drain` runs the contract's loop (kvorum.consensus.replicated_log)
after every input (tick, message, proposal, read barrier):

    while engine.has_ready():
        rd = engine.ready()
        1. rd.snapshot   -> queue a disk write, install it in the state machine
        2. rd.entries, rd.hard_state -> queue disk writes
        3. rd.messages   -> held in the outbox until every disk write queued so
                            far is fsynced ("persist BEFORE sending")
        4. rd.committed_entries -> apply in order, answer the clients that
                            proposed them; rd.read_states -> serve once
                            applied >= index; rd.dropped -> tell clients to retry
        engine.advance(rd)

Disk writes complete asynchronously: the first write after a quiet disk
schedules an fsync `fsync_ms` later, which covers every write issued up to
then and releases the messages waiting for it (group commit). A crash in that
window loses a random suffix of the unsynced writes and every held message,
so the engine's durability claims are really tested.

Committed entries are applied straight away, as the contract allows: they are
committed, so a quorum already holds them durably.

When `applied` has moved `compact_every` entries past the last snapshot, the
node snapshots its state machine, writes the snapshot to disk and calls
`engine.compact`, so snapshots and InstallSnapshot are exercised too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kvorum.consensus.engines import EngineSpec, NodeSettings
from kvorum.consensus.replicated_log import (
    Entry,
    EntryKind,
    Membership,
    Ready,
    ReplicatedLog,
    Snapshot,
    Status,
)
from kvorum.sim.disk import Disk
from kvorum.sim.statemachine import KVStateMachine

if TYPE_CHECKING:
    from kvorum.sim.world import World

COMPACT_EVERY_DEFAULT = 64


class SimNode:
    def __init__(self, world: World, spec: EngineSpec, node_id: str, initial: Membership) -> None:
        self.world = world
        self.spec = spec
        self.id = node_id
        self.initial = initial
        self.disk = Disk()
        self.engine: ReplicatedLog | None = None
        self.sm = KVStateMachine()
        # Bumped on every crash so events scheduled by an earlier life are ignored.
        self.incarnation = 0
        self.tick_ms = 10.0
        self.outbox: list[tuple[int, Any]] = []  # (disk seq that must be synced first, message)
        self.fsync_scheduled = False
        # Client work waiting on this node: proposals by index, read barriers by ctx.
        self.proposals: dict[int, tuple[int, str, int]] = {}  # index -> (term, client, op id)
        self.reads: dict[bytes, tuple[str, int, str]] = {}  # ctx -> (client, op id, key)
        self.passed_reads: list[tuple[int, bytes]] = []  # (index, ctx) waiting for applied >= index
        self.applied_membership = initial
        self.applied_term = 0
        self.last_compact = 0
        self.compact_every = COMPACT_EVERY_DEFAULT

    # --- life cycle ----------------------------------------------------------

    @property
    def up(self) -> bool:
        return self.engine is not None

    def start(self, settings: NodeSettings) -> None:
        assert self.engine is None
        restore = settings.restore
        self.sm = KVStateMachine()
        self.applied_membership = self.initial
        self.applied_term = 0
        self.last_compact = 0
        if restore is not None and restore.snapshot is not None:
            snap = restore.snapshot
            self.sm.restore(snap.data, snap.index)
            self.applied_membership = snap.membership
            self.applied_term = snap.term
            self.last_compact = snap.index
        self.engine = self.spec.make(settings)
        self.drain()

    def crash(self) -> int:
        """Power loss: the engine, state machine, outbox and client work vanish."""
        assert self.engine is not None
        self.engine = None
        self.incarnation += 1
        self.outbox = []
        self.fsync_scheduled = False
        self.proposals = {}
        self.reads = {}
        self.passed_reads = []
        return self.disk.crash(self.world.rng, self.world.config.lose_unsynced)

    # --- inputs ----------------------------------------------------------------

    def tick(self) -> None:
        self.engine.tick()
        self.drain()

    def receive(self, message: Any) -> None:
        self.engine.step(message)
        self.drain()

    def propose(self, data: bytes, client: str, op_id: int) -> tuple[int, int]:
        """Raises ProposalDropped; on success the client hears back when the index applies."""
        index, term = self.engine.propose(data)
        self.proposals[index] = (term, client, op_id)
        self.drain()
        return index, term

    def read(self, ctx: bytes, client: str, op_id: int, key: str) -> None:
        """Raises ProposalDropped; otherwise the read is served after its barrier passes."""
        self.engine.read_barrier(ctx)
        self.reads[ctx] = (client, op_id, key)
        self.drain()

    def status(self) -> Status:
        return self.engine.status()

    # --- the Ready loop ---------------------------------------------------------

    def drain(self) -> None:
        engine = self.engine
        while engine.has_ready():
            rd = engine.ready()
            self._handle(rd)
            engine.advance(rd)
            if self.sm.applied - self.last_compact >= self.compact_every:
                self._compact()
        if self.world.invariants.after_event(self):
            self.world.new_leader(self)

    def _handle(self, rd: Ready) -> None:
        world = self.world
        disk = self.disk
        if rd.snapshot is not None:
            self._install_snapshot(rd.snapshot)
        if rd.entries:
            world.invariants.on_append(self, rd.entries)
            disk.write_entries(rd.entries)
        if rd.hard_state is not None:
            disk.write_hard_state(rd.hard_state)
        if disk.dirty and not self.fsync_scheduled:
            self.fsync_scheduled = True
            world.schedule_fsync(self)
        for message in rd.messages:
            if disk.dirty:
                self.outbox.append((disk.seq, message))
            else:
                world.send(message)
        if rd.committed_entries:
            self._apply(rd.committed_entries)
        for rs in rd.read_states:
            self.passed_reads.append((rs.index, rs.ctx))
        if self.passed_reads:
            self._serve_reads()
        for ctx in rd.dropped:
            waiting = self.reads.pop(ctx, None)
            if waiting is not None:
                world.client_retry(waiting[0], waiting[1], f"{self.id} dropped read barrier")

    def fsync_done(self) -> None:
        """The fsync scheduled earlier completed: everything written before it is durable."""
        disk = self.disk
        disk.fsync(disk.seq)
        self.fsync_scheduled = False
        outbox, self.outbox = self.outbox, []
        for _, message in outbox:
            self.world.send(message)

    def _install_snapshot(self, snap: Snapshot) -> None:
        self.world.invariants.on_snapshot(self, snap)
        self.disk.write_snapshot(snap)
        self.sm.restore(snap.data, snap.index)
        self.applied_membership = snap.membership
        self.applied_term = snap.term
        self.last_compact = snap.index
        if self.passed_reads:
            self._serve_reads()
        for index in [i for i in self.proposals if i <= snap.index]:
            # The outcome of these proposals is folded into the snapshot; the
            # client cannot tell whether its own entry made it, so it times out.
            del self.proposals[index]

    def _apply(self, entries: tuple[Entry, ...]) -> None:
        world = self.world
        invariants = world.invariants
        sm = self.sm
        proposals = self.proposals
        term_now = self.engine.status().term
        for entry in entries:
            invariants.on_apply(self, entry, term_now)
            if entry.kind is EntryKind.NORMAL:
                result = sm.apply(entry.index, entry.data)
            else:
                if entry.kind is EntryKind.MEMBERSHIP:
                    self.applied_membership = self.spec.decode_membership(entry.data)
                result = sm.apply(entry.index, None)
            self.applied_term = entry.term
            waiting = proposals.pop(entry.index, None)
            if waiting is None:
                continue
            term, client, op_id = waiting
            if term == entry.term:
                world.client_result(client, op_id, result)
            else:
                world.client_retry(client, op_id, f"{self.id} lost proposal at {entry.index}")

    def _serve_reads(self) -> None:
        applied = self.sm.applied
        still: list[tuple[int, bytes]] = []
        for index, ctx in self.passed_reads:
            if index > applied:
                still.append((index, ctx))
                continue
            waiting = self.reads.pop(ctx, None)
            if waiting is not None:
                client, op_id, key = waiting
                self.world.client_result(client, op_id, self.sm.read(key))
        self.passed_reads = still

    def _compact(self) -> None:
        snap = Snapshot(
            index=self.sm.applied,
            term=self.applied_term,
            membership=self.applied_membership,
            data=self.sm.snapshot(),
        )
        self.disk.write_snapshot(snap)
        if not self.fsync_scheduled:
            self.fsync_scheduled = True
            self.world.schedule_fsync(self)
        self.engine.compact(snap)
        self.last_compact = snap.index
