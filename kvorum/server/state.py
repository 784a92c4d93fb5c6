"""Server-wide state of a single node: settings, the keyspace, clients, stats, watched keys.

One `ServerState` per node, shared by every connection. It holds no sockets:
the asyncio shell (`kvorum.server.app`) owns the listener and timers, and each
connection (`kvorum.server.connection`) registers itself here.

WATCH works as Redis' touchWatchedKey: `watchers` maps a key to the clients
watching it, and the keyspace's `on_key_modified` hook (fired after every
change, expiry and eviction included) marks those clients dirty, so their EXEC
answers a null array. A flush (hook called with None) dirties only the watches
of keys that existed when WATCH ran, as Redis' touchAllWatchedKeysInDb does.
The hook (one of the keyspace's key listeners) is installed only while some
key is watched, so that writes pay nothing for WATCH when nobody uses it.
"""

from __future__ import annotations

import collections
import logging
import os
import time
from typing import TYPE_CHECKING, Callable

from kvorum.commands.connection import REDIS_VERSION
from kvorum.scripting.functions import FunctionRegistry
from kvorum.scripting.runtime import Engine
from kvorum.server import dispatch, metrics
from kvorum.server.command_stats import LATENCY_LINEAR_NS_MAX, ErrorStats, SlowLog
from kvorum.settings import LOG_LEVELS_PY, Settings
from kvorum.server.leases import TOKEN_MAX, LeaseTable
from kvorum.server.pubsub import PubSub
from kvorum.server.tracking import Tracking
from kvorum.store import Keyspace

if TYPE_CHECKING:
    from kvorum.server.connection import Connection

# Once-a-second ops/sec samples kept for the admin dashboard: ten minutes.
OPS_HISTORY_S_MAX = 600
# slowlog_ns while slowlog-log-slower-than is negative (the slow log is off): above any duration.
SLOWLOG_OFF_NS = 2**63


def slowlog_threshold_ns(slower_than_us: int) -> int:
    """The duration a call must exceed to be logged: Redis logs calls taking more than the setting."""
    return SLOWLOG_OFF_NS if slower_than_us < 0 else slower_than_us * 1000


class Stats:
    """Counters shown by INFO; CONFIG RESETSTAT zeroes them.

    `ops_history` keeps the last OPS_HISTORY_S_MAX once-a-second ops/sec samples (the dashboard's chart)."""

    __slots__ = (
        "connections_received", "commands_processed", "net_input_bytes", "net_output_bytes",
        "rejected_connections", "error_replies", "errors", "ops_per_sec", "ops_history", "_ops_sample",
        "_ops_sample_ms",
    )

    def __init__(self) -> None:
        self.errors = ErrorStats()
        self.ops_history: collections.deque[tuple[int, int]] = collections.deque(maxlen=OPS_HISTORY_S_MAX)
        self.reset()

    def error(self, message: str) -> None:
        """One error reply (`message` without the leading '-')."""
        self.error_replies += 1
        self.errors.add(message)

    def reset(self) -> None:
        self.connections_received = 0
        self.commands_processed = 0
        self.net_input_bytes = 0
        self.net_output_bytes = 0
        self.rejected_connections = 0
        self.error_replies = 0
        self.errors.reset()
        self.ops_per_sec = 0
        self._ops_sample = 0
        self._ops_sample_ms = 0

    def sample_ops(self, now_ms: int) -> None:
        """Update the instantaneous ops/sec from the commands since the last sample."""
        if self._ops_sample_ms and now_ms > self._ops_sample_ms:
            done = self.commands_processed - self._ops_sample
            self.ops_per_sec = done * 1000 // (now_ms - self._ops_sample_ms)
        self._ops_sample = self.commands_processed
        self._ops_sample_ms = now_ms
        self.ops_history.append((now_ms, self.ops_per_sec))


