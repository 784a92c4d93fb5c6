"""One simulated server: an engine, its disk, kvorum's state machine, and the server's Ready loop.

Theory of operation
-------------------
`SimNode.drain` runs the contract's loop (kvorum.consensus.replicated_log)
after every input (tick, message, proposal, read barrier). What a Ready does
to the state machine and to waiting clients is the server's own code,
`kvorum.replica.ready_loop.ReadyLoop`, over kvorum's replicated state machine
(`kvorum.sim.statemachine`); only the disk and the network are simulated:

    while engine.has_ready():
        rd = engine.ready()
        1. rd.snapshot, rd.entries, rd.hard_state -> queue disk writes
        2. rd.messages -> held in the outbox while a write the Ready (or an
                          earlier one) must sync is not fsynced yet
                          (`rd.must_sync`: "persist BEFORE sending"), else sent
        3. ReadyLoop.process(rd): install the snapshot, apply committed entries
           and answer their proposers, serve read barriers, drop the refused
        engine.advance(rd)

Disk writes complete asynchronously: the first write after a quiet disk
schedules an fsync `fsync_ms` later, which covers every write issued up to
then and releases the messages waiting for it (group commit). A crash in that
window loses a random suffix of the unsynced writes and every held message,
so the engine's durability claims, `must_sync` included, are really tested.

Committed entries are applied straight away, as the contract allows: they are
committed, so a quorum already holds them durably.

When `applied` has moved `compact_every` entries past the last snapshot, the
node snapshots its state machine (ReadyLoop.snapshot), writes the snapshot to
disk and lets the engine compact, so snapshots and InstallSnapshot are
exercised too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kvorum.consensus.engines import EngineSpec, NodeSettings
from kvorum.consensus.replicated_log import Membership, Ready, ReplicatedLog, Status
from kvorum.replica.ready_loop import ReadyLoop
from kvorum.sim.disk import Disk
from kvorum.sim.statemachine import KVStateMachine

if TYPE_CHECKING:
    from kvorum.sim.world import World

COMPACT_EVERY_DEFAULT = 64


class _Proposal:
    """A simulated client waiting for its write (a `ready_loop.Waiter`)."""

    __slots__ = ("world", "client", "op_id")
    origin = None

    def __init__(self, world: World, client: str, op_id: int) -> None:
        self.world, self.client, self.op_id = world, client, op_id

    def applied(self, index: int, reply: Any) -> None:
        self.world.client_result(self.client, self.op_id, reply)

    def failed(self, message: str) -> None:
        # A definite refusal may be retried; an unknown outcome (a snapshot folded the
        # entry in) may not: the client times out, as a real one would.
        if message.startswith("TRYAGAIN"):
            self.world.client_retry(self.client, self.op_id, message)


class _Read:
    """A simulated client waiting for a read barrier (a `ready_loop.Waiter`)."""

    __slots__ = ("node", "client", "op_id", "key")
    origin = None

    def __init__(self, node: SimNode, client: str, op_id: int, key: str) -> None:
        self.node, self.client, self.op_id, self.key = node, client, op_id, key

    def applied(self, index: int, reply: Any) -> None:
        self.node.world.client_result(self.client, self.op_id, self.node.sm.read(self.key))

    def failed(self, message: str) -> None:
        self.node.world.client_retry(self.client, self.op_id, f"{self.node.id}: {message}")


class SimNode:
    def __init__(self, world: World, spec: EngineSpec, node_id: str, initial: Membership) -> None:
        self.world = world
        self.spec = spec
        self.id = node_id
        self.initial = initial
        self.disk = Disk()
        self.engine: ReplicatedLog | None = None
        self.loop: ReadyLoop | None = None
        self.sm = KVStateMachine()
        # Bumped on every crash so events scheduled by an earlier life are ignored.
        self.incarnation = 0
        self.tick_ms = 10.0
        self.outbox: list[Any] = []  # messages waiting for the fsync of `sync_needed_seq`
        self.sync_needed_seq = 0  # the last disk write a sent message may depend on
        self.synced_seq = 0
        self.fsync_scheduled = False
        self.compact_every = COMPACT_EVERY_DEFAULT

    # --- life cycle ----------------------------------------------------------

    @property
    def up(self) -> bool:
        return self.engine is not None

    def start(self, settings: NodeSettings) -> None:
        assert self.engine is None
        restore = settings.restore
        self.sm = KVStateMachine()
        applied_index = applied_term = 0
        if restore is not None and restore.snapshot is not None:
            snap = restore.snapshot
            self.sm.load(snap.data)
            applied_index, applied_term = snap.index, snap.term
        self.engine = self.spec.make(settings)
        self.loop = ReadyLoop(self.engine, self.sm, self.spec.decode_membership, applied_index, applied_term)
        self.drain()

    def crash(self) -> int:
        """Power loss: the engine, state machine, outbox and client work vanish."""
        assert self.engine is not None
        self.engine = None
        self.loop = None
        self.incarnation += 1
        self.outbox = []
        self.sync_needed_seq = self.synced_seq = 0
        self.fsync_scheduled = False
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
        index, term = self.loop.propose(data, _Proposal(self.world, client, op_id))
        self.drain()
        return index, term

    def read(self, ctx: bytes, client: str, op_id: int, key: str) -> None:
        """Raises ProposalDropped; otherwise the read is served after its barrier passes."""
        self.loop.read_barrier(ctx, _Read(self, client, op_id, key))
        self.drain()

    def status(self) -> Status:
        return self.engine.status()

    # --- the Ready loop ---------------------------------------------------------

    def drain(self) -> None:
        engine = self.engine
        loop = self.loop
        while engine.has_ready():
            rd = engine.ready()
            self._handle(rd)
            engine.advance(rd)
            if loop.applied_index - loop.snapshot_index >= self.compact_every:
                self._compact()
        if self.world.invariants.after_event(self):
            self.world.new_leader(self)

    def _handle(self, rd: Ready) -> None:
        world = self.world
        disk = self.disk
        invariants = world.invariants
        if rd.snapshot is not None:
            invariants.on_snapshot(self, rd.snapshot)
            disk.write_snapshot(rd.snapshot)
        if rd.entries:
            invariants.on_append(self, rd.entries)
            disk.write_entries(rd.entries)
        if rd.hard_state is not None:
            disk.write_hard_state(rd.hard_state)
        if rd.must_sync:
            self.sync_needed_seq = disk.seq
        if disk.dirty and not self.fsync_scheduled:
            self.fsync_scheduled = True
            world.schedule_fsync(self)
        for message in rd.messages:
            if self.synced_seq < self.sync_needed_seq:
                self.outbox.append(message)
            else:
                world.send(message)
        if rd.committed_entries:
            term_now = self.engine.status().term
            for entry in rd.committed_entries:
                invariants.on_apply(self, entry, term_now)
        self.loop.process(rd)

    def fsync_done(self) -> None:
        """The fsync scheduled earlier completed: everything written before it is durable."""
        disk = self.disk
        disk.fsync(disk.seq)
        self.synced_seq = disk.seq
        self.fsync_scheduled = False
        outbox, self.outbox = self.outbox, []
        for message in outbox:
            self.world.send(message)

    def _compact(self) -> None:
        snap = self.loop.snapshot()
        self.disk.write_snapshot(snap)
        if not self.fsync_scheduled:
            self.fsync_scheduled = True
            self.world.schedule_fsync(self)
        self.loop.compacted(snap)
