"""The cluster map: nodes, partitions, which partition serves each hash slot, and the epoch.

Theory of operation
-------------------
The partition manager (a control group replicated like any other) holds one
`ClusterMap`. Every change is a `Step` applied through the control group's
log, and every step names the epoch of the map it was planned on: a step
planned on an older map is refused (`StaleStep`), so a step delivered twice
or late (a retry after a failover, a message from a deposed manager) can
never be applied on top of changes it did not see. Each applied step bumps
the epoch by one.

Invariant: every one of the 16384 slots is served by exactly one partition,
and a slot in migration is also named by its destination, never served by
two partitions at once: the source serves it (answering -ASK for keys that
already moved) until the step that finishes the migration hands it over.

The map is pure data with pure transitions; it does no I/O and holds no
clock. Placement of replicas is `kvorum.cluster.placement`'s business; the
map only records where they are.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from kvorum.cluster.slots import SLOTS

PARTITIONS_DEFAULT = 16
PARTITIONS_MAX = 1024


class StaleStep(Exception):
    """A step planned on an older map (or otherwise not applicable): refused, nothing changed."""


@dataclass(frozen=True, slots=True)
class NodeInfo:
    id: str
    host: str
    port: int
    bus_port: int
    zone: str = "default"
    rack: str = ""
    state: str = "up"  # up | down | removed


@dataclass(frozen=True, slots=True)
class Partition:
    id: int
    replicas: tuple[str, ...]  # the preferred leader first
    leader_hint: str = ""


@dataclass(frozen=True, slots=True)
class Migration:
    """Slots [lo, hi] moving from partition `source` to partition `target`."""

    source: int
    target: int
    lo: int
    hi: int


@dataclass(frozen=True, slots=True)
class ClusterMap:
    epoch: int
    nodes: dict[str, NodeInfo] = field(default_factory=dict)
    partitions: dict[int, Partition] = field(default_factory=dict)
    # slot -> partition id, as (lo, hi, partition) ranges in slot order covering every slot.
    ranges: tuple[tuple[int, int, int], ...] = ()
    migrations: tuple[Migration, ...] = ()

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        # Invariant: the ranges cover every slot once, in order, each naming a known partition.
        expected = 0
        for lo, hi, pid in self.ranges:
            assert lo == expected and lo <= hi < SLOTS, (lo, hi, expected)
            assert pid in self.partitions, pid
            expected = hi + 1
        assert not self.ranges or expected == SLOTS, expected
        for m in self.migrations:
            assert m.source in self.partitions and m.target in self.partitions and m.source != m.target
            assert all(self.partition_of(s) == m.source for s in (m.lo, m.hi)), m

    def partition_of(self, slot: int) -> int:
        """The partition serving `slot` (binary search over the ranges)."""
        ranges = self.ranges
        lo, hi = 0, len(ranges) - 1
        while lo <= hi:
            mid = (lo + hi) // 2
            start, end, pid = ranges[mid]
            if slot < start:
                hi = mid - 1
            elif slot > end:
                lo = mid + 1
            else:
                return pid
        raise KeyError(slot)

    def slots_of(self, pid: int) -> list[tuple[int, int]]:
        return [(lo, hi) for lo, hi, owner in self.ranges if owner == pid]

    def migrating(self, slot: int) -> Migration | None:
        for m in self.migrations:
            if m.lo <= slot <= m.hi:
                return m
        return None


def initial(nodes: list[NodeInfo], placement: dict[int, list[str]]) -> ClusterMap:
    """Epoch 1: the slots split evenly over the placed partitions, in partition order."""
    count = len(placement)
    assert 1 <= count <= PARTITIONS_MAX
    ranges = []
    for pid in range(count):
        lo, hi = pid * SLOTS // count, (pid + 1) * SLOTS // count - 1
        ranges.append((lo, hi, pid))
    partitions = {pid: Partition(pid, tuple(replicas)) for pid, replicas in placement.items()}
    return ClusterMap(1, {n.id: n for n in nodes}, partitions, tuple(ranges))


# --- steps -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Step:
    """A change planned on the map of `epoch`."""

    epoch: int


@dataclass(frozen=True, slots=True)
class SetNode(Step):
    node: NodeInfo


@dataclass(frozen=True, slots=True)
class SetReplicas(Step):
    partition: int
    replicas: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class StartMigration(Step):
    migration: Migration


@dataclass(frozen=True, slots=True)
class FinishMigration(Step):
    migration: Migration


@dataclass(frozen=True, slots=True)
class SplitPartition(Step):
    """Give slots [at, end of its range] of `partition` to the new partition `new` (same replicas)."""

    partition: int
    at: int
    new: int


def apply(cmap: ClusterMap, step: Step) -> ClusterMap:
    """The map after `step`, one epoch later; StaleStep if it was planned on another map."""
    if step.epoch != cmap.epoch:
        raise StaleStep(f"step planned on epoch {step.epoch}, the map is at epoch {cmap.epoch}")
    if isinstance(step, SetNode):
        nodes = dict(cmap.nodes)
        nodes[step.node.id] = step.node
        return dataclasses.replace(cmap, epoch=cmap.epoch + 1, nodes=nodes)
    if isinstance(step, SetReplicas):
        if step.partition not in cmap.partitions:
            raise StaleStep(f"no partition {step.partition}")
        unknown = [r for r in step.replicas if r not in cmap.nodes]
        if unknown or len(set(step.replicas)) != len(step.replicas) or not step.replicas:
            raise StaleStep(f"bad replicas {step.replicas} for partition {step.partition}")
        partitions = dict(cmap.partitions)
        partitions[step.partition] = Partition(step.partition, step.replicas, cmap.partitions[step.partition].leader_hint)
        return dataclasses.replace(cmap, epoch=cmap.epoch + 1, partitions=partitions)
    if isinstance(step, StartMigration):
        m = step.migration
        if any(cmap.partition_of(s) != m.source for s in range(m.lo, m.hi + 1)):
            raise StaleStep(f"slots {m.lo}-{m.hi} are not all served by partition {m.source}")
        if any(not (m.hi < o.lo or o.hi < m.lo) for o in cmap.migrations):
            raise StaleStep(f"slots {m.lo}-{m.hi} are already migrating")
        if m.target not in cmap.partitions:
            raise StaleStep(f"no partition {m.target}")
        return dataclasses.replace(cmap, epoch=cmap.epoch + 1, migrations=cmap.migrations + (m,))
    if isinstance(step, FinishMigration):
        m = step.migration
        if m not in cmap.migrations:
            raise StaleStep(f"no migration {m}")
        ranges = _reassign(cmap.ranges, m.lo, m.hi, m.target)
        migrations = tuple(o for o in cmap.migrations if o != m)
        return dataclasses.replace(cmap, epoch=cmap.epoch + 1, ranges=ranges, migrations=migrations)
    if isinstance(step, SplitPartition):
        if step.new in cmap.partitions or step.partition not in cmap.partitions:
            raise StaleStep(f"cannot split {step.partition} into {step.new}")
        if len(cmap.partitions) >= PARTITIONS_MAX:
            raise StaleStep(f"at most {PARTITIONS_MAX} partitions")
        owned = [(lo, hi) for lo, hi in cmap.slots_of(step.partition) if lo < step.at <= hi]
        if not owned or any(m.source == step.partition for m in cmap.migrations):
            raise StaleStep(f"partition {step.partition} cannot split at slot {step.at}")
        lo, hi = owned[0]
        partitions = dict(cmap.partitions)
        partitions[step.new] = Partition(step.new, cmap.partitions[step.partition].replicas)
        ranges = _reassign(cmap.ranges, step.at, hi, step.new)
        return dataclasses.replace(cmap, epoch=cmap.epoch + 1, partitions=partitions, ranges=ranges)
    raise AssertionError(f"unknown step {step!r}")


def _reassign(ranges: tuple[tuple[int, int, int], ...], lo: int, hi: int, pid: int) -> tuple:
    """The ranges with slots [lo, hi] served by `pid`, neighbours of one owner merged."""
    out: list[tuple[int, int, int]] = []
    for start, end, owner in ranges:
        for piece in ((start, min(end, lo - 1), owner), (max(start, lo), min(end, hi), pid),
                      (max(start, hi + 1), end, owner)):
            if piece[0] <= piece[1]:
                if out and out[-1][2] == piece[2] and out[-1][1] + 1 == piece[0]:
                    out[-1] = (out[-1][0], piece[1], piece[2])
                else:
                    out.append(piece)
    return tuple(out)
