"""A tiny in-memory router for driving RaftNode groups in tests: no sockets, no sleeps."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Callable

from kvorum.consensus.raft import RaftConfig, RaftNode
from kvorum.consensus.raft.bugs import node_class
from kvorum.consensus.replicated_log import Entry, HardState, Membership, RestoreState, Snapshot


@dataclass
class Disk:
    hard_state: HardState = HardState()
    snapshot: Snapshot | None = None
    entries: list[Entry] = field(default_factory=list)


class Router:
    """Nodes, their disks, and a lossy switch: `cut` holds (from, to) links that drop.

    `bugs` builds every node as that deliberately broken variant; the other
    keywords are RaftConfig settings shared by every node.
    """

    def __init__(self, ids: list[str], bugs: frozenset[str] = frozenset(), **config: Any) -> None:
        self.membership = Membership(frozenset(ids))
        self.node_class = node_class(bugs)
        self.config = config
        self.nodes: dict[str, RaftNode] = {}
        self.disks: dict[str, Disk] = {}
        self.applied: dict[str, list[Entry]] = {}
        self.down: set[str] = set()
        self.cut: set[tuple[str, str]] = set()
        for nid in ids:
            self.add(nid)

    def add(self, nid: str, restore: RestoreState | None = None, **extra: Any) -> RaftNode:
        cfg = RaftConfig(
            id=nid,
            membership=self.membership,
            rng=random.Random(hash(nid) % 1000 if not nid.isdigit() else int(nid)),
            **{**self.config, **extra},
        )
        node = self.node_class(cfg, restore)
        self.nodes[nid] = node
        self.disks.setdefault(nid, Disk())
        self.applied.setdefault(nid, [])
        return node

    def isolate(self, nid: str) -> None:
        for other in self.nodes:
            if other != nid:
                self.cut.add((nid, other))
                self.cut.add((other, nid))

    def heal(self) -> None:
        self.cut.clear()

    def crash(self, nid: str) -> None:
        self.down.add(nid)

    def restart(self, nid: str) -> RaftNode:
        self.down.discard(nid)
        d = self.disks[nid]
        self.applied[nid] = []
        return self.add(nid, RestoreState(d.hard_state, d.snapshot, tuple(d.entries)))

    def handle_ready(self, nid: str) -> list[Any]:
        node = self.nodes[nid]
        if not node.has_ready():
            return []
        rd = node.ready()
        d = self.disks[nid]
        if rd.snapshot is not None:
            d.snapshot, d.entries = rd.snapshot, []
        if rd.entries:
            # Overwrite the stored suffix from the first new index on.
            first = rd.entries[0].index
            base = d.entries[0].index if d.entries else first
            del d.entries[max(0, first - base) :]
            d.entries.extend(rd.entries)
        if rd.hard_state is not None:
            d.hard_state = rd.hard_state
        self.applied[nid].extend(rd.committed_entries)
        node.advance(rd)
        return list(rd.messages)

    def pump(self, drop: Callable[[Any], bool] | None = None, rounds_max: int = 10_000) -> None:
        """Handle Ready's and deliver messages until nothing moves."""
        for _ in range(rounds_max):
            msgs: list[Any] = []
            for nid in sorted(self.nodes):
                if nid not in self.down:
                    msgs.extend(self.handle_ready(nid))
            if not msgs:
                return
            for m in msgs:
                if m.to in self.down or (m.frm, m.to) in self.cut or m.to not in self.nodes:
                    continue
                if drop is not None and drop(m):
                    continue
                self.nodes[m.to].step(m)
        raise AssertionError("pump did not settle")

    def tick_all(self, n: int = 1) -> None:
        for _ in range(n):
            for nid in sorted(self.nodes):
                if nid not in self.down:
                    self.nodes[nid].tick()
            self.pump()

    def leaders(self) -> list[str]:
        return [
            nid
            for nid, node in sorted(self.nodes.items())
            if nid not in self.down and node.status().role.value == "leader"
        ]

    def terms_at(self, nid: str) -> list[int]:
        s = self.nodes[nid].status()
        return [e.term for e in self.nodes[nid].log_entries(s.first_index, s.last_index + 1)]
