"""Client-side caching: CLIENT TRACKING's server side (Redis' tracking.c).

Theory of operation
-------------------
A client that turns tracking on may keep what it reads in memory; the node
tells it when to drop an entry. Two modes, as in Redis 7:

- Default mode: after every readonly command of the client (through
  `dispatch.call`, so inside MULTI/EXEC too) the keys it named go into the
  tracking table, key -> ids of the clients that read it. When the key changes,
  each of those clients gets one invalidation and the key leaves the table
  (the client reads it again to track it again). With OPTIN only the command
  right after `CLIENT CACHING yes` is remembered; with OPTOUT every command but
  the one after `CLIENT CACHING no`.
- BCAST mode: nothing is remembered; every change of a key that starts with one
  of the client's prefixes (the empty prefix: every key) is sent to it.

Changes come from the keyspace's key listener, so every change counts: writes
of any client, expiry (lazy and active), eviction, and flushes, which send
`invalidate nil` ("drop everything") to every tracking client. NOLOOP skips the
changes made by the client's own commands. The listener is installed only
while some client tracks, so writes pay nothing for tracking otherwise.

Delivery: an invalidation is written as soon as the change is applied, one
message per key, to every tracking connection but the one whose command made
the change; that one may still hold unwritten replies of its batch computed
before the change (`GET k; SET k x` pipelined), so its invalidations wait and
go out together (`flush`, scheduled with `call_soon`) right after its batch's
replies. On a replicated node a connection may hold read replies computed
but not written yet (they go out from a callback); its `write_push` writes
them ahead of the message. So on every connection, each reply that carried an
old value is written before the invalidation of that value, and, for every other
connection, the invalidation is written before the writer's own reply: when
a write is acknowledged, its invalidations are already in the other
connections' sockets. A client that caches what it reads and drops what it is
told is never left with a value older than the last invalidation it processed.
The message is a RESP3 push `>2 invalidate [keys]`
to the client itself, or, with `REDIRECT id`, to that client: a RESP3 push if
it speaks RESP3, else a `message` on `__redis__:invalidate` if it is in
pub/sub mode (the RESP2 way). A redirect whose client is gone makes the
tracking client RESP3-pushed `tracking-redir-broken` instead.

What is lost: nothing is persisted or replayed. Invalidations pending for, or
in flight to, a connection that drops are gone with it, and so is its table
entry; a client must treat a lost connection as "everything may have changed"
(redis-py's cache and kvorum's client flush on disconnect). docs/tracking.md
states the bound.

Bounded: the tracking table holds at most `table_keys_max` keys (Redis'
tracking-table-max-keys); remembering one more evicts the oldest key, and its
clients get an invalidation for it as if it had changed.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from kvorum.protocol.encoder import encode
from kvorum.protocol.values import Push

if TYPE_CHECKING:
    from kvorum.commands.table import Command
    from kvorum.commands.tracking import ClientTracking
    from kvorum.server.connection import Connection
    from kvorum.server.state import ServerState

# Redis' tracking-table-max-keys default.
TRACKING_TABLE_KEYS_MAX = 1_000_000

INVALIDATE_CHANNEL = b"__redis__:invalidate"


class Tracking:
    def __init__(self, server: ServerState, table_keys_max: int = TRACKING_TABLE_KEYS_MAX):
        assert table_keys_max > 0
        self.server = server
        self.table_keys_max = table_keys_max
        # Default mode: key -> ids of clients that read it, oldest key first.
        self.table: dict[bytes, set[int]] = {}
        # BCAST mode: prefix -> clients that registered it.
        self.prefixes: dict[bytes, set[Connection]] = {}
        # Clients with tracking on.
        # Invariant: the keyspace listener is installed iff `clients` is not empty.
        self.clients: set[Connection] = set()
        # The client whose command is running, while a tracking client runs one
        # (set by dispatch): NOLOOP, and the order of its own invalidations.
        self.writer: Connection | None = None
        # Invalidations for the client whose command is running, sent by `flush`
        # after its replies: client id -> keys (a dict used as an ordered set),
        # or None for "everything" (a flush).
        self.pending: dict[int, dict[bytes, None] | None] = {}
        self._flush_scheduled = False

    # ------------------------------------------------------------ enabling

    def enable(self, client: Connection, options: ClientTracking) -> None:
        if client.tracking is not None:
            self._drop_prefixes(client)
        client.tracking = options
        for prefix in options.prefixes or ([b""] if options.bcast else []):
            self.prefixes.setdefault(prefix, set()).add(client)
        if not self.clients:
            self.server.db.add_key_listener(self.key_modified)
        self.clients.add(client)
        assert self.server.db.has_key_listener(self.key_modified)

    def disable(self, client: Connection) -> None:
        """Tracking off (CLIENT TRACKING OFF, RESET, disconnect); its table entries go lazily."""
        if client.tracking is None:
            return
        self._drop_prefixes(client)
        client.tracking = None
        self.pending.pop(client.id, None)
        self.clients.discard(client)
        if not self.clients:
            # Nobody is told of changes any more: the entries would only go stale.
            self.table.clear()
            self.server.db.remove_key_listener(self.key_modified)
        assert self.server.db.has_key_listener(self.key_modified) == bool(self.clients)

    def _drop_prefixes(self, client: Connection) -> None:
        options = client.tracking
        for prefix in options.prefixes or ([b""] if options.bcast else []):
            clients = self.prefixes.get(prefix)
            if clients is not None:
                clients.discard(client)
                if not clients:
                    del self.prefixes[prefix]

    # ------------------------------------------------------------ commands

    def remember(self, client: Connection, cmd: Command, argv: list[bytes]) -> None:
        """After a readonly command of a tracking client: track the keys it read."""
        if not client.tracking.remembers():
            return
        table = self.table
        for i in cmd.key_positions(len(argv)):
            key = argv[i]
            ids = table.get(key)
            if ids is None:
                if len(table) >= self.table_keys_max:
                    self._evict_oldest()
                table[key] = ids = set()
            ids.add(client.id)

    def command_done(self, client: Connection, cmd: Command) -> None:
        """After a command of a tracking client: CLIENT CACHING lasts one command (or transaction)."""
        options = client.tracking
        if options is not None and cmd.full_name != "client|caching" and client.multi is None:
            options.caching = None

    # ------------------------------------------------------------ changes

    def key_modified(self, key: bytes | None) -> None:
        """The keyspace listener: invalidate a changed key (None: everything) for its trackers."""
        writer = self.writer
        if key is None:
            self.table.clear()
            for client in list(self.clients):
                self._deliver(client, None)
            return
        ids = self.table.pop(key, None)
        if ids is not None:
            for client in self._table_clients(ids):
                if not (client is writer and client.tracking.noloop):
                    self._deliver(client, key)
        if self.prefixes:
            for prefix, clients in list(self.prefixes.items()):
                if key.startswith(prefix):
                    for client in list(clients):
                        if not (client is writer and client.tracking.noloop):
                            self._deliver(client, key)

    def _table_clients(self, ids: set[int]) -> list[Connection]:
        """The clients of a table entry that still track in default mode."""
        clients = self.server.clients
        found = []
        for client_id in ids:
            client = clients.get(client_id)
            if client is not None and client.tracking is not None and not client.tracking.bcast:
                found.append(client)
        return found

    def _evict_oldest(self) -> None:
        """Make room in the table: the oldest key's clients must stop relying on it (NOLOOP or not)."""
        key = next(iter(self.table))
        for client in self._table_clients(self.table.pop(key)):
            self._deliver(client, key)

    def _deliver(self, client: Connection, key: bytes | None) -> None:
        """Send one invalidation now, or after the running command's batch for its own client.

        Any other connection has written every reply it computed, so its
        invalidation goes out at once, before the writer's reply. The running
        client may still hold replies of its batch computed before the change;
        its invalidation waits for `flush`, scheduled for after the batch.
        """
        if client is not self.writer:
            self._send(client, None if key is None else [key])
            return
        pending = self.pending
        if key is None or client.id not in pending:
            pending[client.id] = None if key is None else {key: None}
        else:
            keys = pending[client.id]
            if keys is not None:
                keys[key] = None
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Send the invalidations that waited for their own client's replies."""
        self._flush_scheduled = False
        pending, self.pending = self.pending, {}
        clients = self.server.clients
        for client_id, keys in pending.items():
            client = clients.get(client_id)
            if client is not None and client.tracking is not None:
                self._send(client, None if keys is None else list(keys))

    def _send(self, client: Connection, keys: list[bytes] | None) -> None:
        options = client.tracking
        target = client
        if options.redirect:
            target = self.server.clients.get(options.redirect)
            if target is None:
                if not options.redirect_broken:
                    options.redirect_broken = True
                    if client.resp3:
                        client.write_push(encode(Push(["tracking-redir-broken", options.redirect]), True))
                return
        if target.resp3:
            target.write_push(encode(Push(["invalidate", keys]), True))
        elif target is not client and (target.channels or target.patterns):
            target.write_push(encode(Push(["message", INVALIDATE_CHANNEL, keys]), False))
