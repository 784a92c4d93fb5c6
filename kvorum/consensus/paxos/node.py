"""Multi-Paxos (van Renesse & Altinbuken, "Paxos Made Moderately Complex";
Chandra, Griesemer & Redstone, "Paxos Made Live") behind `ReplicatedLog`.

Theory of operation
-------------------
Every node is an acceptor and a learner; voters may also propose. A ballot is
an integer round, and an acceptor promises a round to one proposer only
(`HardState.term` = the promised ballot, `HardState.vote` = the proposer it
was promised to), so a round has at most one leader and "the ballot of an
entry" (`Entry.term`) names one proposal. An entry keeps the ballot it was
first proposed in when a later leader proposes it again: a client that
proposed it learns that it was applied from (index, term) alone.

    role       tick              step (messages of the promised ballot)
    FOLLOWER   _tick_election    _step_acceptor  (Accept, Heartbeat, Catchup, TimeoutNow)
    CANDIDATE  _tick_election    _step_candidate (Promise; a leader's Accept makes it follow)
    LEADER     _tick_heartbeat   _step_leader    (Accepted, HeartbeatAck)

Phase 1 runs once for every open slot: a candidate sends `Prepare(b, its
commit point)`; a `Promise` reports the acceptor's commit point and its slots
after the candidate's. With a quorum of promises (of the membership in force
at the end of the recovered log too, not only of the candidate's own) the
candidate becomes the distinguished proposer: each slot up to the highest
commit point reported takes the chosen value, each later slot the value
accepted in the highest ballot; it proposes them all again in its ballot and
appends a NOOP of its ballot. Refused, it backs off for a random delay (from
the injected rng) that doubles with each failed campaign, up to
`BACKOFF_FACTOR_MAX` election timeouts, so duelling proposers stop colliding.

Phase 2 is batched per acceptor (the shared `tracker`: probe, replicate with
an in-flight window, snapshot). Acceptors accept slots contiguously, because
the log the contract persists has no gaps; so a recovered log has no holes
and the no-op a new leader writes is the one after it. Per-slot accepted
ballots are not stored: an acceptor accepts a new ballot only from its own
commit point on and only up to an entry of that ballot (the leader's NOOP),
so every slot after its commit point was accepted in one ballot, the highest
entry ballot there (`_accepted`), which it recomputes from its log after a
restart. A slot accepted by a quorum in the leader's ballot is chosen: the
leader commits it and tells the others the commit point in its appends and
heartbeats (as Raft's commit index), clamped to what each acceptor holds.

Reads: a read barrier waits until the leader's NOOP is chosen, then for a
heartbeat round echoed by a quorum (ReadIndex) or, with `lease_reads`, is
answered at once while the lease holds. The lease rests on the acceptors'
promise not to promise another proposer for `election_tick` ticks after
they heard from the leader (and for the first election timeout after a
restart); it lasts `election_tick - lease_drift_ticks` ticks.

Membership goes through the log with an alpha-window of 1 rather than a
stop-sign: a membership entry is in force from the next slot on as soon as
it is in a node's log (Raft's rule, thesis 4.1), changes are one voter or a
joint phase at a time (`raft.membership` plans them), and a leader accepts
one only when the previous one is chosen and its NOOP is chosen. A stop-sign
would end the group and need a second group and a hand-over for every change;
alpha = 1 keeps one log and costs only pipelining across a membership entry.

Ready ordering is the contract's: entries and hard state must be durable
before the messages that report them (promises and acceptances). Limits:
`max_entries_per_msg` bounds an Accept except a switching one, which must
reach the leader's NOOP; a Promise carries every slot after the candidate's
commit point (recovery needs all of them); everything else is `PaxosConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

from kvorum.consensus.paxos.messages import (
    Accept,
    Accepted,
    Catchup,
    Heartbeat,
    HeartbeatAck,
    Prepare,
    Promise,
    TimeoutNow,
)
from kvorum.consensus.quorum import VoteResult, joint_vote
from kvorum.consensus.raft.log import RaftLog, new_entry
from kvorum.consensus.raft.membership import (
    MembershipHistory,
    check_membership,
    decode_membership,
    encode_membership,
    leave_joint,
    plan_change,
)
from kvorum.consensus.raft.reads import ReadIndex
from kvorum.consensus.replicated_log import (
    EngineConfigError,
    Entry,
    EntryKind,
    HardState,
    Membership,
    NodeId,
    ProposalDropped,
    ReadState,
    Ready,
    RestoreState,
    Role,
    Snapshot,
    SoftState,
    Status,
)
from kvorum.consensus.tracker import Progress, ProgressState, ProgressTracker, ProgressView

if TYPE_CHECKING:
    import random

# A refused candidate waits a random delay of up to this many election timeouts.
BACKOFF_FACTOR_MAX = 8
_REPLICATE = ProgressState.REPLICATE
_PROBE = ProgressState.PROBE
_SNAPSHOT = ProgressState.SNAPSHOT
_LEADER_MESSAGES = (Accept, Heartbeat, Catchup)


@dataclass(frozen=True, slots=True)
class PaxosConfig:
    """How one node behaves. Times are in ticks.

    - `election_tick`: a member that hears no leader for a random timeout in
      [election_tick, 2*election_tick) (longer after failed campaigns) runs
      phase 1; acceptors refuse other proposers for as long after hearing a
      leader; a leader with `check_quorum` steps down after as long without a quorum.
    - `heartbeat_tick`: heartbeat period of a leader.
    - `check_quorum`: the leader-side half of the lease (above); required by `lease_reads`.
    - `lease_reads`, `lease_drift_ticks`: reads served from a leader lease of
      `election_tick - lease_drift_ticks` ticks (the margin covers clock drift).
    - `max_inflight_msgs`, `max_entries_per_msg`, `max_bytes_per_msg`: phase 2 batching.
    - `max_uncommitted_bytes`: data of unchosen proposals a leader accepts.
    - `max_pending_reads`: read barriers a leader holds waiting for confirmation.
    """

    id: NodeId
    membership: Membership
    rng: "random.Random"
    election_tick: int = 10
    heartbeat_tick: int = 1
    check_quorum: bool = True
    lease_reads: bool = False
    lease_drift_ticks: int = 2
    max_inflight_msgs: int = 256
    max_entries_per_msg: int = 256
    max_bytes_per_msg: int = 1 << 20
    max_uncommitted_bytes: int = 1 << 30
    max_pending_reads: int = 4096

    def validate(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise EngineConfigError("id must be a non-empty string")
        check_membership(self.membership)
        if self.heartbeat_tick < 1 or self.election_tick <= self.heartbeat_tick:
            raise EngineConfigError("need 1 <= heartbeat_tick < election_tick")
        if not 0 <= self.lease_drift_ticks < self.election_tick:
            raise EngineConfigError("lease_drift_ticks must be in [0, election_tick)")
        if self.lease_reads and (self.lease_drift_ticks < 1 or not self.check_quorum):
            raise EngineConfigError("lease_reads requires check_quorum and lease_drift_ticks >= 1")
        for name in ("max_inflight_msgs", "max_entries_per_msg", "max_bytes_per_msg",
                     "max_uncommitted_bytes", "max_pending_reads"):
            if getattr(self, name) < 1:
                raise EngineConfigError(f"{name} must be >= 1")


class PaxosNode:
    """One member of a Multi-Paxos group; implements `ReplicatedLog`."""

    def __init__(self, config: PaxosConfig, restore: RestoreState | None = None) -> None:
        self._validate(config)
        self.id: NodeId = config.id
        self._cfg = config
        self._rng = config.rng

        # --- durable: the promise (ballot, proposer) and the log ---
        self.ballot = 0  # Invariant: ballot >= _accepted (a promise covers what was accepted).
        self.vote: NodeId | None = None
        self._log = RaftLog()
        self._confs = MembershipHistory(config.membership)
        # The ballot every slot after the commit point was accepted in: the
        # highest entry ballot there (see the module doc); 0 when there are none.
        self._accepted = 0

        # --- volatile, all roles ---
        self._applied = 0  # Invariant: snap_index <= applied <= committed.
        self.lead: NodeId | None = None
        self._role = Role.FOLLOWER
        self._step_role: Callable[[Any], None] = self._step_acceptor
        self._tick_role: Callable[[], None] = self._tick_election
        self._now = 0
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._timeout = 0
        self._failed_campaigns = 0  # consecutive; widens the back-off
        self._restart_guard = False
        self._tracker = ProgressTracker(config.membership, config.max_inflight_msgs)

        # --- outputs waiting for the next Ready ---
        self._msgs: list[Any] = []
        self._read_states: list[ReadState] = []
        self._dropped: list[bytes] = []
        self._pending_snapshot: Snapshot | None = None
        self._prev_hs = (0, None, 0)
        self._prev_ss: SoftState | None = None
        self._ready_out: Ready | None = None

        # --- candidate state ---
        self._promises: dict[NodeId, Promise] = {}
        self._asked: set[NodeId] = set()  # voters sent this campaign's Prepare
        self._transfer_campaign = False

        # --- leader state ---
        self._noop_index = 0  # the leader's own NOOP; reads and changes wait for it to be chosen
        self._transferee: NodeId | None = None
        self._pending_conf_index = 0
        self._uncommitted_bytes = 0
        self._bcast = False
        self._commit_owed = False
        self._heartbeat_owed = False
        self._step_down_owed = False
        self._reads = self._new_reads()

        if restore is not None:
            self._restore(restore)
        self._tracker.set_membership(self._confs.latest(), self._log.last_index() + 1)
        self._become_follower(self.ballot, None)
        self._restart_guard = config.lease_reads and restore is not None and restore.hard_state.term > 0
        self._check()

    def _restore(self, restore: RestoreState) -> None:
        log = self._log
        if restore.snapshot is not None:
            log.restore(restore.snapshot)
            self._confs.reset(restore.snapshot.membership)
            self._applied = restore.snapshot.index
        entries = [e for e in restore.entries if e.index > log.snap_index]
        log.extend(entries)
        log.stable = log.last_index()
        self._confs.record(entries)
        hs = restore.hard_state
        log.committed = max(min(hs.commit, log.last_index()), log.snap_index)
        self._accepted = self._accepted_in_log()
        self.ballot, self.vote = hs.term, hs.vote
        if self._accepted > self.ballot:
            # The crash kept the accepted entries but not the promise written after
            # them: an acceptance implies the promise, and the round had its leader.
            self.ballot, self.vote = self._accepted, None
        self._prev_hs = (hs.term, hs.vote, hs.commit)

    def _accepted_in_log(self) -> int:
        log = self._log
        return max((e.term for e in log.slice(log.committed + 1, log.last_index() + 1)), default=0)

    def _check(self) -> None:
        log = self._log
        log.check()
        assert log.snap_index <= self._applied <= log.committed or self._pending_snapshot is not None
        assert self.ballot >= self._accepted, (self.ballot, self._accepted)
        assert (self._role is Role.LEADER) == (self.lead == self.id)
        assert self._role is not Role.LEADER or (self.vote == self.id and self._accepted == self.ballot)

    # ---------------------------------------------------------------- public API

    def tick(self) -> None:
        self._now += 1
        self._tick_role()

    def campaign(self) -> None:
        """Run phase 1 now (for tests and tools)."""
        self._campaign(transfer=False)

    def propose(self, data: bytes) -> tuple[int, int]:
        self._leader_only()
        if self._uncommitted_bytes and self._uncommitted_bytes + len(data) > self._cfg.max_uncommitted_bytes:
            raise ProposalDropped("too many uncommitted bytes")
        self._uncommitted_bytes += len(data)
        return self._append_own(EntryKind.NORMAL, data)

    def read_barrier(self, ctx: bytes) -> None:
        if self._role is not Role.LEADER:
            raise ProposalDropped(f"{self.id} is not the leader (leader: {self.lead})")
        if self._reads.waiting() >= self._cfg.max_pending_reads:
            raise ProposalDropped("too many pending read barriers")
        if self._log.committed < self._noop_index:
            self._reads.defer(ctx)
        else:
            self._start_read(ctx)

    def change_membership(self, membership: Membership) -> tuple[int, int]:
        self._leader_only()
        if self._log.committed < self._noop_index:
            # A change recovered from an earlier ballot may still be chosen with a
            # quorum disjoint from one planned from our membership (thesis 4.1, 2015).
            raise ProposalDropped("the leader's no-op is not chosen yet")
        return self._append_own(EntryKind.MEMBERSHIP, encode_membership(self._next_membership(membership)))

    def transfer_leadership(self, to: NodeId) -> None:
        if self._role is not Role.LEADER:
            raise ProposalDropped(f"{self.id} is not the leader (leader: {self.lead})")
        if to == self.id or to == self._transferee:
            return
        if not self._tracker.is_voter(to):
            raise ProposalDropped(f"{to} is not a voter")
        self._transferee = to
        self._election_elapsed = 0
        pr = self._tracker.progress[to]
        if pr.match == self._log.last_index():
            self._send_timeout_now(to)
        else:
            self._send_accept(to, pr, True)

    def compact(self, snapshot: Snapshot) -> None:
        log = self._log
        if snapshot.index <= log.snap_index:
            return
        assert snapshot.index <= self._applied, "only applied state can be snapshotted"
        log.stable = max(log.stable, snapshot.index)
        membership = self._confs.compact(snapshot.index)
        log.compact(Snapshot(snapshot.index, snapshot.term, membership, snapshot.data))

    def membership_at(self, index: int) -> Membership:
        log = self._log
        assert log.snap_index <= index <= log.last_index(), (index, log.snap_index, log.last_index())
        return self._confs.at(index)

    def has_ready(self) -> bool:
        self._flush()
        log = self._log
        return bool(
            self._msgs
            or self._read_states
            or self._dropped
            or self._pending_snapshot is not None
            or log.stable < log.last_index()
            or log.committed > self._applied
            or self._hard_state_tuple() != self._prev_hs
            or self._soft_state() != self._prev_ss
        )

    def ready(self) -> Ready:
        assert self._ready_out is None, "advance() the previous Ready first"
        self._flush()
        log = self._log
        off = log.offset
        hs, prev = self._hard_state_tuple(), self._prev_hs
        hard_state = HardState(*hs) if hs != prev else None
        self._prev_hs = hs
        soft_state = self._soft_state()
        if soft_state == self._prev_ss:
            soft_state = None
        else:
            self._prev_ss = soft_state
        entries = tuple(log.entries[log.stable + 1 - off:])
        lo = max(self._applied, log.snap_index) + 1
        rd = Ready(
            snapshot=self._pending_snapshot,
            entries=entries,
            hard_state=hard_state,
            messages=tuple(self._msgs),
            committed_entries=tuple(log.entries[lo - off: log.committed + 1 - off]),
            read_states=tuple(self._read_states),
            dropped=tuple(self._dropped),
            soft_state=soft_state,
            # Promises and acceptances are what other nodes count on; the commit point is not.
            must_sync=bool(entries) or self._pending_snapshot is not None or hs[:2] != prev[:2],
        )
        self._msgs, self._read_states, self._dropped = [], [], []
        self._ready_out = rd
        return rd

    def advance(self, ready: Ready) -> None:
        assert ready is self._ready_out, "advance() takes the Ready last returned by ready()"
        self._ready_out = None
        log = self._log
        if ready.snapshot is not None:
            if self._pending_snapshot is ready.snapshot:
                self._pending_snapshot = None
            self._applied = max(self._applied, ready.snapshot.index)
        if ready.entries:
            last = ready.entries[-1]
            if log.term(last.index) == last.term and last.index > log.stable:
                log.stable = last.index
        if ready.committed_entries:
            self._applied = max(self._applied, ready.committed_entries[-1].index)
        self._check()

    def status(self) -> Status:
        log = self._log
        progress: dict[NodeId, Any] = {}
        if self._role is Role.LEADER:
            for pid, pr in self._tracker:
                progress[pid] = ProgressView(pr.state.value, pr.match, pr.next, pr.recent_active, len(pr.inflights))
        return Status(
            id=self.id,
            role=self._soft_state().role,
            term=self.ballot,
            leader=self.lead,
            commit=log.committed,
            applied=self._applied,
            first_index=log.offset,
            last_index=log.last_index(),
            membership=self._tracker.membership,
            lease_valid=self._lease_valid(),
            progress=progress,
        )

    def log_entries(self, lo: int, hi: int) -> Sequence[Entry]:
        return self._log.slice(lo, hi)

    # ------------------------------------------------------------------ hooks
    #
    # The safety rules kvorum.consensus.paxos.bugs breaks on purpose, one small
    # method each, so a broken variant is a subclass and this code has no test branches.

    def _validate(self, config: PaxosConfig) -> None:
        config.validate()

    def _new_reads(self) -> ReadIndex:
        """Read rounds and the lease, which must end before the acceptors' promise does."""
        return ReadIndex(self._cfg.election_tick, self._cfg.lease_drift_ticks)

    def _hard_state_tuple(self) -> tuple[int, NodeId | None, int]:
        """The promise (ballot and proposer) and the commit point."""
        return (self.ballot, self.vote, self._log.committed)

    def _tally(self, membership: Membership) -> VoteResult:
        """Phase 1 won: promises from a majority of every voter set of `membership`."""
        granted = {pid: not p.reject for pid, p in self._promises.items()}
        return joint_vote(membership.voters, membership.voters_outgoing, granted)

    def _committed_index(self) -> int:
        """The highest slot accepted in our ballot by a (joint) majority: chosen."""
        return self._tracker.committed()

    def _recover(self, base: int, promises: list[Promise]) -> list[Entry]:
        """The values to propose for the slots after `base`: each slot up to the
        highest commit point reported takes the chosen value, each later slot the
        value accepted in the highest ballot (PMMC's pmax)."""
        chosen_upto = max(p.commit for p in promises)
        by_slot: dict[int, tuple[int, Entry]] = {}
        for p in promises:
            for e in p.entries:
                if e.index <= base:
                    continue
                if e.index <= p.commit:
                    rank = 1 << 62  # a chosen value outranks any ballot
                else:
                    rank = p.accepted
                held = by_slot.get(e.index)
                if held is None or rank > held[0]:
                    by_slot[e.index] = (rank, e)
        recovered = []
        for index in range(base + 1, max(by_slot, default=base) + 1):
            # Invariant: acceptors accept contiguously, so the union of reports has no holes.
            assert index in by_slot, (index, sorted(by_slot))
            recovered.append(by_slot[index][1])
        assert not recovered or recovered[-1].index >= chosen_upto or chosen_upto <= base
        return recovered

    def _next_membership(self, target: Membership) -> Membership:
        """One change at a time (thesis 4.1, 4.3): the previous one must be chosen."""
        current = self._tracker.membership
        if current.joint or self._pending_conf_index > self._log.committed:
            raise ProposalDropped("a membership change is already in progress")
        return plan_change(current, target)

    def _lease_valid(self) -> bool:
        if self._role is not Role.LEADER or not self._cfg.lease_reads or not self._cfg.check_quorum:
            return False
        reads = self._reads
        if self._transferee is not None or reads.lease_forfeited:
            return False
        if self._tracker.voter_ids() == {self.id}:
            return True
        return reads.lease_holds(self._tracker.quorum_round(self.id, reads.round), self._now)

    def _soft_state(self) -> SoftState:
        role = self._role
        if role is Role.FOLLOWER and self.id in self._tracker.membership.learners:
            role = Role.LEARNER
        return SoftState(self.lead, role)

    # ------------------------------------------------------------------ step

    def step(self, m: Any) -> None:
        kind = type(m)
        if m.ballot > self.ballot:
            if kind is Prepare:
                self._handle_prepare(m)
                return
            if kind is Promise or kind is Accepted:
                # A refusal naming a higher ballot: someone else may lead; back off.
                self._failed_campaigns += self._role is Role.CANDIDATE
                self._become_follower(m.ballot, None)
                return
            if kind is HeartbeatAck:
                return
            # A leader of a higher ballot: its Accept/Heartbeat is an implicit Prepare
            # (it holds a quorum of promises for the ballot).
            self._become_follower(m.ballot, m.frm)
        elif m.ballot < self.ballot:
            if kind in _LEADER_MESSAGES:
                self._send(Accepted(m.frm, self.id, self.ballot, 0, True))
            elif kind is Prepare:
                self._send(Promise(m.frm, self.id, self.ballot, True))
            return
        if kind is Prepare:
            self._handle_prepare(m)
        else:
            self._step_role(m)

    def _handle_prepare(self, m: Prepare) -> None:
        if m.ballot == self.ballot and self.vote not in (None, m.frm):
            self._send(Promise(m.frm, self.id, self.ballot, True))
            return
        if m.ballot > self.ballot:
            heard = (self.lead is not None or self._restart_guard) and self._election_elapsed < self._cfg.election_tick
            if heard and not m.transfer and self._cfg.check_quorum:
                # The lease: while a leader is heard, no other proposer gets a promise.
                return
            self._become_follower(m.ballot, None)
        self.vote = m.frm
        self._election_elapsed = 0
        log = self._log
        snapshot = log.snapshot if log.snap_index > m.commit else None
        entries = tuple(log.slice(m.commit + 1, log.last_index() + 1))
        self._send(Promise(m.frm, self.id, self.ballot, False, log.committed, self._accepted, entries, snapshot))

    def _step_acceptor(self, m: Any) -> None:
        kind = type(m)
        if kind in _LEADER_MESSAGES:
            self._election_elapsed = 0
            self.lead = m.frm
            self.vote = m.frm
            if kind is Accept:
                self._handle_accept(m)
            elif kind is Heartbeat:
                self._log.commit_to(min(m.commit, self._log.last_index()))
                self._send(HeartbeatAck(m.frm, self.id, self.ballot, m.round))
            else:
                self._handle_catchup(m)
        elif kind is TimeoutNow:
            self._campaign(transfer=True)

    def _step_candidate(self, m: Any) -> None:
        kind = type(m)
        if kind in _LEADER_MESSAGES:
            self._become_follower(m.ballot, m.frm)
            self._step_acceptor(m)
        elif kind is Promise:
            self._promises.setdefault(m.frm, m)
            self._try_win()

    def _step_leader(self, m: Any) -> None:
        kind = type(m)
        if kind is Accepted:
            self._handle_accepted(m)
        elif kind is HeartbeatAck:
            self._handle_heartbeat_ack(m)

    # --------------------------------------------------------- acceptor handlers

    def _handle_accept(self, m: Accept) -> None:
        log = self._log
        entries = m.entries
        if self._accepted != m.ballot:
            # Switching ballots: from our commit point on, up to an entry of the new
            # ballot, so that one ballot covers every unchosen slot we hold.
            new = [e for e in entries if e.index > log.committed]
            if m.index > log.committed or (new and new[-1].term != m.ballot):
                self._send(Accepted(m.frm, self.id, self.ballot, m.index, True, log.committed))
                return
            if not new:
                # Nothing to switch with: our unchosen slots stay as accepted (dropping
                # them could unchoose a value), and only the chosen ones are confirmed.
                self._send(Accepted(m.frm, self.id, self.ballot, log.committed))
                return
            self._truncate_after(log.committed)
            self._extend(new)
            self._accepted = m.ballot
        else:
            if m.index > log.last_index():
                self._send(Accepted(m.frm, self.id, self.ballot, m.index, True, log.last_index()))
                return
            # Same ballot: our slots up to the last are the leader's values already.
            self._extend([e for e in entries if e.index > log.last_index()])
        log.commit_to(min(m.commit, log.last_index()))
        self._send(Accepted(m.frm, self.id, self.ballot, log.last_index()))

    def _handle_catchup(self, m: Catchup) -> None:
        log = self._log
        snap = m.snapshot
        if snap.index > log.committed:
            # Unlike Raft, holding the snapshot's last entry says nothing of the
            # slots before it, so the snapshot always replaces them; the slots
            # after it stay accepted (forgetting an acceptance could unchoose a
            # value) and are written again after the snapshot, which may drop them.
            kept = log.slice(snap.index + 1, log.last_index() + 1)
            log.restore(snap)
            self._pending_snapshot = snap
            self._confs.reset(snap.membership)
            self._extend(kept)
            self._apply_membership()
            if not kept:
                self._accepted = 0
        # Slots up to our commit point hold chosen values: the leader's.
        self._send(Accepted(m.frm, self.id, self.ballot, log.committed))

    def _truncate_after(self, index: int) -> None:
        log = self._log
        if index < log.last_index():
            log.truncate_after(index)
            if self._confs.truncate_from(index + 1):
                self._apply_membership()

    def _extend(self, entries: list[Entry]) -> None:
        if entries:
            self._log.extend(entries)
            if self._confs.record(entries):
                self._apply_membership()

    # --------------------------------------------------------- candidate

    def _campaign(self, transfer: bool) -> None:
        if self._role is Role.LEADER or not self._tracker.is_voter(self.id):
            return
        self._reset(self.ballot + 1)
        self.vote = self.id
        self._role = Role.CANDIDATE
        self._step_role = self._step_candidate
        self._tick_role = self._tick_election
        log = self._log
        own = tuple(log.slice(log.committed + 1, log.last_index() + 1))
        self._promises = {
            self.id: Promise(self.id, self.id, self.ballot, False, log.committed, self._accepted, own, None)
        }
        self._asked = {self.id}
        self._transfer_campaign = transfer
        self._try_win()

    def _try_win(self) -> None:
        """Lead once promises cover a quorum of our membership and of the recovered log's."""
        if self._tally(self._tracker.membership) is not VoteResult.WON:
            self._ask_voters(self._tracker.membership)
            return
        log = self._log
        promises = list(self._promises.values())
        snap = max((p.snapshot for p in promises if p.snapshot is not None), key=lambda s: s.index, default=None)
        base = log.committed
        if snap is not None and snap.index > base:
            base = snap.index
        recovered = self._recover(base, promises)
        latest = self._membership_after(snap if snap is not None and snap.index > log.committed else None, recovered)
        if self._tally(latest) is not VoteResult.WON:
            self._ask_voters(latest)
            return
        if snap is not None and snap.index > log.committed:
            log.restore(snap)
            self._pending_snapshot = snap
            self._confs.reset(snap.membership)
        else:
            self._truncate_after(log.committed)
        self._extend(recovered)
        self._apply_membership()
        self._become_leader()

    def _membership_after(self, snap: Snapshot | None, recovered: list[Entry]) -> Membership:
        for e in reversed(recovered):
            if e.kind is EntryKind.MEMBERSHIP:
                return decode_membership(e.data)
        if snap is not None:
            return snap.membership
        return self._confs.at(self._log.committed)

    def _ask_voters(self, membership: Membership) -> None:
        log = self._log
        for pid in sorted((membership.voters | membership.voters_outgoing) - self._asked):
            self._asked.add(pid)
            self._send(Prepare(pid, self.id, self.ballot, log.committed, self._transfer_campaign))

    # --------------------------------------------------------- leader handlers

    def _handle_accepted(self, m: Accepted) -> None:
        pr = self._tracker.progress.get(m.frm)
        if pr is None:
            return
        pr.recent_active = True
        if m.reject:
            state = pr.state
            if state is _SNAPSHOT or (state is _REPLICATE and m.index < pr.match):
                return
            if state is _PROBE and m.index != pr.next - 1:
                return  # answers an older probe
            # The acceptor's hint is a slot up to which it holds our values (its
            # last slot, or its commit point when it must switch ballots first).
            pr.become_probe()
            pr.next = min(max(pr.match, m.hint) + 1, self._log.last_index() + 1)
            self._send_accept(m.frm, pr, True)
            return
        if not pr.maybe_update(m.index):
            return
        if pr.state is _PROBE:
            pr.become_replicate()
        elif pr.state is _REPLICATE:
            pr.inflights.free_le(m.index)
        elif pr.match >= pr.pending_snapshot:
            pr.become_probe()
            pr.become_replicate()
        self._maybe_commit()
        self._bcast = True
        if m.frm == self._transferee and pr.match == self._log.last_index():
            self._send_timeout_now(m.frm)

    def _handle_heartbeat_ack(self, m: HeartbeatAck) -> None:
        pr = self._tracker.progress.get(m.frm)
        if pr is None:
            return
        pr.recent_active = True
        pr.probe_sent = False
        if pr.state is _REPLICATE and pr.inflights.full():
            pr.inflights.free_first_one()
        if pr.match < self._log.last_index():
            self._send_accept(m.frm, pr, True)
        if m.round > pr.acked_round:
            pr.acked_round = m.round
            if self._reads.has_pending():
                self._reads.release(self._tracker.quorum_round(self.id, self._reads.round), self._read_states)

    # -------------------------------------------------------- leader internals

    def _leader_only(self) -> None:
        if self._role is not Role.LEADER:
            raise ProposalDropped(f"{self.id} is not the leader (leader: {self.lead})")
        if self._transferee is not None:
            raise ProposalDropped(f"leadership transfer to {self._transferee} in progress")

    def _append_own(self, kind: EntryKind, data: bytes) -> tuple[int, int]:
        log = self._log
        index = log.last_index() + 1
        log.append(new_entry(self.ballot, index, kind, data))
        pr = self._tracker.progress.get(self.id)
        if pr is not None:
            pr.match, pr.next = index, index + 1
        if kind is EntryKind.MEMBERSHIP:
            self._confs.record(log.entries[-1:])
            self._pending_conf_index = index
            self._apply_membership()
        self._bcast = True
        return index, self.ballot

    def _maybe_commit(self) -> None:
        log = self._log
        index = min(self._committed_index(), log.last_index())
        if index <= log.committed:
            return
        old = log.committed
        log.committed = index
        self._commit_owed = True  # learners hear of it in the next batch, not the next heartbeat
        self._after_commit(old, index)

    def _after_commit(self, old: int, new: int) -> None:
        log = self._log
        if self._uncommitted_bytes:
            freed = sum(len(e.data) for e in log.slice(old + 1, new + 1)
                        if e.term == self.ballot and e.kind is EntryKind.NORMAL)
            self._uncommitted_bytes = max(0, self._uncommitted_bytes - freed)
        if self._reads.has_deferred() and new >= self._noop_index:
            for ctx in self._reads.take_deferred():
                self._start_read(ctx)
        if self._confs.latest_index(log.snap_index) > new or self._pending_conf_index > new:
            return
        membership = self._tracker.membership
        if membership.joint:
            self._append_own(EntryKind.MEMBERSHIP, encode_membership(leave_joint(membership)))
        elif self.id not in membership.voters:
            self._step_down_owed = True

    def _send_accept(self, to: NodeId, pr: Progress, send_if_empty: bool) -> bool:
        if pr.is_paused():
            return False
        log = self._log
        if pr.next <= log.snap_index:
            return self._send_catchup(to, pr)
        last = log.last_index()
        prev = pr.next - 1
        if pr.next > last:
            if not send_if_empty:
                return False
            entries: tuple[Entry, ...] = ()
            if pr.state is _PROBE:
                pr.probe_sent = True
        else:
            cfg = self._cfg
            entries = log.batch(pr.next, cfg.max_entries_per_msg, cfg.max_bytes_per_msg)
            if entries[-1].index < self._noop_index:
                # An acceptor switching to our ballot needs every slot up to the NOOP at once.
                entries = tuple(log.slice(pr.next, self._noop_index + 1))
            pr.sent_entries(entries[-1].index)
        self._msgs.append(Accept(to, self.id, self.ballot, prev, entries, log.committed))
        return True

    def _send_catchup(self, to: NodeId, pr: Progress) -> bool:
        if not pr.recent_active:
            return False
        snap = self._log.snapshot
        assert snap is not None, "slots are compacted only into a snapshot"
        pr.become_snapshot(snap.index)
        self._send(Catchup(to, self.id, self.ballot, snap))
        return True

    def _flush(self) -> None:
        if self._role is not Role.LEADER:
            return
        if self._bcast or self._commit_owed:
            self._bcast = False
            self._maybe_commit()  # a one-voter group chooses on its own acceptance
            send_if_empty, self._commit_owed = self._commit_owed, False
            last = self._log.last_index()
            for pid, pr in self._tracker:
                if pid == self.id:
                    continue
                sent = self._send_accept(pid, pr, send_if_empty)
                while sent and pr.state is _REPLICATE and pr.next <= last:
                    sent = self._send_accept(pid, pr, False)
        if self._heartbeat_owed:
            self._heartbeat_owed = False
            rnd = self._reads.next_round(self._now)
            committed = self._log.committed
            for pid, pr in self._tracker:
                if pid != self.id:
                    self._msgs.append(Heartbeat(pid, self.id, self.ballot, min(pr.match, committed), rnd))
        if self._step_down_owed:
            last = self._log.last_index()
            for pid in sorted(self._tracker.membership.voters):
                pr = self._tracker.progress.get(pid)
                if pr is not None and pr.match == last:
                    self._send_timeout_now(pid)
                    break
            self._become_follower(self.ballot, None)

    def _start_read(self, ctx: bytes) -> None:
        index = self._log.committed
        if self._tracker.voter_ids() == {self.id} or self._lease_valid():
            self._read_states.append(ReadState(ctx, index))
            return
        self._reads.await_round(ctx, index)
        self._heartbeat_owed = True

    def _send_timeout_now(self, to: NodeId) -> None:
        self._reads.lease_forfeited = True
        self._msgs.append(TimeoutNow(to, self.id, self.ballot))

    def _send(self, m: Any) -> None:
        self._msgs.append(m)

    # ----------------------------------------------------------- membership

    def _apply_membership(self) -> None:
        self._tracker.set_membership(self._confs.latest(), max(self._log.last_index(), 1))
        if self._role is Role.LEADER:
            pr = self._tracker.progress.get(self.id)
            if pr is not None:
                pr.match = self._log.last_index()
                pr.next = pr.match + 1
            if self._transferee is not None and not self._tracker.is_voter(self._transferee):
                self._transferee = None

    # ----------------------------------------------------------- role changes

    def _reset(self, ballot: int) -> None:
        if ballot != self.ballot:
            assert ballot > self.ballot, (ballot, self.ballot)
            self.ballot = ballot
            self.vote = None
        self.lead = None
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        et = self._cfg.election_tick
        factor = min(1 << self._failed_campaigns, BACKOFF_FACTOR_MAX)
        self._timeout = et + self._rng.randrange(et * factor)
        self._transferee = None
        self._promises = {}
        last = self._log.last_index()
        self._tracker.reset_all(last + 1, self.id, last)
        self._pending_conf_index = 0
        self._uncommitted_bytes = 0
        self._noop_index = 0
        self._bcast = self._commit_owed = self._heartbeat_owed = self._step_down_owed = False
        self._restart_guard = False
        self._dropped.extend(self._reads.reset())

    def _become_follower(self, ballot: int, lead: NodeId | None) -> None:
        self._reset(ballot)
        self.lead = lead
        if lead is not None:
            self.vote = lead
            self._failed_campaigns = 0
        self._role = Role.FOLLOWER
        self._step_role = self._step_acceptor
        self._tick_role = self._tick_election

    def _become_leader(self) -> None:
        assert self._role is Role.CANDIDATE
        self._reset(self.ballot)
        self._failed_campaigns = 0
        self.lead = self.id
        self._role = Role.LEADER
        self._step_role = self._step_leader
        self._tick_role = self._tick_heartbeat
        self._accepted = self.ballot
        pr = self._tracker.progress.get(self.id)
        if pr is not None:
            pr.become_replicate()
            pr.recent_active = True
        index, _ = self._append_own(EntryKind.NOOP, b"")
        self._noop_index = index
        # Acceptors start probing from our commit point: every slot after it is proposed again.
        for pid, pr in self._tracker:
            if pid != self.id:
                pr.next = max(pr.match + 1, self._log.committed + 1)
        self._heartbeat_owed = True

    # ------------------------------------------------------------------ ticks

    def _tick_election(self) -> None:
        self._election_elapsed += 1
        if self._election_elapsed >= self._timeout and self._tracker.is_voter(self.id):
            if self._role is Role.CANDIDATE:
                self._failed_campaigns += 1
            self._campaign(transfer=False)

    def _tick_heartbeat(self) -> None:
        self._heartbeat_elapsed += 1
        self._election_elapsed += 1
        if self._election_elapsed >= self._cfg.election_tick:
            self._election_elapsed = 0
            if self._cfg.check_quorum:
                active = self._tracker.quorum_active(self.id)
                for pid, pr in self._tracker:
                    pr.recent_active = pid == self.id
                if not active:
                    self._become_follower(self.ballot, None)
                    return
            self._transferee = None
            for _, pr in self._tracker:
                if pr.state is _SNAPSHOT:
                    pr.snapshot_ticks += 1
                    if pr.snapshot_ticks >= 2:
                        pr.become_probe()
        if self._heartbeat_elapsed >= self._cfg.heartbeat_tick:
            self._heartbeat_elapsed = 0
            self._heartbeat_owed = True
