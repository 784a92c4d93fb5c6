"""What a replicated node reports about its group: INFO replication, ROLE, CLUSTER INFO / SLOTS /
SHARDS / NODES / MEMBERS.

Every view is read from the group's roster (addresses) and its engine's
status (membership, leader, progress), so it shows the membership as it is,
after every add, remove or replace. The group appears to Redis clients as one
shard owning all 16384 slots: its leader is the master, the other voters its
replicas. Learners (members still catching up, or kept non-voting) appear only
in CLUSTER NODES, flagged `nofailover`, and in CLUSTER MEMBERS: a client must
not route reads to a node that may be far behind.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvorum.replica.roster import Member

if TYPE_CHECKING:
    from kvorum.server.replication import ClusterNode


def roles(node: ClusterNode) -> dict[str, str]:
    """node id -> "master" for the known leader, "slave" for every other member."""
    leader = node.driver.leader
    return {m.id: ("master" if m.id == leader else "slave") for m in node.group.members()}


def ordered_nodes(node: ClusterNode, learners: bool = False) -> list[Member]:
    """The leader first (the slot owner clients write to), then the other voters (and learners) by id."""
    status = node.driver.status()
    leader = status.leader or node.id
    voters = status.membership.voters | status.membership.voters_outgoing
    members = [m for m in node.group.members() if learners or m.id in voters]
    return sorted(members, key=lambda m: (m.id != leader, m.id))


def member_rows(node: ClusterNode) -> list:
    """CLUSTER MEMBERS: [id, host, port, bus port, role, match index] per member (match: -1 unknown)."""
    status = node.driver.status()
    m = status.membership
    rows = []
    for member in node.group.members():
        if member.id in m.voters or member.id in m.voters_outgoing:
            role = "voter"
        else:
            role = "learner"
        if member.id == status.leader:
            match = status.last_index
        elif member.id in status.progress:
            match = status.progress[member.id].match
        else:
            match = -1
        rows.append([member.id, member.host, member.port, member.bus_port, role, match])
    return rows


def replication_info(node: ClusterNode) -> dict:
    driver = node.driver
    status = driver.status()
    leader = status.leader
    info = {
        "role": "master" if leader == node.id else "slave",
        "raft_role": status.role.value,
        "raft_term": status.term,
        "raft_leader": leader or "-",
        "raft_commit_index": status.commit,
        "raft_applied_index": driver.applied_index,
        "raft_last_index": status.last_index,
        "raft_snapshot_index": driver.snapshot_index,
        "raft_lease_valid": int(status.lease_valid),
        "raft_voters": ",".join(sorted(status.membership.voters)),
        "raft_learners": ",".join(sorted(status.membership.learners)),
        "write_concern": node.state.settings.write_concern,
    }
    address = node.group.address_of(leader) if leader is not None and leader != node.id else None
    if address is not None:
        info.update(master_host=address.host, master_port=address.port, master_link_status="up")
    else:
        followers = [m for m in node.group.members() if m.id != node.id]
        info["connected_slaves"] = len(followers)
        for i, member in enumerate(followers):
            progress = status.progress.get(member.id)
            match = progress.match if progress is not None else 0
            info[f"slave{i}"] = (f"ip={member.host},port={member.port},state=online,offset={match},"
                                 f"lag={status.last_index - match},id={member.id}")
    info["master_repl_offset"] = driver.applied_index
    return info


def role_reply(node: ClusterNode) -> list:
    """ROLE: Redis' master form on the leader, its replica form elsewhere (offsets are log indexes)."""
    status = node.driver.status()
    applied = node.driver.applied_index
    if status.leader == node.id:
        replicas = []
        for member in node.group.members():
            progress = status.progress.get(member.id)
            if member.id != node.id and progress is not None:
                replicas.append([member.host, str(member.port), str(progress.match)])
        return [b"master", applied, replicas]
    leader = node.group.address_of(status.leader) if status.leader is not None else None
    if leader is None:
        return [b"slave", "?", -1, b"connect", applied]
    return [b"slave", leader.host, leader.port, b"connected", applied]


def cluster_info(node: ClusterNode) -> dict:
    status = node.driver.status()
    ok = status.leader is not None
    info = {
        "cluster_state": "ok" if ok else "fail",
        "cluster_slots_assigned": 16384,
        "cluster_slots_ok": 16384 if ok else 0,
        "cluster_slots_pfail": 0,
        "cluster_slots_fail": 0 if ok else 16384,
        "cluster_known_nodes": len(node.group.members()),
        "cluster_size": 1,
        "cluster_current_epoch": status.term,
        "cluster_my_epoch": status.term,
        "kvorum_node_id": node.id,
    }
    info.update(replication_info(node))
    for nid, progress in sorted(status.progress.items()):
        info[f"raft_peer_{nid}"] = (f"match={progress.match},lag={status.last_index - progress.match},"
                                    f"state={progress.state},active={int(progress.recent_active)}")
    return info
