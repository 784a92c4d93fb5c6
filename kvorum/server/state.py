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

import logging
import os
import time
from typing import TYPE_CHECKING, Callable

from kvorum.commands.connection import REDIS_VERSION
from kvorum.scripting.functions import FunctionRegistry
from kvorum.scripting.runtime import Engine
from kvorum.server import dispatch
from kvorum.settings import LOG_LEVELS_PY, Settings
from kvorum.server.leases import TOKEN_MAX, LeaseTable
from kvorum.server.pubsub import PubSub
from kvorum.server.tracking import Tracking
from kvorum.store import Keyspace

if TYPE_CHECKING:
    from kvorum.server.connection import Connection


class Stats:
    """Counters shown by INFO; CONFIG RESETSTAT zeroes them."""

    __slots__ = (
        "connections_received", "commands_processed", "net_input_bytes", "net_output_bytes",
        "rejected_connections", "error_replies", "ops_per_sec", "_ops_sample", "_ops_sample_ms",
    )

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.connections_received = 0
        self.commands_processed = 0
        self.net_input_bytes = 0
        self.net_output_bytes = 0
        self.rejected_connections = 0
        self.error_replies = 0
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


class ServerState:
    def __init__(self, settings: Settings):
        self.settings = settings
        dispatch.prepare()
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
        elif field == "loglevel":
            logging.getLogger("kvorum").setLevel(LOG_LEVELS_PY[value])
        for client in self.clients.values():
            client.apply_settings()

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
