"""Deliberately broken Raft variants, for proving that the simulator catches them.

Theory of operation
-------------------
Each bug is a small mixin that overrides one or two of `RaftNode`'s hook
methods (the "hooks" section of `node.py`: one safety rule each) and says in
its docstring what it breaks and which paper section it violates. A node
with bugs is an instance of a class built from those mixins in front of
`RaftNode`, so the production engine carries no test-only branch and a
correct node never imports this module.

The engine registry (`kvorum.consensus.engines`) builds a buggy node when
`NodeSettings.bugs` names any; tests call `node_class(bugs)` themselves.
Two bugs that override the same hook cannot be combined: which one would
win is not something a reader of a failing seed should have to work out.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Collection, Mapping

from kvorum.consensus.quorum import INDEX_UNBOUNDED, VoteResult, majority_index, majority_vote
from kvorum.consensus.raft.config import RaftConfig
from kvorum.consensus.raft.membership import leave_joint, plan_change
from kvorum.consensus.raft.node import RaftNode
from kvorum.consensus.replicated_log import EngineConfigError, Membership, NodeId, Role


class _Bug(RaftNode):
    """A deliberately broken variant: overrides only hook methods."""

    name: ClassVar[str] = ""


class CommitOldTerm(_Bug):
    """"commit-old-term": the leader commits an entry of an earlier term as soon
    as a majority stores it (paper §5.4.2, Figure 8), and appends no NOOP when
    elected: the NOOP would travel with the old entries and hide the bug."""

    name = "commit-old-term"

    def _may_commit_at(self, index: int) -> bool:
        return True

    def _append_leader_noop(self) -> None:
        # Without the NOOP the new leader replicates earlier terms' entries
        # alone, exactly as in Figure 8. Probe every follower at once, as the
        # NOOP's append would have.
        self._bcast_commit = True


class ForgetVote(_Bug):
    """"forget-vote": `Ready.hard_state.vote` is always None, so a restarted node
    forgets its vote and may vote twice in one term (paper Figure 2)."""

    name = "forget-vote"

    def _hard_state_tuple(self) -> tuple[int, NodeId | None, int]:
        return (self.term, None, self._log.committed)


class StaleLease(_Bug):
    """"stale-lease": with `lease_reads` the leader's lease never expires, and
    `check_quorum` is no longer required, so a deposed leader cut off from the
    group keeps serving reads after a new leader took writes (thesis 6.4.1)."""

    name = "stale-lease"

    def _validate(self, config: RaftConfig) -> None:
        # Everything else is still checked as for a correct node.
        dataclasses.replace(config, check_quorum=True).validate()

    def _lease_valid(self) -> bool:
        return self._role is Role.LEADER and self._cfg.lease_reads


class NoTruncate(_Bug):
    """"no-truncate": a follower keeps its conflicting entries and appends only
    what lies beyond its last index, yet acknowledges the whole append (§5.3)."""

    name = "no-truncate"

    def _truncate_conflict(self, conflict: int) -> int:
        return self._log.last_index() + 1


class JointNewMajorityOnly(_Bug):
    """"joint-new-majority-only": during joint consensus the leader commits, and
    a candidate wins, with a majority of the new voters alone; the old voters'
    majority is ignored (paper §6 requires both)."""

    name = "joint-new-majority-only"

    def _committed_index(self) -> int:
        matches = {pid: pr.match for pid, pr in self._tracker}
        return majority_index(self._tracker.membership.voters, matches)

    def _tally(self) -> VoteResult:
        return majority_vote(self._tracker.membership.voters, self._tracker.votes)


def _index_counting_learners(voters: frozenset[NodeId], learners: frozenset[NodeId], acked: Mapping[NodeId, int]) -> int:
    """A voter majority's size, filled from voters' and learners' acknowledgements alike."""
    if not voters:
        return INDEX_UNBOUNDED
    values = sorted((acked.get(pid, 0) for pid in voters | learners), reverse=True)
    return values[len(voters) // 2]


def _vote_counting_learners(
    voters: frozenset[NodeId], learners: frozenset[NodeId], votes: Mapping[NodeId, bool]
) -> VoteResult:
    if not voters:
        return VoteResult.WON
    quorum = len(voters) // 2 + 1
    answers = [votes.get(pid) for pid in voters | learners]
    if answers.count(True) >= quorum:
        return VoteResult.WON
    if len(answers) - answers.count(False) < quorum:
        return VoteResult.LOST
    return VoteResult.PENDING


class LearnerVotes(_Bug):
    """"learner-votes": a learner's acknowledgement and vote count towards the
    voters' majority: the quorum size comes from the voters, the count from
    every member (thesis 4.2.1: learners are not part of any majority)."""

    name = "learner-votes"

    def _committed_index(self) -> int:
        m = self._tracker.membership
        matches = {pid: pr.match for pid, pr in self._tracker}
        return min(
            _index_counting_learners(m.voters, m.learners, matches),
            _index_counting_learners(m.voters_outgoing, m.learners, matches),
        )

    def _tally(self) -> VoteResult:
        m = self._tracker.membership
        votes = self._tracker.votes
        halves = (
            _vote_counting_learners(m.voters, m.learners, votes),
            _vote_counting_learners(m.voters_outgoing, m.learners, votes),
        )
        if VoteResult.LOST in halves:
            return VoteResult.LOST
        if halves == (VoteResult.WON, VoteResult.WON):
            return VoteResult.WON
        return VoteResult.PENDING

    def _vote_requestees(self) -> list[NodeId]:
        return sorted((self._tracker.voter_ids() | self._tracker.membership.learners) - {self.id})


class ConcurrentChanges(_Bug):
    """"concurrent-changes": the leader accepts a membership change while the
    previous one is still uncommitted, planning it from the latest (uncommitted)
    membership, as if that one were done (thesis 4.1: one change at a time)."""

    name = "concurrent-changes"

    def _next_membership(self, target: Membership) -> Membership:
        current = self._tracker.membership
        return plan_change(leave_joint(current) if current.joint else current, target)


_MIXINS: tuple[type[_Bug], ...] = (
    CommitOldTerm,
    ForgetVote,
    StaleLease,
    NoTruncate,
    JointNewMajorityOnly,
    LearnerVotes,
    ConcurrentChanges,
)
KNOWN_BUGS = frozenset(m.name for m in _MIXINS)
_BY_NAME = {m.name: m for m in _MIXINS}
assert len(_BY_NAME) == len(_MIXINS) and "" not in _BY_NAME, "bug names must be unique and set"

# One class per combination asked for; there are at most 2**len(_MIXINS).
_CLASSES: dict[frozenset[str], type[RaftNode]] = {}


def _hooks(mixin: type[_Bug]) -> set[str]:
    return {name for name in vars(mixin) if name.startswith("_") and not name.startswith("__")}


for _mixin in _MIXINS:
    # Invariant: a bug changes only the hooks RaftNode offers for it.
    assert _hooks(_mixin) and all(callable(getattr(RaftNode, h, None)) for h in _hooks(_mixin)), _mixin


def node_class(bugs: Collection[str]) -> type[RaftNode]:
    """`RaftNode` with the named bugs; raises EngineConfigError for unknown or clashing ones."""
    key = frozenset(bugs)
    cls = _CLASSES.get(key)
    if cls is not None:
        return cls
    unknown = key - KNOWN_BUGS
    if unknown:
        raise EngineConfigError(f"unknown bugs: {sorted(unknown)}; known: {sorted(KNOWN_BUGS)}")
    mixins = [_BY_NAME[name] for name in sorted(key)]
    seen: dict[str, str] = {}
    for mixin in mixins:
        for hook in _hooks(mixin):
            if hook in seen:
                raise EngineConfigError(f"bugs {seen[hook]} and {mixin.name} both change {hook}")
            seen[hook] = mixin.name
    if not mixins:
        cls = RaftNode
    else:
        cls = type("RaftNode[" + ",".join(sorted(key)) + "]", tuple(mixins), {})
    _CLASSES[key] = cls
    return cls
