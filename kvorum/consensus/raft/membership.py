"""Membership-change planning and the encoding of MEMBERSHIP log entries.

Theory of operation
-------------------
A change that adds or removes at most one voter is applied in one step
(thesis 4.1: any two majorities of configurations differing by one server
overlap). Anything larger goes through joint consensus (paper §6, thesis 4.3):
first C_old,new (`voters` = new voters, `voters_outgoing` = old voters), and
once that entry commits the leader appends C_new by itself.

A voter that the target demotes to a learner stays an outgoing voter during
the joint phase (a node is never voter and learner at once); the entry
records it in `learners_next`, so leaving the joint phase makes it a learner.

A node uses the latest membership in its log as soon as the entry is
appended, committed or not (thesis 4.1); a follower that truncates the entry
falls back to the previous one.
"""

from __future__ import annotations

import msgpack

from kvorum.consensus.replicated_log import Membership


def encode_membership(membership: Membership, learners_next: frozenset[str]) -> bytes:
    return msgpack.packb(
        [
            sorted(membership.voters),
            sorted(membership.learners),
            sorted(membership.voters_outgoing),
            sorted(learners_next),
        ],
        use_bin_type=True,
    )


def decode_membership(data: bytes) -> tuple[Membership, frozenset[str]]:
    voters, learners, outgoing, learners_next = msgpack.unpackb(data, raw=False)
    membership = Membership(frozenset(voters), frozenset(learners), frozenset(outgoing))
    return membership, frozenset(learners_next)


def check_target(target: Membership) -> None:
    """A requested membership must be a plain (non-joint) configuration with voters."""
    if target.voters_outgoing:
        raise ValueError("request the target membership; the joint phase is planned here")
    if not target.voters:
        raise ValueError("a membership needs at least one voter")
    if target.voters & target.learners:
        raise ValueError("a node cannot be both voter and learner")


def plan_change(current: Membership, target: Membership) -> tuple[Membership, frozenset[str]]:
    """The membership to append next, and the learners to add when leaving a joint phase."""
    assert not current.joint
    check_target(target)
    if len(current.voters ^ target.voters) <= 1:
        return Membership(target.voters, target.learners), frozenset()
    learners_next = target.learners & current.voters
    joint = Membership(target.voters, target.learners - learners_next, current.voters)
    return joint, learners_next


def leave_joint(current: Membership, learners_next: frozenset[str]) -> Membership:
    """C_new, appended automatically once C_old,new is committed."""
    assert current.joint
    return Membership(current.voters, current.learners | learners_next)
