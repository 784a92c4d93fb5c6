"""A replicated node's front end: which requests go through the log, which are redirected.

Theory of operation
-------------------
`ClusterNode.execute` is the cluster mode's version of `dispatch.execute`. It
adds gates in front of the single node's line, reading only the command
table's flags:

    unknown / arity / auth errors   -> the single node's gates answer them
    inside MULTI                    -> queued as on a single node; a data
                                       command queued on a follower fails the
                                       transaction with MOVED; LEASEGET is
                                       refused (its token is not data)
    EXEC                            -> (leader) the data commands are one log
                                       entry; the others (PING, ECHO, TIME ...)
                                       are answered locally in their positions
    WATCH                           -> (leader) after a read barrier, records
                                       each key's version; EXEC carries them
    write                           -> (leader) its leases voided, proposed as a
                                       log entry; the reply comes when it is
                                       applied. LEASESET checks and consumes its
                                       token here and proposes a plain SET
    readonly, READONLY connection   -> served from the local keyspace at once,
                                       unless no leader was heard from within
                                       one election timeout (-TRYAGAIN)
    readonly                        -> (leader) after a read barrier (lease or
                                       ReadIndex) once applied >= its index
    anything else                   -> the single node's line (PING, CLIENT,
                                       CONFIG, INFO, CLUSTER ...)

"(leader)" means: on a follower the answer is `-MOVED <slot> <leader>`, and
`-CLUSTERDOWN` while no leader is known, so Redis cluster clients re-route or
retry. The slot is the first key's (0 for a command without keys): one
partition owns all 16384 slots.

Leases (`kvorum.server.leases`) are the leader's, not data: the leader voids
the leases of every write it accepts, in the order it proposes them (a DEL of a
missing key changes nothing in the keyspace, so only this voids a token for
it), and empties its table when it leads a new term, since writes accepted by
other leaders in between never passed through it.

A request that needs the log returns a Future of its encoded reply. The
connection (`Connection`) answers one connection's requests strictly in
order. While earlier replies wait, it goes on with writes (proposed back to
back, so one pipeline shares one append and one commit round trip; entries
apply in log order, which is request order) and linearizable reads (a read
barrier issued after the earlier proposals, served once every earlier reply
of the connection is known, so a read pipelined after a write sees it, even
after a `one` write answered before an earlier write applied). A write waits
while an earlier read of its connection waits for its barrier: the read runs
when the barrier passes, by which time the write could have applied, and a
read must not see a write sent after it (`GET k; SET k v` answers the old k).
Anything else waits until every earlier reply is known. Concurrency also
comes from many connections, whose proposals share each fsync.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Callable, Sequence

from kvorum.cluster.concern import WriteConcern
from kvorum.cluster.slots import key_slot
from kvorum.cluster.topology import parse_peers
from kvorum.commands.leases import parse_leaseset
from kvorum.commands.table import Command
from kvorum.consensus.replicated_log import Membership, ProposalDropped
from kvorum.protocol.encoder import OK_REPLY, encode, error_line
from kvorum.protocol.values import OOM, CommandError, NullArray
from kvorum.replica import state_machine
from kvorum.replica.roster import Member
from kvorum.server import cluster_views, dispatch, membership, script_replication
from kvorum.server.group import Group
from kvorum.server.group_driver import GroupDriver, Unavailable
from kvorum.server.leases import LeaseTable
from kvorum.server.peers import PeerHub, load_cluster_secret

if TYPE_CHECKING:
    from kvorum.server.connection import Connection
    from kvorum.server.state import ServerState

log = logging.getLogger("kvorum.cluster")

CLUSTERDOWN = b"-CLUSTERDOWN The cluster is down\r\n"
# Expired keys the leader's cron proposes per cycle (one EXPIRE entry).
EXPIRE_KEYS_PER_CYCLE = state_machine.EXPIRE_KEYS_PER_ENTRY_MAX

# In an EXEC's reply plan: the next reply of the transaction's log entry.
_LOGGED = object()


def _blind(cmd: Command, argv: list[bytes]) -> bool:
    """A write whose reply never depends on the data (declared in the command table)."""
    return cmd.blind is not None and cmd.blind(argv)


def _is_data(cmd: Command) -> bool:
    flags = cmd.flags
    return "write" in flags or "readonly" in flags


def _pipelinable(client: Connection, cmd: Command) -> bool:
    """Whether a request may start before the connection's earlier replies are known:
    a write (its entry follows theirs in the log) or a linearizable read, outside MULTI.

    Not a write while an earlier read (or WATCH) of the connection waits for its
    barrier: the read runs on the keyspace when the barrier passes, and the
    write's entry could be applied by then (committed with the entries the read
    waits for), so the read would see a write sent after it."""
    if client.multi is not None or "script" in cmd.flags:
        return False
    if "write" in cmd.flags:
        return client.read_waiting is None or client.read_waiting.done()
    return "readonly" in cmd.flags and not client.readonly_reads


class ClusterNode:
    """Routes one node's requests to the log, the local keyspace or a redirect."""

    def __init__(self, state: ServerState, node_id: str, group: Group):
        self.state = state
        self.id = node_id
        self.group = group
        self.driver: GroupDriver = group.driver
        self.stamper = group.stamper
        # READONLY reads on a follower are refused once it has not heard from a leader for
        # this long: one election timeout, after which a new leader may be taking writes.
        self.stale_read_s_max = state.settings.raft_tick_ms * state.settings.raft_election_ticks / 1000
        self._expire_pending = False
        self._lease_term = 0  # the term in which this node's lease table was last used
        # Keys of the EVICT entries this leader proposed that have not applied yet -> their bytes.
        self._evicting: dict[bytes, int] = {}
        # Key -> the latest write to it this leader proposed that has not applied yet. Bounded by
        # the proposals in flight: each entry goes when its proposal settles.
        self._pending_writes: dict[bytes, asyncio.Future] = {}

    # The state machine, as the driver calls it.

    def apply(self, data: bytes, origin: Connection | None):
        """Apply one entry; `origin` is the connection that proposed it, when it was this node.

        Its changes are then its own for CLIENT TRACKING (NOLOOP skips them)."""
        tracking = self.state.tracking
        tracking.writer = origin
        try:
            return self.group.apply(data)
        finally:
            tracking.writer = None

    # Routing.

    def redirect(self, cmd: Command | None, argv: list[bytes]) -> bytes | None:
        """None on the leader; else MOVED (for the first key's slot) to the leader, or
        CLUSTERDOWN without one (each counted in INFO errorstats, as Redis counts its redirections)."""
        if self.driver.leader == self.id:
            return None
        slot = 0
        if cmd is not None:
            keys = cmd.key_positions(len(argv))
            if keys:
                slot = key_slot(argv[keys[0]])
        return self.redirect_slot(slot)

    def redirect_slot(self, slot: int) -> bytes | None:
        """None on the leader; else MOVED for `slot` to the leader, or CLUSTERDOWN without one."""
        leader = self.driver.leader
        if leader == self.id:
            return None
        address = self.group.address_of(leader) if leader is not None else None
        if address is None:
            self.state.stats.error("CLUSTERDOWN The cluster is down")
            return CLUSTERDOWN
        moved = f"MOVED {slot} {address.client_addr}"
        self.state.stats.error(moved)
        return b"-%s\r\n" % moved.encode()

    def write_concern(self, client) -> WriteConcern:
        return client.write_concern or WriteConcern(self.state.settings.write_concern)

    # Requests.

    def execute(self, client: Connection, argv: list[bytes], now_ms: int) -> bytes | asyncio.Future | None:
        """The encoded reply or a Future of it; None (nothing done) when the request has
        to wait until the connection's earlier replies are known."""
        cmd = dispatch.resolve(argv)
        earlier = client.waiting
        if cmd.__class__ is str or not client.authenticated:
            return None if earlier is not None else dispatch.execute(client, argv, now_ms)
        if earlier is not None and not _pipelinable(client, cmd):
            return None
        name = cmd.name if cmd.container is None else ""
        if client.multi is not None:
            if name == "exec":
                return self._exec(client)
            if "unwatches" in cmd.flags:
                client.watch_versions = {}
            if "leader_state" in cmd.flags:
                return dispatch.reject(client, "ERR Command not allowed inside a transaction")
            if "script" in cmd.flags:
                # EXEC's entry carries commands; a script's effects are known only after it ran.
                return dispatch.reject(client, "ERR scripts are not allowed inside MULTI on a replicated node")
            if _is_data(cmd) and name not in dispatch.MULTI_DIRECT:
                moved = self.redirect(cmd, argv)
                if moved is not None:
                    client.multi_failed = True
                    return moved
            return dispatch.execute(client, argv, now_ms)
        if "script" in cmd.flags:
            return script_replication.execute(self, client, cmd, argv, now_ms)
        if "membership" in cmd.flags:
            return membership.execute(self, client, cmd, argv)
        if name == "watch":
            return self._after_barrier(client, cmd, argv, lambda: self._watch(client, argv))
        if "unwatches" in cmd.flags:
            client.watch_versions = {}
        if "write" in cmd.flags:
            moved = self.redirect(cmd, argv)
            if moved is not None:
                return moved
            return self._write(client, cmd, argv, now_ms)
        if "readonly" in cmd.flags:
            if client.readonly_reads:
                return self._stale_read(client, argv, now_ms)
            return self._after_barrier(client, cmd, argv, lambda: self._read(client, name, argv),
                                       client.unanswered() if earlier is not None else ())
        return dispatch.execute(client, argv, now_ms)

    def _write(self, client: Connection, cmd: Command, argv: list[bytes], now_ms: int) -> bytes | asyncio.Future:
        """Propose a write, voiding its keys' leases first (the single node's `void_keys`)."""
        if "denyoom" in cmd.flags and self.state.db.maxmemory and not dispatch.memory_ok(client, now_ms):
            return dispatch.reject(client, OOM)
        leases = self.leases()
        if cmd.name == "leaseset":
            argv = self._lease_set(leases, argv, now_ms)
            if argv.__class__ is not list:
                return _encode(argv, client.resp3)
        elif leases.outstanding:
            leases.void_keys(cmd, argv)
        data = state_machine.encode_command(self.stamper.next_ms(), argv)
        start_ns = time.perf_counter_ns()
        reply = self._propose(client, data, _blind(cmd, argv), keys=[argv[i] for i in cmd.key_positions(len(argv))])
        stat = dispatch.STATS[cmd.full_name]
        if reply.__class__ is bytes:
            self._count(stat, reply, start_ns)
        else:
            reply.add_done_callback(
                lambda done: done.cancelled() or done.exception() or self._count(stat, done.result(), start_ns))
        return reply

    def _count(self, stat, reply: bytes, start_ns: int) -> None:
        """A write's statistics, timed from its proposal to its reply: on a replicated node a
        write's latency is the log's (commit and apply), which is what an operator watches."""
        stat.record(time.perf_counter_ns() - start_ns)
        if reply[:1] == b"-":
            stat.failed += 1
            self.state.stats.error(reply[1:].split(b"\r\n", 1)[0].decode("utf-8", "replace"))

    def make_room(self) -> bool:
        """Whether a denyoom write may go ahead under maxmemory (the leader's setting).

        Over the limit, the leader proposes the keyspace's eviction plan as an
        EVICT entry, which the log puts ahead of the write that asked; the keys
        count as gone from then on, so writes that follow before it applies do
        not choose them again; a plan is at most EVICT_KEYS_PER_PLAN_MAX keys,
        so a large excess takes several entries. A follower evicts nothing and
        only reports.
        """
        db = self.state.db
        if not db.maxmemory:
            return True
        if not self.driver.is_leader():
            return db.used_memory() <= db.maxmemory
        while True:
            victims, within = db.eviction_plan(self._evicting)
            if not victims:
                return within
            keys = [key for key, _size in victims]
            try:
                future = self.driver.propose(state_machine.encode_evict(self.stamper.next_ms(), keys),
                                             WriteConcern.MAJORITY, False)
            except ProposalDropped:
                return False
            self._evicting.update(victims)
            future.add_done_callback(lambda done, keys=keys: self._evicted(done, keys))
            if within:
                return True

    def _evicted(self, future: asyncio.Future, keys: list[bytes]) -> None:
        for key in keys:
            self._evicting.pop(key, None)
        if not future.cancelled():
            future.exception()  # retrieved: a lost eviction is planned again by the next write

    def _read(self, client: Connection, name: str, argv: list[bytes]) -> bytes:
        if name == "leaseget":
            self.leases()
        return dispatch.execute(client, argv, int(time.time() * 1000))

    def leases(self) -> LeaseTable:
        """The leader's lease table, emptied when this node leads a new term: writes that
        other leaders accepted in between (a DEL of a missing key changes nothing here)
        may have voided any token it holds."""
        term = self.driver.term
        if term != self._lease_term:
            self._lease_term = term
            self.state.leases.void(None)
        return self.state.leases

    @staticmethod
    def _lease_set(leases: LeaseTable, argv: list[bytes], now_ms: int) -> list[bytes] | CommandError | None:
        """LEASESET's token check on the leader: the SET to propose, or its reply (nil or an error)."""
        try:
            token, _expire_at_ms = parse_leaseset(argv, now_ms)
        except CommandError as exc:
            return exc
        if not leases.consume(argv[1], token, now_ms):
            return None
        return [b"SET", argv[1], argv[2], *argv[4:]]

    def _stale_read(self, client: Connection, argv: list[bytes], now_ms: int) -> bytes:
        """READONLY: the local keyspace, if this node heard from a leader within the staleness bound."""
        if self.driver.leader_contact_age_s() > self.stale_read_s_max:
            return error_line(f"TRYAGAIN no contact with a leader for over {self.stale_read_s_max:g}s")
        return dispatch.execute(client, argv, now_ms)

    def _propose(self, client: Connection, data: bytes, blind: bool,
                 finish: Callable[[object], bytes] | None = None, keys: Sequence[bytes] = ()) -> bytes | asyncio.Future:
        try:
            inner = self.driver.propose(data, self.write_concern(client), blind, client)
        except ProposalDropped as exc:
            return error_line(f"TRYAGAIN {exc}")
        self.note_pending(keys, inner)
        if blind:
            # None: acknowledged under `one` before it applied; else the reply it applied with.
            return _chain(inner, lambda reply: OK_REPLY if reply is None else _encode(reply, client.resp3))
        return _chain(inner, finish or (lambda reply: _encode(reply, client.resp3)))

    def note_pending(self, keys: Sequence[bytes], proposal: asyncio.Future) -> None:
        """Remember `proposal` as the latest write to `keys` until it is applied (or fails).

        Only scripts read this, to copy their keys when no write to them is in flight;
        correctness rests on the versions an entry's watches check, this saves reruns."""
        if not keys:
            return
        pending = self._pending_writes
        for key in keys:
            pending[key] = proposal

        def settled(_done: asyncio.Future) -> None:
            for key in keys:
                if pending.get(key) is proposal:
                    del pending[key]

        proposal.add_done_callback(settled)

    def pending_writes(self, keys: Sequence[bytes]) -> list[asyncio.Future]:
        """This leader's proposals to `keys` that have not applied yet."""
        pending = self._pending_writes
        return [pending[key] for key in keys if key in pending]

    def _after_barrier(self, client: Connection, cmd: Command, argv: list[bytes],
                       serve: Callable[[], bytes], earlier: Sequence[asyncio.Future] = ()) -> bytes | asyncio.Future:
        """serve() once a read barrier issued now has passed and every `earlier` future is done."""
        moved = self.redirect(cmd, argv)
        if moved is not None:
            return moved
        try:
            inner = self.driver.read_barrier()
        except ProposalDropped as exc:
            return error_line(f"TRYAGAIN {exc}")
        if earlier:
            inner = _after(earlier, inner)
        client.read_waiting = _chain(inner, lambda _none: serve())
        return client.read_waiting

    def _watch(self, client: Connection, argv: list[bytes]) -> bytes:
        now_ms = int(time.time() * 1000)
        reply = dispatch.execute(client, argv, now_ms)
        if reply == OK_REPLY:
            db = self.state.db
            for key in argv[1:]:
                client.watch_versions.setdefault(key, db.version_of(key, now_ms))
        return reply

    def _exec(self, client: Connection) -> bytes | asyncio.Future:
        queued = client.multi
        failed = client.multi_failed
        watches = list(client.watch_versions.items())
        client.multi = None
        client.multi_failed = False
        client.watch_versions = {}
        self.state.unwatch_all(client)
        if failed:
            return error_line("EXECABORT Transaction discarded because of previous errors.")
        if sum(_is_data(cmd) for cmd, _ in queued) > state_machine.EXEC_COMMANDS_MAX:
            return error_line(f"EXECABORT more than {state_machine.EXEC_COMMANDS_MAX} commands in one transaction")
        moved = self.redirect(None, [])
        if moved is not None:
            return moved
        now_ms = int(time.time() * 1000)
        if (self.state.db.maxmemory and any("denyoom" in cmd.flags for cmd, _ in queued)
                and not dispatch.memory_ok(client, now_ms)):
            return error_line("EXECABORT Transaction discarded because of: " + OOM)
        leases = self.leases()
        argvs = []
        # One item per queued command: _LOGGED, a (command, argv) answered locally,
        # or a reply known already (a refused LEASESET's nil or error).
        plan: list = []
        for cmd, argv in queued:
            if not _is_data(cmd):
                plan.append((cmd, argv))
                continue
            if cmd.name == "leaseset":
                argv = self._lease_set(leases, argv, now_ms)
                if argv.__class__ is not list:
                    plan.append(argv)
                    continue
            elif "write" in cmd.flags and leases.outstanding:
                leases.void_keys(cmd, argv)
            argvs.append(argv)
            plan.append(_LOGGED)
        if not argvs and not watches:
            return _encode(_exec_replies(client, plan, []), client.resp3)
        data = state_machine.encode_exec(self.stamper.next_ms(), watches, argvs)
        keys = [argv[i] for cmd, argv in queued if _is_data(cmd) for i in cmd.key_positions(len(argv))]
        return self._propose(client, data, False,
                             lambda logged: _encode(_exec_replies(client, plan, logged), client.resp3), keys)

    # Views (INFO replication, CLUSTER INFO / SLOTS / SHARDS / NODES / MEMBERS): kvorum.server.cluster_views.

    def roles(self) -> dict[str, str]:
        return cluster_views.roles(self)

    def ordered_nodes(self, learners: bool = False) -> list[Member]:
        return cluster_views.ordered_nodes(self, learners)

    def replication_info(self) -> dict:
        return cluster_views.replication_info(self)

    def role_reply(self) -> list:
        return cluster_views.role_reply(self)

    def cluster_info(self) -> dict:
        return cluster_views.cluster_info(self)

    def member_rows(self) -> list:
        return cluster_views.member_rows(self)

    # Membership (CLUSTER MEMBER, MOVE-LEADER, FAILOVER): kvorum.server.membership.

    def member_command(self, argv: list[bytes]):
        return membership.member_command(self, argv)

    def move_leader(self, to: str):
        return membership.move_leader(self, to)

    def failover(self):
        return membership.failover(self)

    # The leader's share of expiry (called by the server cron).

    def cron(self, now_ms: int) -> None:
        self.group.cron()
        if self._expire_pending or not self.driver.is_leader():
            return
        keys = self.state.db.due_keys(now_ms, EXPIRE_KEYS_PER_CYCLE)
        if not keys:
            return
        try:
            future = self.driver.propose(state_machine.encode_expire(self.stamper.next_ms(), keys),
                                         WriteConcern.MAJORITY, False)
        except ProposalDropped:
            return
        self._expire_pending = True
        future.add_done_callback(self._expire_done)

    def _expire_done(self, future: asyncio.Future) -> None:
        self._expire_pending = False
        if not future.cancelled():
            future.exception()  # retrieved: a lost expiry is proposed again by the next cycle


