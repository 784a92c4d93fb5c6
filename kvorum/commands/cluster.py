"""Cluster commands: CLUSTER SLOTS SHARDS NODES MYID INFO KEYSLOT, READONLY READWRITE ASKING,
CLIENT WRITECONCERN, and membership: CLUSTER MEMBERS, MEMBER ADD|REMOVE|PROMOTE, MOVE-LEADER,
FAILOVER.

A replicated node answers as one Redis Cluster shard that owns all 16384
slots: its Raft leader is the shard's master, the other voters its replicas.
Redis cluster clients (redis-py's RedisCluster, redis-cli -c) learn the map
from CLUSTER SLOTS and follow -MOVED when leadership moves. A single node
(no --peers) answers these as Redis does with cluster support disabled.
"""

from __future__ import annotations

from kvorum.cluster.concern import WriteConcern
from kvorum.cluster.slots import SLOT_LAST, key_slot
from kvorum.commands.table import CommandContext, command, container
from kvorum.protocol.values import OK, CommandError, Verbatim

DISABLED = "ERR This instance has cluster support disabled"


def _cluster(ctx: CommandContext):
    cluster = ctx.server.cluster
    if cluster is None:
        raise CommandError(DISABLED)
    return cluster


container("cluster", group="cluster", summary="A container for Redis Cluster commands.", since="3.0.0")


# CLUSTER SLOTS
@command("slots", container="cluster", arity=2, flags="loading stale", group="cluster",
         summary="Returns the mapping of cluster slots to nodes.", since="3.0.0")
def cluster_slots(ctx: CommandContext, argv: list[bytes]):
    nodes = _cluster(ctx).ordered_nodes()
    return [[0, SLOT_LAST] + [[n.host, n.port, n.id] for n in nodes]]


# CLUSTER SHARDS
@command("shards", container="cluster", arity=2, flags="loading stale", group="cluster",
         summary="Returns the mapping of cluster slots to shards.", since="7.0.0")
def cluster_shards(ctx: CommandContext, argv: list[bytes]):
    cluster = _cluster(ctx)
    roles = cluster.roles()
    offset = cluster.driver.applied_index
    nodes = [
        {"id": n.id, "port": n.port, "ip": n.host, "endpoint": n.host,
         "role": "master" if roles[n.id] == "master" else "replica",
         "replication-offset": offset if n.id == cluster.id else 0, "health": "online"}
        for n in cluster.ordered_nodes()
    ]
    return [{"slots": [0, SLOT_LAST], "nodes": nodes}]


# CLUSTER NODES
@command("nodes", container="cluster", arity=2, flags="loading stale", group="cluster",
         summary="Returns the cluster configuration for a node.", since="3.0.0")
def cluster_nodes(ctx: CommandContext, argv: list[bytes]):
    cluster = _cluster(ctx)
    roles = cluster.roles()
    leader = cluster.driver.leader_id()
    term = cluster.driver.status().term
    lines = []
    for n in cluster.ordered_nodes(learners=True):
        flags = ("myself," if n.id == cluster.id else "") + roles[n.id]
        master = "-" if roles[n.id] == "master" else (leader or "-")
        slots = f" 0-{SLOT_LAST}" if roles[n.id] == "master" else ""
        lines.append(f"{n.id} {n.host}:{n.port}@{n.bus_port} {flags} {master} 0 0 {term} connected{slots}")
    return Verbatim("\n".join(lines) + "\n")


# CLUSTER MEMBERS
@command("members", container="cluster", arity=2, flags="loading stale", group="cluster",
         summary="Lists the members of this node's replica group with their roles (kvorum).", since="7.0.0")
def cluster_members(ctx: CommandContext, argv: list[bytes]):
    return _cluster(ctx).member_rows()


# CLUSTER MEMBER ADD id host:port[@busport] [LEARNER] [REPLACE old-id]
# CLUSTER MEMBER REMOVE id
# CLUSTER MEMBER PROMOTE id
# Run on the leader; the reply comes once the request is in the replicated roster. The
# membership then follows one safe step at a time (docs/cluster.md, "Membership").
@command("member", container="cluster", arity=-4, flags="admin membership", group="cluster",
         summary="Adds, removes or promotes a member of the replica group (kvorum).", since="7.0.0")
