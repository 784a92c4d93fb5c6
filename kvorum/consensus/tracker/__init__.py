"""Per-follower replication progress, shared by the Raft and Multi-Paxos engines.

Theory of operation
-------------------
A leader keeps one `Progress` per member. It is a small state machine:

    PROBE      we do not know where the follower's log ends. Send one append
               at a time (`probe_sent` pauses further sends) and move `next`
               backwards on each rejection until the follower accepts.
    REPLICATE  the follower accepted an append, so `next` is optimistic: entries
               are streamed without waiting for acks, bounded by an `Inflights`
               window (count of unacknowledged messages).
    SNAPSHOT   the entries the follower needs were compacted away; a snapshot is
               in flight and nothing else is sent until it is acknowledged (or
               given up on, which returns the progress to PROBE).

Transitions (anything not listed keeps the state):

    PROBE     --accepted append------------------> REPLICATE
    REPLICATE --rejected append------------------> PROBE
    any       --needed entries are compacted-----> SNAPSHOT
    SNAPSHOT  --ack at or past the snapshot------> REPLICATE (via PROBE)
    SNAPSHOT  --snapshot given up----------------> PROBE

`ProgressTracker` groups the progresses with the membership they belong to
and answers the quorum questions (commit index, election tally, active
quorum) through `kvorum.consensus.quorum`.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass
from typing import Iterator

from kvorum.consensus.quorum import VoteResult, joint_index, joint_vote
from kvorum.consensus.replicated_log import Membership, NodeId


class ProgressState(enum.Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


class Inflights:
    """The last index of every append sent but not yet acknowledged, oldest first.

    Bounded by `size_max` messages; while full, the follower gets nothing new.
    """

    __slots__ = ("size_max", "_queue")

    def __init__(self, size_max: int) -> None:
        assert size_max >= 1
        self.size_max = size_max
        self._queue: deque[int] = deque()

    def add(self, last_index: int) -> None:
        # Invariant: indexes are added in increasing order and the window is not full.
        assert not self._queue or last_index > self._queue[-1]
        assert len(self._queue) < self.size_max
        self._queue.append(last_index)

    def free_le(self, index: int) -> None:
        """An ack up to `index` frees every message whose last index is <= `index`."""
        q = self._queue
        while q and q[0] <= index:
            q.popleft()

    def free_first_one(self) -> None:
        if self._queue:
            self._queue.popleft()

    def full(self) -> bool:
        return len(self._queue) >= self.size_max

    def reset(self) -> None:
        self._queue.clear()

    def __len__(self) -> int:
        return len(self._queue)


class Progress:
    """What the leader knows about one member's log."""

    __slots__ = (
        "match",
        "next",
        "state",
        "probe_sent",
        "pending_snapshot",
        "snapshot_ticks",
        "recent_active",
        "acked_round",
        "inflights",
    )

    def __init__(self, next_index: int, inflight_max: int) -> None:
        # Invariant: 0 <= match < next. Entries up to `match` are known to be on
        # the follower; `next` is the first entry to send.
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        # PROBE only: an append is outstanding, send no more until an answer arrives.
        self.probe_sent = False
        # SNAPSHOT only: the index of the snapshot in flight.
        self.pending_snapshot = 0
        # SNAPSHOT only: ticks since the snapshot was sent (to give up on a lost one).
        self.snapshot_ticks = 0
        # Set on every message from the member; cleared by each CheckQuorum round.
        self.recent_active = False
        # The latest heartbeat round the member echoed (ReadIndex and leases).
        self.acked_round = 0
        self.inflights = Inflights(inflight_max)
        self.check()

    def check(self) -> None:
        assert 0 <= self.match < self.next, (self.match, self.next)

    def _reset_state(self, state: ProgressState) -> None:
        self.probe_sent = False
        self.pending_snapshot = 0
        self.snapshot_ticks = 0
        self.state = state
        self.inflights.reset()

    def become_probe(self) -> None:
        # Leaving SNAPSHOT, the follower has at least the snapshot (or will ask again).
        if self.state is ProgressState.SNAPSHOT:
            pending = self.pending_snapshot
            self._reset_state(ProgressState.PROBE)
            self.next = max(self.match + 1, pending + 1)
        else:
            self._reset_state(ProgressState.PROBE)
            self.next = self.match + 1

    def become_replicate(self) -> None:
        self._reset_state(ProgressState.REPLICATE)
        self.next = self.match + 1

    def become_snapshot(self, snapshot_index: int) -> None:
        self._reset_state(ProgressState.SNAPSHOT)
        self.pending_snapshot = snapshot_index

    def maybe_update(self, index: int) -> bool:
        """An append up to `index` was accepted. False if the ack is stale."""
        updated = False
        if self.match < index:
            self.match = index
            updated = True
            self.probe_sent = False
        if self.next < index + 1:
            self.next = index + 1
        return updated

    def maybe_decr_to(self, rejected: int, match_hint: int) -> bool:
        """An append whose previous index was `rejected` was refused.

        `match_hint` is the follower's guess of the last index that may match.
        Returns False when the rejection is stale (a later append already
        superseded it) and nothing changed.
        """
        if self.state is ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, match_hint + 1), self.match + 1)
        self.probe_sent = False
        return True

    def is_paused(self) -> bool:
        state = self.state
        if state is ProgressState.PROBE:
            return self.probe_sent
        if state is ProgressState.REPLICATE:
            return self.inflights.full()
        return True

    def sent_entries(self, last_index: int) -> None:
        """Record an append carrying entries up to `last_index`."""
        if self.state is ProgressState.REPLICATE:
            self.next = last_index + 1
            self.inflights.add(last_index)
        elif self.state is ProgressState.PROBE:
            self.probe_sent = True

    def __repr__(self) -> str:
        return (
            f"Progress({self.state.value} match={self.match} next={self.next}"
            f" inflight={len(self.inflights)})"
        )


