"""One client connection, single node or replicated: an asyncio.Protocol around a RequestParser.

Theory of operation
-------------------
`data_received` is the whole hot path: feed the bytes to the parser, take the
clock once for the batch, run every complete request in order, and write all
replies of the batch with one `transport.write`. A request that closes the
connection (QUIT, CLIENT KILL of itself) stops the batch; a protocol error is
answered after the requests before it, and then the connection closes, as in
Redis.

Requests run through the node's executor: `dispatch.execute` on a single node
(every reply is known at once; a pipelined batch takes `dispatch.execute_batch`),
`ClusterNode.execute` on a replicated one, whose reply may be a Future (a
write waiting for the log, a read for its barrier) or None (the request must
wait until the connection's earlier replies are known). Replies go out strictly
in request order: `pending` holds parsed requests not run yet, `replies` the
replies not written yet (bytes, or Futures of them) behind the first one not
known yet.

Back-pressure has one object, `Flow`, whichever the mode: reading pauses while
the transport's buffer is past its high-water mark (`client-output-pause-bytes`,
or the output-buffer hard limit when that is lower), or while more than
PIPELINE_REQUESTS_MAX requests are pending, and resumes when both are below.
A batch stops once its replies pass the pause mark, the rest stays pending, so
a client that does not read its replies cannot make the node buffer more than
one batch past the mark. Over the hard limit of `client-output-buffer-limit`,
or over the soft limit for longer than its seconds (checked by the server
cron), the client is dropped like Redis drops it, without a reply.

State is grouped by lifetime: shared server state, then the connection's own.
"""

from __future__ import annotations

import asyncio
import collections
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
# Parsed requests one connection may hold while earlier ones wait (for the log, or for
# the client to read its replies); past it, reading from that connection pauses. Also
# the most replies one connection may have waiting for the log at once.
PIPELINE_REQUESTS_MAX = 1024
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


class Flow:
    """A connection's back-pressure: reading pauses while output is backed up or too much is pending."""

    __slots__ = ("transport", "reading_paused", "writing_paused")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.reading_paused = False
        self.writing_paused = False  # the transport's buffer is past its high-water mark

    def update(self, pending: int, backlog: bool = False) -> None:
        """`pending`: requests not run yet; `backlog`: some of them wait only for the
        client to read its replies (a single node's batch stopped at the output mark)."""
        busy = self.writing_paused or backlog or pending > PIPELINE_REQUESTS_MAX
        if busy and not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()
        elif not busy and self.reading_paused:
            self.reading_paused = False
            self.transport.resume_reading()


