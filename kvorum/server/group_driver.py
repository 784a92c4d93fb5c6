"""The asyncio driver of one replica group's consensus engine: timers, peer messages, storage, the Ready loop.

Theory of operation
-------------------
`GroupDriver` owns one engine (any engine of `kvorum.consensus.engines`,
driven only through its public `ReplicatedLog` surface: the Ready's fields,
`advance` and `status()`), the group's `Storage` directory, and its place on
the process's `PeerHub`, and runs the loop described in
`kvorum.consensus.replicated_log`. Everything that feeds the engine (a tick,
a peer message, a proposal, a read barrier) runs on the event loop and then
sets `_wake`; one task, `_pump`, turns each Ready into work:

    1. a snapshot from the leader: persist it (worker thread), load it into the keyspace
    2. append entries and hard state, and start their fsync in a worker thread
       when the Ready says it must be synced (etcd's MustSync)
    3. meanwhile apply committed entries in order (committed means durable on a
       majority already), answer the clients waiting on them, and answer read
       barriers once applied >= their index
    4. once the fsync is done, send the messages (persist BEFORE send)
    5. advance; take a snapshot every `snapshot_entries` applied entries

Group commit falls out of step 2: while one fsync runs in its thread, new
proposals and acknowledgements pile up in the engine, and the next Ready
carries all of them to the next single fsync.

Write concerns. A proposal is answered when its entry is applied (its
(index, term) applied means committed; another term at its index means it
was lost, and the client is told so). `all` additionally holds the reply until
every voter's match index reaches the entry (the leader's progress view).
`one` answers a blind write (one whose reply does not depend on the data)
as soon as the leader's own append is durable, before it commits; a write
whose reply depends on the data still waits for its entry to be applied.

Time. A tick is `tick_ms` of the monotonic clock. The ticker does not count
sleeps: it ticks the engine once per tick of elapsed time (at most
TICKS_CATCH_UP_MAX at once), and so does every read barrier before it asks
for a lease. A process that was paused (SIGSTOP) therefore sees its lease
run out before it serves a single read after waking, instead of believing
the lease it held when it was stopped.

Failure. A storage error or an engine assertion stops the process with a
critical log line: the node must not go on serving from a state it could not
persist (see docs/storage.md, "StorageFailedError"). On restart the directory
is recovered and the node catches up from its peers.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from dataclasses import dataclass
from typing import Callable

from kvorum.cluster.concern import WriteConcern
from kvorum.consensus import engines
from kvorum.consensus.replicated_log import (
    Entry,
    EntryKind,
    Membership,
    MessageDecodeError,
    ProposalDropped,
    ReplicatedLog,
    Role,
    Snapshot,
    Status,
)
from kvorum.server.peers import PayloadKind, PeerHub
from kvorum.storage import Storage, StorageConfig

log = logging.getLogger("kvorum.group")

TICK_MS_DEFAULT = 100  # one engine tick; with ELECTION_TICK_DEFAULT an election starts after 1-2 s
ELECTION_TICK_DEFAULT = 10
HEARTBEAT_TICK_DEFAULT = 1
LEASE_DRIFT_TICKS = 2  # the lease lasts election_tick - this, from the quorum's last heartbeat
TICKS_CATCH_UP_MAX = 64  # ticks fed at once after a pause (anything past 2 * election_tick is moot)
SNAPSHOT_ENTRIES_DEFAULT = 10_000  # applied entries between two snapshots of the keyspace
PENDING_WRITES_MAX = 100_000  # proposals waiting for their entry to apply (or, for `all`, to reach every voter)
PENDING_READS_MAX = 4096  # reads waiting for a barrier or for its index to apply (also the engine's limit)
WAIT_S_MAX = 10.0  # a client waiting longer for a write or read gets an unknown-outcome error
EXIT_STORAGE_FAILED = 70  # process exit status when persisting failed (EX_SOFTWARE)


class Unavailable(Exception):
    """Operating error for the client: its message is a Redis error line without the '-'."""


@dataclass(slots=True)
class _Write:
    term: int
    future: asyncio.Future
    concern: WriteConcern
    blind: bool
    deadline_s: float
    origin: object = None  # who proposed it (a client connection), told to apply


@dataclass(slots=True)
class _Held:
    """An applied `all` write waiting for every voter to store its entry."""

    index: int
    future: asyncio.Future
    reply: object
    deadline_s: float


class GroupDriver:
    """Runs one replica group's engine against real time, disk and network.

    `apply(data, origin) -> reply` applies a NORMAL entry's data to the state
    machine; `dump() -> bytes` and `load(bytes)` snapshot and restore it;
    `on_membership(membership, index)` is told every membership entry applied.
    All of them run on the event loop, in log order.
    """

    def __init__(
        self,
        group_id: int,
        node_id: str,
        membership: Membership,
        data_dir: str,
        fsync: str,
        hub: PeerHub,
        apply: Callable[[bytes, object], object],
        dump: Callable[[], bytes],
        load: Callable[[bytes], None],
        on_membership: Callable[[Membership, int], None] = lambda membership, index: None,
        engine: str = "raft",
        tick_ms: int = TICK_MS_DEFAULT,
        election_tick: int = ELECTION_TICK_DEFAULT,
        snapshot_entries: int = SNAPSHOT_ENTRIES_DEFAULT,
    ) -> None:
        assert tick_ms > 0 and snapshot_entries > 0
        # Fixed for the driver's life.
        self.group_id = group_id
        self.id = node_id
        self.initial_membership = membership
        self.data_dir = data_dir
        self.fsync = fsync
        self.hub = hub
        self.spec = engines.get(engine)
        self.tick_ms = tick_ms
        self.election_tick = election_tick
        self.snapshot_entries = snapshot_entries
        self._apply_data = apply
        self._dump = dump
        self._load = load
        self._on_membership = on_membership
        # Built by start().
        self.node: ReplicatedLog | None = None
        self.storage: Storage | None = None
        self._tasks: list[asyncio.Task] = []
        self._wake = asyncio.Event()
        self._stopping = False
        # What the engine last reported (Ready.soft_state and hard_state).
        self.leader: str | None = None
        self.role = Role.FOLLOWER
        self.term = 0
        # Time.
        self._ticked_at_s = 0.0
        self._leader_heard_s = 0.0  # monotonic time of the last message from the current leader
        # Applying.
        self.applied_index = 0
        self.applied_term = 0
        self.snapshot_index = 0
        # Clients waiting: writes by log index, reads by barrier context.
        self._writes: dict[int, _Write] = {}
        self._held: list[_Held] = []
        self._read_ctx_last = 0
        self._reads_waiting: dict[bytes, tuple[asyncio.Future, float]] = {}
        self._reads_ready: list[tuple[int, asyncio.Future, float]] = []  # (index, future, deadline_s)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self.storage = await asyncio.to_thread(Storage.open, self.data_dir, StorageConfig(fsync=self.fsync))
        for repair in self.storage.repairs:
            log.warning("storage repaired: %s", repair)
        restored = self.storage.restored
        if restored.snapshot is not None:
            self._load(restored.snapshot.data)
            self.applied_index = self.snapshot_index = restored.snapshot.index
            self.applied_term = restored.snapshot.term
            self._on_membership(restored.snapshot.membership, restored.snapshot.index)
        fresh = restored.hard_state.term == 0 and restored.snapshot is None and not restored.entries
        self.term = restored.hard_state.term
        self.node = self.spec.make(engines.NodeSettings(
            id=self.id,
            membership=self.initial_membership,
            rng=random.Random(),
            restore=None if fresh else restored,
            election_tick=self.election_tick,
            heartbeat_tick=HEARTBEAT_TICK_DEFAULT,
            pre_vote=True,
            check_quorum=True,
            lease_reads=True,
            lease_drift_ticks=LEASE_DRIFT_TICKS,
            max_pending_reads=PENDING_READS_MAX,
        ))
        log.info("group %d on %s (%s): term %d, %d entries after snapshot %d restored", self.group_id, self.id,
                 self.spec.name, restored.hard_state.term, len(restored.entries), self.snapshot_index)
        self.hub.register(self.group_id, self)
        self._ticked_at_s = time.monotonic()
        self._tasks = [asyncio.create_task(self._ticker()), asyncio.create_task(self._pump())]
        for task in self._tasks:
            task.add_done_callback(self._task_done)
        self._wake.set()

    async def stop(self) -> None:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
        self._fail_all("TRYAGAIN the node is shutting down")
        if self.storage is not None:
            await asyncio.to_thread(self.storage.close)

    def _task_done(self, task: asyncio.Task) -> None:
        if task.cancelled() or self._stopping:
            return
        exc = task.exception()
        log.critical("group %d driver stopped: %r; the node exits and recovers from disk on restart",
                     self.group_id, exc, exc_info=exc)
        logging.shutdown()
        os._exit(EXIT_STORAGE_FAILED)

    # ------------------------------------------------------------------ inputs

    def on_peer_payload(self, sender: str, kind: PayloadKind, body: memoryview) -> None:
        if kind is not PayloadKind.ENGINE:
            log.warning("group %d: unexpected %s payload from %s", self.group_id, kind.name, sender)
            return
        try:
            message = self.spec.decode_message(body)
        except MessageDecodeError as exc:
            log.warning("undecodable message from %s: %s", sender, exc)
            return
        if sender == self.leader:
            self._leader_heard_s = time.monotonic()
        self.node.step(message)
        self._wake.set()

    def _catch_up_ticks(self) -> None:
        now_s = time.monotonic()
        elapsed = int((now_s - self._ticked_at_s) * 1000 // self.tick_ms)
        if elapsed <= 0:
            return
        self._ticked_at_s += elapsed * self.tick_ms / 1000
        for _ in range(min(elapsed, TICKS_CATCH_UP_MAX)):
            self.node.tick()
        self._wake.set()

    async def _ticker(self) -> None:
        tick_s = self.tick_ms / 1000
        sweep_ticks = 0
        while True:
            await asyncio.sleep(tick_s)
            self._catch_up_ticks()
            sweep_ticks += 1
            if sweep_ticks * self.tick_ms >= 1000:
                sweep_ticks = 0
                self._expire_waiters(time.monotonic())

    def propose(self, data: bytes, concern: WriteConcern, blind: bool, origin: object = None) -> asyncio.Future:
        """Propose `data`; the future gets the reply value of its entry, or an Unavailable error.

        `origin` (the proposing client) is handed to `apply` with the entry when
        this node applies it in the term it proposed it. Raises ProposalDropped
        when this node cannot take it now (not the leader)."""
        if len(self._writes) + len(self._held) >= PENDING_WRITES_MAX:
            raise ProposalDropped("too many writes in flight")
        index, term = self.node.propose(data)
        future = asyncio.get_running_loop().create_future()
        self._writes[index] = _Write(term, future, concern, blind, time.monotonic() + WAIT_S_MAX, origin)
        self._wake.set()
        return future

    def change_membership(self, membership: Membership) -> None:
        """Propose a membership change (the engine plans the joint phase). Raises ProposalDropped."""
        self.node.change_membership(membership)
        self._wake.set()

    def wake(self) -> None:
        """The engine was fed outside the driver's own inputs; run the Ready loop."""
        self._wake.set()

    def read_barrier(self) -> asyncio.Future:
        """A future done once a linearizable read may be served from the local keyspace.

        Raises ProposalDropped when this node is not the leader."""
        if len(self._reads_waiting) + len(self._reads_ready) >= PENDING_READS_MAX:
            raise ProposalDropped("too many reads waiting")
        self._catch_up_ticks()
        self._read_ctx_last += 1
        ctx = self._read_ctx_last.to_bytes(8, "big")
        self.node.read_barrier(ctx)
        future = asyncio.get_running_loop().create_future()
        self._reads_waiting[ctx] = (future, time.monotonic() + WAIT_S_MAX)
        self._wake.set()
        return future

    # ------------------------------------------------------------------ the Ready loop

    async def _pump(self) -> None:
        node = self.node
        storage = self.storage
        while True:
            await self._wake.wait()
            self._wake.clear()
            while node.has_ready():
                rd = node.ready()
                if rd.snapshot is not None:
                    await asyncio.to_thread(storage.save_snapshot, rd.snapshot)
                    self._install(rd.snapshot)
                if rd.hard_state is not None:
                    self.term = rd.hard_state.term
                if rd.soft_state is not None:
                    self._follow(rd.soft_state)
                sync = None
                if rd.entries or rd.hard_state is not None:
                    storage.append(rd.entries, rd.hard_state)
                    if rd.must_sync:
                        sync = asyncio.ensure_future(asyncio.to_thread(storage.sync))
                # Committed entries are durable on a majority already: they are applied
                # (and their clients answered) while this node's own fsync runs.
                for entry in rd.committed_entries:
                    self._apply(entry)
                for read in rd.read_states:
                    waiting = self._reads_waiting.pop(read.ctx, None)
                    if waiting is not None:
                        self._reads_ready.append((read.index, waiting[0], waiting[1]))
                for ctx in rd.dropped:
                    waiting = self._reads_waiting.pop(ctx, None)
                    if waiting is not None and not waiting[0].done():
                        waiting[0].set_exception(Unavailable("TRYAGAIN leadership changed during the read"))
                self._serve_reads()
                if sync is not None:
                    await sync
                    self._acknowledge_durable(rd.entries)
                send = self.hub.send
                encode = self.spec.encode_message
                group_id = self.group_id
                for message in rd.messages:
                    send(message.to, PayloadKind.ENGINE, group_id, encode(message))
                node.advance(rd)
                if self._held:
                    self._release_held()
                if self.applied_index - self.snapshot_index >= self.snapshot_entries:
                    await self._take_snapshot()

    def _follow(self, soft) -> None:
        """The engine reports a new leader or role: log it, one line."""
        if soft.leader != self.leader:
            if soft.leader == self.id:
                log.info("group %d: %s is leader of term %d (was %s)", self.group_id, self.id, self.term,
                         self.leader or "none")
            elif soft.leader is not None:
                log.info("group %d: leader is %s (was %s)", self.group_id, soft.leader, self.leader or "none")
            else:
                log.info("group %d: no leader (was %s)", self.group_id, self.leader or "none")
        self.leader = soft.leader
        self.role = soft.role

    def _install(self, snapshot: Snapshot) -> None:
        """A leader's snapshot replaces the state machine; writes it covers have unknown outcomes."""
        self._load(snapshot.data)
        self.applied_index = self.snapshot_index = snapshot.index
        self.applied_term = snapshot.term
        self._on_membership(snapshot.membership, snapshot.index)
        for index in [i for i in self._writes if i <= snapshot.index]:
            self._fail(self._writes.pop(index).future,
                       "TIMEOUT the write's outcome is unknown: a snapshot replaced the log")
        log.info("installed snapshot at index %d term %d", snapshot.index, snapshot.term)

    def _acknowledge_durable(self, entries: tuple[Entry, ...]) -> None:
        """`one`: a blind write is acknowledged once its entry is on the leader's disk."""
        for entry in entries:
            write = self._writes.get(entry.index)
            if (write is not None and write.concern is WriteConcern.ONE and write.blind
                    and write.term == entry.term):
                del self._writes[entry.index]
                if not write.future.done():
                    write.future.set_result(None)

    def _apply(self, entry: Entry) -> None:
        assert entry.index == self.applied_index + 1, (entry.index, self.applied_index)
        write = self._writes.pop(entry.index, None)
        reply = None
        if entry.kind is EntryKind.NORMAL:
            origin = write.origin if write is not None and write.term == entry.term else None
            reply = self._apply_data(entry.data, origin)
        elif entry.kind is EntryKind.MEMBERSHIP:
            self._on_membership(self.spec.decode_membership(entry.data), entry.index)
        self.applied_index = entry.index
        self.applied_term = entry.term
        if write is None or write.future.done():
            return
        if write.term != entry.term:
            self._fail(write.future, "TRYAGAIN the write was not applied: leadership changed before it committed")
        elif write.concern is WriteConcern.ALL:
            self._held.append(_Held(entry.index, write.future, reply, write.deadline_s))
        else:
            write.future.set_result(reply)

    def _serve_reads(self) -> None:
        if not self._reads_ready:
            return
        applied = self.applied_index
        waiting = []
        for item in self._reads_ready:
            index, future, _ = item
            if index <= applied:
                if not future.done():
                    future.set_result(None)
            else:
                waiting.append(item)
        self._reads_ready = waiting

    def _release_held(self) -> None:
        status = self.node.status()
        if status.role is not Role.LEADER:
            return
        voters = status.membership.voters | status.membership.voters_outgoing
        progress = status.progress
        stored = min((progress[v].match if v in progress else 0) for v in voters)
        held = []
        for item in self._held:
            if item.index <= stored:
                if not item.future.done():
                    item.future.set_result(item.reply)
            else:
                held.append(item)
        self._held = held

    async def _take_snapshot(self) -> None:
        # The membership in force at the applied index: status() may already hold a
        # later, uncommitted membership entry that a new leader could still undo.
        membership = self.node.membership_at(self.applied_index)
        snapshot = Snapshot(self.applied_index, self.applied_term, membership, self._dump())
        await asyncio.to_thread(self.storage.save_snapshot, snapshot)
        self.node.compact(snapshot)
        self.snapshot_index = snapshot.index
        log.info("snapshot at index %d (%d bytes)", snapshot.index, len(snapshot.data))

    # ------------------------------------------------------------------ waiting clients

    @staticmethod
    def _fail(future: asyncio.Future, message: str) -> None:
        if not future.done():
            future.set_exception(Unavailable(message))

    def _expire_waiters(self, now_s: float) -> None:
        late = "TIMEOUT no answer within %.0fs; the outcome is unknown" % WAIT_S_MAX
        for index in [i for i, w in self._writes.items() if w.deadline_s <= now_s]:
            self._fail(self._writes.pop(index).future, late)
        for item in [h for h in self._held if h.deadline_s <= now_s]:
            self._fail(item.future, "TIMEOUT the write committed but not every replica stored it in time")
        self._held = [h for h in self._held if h.deadline_s > now_s]
        for ctx in [c for c, (_, d) in self._reads_waiting.items() if d <= now_s]:
            self._fail(self._reads_waiting.pop(ctx)[0], "TRYAGAIN no read point within %.0fs" % WAIT_S_MAX)
        for _, future, _ in [r for r in self._reads_ready if r[2] <= now_s]:
            self._fail(future, "TRYAGAIN the read point was not applied within %.0fs" % WAIT_S_MAX)
        self._reads_ready = [r for r in self._reads_ready if r[2] > now_s]

    def _fail_all(self, message: str) -> None:
        for write in self._writes.values():
            self._fail(write.future, message)
        for item in self._held:
            self._fail(item.future, message)
        for future, _ in self._reads_waiting.values():
            self._fail(future, message)
        for _, future, _ in self._reads_ready:
            self._fail(future, message)
        self._writes.clear()
        self._held.clear()
        self._reads_waiting.clear()
        self._reads_ready.clear()

    # ------------------------------------------------------------------ views

    def status(self) -> Status:
        return self.node.status()

    def leader_id(self) -> str | None:
        return self.leader

    def is_leader(self) -> bool:
        return self.leader == self.id

    def leader_contact_age_s(self) -> float:
        """Seconds since this follower last heard from its leader (0 on the leader, inf without one)."""
        lead = self.leader
        if lead == self.id:
            return 0.0
        if lead is None or not self._leader_heard_s:
            return float("inf")
        return time.monotonic() - self._leader_heard_s
