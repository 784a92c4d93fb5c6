"""Majority and joint-majority math, shared by the Raft and Multi-Paxos engines.

Theory of operation
-------------------
A *majority configuration* is a set of voter ids. Two questions are asked of it:

- "what is the largest index acknowledged by a majority?" (`majority_index`):
  sort the acknowledged indexes and take the one at the quorum position. The same
  function answers "what is the most recent logical time a majority confirmed
  us?" when fed timestamps instead of log indexes, which is how leader leases
  and ReadIndex rounds are computed.
- "did this election succeed?" (`majority_vote`).

A *joint configuration* (C_old,new, Raft paper §6) is two majority
configurations; a decision needs a majority of each, so the joint index is the
minimum of both and a joint vote is won only when both halves are won.

An empty configuration imposes no constraint: its index is `INDEX_UNBOUNDED`
and it wins every vote, so that `joint_*(incoming, frozenset())` equals the
plain majority answer. This module never imports an engine.
"""

from __future__ import annotations

import enum
from typing import Collection, Mapping

# Larger than any real log index or tick count; the neutral element of min().
INDEX_UNBOUNDED = 1 << 62


class VoteResult(enum.Enum):
    PENDING = "pending"  # neither won nor lost yet: some voters have not answered
    WON = "won"
    LOST = "lost"


def majority_index(voters: Collection[str], acked: Mapping[str, int]) -> int:
    """The largest index that at least a majority of `voters` has acknowledged.

    Voters missing from `acked` count as having acknowledged 0.
    """
    n = len(voters)
    if n == 0:
        return INDEX_UNBOUNDED
    if n == 1:
        for v in voters:
            return acked.get(v, 0)
    values = sorted((acked.get(v, 0) for v in voters), reverse=True)
    # With n voters a majority is n//2 + 1 of them; the (n//2)-th largest value
    # (0-based) is acknowledged by exactly that many or more.
    return values[n // 2]


def joint_index(
    incoming: Collection[str], outgoing: Collection[str], acked: Mapping[str, int]
) -> int:
    """The largest index acknowledged by a majority of both halves of a joint config."""
    return min(majority_index(incoming, acked), majority_index(outgoing, acked))


def majority_vote(voters: Collection[str], votes: Mapping[str, bool]) -> VoteResult:
    """Tally `votes` (True = granted) over `voters`; ids outside `voters` are ignored."""
    n = len(voters)
    if n == 0:
        return VoteResult.WON
    granted = rejected = 0
    for v in voters:
        answer = votes.get(v)
        if answer is True:
            granted += 1
        elif answer is False:
            rejected += 1
    quorum = n // 2 + 1
    if granted >= quorum:
        return VoteResult.WON
    if n - rejected < quorum:
        return VoteResult.LOST
    return VoteResult.PENDING


def joint_vote(
    incoming: Collection[str], outgoing: Collection[str], votes: Mapping[str, bool]
) -> VoteResult:
    """A joint election is won when both halves are won, lost when either is lost."""
    a = majority_vote(incoming, votes)
    b = majority_vote(outgoing, votes)
    if a is VoteResult.LOST or b is VoteResult.LOST:
        return VoteResult.LOST
    if a is VoteResult.WON and b is VoteResult.WON:
        return VoteResult.WON
    return VoteResult.PENDING


__all__ = [
    "INDEX_UNBOUNDED",
    "VoteResult",
    "majority_index",
    "joint_index",
    "majority_vote",
    "joint_vote",
]
