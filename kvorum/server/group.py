"""One replica group on this node: its driver, keyspace, roster, lease table and stamper.

Theory of operation
-------------------
The group is the unit of replication. `Group` joins the pieces one group
needs: the replicated state (`GroupState`: keyspace, roster, stamper), the
leader's lease table, and the `GroupDriver` that runs the group's consensus
engine on the process's peer hub. The process owns the hub and the timers;
everything else belongs to a group.

Membership. The roster (replicated) says who should be in the group; the
leader's cron (`reconfigure`) moves the engine's membership there one step at
a time. Every node keeps the hub's address book equal to the roster's members
that are, or are becoming, part of the membership. A node that learns it was
removed shuts itself down: when a membership without it applies, or, if the
final entries never reach it (the leader stops replicating to a removed
node), once it has heard from no leader for REMOVED_SILENCE_S.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

from kvorum.cluster.concern import WriteConcern
from kvorum.consensus.replicated_log import Membership, ProposalDropped
from kvorum.replica import reconfigure, state_machine
from kvorum.replica.roster import Member, Roster
from kvorum.server.events import log_membership_change, node_set
from kvorum.server.group_driver import GroupDriver
from kvorum.server.leases import LeaseTable
from kvorum.server.peers import PeerHub

log = logging.getLogger("kvorum.group")

# A node the roster removed waits this long without a leader before it stops on its own.
REMOVED_SILENCE_S = 5.0


def _fmt(m: Membership) -> str:
    text = f"voters={node_set(m.voters)} learners={node_set(m.learners)}"
    if m.joint:
        text += f" outgoing={node_set(m.voters_outgoing)}"
    return text


class Group:
    """One replica group hosted by this node."""

    def __init__(self, group_id: int, node_id: str, db, leases: LeaseTable, hub: PeerHub,
                 seed: list[Member], on_removed: Callable[[str], None], functions=None) -> None:
        self.id = group_id
        self.node_id = node_id
        self.state = state_machine.GroupState(db, functions)
        self.state.roster.seed(seed)
        self.leases = leases
        self.hub = hub
        self.on_removed = on_removed
        self.driver: GroupDriver = None  # type: ignore[assignment]  # set by attach()
        # The membership of the last MEMBERSHIP entry (or snapshot) applied here.
        self.applied_membership = Membership(frozenset(m.id for m in seed))
        self._stepping = False  # a membership step proposed by this leader is in flight
        self._removed_since_s = 0.0

    @property
    def db(self):
        return self.state.db

    @property
    def roster(self) -> Roster:
        return self.state.roster

    @property
    def stamper(self) -> state_machine.Stamper:
        return self.state.stamper

    def attach(self, driver: GroupDriver) -> None:
        self.driver = driver
        self._update_addresses()

    # The state machine, as the driver calls it.

    def apply(self, data: bytes) -> object:
        roster = self.roster
        changes = roster.changes
        reply = self.state.apply(data)
        if roster.changes != changes:
            self._update_addresses()
            if self.roster.is_removed(self.node_id) and not self._removed_since_s:
                self._removed_since_s = time.monotonic()
                log.warning("group %d: this node (%s) is being removed from the cluster", self.id, self.node_id)
        return reply

    def dump(self) -> bytes:
        return self.state.dump()

    def load(self, blob: bytes) -> None:
        # A snapshot can be older than what this node knows of its group: a joining node
        # gets the current members from CLUSTER MEMBERS, while the leader's latest snapshot
        # may predate some of them, the leader itself included (it may have joined through
        # that very snapshot). Those members are kept, as the members a ROSTER entry carries
        # are (never overwriting the snapshot's, never reviving a removed one): without the
        # leader's address this node could not answer it, and would never catch up.
        known = self.roster.live()
        self.state.load(blob)
        self.roster.seed(known)
        self._update_addresses()

    def on_membership(self, membership: Membership, index: int) -> None:
        old = self.applied_membership
        self.applied_membership = membership
        if membership != old:
            log_membership_change(self.id, old, membership, index)
        self._update_addresses()
        if self.roster.is_removed(self.node_id) and self.node_id not in membership.members():
            self.on_removed(f"node {self.node_id} was removed from the cluster at index {index}")

    def _update_addresses(self) -> None:
        membership = self.driver.status().membership if self.driver is not None and self.driver.node else None
        wanted = set(self.applied_membership.members())
        if membership is not None:
            wanted |= membership.members()
        addresses = {}
        removed = set()
        for member in self.roster.members.values():
            if member.id in wanted or not self.roster.is_removed(member.id):
                addresses[member.id] = (member.host, member.bus_port)
            else:
                removed.add(member.id)
        self.hub.set_addresses(addresses)
        self.hub.set_removed(removed)

    # Views.

    def members(self) -> list[Member]:
        """The roster's members in the current membership, by id."""
        in_group = self.driver.status().membership.members()
        return [m for m in sorted(self.roster.members.values(), key=lambda m: m.id) if m.id in in_group]

    def address_of(self, node_id: str) -> Member | None:
        return self.roster.get(node_id)

    # Membership requests (on the leader).

    def propose_roster(self, op: str, arg, origin=None) -> asyncio.Future:
        """Propose one ROSTER entry; the future gets the entry's reply (None, or a RosterError)."""
        data = state_machine.encode_roster(self.stamper.next_ms(), op, arg, self.roster.live())
        return self.driver.propose(data, WriteConcern.MAJORITY, False, origin)

    def transfer_leadership(self, to: str) -> None:
        self.driver.transfer_leadership(to)

    # The leader's cron.

    def cron(self) -> None:
        driver = self.driver
        if self._removed_since_s and driver.leader_contact_age_s() > REMOVED_SILENCE_S:
            self.on_removed(f"node {self.node_id} was removed from the cluster and hears from no leader")
            return
        if not driver.is_leader() or self._stepping:
            return
        status = driver.status()
        step = reconfigure.next_step(self.roster, status, status.membership != self.applied_membership)
        if step is None:
            return
        try:
            if isinstance(step, reconfigure.Change):
                driver.change_membership(step.membership)
                log.info("group %d: proposing %s: %s", self.id, _fmt(step.membership), step.why)
            elif isinstance(step, reconfigure.Transfer):
                log.info("group %d: transferring leadership to %s: %s", self.id, step.to, step.why)
                self.transfer_leadership(step.to)
            else:
                self._stepping = True
                future = self.propose_roster(step.op, step.arg)
                future.add_done_callback(self._roster_step_done)
        except ProposalDropped as exc:
            log.debug("group %d: membership step %s waits: %s", self.id, step, exc)

    def _roster_step_done(self, future: asyncio.Future) -> None:
        self._stepping = False
        if not future.cancelled():
            future.exception()  # retrieved: a lost step is planned again by the next cron
