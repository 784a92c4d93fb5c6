"""The cluster map (kvorum.cluster.cluster_map): every slot served once, steps refused when stale."""

from __future__ import annotations

import pytest

from kvorum.cluster.cluster_map import (
    FinishMigration,
    Migration,
    NodeInfo,
    SetNode,
    SetReplicas,
    SplitPartition,
    StaleStep,
    StartMigration,
    apply,
    initial,
)
from kvorum.cluster.placement import Site, place
from kvorum.cluster.slots import SLOTS

NODES = [NodeInfo(f"n{i}", "127.0.0.1", 7000 + i, 17000 + i, zone=f"z{i}") for i in range(1, 4)]


def _map(partitions=16):
    return initial(NODES, place([Site(n.id, n.zone) for n in NODES], partitions, 3))


def test_initial_map_serves_every_slot_once_in_even_ranges():
    cmap = _map()
    assert cmap.epoch == 1 and len(cmap.ranges) == 16
    assert [cmap.partition_of(s) for s in (0, 1023, 1024, SLOTS - 1)] == [0, 0, 1, 15]
    assert sum(hi - lo + 1 for lo, hi, _ in cmap.ranges) == SLOTS


def test_a_step_from_an_older_epoch_is_refused_and_changes_nothing():
    cmap = _map()
    step = SetReplicas(cmap.epoch, 3, ("n1", "n2"))
    newer = apply(cmap, step)
    assert newer.epoch == 2 and newer.partitions[3].replicas == ("n1", "n2")
    with pytest.raises(StaleStep, match="epoch 1, the map is at epoch 2"):
        apply(newer, step)  # the same step delivered twice
    assert cmap.partitions[3].replicas != ("n1", "n2")  # maps are values: the old one is unchanged


def test_a_migration_moves_slots_only_when_it_finishes():
    cmap = _map()
    m = Migration(source=0, target=1, lo=10, hi=20)
    started = apply(cmap, StartMigration(cmap.epoch, m))
    assert started.partition_of(15) == 0 and started.migrating(15) == m and started.migrating(21) is None
    with pytest.raises(StaleStep, match="already migrating"):
        apply(started, StartMigration(started.epoch, Migration(0, 2, 20, 30)))
    done = apply(started, FinishMigration(started.epoch, m))
    assert [done.partition_of(s) for s in (9, 10, 20, 21)] == [0, 1, 1, 0]
    assert done.migrations == ()
    with pytest.raises(StaleStep):
        apply(done, FinishMigration(done.epoch, m))  # finishing twice


def test_a_migration_of_slots_another_partition_serves_is_refused():
    cmap = _map()
    with pytest.raises(StaleStep, match="not all served by partition 0"):
        apply(cmap, StartMigration(cmap.epoch, Migration(0, 1, 1000, 1100)))


def test_splitting_a_partition_hands_the_upper_slots_to_a_new_one():
    cmap = _map(4)
    split = apply(cmap, SplitPartition(cmap.epoch, partition=1, at=5000, new=4))
    assert split.partition_of(4999) == 1 and split.partition_of(5000) == 4 and split.partition_of(8191) == 4
    assert split.partition_of(8192) == 2 and split.partitions[4].replicas == cmap.partitions[1].replicas
    with pytest.raises(StaleStep):
        apply(split, SplitPartition(split.epoch, partition=1, at=6000, new=4))


def test_nodes_join_and_change_state_through_steps():
    cmap = _map()
    n4 = NodeInfo("n4", "127.0.0.1", 7004, 17004, zone="z1")
    cmap = apply(cmap, SetNode(cmap.epoch, n4))
    assert cmap.nodes["n4"].zone == "z1"
    cmap = apply(cmap, SetNode(cmap.epoch, NodeInfo("n4", "127.0.0.1", 7004, 17004, zone="z1", state="down")))
    assert cmap.nodes["n4"].state == "down" and cmap.epoch == 3
    with pytest.raises(StaleStep, match="bad replicas"):
        apply(cmap, SetReplicas(cmap.epoch, 0, ("n1", "n9")))
