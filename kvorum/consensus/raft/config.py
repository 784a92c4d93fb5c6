"""Raft node configuration: every limit is a named constructor argument, validated once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from kvorum.consensus.raft.membership import check_membership
from kvorum.consensus.replicated_log import EngineConfigError, Membership, NodeId

if TYPE_CHECKING:
    import random


@dataclass(frozen=True, slots=True)
class RaftConfig:
    """How one Raft node behaves. Times are in ticks; the driver decides a tick's length.

    - `id`: this node. It need not be in `membership` (a node that will be added).
    - `membership`: the group's initial membership; the same on every node of a
      fresh group. Ignored on restart when the restored log or snapshot holds one.
    - `rng`: the only source of randomness (election timeout jitter).
    - `election_tick`: a follower that hears no leader for a randomized
      timeout in [election_tick, 2*election_tick) starts an election. A leader
      with `check_quorum` steps down after `election_tick` ticks without
      hearing from a quorum; a leadership transfer is aborted after as long.
    - `heartbeat_tick`: a leader sends heartbeats every `heartbeat_tick` ticks.
    - `pre_vote`: run a PreVote round before raising the term (thesis 9.6).
      A node ignores pre-votes while it hears from a leader (within
      `election_tick`), whatever `check_quorum` says.
    - `check_quorum`: leader steps down without an active quorum; followers
      that heard from a leader within `election_tick` ignore vote requests.
    - `lease_reads`: serve read barriers from a leader lease (thesis 6.4.1)
      instead of a heartbeat round; requires `check_quorum`.
    - `lease_drift_ticks`: the lease lasts `election_tick - lease_drift_ticks`
      ticks from the quorum's last confirmed heartbeat. With `lease_reads` it
      must be at least 1: a follower's first tick may come just after it heard
      the heartbeat, so its promise can end one tick earlier than the leader's
      count says; the rest of the margin covers clock-rate drift.
    - `max_inflight_msgs`: unacknowledged appends per follower in REPLICATE state.
    - `max_entries_per_msg`, `max_bytes_per_msg`: batch limits of one append
      (a single entry larger than the byte limit is still sent alone).
    - `max_uncommitted_bytes`: a leader refuses proposals while the data of its
      uncommitted entries exceeds this (one entry is always admitted).
    - `max_pending_reads`: read barriers a leader holds waiting for confirmation.

    The deliberately broken variants the simulator hunts are not settings:
    they are subclasses of `RaftNode`, built by `kvorum.consensus.raft.bugs`.
    """

    id: NodeId
    membership: Membership
    rng: "random.Random"
    election_tick: int = 10
    heartbeat_tick: int = 1
    pre_vote: bool = True
    check_quorum: bool = True
    lease_reads: bool = False
    lease_drift_ticks: int = 2
    max_inflight_msgs: int = 256
    max_entries_per_msg: int = 256
    max_bytes_per_msg: int = 1 << 20
    max_uncommitted_bytes: int = 1 << 30
    max_pending_reads: int = 4096

    def validate(self) -> None:
        """Raise EngineConfigError (a ValueError) naming the first bad setting."""
        if not isinstance(self.id, str) or not self.id:
            raise EngineConfigError("id must be a non-empty string")
        check_membership(self.membership)
        if self.heartbeat_tick < 1:
            raise EngineConfigError("heartbeat_tick must be >= 1")
        if self.election_tick <= self.heartbeat_tick:
            raise EngineConfigError("election_tick must be greater than heartbeat_tick")
        if not 0 <= self.lease_drift_ticks < self.election_tick:
            raise EngineConfigError("lease_drift_ticks must be in [0, election_tick)")
        if self.lease_reads and self.lease_drift_ticks < 1:
            raise EngineConfigError("lease_drift_ticks must be >= 1 with lease_reads")
        if self.lease_reads and not self.check_quorum:
            raise EngineConfigError("lease_reads requires check_quorum")
        for name in (
            "max_inflight_msgs",
            "max_entries_per_msg",
            "max_bytes_per_msg",
            "max_uncommitted_bytes",
            "max_pending_reads",
        ):
            if getattr(self, name) < 1:
                raise EngineConfigError(f"{name} must be >= 1")
        if not hasattr(self.rng, "randrange"):
            raise EngineConfigError("rng must be a random.Random instance")
