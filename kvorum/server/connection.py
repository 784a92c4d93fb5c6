"""One client connection: an asyncio.Protocol around a RequestParser.

Theory of operation
-------------------
`data_received` is the whole hot path: feed the bytes to the parser, take the
clock once for the batch, run every complete request in order through
`dispatch.execute` (`dispatch.execute_batch` for a pipelined batch), and write all replies of the batch with one
`transport.write`. A batch stops once its replies pass the pause mark; the rest
of it waits in `backlog`, with reading paused, and runs when the transport has
room again. A request that closes the connection (QUIT, CLIENT KILL of itself)
stops the batch; a protocol error is answered after the requests before it, and
then the connection closes, as in Redis.

Back-pressure: the transport calls `pause_writing` when its buffer passes the
high-water mark (`client-output-pause-bytes`, or the output-buffer hard limit
when that is lower); reading pauses until `resume_writing`, so a client that
does not read its replies cannot make the node buffer more than one batch past
the mark. Over the hard limit of `client-output-buffer-limit`, or over the soft
limit for longer than its seconds (checked by the server cron), the client is
dropped like Redis drops it, without a reply. Output is thereby bounded by the
mark plus one reply, and parsed input by one read.

State is grouped by lifetime: shared server state, then the connection's own.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time

from kvorum.commands.table import CommandContext
from kvorum.protocol.encoder import error_line
from kvorum.protocol.parser import QUERY_BUFFER_EXCEEDED, RequestParser
from kvorum.server.dispatch import execute, execute_batch
from kvorum.server.state import ServerState

log = logging.getLogger("kvorum.server")

MAXCLIENTS_REPLY = b"-ERR max number of clients reached\r\n"
PROTECTED_MODE_REPLY = (
    b"-DENIED Redis is running in protected mode because protected mode is enabled and no password "
    b"is set for the default user. In this mode connections are only accepted from the loopback "
    b"interface. If you want to connect from external computers to Redis you may adopt one of the "
    b"following solutions: 1) Just disable protected mode sending the command 'CONFIG SET "
    b"protected-mode no' from the loopback interface by connecting to Redis from the same host the "
    b"server is running, however MAKE SURE Redis is not publicly accessible from internet if you do "
    b"so. Use CONFIG REWRITE to make this change permanent. 2) Alternatively you can just disable "
    b"the protected mode by editing the Redis configuration file, and setting the protected mode "
    b"option to 'no', and then restarting the server. 3) If you started the server manually just "
    b"for testing, restart it with the '--protected-mode no' option. 4) Set up an authentication "
    b"password for the default user. NOTE: You only need to do one of the above things in order for "
    b"the server to start accepting connections from the outside.\r\n"
)


def is_loopback(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return host == "localhost"
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def _format_address(address) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return str(address or "")


class Client(asyncio.Protocol):
    def __init__(self, server: ServerState):
        # Shared server state.
        self.server = server
        # Connection state: identity, then protocol, then transaction, then flow control.
        self.id = server.next_client_id()
        self.transport: asyncio.Transport | None = None
        self.addr = ""
        self.laddr = ""
        self.fd = -1
        self.name: bytes = b""
        self.lib_name: bytes = b""
        self.lib_ver: bytes = b""
        self.created_ms = int(time.time() * 1000)
        self.last_ms = self.created_ms
        self.last_command = b"NULL"
        self.authenticated = not server.auth_required()
        self.resp3 = False
        self.db_index = 0
        self.no_evict = False
        self.parser = RequestParser(
            inline_max_bytes=server.settings.proto_inline_max_size_bytes,
            bulk_max_bytes=server.settings.proto_max_bulk_len_bytes,
            multibulk_max_count=server.settings.proto_max_multibulk_len,
            query_buffer_max_bytes=server.settings.client_query_buffer_limit_bytes,
            authenticated=self.authenticated,
        )
        self.db = server.db
        self.ctx = CommandContext(server.db, 0, self, server)
        # MULTI: queued (command, argv) pairs, or None outside a transaction.
        self.multi: list | None = None
        self.multi_failed = False
        # WATCH: key -> whether it existed at WATCH time; dirty once one changed.
        self.watched: dict[bytes, bool] = {}
        self.watch_dirty = False
        # CLIENT TRACKING options (kvorum.commands.tracking.ClientTracking), None while off.
        self.tracking = None
        # Pub/sub subscriptions (kvorum.server.pubsub).
        self.channels: set[bytes] = set()
        self.patterns: set[bytes] = set()
        # Closing: after the replies already produced (QUIT, protocol error, CLIENT KILL).
        self.close_after_reply = False
        self.closed = False
        self.output_soft_since_ms = 0
        self.registered = False
        # Parsed requests not run yet because their client is not reading its replies.
        self.backlog: list[list[bytes]] = []
        self.writing_paused = False
        self.output_hard_bytes = 0

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        server = self.server
        settings = server.settings
        server.stats.connections_received += 1
        peer = transport.get_extra_info("peername")
        self.addr = _format_address(peer)
        self.laddr = _format_address(transport.get_extra_info("sockname"))
        sock = transport.get_extra_info("socket")
        self.fd = sock.fileno() if sock is not None else -1
        if server.shutting_down or len(server.clients) >= settings.maxclients:
            self._refuse(MAXCLIENTS_REPLY)
            return
        if (settings.protected_mode and not settings.requirepass and isinstance(peer, tuple)
                and not is_loopback(peer[0])):
            self._refuse(PROTECTED_MODE_REPLY)
            return
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.apply_output_limits()
        server.clients[self.id] = self
        self.registered = True

    def _refuse(self, reply: bytes) -> None:
        self.server.stats.rejected_connections += 1
        self.closed = True
        self.transport.write(reply)
        self.transport.close()

    def apply_settings(self) -> None:
        """Take changed limits (CONFIG SET) into this connection's parser and transport."""
        settings = self.server.settings
        parser = self.parser
        parser.inline_max_bytes = settings.proto_inline_max_size_bytes
        parser.bulk_max_bytes = settings.proto_max_bulk_len_bytes
        parser.multibulk_max_count = settings.proto_max_multibulk_len
        parser.query_buffer_max_bytes = settings.client_query_buffer_limit_bytes
        if not self.closed:
            self.apply_output_limits()

    def apply_output_limits(self) -> None:
        settings = self.server.settings
        high = settings.client_output_pause_bytes
        hard = settings.client_output_buffer_limit.hard_bytes
        self.output_hard_bytes = hard
        if hard:
            high = min(high, hard)
        self.transport.set_write_buffer_limits(high=high)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.server.stats.net_input_bytes += len(data)
        requests = self.parser.feed(data)
        if self.backlog:
            self.backlog.extend(requests)
            return
        if self.parser.error is None:
            if not requests:
                return
            if len(requests) > 1:
                self._run(requests)
                return
            argv = requests[0]
            now_ms = int(time.time() * 1000)
            self.last_ms = now_ms
            out = execute(self, argv, now_ms)
            self.last_command = argv[0]
            stats = self.server.stats
            stats.commands_processed += 1
            stats.net_output_bytes += len(out)
            self.transport.write(out)
            if self.output_hard_bytes or self.close_after_reply:
                self._after_write()
            return
        self._run(requests)

    def _run(self, requests: list[list[bytes]]) -> None:
        """Run a batch, stopping once its replies pass the pause mark (the rest waits in backlog)."""
        stats = self.server.stats
        now_ms = int(time.time() * 1000)
        self.last_ms = now_ms
        parts = execute_batch(self, requests, now_ms, self.server.settings.client_output_pause_bytes)
        done = len(parts)
        if done < len(requests) and not self.close_after_reply:
            self.backlog = requests[done:]
            self.transport.pause_reading()
        if done:
            stats.commands_processed += done
            self.last_command = requests[done - 1][0]
        out = b"".join(parts)
        error = self.parser.error
        if error is not None and not self.backlog and not self.close_after_reply:
            if error == QUERY_BUFFER_EXCEEDED:
                log.warning("closing client id=%d addr=%s that reached max query buffer length",
                            self.id, self.addr)
                self.kill()
                return
            log.info("protocol error from client id=%d addr=%s: %s", self.id, self.addr, error)
            out += error_line("ERR " + error)
            self.close_after_reply = True
        self._write(out)
        if self.backlog and not self.closed and not self.writing_paused:
            # The transport took everything: go on after other connections had their turn.
            asyncio.get_running_loop().call_soon(self._drain_backlog)

    def _write(self, out: bytes) -> None:
        if out:
            self.server.stats.net_output_bytes += len(out)
            self.transport.write(out)
        self._after_write()

    def _after_write(self) -> None:
        """Enforce the output hard limit, and close when a reply asked for it."""
        hard = self.output_hard_bytes
        if hard and not self.closed and self.transport.get_write_buffer_size() > hard:
            self.drop_for_output_limit()
            return
        if self.close_after_reply and not self.closed:
            self.closed = True
            self.transport.close()

    def eof_received(self) -> bool:
        return False

    def pause_writing(self) -> None:
        self.writing_paused = True
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._drain_backlog()

    def _drain_backlog(self) -> None:
        if self.closed or self.writing_paused:
            return
        if self.backlog:
            requests, self.backlog = self.backlog, []
            self._run(requests)
        if not self.backlog and not self.closed and not self.writing_paused:
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.registered:
            self.registered = False
            server = self.server
            server.clients.pop(self.id, None)
            server.unwatch_all(self)
            server.tracking.disable(self)
            server.pubsub.unsubscribe_all(self)

    # Used by commands and the server cron.

    def kill(self) -> None:
        """Close now, dropping unsent output (CLIENT KILL, limits, shutdown)."""
        if not self.closed:
            self.closed = True
            self.transport.abort()

    def close_gracefully(self) -> None:
        """Close after the output already written (shutdown)."""
        if not self.closed:
            self.closed = True
            self.transport.close()

    def drop_for_output_limit(self) -> None:
        log.warning("client id=%d addr=%s closed for overcoming of output buffer limits",
                    self.id, self.addr)
        self.kill()

    def check_output_soft_limit(self, now_ms: int) -> None:
        limit = self.server.settings.client_output_buffer_limit
        if self.closed or not limit.soft_bytes:
            return
        if self.transport.get_write_buffer_size() <= limit.soft_bytes:
            self.output_soft_since_ms = 0
        elif not self.output_soft_since_ms:
            self.output_soft_since_ms = now_ms
        elif now_ms - self.output_soft_since_ms >= limit.soft_s * 1000:
            self.drop_for_output_limit()

    def make_room(self, now_ms: int) -> bool:
        """Evict per the policy until within maxmemory; False when that is not possible.

        A replicated node's connection evicts through the log instead (ClusterClient)."""
        return self.db.free_memory_if_needed(now_ms)

    def write_push(self, out: bytes) -> None:
        """Write a message the client did not ask for (pub/sub, invalidation) now."""
        if not self.closed:
            self._write(out)

    def output_buffer_bytes(self) -> int:
        return 0 if self.closed else self.transport.get_write_buffer_size()

    def set_authenticated(self, value: bool) -> None:
        self.authenticated = value
        self.parser.authenticated = value