def cluster_member(ctx: CommandContext, argv: list[bytes]):
    return _cluster(ctx).member_command(argv)


# CLUSTER MOVE-LEADER id
@command("move-leader", container="cluster", arity=3, flags="admin membership", group="cluster",
         summary="Hands the replica group's leadership to another voter (kvorum).", since="7.0.0")
def cluster_move_leader(ctx: CommandContext, argv: list[bytes]):
    return _cluster(ctx).move_leader(argv[2].decode("utf-8", "surrogateescape"))


# CLUSTER FAILOVER [FORCE|TAKEOVER]
@command("failover", container="cluster", arity=-2, flags="admin membership", group="cluster",
         summary="Asks the leader to hand leadership to this node.", since="3.0.0")
def cluster_failover(ctx: CommandContext, argv: list[bytes]):
    if len(argv) > 3 or (len(argv) == 3 and argv[2].upper() not in (b"FORCE", b"TAKEOVER")):
        raise CommandError("ERR syntax error")
    return _cluster(ctx).failover()


# CLUSTER MYID
@command("myid", container="cluster", arity=2, flags="loading stale", group="cluster",
         summary="Returns the ID of a node.", since="3.0.0")
def cluster_myid(ctx: CommandContext, argv: list[bytes]):
    return _cluster(ctx).id


# CLUSTER INFO
@command("info", container="cluster", arity=2, flags="loading stale", group="cluster",
         summary="Returns information about the state of a node.", since="3.0.0")
def cluster_info(ctx: CommandContext, argv: list[bytes]):
    info = _cluster(ctx).cluster_info()
    return Verbatim("".join(f"{key}:{value}\r\n" for key, value in info.items()))


# CLUSTER KEYSLOT key
@command("keyslot", container="cluster", arity=3, flags="loading stale", group="cluster",
         summary="Returns the hash slot for a key.", since="3.0.0")
def cluster_keyslot(ctx: CommandContext, argv: list[bytes]):
    _cluster(ctx)
    return key_slot(argv[2])


# READONLY
@command("readonly", arity=1, flags="loading stale fast", group="cluster",
         summary="Enables read-only queries for a connection to a Redis Cluster replica node.", since="3.0.0")
def readonly(ctx: CommandContext, argv: list[bytes]):
    _cluster(ctx)
    ctx.client.readonly_reads = True
    return OK


# READWRITE
@command("readwrite", arity=1, flags="loading stale fast", group="cluster",
         summary="Enables read-write queries for a connection to a Redis Cluster replica node.", since="3.0.0")
def readwrite(ctx: CommandContext, argv: list[bytes]):
    _cluster(ctx)
    ctx.client.readonly_reads = False
    return OK


# ASKING
@command("asking", arity=1, flags="fast", group="cluster",
         summary="Signals that a cluster client is following an -ASK redirect.", since="3.0.0")
def asking(ctx: CommandContext, argv: list[bytes]):
    _cluster(ctx)
    return OK


# CLIENT WRITECONCERN [one|majority|all|default]
@command("writeconcern", container="client", arity=-2, flags="noscript loading stale", group="connection",
         summary="Sets or shows when this connection's writes are acknowledged (kvorum).", since="7.0.0")
def client_writeconcern(ctx: CommandContext, argv: list[bytes]):
    cluster = _cluster(ctx)
    client = ctx.client
    if len(argv) == 2:
        return cluster.write_concern(client).value
    if len(argv) != 3:
        raise CommandError("ERR syntax error")
    choice = argv[2].decode("utf-8", "replace").lower()
    if choice == "default":
        client.write_concern = None
        return OK
    try:
        client.write_concern = WriteConcern(choice)
    except ValueError:
        raise CommandError("ERR write concern must be one, majority, all or default") from None
    return OK
