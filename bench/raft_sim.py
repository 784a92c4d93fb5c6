#!/usr/bin/env python3
"""Raft engine throughput in the simulator: committed entries per second, engine CPU per entry.

Theory of operation. Three engine instances (built through the simulator's
engine registry, so `--engine` picks any registered engine) are wired
together by a zero-latency, lossless in-memory network with no disk: each
Ready's messages are delivered straight to their targets, and `advance` is
called at once, as if persisting were free. After an election, the loop is:

    propose --batch entries on the leader (one client batch)
    run every node's Ready loop and deliver messages until the group is quiet

so each batch commits in one replication round trip, and the engine's own
batching (one append per follower per Ready) carries the whole batch. An entry
counts as committed when the leader hands it out in `committed_entries`.

It reports committed entries per wall-clock second and per CPU second of the
whole process (the machine may be shared, so the CPU figure is the steadier
one), and the engine's CPU seconds per entry: the thread CPU time spent inside
engine calls (tick, step, propose, has_ready, ready, advance) on all three
nodes, divided by the entries committed. The rest is this script's driver.

    python bench/raft_sim [--seconds 3] [--batch 64] [--entry-bytes 32] [--engine raft]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from collections import deque

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kvorum.consensus import engines  # noqa: E402
from kvorum.consensus.engines import NodeSettings  # noqa: E402
from kvorum.consensus.replicated_log import EntryKind, Membership, Role  # noqa: E402

TARGET_ENTRIES_PER_S = 100_000
ELECTION_TICKS_MAX = 1_000


class Group:
    def __init__(self, engine: str, seed: int) -> None:
        spec = engines.get(engine)
        ids = ["n1", "n2", "n3"]
        membership = Membership(voters=frozenset(ids))
        rng = random.Random(seed)
        self.nodes = {}
        for node_id in ids:
            settings = NodeSettings(
                id=node_id,
                membership=membership,
                rng=random.Random(rng.getrandbits(64)),
                restore=None,
                election_tick=10,
                heartbeat_tick=2,
                lease_reads=False,
                check_quorum=True,
                pre_vote=True,
                max_entries_per_msg=256,
                bugs=frozenset(),
            )
            self.nodes[node_id] = spec.make(settings)
        self.engine_cpu_s = 0.0
        self.committed = 0
        self.leader_id: str | None = None

    def pump(self) -> None:
        """Run Ready loops and deliver messages until nothing is left to do."""
        nodes = self.nodes
        clock = time.thread_time
        queue: deque = deque()
        busy = True
        while busy or queue:
            busy = False
            for node_id, node in nodes.items():
                t0 = clock()
                while node.has_ready():
                    rd = node.ready()
                    node.advance(rd)
                    queue.extend(rd.messages)
                    if node_id == self.leader_id:
                        for entry in rd.committed_entries:
                            if entry.kind is EntryKind.NORMAL:
                                self.committed += 1
                    busy = True
                self.engine_cpu_s += clock() - t0
            while queue:
                message = queue.popleft()
                t0 = clock()
                nodes[message.to].step(message)
                self.engine_cpu_s += clock() - t0

    def elect(self) -> str:
        for _ in range(ELECTION_TICKS_MAX):
            for node in self.nodes.values():
                node.tick()
            self.pump()
            for node_id, node in self.nodes.items():
                if node.status().role is Role.LEADER:
                    self.leader_id = node_id
                    return node_id
        raise SystemExit("no leader elected")

    def propose_batch(self, payloads: list[bytes]) -> None:
        leader = self.nodes[self.leader_id]
        clock = time.thread_time
        t0 = clock()
        for data in payloads:
            leader.propose(data)
        self.engine_cpu_s += clock() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="measured wall-clock time")
    parser.add_argument("--batch", type=int, default=64, help="proposals per batch")
    parser.add_argument("--entry-bytes", type=int, default=32)
    parser.add_argument("--engine", default="raft", choices=engines.names())
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)

    group = Group(args.engine, args.seed)
    leader = group.elect()
    # Let the leader's NOOP commit before measuring.
    group.pump()
    payloads = [bytes([i % 251]) * args.entry_bytes for i in range(args.batch)]
    # Warm-up, not measured.
    for _ in range(50):
        group.propose_batch(payloads)
        group.pump()
    group.committed = 0
    group.engine_cpu_s = 0.0

    wall0, cpu0 = time.perf_counter(), time.process_time()
    batches = 0
    while time.perf_counter() - wall0 < args.seconds:
        group.propose_batch(payloads)
        group.pump()
        batches += 1
    wall = time.perf_counter() - wall0
    cpu = time.process_time() - cpu0
    committed = group.committed
    assert committed == batches * args.batch, (committed, batches)

    per_wall = committed / wall
    per_cpu = committed / cpu
    engine_us = group.engine_cpu_s / committed * 1e6
    print(f"raft_sim: engine={args.engine} nodes=3 leader={leader} batch={args.batch} entry_bytes={args.entry_bytes}")
    print(f"  committed entries     {committed} in {wall:.2f}s wall, {cpu:.2f}s cpu ({batches} batches)")
    print(f"  entries/s (wall)      {per_wall:,.0f}")
    print(f"  entries/s (cpu)       {per_cpu:,.0f}")
    print(f"  engine cpu per entry  {engine_us:.2f} us ({group.engine_cpu_s / committed:.3e} s), all 3 nodes")
    print(f"  engine share of cpu   {group.engine_cpu_s / cpu:.0%}")
    verdict = "meets" if per_cpu >= TARGET_ENTRIES_PER_S else "BELOW"
    print(f"  target {TARGET_ENTRIES_PER_S:,} entries/s: {verdict} (by cpu rate)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
