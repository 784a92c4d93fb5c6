"""Multi-Paxos: the second engine behind `ReplicatedLog` (see `node.py` for the theory of operation)."""

from kvorum.consensus.paxos.node import PaxosConfig, PaxosNode

__all__ = ["PaxosConfig", "PaxosNode"]
