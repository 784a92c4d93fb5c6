"""Raft's safety properties (Raft paper, figure 3), checked while the world runs.

Theory of operation
-------------------
The checker keeps whole-run memory, so a violation is caught even when the
nodes involved have since crashed, compacted or been removed:

- Election safety: `leaders[term]` is the one node ever seen leading `term`,
  whatever membership it believed in: one leader per term across old and new
  configurations, removed nodes included. Every node's status is read after
  each event it handles.
- Log matching: `entries[(index, term)]` holds the kind, data and previous
  entry's term of the first entry seen at that slot (for Multi-Paxos, whose
  slots are chosen one by one, only kind and data: one ballot proposes one
  value per slot, and that is all it promises; `EngineSpec.prefix_matching`). If every log agrees with
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

Two more guard membership changes (paper §6, thesis 4), and need the world's
nodes (`Invariants(nodes)`):

- Commit quorum: whenever a leader's commit index rises to C, the entry at C
  is stored on a majority of *every* voter set of the leader's membership
  (both halves of a joint one). Only voters are counted, so a learner never
  completes a quorum. "Stored" means in the node's log in memory if it is up
  (a follower acknowledges only what it fsynced), on its disk if it is down;
  an entry compacted into a snapshot counts as stored.
- Membership change safety: a leader appends a membership entry only once
  the previous one in its log is committed, and only one step away from it:
  at most one voter added or removed, entering a joint phase whose outgoing
  half is the old voters, or leaving one for its incoming half (thesis 4.1,
  4.3): any other step lets two majorities that do not overlap decide.

Violations raise `InvariantViolation`, which ends the run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

from kvorum.consensus.replicated_log import Entry, EntryKind, Membership, Role, Snapshot

if TYPE_CHECKING:
    from kvorum.sim.node import SimNode


class InvariantViolation(Exception):
    def __init__(self, invariant: str, detail: str) -> None:
        super().__init__(f"{invariant}: {detail}")
        self.invariant = invariant
        self.detail = detail


def _describe(entry: Entry) -> str:
    return f"({entry.index},{entry.term},{entry.kind.name},{entry.data[:40]!r})"


def _describe_membership(m: Membership) -> str:
    text = ",".join(sorted(m.voters))
    if m.joint:
        text += " && " + ",".join(sorted(m.voters_outgoing))
    if m.learners:
        text += " learners " + ",".join(sorted(m.learners))
    return "(" + text + ")"


def one_step(old: Membership, new: Membership) -> bool:
    """Can `new` follow `old` directly, so that a majority of each overlaps one of the other?"""
    if not old.joint and not new.joint:
        return len(old.voters ^ new.voters) <= 1
    if not old.joint:
        return new.voters_outgoing == old.voters
    if not new.joint:
        return new.voters == old.voters
    return False


class Invariants:
    def __init__(self, nodes: Mapping[str, SimNode] | None = None) -> None:
        # Every node of the world by id, for the membership checks (None: skip them).
        self.nodes = nodes
        # node id -> (term, commit index) when last checked, while it leads that term.
        self.leader_commit: dict[str, tuple[int, int]] = {}
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
        if self.nodes is not None and node.id in self.leader_commit:
            # Also when it has just stepped down: the commit may be what made it.
            self._check_commit_quorum(node, status.term, status.commit, status.membership)
        if self.roles.get(node.id) == (role, term):
            return False
        self.roles[node.id] = (role, term)
        if role is not Role.LEADER:
            self.leader_commit.pop(node.id, None)
            return False
        self.checks += 1
        other = self.leaders.setdefault(term, node.id)
        if other != node.id:
            raise InvariantViolation("election safety", f"term {term} has two leaders: {other} and {node.id}")
        self._check_leader_log(node, term, status.first_index, status.last_index)
        # What it committed before it led was decided by others; from here on it decides.
        self.leader_commit[node.id] = (term, status.commit)
        return True

    # --- membership: commit quorum and change safety ------------------------------

    def _check_commit_quorum(self, node: SimNode, term: int, commit: int, membership: Membership) -> None:
        led_term, checked = self.leader_commit[node.id]
        if term != led_term or commit <= checked:
            return
        self.leader_commit[node.id] = (term, commit)
        self.checks += 1
        held = node.engine.log_entries(commit, commit + 1)
        if held:
            entry_term = held[0].term
        elif commit in self.applied:
            entry_term = self.applied[commit][0].term  # applied and compacted in one go
        else:
            return
        for half in (membership.voters, membership.voters_outgoing):
            if not half:
                continue
            holders = [v for v in sorted(half) if self._stores(v, commit, entry_term)]
            if len(holders) * 2 <= len(half):
                others = sorted(v for v in membership.learners if self._stores(v, commit, entry_term))
                raise InvariantViolation(
                    "commit quorum",
                    f"{node.id} (leader of term {term}, membership {_describe_membership(membership)}) "
                    f"committed ({commit},{entry_term}) stored only on voters {holders} of "
                    f"{sorted(half)}" + (f" (and learners {others})" if others else ""),
                )

    def _stores(self, node_id: str, index: int, term: int) -> bool:
        assert self.nodes is not None
        node = self.nodes.get(node_id)
        if node is None:
            return False
        if node.up:
            held = node.engine.log_entries(index, index + 1)
            if held:
                return held[0].term == term
            return node.engine.status().first_index > index
        image = node.disk.synced
        if image.snapshot is not None and image.snapshot.index >= index:
            return True
        offset = index - image.first_index()
        return 0 <= offset < len(image.entries) and image.entries[offset].term == term

    def _check_membership_step(self, node: SimNode, entry: Entry) -> None:
        status = node.engine.status()
        if status.role is not Role.LEADER or status.term != entry.term:
            return  # only the leader that wrote it decided this step
        self.checks += 1
        pending = [
            e.index
            for e in node.engine.log_entries(status.commit + 1, entry.index)
            if e.kind is EntryKind.MEMBERSHIP
        ]
        new = node.spec.decode_membership(entry.data)
        if pending:
            raise InvariantViolation(
                "membership change safety",
                f"{node.id} (leader of term {status.term}) appends {_describe_membership(new)} at "
                f"{entry.index} while the change at {pending[-1]} is uncommitted (commit {status.commit})",
            )
        old = node.engine.membership_at(entry.index - 1)
        if not one_step(old, new):
            raise InvariantViolation(
                "membership change safety",
                f"{node.id} (leader of term {status.term}) goes from {_describe_membership(old)} to "
                f"{_describe_membership(new)} in one step at {entry.index}",
            )

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
        prefix = node.spec.prefix_matching
        for entry in entries:
            self._match(node.id, entry, prev_term if prefix else None)
            prev_term = entry.term
            if entry.kind is EntryKind.MEMBERSHIP and self.nodes is not None:
                self._check_membership_step(node, entry)

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
            prefix = node.spec.prefix_matching
            expected = status.first_index
            for entry in node.engine.log_entries(status.first_index, status.last_index + 1):
                if entry.index != expected:
                    raise InvariantViolation("log matching", f"{node.id}'s log has a gap before {entry.index}")
                expected += 1
                self._match(node.id, entry, (prev_term if entry.index > 1 else 0) if prefix else None)
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
