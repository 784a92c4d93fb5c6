"""A replicated node's front end: which requests go through the log, which are redirected.

Theory of operation
-------------------
`ClusterNode.execute` is the cluster mode's version of `dispatch.execute`. It
adds gates in front of the single node's line, reading only the command
table's flags:

    unknown / arity / auth errors   -> the single node's gates answer them
    inside MULTI                    -> queued as on a single node; a data
                                       command queued on a follower fails the
                                       transaction with MOVED
    EXEC                            -> the whole transaction is one log entry
    WATCH                           -> (leader) after a read barrier, records
                                       each key's version; EXEC carries them
    write                           -> (leader) proposed as a log entry; the
                                       reply comes when it is applied
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

A request that needs the log returns a Future of its encoded reply. The
connection (`ClusterClient`) runs one connection's requests strictly in order:
it stops at a pending request and resumes when its reply is written, so a
read pipelined after a write sees the write. Concurrency comes from many
connections, whose proposals share each fsync.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import TYPE_CHECKING, Callable

from kvorum.cluster import state_machine
from kvorum.cluster.concern import WriteConcern
from kvorum.cluster.slots import key_slot
from kvorum.cluster.topology import NodeAddress, parse_peers
from kvorum.commands.table import Command
from kvorum.consensus.replicated_log import ProposalDropped
from kvorum.protocol.encoder import OK_REPLY, encode, error_line
from kvorum.protocol.parser import QUERY_BUFFER_EXCEEDED
from kvorum.protocol.values import CommandError
from kvorum.server import dispatch
from kvorum.server.connection import Client
from kvorum.server.raft_driver import RaftDriver, Unavailable

if TYPE_CHECKING:
    from kvorum.server.state import ServerState

log = logging.getLogger("kvorum.cluster")

CLUSTERDOWN = b"-CLUSTERDOWN The cluster is down\r\n"
# Parsed requests one connection may hold while one of its requests waits for
# the log; past it, reading from that connection pauses.
PIPELINE_REQUESTS_MAX = 1024
# Expired keys the leader's cron proposes per cycle (one EXPIRE entry).
EXPIRE_KEYS_PER_CYCLE = state_machine.EXPIRE_KEYS_PER_ENTRY_MAX

# Writes whose reply never depends on the data (the `one` concern may answer them early).
_BLIND_ARGC = {"set": (3,), "setex": (4,), "psetex": (4,)}


# Commands after which a connection watches nothing (its WATCH versions are dropped).
_UNWATCHING = frozenset({"discard", "unwatch", "reset"})


def _blind(cmd: Command, argv: list[bytes]) -> bool:
    if cmd.name == "mset":
        return len(argv) % 2 == 1
    if cmd.name not in _BLIND_ARGC or len(argv) not in _BLIND_ARGC[cmd.name]:
        return False
    return cmd.name == "set" or (argv[2].isdigit() and int(argv[2]) > 0)


def _is_data(cmd: Command) -> bool:
    flags = cmd.flags
    return "write" in flags or "readonly" in flags


class ClusterNode:
    """Routes one node's requests to the log, the local keyspace or a redirect."""

    def __init__(self, state: ServerState, node_id: str, nodes: dict[str, NodeAddress]):
        self.state = state
        self.id = node_id
        self.nodes = nodes
        # Set by start_replication: the driver needs this node's apply/dump/load first.
        self.driver: RaftDriver = None  # type: ignore[assignment]
        self.stamper = state_machine.Stamper()
        # READONLY reads on a follower are refused once it has not heard from a leader for
        # this long: one election timeout, after which a new leader may be taking writes.
        self.stale_read_s_max = state.settings.raft_tick_ms * state.settings.raft_election_ticks / 1000
        self._expire_pending = False

    # The state machine, as the driver calls it.

    def apply(self, data: bytes):
        return state_machine.apply(self.state.db, data, self.stamper)

    def dump(self) -> bytes:
        return self.state.db.dump()

    def load(self, blob: bytes) -> None:
        self.state.db.load(blob)

    # Routing.

    def redirect(self, cmd: Command | None, argv: list[bytes]) -> bytes | None:
        """None on the leader; else MOVED to the leader, or CLUSTERDOWN without one."""
        leader = self.driver.leader_id()
        if leader == self.id:
            return None
        if leader is None or leader not in self.nodes:
            return CLUSTERDOWN
        slot = 0
        if cmd is not None:
            keys = cmd.key_positions(len(argv))
            if keys:
                slot = key_slot(argv[keys[0]])
        return b"-MOVED %d %s\r\n" % (slot, self.nodes[leader].client_addr.encode())

    def write_concern(self, client) -> WriteConcern:
        return client.write_concern or WriteConcern(self.state.settings.write_concern)

    # Requests.

    def execute(self, client: ClusterClient, argv: list[bytes], now_ms: int) -> bytes | asyncio.Future:
        cmd = dispatch.resolve(argv)
        if cmd.__class__ is str or not client.authenticated:
            return dispatch.execute(client, argv, now_ms)
        name = cmd.name if cmd.container is None else ""
        if client.multi is not None:
            if name == "exec":
                return self._exec(client)
            if name in _UNWATCHING:
                client.watch_versions = {}
            if _is_data(cmd) and name not in dispatch.MULTI_DIRECT:
                moved = self.redirect(cmd, argv)
                if moved is not None:
                    client.multi_failed = True
                    return moved
            return dispatch.execute(client, argv, now_ms)
        if name == "watch":
            return self._after_barrier(client, cmd, argv, lambda: self._watch(client, argv))
        if name in _UNWATCHING:
            client.watch_versions = {}
        if "write" in cmd.flags:
            moved = self.redirect(cmd, argv)
            if moved is not None:
                return moved
            data = state_machine.encode_command(self.stamper.next_ms(), argv)
            blind = _blind(cmd, argv)
            return self._propose(client, data, blind)
        if "readonly" in cmd.flags:
            if client.readonly_reads:
                return self._stale_read(client, argv, now_ms)
            return self._after_barrier(client, cmd, argv,
                                       lambda: dispatch.execute(client, argv, int(time.time() * 1000)))
        return dispatch.execute(client, argv, now_ms)

    def _stale_read(self, client: ClusterClient, argv: list[bytes], now_ms: int) -> bytes:
        """READONLY: the local keyspace, if this node heard from a leader within the staleness bound."""
        if self.driver.leader_contact_age_s() > self.stale_read_s_max:
            return error_line(f"TRYAGAIN no contact with a leader for over {self.stale_read_s_max:g}s")
        return dispatch.execute(client, argv, now_ms)

    def _propose(self, client: ClusterClient, data: bytes, blind: bool) -> bytes | asyncio.Future:
        try:
            inner = self.driver.propose(data, self.write_concern(client), blind)
        except ProposalDropped as exc:
            return error_line(f"TRYAGAIN {exc}")
        if blind:
            return _chain(inner, lambda _reply: OK_REPLY)
        return _chain(inner, lambda reply: _encode(reply, client.resp3))

    def _after_barrier(self, client: ClusterClient, cmd: Command, argv: list[bytes],
                       serve: Callable[[], bytes]) -> bytes | asyncio.Future:
        moved = self.redirect(cmd, argv)
        if moved is not None:
            return moved
        try:
            inner = self.driver.read_barrier()
        except ProposalDropped as exc:
            return error_line(f"TRYAGAIN {exc}")
        return _chain(inner, lambda _none: serve())

    def _watch(self, client: ClusterClient, argv: list[bytes]) -> bytes:
        now_ms = int(time.time() * 1000)
        reply = dispatch.execute(client, argv, now_ms)
        if reply == OK_REPLY:
            db = self.state.db
            for key in argv[1:]:
                client.watch_versions.setdefault(key, db.version_of(key, now_ms))
        return reply

    def _exec(self, client: ClusterClient) -> bytes | asyncio.Future:
        queued = client.multi
        failed = client.multi_failed
        watches = list(client.watch_versions.items())
        client.multi = None
        client.multi_failed = False
        client.watch_versions = {}
        self.state.unwatch_all(client)
        if failed:
            return error_line("EXECABORT Transaction discarded because of previous errors.")
        if any(not _is_data(cmd) for cmd, _ in queued):
            return error_line("EXECABORT a replicated transaction may hold only data commands")
        if len(queued) > state_machine.EXEC_COMMANDS_MAX:
            return error_line(f"EXECABORT more than {state_machine.EXEC_COMMANDS_MAX} commands in one transaction")
        moved = self.redirect(None, [])
        if moved is not None:
            return moved
        data = state_machine.encode_exec(self.stamper.next_ms(), watches, [argv for _, argv in queued])
        return self._propose(client, data, False)

    # Views (INFO replication, CLUSTER INFO / SLOTS / SHARDS / NODES).

    def roles(self) -> dict[str, str]:
        """node id -> "master" for the known leader, "slave" for everyone else."""
        leader = self.driver.leader_id()
        return {nid: ("master" if nid == leader else "slave") for nid in self.nodes}

    def ordered_nodes(self) -> list[NodeAddress]:
        """The leader first (the slot owner clients write to), then the others by id."""
        leader = self.driver.leader_id() or self.id
        return sorted(self.nodes.values(), key=lambda n: (n.id != leader, n.id))

    def replication_info(self) -> dict:
        status = self.driver.status()
        leader = status.leader
        info = {
            "role": "master" if leader == self.id else "slave",
            "raft_role": status.role.value,
            "raft_term": status.term,
            "raft_leader": leader or "-",
            "raft_commit_index": status.commit,
            "raft_applied_index": self.driver.applied_index,
            "raft_last_index": status.last_index,
            "raft_snapshot_index": self.driver.snapshot_index,
            "raft_lease_valid": int(status.lease_valid),
            "write_concern": self.state.settings.write_concern,
        }
        if leader is not None and leader != self.id:
            address = self.nodes[leader]
            info.update(master_host=address.host, master_port=address.port, master_link_status="up")
        else:
            followers = [n for n in self.nodes if n != self.id]
            info["connected_slaves"] = len(followers)
            for i, nid in enumerate(followers):
                progress = status.progress.get(nid)
                match = progress.match if progress is not None else 0
                address = self.nodes[nid]
                info[f"slave{i}"] = (f"ip={address.host},port={address.port},state=online,offset={match},"
                                     f"lag={status.last_index - match},id={nid}")
        info["master_repl_offset"] = self.driver.applied_index
        return info

    def role_reply(self) -> list:
        """ROLE: Redis' master form on the leader, its replica form elsewhere (offsets are log indexes)."""
        status = self.driver.status()
        applied = self.driver.applied_index
        if status.leader == self.id:
            replicas = [[self.nodes[nid].host, str(self.nodes[nid].port), str(progress.match)]
                        for nid, progress in sorted(status.progress.items()) if nid != self.id]
            return [b"master", applied, replicas]
        if status.leader is None or status.leader not in self.nodes:
            return [b"slave", "?", -1, b"connect", applied]
        leader = self.nodes[status.leader]
        return [b"slave", leader.host, leader.port, b"connected", applied]

    def cluster_info(self) -> dict:
        status = self.driver.status()
        ok = status.leader is not None
        info = {
            "cluster_state": "ok" if ok else "fail",
            "cluster_slots_assigned": 16384,
            "cluster_slots_ok": 16384 if ok else 0,
            "cluster_slots_pfail": 0,
            "cluster_slots_fail": 0 if ok else 16384,
            "cluster_known_nodes": len(self.nodes),
            "cluster_size": 1,
            "cluster_current_epoch": status.term,
            "cluster_my_epoch": status.term,
            "kvorum_node_id": self.id,
        }
        info.update(self.replication_info())
        if status.progress:
            for nid, progress in sorted(status.progress.items()):
                info[f"raft_peer_{nid}"] = (f"match={progress.match},lag={status.last_index - progress.match},"
                                            f"state={progress.state},active={int(progress.recent_active)}")
        return info

    # The leader's share of expiry (called by the server cron).

    def cron(self, now_ms: int) -> None:
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


