"""Membership-change planning and the encoding of MEMBERSHIP log entries.

Theory of operation
-------------------
A change that adds or removes at most one voter is applied in one step
(thesis 4.1: any two majorities of configurations differing by one server
overlap). Anything larger goes through joint consensus (paper §6, thesis 4.3):
first C_old,new (`voters` = new voters, `voters_outgoing` = old voters), and
once that entry commits the leader appends C_new by itself. `plan_change`
turns a requested target into the ops that reach it and lets `confchange`
(etcd-io/raft's rules and refusals) apply them, with auto-leave on.

A voter that the target demotes to a learner stays an outgoing voter during
the joint phase (a node is never voter and learner at once); C_old,new
records it in `Membership.learners_next`, so leaving the joint phase makes it
a learner. The field is part of the membership itself, so it survives
snapshots and reaches nodes that learn C_old,new from InstallSnapshot.

A node uses the latest membership in its log as soon as the entry is
appended, committed or not (thesis 4.1); a follower that truncates the entry
falls back to the previous one. `MembershipHistory` keeps what that needs:
the membership at the log's snapshot and one per MEMBERSHIP entry after it.
"""

from __future__ import annotations

from typing import Sequence

import msgpack

from kvorum.consensus.raft import confchange
from kvorum.consensus.replicated_log import Entry, EntryKind, Membership


def encode_membership(membership: Membership) -> bytes:
    return msgpack.packb(
        [
            sorted(membership.voters),
            sorted(membership.learners),
            sorted(membership.voters_outgoing),
            sorted(membership.learners_next),
        ],
        use_bin_type=True,
    )


def decode_membership(data: bytes) -> Membership:
    voters, learners, outgoing, learners_next = msgpack.unpackb(data, raw=False)
    return Membership(frozenset(voters), frozenset(learners), frozenset(outgoing), frozenset(learners_next))


def check_membership(m: Membership) -> None:
    """Raise ValueError unless `m` is a well-formed (plain or joint) membership."""
    if m.voters & m.learners:
        raise ValueError("a node cannot be both voter and learner")
    if m.voters_outgoing & m.learners:
        raise ValueError("an outgoing voter cannot be a learner")
    if not m.learners_next <= m.voters_outgoing - m.voters:
        raise ValueError("learners_next must be outgoing voters that leave the voters")


def check_target(target: Membership) -> None:
    """A requested membership must be a plain (non-joint) configuration with voters."""
    if target.voters_outgoing or target.learners_next:
        raise ValueError("request the target membership; the joint phase is planned here")
    if not target.voters:
        raise ValueError("a membership needs at least one voter")
    check_membership(target)


def plan_change(current: Membership, target: Membership) -> Membership:
    """The membership to append next: `target` itself, or C_old,new on the way to it."""
    assert not current.joint
    check_target(target)
    changes = confchange.changes_between(current, target)
    if len(current.voters ^ target.voters) <= 1:
        planned = confchange.simple(confchange.Config(current), changes).membership
        assert planned == target
        return planned
    planned = confchange.enter_joint(confchange.Config(current), changes, auto_leave=True).membership
    # Invariant: leaving the joint phase lands exactly on the target.
    assert leave_joint(planned) == target, (planned, target)
    return planned


def leave_joint(current: Membership) -> Membership:
    """C_new, appended automatically once C_old,new is committed."""
    assert current.joint
    return confchange.leave_joint(confchange.Config(current, auto_leave=True)).membership


class MembershipHistory:
    """The membership in force at the snapshot (or at start), then one per MEMBERSHIP entry held."""

    __slots__ = ("base", "_confs")

    def __init__(self, base: Membership) -> None:
        self.base = base
        # Invariant: (index, membership) pairs in increasing index order.
        self._confs: list[tuple[int, Membership]] = []

    def latest(self) -> Membership:
        """The membership in force: the last one in the log (thesis 4.1)."""
        return self._confs[-1][1] if self._confs else self.base

    def latest_index(self, snap_index: int) -> int:
        """The index of the latest membership entry (`snap_index` when the snapshot holds it)."""
        return self._confs[-1][0] if self._confs else snap_index

    def at(self, index: int) -> Membership:
        """The membership in force once the log up to `index` is applied."""
        found = self.base
        for conf_index, membership in self._confs:
            if conf_index > index:
                break
            found = membership
        return found

    def record(self, entries: Sequence[Entry]) -> bool:
        """Note the MEMBERSHIP entries among `entries` (just appended); True if any."""
        changed = False
        for e in entries:
            if e.kind is EntryKind.MEMBERSHIP:
                assert not self._confs or self._confs[-1][0] < e.index
                self._confs.append((e.index, decode_membership(e.data)))
                changed = True
        return changed

    def truncate_from(self, index: int) -> bool:
        """Forget entries at `index` and after (a follower's conflicting suffix); True if any."""
        if self._confs and self._confs[-1][0] >= index:
            self._confs = [c for c in self._confs if c[0] < index]
            return True
        return False

    def compact(self, index: int) -> Membership:
        """The log up to `index` became a snapshot; return the membership it holds."""
        membership = self.at(index)
        self.base = membership
        self._confs = [c for c in self._confs if c[0] > index]
        return membership

    def reset(self, base: Membership) -> None:
        """The whole log was replaced by a snapshot holding `base`."""
        self.base = base
        self._confs = []
