"""Deliberately broken Multi-Paxos variants, for proving that the simulator catches them.

Theory of operation
-------------------
As `kvorum.consensus.raft.bugs`: each bug is a mixin that overrides one or
two of `PaxosNode`'s hook methods (the "hooks" section of `node.py`) and says
what it breaks; a node with bugs is a class built from those mixins in front
of `PaxosNode`, so the production engine carries no test-only branch. Two
bugs that override the same hook cannot be combined.
"""

from __future__ import annotations

from typing import ClassVar, Collection

from kvorum.consensus.paxos.node import PaxosNode
from kvorum.consensus.quorum import INDEX_UNBOUNDED, VoteResult
from kvorum.consensus.raft.reads import ReadIndex
from kvorum.consensus.replicated_log import EngineConfigError, Entry, Membership, NodeId
from kvorum.consensus.paxos.messages import Promise


class _Bug(PaxosNode):
    name: ClassVar[str] = ""


class ForgetPromise(_Bug):
    """"forget-promise": the promise is left out of the persisted hard state, so an
    acceptor restarted from disk promises a ballot again to another proposer
    (PMMC: an acceptor's ballot must survive a crash)."""

    name = "forget-promise"

    def _hard_state_tuple(self) -> tuple[int, NodeId | None, int]:
        return (0, None, self._log.committed)


class IgnoreAccepted(_Bug):
    """"ignore-accepted": a new leader proposes its own log in every slot, ignoring
    the values its promises report as accepted or chosen (PMMC's pmax: a leader
    must propose the value accepted in the highest ballot)."""

    name = "ignore-accepted"

    def _recover(self, base: int, promises: list[Promise]) -> list[Entry]:
        own = [p for p in promises if p.frm == self.id]
        return [e for p in own for e in p.entries if e.index > base]


def _minority(voters: frozenset[NodeId], counts: dict[NodeId, int]) -> int:
    if not voters:
        return INDEX_UNBOUNDED
    values = sorted((counts.get(v, 0) for v in voters), reverse=True)
    return values[max(len(voters) // 2 - 1, 0)]


class MinorityQuorum(_Bug):
    """"minority-quorum": phase 1 and phase 2 are won with majority - 1 answers
    (floor(n/2) of n), so two quorums need not intersect."""

    name = "minority-quorum"

    def _tally(self, membership: Membership) -> VoteResult:
        granted = {pid for pid, p in self._promises.items() if not p.reject}
        for half in (membership.voters, membership.voters_outgoing):
            if half and len(granted & half) < max(len(half) // 2, 1):
                return VoteResult.PENDING
        return VoteResult.WON

    def _committed_index(self) -> int:
        m = self._tracker.membership
        matches = {pid: pr.match for pid, pr in self._tracker}
        return min(_minority(m.voters, matches), _minority(m.voters_outgoing, matches))


class LongLease(_Bug):
    """"long-lease": the leader's lease lasts three election timeouts, longer than
    the acceptors' promise to refuse other proposers that it rests on."""

    name = "long-lease"

    def _new_reads(self) -> ReadIndex:
        return ReadIndex(3 * self._cfg.election_tick, self._cfg.lease_drift_ticks)


_MIXINS: tuple[type[_Bug], ...] = (ForgetPromise, IgnoreAccepted, MinorityQuorum, LongLease)
KNOWN_BUGS = frozenset(m.name for m in _MIXINS)
_BY_NAME = {m.name: m for m in _MIXINS}
assert len(_BY_NAME) == len(_MIXINS) and "" not in _BY_NAME, "bug names must be unique and set"
_CLASSES: dict[frozenset[str], type[PaxosNode]] = {}


def _hooks(mixin: type[_Bug]) -> set[str]:
    return {name for name in vars(mixin) if name.startswith("_") and not name.startswith("__")}


for _mixin in _MIXINS:
    # Invariant: a bug changes only the hooks PaxosNode offers for it.
    assert _hooks(_mixin) and all(callable(getattr(PaxosNode, h, None)) for h in _hooks(_mixin)), _mixin


def node_class(bugs: Collection[str]) -> type[PaxosNode]:
    """`PaxosNode` with the named bugs; raises EngineConfigError for unknown or clashing ones."""
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
    cls = type("PaxosNode[" + ",".join(sorted(key)) + "]", tuple(mixins), {}) if mixins else PaxosNode
    _CLASSES[key] = cls
    return cls