class ClusterClient(Client):
    """A client connection of a replicated node: requests may wait for the log.

    Requests run strictly in order. `pending` holds parsed requests not run
    yet; `waiting` is the one request whose reply is not known yet. Reading
    pauses while `pending` is past PIPELINE_REQUESTS_MAX or the transport's
    buffer is full, so one connection holds a bounded amount of work.
    """

    def __init__(self, server: ServerState):
        super().__init__(server)
        self.cluster: ClusterNode = server.cluster
        # Per connection: READONLY, CLIENT WRITECONCERN, WATCH versions.
        self.readonly_reads = False
        self.write_concern: WriteConcern | None = None
        self.watch_versions: dict[bytes, int] = {}
        # Flow.
        self.pending: collections.deque[list[bytes]] = collections.deque()
        self.waiting: asyncio.Future | None = None
        self.reading_paused = False

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.server.stats.net_input_bytes += len(data)
        self.pending.extend(self.parser.feed(data))
        self._advance()

    def _advance(self) -> None:
        """Run pending requests until one has to wait, then write what is ready in one write."""
        if self.closed or self.waiting is not None:
            return
        parts = []
        stats = self.server.stats
        pending = self.pending
        while pending and not self.close_after_reply and not self.writing_paused:
            argv = pending.popleft()
            now_ms = int(time.time() * 1000)
            self.last_ms = now_ms
            self.last_command = argv[0]
            stats.commands_processed += 1
            reply = self.cluster.execute(self, argv, now_ms)
            if reply.__class__ is bytes:
                parts.append(reply)
                continue
            self.waiting = reply
            reply.add_done_callback(self._reply_ready)
            break
        if not pending and self.waiting is None and not self.close_after_reply:
            parts.extend(self._protocol_error())
        if self.closed:
            return
        self._write(b"".join(parts))
        self._flow()

    def _protocol_error(self) -> list[bytes]:
        error = self.parser.error
        if error is None:
            return []
        if error == QUERY_BUFFER_EXCEEDED:
            log.warning("closing client id=%d addr=%s that reached max query buffer length", self.id, self.addr)
            self.kill()
            return []
        self.close_after_reply = True
        return [error_line("ERR " + error)]

    def _reply_ready(self, future: asyncio.Future) -> None:
        self.waiting = None
        if self.closed:
            return
        self._write(future.result())
        self._advance()

    def _flow(self) -> None:
        if self.closed:
            return
        busy = len(self.pending) > PIPELINE_REQUESTS_MAX or self.writing_paused
        if busy and not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()
        elif not busy and self.reading_paused:
            self.reading_paused = False
            self.transport.resume_reading()

    def pause_writing(self) -> None:
        self.writing_paused = True
        self._flow()

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._advance()


async def start_replication(state: ServerState) -> tuple[RaftDriver, type[ClusterClient]]:
    """Build the cluster front end and start the Raft driver; the listener's protocol class."""
    settings = state.settings
    nodes = parse_peers(settings.peers, settings.bus_port, settings.node_id)
    node = ClusterNode(state, settings.node_id, nodes)
    driver = RaftDriver(
        settings.node_id, nodes, settings.data_dir, settings.fsync, settings.cluster_id,
        apply=node.apply, dump=node.dump, load=node.load, tick_ms=settings.raft_tick_ms,
        election_tick=settings.raft_election_ticks, snapshot_entries=settings.snapshot_entries,
    )
    node.driver = driver
    state.cluster = node
    await driver.start()
    log.info("replicated node %s of %s, cluster id %s, data in %s (fsync %s)", settings.node_id,
             ",".join(nodes), settings.cluster_id, settings.data_dir, settings.fsync)
    return driver, ClusterClient
