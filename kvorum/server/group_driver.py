"""The asyncio driver of one replica group's consensus engine: timers, peer messages, storage, the Ready loop.

Theory of operation
-------------------
`GroupDriver` owns one engine (any engine of `kvorum.consensus.engines`,
driven only through its public `ReplicatedLog` surface: the Ready's fields,
`advance` and `status()`), the group's `Storage` directory, and its place on
the process's `PeerHub`, and runs the loop described in
`kvorum.consensus.replicated_log`; what a Ready does to the state machine and
to waiting clients is `kvorum.replica.ready_loop`, shared with the simulator,
so this module holds only what is real here: time, disk, network, futures.
Everything that feeds the engine (a tick,
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

Snapshots to followers. A message that carries a whole snapshot (Raft's
InstallSnapshot) is not sent as one payload: its image goes out of band as a
chunked, resumable transfer (kvorum.server.snapshot_transfer), one sender per
follower on the leader and one receiver here, and the receiving driver
rebuilds the message and steps its engine with it once the image is whole.
Images larger than one peer frame therefore reach a new or far-behind member,
and a dropped connection costs a few chunks, not the whole image.

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
from typing import Any, Callable

from kvorum.cluster.concern import WriteConcern
from kvorum.consensus import engines
from kvorum.consensus.replicated_log import (
    Entry,
    Membership,
    MessageDecodeError,
    ProposalDropped,
    Role,
    Snapshot,
    Status,
)
from kvorum.replica.ready_loop import ReadyLoop
from kvorum.server.command_stats import CommandStat
from kvorum.server.events import log_leader_change
from kvorum.server.peer_frames import RemoteProtocolError
from kvorum.server.peers import PayloadKind, PeerHub
from kvorum.server.snapshot_transfer import SnapshotMeta, SnapshotReceiver, SnapshotSender
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
SNAPSHOT_QUEUE_BYTES_MAX = 4 * 1024 * 1024  # image bytes queued to one follower at a time
EXIT_STORAGE_FAILED = 70  # process exit status when persisting failed (EX_SOFTWARE)


class Unavailable(Exception):
    """Operating error for the client: its message is a Redis error line without the '-'."""


class _Write:
    """A client waiting for its proposal (a `ready_loop.Waiter`)."""

    __slots__ = ("driver", "future", "concern", "blind", "deadline_s", "origin")

    def __init__(self, driver: GroupDriver, future: asyncio.Future, concern: WriteConcern, blind: bool,
                 deadline_s: float, origin: object) -> None:
        self.driver = driver
        self.future = future
        self.concern = concern
        self.blind = blind
        self.deadline_s = deadline_s
        self.origin = origin  # who proposed it (a client connection), told to apply

    def applied(self, index: int, reply: Any) -> None:
        if self.future.done():
            return
        if self.concern is WriteConcern.ALL:
            self.driver.hold(_Held(index, self.future, reply, self.deadline_s))
        else:
            self.future.set_result(reply)

    def failed(self, message: str) -> None:
        _fail(self.future, message)


class _Read:
    """A client waiting for a read barrier to pass and apply (a `ready_loop.Waiter`)."""

    __slots__ = ("future", "deadline_s")
    origin = None

    def __init__(self, future: asyncio.Future, deadline_s: float) -> None:
        self.future = future
        self.deadline_s = deadline_s

    def applied(self, index: int, reply: Any) -> None:
        if not self.future.done():
            self.future.set_result(None)

    def failed(self, message: str) -> None:
        _fail(self.future, message)


class _Held:
    """An applied `all` write waiting for every voter to store its entry."""

    __slots__ = ("index", "future", "reply", "deadline_s")

    def __init__(self, index: int, future: asyncio.Future, reply: object, deadline_s: float) -> None:
        self.index = index
        self.future = future
        self.reply = reply
        self.deadline_s = deadline_s


def _fail(future: asyncio.Future, message: str) -> None:
    if not future.done():
        future.set_exception(Unavailable(message))


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
        self.machine = _Machine(apply, dump, load, on_membership)
        # Built by start().
        self.node = None
        self.loop: ReadyLoop | None = None
        self.storage: Storage | None = None
        self._tasks: list[asyncio.Task] = []
        self._wake = asyncio.Event()
        self._stopping = False
        # Time.
        self._ticked_at_s = 0.0
        self._heard_s: dict[str, float] = {}  # peer -> monotonic time of its last engine message
        # Applied `all` writes waiting for every voter; read-barrier contexts.
        self._held: list[_Held] = []
        self._read_ctx_last = 0
        # Snapshot images in transit: to each follower (while leading), and from the leader.
        self._snapshot_senders: dict[str, SnapshotSender] = {}
        self._snapshot_receiver = SnapshotReceiver()
        # Observations for /metrics and the dashboard (never read by the engine).
        self.fsync_latency = CommandStat("fsync")
        self.elections_seen = 0  # terms this node saw begin
        self.leader_changes = 0
        self.snapshots_taken = 0
        self.snapshot_bytes_last = 0  # the image this node last took or installed

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self.storage = await asyncio.to_thread(Storage.open, self.data_dir, StorageConfig(fsync=self.fsync))
        for repair in self.storage.repairs:
            log.warning("storage repaired: %s", repair)
        restored = self.storage.restored
        applied_index = applied_term = 0
        if restored.snapshot is not None:
            self.machine.load(restored.snapshot.data)
            self.machine.on_membership(restored.snapshot.membership, restored.snapshot.index)
            applied_index, applied_term = restored.snapshot.index, restored.snapshot.term
        fresh = restored.hard_state.term == 0 and restored.snapshot is None and not restored.entries
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
        self.loop = ReadyLoop(self.node, self.machine, self.spec.decode_membership, applied_index, applied_term)
        self.loop.term = restored.hard_state.term
        log.info("group %d on %s (%s): term %d, %d entries after snapshot %d restored", self.group_id, self.id,
                 self.spec.name, restored.hard_state.term, len(restored.entries), applied_index)
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
            self._on_snapshot_payload(sender, kind, bytes(body))
            return
        try:
            message = self.spec.decode_message(body)
        except MessageDecodeError as exc:
            log.warning("undecodable message from %s: %s", sender, exc)
            return
        self._heard_s[sender] = time.monotonic()
        self.node.step(message)
        self._wake.set()

    def _on_snapshot_payload(self, peer: str, kind: PayloadKind, body: bytes) -> None:
        try:
            if kind is PayloadKind.SNAPSHOT_ACK:
                sender = self._snapshot_senders.get(peer)
                if sender is not None:
                    sender.on_ack(body)
                    self._send_chunks(peer, sender)
                return
            ack, done = self._snapshot_receiver.on_chunk(body)
        except RemoteProtocolError as exc:
            log.warning("group %d: bad snapshot %s from %s: %s", self.group_id, kind.name, peer, exc)
            return
        if ack is not None:
            self.hub.send(peer, PayloadKind.SNAPSHOT_ACK, self.group_id, ack)
        if done is not None:
            meta, data = done
            log.info("group %d: received a snapshot at index %d (%d bytes) from %s", self.group_id, meta.index,
                     len(data), peer)
            self.node.step(self.spec.snapshot_message(self.id, peer, meta.term, meta.snapshot(data)))
            self._wake.set()

    def on_link_up(self, peer: str) -> None:
        """A connection to `peer` reopened: resume a snapshot transfer from where it stood."""
        sender = self._snapshot_senders.get(peer)
        if sender is not None:
            sender.resend_unacked()
            self._send_chunks(peer, sender)
        if peer == self.loop.leader:
            ack = self._snapshot_receiver.resume_ack()
            if ack is not None:
                self.hub.send(peer, PayloadKind.SNAPSHOT_ACK, self.group_id, ack)

    def _send_snapshot(self, to: str, term: int, snapshot: Snapshot) -> None:
        sender = self._snapshot_senders.get(to)
        if sender is None:
            sender = self._snapshot_senders[to] = SnapshotSender()
        if sender.start(SnapshotMeta.of(term, snapshot), snapshot.data):
            log.info("group %d: sending the snapshot at index %d (%d bytes) to %s", self.group_id,
                     snapshot.index, len(snapshot.data), to)
        self._send_chunks(to, sender)

    def _send_chunks(self, to: str, sender: SnapshotSender) -> None:
        for chunk in sender.next_chunks(SNAPSHOT_QUEUE_BYTES_MAX):
            self.hub.send(to, PayloadKind.SNAPSHOT_CHUNK, self.group_id, chunk)

    def _tick_snapshot_senders(self) -> None:
        if self.loop.leader != self.id:
            # Senders belong to one leadership: a new leader decides anew what to send.
            self._snapshot_senders.clear()
            return
        for to, sender in self._snapshot_senders.items():
            sender.tick()
            self._send_chunks(to, sender)

    def _catch_up_ticks(self) -> None:
        now_s = time.monotonic()
        elapsed = int((now_s - self._ticked_at_s) * 1000 // self.tick_ms)
        if elapsed <= 0:
            return
        self._ticked_at_s += elapsed * self.tick_ms / 1000
        for _ in range(min(elapsed, TICKS_CATCH_UP_MAX)):
            self.node.tick()
        if self._snapshot_senders:
            self._tick_snapshot_senders()
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
        if len(self.loop.writes) + len(self._held) >= PENDING_WRITES_MAX:
            raise ProposalDropped("too many writes in flight")
        future = asyncio.get_running_loop().create_future()
        self.loop.propose(data, _Write(self, future, concern, blind, time.monotonic() + WAIT_S_MAX, origin))
        self._wake.set()
        return future

    def change_membership(self, membership: Membership) -> None:
        """Propose a membership change (the engine plans the joint phase). Raises ProposalDropped."""
        self.node.change_membership(membership)
        self._wake.set()

    def transfer_leadership(self, to: str) -> None:
        """Hand leadership to `to` once it is caught up. Raises ProposalDropped."""
        self.node.transfer_leadership(to)
        self._wake.set()

    def read_barrier(self) -> asyncio.Future:
        """A future done once a linearizable read may be served from the local keyspace.

        Raises ProposalDropped when this node is not the leader."""
        loop = self.loop
        if len(loop.reads_waiting) + len(loop.reads_ready) >= PENDING_READS_MAX:
            raise ProposalDropped("too many reads waiting")
        self._catch_up_ticks()
        self._read_ctx_last += 1
        future = asyncio.get_running_loop().create_future()
        loop.read_barrier(self._read_ctx_last.to_bytes(8, "big"), _Read(future, time.monotonic() + WAIT_S_MAX))
        self._wake.set()
        return future

    # ------------------------------------------------------------------ the Ready loop

    async def _pump(self) -> None:
        node = self.node
        loop = self.loop
        storage = self.storage
        send = self.hub.send
        encode = self.spec.encode_message
        snapshot_in = self.spec.snapshot_in
        group_id = self.group_id
        while True:
            await self._wake.wait()
            self._wake.clear()
            while node.has_ready():
                rd = node.ready()
                if rd.snapshot is not None:
                    await asyncio.to_thread(storage.save_snapshot, rd.snapshot)
                    self.snapshot_bytes_last = len(rd.snapshot.data)
                leader = loop.leader
                # Committed entries are durable on a majority already: they are applied
                # (and their clients answered) while this node's own fsync runs.
                sync = None
                if rd.entries or rd.hard_state is not None:
                    storage.append(rd.entries, rd.hard_state)
                    if rd.must_sync:
                        sync = asyncio.ensure_future(asyncio.to_thread(_timed_sync, storage))
                term = loop.term
                loop.process(rd)
                if loop.term > term:
                    self.elections_seen += 1
                if rd.soft_state is not None and loop.leader != leader:
                    self.leader_changes += 1
                    log_leader_change(group_id, self.id, leader, loop.leader, loop.term)
                if sync is not None:
                    self.fsync_latency.record(await sync)
                    self._acknowledge_durable(rd.entries)
                for message in rd.messages:
                    carried = snapshot_in(message)
                    if carried is not None:
                        self._send_snapshot(message.to, *carried)
                    else:
                        send(message.to, PayloadKind.ENGINE, group_id, encode(message))
                node.advance(rd)
                if self._held:
                    self._release_held()
                if loop.applied_index - loop.snapshot_index >= self.snapshot_entries:
                    await self._take_snapshot()

    def _acknowledge_durable(self, entries: tuple[Entry, ...]) -> None:
        """`one`: a blind write is acknowledged once its entry is on the leader's disk."""
        writes = self.loop.writes
        for entry in entries:
            found = writes.get(entry.index)
            if found is None:
                continue
            write = found[1]
            if write.concern is WriteConcern.ONE and write.blind:
                if self.loop.take_write(entry.index, entry.term) is not None and not write.future.done():
                    write.future.set_result(None)

    def hold(self, held: _Held) -> None:
        self._held.append(held)

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
        snapshot = self.loop.snapshot()
        await asyncio.to_thread(self.storage.save_snapshot, snapshot)
        self.loop.compacted(snapshot)
        self.snapshots_taken += 1
        self.snapshot_bytes_last = len(snapshot.data)
        log.info("snapshot at index %d (%d bytes)", snapshot.index, len(snapshot.data))

    # ------------------------------------------------------------------ waiting clients

    def _expire_waiters(self, now_s: float) -> None:
        loop = self.loop
        late = "TIMEOUT no answer within %.0fs; the outcome is unknown" % WAIT_S_MAX
        for index in [i for i, (_, w) in loop.writes.items() if w.deadline_s <= now_s]:
            loop.writes.pop(index)[1].failed(late)
        for item in [h for h in self._held if h.deadline_s <= now_s]:
            _fail(item.future, "TIMEOUT the write committed but not every replica stored it in time")
        self._held = [h for h in self._held if h.deadline_s > now_s]
        for ctx in [c for c, w in loop.reads_waiting.items() if w.deadline_s <= now_s]:
            loop.reads_waiting.pop(ctx).failed("TRYAGAIN no read point within %.0fs" % WAIT_S_MAX)
        for _, waiter in [r for r in loop.reads_ready if r[1].deadline_s <= now_s]:
            waiter.failed("TRYAGAIN the read point was not applied within %.0fs" % WAIT_S_MAX)
        loop.reads_ready = [r for r in loop.reads_ready if r[1].deadline_s > now_s]

    def _fail_all(self, message: str) -> None:
        if self.loop is not None:
            self.loop.fail_all(message)
        for item in self._held:
            _fail(item.future, message)
        self._held.clear()

    # ------------------------------------------------------------------ views

    @property
    def leader(self) -> str | None:
        return self.loop.leader if self.loop is not None else None

    @property
    def term(self) -> int:
        return self.loop.term if self.loop is not None else 0

    @property
    def applied_index(self) -> int:
        return self.loop.applied_index if self.loop is not None else 0

    @property
    def snapshot_index(self) -> int:
        return self.loop.snapshot_index if self.loop is not None else 0

    def status(self) -> Status:
        return self.node.status()

    def leader_id(self) -> str | None:
        return self.leader

    def is_leader(self) -> bool:
        return self.leader == self.id

    def wake(self) -> None:
        """The engine was fed outside the driver's own inputs; run the Ready loop."""
        self._wake.set()

    def leader_contact_age_s(self) -> float:
        """Seconds since this follower last heard from its leader (0 on the leader, inf without one)."""
        lead = self.leader
        if lead == self.id:
            return 0.0
        heard_s = self._heard_s.get(lead) if lead is not None else None
        if heard_s is None:
            return float("inf")
        return time.monotonic() - heard_s


def _timed_sync(storage: Storage) -> int:
    """Sync the log (in a worker thread); the nanoseconds the fsync took."""
    start_ns = time.perf_counter_ns()
    storage.sync()
    return time.perf_counter_ns() - start_ns


class _Machine:
    """The state-machine callbacks a driver was given, as a `ready_loop.StateMachine`."""

    __slots__ = ("apply", "dump", "load", "on_membership")

    def __init__(self, apply, dump, load, on_membership) -> None:
        self.apply = apply
        self.dump = dump
        self.load = load
        self.on_membership = on_membership
