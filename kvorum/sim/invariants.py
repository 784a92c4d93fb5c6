"""Raft's safety properties (Raft paper, figure 3), checked while the world runs.

Theory of operation
-------------------
The checker keeps whole-run memory, so a violation is caught even when the
nodes involved have since crashed, compacted or been removed:

- Election safety: `leaders[term]` is the one node ever seen leading `term`.
  Every node's status is read after each event it handles.
- Log matching: `entries[(index, term)]` holds the kind, data and previous
  entry's term of the first entry seen at that slot. If every log agrees with
  the table, then two logs that share (index, term) share the entry and, by
  induction on the previous term, the whole prefix. Entries are checked as
  the driver persists them, and every node's in-memory log
  (`log_entries`) is swept every `sweep_every` events and at the end.
- State machine safety: `applied[index]` is the first entry any node applied
  at `index`; every later application at that index must be the same entry.
- Leader completeness: `committed[index]` also records the smallest term any
  observer was in when it applied the entry. The commit was decided in a term
  no larger than that, so every node that becomes leader of a *larger* term
  must hold the entry (unless it has compacted it into a snapshot).

Violations raise `InvariantViolation`, which ends the run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvorum.consensus.replicated_log import Entry, Role, Snapshot

if TYPE_CHECKING:
    from kvorum.sim.node import SimNode


class InvariantViolation(Exception):
    def __init__(self, invariant: str, detail: str) -> None:
        super().__init__(f"{invariant}: {detail}")
        self.invariant = invariant
        self.detail = detail


def _describe(entry: Entry) -> str:
    return f"({entry.index},{entry.term},{entry.kind.name},{entry.data[:40]!r})"


class Invariants:
    def __init__(self) -> None:
        self.leaders: dict[int, str] = {}
        self.entries: dict[tuple[int, int], tuple[int, bytes, int | None, str]] = {}
        self.applied: dict[int, tuple[Entry, str]] = {}
        self.committed_max = 0
        self.observed_term: dict[int, int] = {}  # index -> smallest observer term at apply
        self.roles: dict[str, tuple[Role, int]] = {}
        self.checks = 0

    # --- election safety and leader completeness -------------------------------

    def after_event(self, node: SimNode) -> bool:
        """Check the node's role; True when it has just become leader."""
        status = node.engine.status()
        role, term = status.role, status.term
        if self.roles.get(node.id) == (role, term):
            return False
        self.roles[node.id] = (role, term)
        if role is not Role.LEADER:
            return False
        self.checks += 1
        other = self.leaders.setdefault(term, node.id)
        if other != node.id:
            raise InvariantViolation("election safety", f"term {term} has two leaders: {other} and {node.id}")
        self._check_leader_log(node, term, status.first_index, status.last_index)
        return True

    def _check_leader_log(self, node: SimNode, term: int, first: int, last: int) -> None:
        lo = max(first, 1)
        held = {e.index: e for e in node.engine.log_entries(lo, last + 1)}
        for index in range(lo, self.committed_max + 1):
            seen_in = self.observed_term.get(index)
            if seen_in is None or seen_in >= term:
                continue
            want = self.applied[index][0]
            have = held.get(index)
            if have is None or have.term != want.term:
                got = "nothing" if have is None else _describe(have)
                raise InvariantViolation(
                    "leader completeness",
                    f"{node.id} leads term {term} but holds {got} at {index}, "
                    f"where {_describe(want)} was committed (seen applied in term {seen_in})",
                )

    # --- log matching ---------------------------------------------------------

    def on_append(self, node: SimNode, entries: tuple[Entry, ...]) -> None:
        first = entries[0].index
        before = node.engine.log_entries(first - 1, first) if first > 1 else ()
        prev_term: int | None = before[0].term if before else (0 if first == 1 else None)
        for entry in entries:
            self._match(node.id, entry, prev_term)
            prev_term = entry.term

    def _match(self, node_id: str, entry: Entry, prev_term: int | None) -> None:
        self.checks += 1
        slot = (entry.index, entry.term)
        known = self.entries.get(slot)
        if known is None:
            self.entries[slot] = (int(entry.kind), entry.data, prev_term, node_id)
            return
        kind, data, known_prev, first_node = known
        if kind != int(entry.kind) or data != entry.data:
            raise InvariantViolation(
                "log matching",
                f"{node_id} holds {_describe(entry)} but {first_node} held a different entry at the same index and term",
            )
        if prev_term is not None and known_prev is not None and prev_term != known_prev:
            raise InvariantViolation(
                "log matching",
                f"{node_id} and {first_node} both hold ({entry.index},{entry.term}) but their entries at "
                f"{entry.index - 1} have terms {prev_term} and {known_prev}",
            )
        if known_prev is None and prev_term is not None:
            self.entries[slot] = (kind, data, prev_term, first_node)

    def sweep(self, nodes: list[SimNode]) -> None:
        """Check every live node's whole in-memory log against the table."""
        for node in nodes:
            if not node.up:
                continue
            status = node.engine.status()
            prev_term: int | None = None
            expected = status.first_index
            for entry in node.engine.log_entries(status.first_index, status.last_index + 1):
                if entry.index != expected:
                    raise InvariantViolation("log matching", f"{node.id}'s log has a gap before {entry.index}")
                expected += 1
                self._match(node.id, entry, prev_term if entry.index > 1 else 0)
                prev_term = entry.term

    def on_snapshot(self, node: SimNode, snap: Snapshot) -> None:
        applied = self.applied.get(snap.index)
        if applied is not None and applied[0].term != snap.term:
            raise InvariantViolation(
                "state machine safety",
                f"{node.id} installs a snapshot at ({snap.index},{snap.term}) but "
                f"{_describe(applied[0])} was applied there by {applied[1]}",
            )

    # --- state machine safety ---------------------------------------------------

    def on_apply(self, node: SimNode, entry: Entry, observer_term: int) -> None:
        self.checks += 1
        index = entry.index
        first = self.applied.get(index)
        if first is None:
            self.applied[index] = (entry, node.id)
            self.observed_term[index] = observer_term
            if index > self.committed_max:
                self.committed_max = index
            return
        if first[0] != entry:
            raise InvariantViolation(
                "state machine safety",
                f"{node.id} applied {_describe(entry)} at {index} but {first[1]} applied {_describe(first[0])}",
            )
        if observer_term < self.observed_term[index]:
            self.observed_term[index] = observer_term