class Connection(asyncio.Protocol):
    def __init__(self, server: ServerState):
        # Shared server state.
        self.server = server
        # The replicated node's front end (kvorum.server.replication.ClusterNode), or None.
        self.cluster = server.cluster
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
        self.ctx = CommandContext(server.db, 0, self, server, server.functions)
        # MULTI: queued (command, argv) pairs, or None outside a transaction.
        self.multi: list | None = None
        self.multi_failed = False
        # WATCH: key -> whether it existed at WATCH time; dirty once one changed.
        self.watched: dict[bytes, bool] = {}
        self.watch_dirty = False
        # Replicated node: READONLY, CLIENT WRITECONCERN, WATCH versions (carried by EXEC).
        self.readonly_reads = False
        self.write_concern = None
        self.watch_versions: dict[bytes, int] = {}
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
        # Flow: requests not run yet; replies not written yet (the first one not known yet
        # heads them); the last Future among them; the last read served after a barrier.
        self.pending: collections.deque[list[bytes]] = collections.deque()
        self.replies: collections.deque[bytes | asyncio.Future] = collections.deque()
        self.waiting: asyncio.Future | None = None
        self.read_waiting: asyncio.Future | None = None
        self.flow = Flow()
        self.output_hard_bytes = 0

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.flow.transport = transport
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
        if self.pending or self.replies or self.parser.error is not None or len(requests) != 1:
            self.pending.extend(requests)
            self._advance()
            return
        # The common case: one request, nothing before it waits.
        argv = requests[0]
        now_ms = int(time.time() * 1000)
        self.last_ms = now_ms
        cluster = self.cluster
        out = execute(self, argv, now_ms) if cluster is None else cluster.execute(self, argv, now_ms)
        self.last_command = argv[0]
        stats = self.server.stats
        stats.commands_processed += 1
        if out.__class__ is not bytes:
            # A Future: the reply comes from the log (nothing earlier waits, so it ran).
            self.replies.append(out)
            self.waiting = out
            out.add_done_callback(self._reply_ready)
            return
        stats.net_output_bytes += len(out)
        self.transport.write(out)
        if self.output_hard_bytes or self.close_after_reply:
            self._after_write()

    def _advance(self) -> None:
        """Run pending requests until one has to wait, then write what is ready in one write."""
        if self.closed:
            return
        if self.cluster is None:
            parts = self._run_batch()
        else:
            parts = self._run_replicated()
        if not self.pending and not self.replies and not self.close_after_reply:
            parts.extend(self._protocol_error())
        if self.closed:
            return
        if self.close_after_reply:
            self.pending.clear()  # requests after QUIT or a protocol error are not run
        self._write(b"".join(parts))
        if self.closed:
            return
        backlog = bool(self.pending) and not self.replies
        if backlog and not self.flow.writing_paused:
            # The batch stopped at the output mark and the transport took everything:
            # go on after other connections had their turn.
            asyncio.get_running_loop().call_soon(self._advance)
        self.flow.update(len(self.pending), backlog)

    def _run_batch(self) -> list[bytes]:
        """Single node: the pending requests as one batch, up to the output pause mark."""
        pending = self.pending
        if not pending or self.close_after_reply or self.flow.writing_paused:
            return []
        requests = list(pending)
        now_ms = int(time.time() * 1000)
        self.last_ms = now_ms
        parts = execute_batch(self, requests, now_ms, self.server.settings.client_output_pause_bytes)
        done = len(parts)
        for _ in range(done):
            pending.popleft()
        if done:
            self.server.stats.commands_processed += done
            self.last_command = requests[done - 1][0]
        return parts

    def _run_replicated(self) -> list[bytes]:
        """Replicated node: run pending requests in order until one must wait for earlier replies."""
        parts = []
        stats = self.server.stats
        pending = self.pending
        replies = self.replies
        execute_one = self.cluster.execute
        while (pending and not self.close_after_reply and not self.flow.writing_paused
               and len(replies) < PIPELINE_REQUESTS_MAX):
            argv = pending[0]
            now_ms = int(time.time() * 1000)
            reply = execute_one(self, argv, now_ms)
            if reply is None:
                break
            pending.popleft()
            self.last_ms = now_ms
            self.last_command = argv[0]
            stats.commands_processed += 1
            if reply.__class__ is bytes:
                if replies:
                    replies.append(reply)
                else:
                    parts.append(reply)
                continue
            replies.append(reply)
            self.waiting = reply
            reply.add_done_callback(self._reply_ready)
        return parts

    def _protocol_error(self) -> list[bytes]:
        error = self.parser.error
        if error is None:
            return []
        if error == QUERY_BUFFER_EXCEEDED:
            log.warning("closing client id=%d addr=%s that reached max query buffer length", self.id, self.addr)
            self.kill()
            return []
        log.info("protocol error from client id=%d addr=%s: %s", self.id, self.addr, error)
        self.close_after_reply = True
        return [error_line("ERR " + error)]

    def unanswered(self) -> list[asyncio.Future]:
        """This connection's replies that are not known yet (at most PIPELINE_REQUESTS_MAX)."""
        return [r for r in self.replies if r.__class__ is not bytes and not r.done()]

    def _reply_ready(self, _future: asyncio.Future) -> None:
        if self.closed:
            return
        self._write_known_replies()
        self._advance()

    def _write_known_replies(self) -> None:
        """Write the replies that are known, up to the first that is not, in order."""
        replies = self.replies
        parts = []
        while replies:
            head = replies[0]
            if head.__class__ is not bytes:
                if not head.done():
                    break
                head = head.result()
            replies.popleft()
            parts.append(head)
        if not replies:
            self.waiting = None
        if parts:
            self._write(b"".join(parts))

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
        self.flow.writing_paused = True
        self.flow.update(len(self.pending), False)

    def resume_writing(self) -> None:
        self.flow.writing_paused = False
        self._advance()

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

        A replicated node evicts through the log (the leader proposes the victims)."""
        if self.cluster is not None:
            return self.cluster.make_room()
        return self.db.free_memory_if_needed(now_ms)

    def write_push(self, out: bytes) -> None:
        """Write a message the client did not ask for (pub/sub, an invalidation), after every
        reply already known.

        On a replicated node a read's reply is computed when its barrier passes and
        written by a callback that runs later; a change applied in between must not
        reach the client before the old value it invalidates. Replies not known yet
        (behind an unfinished write) are never read replies, which wait for every
        earlier reply, so the message need not wait for them."""
        if self.closed:
            return
        if self.replies:
            self._write_known_replies()
        self._write(out)

    def output_buffer_bytes(self) -> int:
        return 0 if self.closed else self.transport.get_write_buffer_size()

    def set_authenticated(self, value: bool) -> None:
        self.authenticated = value
        self.parser.authenticated = value
