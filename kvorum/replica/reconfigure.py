"""The leader's next membership step: from where the group is to where its roster says it should be.

Theory of operation
-------------------
An operator's request (add a node, remove one, replace one) lands in the
roster at once, through the log; the engine's membership follows one safe
change at a time, chosen here from the roster, the engine's status and the
followers' progress as the leader sees them. `next_step` is a pure function,
called by the leader's cron until it returns None:

1. a replacement whose joint change has committed is recorded in the roster;
2. a member the roster removed is taken out of the membership; if it is the
   leader itself, leadership is first handed to the most caught-up voter;
3. a member the roster knows but the membership lacks joins as a learner
   (a new voter with an empty log would count in the quorum and stall
   commits while it catches up, so every newcomer starts as a learner);
4. a learner whose goal is voter is promoted once it has caught up (its match
   index within CATCH_UP_ENTRIES_MAX of the leader's last index, and heard
   from lately); one that replaces a voter is swapped in by a single joint
   change, so the group never has fewer voters than before;
5. a voter whose goal is learner is demoted.

One change at a time: nothing is planned while the membership is joint or a
change is still in flight (the engine refuses a second one anyway).
"""

from __future__ import annotations

from dataclasses import dataclass

from kvorum.consensus.replicated_log import Membership, Status
from kvorum.replica.roster import Goal, Roster

# A learner whose log is this close to the leader's is caught up and may vote.
CATCH_UP_ENTRIES_MAX = 64
# Voters of one group; more only slow commits down.
VOTERS_MAX = 7


@dataclass(frozen=True, slots=True)
class Change:
    """Propose `membership` (the engine plans a joint phase if more than one voter changes)."""

    membership: Membership
    why: str


@dataclass(frozen=True, slots=True)
class Transfer:
    """Hand leadership to `to` before the leader's own membership changes."""

    to: str
    why: str


@dataclass(frozen=True, slots=True)
class RosterOp:
    """Record in the roster what the membership already shows."""

    op: str
    arg: str
    why: str


Step = Change | Transfer | RosterOp


def caught_up(status: Status, node_id: str) -> bool:
    progress = status.progress.get(node_id)
    return (progress is not None and progress.recent_active
            and progress.match + CATCH_UP_ENTRIES_MAX >= status.last_index)


def _successor(status: Status, avoid: str) -> str | None:
    """The caught-up voter (other than `avoid` and the leader) with the longest log."""
    best = None
    best_match = -1
    for node_id in sorted(status.membership.voters):
        if node_id in (avoid, status.id) or not caught_up(status, node_id):
            continue
        match = status.progress[node_id].match
        if match > best_match:
            best, best_match = node_id, match
    return best


def next_step(roster: Roster, status: Status, pending_change: bool) -> Step | None:
    """The next step on the leader, or None when there is nothing to do (or it must wait)."""
    m = status.membership
    me = status.id
    if m.joint or pending_change:
        return None
    members = m.members()
    # 1. A replacement swapped in: the old voter is gone from the membership.
    for member in roster.live():
        old = member.replaces
        if old and member.id in m.voters and old not in members:
            return RosterOp("replaced", old, f"{member.id} replaced {old}")
    # 2. Removals.
    for member in sorted(roster.members.values(), key=lambda x: x.id):
        if member.goal is not Goal.REMOVED or member.id not in members:
            continue
        if member.id == me:
            to = _successor(status, me)
            return Transfer(to, f"{me} is being removed") if to else None
        return Change(Membership(m.voters - {member.id}, m.learners - {member.id}), f"remove {member.id}")
    # 3. Newcomers join as learners.
    for member in roster.live():
        if member.id not in members:
            return Change(Membership(m.voters, m.learners | {member.id}), f"add {member.id} as a learner")
    # 4. Promotions of caught-up learners.
    for member in roster.live():
        if member.goal is not Goal.VOTER or member.id not in m.learners or not caught_up(status, member.id):
            continue
        old = member.replaces
        if old and old in m.voters:
            if old == me:
                return Transfer(member.id, f"{me} is being replaced by {member.id}")
            voters = (m.voters - {old}) | {member.id}
            return Change(Membership(voters, m.learners - {member.id}), f"replace {old} by {member.id}")
        if len(m.voters) >= VOTERS_MAX:
            continue
        return Change(Membership(m.voters | {member.id}, m.learners - {member.id}), f"promote {member.id}")
    # 5. Demotions.
    for member in roster.live():
        if member.goal is Goal.LEARNER and member.id in m.voters and len(m.voters) > 1:
            if member.id == me:
                to = _successor(status, me)
                return Transfer(to, f"{me} is being demoted") if to else None
            return Change(Membership(m.voters - {member.id}, m.learners | {member.id}), f"demote {member.id}")
    return None