def _encode(reply, resp3: bool) -> bytes:
    if reply.__class__ is CommandError:
        return error_line(reply.message)
    return encode(reply, resp3)


def _exec_replies(client: Connection, plan: list, logged):
    """EXEC's reply: the log entry's replies and the local ones, in the queued order.

    The local commands run once the entry is applied, and not at all when a
    watched key changed (nil), as Redis runs none of a transaction then."""
    if logged is NullArray:
        return NullArray
    logged = iter(logged)
    now_ms = int(time.time() * 1000)
    replies = []
    for item in plan:
        if item is _LOGGED:
            replies.append(next(logged))
        elif item.__class__ is tuple:
            replies.append(dispatch.call(client, item[0], item[1], now_ms))
        else:
            replies.append(item)
    return replies


def _after(earlier: Sequence[asyncio.Future], barrier: asyncio.Future) -> asyncio.Future:
    """A future with `barrier`'s outcome, done no sooner than every `earlier` future."""
    outer = barrier.get_loop().create_future()

    def copy(f: asyncio.Future) -> None:
        if outer.done():
            return
        if f.cancelled():
            outer.cancel()
        elif f.exception() is not None:
            outer.set_exception(f.exception())
        else:
            outer.set_result(None)

    # return_exceptions: an earlier request's failure is its own reply, not the read's.
    all_earlier = asyncio.gather(*earlier, return_exceptions=True)
    all_earlier.add_done_callback(lambda _all: barrier.add_done_callback(copy))
    return outer


