"""Randomized safety check of the Raft engine: a small seeded world with message
loss, duplication and reordering, partitions, crashes and restarts, compaction,
membership changes and leadership transfers. After every event it checks the
safety properties of the paper's Figure 3 and thesis 6.4:

- Election Safety: at most one leader per term.
- State Machine Safety: no two nodes apply different entries at one index.
- Leader Completeness: a new leader holds every entry applied anywhere.
- Linearizable reads: a ReadState's index is >= every index that was committed
  anywhere when the read barrier was requested.

The same world, run with each deliberate bug, must find a violation; except
"commit-old-term", which needs the three-leader history of the paper's Figure 8
that random schedules almost never produce: test_raft_paper.py drives that
history deterministically instead.
(The full simulator lives in kvorum/sim; this keeps the engine honest on its own.)
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from kvorum.consensus.raft import RaftConfig, RaftNode
from kvorum.consensus.raft.bugs import node_class
from kvorum.consensus.replicated_log import (
    Entry,
    HardState,
    Membership,
    ProposalDropped,
    RestoreState,
    Role,
    Snapshot,
)


class Violation(AssertionError):
    pass


class World:
    def __init__(self, seed: int, bugs: frozenset[str], lease: bool, steps: int) -> None:
        self.rng = random.Random(seed)
        self.bugs = bugs
        self.lease = lease
        self.steps = steps
        self.ids = ["1", "2", "3", "4"]
        self.initial = Membership(frozenset({"1", "2", "3"}))
        self.nodes: dict[str, RaftNode] = {}
        self.disk: dict[str, tuple[HardState, Snapshot | None, list[Entry]]] = {}
        self.down: set[str] = set()
        self.groups: dict[str, int] | None = None
        self.net: list[Any] = []
        self.leader_of_term: dict[int, str] = {}
        self.applied_at: dict[int, Entry] = {}  # index -> entry applied somewhere
        self.reads: dict[bytes, int] = {}  # ctx -> max commit anywhere at request time
        self.read_seq = 0
        for nid in self.ids:
            self.disk[nid] = (HardState(), None, [])
            self.start(nid)

    def config(self, nid: str) -> RaftConfig:
        return RaftConfig(
            id=nid,
            membership=self.initial,
            rng=random.Random(self.rng.randrange(1 << 30)),
            election_tick=10,
            heartbeat_tick=2,
            pre_vote=self.rng.random() < 0.5,
            check_quorum=not (self.lease and "stale-lease" in self.bugs),
            lease_reads=self.lease,
            lease_drift_ticks=2,
            max_entries_per_msg=self.rng.choice([1, 2, 64]),
            max_inflight_msgs=4,
        )

    def start(self, nid: str) -> None:
        hs, snap, entries = self.disk[nid]
        self.nodes[nid] = node_class(self.bugs)(self.config(nid), RestoreState(hs, snap, tuple(entries)))

    def max_commit(self) -> int:
        return max(self.nodes[n].status().commit for n in self.nodes if n not in self.down)

    def reachable(self, a: str, b: str) -> bool:
        if a in self.down or b in self.down:
            return False
        return self.groups is None or self.groups.get(a) == self.groups.get(b)

    # -- checks -----------------------------------------------------------

    def check(self, nid: str) -> None:
        st = self.nodes[nid].status()
        if st.role is Role.LEADER:
            prev = self.leader_of_term.setdefault(st.term, nid)
            if prev != nid:
                raise Violation(f"two leaders in term {st.term}: {prev} and {nid}")
            node = self.nodes[nid]
            for index, e in self.applied_at.items():
                if index >= st.first_index:
                    mine = node.log_entries(index, index + 1)
                    if not mine or mine[0].term != e.term:
                        raise Violation(f"leader {nid} (term {st.term}) lacks applied {e}")

    def handle_ready(self, nid: str) -> None:
        node = self.nodes[nid]
        if not node.has_ready():
            return
        rd = node.ready()
        hs, snap, entries = self.disk[nid]
        if rd.snapshot is not None:
            snap, entries = rd.snapshot, []
        if rd.entries:
            first = rd.entries[0].index
            entries = [e for e in entries if e.index < first] + list(rd.entries)
        if rd.hard_state is not None:
            hs = rd.hard_state
        self.disk[nid] = (hs, snap, entries)
        for e in rd.committed_entries:
            seen = self.applied_at.setdefault(e.index, e)
            if seen != e:
                raise Violation(f"{nid} applied {e} where {seen} was applied")
        for rs in rd.read_states:
            if rs.index < self.reads[rs.ctx]:
                raise Violation(f"read {rs.ctx!r} at {rs.index} misses commit {self.reads[rs.ctx]}")
        self.net.extend(rd.messages)
        node.advance(rd)

    # -- the schedule -------------------------------------------------------

    def leader(self) -> RaftNode | None:
        live = [self.nodes[n] for n in self.nodes if n not in self.down]
        leaders = [n for n in live if n.status().role is Role.LEADER]
        return self.rng.choice(leaders) if leaders else None

    def step(self) -> None:
        rng = self.rng
        x = rng.random()
        up = [n for n in self.ids if n not in self.down]
        if x < 0.15:
            for nid in up:
                self.nodes[nid].tick()
                self.handle_ready(nid)
        elif x < 0.60:
            # Deliver a burst, so that the network keeps up with what ticks produce.
            for _ in range(min(len(self.net), 1 + rng.randrange(12))):
                self.deliver_one()
        elif x < 0.75:
            leader = self.leader()
            if leader is not None:
                try:
                    leader.propose(f"v{rng.randrange(1000)}".encode())
                except ProposalDropped:
                    pass
                self.handle_ready(leader.id)
        elif x < 0.82:
            leader = self.leader()
            if leader is not None:
                self.read_seq += 1
                ctx = f"r{self.read_seq}".encode()
                self.reads[ctx] = self.max_commit()
                try:
                    leader.read_barrier(ctx)
                except ProposalDropped:
                    pass
                self.handle_ready(leader.id)
        elif x < 0.86:
            # Faults last long enough (about ten election timeouts) for the
            # rest of the group to elect a leader and move on without the victim.
            if self.groups is None:
                side = set(rng.sample(self.ids, rng.choice([1, 2])))
                self.groups = {n: int(n in side) for n in self.ids}
            elif rng.random() < 0.1:
                self.groups = None
        elif x < 0.89:
            if self.down:
                if rng.random() < 0.2:
                    self.start(self.down.pop())
            elif len(up) > 1:
                nid = rng.choice(up)
                self.down.add(nid)
                self.net = [m for m in self.net if m.to != nid]
                if rng.random() < 0.5:
                    # A quick reboot: back within the same term, which is when a
                    # forgotten vote can be cast twice.
                    self.down.discard(nid)
                    self.start(nid)
        elif x < 0.91:
            nid = rng.choice(up)
            st = self.nodes[nid].status()
            if st.applied > st.first_index + 4:
                term = self.nodes[nid].log_entries(st.applied, st.applied + 1)[0].term
                self.nodes[nid].compact(Snapshot(st.applied, term, st.membership, b""))
                hs, _, entries = self.disk[nid]
                snap = Snapshot(st.applied, term, st.membership, b"")
                self.disk[nid] = (hs, snap, [e for e in entries if e.index > st.applied])
        elif x < 0.93:
            leader = self.leader()
            if leader is not None:
                voters = set(leader.status().membership.voters)
                spare = [n for n in self.ids if n not in voters]
                if spare and (len(voters) < 3 or rng.random() < 0.5):
                    voters.add(rng.choice(spare))
                    if rng.random() < 0.3 and len(voters) > 2:
                        voters.discard(rng.choice(sorted(voters)))  # swap: joint consensus
                elif len(voters) > 2:
                    voters.discard(rng.choice(sorted(voters)))
                try:
                    leader.change_membership(Membership(frozenset(voters)))
                except ProposalDropped:
                    pass
                self.handle_ready(leader.id)
        elif x < 0.95:
            leader = self.leader()
            if leader is not None:
                try:
                    leader.transfer_leadership(rng.choice(self.ids))
                except ProposalDropped:
                    pass
                self.handle_ready(leader.id)
        else:
            for nid in up:
                self.handle_ready(nid)

    def deliver_one(self) -> None:
        rng = self.rng
        m = self.net.pop(rng.randrange(len(self.net)) if rng.random() < 0.3 else 0)
        if rng.random() < 0.05:
            return  # lost
        if rng.random() < 0.03:
            self.net.append(m)  # duplicated
        if self.reachable(m.frm, m.to):
            self.nodes[m.to].step(m)
            self.check(m.to)
            self.handle_ready(m.to)

    def run(self) -> None:
        for _ in range(self.steps):
            self.step()


@pytest.mark.parametrize("seed", range(12))
def test_safety_under_faults(seed: int) -> None:
    world = World(seed, frozenset(), lease=seed % 2 == 0, steps=3000)
    world.run()
    assert world.applied_at, "nothing was ever committed"


@pytest.mark.parametrize(
    "bug,lease",
    [("no-truncate", False), ("forget-vote", False), ("stale-lease", True)],
)
def test_each_bug_is_caught(bug: str, lease: bool) -> None:
    for seed in range(40):
        world = World(seed, frozenset({bug}), lease=lease, steps=3000)
        try:
            world.run()
        except Violation:
            return
    pytest.fail(f"bug {bug} was not caught in 40 seeds")