class ServerState:
    def __init__(self, settings: Settings):
        self.settings = settings
        # Full command name -> its statistics (INFO commandstats, latencystats, /metrics).
        self.command_stats = dispatch.prepare()
        self.slowlog = SlowLog()
        self.slowlog_ns = 0
        self.stats_fast_ns = 0
        self.set_slowlog_threshold(settings.slowlog_log_slower_than_us)
        self.db = Keyspace(settings.maxmemory_bytes, settings.maxmemory_policy)
        self.db.proto_max_bulk_len = settings.proto_max_bulk_len_bytes
        self.db.hash_max_listpack_entries = settings.hash_max_listpack_entries
        self.db.hash_max_listpack_value_bytes = settings.hash_max_listpack_value_bytes
        self.started_s = time.time()
        self.started_monotonic_s = time.monotonic()
        self.run_id = os.urandom(20).hex()
        self.stats = Stats()
        # Writes since start (INFO persistence: rdb_changes_since_last_save).
        self.dirty = 0
        # id -> client, in connection order (CLIENT LIST).
        self.clients: dict[int, Connection] = {}
        self.client_id_last = 0
        # key -> clients watching it.
        self.watchers: dict[bytes, set[Connection]] = {}
        # LEASEGET / LEASESET tokens, held by this node only (never replicated).
        self.leases = LeaseTable(self.db, token_base=int.from_bytes(os.urandom(8)) % TOKEN_MAX)
        # CLIENT TRACKING (client-side caching) and pub/sub of this node.
        self.tracking = Tracking(self)
        self.pubsub = PubSub()
        # The Lua runtime and script cache (EVAL, SCRIPT ...), this node's only.
        self.scripts = Engine(version=REDIS_VERSION)
        # Lua function libraries (FUNCTION, FCALL); a replicated node's group applies their changes.
        self.functions = FunctionRegistry(self.scripts)
        self.event_loop_name = "asyncio"
        self.port = settings.port
        self.shutting_down = False
        # The replicated node's front end (kvorum.server.replication.ClusterNode); None on a single node.
        self.cluster = None
        # /metrics on the admin port (kvorum.server.metrics), read only when scraped.
        self.metrics_registry = metrics.registry_of(self)
        self.admin_port = 0  # bound by the asyncio shell when admin-port is set
        # Set by the asyncio shell; SHUTDOWN calls it.
        self.request_shutdown: Callable[[], None] = lambda: None

    def apply_setting(self, field: str, value) -> None:
        """Set one validated setting (CONFIG SET) and carry it to where it takes effect."""
        setattr(self.settings, field, value)
        db = self.db
        if field == "maxmemory_bytes":
            db.maxmemory = value
        elif field == "maxmemory_policy":
            db.maxmemory_policy = value
        elif field == "proto_max_bulk_len_bytes":
            db.proto_max_bulk_len = value
        elif field in ("hash_max_listpack_entries", "hash_max_listpack_value_bytes"):
            setattr(db, field, value)
        elif field == "requirepass" and not value:
            # Without a password every client is authenticated, as Redis decides per command.
            for client in self.clients.values():
                client.set_authenticated(True)
        elif field == "slowlog_log_slower_than_us":
            self.set_slowlog_threshold(value)
        elif field == "slowlog_max_len":
            self.slowlog.trim(value)
        elif field == "loglevel":
            logging.getLogger("kvorum").setLevel(LOG_LEVELS_PY[value])
        for client in self.clients.values():
            client.apply_settings()

    def set_slowlog_threshold(self, slower_than_us: int) -> None:
        """Calls longer than `slowlog_ns` are logged; dispatch's hot path counts only calls shorter
        than `stats_fast_ns` itself, and hands the rest (logged, or off its histogram's linear
        part) to `dispatch.slow`."""
        self.slowlog_ns = slowlog_threshold_ns(slower_than_us)
        self.stats_fast_ns = min(self.slowlog_ns + 1, LATENCY_LINEAR_NS_MAX)

    def reset_stats(self) -> None:
        """CONFIG RESETSTAT: the counters of INFO stats, commandstats, errorstats and latencystats."""
        self.stats.reset()
        for stat in self.command_stats.values():
            stat.reset()
        db = self.db
        db.keyspace_hits = db.keyspace_misses = db.expired_keys = db.evicted_keys = 0

    # Dispatch, for commands that run other commands (EXEC).
    call = staticmethod(dispatch.call)
    memory_ok = staticmethod(dispatch.memory_ok)

    def next_client_id(self) -> int:
        self.client_id_last += 1
        return self.client_id_last

    def auth_required(self) -> bool:
        return bool(self.settings.requirepass)

    # WATCH.

    def watch(self, client: Connection, key: bytes, now_ms: int) -> None:
        if key in client.watched:
            return
        client.watched[key] = self.db.contains(key, now_ms)
        if not self.watchers:
            self.db.add_key_listener(self.key_modified)
        self.watchers.setdefault(key, set()).add(client)

    def unwatch_all(self, client: Connection) -> None:
        for key in client.watched:
            clients = self.watchers.get(key)
            if clients is not None:
                clients.discard(client)
                if not clients:
                    del self.watchers[key]
        client.watched.clear()
        client.watch_dirty = False
        if not self.watchers and self.db.has_key_listener(self.key_modified):
            self.db.remove_key_listener(self.key_modified)

    def key_modified(self, key: bytes | None) -> None:
        if not self.watchers:
            return
        if key is not None:
            clients = self.watchers.get(key)
            if clients:
                for client in clients:
                    client.watch_dirty = True
            return
        for watched_key, clients in self.watchers.items():
            for client in clients:
                if client.watched.get(watched_key):
                    client.watch_dirty = True

    def watched_key_expired(self, client: Connection, now_ms: int) -> bool:
        """Redis 7's isWatchedKeyExpired: a key live at WATCH time has since expired.

        Looking the key up expires it, which fires the hook and dirties the watch.
        """
        for key, existed in client.watched.items():
            if existed:
                self.db.contains(key, now_ms)
        return client.watch_dirty
