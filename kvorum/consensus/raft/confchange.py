"""Applying membership changes op by op, with etcd-io/raft's confchange semantics.

Theory of operation
-------------------
A change is a list of single ops on node ids: make a voter (`v`), make a
learner (`l`), remove (`r`), or update (`u`, which changes no membership and
exists so that a caller can carry data through the same path). Three
transitions take such a list, each refusing what would be unsafe before it
touches anything:

- `simple`: applies the ops to a plain membership; at most one voter may
  change (thesis 4.1: majorities of two configurations that differ by one
  voter overlap).
- `enter_joint`: copies the voters into the outgoing half, then applies the
  ops to the incoming half (C_old,new, thesis 4.3). A voter demoted to a
  learner keeps voting in the outgoing half and waits in `learners_next`, as
  a node is never voter and learner at once. `auto_leave` records whether the
  joint phase should be left without being asked; kvorum's leader always
  leaves it on its own once C_old,new commits, and plans with it on.
- `leave_joint`: drops the outgoing half and turns `learners_next` into learners.

Ops are idempotent (removing an absent node, adding a present one), a later
op on a node overrides an earlier one, and ops on different nodes commute.
An empty node id is refused: kvorum has no reserved id meaning "no node".
`changes_between` lists the ops that lead from one plain membership to
another, which is how `membership.plan_change` plans a requested target.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Iterable

from kvorum.consensus.replicated_log import Membership, NodeId


class ConfChangeError(ValueError):
    """The change is refused; the membership it was applied to is unchanged."""


class Op(enum.Enum):
    VOTER = "v"
    LEARNER = "l"
    REMOVE = "r"
    UPDATE = "u"


@dataclass(frozen=True, slots=True)
class Change:
    op: Op
    node: NodeId


@dataclass(frozen=True, slots=True)
class Config:
    """A membership and whether its joint phase is left without being asked."""

    membership: Membership
    auto_leave: bool = False

    def __post_init__(self) -> None:
        # Invariant: only a joint membership can be waiting to be left.
        assert self.membership.joint or not self.auto_leave


def simple(config: Config, changes: Iterable[Change]) -> Config:
    """Apply `changes` to a plain membership, changing at most one voter."""
    current = config.membership
    if current.joint:
        raise ConfChangeError("can't apply simple config change in joint config")
    voters, learners, learners_next = _apply(current, changes)
    if len(voters ^ current.voters) > 1:
        raise ConfChangeError("more than one voter changed without entering joint config")
    assert not learners_next  # demotions wait in learners_next only in a joint phase
    return _checked(Config(Membership(voters, learners)))


def enter_joint(config: Config, changes: Iterable[Change], auto_leave: bool) -> Config:
    """C_old,new: the current voters become the outgoing half; `changes` shape the incoming one."""
    current = config.membership
    if current.joint:
        raise ConfChangeError("config is already joint")
    if not current.voters:
        raise ConfChangeError("can't make a zero-voter config joint")
    outgoing = Membership(current.voters, current.learners, current.voters)
    voters, learners, learners_next = _apply(outgoing, changes)
    return _checked(Config(Membership(voters, learners, current.voters, learners_next), auto_leave))


def leave_joint(config: Config) -> Config:
    """C_new: the incoming half alone; demoted voters become learners."""
    current = config.membership
    if not current.joint:
        raise ConfChangeError("can't leave a non-joint config")
    return _checked(Config(Membership(current.voters, current.learners | current.learners_next)))


def changes_between(current: Membership, target: Membership) -> list[Change]:
    """The ops that turn plain `current` into plain `target`, one per node that changes."""
    assert not current.joint and not target.joint
    changes = []
    for node in sorted(current.members() | target.members()):
        if node in target.voters and node not in current.voters:
            changes.append(Change(Op.VOTER, node))
        elif node in target.learners and node not in current.learners:
            changes.append(Change(Op.LEARNER, node))
        elif node not in target.members() and node in current.members():
            changes.append(Change(Op.REMOVE, node))
    return changes


def _apply(
    current: Membership, changes: Iterable[Change]
) -> tuple[frozenset[NodeId], frozenset[NodeId], frozenset[NodeId]]:
    """Voters, learners and learners_next after `changes`; outgoing voters are not touched."""
    outgoing = current.voters_outgoing
    voters, learners, learners_next = set(current.voters), set(current.learners), set(current.learners_next)
    for change in changes:
        node = change.node
        if not node:
            raise ConfChangeError("a node id must be a non-empty string")
        op = change.op
        if op is Op.UPDATE or (op is Op.LEARNER and node in learners):
            continue
        voters.discard(node)
        learners.discard(node)
        learners_next.discard(node)
        if op is Op.VOTER:
            voters.add(node)
        elif op is Op.LEARNER:
            # An outgoing voter keeps voting there until the joint phase is left.
            (learners_next if node in outgoing else learners).add(node)
    if not voters:
        raise ConfChangeError("removed all voters")
    return frozenset(voters), frozenset(learners), frozenset(learners_next)


def _checked(config: Config) -> Config:
    m = config.membership
    # Invariants: a node is voter or learner, never both; learners_next wait in
    # the outgoing half; a plain membership has no learners_next.
    assert not m.voters & m.learners and not m.voters_outgoing & m.learners, m
    assert m.learners_next <= m.voters_outgoing - m.voters, m
    return config