@dataclass(frozen=True, slots=True)
class ProgressView:
    """An immutable copy of a `Progress`, for `Status` readers."""

    state: str
    match: int
    next: int
    recent_active: bool
    inflight: int


class ProgressTracker:
    """The membership plus one `Progress` per member, and the quorum questions over them."""

    __slots__ = ("membership", "progress", "votes", "inflight_max", "_voters", "_outgoing")

    def __init__(self, membership: Membership, inflight_max: int) -> None:
        self.membership = membership
        self.progress: dict[NodeId, Progress] = {}
        self.votes: dict[NodeId, bool] = {}
        self.inflight_max = inflight_max
        self._voters = membership.voters
        self._outgoing = membership.voters_outgoing

    def set_membership(self, membership: Membership, next_index: int) -> None:
        """Switch to `membership`; new members start probing at `next_index`."""
        self.membership = membership
        self._voters = membership.voters
        self._outgoing = membership.voters_outgoing
        # Sorted, so that every walk over the progress map (and so the order of
        # outgoing messages) is the same in every process, whatever the hash seed.
        old = self.progress
        self.progress = {
            pid: old.get(pid) or Progress(next_index, self.inflight_max)
            for pid in sorted(membership.members())
        }

    def reset_all(self, next_index: int, self_id: NodeId, self_match: int) -> None:
        self.progress = {
            pid: Progress(next_index, self.inflight_max) for pid in sorted(self.membership.members())
        }
        if self_id in self.progress:
            pr = self.progress[self_id]
            pr.match = self_match
            pr.next = max(pr.next, self_match + 1)

    def is_voter(self, pid: NodeId) -> bool:
        return pid in self._voters or pid in self._outgoing

    def voter_ids(self) -> frozenset[NodeId]:
        return self._voters | self._outgoing

    def committed(self) -> int:
        """The largest log index replicated on a (joint) quorum of voters."""
        matches = {pid: pr.match for pid, pr in self.progress.items()}
        return joint_index(self._voters, self._outgoing, matches)

    def quorum_round(self, self_id: NodeId, own_round: int) -> int:
        """The latest heartbeat round echoed by a (joint) quorum, counting ourselves."""
        rounds = {pid: pr.acked_round for pid, pr in self.progress.items()}
        rounds[self_id] = own_round
        return joint_index(self._voters, self._outgoing, rounds)

    def quorum_active(self, self_id: NodeId) -> bool:
        """Did a (joint) quorum talk to us since the last CheckQuorum round?"""
        active = {pid: pr.recent_active or pid == self_id for pid, pr in self.progress.items()}
        return joint_vote(self._voters, self._outgoing, active) is VoteResult.WON

    def record_vote(self, pid: NodeId, granted: bool) -> None:
        self.votes.setdefault(pid, granted)

    def tally(self) -> VoteResult:
        return joint_vote(self._voters, self._outgoing, self.votes)

    def __iter__(self) -> Iterator[tuple[NodeId, Progress]]:
        return iter(self.progress.items())


__all__ = [
    "Inflights",
    "Progress",
    "ProgressState",
    "ProgressTracker",
    "ProgressView",
]
