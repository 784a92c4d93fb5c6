"""The one-line messages of leader and membership changes (kvorum.server.events): exact words."""

from __future__ import annotations

import logging

from kvorum.consensus.replicated_log import Membership
from kvorum.server.events import (
    leader_change_line,
    log_leader_change,
    log_membership_change,
    membership_change_line,
)


def members(voters, learners=(), outgoing=(), learners_next=()) -> Membership:
    return Membership(frozenset(voters), frozenset(learners), frozenset(outgoing), frozenset(learners_next))


def test_leader_elected_replacing_another():
    assert leader_change_line(0, "n3", "n1", "n2", 7) == "group 0: n2 is leader of term 7 (was n1), seen by n3"


def test_first_leader_and_leader_lost():
    assert leader_change_line(0, "n1", None, "n1", 1) == "group 0: n1 is leader of term 1 (was none), seen by n1"
    assert leader_change_line(2, "n3", "n2", None, 8) == "group 2: no leader in term 8 (was n2), seen by n3"


def test_membership_change_shows_only_the_parts_that_changed_before():
    line = membership_change_line(0, members({"n1", "n2", "n3"}), members({"n1", "n2", "n4"}), 120)
    assert line == "group 0: membership voters={n1,n2,n4} learners={} at index 120 (was voters={n1,n2,n3})"


def test_membership_sets_sort_numerically_and_joint_parts_show_while_joint():
    joint = members({"n2", "n10", "n11"}, learners={"n5"}, outgoing={"n1", "n2", "n10"}, learners_next={"n1"})
    line = membership_change_line(1, members({"n1", "n2", "n10"}, learners={"n5"}), joint, 9)
    assert line == ("group 1: membership voters={n2,n10,n11} learners={n5} voters_outgoing={n1,n2,n10} "
                    "learners_next={n1} at index 9 (was voters={n1,n2,n10} voters_outgoing={} learners_next={})")
    after = membership_change_line(1, joint, members({"n2", "n10", "n11"}, learners={"n1", "n5"}), 10)
    assert after == ("group 1: membership voters={n2,n10,n11} learners={n1,n5} at index 10 "
                     "(was learners={n5} voters_outgoing={n1,n2,n10} learners_next={n1})")


def test_membership_at_start_and_unchanged():
    assert membership_change_line(0, None, members({"n1"}), 0) == "group 0: membership voters={n1} learners={} at index 0"
    same = members({"n1", "n2"})
    assert membership_change_line(0, same, same, 5).endswith("at index 5 (unchanged)")


def test_each_change_is_one_info_line_of_the_raft_logger(caplog):
    with caplog.at_level(logging.INFO, logger="kvorum.raft"):
        log_leader_change(0, "n3", "n1", "n2", 7)
        log_membership_change(0, members({"n1", "n2", "n3"}), members({"n1", "n2", "n4"}), 120)
    assert [(r.name, r.levelno) for r in caplog.records] == [("kvorum.raft", logging.INFO)] * 2
    assert caplog.messages == [
        "group 0: n2 is leader of term 7 (was n1), seen by n3",
        "group 0: membership voters={n1,n2,n4} learners={} at index 120 (was voters={n1,n2,n3})",
    ]
