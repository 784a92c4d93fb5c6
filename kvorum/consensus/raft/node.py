"""The Raft state machine (Ongaro & Ousterhout 2014; Ongaro's thesis 2014).

Theory of operation
-------------------
`RaftNode` is sans-I/O. Callers feed it `tick()`, `step(message)`,
`propose(data)`, `read_barrier(ctx)`, `change_membership(m)`,
`transfer_leadership(to)` and `compact(snapshot)`; it answers through
`ready()` / `advance(ready)` (see `kvorum.consensus.replicated_log`).

Everything that decides a state transition lives in this file. Roles are
pairs of functions swapped on every role change (`_become_*` set `_step_role`
and `_tick_role`), so the role table reads:

    role          tick               step (same-term messages)
    FOLLOWER      _tick_election     _step_follower   (append, heartbeat, snapshot, TimeoutNow)
    PRECANDIDATE  _tick_election     _step_candidate  (pre-vote answers; a leader's append)
    CANDIDATE     _tick_election     _step_candidate  (vote answers; a leader's append)
    LEADER        _tick_heartbeat    _step_leader     (append and heartbeat answers)

Term handling is common and happens first in `step` (paper Figure 2, "Rules
for all servers"), as do vote requests, which every role answers alike.

A leader does not send on every proposal or acknowledgement. It marks what
is owed (`_bcast_entries`, `_bcast_commit`, `_heartbeat_owed`) and sends it
when the caller next asks for a `Ready` (`_flush`), so a burst of proposals
travels in one append per follower, bounded by the batch limits.

Ready ordering. `Ready.entries` and `Ready.hard_state` must be durable before
`Ready.messages` are sent: a vote response or an append acknowledgement
promises that the vote or the entries survive a crash (paper Figure 2,
"persistent state ... updated on stable storage before responding"). The
engine builds every message on that assumption and never waits for it.
`advance` then marks the entries stable (unless a conflicting append has
replaced them meanwhile) and the committed entries applied.

Sub-concerns live in modules that never import this one: `log` (the entries
and their indexes), `membership` (planning changes, the membership history),
`confchange` (applying membership ops, with etcd-io/raft's refusals),
`reads` (ReadIndex rounds and leases, thesis 6.4), and the shared `tracker`
and `quorum` packages. The lease depends on followers ignoring candidates
while they hear from a leader, which `step` enforces.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from kvorum.consensus.quorum import VoteResult
from kvorum.consensus.raft.config import RaftConfig
from kvorum.consensus.raft.log import RaftLog, new_entry
from kvorum.consensus.raft.membership import (
    MembershipHistory,
    encode_membership,
    leave_joint,
    plan_change,
)
from kvorum.consensus.raft.messages import (
    AppendEntries,
    AppendResponse,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    RequestVote,
    TimeoutNow,
    VoteResponse,
)
from kvorum.consensus.raft.reads import ReadIndex
from kvorum.consensus.replicated_log import (
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

_NORMAL = EntryKind.NORMAL
_MEMBERSHIP = EntryKind.MEMBERSHIP
_REPLICATE = ProgressState.REPLICATE
_PROBE = ProgressState.PROBE
_SNAPSHOT = ProgressState.SNAPSHOT
# Messages that only a leader of the message's term sends.
_LEADER_MESSAGES = (AppendEntries, Heartbeat, InstallSnapshot)


class RaftNode:
    """One member of a Raft group; implements `ReplicatedLog`."""

    def __init__(self, config: RaftConfig, restore: RestoreState | None = None) -> None:
        self._validate(config)
        self.id: NodeId = config.id
        self._cfg = config
        self._rng = config.rng
        self._election_tick = config.election_tick

        # --- durable state (HardState + log) ---
        self.term = 0
        self.vote: NodeId | None = None
        self._log = RaftLog()
        self._confs = MembershipHistory(config.membership)

        # --- volatile state, all roles ---
        # Invariant: snap_index <= applied <= committed (applied moves in advance()).
        self._applied = 0
        self.lead: NodeId | None = None
        self._role = Role.FOLLOWER
        self._step_role: Callable[[Any], None] = self._step_follower
        self._tick_role: Callable[[], None] = self._tick_election
        self._now = 0  # ticks since this node started; only ever compared with itself
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._randomized_timeout = 0
        # True from a restart until the first role change (see the end of __init__).
        self._restart_guard = False
        self._tracker = ProgressTracker(config.membership, config.max_inflight_msgs)

        # --- outputs waiting for the next Ready ---
        self._msgs: list[Any] = []
        self._read_states: list[ReadState] = []
        self._dropped: list[bytes] = []
        self._pending_snapshot: Snapshot | None = None  # received, not yet persisted
        self._prev_hs = (0, None, 0)  # the hard state last handed out
        self._prev_ss: SoftState | None = None  # the soft state last handed out
        self._ready_out: Ready | None = None  # handed out, not yet advanced

        # --- leader state (reset by every role change) ---
        self._self_pr: Progress | None = None
        self._lead_transferee: NodeId | None = None
        self._pending_conf_index = 0  # a membership entry not yet known committed
        # The data bytes of this leadership's proposals that are not yet committed.
        self._uncommitted_bytes = 0
        self._bcast_entries = False
        self._bcast_commit = False
        self._heartbeat_owed = False
        self._step_down_owed = False
        self._reads = ReadIndex(config.election_tick, config.lease_drift_ticks)

        if restore is not None:
            self._restore(restore)
        self._tracker.set_membership(self._confs.latest(), self._log.last_index() + 1)
        self._become_follower(self.term, None)
        # A restarted node may have acknowledged a leader's heartbeat just before
        # it crashed, and that leader may be counting on it for its lease: so it
        # keeps the promise a live follower keeps, and for its first election
        # timeout ignores candidates as if it had heard from a leader. Without
        # leases nothing depends on that promise, and votes are not delayed.
        self._restart_guard = (
            config.lease_reads and restore is not None and restore.hard_state.term > 0
        )
        self._check()

    # ------------------------------------------------------------------ restore

    def _restore(self, restore: RestoreState) -> None:
        log = self._log
        snap = restore.snapshot
        if snap is not None:
            log.restore(snap)
            self._confs.reset(snap.membership)
            self._applied = snap.index
        entries = [e for e in restore.entries if e.index > log.snap_index]
        log.extend(entries)
        log.stable = log.last_index()
        self._confs.record(entries)
        hs = restore.hard_state
        self.term = hs.term
        self.vote = hs.vote
        log.committed = max(hs.commit, log.snap_index)
        self._prev_hs = (hs.term, hs.vote, hs.commit)

    # ---------------------------------------------------------------- invariants

    def _check(self) -> None:
        self._log.check()
        assert self._log.snap_index <= self._applied <= self._log.committed or (
            self._pending_snapshot is not None
        ), (self._applied, self._log.committed)
        # Invariant: a leader is its own leader, and only a leader has a transferee.
        assert (self._role is Role.LEADER) == (self.lead == self.id and self._step_role == self._step_leader)
        assert self._lead_transferee is None or self._role is Role.LEADER

    # ---------------------------------------------------------------- public API

    def tick(self) -> None:
        self._now += 1
        self._tick_role()

    def campaign(self) -> None:
        """Start an election now, as if the election timeout had fired (for tests and tools)."""
        self._hup(transfer=False)

    def propose(self, data: bytes) -> tuple[int, int]:
        if self._role is not Role.LEADER:
            raise ProposalDropped(f"{self.id} is not the leader (leader: {self.lead})")
        if self._lead_transferee is not None:
            raise ProposalDropped(f"leadership transfer to {self._lead_transferee} in progress")
        size = len(data)
        if self._uncommitted_bytes and self._uncommitted_bytes + size > self._cfg.max_uncommitted_bytes:
            raise ProposalDropped("too many uncommitted bytes")
        self._uncommitted_bytes += size
        return self._append_own(_NORMAL, data)

    def read_barrier(self, ctx: bytes) -> None:
        if self._role is not Role.LEADER:
            raise ProposalDropped(f"{self.id} is not the leader (leader: {self.lead})")
        if self._reads.waiting() >= self._cfg.max_pending_reads:
            raise ProposalDropped("too many pending read barriers")
        if self._log.term(self._log.committed) != self.term:
            self._reads.defer(ctx)
            return
        self._start_read(ctx)

    def change_membership(self, membership: Membership) -> tuple[int, int]:
        if self._role is not Role.LEADER:
            raise ProposalDropped(f"{self.id} is not the leader (leader: {self.lead})")
        if self._lead_transferee is not None:
            raise ProposalDropped(f"leadership transfer to {self._lead_transferee} in progress")
        log = self._log
        if log.term(log.committed) != self.term:
            # Thesis 4.1 as corrected in 2015: until an entry of this term commits,
            # a membership entry from an earlier leader may still be pending on
            # servers we have not heard from, and a change appended now could have
            # a majority disjoint from that one's.
            raise ProposalDropped("the leader has not yet committed an entry of its term")
        return self._append_own(_MEMBERSHIP, encode_membership(self._next_membership(membership)))

    def transfer_leadership(self, to: NodeId) -> None:
        if self._role is not Role.LEADER:
            raise ProposalDropped(f"{self.id} is not the leader (leader: {self.lead})")
        if to == self.id or to == self._lead_transferee:
            return
        if not self._tracker.is_voter(to):
            raise ProposalDropped(f"{to} is not a voter")
        self._lead_transferee = to
        # The transfer is aborted if it has not finished within an election timeout.
        self._election_elapsed = 0
        pr = self._tracker.progress[to]
        if pr.match == self._log.last_index():
            self._send_timeout_now(to)
        else:
            self._send_append(to, pr, True)

    def compact(self, snapshot: Snapshot) -> None:
        log = self._log
        if snapshot.index <= log.snap_index:
            return
        assert snapshot.index <= self._applied, "only applied state can be snapshotted"
        # Committed entries may be applied before they are persisted; the caller's
        # durable snapshot now covers any of those, so they count as stable.
        log.stable = max(log.stable, snapshot.index)
        # The engine knows the membership at the index better than the caller does.
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
        """Everything owed to the caller; call `advance` with it before the next `ready`."""
        assert self._ready_out is None, "advance() the previous Ready first"
        self._flush()
        log = self._log
        off = log.offset
        hs = self._hard_state_tuple()
        prev = self._prev_hs
        hard_state = None
        if hs != prev:
            hard_state = HardState(*hs)
            self._prev_hs = hs
        soft_state = self._soft_state()
        if soft_state == self._prev_ss:
            soft_state = None
        else:
            self._prev_ss = soft_state
        entries = tuple(log.entries[log.stable + 1 - off :])
        lo = max(self._applied, log.snap_index) + 1
        rd = Ready(
            snapshot=self._pending_snapshot,
            entries=entries,
            hard_state=hard_state,
            messages=tuple(self._msgs),
            committed_entries=tuple(log.entries[lo - off : log.committed + 1 - off]),
            read_states=tuple(self._read_states),
            dropped=tuple(self._dropped),
            soft_state=soft_state,
            # Term and vote are promises made to other nodes; the commit index is not.
            must_sync=bool(entries)
            or self._pending_snapshot is not None
            or hs[0] != prev[0]
            or hs[1] != prev[1],
        )
        self._msgs = []
        self._read_states = []
        self._dropped = []
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
            # A suffix truncated since ready() was handed out is not durable in its new form.
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
                progress[pid] = ProgressView(
                    pr.state.value, pr.match, pr.next, pr.recent_active, len(pr.inflights)
                )
        role = self._role
        if role is Role.FOLLOWER and self.id in self._tracker.membership.learners:
            role = Role.LEARNER
        return Status(
            id=self.id,
            role=role,
            term=self.term,
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
    # The safety rules that kvorum.consensus.raft.bugs breaks on purpose, one
    # small method each, so that a deliberately broken variant is a subclass
    # and the engine's own code carries no test-only branches.

    def _validate(self, config: RaftConfig) -> None:
        config.validate()

    def _soft_state(self) -> SoftState:
        role = self._role
        if role is Role.FOLLOWER and self.id in self._tracker.membership.learners:
            role = Role.LEARNER
        return SoftState(self.lead, role)

    def _hard_state_tuple(self) -> tuple[int, NodeId | None, int]:
        """What must survive a crash besides the log (paper Figure 2)."""
        return (self.term, self.vote, self._log.committed)

    def _committed_index(self) -> int:
        """The largest index stored on a majority of every voter set in force (§5.3, §6)."""
        return self._tracker.committed()

    def _may_commit_at(self, index: int) -> bool:
        """Paper §5.4.2 / Figure 8: counting replicas of an earlier term's entry
        does not make it committed; only an entry of our own term commits by count."""
        return self._log.term(index) == self.term

    def _append_leader_noop(self) -> None:
        """Paper §5.4.2 / §8: a leader commits earlier terms' entries only
        indirectly, by committing one of its own; the NOOP is that entry."""
        self._append_own(EntryKind.NOOP, b"")

    def _tally(self) -> VoteResult:
        """The election's outcome: a majority of every voter set in force (§5.2, §6)."""
        return self._tracker.tally()

    def _vote_requestees(self) -> list[NodeId]:
        """Whom a candidate asks for votes: the voters, never learners (thesis 4.2.1)."""
        return sorted(self._tracker.voter_ids() - {self.id})

    def _next_membership(self, target: Membership) -> Membership:
        """The membership entry to append for `target`; one change at a time (thesis 4.1, 4.3)."""
        current = self._tracker.membership
        if current.joint or self._pending_conf_index > self._log.committed:
            raise ProposalDropped("a membership change is already in progress")
        return plan_change(current, target)

    def _truncate_conflict(self, conflict: int) -> int:
        """Drop our entries from `conflict` on, which differ from the leader's (§5.3);
        returns the index from which the leader's entries are appended."""
        self._log.truncate_after(conflict - 1)
        if self._confs.truncate_from(conflict):
            self._apply_membership()
        return conflict

    def _lease_valid(self) -> bool:
        """May the leader serve a read from its lease, without a heartbeat round (thesis 6.4.1)?"""
        if self._role is not Role.LEADER or not self._cfg.lease_reads:
            return False
        reads = self._reads
        if not self._cfg.check_quorum or self._lead_transferee is not None or reads.lease_forfeited:
            return False
        if self._tracker.voter_ids() == {self.id}:
            return True
        return reads.lease_holds(self._tracker.quorum_round(self.id, reads.round), self._now)

    # ----------------------------------------------------------- membership

    def _apply_membership(self) -> None:
        """Make the latest membership in the log the one in force (thesis 4.1)."""
        # A new member is first offered the newest entry (the membership entry
        # itself, on a leader); its rejection hint then says where its log ends.
        self._tracker.set_membership(self._confs.latest(), max(self._log.last_index(), 1))
        self._self_pr = self._tracker.progress.get(self.id)
        if self._role is Role.LEADER:
            if self._self_pr is not None:
                self._self_pr.match = self._log.last_index()
                self._self_pr.next = self._self_pr.match + 1
            if self._lead_transferee is not None and not self._tracker.is_voter(self._lead_transferee):
                self._lead_transferee = None

    def _promotable(self) -> bool:
        return self._tracker.is_voter(self.id)

    # ----------------------------------------------------------- role changes

    def _reset(self, term: int) -> None:
        if term != self.term:
            self.term = term
            self.vote = None
        self.lead = None
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        et = self._election_tick
        self._randomized_timeout = et + self._rng.randrange(et)
        self._lead_transferee = None
        self._tracker.votes = {}
        last = self._log.last_index()
        self._tracker.reset_all(last + 1, self.id, last)
        self._self_pr = None
        self._pending_conf_index = 0
        self._uncommitted_bytes = 0
        self._bcast_entries = self._bcast_commit = self._heartbeat_owed = False
        self._step_down_owed = False
        self._restart_guard = False
        # Unconfirmed read barriers die with the leadership that accepted them.
        self._dropped.extend(self._reads.reset())

    def _become_follower(self, term: int, lead: NodeId | None) -> None:
        self._reset(term)
        self.lead = lead
        self._role = Role.FOLLOWER
        self._step_role = self._step_follower
        self._tick_role = self._tick_election

    def _become_pre_candidate(self) -> None:
        # PreVote (thesis 9.6) changes neither term nor vote: a partitioned node
        # that keeps losing pre-votes never disturbs the rest with a higher term.
        assert self._role is not Role.LEADER
        self._tracker.votes = {}
        self.lead = None
        self._role = Role.PRECANDIDATE
        self._step_role = self._step_candidate
        self._tick_role = self._tick_election

    def _become_candidate(self) -> None:
        assert self._role is not Role.LEADER
        self._reset(self.term + 1)
        self.vote = self.id
        self._role = Role.CANDIDATE
        self._step_role = self._step_candidate
        self._tick_role = self._tick_election

    def _become_leader(self) -> None:
        assert self._role is Role.CANDIDATE
        self._reset(self.term)
        self.lead = self.id
        self._role = Role.LEADER
        self._step_role = self._step_leader
        self._tick_role = self._tick_heartbeat
        pr = self._self_pr = self._tracker.progress.get(self.id)
        if pr is not None:
            pr.become_replicate()
            pr.recent_active = True
        self._append_leader_noop()

    def _hup(self, transfer: bool) -> None:
        if self._role is Role.LEADER or not self._promotable():
            return
        if self._cfg.pre_vote and not transfer:
            self._campaign(pre=True, transfer=False)
        else:
            self._campaign(pre=False, transfer=transfer)

    def _campaign(self, pre: bool, transfer: bool) -> None:
        if pre:
            self._become_pre_candidate()
            vote_term = self.term + 1
        else:
            self._become_candidate()
            vote_term = self.term
        self._tracker.record_vote(self.id, True)
        if self._tally() is VoteResult.WON:
            # A single-voter group wins at once.
            if pre:
                self._campaign(pre=False, transfer=transfer)
            else:
                self._become_leader()
            return
        log = self._log
        last_index, last_term = log.last_index(), log.last_term()
        for pid in self._vote_requestees():
            self._send(RequestVote(pid, self.id, vote_term, last_index, last_term, pre, transfer))

    # ------------------------------------------------------------------ ticks

    def _tick_election(self) -> None:
        self._election_elapsed += 1
        if self._election_elapsed >= self._randomized_timeout and self._promotable():
            self._election_elapsed = 0
            self._hup(transfer=False)

    def _tick_heartbeat(self) -> None:
        self._heartbeat_elapsed += 1
        self._election_elapsed += 1
        if self._election_elapsed >= self._election_tick:
            self._election_elapsed = 0
            if self._cfg.check_quorum:
                active = self._tracker.quorum_active(self.id)
                for _, pr in self._tracker:
                    pr.recent_active = False
                if self._self_pr is not None:
                    self._self_pr.recent_active = True
                if not active:
                    # CheckQuorum: without a quorum we may already be deposed.
                    self._become_follower(self.term, None)
                    return
            # A transfer that did not finish within an election timeout is abandoned.
            self._lead_transferee = None
            self._give_up_lost_snapshots()
        if self._heartbeat_elapsed >= self._cfg.heartbeat_tick:
            self._heartbeat_elapsed = 0
            self._heartbeat_owed = True

    def _give_up_lost_snapshots(self) -> None:
        # Nothing reports a lost InstallSnapshot, so after two election timeouts
        # without an answer the follower is probed again (which re-sends it if needed).
        for _, pr in self._tracker:
            if pr.state is _SNAPSHOT:
                pr.snapshot_ticks += 1
                if pr.snapshot_ticks >= 2:
                    pr.become_probe()

    # ------------------------------------------------------------------ step

    def step(self, m: Any) -> None:
        """Feed one message from a peer (paper Figure 2, "Rules for all servers" first)."""
        kind = type(m)
        if m.term > self.term:
            if kind is RequestVote:
                heard_leader = (
                    self.lead is not None or self._restart_guard
                ) and self._election_elapsed < self._election_tick
                # Thesis 4.2.3: while we hear from a live leader, a candidate is
                # ignored (unless the leader itself asked for it by TimeoutNow).
                # Leader leases depend on this. Thesis 9.6 makes the same check
                # part of PreVote, so pre-votes get it even without CheckQuorum.
                if heard_leader and not m.transfer and (m.pre or self._cfg.check_quorum):
                    return
                if not m.pre:
                    self._become_follower(m.term, None)
            elif kind is VoteResponse and m.pre and not m.reject:
                pass  # a granted pre-vote carries the term we would campaign in
            else:
                self._become_follower(m.term, m.frm if kind in _LEADER_MESSAGES else None)
        elif m.term < self.term:
            if kind is AppendEntries or kind is Heartbeat:
                if self._cfg.check_quorum or self._cfg.pre_vote:
                    # A deposed leader cut off from the group would otherwise never
                    # learn the new term: pre-votes keep terms from rising.
                    self._send(AppendResponse(m.frm, self.id, self.term, 0))
            elif kind is RequestVote and m.pre:
                self._send(VoteResponse(m.frm, self.id, self.term, True, True))
            return
        if kind is RequestVote:
            self._handle_vote_request(m)
        else:
            self._step_role(m)

    def _handle_vote_request(self, m: RequestVote) -> None:
        can_vote = (
            self.vote == m.frm
            or (self.vote is None and self.lead is None)
            or (m.pre and m.term > self.term)
        )
        if can_vote and self._log.is_up_to_date(m.last_index, m.last_term):
            self._send(VoteResponse(m.frm, self.id, m.term, False, m.pre))
            if not m.pre:
                self._election_elapsed = 0
                self.vote = m.frm
        else:
            self._send(VoteResponse(m.frm, self.id, self.term, True, m.pre))

    def _step_follower(self, m: Any) -> None:
        kind = type(m)
        if kind is AppendEntries:
            self._election_elapsed = 0
            self.lead = m.frm
            self._handle_append(m)
        elif kind is Heartbeat:
            self._election_elapsed = 0
            self.lead = m.frm
            self._handle_heartbeat(m)
        elif kind is InstallSnapshot:
            self._election_elapsed = 0
            self.lead = m.frm
            self._handle_snapshot(m)
        elif kind is TimeoutNow:
            self._hup(transfer=True)

    def _step_candidate(self, m: Any) -> None:
        kind = type(m)
        if kind in _LEADER_MESSAGES:
            # Another node won this term (paper §5.2).
            self._become_follower(m.term, m.frm)
            self._step_follower(m)
        elif kind is VoteResponse:
            if m.pre != (self._role is Role.PRECANDIDATE):
                return
            self._tracker.record_vote(m.frm, not m.reject)
            result = self._tally()
            if result is VoteResult.WON:
                if self._role is Role.PRECANDIDATE:
                    self._campaign(pre=False, transfer=False)
                else:
                    self._become_leader()
            elif result is VoteResult.LOST:
                self._become_follower(self.term, None)

    def _step_leader(self, m: Any) -> None:
        kind = type(m)
        if kind is AppendResponse:
            self._handle_append_response(m)
        elif kind is HeartbeatResponse:
            self._handle_heartbeat_response(m)

    # ------------------------------------------------------- follower handlers

    def _handle_append(self, m: AppendEntries) -> None:
        log = self._log
        if m.index < log.committed:
            self._send(AppendResponse(m.frm, self.id, self.term, log.committed))
            return
        if not log.match_term(m.index, m.log_term):
            # Consistency check failed (paper §5.3). Hint the last entry that can
            # still match: at or before the leader's previous index, with a term
            # no newer than the leader's term there.
            hint_index, hint_term = log.find_conflict_by_term(
                min(m.index, log.last_index()), m.log_term
            )
            self._send(
                AppendResponse(m.frm, self.id, self.term, m.index, True, hint_index, hint_term)
            )
            return
        entries = m.entries
        last_new = m.index + len(entries)
        if entries:
            conflict = log.find_conflict(entries)
            if conflict:
                assert conflict > log.committed, "leader tried to overwrite a committed entry"
                if conflict <= log.last_index():
                    conflict = self._truncate_conflict(conflict)
                new = entries[conflict - m.index - 1 :]
                if new:
                    log.extend(new)
                    if self._confs.record(new):
                        self._apply_membership()
        log.commit_to(min(m.commit, last_new))
        self._send(AppendResponse(m.frm, self.id, self.term, last_new))

    def _handle_heartbeat(self, m: Heartbeat) -> None:
        self._log.commit_to(min(m.commit, self._log.last_index()))
        self._send(HeartbeatResponse(m.frm, self.id, self.term, m.round))

    def _handle_snapshot(self, m: InstallSnapshot) -> None:
        log = self._log
        snap = m.snapshot
        if snap.index <= log.committed:
            self._send(AppendResponse(m.frm, self.id, self.term, log.committed))
            return
        if log.match_term(snap.index, snap.term):
            # We hold the snapshot's last entry, so our log already matches up to it.
            log.commit_to(snap.index)
            self._send(AppendResponse(m.frm, self.id, self.term, log.committed))
            return
        log.restore(snap)
        self._pending_snapshot = snap
        self._confs.reset(snap.membership)
        self._apply_membership()
        self._send(AppendResponse(m.frm, self.id, self.term, log.last_index()))

    # --------------------------------------------------------- leader handlers

    def _handle_append_response(self, m: AppendResponse) -> None:
        pr = self._tracker.progress.get(m.frm)
        if pr is None:
            return
        pr.recent_active = True
        log = self._log
        if m.reject:
            next_probe = m.hint_index
            if m.hint_term > 0:
                next_probe, _ = log.find_conflict_by_term(m.hint_index, m.hint_term)
            if pr.maybe_decr_to(m.index, next_probe):
                if pr.state is _REPLICATE:
                    pr.become_probe()
                self._send_append(m.frm, pr, True)
            return
        if not pr.maybe_update(m.index):
            return
        state = pr.state
        if state is _REPLICATE:
            pr.inflights.free_le(m.index)
        elif state is _PROBE:
            pr.become_replicate()
        elif pr.match >= pr.pending_snapshot:
            pr.become_probe()
            pr.become_replicate()
        if m.index > log.committed:
            self._maybe_commit()
        self._bcast_entries = True
        pr.check()
        if m.frm == self._lead_transferee and pr.match == log.last_index():
            # Thesis 3.10: the target is caught up; let it start an election now.
            self._send_timeout_now(m.frm)

    def _handle_heartbeat_response(self, m: HeartbeatResponse) -> None:
        pr = self._tracker.progress.get(m.frm)
        if pr is None:
            return
        pr.recent_active = True
        pr.probe_sent = False
        if pr.state is _REPLICATE and pr.inflights.full():
            # An append or its answer may be lost; free one slot so replication resumes.
            pr.inflights.free_first_one()
        if pr.match < self._log.last_index():
            self._send_append(m.frm, pr, True)
        if m.round > pr.acked_round:
            pr.acked_round = m.round
            if self._reads.has_pending():
                confirmed = self._tracker.quorum_round(self.id, self._reads.round)
                self._reads.release(confirmed, self._read_states)

    # -------------------------------------------------------- leader internals

    def _append_own(self, kind: EntryKind, data: bytes) -> tuple[int, int]:
        log = self._log
        index = log.offset + len(log.entries)
        log.entries.append(new_entry(self.term, index, kind, data))
        pr = self._self_pr
        if pr is not None:
            pr.match = index
            pr.next = index + 1
        if kind is _MEMBERSHIP:
            self._confs.record(log.entries[-1:])
            self._pending_conf_index = index
            self._apply_membership()
        self._bcast_entries = True
        return index, self.term

    def _maybe_commit(self) -> bool:
        log = self._log
        index = self._committed_index()
        if index <= log.committed or not self._may_commit_at(index):
            return False
        old = log.committed
        log.committed = index
        self._after_commit(old, index)
        self._bcast_commit = True
        return True

    def _after_commit(self, old: int, new: int) -> None:
        log = self._log
        if self._uncommitted_bytes:
            # Only this leadership's proposals were counted: every NORMAL entry of
            # our term came through `propose`, and no earlier term's entry did.
            term = self.term
            freed = sum(
                [len(e.data) for e in log.slice(old + 1, new + 1) if e.term == term and e.kind is _NORMAL]
            )
            self._uncommitted_bytes -= freed
            assert self._uncommitted_bytes >= 0, self._uncommitted_bytes
        if self._reads.has_deferred() and log.term(new) == self.term:
            for ctx in self._reads.take_deferred():
                self._start_read(ctx)
        if self._confs.latest_index(log.snap_index) > new or self._pending_conf_index > new:
            return
        membership = self._tracker.membership
        if membership.joint:
            # Paper §6: once C_old,new is committed the leader moves on to C_new.
            self._append_own(_MEMBERSHIP, encode_membership(leave_joint(membership)))
        elif self.id not in membership.voters:
            # Thesis 4.2.2: a leader outside C_new steps down once C_new commits.
            self._step_down_owed = True

    def _send_append(self, to: NodeId, pr: Progress, send_if_empty: bool) -> bool:
        if pr.is_paused():
            return False
        log = self._log
        prev = pr.next - 1
        prev_term = log.term(prev)
        if prev_term is None:
            return self._send_snapshot(to, pr)
        if pr.next > log.last_index():
            if not send_if_empty:
                return False
            entries: tuple[Entry, ...] = ()
            if pr.state is _PROBE:
                pr.probe_sent = True
        else:
            cfg = self._cfg
            entries = log.batch(pr.next, cfg.max_entries_per_msg, cfg.max_bytes_per_msg)
            pr.sent_entries(entries[-1].index)
        self._msgs.append(AppendEntries(to, self.id, self.term, prev, prev_term, entries, log.committed))
        return True

    def _send_snapshot(self, to: NodeId, pr: Progress) -> bool:
        # A follower that has not answered lately may be down; a snapshot is too
        # big to send blindly.
        if not pr.recent_active:
            return False
        snap = self._log.snapshot
        assert snap is not None, "entries are compacted only into a snapshot"
        pr.become_snapshot(snap.index)
        self._send(InstallSnapshot(to, self.id, self.term, snap))
        return True

    def _flush(self) -> None:
        """Send what the leader owes: new entries, the commit index, a heartbeat round."""
        if self._role is not Role.LEADER:
            return
        if self._bcast_entries or self._bcast_commit:
            send_if_empty = self._bcast_commit
            self._bcast_entries = self._bcast_commit = False
            # A one-voter group commits on its own append, with no answer to wait for.
            self._maybe_commit()
            send_if_empty = send_if_empty or self._bcast_commit
            self._bcast_commit = False
            last = self._log.last_index()
            me = self.id
            for pid, pr in self._tracker:
                if pid == me:
                    continue
                sent = self._send_append(pid, pr, send_if_empty)
                while sent and pr.state is _REPLICATE and pr.next <= last:
                    sent = self._send_append(pid, pr, False)
        if self._heartbeat_owed:
            self._bcast_heartbeat()
        if self._step_down_owed:
            self._hand_off()

    def _hand_off(self) -> None:
        """Step down after C_new without us committed; nudge a caught-up voter to run."""
        last = self._log.last_index()
        for pid in sorted(self._tracker.membership.voters):
            pr = self._tracker.progress.get(pid)
            if pr is not None and pr.match == last:
                self._send_timeout_now(pid)
                break
        self._become_follower(self.term, None)

    def _bcast_heartbeat(self) -> None:
        self._heartbeat_owed = False
        rnd = self._reads.next_round(self._now)
        committed = self._log.committed
        me = self.id
        for pid, pr in self._tracker:
            if pid != me:
                self._msgs.append(Heartbeat(pid, me, self.term, min(pr.match, committed), rnd))

    def _start_read(self, ctx: bytes) -> None:
        index = self._log.committed
        if self._tracker.voter_ids() == {self.id} or self._lease_valid():
            self._read_states.append(ReadState(ctx, index))
            return
        self._reads.await_round(ctx, index)
        self._heartbeat_owed = True

    def _send_timeout_now(self, to: NodeId) -> None:
        self._reads.lease_forfeited = True
        self._msgs.append(TimeoutNow(to, self.id, self.term))

    def _send(self, m: Any) -> None:
        self._msgs.append(m)