def _chain(inner: asyncio.Future, finish: Callable) -> asyncio.Future:
    """A future of the encoded reply: finish(result), or the Unavailable error's line."""
    outer = inner.get_loop().create_future()

    def done(f: asyncio.Future) -> None:
        if outer.done():
            return
        if f.cancelled():
            outer.set_result(error_line("TRYAGAIN the request was cancelled"))
            return
        exc = f.exception()
        if exc is None:
            outer.set_result(finish(f.result()))
        elif isinstance(exc, Unavailable):
            outer.set_result(error_line(str(exc)))
        else:
            outer.set_exception(exc)

    inner.add_done_callback(done)
    return outer


async def start_replication(state: ServerState, join: list[Member] | None = None,
                            ) -> tuple[PeerHub, GroupDriver]:
    """Build the cluster front end and start group 0's driver.

    A node started with --peers seeds its roster from them; a joining node
    (`join`: the roster a member sent it) starts outside the membership and
    waits for the leader to add it as a learner.
    """
    settings = state.settings
    if join is None:
        seed = [Member(n.id, n.host, n.port, n.bus_port) for n in
                parse_peers(settings.peers, settings.bus_port, settings.node_id).values()]
        initial = Membership(frozenset(m.id for m in seed))
    else:
        seed = join
        initial = Membership(frozenset())
    me = next(m for m in seed if m.id == settings.node_id)
    # Listen on the bus port given, which may differ from the one peers are told (the roster's).
    secret = load_cluster_secret(settings.cluster_secret, settings.cluster_secret_file)
    if not secret:
        log.warning("the cluster bus has no cluster-secret: any process that reaches the bus port can "
                    "take part in consensus; use this on trusted networks only")
    hub = PeerHub(settings.node_id, settings.cluster_id, (me.host, settings.bus_port or me.bus_port),
                  secret=secret)
    on_removed = membership.removed(state)
    hub.on_removed = on_removed
    group = Group(0, settings.node_id, state.db, state.leases, hub, seed, on_removed=on_removed,
                  functions=state.functions)
    driver = GroupDriver(
        0, settings.node_id, initial, settings.data_dir, settings.fsync, hub,
        apply=lambda data, origin: node.apply(data, origin), dump=group.dump, load=group.load,
        on_membership=group.on_membership, tick_ms=settings.raft_tick_ms,
        election_tick=settings.raft_election_ticks, snapshot_entries=settings.snapshot_entries,
    )
    group.attach(driver)
    node = ClusterNode(state, settings.node_id, group)
    state.cluster = node
    await hub.start()
    await driver.start()
    log.info("replicated node %s of %s, cluster id %s, data in %s (fsync %s)", settings.node_id,
             ",".join(m.id for m in group.roster.live()), settings.cluster_id, settings.data_dir, settings.fsync)
    return hub, driver
