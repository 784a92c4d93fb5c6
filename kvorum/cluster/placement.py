"""Where a partition's replicas live: spread across fault domains, balanced across nodes.

Theory of operation
-------------------
Every node declares a `zone` (a power source, a switch, a data centre room)
and optionally a `rack` within it. A partition's replicas must not share a
failure: `place` never puts two replicas of one partition in one zone while
another zone has room, and within a zone prefers distinct racks. Among the
nodes the rule allows, it picks the one holding the fewest replicas, so load
stays even; then it names one replica of each partition its preferred leader
so that every node leads within one partition of its fair share.

`place` is incremental: given the current placement it keeps every replica
that is still allowed (a move costs a snapshot transfer), replaces those on
nodes that are gone, and moves replicas off overloaded nodes only while that
keeps the spread rule. The same inputs always give the same placement (ties
break by node id), so any node that runs it on the same cluster map agrees.

`violations` says when the rule cannot be met (fewer zones than replicas
leaves some zone holding two), for `kvorum cluster status` to report.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

REPLICATION_FACTOR_DEFAULT = 3


@dataclass(frozen=True, slots=True)
class Site:
    """A node as placement sees it."""

    id: str
    zone: str
    rack: str = ""


def _zone_cap(replicas: int, zones: int) -> int:
    """The most replicas of one partition any zone may hold: an even spread, rounded up."""
    return -(-replicas // max(1, zones))


@dataclass(slots=True)
class _Load:
    replicas: Counter
    leaders: Counter


def _allowed(site: Site, chosen: list[Site], cap: int) -> bool:
    return site.id not in {s.id for s in chosen} and sum(s.zone == site.zone for s in chosen) < cap


def _score(site: Site, chosen: list[Site], load: _Load) -> tuple:
    """Lower is better: a fresh zone, then a fresh rack, then the least loaded node."""
    in_zone = sum(s.zone == site.zone for s in chosen)
    in_rack = sum(s.zone == site.zone and s.rack == site.rack for s in chosen)
    return (in_zone, in_rack, load.replicas[site.id], site.id)


def place(sites: list[Site], partitions: int, replication_factor: int = REPLICATION_FACTOR_DEFAULT,
          current: dict[int, list[str]] | None = None) -> dict[int, list[str]]:
    """partition id (0..partitions-1) -> replica node ids, the preferred leader first."""
    assert partitions >= 1 and replication_factor >= 1
    by_id = {s.id: s for s in sorted(sites, key=lambda s: s.id)}
    assert len(by_id) == len(sites), "node ids must be distinct"
    rf = min(replication_factor, len(by_id))
    zones = len({s.zone for s in by_id.values()})
    cap = _zone_cap(rf, zones)
    current = current or {}
    load = _Load(Counter(), Counter())
    placed: dict[int, list[Site]] = {}
    # Keep what is still allowed, in the current order.
    for pid in range(partitions):
        kept: list[Site] = []
        for node_id in current.get(pid, []):
            site = by_id.get(node_id)
            if site is not None and len(kept) < rf and _allowed(site, kept, cap):
                kept.append(site)
        placed[pid] = kept
        load.replicas.update(s.id for s in kept)
    # Fill the missing replicas, partition by partition, from the best allowed node.
    for pid in range(partitions):
        chosen = placed[pid]
        while len(chosen) < rf:
            candidates = [s for s in by_id.values() if _allowed(s, chosen, cap)]
            if not candidates:
                break  # fewer nodes than the rule needs; violations() reports it
            best = min(candidates, key=lambda s: _score(s, chosen, load))
            chosen.append(best)
            load.replicas[best.id] += 1
    _rebalance(placed, by_id, load, rf, cap)
    return {pid: _lead(chosen, load) for pid, chosen in placed.items()}


def _rebalance(placed: dict[int, list[Site]], by_id: dict[str, Site], load: _Load, rf: int, cap: int) -> None:
    """Move replicas from the most to the least loaded node while the spread rule allows it."""
    total = sum(len(c) for c in placed.values())
    ceiling = -(-total // max(1, len(by_id)))
    moved = True
    while moved:
        moved = False
        for heavy in sorted(by_id.values(), key=lambda s: (-load.replicas[s.id], s.id)):
            if load.replicas[heavy.id] <= ceiling:
                break
            for pid in sorted(placed):
                chosen = placed[pid]
                if heavy not in chosen:
                    continue
                others = [s for s in chosen if s is not heavy]
                light = [s for s in by_id.values() if _allowed(s, others, cap) and s is not heavy
                         and load.replicas[s.id] + 1 < load.replicas[heavy.id]]
                if not light:
                    continue
                best = min(light, key=lambda s: _score(s, others, load))
                chosen[chosen.index(heavy)] = best
                load.replicas[heavy.id] -= 1
                load.replicas[best.id] += 1
                moved = True
                break
            if moved:
                break


def _lead(chosen: list[Site], load: _Load) -> list[str]:
    """The replica ids with the preferred leader first: the one leading the fewest so far."""
    if not chosen:
        return []
    leader = min(chosen, key=lambda s: (load.leaders[s.id], load.replicas[s.id], s.id))
    load.leaders[leader.id] += 1
    return [leader.id] + [s.id for s in chosen if s is not leader]


def violations(sites: list[Site], placement: dict[int, list[str]],
               replication_factor: int = REPLICATION_FACTOR_DEFAULT) -> list[str]:
    """Why the placement falls short of the rules, one sentence each (empty when it meets them)."""
    by_id = {s.id: s for s in sites}
    rf = min(replication_factor, len(by_id))
    zones = len({s.zone for s in sites})
    cap = _zone_cap(rf, zones)
    out = []
    if zones < rf:
        out.append(f"{zones} zone(s) for {rf} replicas: some partitions keep {cap} replicas in one zone")
    for pid, replicas in sorted(placement.items()):
        if len(replicas) < rf:
            out.append(f"partition {pid} has {len(replicas)} of {rf} replicas")
        crowded = [z for z, n in Counter(by_id[r].zone for r in replicas if r in by_id).items() if n > cap]
        if crowded:
            out.append(f"partition {pid} has more than {cap} replicas in zone {', '.join(sorted(crowded))}")
    return out
