"""What one node of a cluster under test says about leadership, whatever the system.

bench/failover kills a leader and polls the survivors: each cluster module
turns its own status call (kvorum's CLUSTER INFO, etcd's maintenance/status)
into a NodeView, so that the benchmark reads every system the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

HEALTHY_LAG_MAX = 1000  # log entries a member may trail the leader by and still count as caught up


@dataclass(frozen=True)
class NodeView:
    index: int  # the node's position in its cluster (0 for n1 or e1)
    term: int
    leader: int | None  # the index of the node it follows or is; None while it knows no leader

    @property
    def leads(self) -> bool:
        return self.leader == self.index
