"""Replica placement across fault domains (kvorum.cluster.placement): pure, so checked exhaustively."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvorum.cluster.placement import Site, place, violations


def _sites(zones: int, per_zone: int) -> list[Site]:
    return [Site(f"n{z * per_zone + i + 1}", f"z{z + 1}", f"r{i % 2}") for z in range(zones) for i in range(per_zone)]


def _zone_counts(sites, replicas):
    zone = {s.id: s.zone for s in sites}
    return Counter(zone[r] for r in replicas)


@pytest.mark.parametrize("zones,per_zone", [(3, 1), (3, 2), (3, 3), (4, 2), (5, 1)])
def test_three_zones_never_hold_two_replicas_of_a_partition(zones, per_zone):
    sites = _sites(zones, per_zone)
    placement = place(sites, 16, 3)
    for replicas in placement.values():
        assert len(replicas) == 3 == len(set(replicas))
        assert max(_zone_counts(sites, replicas).values()) == 1
    assert violations(sites, placement, 3) == []


def test_replicas_and_leaders_are_balanced_within_one():
    sites = _sites(3, 2)
    placement = place(sites, 16, 3)
    replicas = Counter(r for rs in placement.values() for r in rs)
    leaders = Counter(rs[0] for rs in placement.values())
    assert max(replicas.values()) - min(replicas.values()) <= 1
    assert max(leaders.values()) - min(leaders[s.id] for s in sites) <= 1


def test_a_dead_node_is_replaced_and_a_returning_one_takes_its_share_back():
    sites = _sites(3, 2)
    before = place(sites, 16, 3)
    dead = "n3"
    survivors = [s for s in sites if s.id != dead]
    healed = place(survivors, 16, 3, current=before)
    for pid, replicas in healed.items():
        assert dead not in replicas and len(replicas) == 3
        assert max(_zone_counts(survivors, replicas).values()) == 1
        # Only the dead node's replica moved.
        assert len(set(replicas) - set(before[pid])) == (1 if dead in before[pid] else 0)
    back = place(sites, 16, 3, current=healed)
    replicas = Counter(r for rs in back.values() for r in rs)
    leaders = Counter(rs[0] for rs in back.values())
    assert replicas[dead] >= 7 and max(replicas.values()) - min(replicas.values()) <= 1
    assert max(leaders.values()) - min(leaders[s.id] for s in sites) <= 1
    moves = sum(len(set(back[p]) - set(healed[p])) for p in back)
    assert moves == replicas[dead]  # nothing moved that did not have to


def test_fewer_zones_than_replicas_spread_as_evenly_as_they_can_and_say_so():
    sites = _sites(2, 3)
    placement = place(sites, 8, 3)
    for replicas in placement.values():
        assert sorted(_zone_counts(sites, replicas).values()) == [1, 2]
    assert violations(sites, placement, 3) == [
        "2 zone(s) for 3 replicas: some partitions keep 2 replicas in one zone"]


def test_fewer_nodes_than_the_replication_factor_place_every_node():
    sites = _sites(2, 1)
    assert place(sites, 4, 3) == {0: ["n1", "n2"], 1: ["n2", "n1"], 2: ["n1", "n2"], 3: ["n2", "n1"]}


def test_placement_is_deterministic_whatever_the_order_of_the_nodes():
    sites = _sites(3, 3)
    shuffled = sites[:]
    random.Random(1).shuffle(shuffled)
    assert place(sites, 32, 3) == place(shuffled, 32, 3)


def test_violations_name_a_crowded_partition():
    sites = _sites(3, 1)
    assert violations(sites, {0: ["n1", "n1", "n2"]}, 3) == [
        "partition 0 has more than 1 replicas in zone z1"]


@settings(max_examples=60, deadline=None)
@given(zones=st.integers(1, 5), per_zone=st.integers(1, 3), partitions=st.integers(1, 40),
       rf=st.integers(1, 5), seed=st.integers(0, 1000))
def test_placement_rules_hold_for_any_cluster(zones, per_zone, partitions, rf, seed):
    sites = _sites(zones, per_zone)
    placement = place(sites, partitions, rf)
    n = min(rf, len(sites))
    cap = -(-n // zones)
    for replicas in placement.values():
        assert len(replicas) == n == len(set(replicas))
        assert max(_zone_counts(sites, replicas).values()) <= cap
    load = Counter(r for rs in placement.values() for r in rs)
    assert max(load.values()) - min(load[s.id] for s in sites) <= 1
    # Losing a node and healing moves only that node's replicas.
    gone = random.Random(seed).choice(sites).id
    rest = [s for s in sites if s.id != gone]
    if len(rest) >= n:
        healed = place(rest, partitions, rf, current=placement)
        for pid in placement:
            assert gone not in healed[pid]
