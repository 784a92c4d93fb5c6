"""The simulated world: one seed, one event queue, every fault.

Theory of operation
-------------------
Everything random comes from one `random.Random(seed)`: message fates and
delays, fsync latency, clock drift, fault choices, client choices; each
engine gets its own `random.Random` seeded from it, drawn when the node starts
or restarts. Time is a float of simulated milliseconds; the event queue is a
heap of (time, sequence number, event) so ties break in scheduling order.
Nothing else (dict order of ids, wall clock, object ids) influences the run,
so one seed always produces the same trace, byte for byte.

Each node ticks at its own rate: `tick_ms * (1 + drift)` with drift drawn
uniformly from [-clock_drift, +clock_drift] once per node. That is what makes
lease reads meaningful: a leader's lease is only safe if the engine's drift
margin covers the difference in tick rates.

A nemesis wakes up every `nemesis_ms_min..max` and does one of the enabled
faults: a partition (isolate one node, split in two, or cut one direction
only), which heals after a while; a crash, followed by a restart from the
node's disk (losing unsynced writes); a membership change through the leader
(add a learner, promote it, remove a voter, possibly the leader, or swap two
voters at once, which needs joint consensus), sometimes followed at once by
another (`membership_burst_rate`), which a correct engine refuses while the
first is uncommitted; a replacement (a voter is destroyed for good, a new
node joins as a learner and, once caught up, is swapped in for it by one
joint change, over several nemesis-independent steps); or a leadership
transfer. Every fault can strike while a membership change is under way,
and `stats` counts how often they met.

The invariant checker runs after every event a node handles, and sweeps all
logs every `sweep_every` events; the client history is checked for
linearizability at the end.
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from kvorum.consensus import engines
from kvorum.consensus.engines import NodeSettings
from kvorum.consensus.replicated_log import Membership, ProposalDropped, Role
from kvorum.sim.clients import Client, ClientKnobs
from kvorum.sim.history import Op, Recorder
from kvorum.sim.invariants import Invariants, InvariantViolation
from kvorum.sim.linearizability import CheckResult, Verdict, check
from kvorum.sim.network import Network, NetworkKnobs, split_links
from kvorum.sim.node import SimNode

TRACE_TAIL_LINES = 40


@dataclass(frozen=True, slots=True)
class SimConfig:
    """Every knob of a run. Times are simulated milliseconds."""

    engine: str = "raft"
    profile: str = "default"  # the PROFILES entry these knobs came from (for replay)
    nodes: int = 3  # initial voters
    spares: int = 1  # extra nodes that membership changes can add
    steps: int = 10_000  # events processed
    tick_ms: float = 10.0
    clock_drift: float = 0.05  # max relative tick-rate error per node
    election_tick: int = 10
    heartbeat_tick: int = 2
    lease_reads: str = "mixed"  # "on", "off", or "mixed" (the seed decides)
    pre_vote: str = "mixed"  # "on", "off", or "mixed"
    # Raft's CheckQuorum; lease reads need it, so "off" only makes sense
    # with lease reads off or with a bug that drops the requirement.
    check_quorum: str = "on"
    # Batch limit of one append; the seed picks one. Small batches make a new
    # leader replicate earlier terms' entries ahead of its own (Figure 8).
    max_entries_per_msg: tuple[int, ...] = (1, 2, 8, 256)
    compact_every: int = 64
    fsync_ms_min: float = 0.5
    fsync_ms_max: float = 4.0
    lose_unsynced: bool = True
    network: NetworkKnobs = field(default_factory=NetworkKnobs)
    clients: ClientKnobs = field(default_factory=ClientKnobs)
    nemesis_ms_min: float = 60.0
    nemesis_ms_max: float = 250.0
    partitions: bool = True
    one_way_partitions: bool = True
    partition_ms_min: float = 40.0
    partition_ms_max: float = 500.0
    crashes: bool = True
    restart_ms_min: float = 10.0
    restart_ms_max: float = 400.0
    # Chance that a node that has just won an election is crashed or cut off
    # within `new_leader_fault_ms_max`, before its first entries spread: the
    # schedules of the paper's Figure 8.
    new_leader_fault_rate: float = 0.1
    new_leader_fault_ms_max: float = 15.0
    # Chance of a crash right after an fsync has released a node's messages:
    # the moment when anything the engine forgot to persist is lost.
    crash_after_fsync_rate: float = 0.002
    membership_changes: bool = True
    # Relative weight of a membership change among the nemesis's faults (each
    # other fault weighs 1): the membership profile makes changes the usual event.
    membership_weight: int = 1
    # Chance that a membership change is followed, within `membership_burst_ms_max`,
    # by another one, while the first is most likely still uncommitted.
    membership_burst_rate: float = 0.2
    membership_burst_ms_max: float = 8.0
    # Chance that another fault (a partition, a crash or a transfer) strikes
    # within `membership_fault_ms_max` of a membership change, while it is in flight.
    membership_fault_rate: float = 0.1
    membership_fault_ms_max: float = 15.0
    # Voters destroyed for good and replaced by a new node, at most this many per
    # run (each adds a node, so the world stays bounded); 0 turns replacements off.
    replacements_max: int = 1
    # A replacement's steps are retried this often, and abandoned after this many tries.
    replace_step_ms: float = 25.0
    replace_tries_max: int = 80
    transfers: bool = True
    sweep_every: int = 400
    # The membership checks (commit quorum, membership change safety). Off,
    # only the paper's four properties and linearizability judge the run: a
    # way to see what a membership bug breaks downstream.
    membership_checks: bool = True
    check_states_max: int = 200_000
    bugs: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        assert self.nodes >= 1 and self.spares >= 0 and self.steps >= 1
        assert 0 <= self.clock_drift < 0.5
        assert self.lease_reads in ("on", "off", "mixed"), self.lease_reads
        assert self.pre_vote in ("on", "off", "mixed"), self.pre_vote
        assert self.check_quorum in ("on", "off", "mixed"), self.check_quorum
        assert self.max_entries_per_msg and min(self.max_entries_per_msg) >= 1
        assert 0 < self.fsync_ms_min <= self.fsync_ms_max
        assert 0 < self.nemesis_ms_min <= self.nemesis_ms_max
        assert self.membership_weight >= 1 and 0 <= self.membership_burst_rate <= 1
        assert 0 <= self.membership_fault_rate <= 1
        assert self.replacements_max >= 0 and self.replace_step_ms > 0 and self.replace_tries_max >= 1


# Named sets of knob overrides. "default" is every fault on at a moderate
# rate. The others make one family of schedules likely so a deliberate bug
# shows up in few seeds; the safety checks are the same in every profile.
PROFILES: dict[str, dict[str, Any]] = {
    "default": {},
    # Figure 8 of the Raft paper: leaders cut off right after winning, before
    # their entries spread, and appends of one entry, so a later leader
    # re-replicates an earlier term's entries one round trip at a time.
    "figure8": dict(
        spares=0,
        steps=20_000,
        max_entries_per_msg=(1,),
        new_leader_fault_rate=0.6,
        new_leader_fault_ms_max=60.0,
        crashes=False,
        membership_changes=False,
        transfers=False,
    ),
    # Crashes right after fsyncs with fast restarts, slow links and no
    # PreVote: a node that forgets what it promised before it crashed (a vote,
    # an acknowledged entry) makes that promise again to someone else.
    "crash-restart": dict(
        spares=0,
        steps=15_000,
        pre_vote="off",
        crash_after_fsync_rate=0.2,
        restart_ms_min=2.0,
        restart_ms_max=20.0,
        network=NetworkKnobs(delay_ms_max=30.0),
        # So many crashes leave many increments with unknown outcomes, and
        # each subset of them sums to a different value the checker must try.
        clients=ClientKnobs(weight_incr=0),
        partitions=False,
        membership_changes=False,
        transfers=False,
    ),
    # Stale leaders: lease reads on, CheckQuorum off, so a deposed leader that
    # is cut off keeps its clients. A correct engine refuses lease reads
    # without CheckQuorum at start (the runner says so); the profile is for
    # `--bug stale-lease`, which must be caught here.
    "stale-leader": dict(steps=12_000, lease_reads="on", check_quorum="off"),
    # Membership changes as the usual event, often two in a row, replacements,
    # transfers, and every other fault in between: two spares (so a learner
    # is often around to promote or swap in), frequent small snapshots (so new
    # members catch up by InstallSnapshot), four initial voters (so removals
    # happen from the start).
    "membership": dict(
        nodes=4,
        spares=2,
        steps=12_000,
        nemesis_ms_min=30.0,
        nemesis_ms_max=120.0,
        membership_weight=4,
        membership_burst_rate=0.5,
        membership_fault_rate=0.4,
        replacements_max=2,
        compact_every=32,
        partition_ms_max=250.0,
    ),
}


def profile_config(name: str, **overrides: Any) -> SimConfig:
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; known: {', '.join(PROFILES)}")
    return dataclasses.replace(SimConfig(), profile=name, **{**PROFILES[name], **overrides})


@dataclass(slots=True)
class RunResult:
    seed: int
    config: SimConfig
    violation: InvariantViolation | None
    linearizability: CheckResult | None
    trace_hash: str
    trace_tail: list[str]
    steps: int
    sim_ms: float
    stats: dict[str, int]
    history: list[Op]

    @property
    def failed(self) -> bool:
        if self.violation is not None:
            return True
        return self.linearizability is not None and self.linearizability.verdict is Verdict.VIOLATION

    def summary(self) -> str:
        if self.violation is not None:
            what = f"{self.violation.invariant} violated: {self.violation.detail}"
        elif self.linearizability is not None and not self.linearizability.ok:
            bad = self.linearizability.failures()
            what = f"linearizability {self.linearizability.verdict.value} on keys {[k.key for k in bad]}"
        else:
            what = "ok"
        return f"seed {self.seed}: {what}"


# Event codes (ints dispatch faster than strings and sort never reaches them).
(
    _TICK,
    _DELIVER,
    _FSYNC,
    _CLIENT_NEXT,
    _CLIENT_SUBMIT,
    _CLIENT_TIMEOUT,
    _NEMESIS,
    _HEAL,
    _RESTART,
    _LEADER_FAULT,
    _MEMBERSHIP,
    _REPLACE,
    _CHANGE_FAULT,
) = range(13)


@dataclass(slots=True)
class _Replacement:
    """A replacement under way: `dead` was destroyed; `new` joins, then takes its place."""

    dead: str
    new: str
    stage: str = "add"  # "add" (as a learner), then "swap" (once caught up)
    tries: int = 0


class World:
    def __init__(self, seed: int, config: SimConfig, verbose: Callable[[str], None] | None = None) -> None:
        self.seed = seed
        self.config = config
        self.rng = random.Random(seed)
        self.now = 0.0
        self._queue: list[tuple[float, int, int, Any, Any]] = []
        self._seq = 0
        self._verbose = verbose
        self._hash = hashlib.sha256()
        self._tail: deque[str] = deque(maxlen=TRACE_TAIL_LINES)
        self.spec = engines.get(config.engine)
        self.nodes: dict[str, SimNode] = {}
        self.invariants = Invariants(self.nodes if config.membership_checks else None)
        self.recorder = Recorder()
        self.network = Network(self.rng, config.network, self._schedule_delivery)
        self.stats = {
            "crashes": 0,
            "restarts": 0,
            "partitions": 0,
            "membership": 0,
            "transfers": 0,
            "lost_writes": 0,
            "replacements": 0,
            # How often membership changes and the other faults met.
            "membership_while_partitioned": 0,
            "membership_while_node_down": 0,
            "faults_while_joint": 0,
        }
        self._partition_id = 0
        self.lease_reads = self._pick(config.lease_reads)
        self.pre_vote = self._pick(config.pre_vote)
        self.check_quorum = self._pick(config.check_quorum)
        self.max_entries_per_msg = self.rng.choice(config.max_entries_per_msg)
        ids = [f"n{i + 1}" for i in range(config.nodes + config.spares)]
        # Every node, including those added later, starts from the group's
        # initial membership: the one the log's first entries were written under.
        self.initial = Membership(voters=frozenset(ids[: config.nodes]))
        for node_id in ids:
            self._add_node(node_id)
        self.destroyed: set[str] = set()  # crashed for good: never restarted
        self._replacement: _Replacement | None = None
        self.clients = [Client(self, f"c{i + 1}", config.clients) for i in range(config.clients.count)]

    def _add_node(self, node_id: str) -> SimNode:
        cfg = self.config
        node = SimNode(self, self.spec, node_id, self.initial)
        node.compact_every = cfg.compact_every
        node.tick_ms = cfg.tick_ms * (1 + self.rng.uniform(-cfg.clock_drift, cfg.clock_drift))
        self.nodes[node_id] = node
        return node

    def _pick(self, knob: str) -> bool:
        return knob == "on" or (knob == "mixed" and self.rng.random() < 0.5)

    # --- tracing -----------------------------------------------------------------

    def trace(self, line: str) -> None:
        text = f"{self.now:10.3f} {line}"
        self._hash.update(text.encode())
        self._hash.update(b"\n")
        self._tail.append(text)
        if self._verbose is not None:
            self._verbose(text)

    def trace_client(self, client: Client, line: str) -> None:
        self.trace(f"{client.id} {line}")

    # --- scheduling ------------------------------------------------------------

    def _push(self, time: float, code: int, a: Any = None, b: Any = None) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (time, self._seq, code, a, b))

    def _schedule_delivery(self, time: float, to: str, message: Any) -> None:
        self._push(time, _DELIVER, message)

    def send(self, message: Any) -> None:
        self.network.send(self.now, message)

    def schedule_fsync(self, node: SimNode) -> None:
        delay = self.rng.uniform(self.config.fsync_ms_min, self.config.fsync_ms_max)
        self._push(self.now + delay, _FSYNC, node.id, node.incarnation)

    def schedule_client_next(self, client: Client, time: float) -> None:
        self._push(time, _CLIENT_NEXT, client)

    def schedule_client_submit(self, client: Client, op_id: int, time: float) -> None:
        self._push(time, _CLIENT_SUBMIT, client, op_id)

    def schedule_client_timeout(self, client: Client, op_id: int, time: float) -> None:
        self._push(time, _CLIENT_TIMEOUT, client, op_id)

    def client_result(self, client_id: str, op_id: int, result: Any) -> None:
        self._client(client_id).answered(op_id, result)

    def client_retry(self, client_id: str, op_id: int, reason: str) -> None:
        self._client(client_id).retry(op_id, reason)

    def _client(self, client_id: str) -> Client:
        return self.clients[int(client_id[1:]) - 1]

    def pick_node(self, rng: random.Random, exclude: str | None = None) -> SimNode | None:
        up = [n for n in self.nodes.values() if n.up and n.id != exclude]
        return rng.choice(up) if up else None

    # --- node life cycle ----------------------------------------------------------

    def _start(self, node: SimNode, restore: Any) -> None:
        settings = NodeSettings(
            id=node.id,
            membership=node.initial,
            rng=random.Random(self.rng.getrandbits(64)),
            restore=restore,
            election_tick=self.config.election_tick,
            heartbeat_tick=self.config.heartbeat_tick,
            lease_reads=self.lease_reads,
            check_quorum=self.check_quorum,
            pre_vote=self.pre_vote,
            max_entries_per_msg=self.max_entries_per_msg,
            bugs=self.config.bugs,
        )
        node.start(settings)
        self._push(self.now + node.tick_ms * self.rng.random(), _TICK, node.id, node.incarnation)

    def _crash(self, node: SimNode, restart: bool = True) -> None:
        self._note_fault()
        lost = node.crash()
        self.stats["crashes"] += 1
        self.stats["lost_writes"] += lost
        if not restart:
            self.destroyed.add(node.id)
            self.trace(f"destroy {node.id} (lost {lost} unsynced writes; it never comes back)")
            return
        self.trace(f"crash {node.id} (lost {lost} unsynced writes)")
        delay = self.rng.uniform(self.config.restart_ms_min, self.config.restart_ms_max)
        self._push(self.now + delay, _RESTART, node.id)

    def _restart(self, node: SimNode) -> None:
        restore = node.disk.restore_state()
        self.stats["restarts"] += 1
        self.trace(
            f"restart {node.id} term={restore.hard_state.term} vote={restore.hard_state.vote} "
            f"commit={restore.hard_state.commit} entries={len(restore.entries)} "
            f"snapshot={restore.snapshot.index if restore.snapshot else 0}"
        )
        self._start(node, restore)

    # --- the nemesis -------------------------------------------------------------

    def _leader(self) -> SimNode | None:
        best: SimNode | None = None
        best_term = -1
        for node in self.nodes.values():
            if node.up:
                status = node.engine.status()
                if status.role is Role.LEADER and status.term > best_term:
                    best, best_term = node, status.term
        return best

    def _note_fault(self) -> None:
        leader = self._leader()
        if leader is not None and leader.engine.status().membership.joint:
            self.stats["faults_while_joint"] += 1

    def _nemesis(self) -> None:
        cfg = self.config
        actions: list[Callable[[], None]] = []
        if cfg.partitions:
            actions.append(self._partition)
        if cfg.crashes:
            actions.append(self._crash_someone)
        if cfg.membership_changes:
            actions.extend([self._change_membership] * cfg.membership_weight)
            if cfg.crashes and self.stats["replacements"] < cfg.replacements_max and self._replacement is None:
                actions.append(self._replace)
        if cfg.transfers:
            actions.append(self._transfer)
        if actions:
            self.rng.choice(actions)()
            self._push(self.now + self.rng.uniform(cfg.nemesis_ms_min, cfg.nemesis_ms_max), _NEMESIS)

    def _partition(self) -> None:
        self._note_fault()
        cfg, rng = self.config, self.rng
        ids = [i for i in self.nodes if i not in self.destroyed]
        shapes = ["isolate", "isolate-leader", "split", "one-way"]
        shape = rng.choice(shapes if cfg.one_way_partitions else shapes[:3])
        rng.shuffle(ids)
        leader = self._leader()
        if shape == "isolate-leader" and leader is not None:
            # The leader keeps its clients but loses its followers: the case
            # lease reads must get right.
            side_a, side_b = [leader.id], [i for i in ids if i != leader.id]
        elif shape.startswith("isolate"):
            side_a, side_b = ids[:1], ids[1:]
        else:
            cut = rng.randint(1, len(ids) - 1)
            side_a, side_b = ids[:cut], ids[cut:]
        side_a.sort()
        side_b.sort()
        self.network.partition(split_links(side_a, side_b, one_way=shape == "one-way"))
        self._partition_id += 1
        self.stats["partitions"] += 1
        arrow = "->|" if shape == "one-way" else "|"
        self.trace(f"partition #{self._partition_id} {shape}: {','.join(side_a)} {arrow} {','.join(side_b)}")
        self._push(self.now + rng.uniform(cfg.partition_ms_min, cfg.partition_ms_max), _HEAL, self._partition_id)

    def _may_crash(self) -> bool:
        # Keep a quorum of every voter set up so the run keeps making progress;
        # a destroyed node counts as down for as long as it is still a voter.
        voters = self._voters()
        down = sum(1 for v in voters if v not in self.nodes or not self.nodes[v].up)
        return down < max(1, (len(voters) - 1) // 2)

    def _crash_someone(self) -> None:
        if not self._may_crash():
            return
        leader = self._leader()
        node = leader if leader is not None and self.rng.random() < 0.3 else self.pick_node(self.rng)
        if node is not None:
            self._crash(node)

    def new_leader(self, node: SimNode) -> None:
        """A node just won an election; maybe strike it before its entries spread."""
        cfg = self.config
        if (cfg.crashes or cfg.partitions) and self.rng.random() < cfg.new_leader_fault_rate:
            delay = self.rng.uniform(0, cfg.new_leader_fault_ms_max)
            self._push(self.now + delay, _LEADER_FAULT, node.id, node.incarnation)

    def _leader_fault(self, node: SimNode) -> None:
        cfg = self.config
        if cfg.crashes and (not cfg.partitions or self.rng.random() < 0.5) and self._may_crash():
            self.trace(f"strike new leader {node.id}")
            self._crash(node)
        elif cfg.partitions:
            self._note_fault()
            others = sorted(set(self.nodes) - {node.id} - self.destroyed)
            self.network.partition(split_links([node.id], others, one_way=False))
            self._partition_id += 1
            self.stats["partitions"] += 1
            self.trace(f"partition #{self._partition_id} strike new leader: {node.id} | {','.join(others)}")
            delay = self.rng.uniform(cfg.partition_ms_min, cfg.partition_ms_max)
            self._push(self.now + delay, _HEAL, self._partition_id)

    def _voters(self) -> frozenset[str]:
        """Both halves of the leader's membership; without a leader, anyone's."""
        leader = self._leader()
        if leader is not None:
            m = leader.engine.status().membership
            return m.voters | m.voters_outgoing
        voters: frozenset[str] = frozenset()
        for node in self.nodes.values():
            if node.up:
                m = node.engine.status().membership
                voters |= m.voters | m.voters_outgoing
        return voters

    def _change_membership(self) -> None:
        leader = self._leader()
        if leader is None:
            return
        rng = self.rng
        # During a joint phase (or with a change still uncommitted) the target
        # is built from the incoming voters; a correct engine refuses it.
        m = leader.engine.status().membership
        outside = sorted(set(self.nodes) - m.members() - self.destroyed)
        voters = sorted(m.voters)
        # A replacement's newcomer is the replacement's to move.
        replacing = self._replacement.new if self._replacement is not None else None
        learners = sorted(m.learners - {replacing})
        options: list[tuple[str, Membership]] = []
        if outside:
            new = rng.choice(outside)
            options.append((f"add learner {new}", Membership(m.voters, m.learners | {new})))
        if learners and len(voters) < 5:
            new = rng.choice(learners)
            options.append((f"promote {new}", Membership(m.voters | {new}, m.learners - {new})))
        if len(voters) > 3:
            old = rng.choice(voters)
            options.append((f"remove {old}", Membership(m.voters - {old}, m.learners)))
        if learners and len(voters) >= 3:
            new, old = rng.choice(learners), rng.choice(voters)
            options.append((f"swap {old} for {new}", Membership((m.voters - {old}) | {new}, m.learners - {new})))
        if not options:
            return
        what, target = rng.choice(options)
        if self._propose_membership(leader, what, target) and rng.random() < self.config.membership_burst_rate:
            self._push(self.now + rng.uniform(0, self.config.membership_burst_ms_max), _MEMBERSHIP)

    def _propose_membership(self, leader: SimNode, what: str, target: Membership) -> bool:
        try:
            index, term = leader.engine.change_membership(target)
        except ProposalDropped as err:
            self.trace(f"membership {what} via {leader.id} refused: {err}")
            return False
        self.stats["membership"] += 1
        if self.network.blocked:
            self.stats["membership_while_partitioned"] += 1
        if any(not self.nodes[v].up for v in leader.engine.status().membership.members() if v in self.nodes):
            self.stats["membership_while_node_down"] += 1
        self.trace(f"membership {what} via {leader.id} at ({index},{term})")
        leader.drain()
        if self.rng.random() < self.config.membership_fault_rate:
            self._push(self.now + self.rng.uniform(0, self.config.membership_fault_ms_max), _CHANGE_FAULT)
        return True

    def _change_fault(self) -> None:
        """Strike while a membership change is in flight."""
        cfg = self.config
        faults: list[Callable[[], None]] = []
        if cfg.partitions:
            faults.append(self._partition)
        if cfg.crashes:
            faults.append(self._crash_someone)
        if cfg.transfers:
            faults.append(self._transfer)
        if faults:
            self.rng.choice(faults)()

    # --- replacing a node that is gone for good ------------------------------------

    def _replace(self) -> None:
        """Destroy a voter, start a new node in its place and begin adding it."""
        leader = self._leader()
        if leader is None or not self._may_crash():
            return
        m = leader.engine.status().membership
        if m.joint:
            return
        up = sorted(v for v in m.voters if v in self.nodes and self.nodes[v].up)
        if not up:
            return
        dead = self.nodes[self.rng.choice(up)]
        new = self._add_node(f"n{len(self.nodes) + 1}")
        self.trace(f"replace {dead.id} by {new.id}")
        self._crash(dead, restart=False)
        self._start(new, None)
        self._replacement = _Replacement(dead.id, new.id)
        self._push(self.now + self.config.replace_step_ms, _REPLACE)

    def _replace_step(self) -> None:
        """One try at the replacement's next step: add the learner, or swap it in once caught up."""
        job = self._replacement
        assert job is not None
        job.tries += 1
        if job.tries > self.config.replace_tries_max:
            self.trace(f"replace {job.dead} by {job.new}: abandoned at stage {job.stage}")
            self._replacement = None
            return
        leader = self._leader()
        if leader is not None:
            self._replace_with(leader, job)
        if self._replacement is not None:
            self._push(self.now + self.config.replace_step_ms, _REPLACE)

    def _replace_with(self, leader: SimNode, job: _Replacement) -> None:
        status = leader.engine.status()
        m = status.membership
        if m.joint:
            return
        if job.new in m.voters and job.dead in m.voters:
            # Another change made it a voter beside the destroyed one: take that one out.
            self._propose_membership(leader, f"remove {job.dead}", Membership(m.voters - {job.dead}, m.learners))
            return
        if job.new in m.voters:
            # In place (the swap made it a voter).
            self.stats["replacements"] += 1
            self.trace(f"replace {job.dead} by {job.new}: done")
            self._replacement = None
            return
        if job.new not in m.learners:
            job.stage = "add"
            self._propose_membership(leader, f"add learner {job.new}", Membership(m.voters, m.learners | {job.new}))
            return
        job.stage = "swap"
        new = self.nodes[job.new]
        if not new.up or new.engine.status().commit < status.commit:
            return  # not caught up yet
        voters = (m.voters - {job.dead}) | {job.new}
        self._propose_membership(leader, f"swap {job.dead} for {job.new}", Membership(voters, m.learners - {job.new}))

    def _transfer(self) -> None:
        leader = self._leader()
        if leader is None:
            return
        voters = sorted(leader.engine.status().membership.voters - {leader.id})
        if not voters:
            return
        to = self.rng.choice(voters)
        try:
            leader.engine.transfer_leadership(to)
        except ProposalDropped as err:
            self.trace(f"transfer leadership {leader.id} -> {to} refused: {err}")
            return
        self._note_fault()
        self.stats["transfers"] += 1
        self.trace(f"transfer leadership {leader.id} -> {to}")
        leader.drain()

    # --- the main loop -------------------------------------------------------------

    def start(self) -> None:
        """Start every node, the clients and the nemesis (`run` does this first)."""
        cfg = self.config
        self.trace(
            f"seed {self.seed} engine {cfg.engine} nodes {sorted(self.nodes)} lease_reads {self.lease_reads} "
            f"check_quorum {self.check_quorum} pre_vote {self.pre_vote} batch {self.max_entries_per_msg} bugs {sorted(cfg.bugs)} ticks {[round(n.tick_ms, 3) for n in self.nodes.values()]}"
        )
        for node in self.nodes.values():
            self._start(node, None)
        for client in self.clients:
            self._push(self.rng.uniform(0, cfg.tick_ms * cfg.election_tick), _CLIENT_NEXT, client)
        self._push(self.rng.uniform(cfg.nemesis_ms_min, cfg.nemesis_ms_max) * 2, _NEMESIS)

    def run_until(self, done: Callable[[], bool], steps_max: int) -> bool:
        """Handle events until `done()` holds (True) or `steps_max` events passed (False).

        For scripted scenarios: after `start()`, a test alternates its own
        moves (a partition, a membership change) with stretches of the world's
        events. Invariant violations propagate as InvariantViolation.
        """
        for _ in range(steps_max):
            if done():
                return True
            if not self._queue:
                return False
            self._step()
        return done()

    def run(self) -> RunResult:
        cfg = self.config
        self.start()
        violation: InvariantViolation | None = None
        steps = 0
        try:
            while steps < cfg.steps and self._queue:
                steps += 1
                self._step()
                if steps % cfg.sweep_every == 0:
                    self.invariants.sweep(list(self.nodes.values()))
            self.invariants.sweep(list(self.nodes.values()))
        except InvariantViolation as err:
            violation = err
            self.trace(f"VIOLATION {err}")
        history = self.recorder.history()
        result = None
        if violation is None:
            result = check(history, cfg.check_states_max)
            self.trace(f"linearizability {result.verdict.value} over {len(history)} ops")
        return RunResult(
            seed=self.seed,
            config=cfg,
            violation=violation,
            linearizability=result,
            trace_hash=self._hash.hexdigest(),
            trace_tail=list(self._tail),
            steps=steps,
            sim_ms=self.now,
            stats=dict(self.stats, messages=self.network.sent, dropped=self.network.dropped, ops=len(history)),
            history=history,
        )

    def _step(self) -> None:
        time, _, code, a, b = heapq.heappop(self._queue)
        self.now = time
        if code == _DELIVER:
            node = self.nodes[a.to]
            if not node.up:
                self.trace(f"lost {type(a).__name__} {a.frm}->{a.to} t{a.term}: {a.to} is down")
            elif not self.network.deliverable(a):
                self.trace(f"lost {type(a).__name__} {a.frm}->{a.to} t{a.term}: partitioned")
            else:
                self.trace(f"deliver {type(a).__name__} {a.frm}->{a.to} t{a.term}")
                node.receive(a)
        elif code == _TICK:
            node = self.nodes[a]
            if node.up and node.incarnation == b:
                self.trace(f"tick {a}")
                node.tick()
                self._push(time + node.tick_ms, _TICK, a, b)
        elif code == _FSYNC:
            node = self.nodes[a]
            if node.up and node.incarnation == b:
                self.trace(f"fsync {a}")
                node.fsync_done()
                if self.config.crashes and self.rng.random() < self.config.crash_after_fsync_rate and self._may_crash():
                    self._crash(node)
        elif code == _CLIENT_NEXT:
            a.next_op()
        elif code == _CLIENT_SUBMIT:
            a.submit(b)
        elif code == _CLIENT_TIMEOUT:
            a.timed_out(b)
        elif code == _NEMESIS:
            self._nemesis()
        elif code == _HEAL:
            if a == self._partition_id:
                self.network.heal()
                self.trace(f"heal partition #{a}")
        elif code == _RESTART:
            if a not in self.destroyed:
                self._restart(self.nodes[a])
        elif code == _LEADER_FAULT:
            node = self.nodes[a]
            if node.up and node.incarnation == b:
                self._leader_fault(node)
        elif code == _MEMBERSHIP:
            self._change_membership()
        elif code == _REPLACE:
            self._replace_step()
        elif code == _CHANGE_FAULT:
            self._change_fault()
