"""The roster: every node a replica group knows, with its addresses and what it should become.

Theory of operation
-------------------
The consensus engine knows members only by id; clients and peers need
addresses, and the group needs to remember what an operator asked for while
the engine gets there one safe step at a time. The roster holds both, and it
is replicated data: it changes only by ROSTER log entries (applied like any
other entry, on every replica at the same log position) and it travels in
snapshots, so every node, including one that joins later or restarts, agrees
on it.

Each member has a `goal`:

    voter     a voting member, now or once it has caught up as a learner
    learner   a member that only listens (never counted in a quorum)
    removed   out of the group for good; its id is never given out again

`replaces` names the voter a new member takes the place of: once the new one
has caught up, one joint-consensus change makes it a voter and removes the old
one at the same moment, so the group never has fewer voters than it had.

The roster says where the group should go; the engine's membership says where
it is. The leader's controller (kvorum.server.membership) moves the second
towards the first, one change at a time.

Every ROSTER entry also carries the addresses of the members the leader knew
when it proposed it; a replica adds any it lacks (never overwriting one it has,
never reviving a removed one). That is how the members a cluster was started
with (from --peers, not from the log) reach a node that joined later and only
ever saw the log.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

# Members a roster may hold, removed ones included (ids are never reused, so
# their tombstones stay; each is a few dozen bytes).
ROSTER_MEMBERS_MAX = 1024
NODE_ID_BYTES_MAX = 64


class Goal(str, enum.Enum):
    VOTER = "voter"
    LEARNER = "learner"
    REMOVED = "removed"


@dataclass(frozen=True, slots=True)
class Member:
    id: str
    host: str
    port: int  # RESP clients
    bus_port: int  # peer transport
    goal: Goal = Goal.VOTER
    replaces: str = ""  # the voter this member takes the place of, once caught up

    @property
    def client_addr(self) -> str:
        return f"{self.host}:{self.port}"

    def to_wire(self) -> list:
        return [self.id, self.host, self.port, self.bus_port, self.goal.value, self.replaces]

    @classmethod
    def from_wire(cls, row: list) -> Member:
        node_id, host, port, bus_port, goal, replaces = row
        return cls(node_id, host, int(port), int(bus_port), Goal(goal), replaces)


class RosterError(Exception):
    """The request contradicts the roster (an operating error, answered to the client)."""


class Roster:
    """id -> Member, changed only through `apply_entry` (or `seed` before any entry)."""

    def __init__(self) -> None:
        self.members: dict[str, Member] = {}
        self.changes = 0  # ROSTER entries applied (whatever their outcome), for watchers

    # Views.

    def get(self, node_id: str) -> Member | None:
        return self.members.get(node_id)

    def live(self) -> list[Member]:
        """Members not removed, by id."""
        return sorted((m for m in self.members.values() if m.goal is not Goal.REMOVED), key=lambda m: m.id)

    def is_removed(self, node_id: str) -> bool:
        member = self.members.get(node_id)
        return member is not None and member.goal is Goal.REMOVED

    def replacement_for(self, node_id: str) -> Member | None:
        """The member that is to take `node_id`'s place, if one is waiting to."""
        for member in self.members.values():
            if member.replaces == node_id and member.goal is Goal.VOTER:
                return member
        return None

    # Changes.

    def seed(self, members: list[Member]) -> None:
        """The members the group was started with (from --peers), before any ROSTER entry."""
        for member in members:
            self.members.setdefault(member.id, member)

    def check_add(self, member: Member) -> None:
        """Raise RosterError unless `member` may be added (run on the leader before proposing)."""
        if not member.id or len(member.id) > NODE_ID_BYTES_MAX:
            raise RosterError(f"ERR a node id is 1 to {NODE_ID_BYTES_MAX} characters")
        known = self.members.get(member.id)
        if known is not None and known.goal is Goal.REMOVED:
            raise RosterError(f"ERR node id {member.id} was removed from this cluster; node ids are never reused")
        if known is not None and (known.host, known.port, known.bus_port) != (member.host, member.port,
                                                                              member.bus_port):
            raise RosterError(f"ERR node id {member.id} is already a member at {known.client_addr}")
        for other in self.live():
            if other.id != member.id and (other.host, other.bus_port) == (member.host, member.bus_port):
                raise RosterError(f"ERR {member.host} bus port {member.bus_port} belongs to {other.id}")
        if member.replaces:
            old = self.members.get(member.replaces)
            if old is None or old.goal is Goal.REMOVED:
                raise RosterError(f"ERR no member {member.replaces} to replace")
            waiting = self.replacement_for(member.replaces)
            if waiting is not None and waiting.id != member.id:
                raise RosterError(f"ERR {waiting.id} is already replacing {member.replaces}")
        if known is None and len(self.members) >= ROSTER_MEMBERS_MAX:
            raise RosterError(f"ERR a cluster holds at most {ROSTER_MEMBERS_MAX} node ids")

    def check_remove(self, node_id: str) -> None:
        member = self.members.get(node_id)
        if member is None:
            raise RosterError(f"ERR no member {node_id}")
        if member.goal is Goal.REMOVED:
            return
        voters = [m for m in self.live() if m.goal is Goal.VOTER and not m.replaces and m.id != node_id]
        if member.goal is Goal.VOTER and not voters:
            raise RosterError("ERR cannot remove the last voter")

    def apply_entry(self, body: list) -> object:
        """Apply one ROSTER entry's body `[op, arg, known]`; the reply for its proposer.

        A request that became invalid between the leader's check and this entry
        (another change applied first) is refused here, identically everywhere.
        """
        op, arg, known = body
        self.changes += 1
        for row in known:
            member = Member.from_wire(row)
            self.members.setdefault(member.id, member)
        try:
            if op == "add":
                member = Member.from_wire(arg)
                self.check_add(member)
                self.members[member.id] = member
            elif op == "remove":
                self.check_remove(arg)
                old = self.members[arg]
                self.members[arg] = Member(old.id, old.host, old.port, old.bus_port, Goal.REMOVED)
                # A member that was to replace it is now simply a voter-to-be.
                for member in list(self.members.values()):
                    if member.replaces == arg:
                        self.members[member.id] = Member(member.id, member.host, member.port,
                                                         member.bus_port, member.goal)
            elif op == "promote":
                member = self.members.get(arg)
                if member is None or member.goal is Goal.REMOVED:
                    raise RosterError(f"ERR no member {arg}")
                self.members[arg] = Member(member.id, member.host, member.port, member.bus_port, Goal.VOTER,
                                           member.replaces)
            elif op == "replaced":
                # The joint change that swapped `arg`'s replacement in has committed.
                old = self.members[arg]
                self.members[arg] = Member(old.id, old.host, old.port, old.bus_port, Goal.REMOVED)
                for member in list(self.members.values()):
                    if member.replaces == arg:
                        self.members[member.id] = Member(member.id, member.host, member.port,
                                                         member.bus_port, member.goal)
            else:
                raise AssertionError(f"unknown roster op {op!r}")
        except RosterError as exc:
            return exc
        return None

    # Snapshots.

    def dump(self) -> list:
        return [m.to_wire() for m in sorted(self.members.values(), key=lambda m: m.id)]

    def load(self, rows: list) -> None:
        self.members = {}
        for row in rows:
            member = Member.from_wire(row)
            self.members[member.id] = member
