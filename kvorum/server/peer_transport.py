"""Peer transport: carries consensus messages between the nodes of one cluster.

Theory of operation
-------------------
Every node runs one `PeerTransport`. It listens on its bus address and keeps
one outgoing TCP connection to each peer; messages to a peer travel only on
the connection this node dialed, messages from a peer arrive on the
connection that peer dialed. Framing and the handshake live in the sans-I/O
`peer_frames` module; this module adds sockets, timers and queues.

Sending. `send(to, payload)` never blocks and never awaits: it appends the
payload to the peer's queue and, once per event-loop iteration, a flush
callback moves everything queued for that peer into BATCH frames (each of up
to `batch_bytes_max` payload bytes) joined into one `transport.write`. A
consensus driver that emits a hundred messages in one step therefore costs
one frame and one system call per peer. One flush writes at most about
`write_buffer_bytes_high` bytes; one that leaves messages behind schedules
the next.

Connecting. A link task per peer dials at `start()` (and at `set_peers()`
for a new peer), sends HELLO and waits for WELCOME before it moves a single
payload. When the connection fails, is refused or later drops, the task
waits `reconnect_delay_s_min * 2**failures`, capped at
`reconnect_delay_s_max`, with jitter (a uniform draw from half to all of that
delay, so restarted nodes do not dial in lock step), and dials again. The
queue survives the connection: what was not yet written goes out on the next
one.

Receiving. The acceptor checks the HELLO (protocol version, cluster id, its
own node id as the receiver) and, with a cluster secret, the dialer's proof
of it, before it delivers anything; a refused HELLO or proof is answered with
REFUSE, logged, and the connection closed. Accepted payloads are
handed to `on_message(sender, payload)` synchronously, in arrival order, from
inside `data_received`. A newer connection from the same sender replaces an
older one (the sender restarted, or its old link is dead).

Authentication. With a cluster secret, both ends of every connection prove
they hold it (`peer_frames` describes the challenge-response). This module
draws each connection's nonce from `os.urandom`, fresh per connection, which
is what makes a recorded handshake useless later. A dialer whose peer fails
to prove the secret drops the connection before it sends a payload, logs it,
and dials again with back-off.

Loss and order. Consensus tolerates loss, duplication and reordering between
connections; the transport guarantees only order within one connection and
that nothing from another cluster is delivered. Messages are lost when a
queue overflows, when a connection drops with bytes still in its write buffer
or in flight, and when a peer is removed or the transport stopped. The
transport itself never duplicates a message.

A peer that vanishes without closing its connections (power loss, a cut
cable) is noticed only when TCP gives up on the unacknowledged data; until
then its queue fills and drops, which consensus sees as a partition. A peer
that restarts resets the old connection at once, and the link redials.

Back-pressure
-------------
Nothing pushes back on the caller of `send`: a consensus driver must not stall
because one follower is slow. Instead, pressure ends in the queue:

1. The receiver delivers synchronously, so a slow `on_message` slows reading,
   TCP flow control fills the sender's socket buffer, and the sender's asyncio
   write buffer grows.
2. Above `write_buffer_bytes_high` asyncio pauses the protocol; the link
   stops flushing and messages stay in its queue. Below the low-water mark
   (a quarter of the high one) flushing resumes.
3. The queue is bounded by `queue_messages_max` and `queue_bytes_max`. When
   either would be exceeded the OLDEST queued message is dropped and counted
   in `PeerStats.messages_dropped`. Oldest, not newest, because a newer
   consensus message supersedes an older one to the same peer (a later
   heartbeat or append carries the later term and commit index; a vote
   request from a past term is useless), and the protocol repairs gaps itself:
   a follower that misses an append rejects the next one and the leader
   resends from its progress. Dropping the newest would keep the stalest
   state and delay that repair.

Limits (units last)
-------------------
See `TransportLimits` for each limit and its default.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import os
import random
import socket
from dataclasses import dataclass
from typing import Callable, Mapping

from kvorum.server.peer_frames import (
    BATCH_ENVELOPE_BYTES_MAX,
    FRAME_BYTES_MAX_DEFAULT,
    Batch,
    Connection,
    NONCE_BYTES,
    Challenged,
    HelloAccepted,
    HelloChallenged,
    HelloRefused,
    LocalProtocolError,
    Refuse,
    SECRET_BYTES_MAX,
    SECRET_BYTES_MIN,
    RemoteProtocolError,
    Role,
    Welcome,
    batch_cost_bytes,
    payload_bytes_max,
)

log = logging.getLogger(__name__)

Address = tuple[str, int]
OnMessage = Callable[[str, bytes], None]
OnLinkChange = Callable[[str, bool], None]


class ListenError(OSError):
    """A listening socket could not be bound: the message names the address and why, in one line.

    The bus listener raises it here and the server raises it for the client
    port, so a node that cannot listen on either says which in the same words.
    """

    @classmethod
    def of(cls, host: str, what: str, port: int, exc: OSError) -> ListenError:
        # asyncio's own message repeats the address; the errno's text is the reason alone.
        if exc.errno and not isinstance(exc, socket.gaierror):
            reason = os.strerror(exc.errno)
        else:
            reason = exc.strerror or str(exc)
        return cls(f"cannot listen on {host} {what} {port}: {reason}")


@dataclass(frozen=True, slots=True)
class TransportLimits:
    """Every bound of the transport, checked once when built (ValueError if inconsistent)."""

    # Largest frame body sent or accepted, in bytes. A peer announcing a larger
    # frame is broken: the connection is closed. Bounds one payload too.
    frame_bytes_max: int = FRAME_BYTES_MAX_DEFAULT
    # Payload bytes in one BATCH frame. Larger frames amortise more; smaller
    # ones let the receiver deliver sooner.
    batch_bytes_max: int = 1024 * 1024
    # Per-peer send queue, in messages and in payload bytes; beyond either the
    # oldest message is dropped.
    queue_messages_max: int = 100_000
    queue_bytes_max: int = 64 * 1024 * 1024
    # asyncio write buffer per connection above which flushing pauses, bytes;
    # also the most one flush writes, which bounds the work of one iteration.
    write_buffer_bytes_high: int = 4 * 1024 * 1024
    # Reconnect back-off: first delay and cap, seconds.
    reconnect_delay_s_min: float = 0.05
    reconnect_delay_s_max: float = 2.0
    # TCP connect, and HELLO to WELCOME (both directions), seconds.
    connect_timeout_s: float = 2.0
    handshake_timeout_s: float = 2.0
    # How long `stop()` waits for connections to flush and close, seconds.
    stop_timeout_s: float = 2.0

    def __post_init__(self) -> None:
        # Limits come from operators' configuration: a bad one is an operating
        # error reported with the rule it breaks, not an assertion.
        rules = [
            (
                self.frame_bytes_max > BATCH_ENVELOPE_BYTES_MAX + batch_cost_bytes(0),
                "frame_bytes_max too small for one payload",
            ),
            (
                0 < self.batch_bytes_max <= self.frame_bytes_max - BATCH_ENVELOPE_BYTES_MAX,
                "batch_bytes_max must be positive and leave room for the batch envelope in frame_bytes_max",
            ),
            (self.queue_messages_max > 0 and self.queue_bytes_max > 0, "queue limits must be positive"),
            (self.write_buffer_bytes_high > 0, "write_buffer_bytes_high must be positive"),
            (
                0 < self.reconnect_delay_s_min <= self.reconnect_delay_s_max,
                "need 0 < reconnect_delay_s_min <= reconnect_delay_s_max",
            ),
            (
                min(self.connect_timeout_s, self.handshake_timeout_s, self.stop_timeout_s) > 0,
                "timeouts must be positive",
            ),
        ]
        for holds, rule in rules:
            if not holds:
                raise ValueError(f"TransportLimits: {rule}")


@dataclass(slots=True)
class PeerStats:
    """Counters for one peer; `bytes_*` count payload bytes, without framing."""

    messages_sent: int = 0  # written to the connection (not necessarily received)
    frames_sent: int = 0  # BATCH frames, one per write: messages_sent / frames_sent is the batch size
    bytes_sent: int = 0
    messages_dropped: int = 0  # queue overflow, peer removed, transport stopped
    messages_received: int = 0
    bytes_received: int = 0
    connects: int = 0  # handshakes completed on the outgoing connection
    reconnects: int = 0  # of those, the ones after the first
    connect_failures: int = 0  # dial errors, timeouts and refusals
    refusals: int = 0  # REFUSE frames received from the peer
    queue_messages: int = 0  # queued now; filled in by `PeerTransport.peer_stats`
    queue_bytes: int = 0


@dataclass(slots=True)
class TransportStats:
    """Counters that belong to no configured peer."""

    handshakes_refused: int = 0  # inbound handshakes refused (wrong cluster, wrong target, wrong secret)
    protocol_errors: int = 0  # connections closed because the peer broke the protocol
    unknown_peer_drops: int = 0  # `send` to a node that is not a configured peer


def backoff_delay_s(failures: int, limits: TransportLimits, rng: random.Random) -> float:
    """Delay before the next dial after `failures` failed ones in a row, seconds.

    `reconnect_delay_s_min * 2**failures`, capped at `reconnect_delay_s_max`,
    then drawn uniformly from its upper half: the jitter keeps nodes that lost
    a peer at the same moment from dialing it in lock step, and the lower
    bound keeps the back-off exponential.
    """
    assert failures >= 0
    delay_s = min(limits.reconnect_delay_s_max, limits.reconnect_delay_s_min * 2 ** min(failures, 32))
    return rng.uniform(delay_s / 2, delay_s)


class _Link:
    """Everything about sending to one peer: queue, connection, dial task, stats."""

    def __init__(self, peer_id: str, address: Address) -> None:
        self.peer_id = peer_id
        self.address = address
        self.queue: collections.deque[bytes] = collections.deque()
        # Invariant: queue_bytes == sum(map(len, queue)). Summing is O(n), so
        # the asserts in `_take_batch` check what it implies: never negative,
        # zero when the queue is empty.
        self.queue_bytes = 0
        self.stats = PeerStats()
        self.protocol: _OutboundProtocol | None = None  # set while welcomed
        self.connected = asyncio.Event()
        self.flush_scheduled = False
        self.task: asyncio.Task | None = None

    def drop_all(self) -> None:
        self.stats.messages_dropped += len(self.queue)
        self.queue.clear()
        self.queue_bytes = 0


class _Protocol(asyncio.Protocol):
    """What inbound and outbound connections share: the transport and its close."""

    def __init__(self, owner: PeerTransport, connection: Connection) -> None:
        self.owner = owner
        self.connection = connection
        self.transport: asyncio.Transport | None = None  # or uvloop's, which does not subclass it
        self.closed = owner.loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.owner.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner.connections.discard(self)
        if not self.closed.done():
            self.closed.set_result(None)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def protocol_error(self, error: RemoteProtocolError) -> None:
        self.owner.stats.protocol_errors += 1
        log.warning("peer %s at %s broke the protocol: %s", self.connection.peer_id, self.peername(), error)
        assert self.transport is not None
        self.transport.abort()

    def peername(self) -> object:
        return None if self.transport is None else self.transport.get_extra_info("peername")


class _OutboundProtocol(_Protocol):
    """The connection this node dialed to `link`'s peer: sends only."""

    def __init__(self, owner: PeerTransport, link: _Link) -> None:
        connection = Connection(
            Role.DIALER, owner.node_id, owner.cluster_id, link.peer_id, owner.limits.frame_bytes_max,
            secret=owner.secret, nonce=os.urandom(NONCE_BYTES),
        )
        super().__init__(owner, connection)
        self.link = link
        self.paused = False
        self.welcomed = owner.loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        limits = self.owner.limits
        self.transport.set_write_buffer_limits(
            high=limits.write_buffer_bytes_high, low=limits.write_buffer_bytes_high // 4
        )
        self.transport.write(self.connection.start())

    def data_received(self, data: bytes) -> None:
        try:
            events = self.connection.receive_data(data)
        except RemoteProtocolError as error:
            self._fail_handshake(ConnectionError(str(error)))
            self.protocol_error(error)
            return
        for event in events:
            if isinstance(event, Challenged):
                self.transport.write(event.reply)
            elif isinstance(event, Welcome):
                if not self.welcomed.done():
                    self.welcomed.set_result(None)
            else:
                assert isinstance(event, Refuse), event
                self.link.stats.refusals += 1
                log.error(
                    "peer %s at %s refused this node: %s", self.link.peer_id, self.peername(), event.reason
                )
                self._fail_handshake(ConnectionRefusedError(event.reason))
                self.transport.close()
                if self.owner.on_refused is not None:
                    self.owner.on_refused(self.link.peer_id, event.reason)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail_handshake(ConnectionError("connection lost during handshake"))
        self.paused = False
        link_lost = self.link.protocol is self
        if link_lost:
            self.link.protocol = None
            self.link.connected.clear()
        super().connection_lost(exc)
        if link_lost:
            self.owner.link_changed(self.link, False)

    def _fail_handshake(self, error: Exception) -> None:
        if not self.welcomed.done():
            self.welcomed.set_exception(error)
            # Marked retrieved so that a handshake nobody waits for any more
            # (the dial timed out or was cancelled) logs no warning.
            self.welcomed.exception()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self.owner.schedule_flush(self.link)


class _InboundProtocol(_Protocol):
    """A connection a peer dialed to this node: receives only."""

    def __init__(self, owner: PeerTransport) -> None:
        connection = Connection(
            Role.ACCEPTOR, owner.node_id, owner.cluster_id, None, owner.limits.frame_bytes_max,
            owner.refuse_sender, secret=owner.secret, nonce=os.urandom(NONCE_BYTES),
        )
        super().__init__(owner, connection)
        self.handshake_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.handshake_timer = self.owner.loop.call_later(
            self.owner.limits.handshake_timeout_s, self._handshake_timed_out
        )

    def _handshake_timed_out(self) -> None:
        log.warning("connection from %s sent no HELLO (or no PROOF) in time; closing", self.peername())
        self.transport.abort()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.connection.receive_data(data)
        except RemoteProtocolError as error:
            self.protocol_error(error)
            return
        for event in events:
            if type(event) is Batch:
                self._deliver(event.payloads)
                if self.transport.is_closing():
                    return
            elif isinstance(event, HelloChallenged):
                # The handshake timer keeps running: the PROOF must come within the same bound.
                self.transport.write(event.reply)
            elif isinstance(event, HelloAccepted):
                self._accepted(event)
            else:
                assert isinstance(event, HelloRefused), event
                self._refused(event)

    def _deliver(self, payloads: list[bytes]) -> None:
        sender = self.connection.peer_id
        link = self.owner.links.get(sender)
        if link is not None:
            link.stats.messages_received += len(payloads)
            link.stats.bytes_received += sum(map(len, payloads))
        on_message = self.owner.on_message
        for payload in payloads:
            on_message(sender, payload)

    def _accepted(self, event: HelloAccepted) -> None:
        self.handshake_timer.cancel()
        self.transport.write(event.reply)
        self.owner.accept_inbound(event.hello.sender_id, self)

    def _refused(self, event: HelloRefused) -> None:
        self.handshake_timer.cancel()
        self.owner.stats.handshakes_refused += 1
        log.error(
            "refused connection from %s claiming node %r: %s",
            self.peername(),
            event.hello.sender_id,
            event.reason,
        )
        self.transport.write(event.reply)
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.handshake_timer is not None:
            self.handshake_timer.cancel()
        self.owner.release_inbound(self)
        super().connection_lost(exc)


class PeerTransport:
    """Asyncio TCP transport between the nodes of one cluster.

    `peers` maps node ids to bus addresses and may include this node, which
    is skipped. `on_message(sender, payload)` is called in the event loop for
    every payload received, in arrival order per connection; it must not
    block, and an exception it raises closes the connection it came on.
    `on_link_change(peer, connected)`, if given, is called when the outgoing
    connection to a peer is welcomed (True) and when it is lost (False).
    `secret` is the cluster secret every peer must prove it holds (between
    `SECRET_BYTES_MIN` and `SECRET_BYTES_MAX` bytes); empty, the bus trusts
    the network.

    `send`, `set_peers` and the stats accessors are plain calls made from the
    loop's thread; `start` and `stop` are coroutines.
    """

    def __init__(
        self,
        node_id: str,
        cluster_id: str,
        bind_addr: Address,
        peers: Mapping[str, Address],
        on_message: OnMessage,
        limits: TransportLimits = TransportLimits(),
        on_link_change: OnLinkChange | None = None,
        rng: random.Random | None = None,
        refuse_sender: Callable[[str], str | None] | None = None,
        on_refused: Callable[[str, str], None] | None = None,
        secret: bytes = b"",
    ) -> None:
        if secret and not SECRET_BYTES_MIN <= len(secret) <= SECRET_BYTES_MAX:
            raise ValueError(
                f"cluster secret of {len(secret)} bytes; it must hold {SECRET_BYTES_MIN} to {SECRET_BYTES_MAX}"
            )
        # Shared, fixed for the transport's life.
        self.node_id = node_id
        self.secret = secret
        self.cluster_id = cluster_id
        self.bind_addr = bind_addr
        self.on_message = on_message
        self.on_link_change = on_link_change
        # Beyond the HELLO's own checks: why a sender may not connect (a node removed
        # from the cluster), and who hears that a peer refused this node.
        self.refuse_sender = refuse_sender
        self.on_refused = on_refused
        self.limits = limits
        self.payload_bytes_max = payload_bytes_max(limits.frame_bytes_max)
        self.rng = rng if rng is not None else random.Random()
        self.loop: asyncio.AbstractEventLoop | None = None
        # Lifecycle.
        self.server: asyncio.Server | None = None
        self.started = False
        self.stopping = False
        # Per peer and per connection.
        self.links: dict[str, _Link] = {}
        self.inbound_by_sender: dict[str, _InboundProtocol] = {}
        self.connections: set[_Protocol] = set()
        self.tasks: set[asyncio.Task] = set()
        self.stats = TransportStats()
        self.set_peers(peers)

    @property
    def address(self) -> Address:
        """The bound address; with port 0 in `bind_addr`, the port chosen."""
        assert self.server is not None, "start() first"
        host, port = self.server.sockets[0].getsockname()[:2]
        return host, port

    async def start(self) -> None:
        assert not self.started and not self.stopping, "a transport starts once, before stop()"
        self.loop = asyncio.get_running_loop()
        host, port = self.bind_addr
        try:
            self.server = await self.loop.create_server(lambda: _InboundProtocol(self), host, port)
        except OSError as exc:
            raise ListenError.of(host, "bus port", port, exc) from exc
        self.started = True
        for link in self.links.values():
            self._start_link(link)

    def send(self, to: str, payload: bytes) -> None:
        """Queue `payload` for peer `to`; it goes out on a later loop iteration.

        Never blocks. A full queue drops its oldest message; a peer that is not
        configured, or a stopping transport, drops this one (all counted). A
        payload over `payload_bytes_max` raises `LocalProtocolError`.
        """
        assert to != self.node_id, "a node does not send to itself"
        link = self.links.get(to)
        if link is None:
            self.stats.unknown_peer_drops += 1
            return
        if self.stopping:
            link.stats.messages_dropped += 1
            return
        size = len(payload)
        if size > self.payload_bytes_max:
            raise LocalProtocolError(
                f"payload of {size} bytes exceeds payload_bytes_max={self.payload_bytes_max}"
            )
        queue = link.queue
        queue.append(payload)
        link.queue_bytes += size
        limits = self.limits
        while len(queue) > limits.queue_messages_max or link.queue_bytes > limits.queue_bytes_max:
            link.queue_bytes -= len(queue.popleft())
            link.stats.messages_dropped += 1
        if link.protocol is not None and not link.flush_scheduled:
            self.schedule_flush(link)

    def set_peers(self, peers: Mapping[str, Address]) -> None:
        """Adopt a new membership: dial new peers, forget removed ones, redial moved ones."""
        wanted = {peer_id: tuple(address) for peer_id, address in peers.items() if peer_id != self.node_id}
        for peer_id in [peer_id for peer_id in self.links if peer_id not in wanted]:
            link = self.links.pop(peer_id)
            link.drop_all()
            self._stop_link(link)
        for peer_id, address in wanted.items():
            link = self.links.get(peer_id)
            if link is None:
                link = self.links[peer_id] = _Link(peer_id, address)
                if self.started and not self.stopping:
                    self._start_link(link)
            elif link.address != address:
                link.address = address
                self._stop_link(link)
                if self.started and not self.stopping:
                    self._start_link(link)

    def peer_stats(self, peer_id: str) -> PeerStats:
        """A snapshot of one configured peer's counters."""
        link = self.links[peer_id]
        return dataclasses.replace(link.stats, queue_messages=len(link.queue), queue_bytes=link.queue_bytes)

    def all_peer_stats(self) -> dict[str, PeerStats]:
        return {peer_id: self.peer_stats(peer_id) for peer_id in self.links}

    def is_connected(self, peer_id: str) -> bool:
        link = self.links.get(peer_id)
        return link is not None and link.protocol is not None

    async def wait_connected(self, peer_id: str) -> None:
        """Return once the outgoing connection to `peer_id` has been welcomed."""
        await self.links[peer_id].connected.wait()

    async def stop(self) -> None:
        """Shut down in order, each step bounded by `stop_timeout_s`.

        1. Stop accepting connections and refuse further sends.
        2. Cancel the link tasks (no more dialing) and wait for them.
        3. Close every connection; asyncio writes out what is buffered.
        4. Wait for the connections to close; abort the ones that do not.
        5. Count what is still queued as dropped.
        """
        if self.stopping or not self.started:
            self.stopping = True
            return
        self.stopping = True
        timeout_s = self.limits.stop_timeout_s
        self.server.close()
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout_s)
        connections = list(self.connections)
        for connection in connections:
            connection.close()
        if connections:
            await asyncio.wait([connection.closed for connection in connections], timeout=timeout_s)
        for connection in list(self.connections):
            log.warning("connection to %s did not close in time; aborting", connection.connection.peer_id)
            connection.transport.abort()
        await asyncio.wait_for(self.server.wait_closed(), timeout_s)
        for link in self.links.values():
            link.drop_all()

    def schedule_flush(self, link: _Link) -> None:
        if not link.flush_scheduled and not self.stopping:
            link.flush_scheduled = True
            self.loop.call_soon(self._flush, link)

    def _flush(self, link: _Link) -> None:
        """Write `link`'s queue as BATCH frames of up to `batch_bytes_max`, in one write.

        One write carries at most about `write_buffer_bytes_high` bytes: more
        would only sit in asyncio's buffer past the point where it pauses us.
        What is left goes out on the next loop iteration.
        """
        link.flush_scheduled = False
        protocol = link.protocol
        queue = link.queue
        if protocol is None or protocol.paused or not queue or self.stopping:
            return
        if protocol.transport.is_closing():
            return  # connection_lost follows; the queue waits for the next connection
        frames: list[bytes] = []
        write_bytes = 0
        while queue and write_bytes < self.limits.write_buffer_bytes_high:
            batch, batch_bytes = self._take_batch(link)
            frame = protocol.connection.encode_batch(batch)
            frames.append(frame)
            write_bytes += len(frame)
            link.stats.messages_sent += len(batch)
            link.stats.bytes_sent += batch_bytes
        link.stats.frames_sent += len(frames)
        protocol.transport.write(frames[0] if len(frames) == 1 else b"".join(frames))
        if queue:
            self.schedule_flush(link)

    def _take_batch(self, link: _Link) -> tuple[list[bytes], int]:
        """Pop the oldest payloads that fit one BATCH frame; also their byte total."""
        queue = link.queue
        budget_bytes = self.limits.batch_bytes_max
        batch: list[bytes] = []
        taken_bytes = 0
        while queue:
            cost_bytes = batch_cost_bytes(len(queue[0]))
            if cost_bytes > budget_bytes and batch:
                break
            payload = queue.popleft()
            batch.append(payload)
            taken_bytes += len(payload)
            budget_bytes -= cost_bytes
        link.queue_bytes -= taken_bytes
        assert link.queue_bytes >= 0 and (queue or link.queue_bytes == 0)
        return batch, taken_bytes

    def link_changed(self, link: _Link, connected: bool) -> None:
        if self.on_link_change is not None:
            self.on_link_change(link.peer_id, connected)

    def accept_inbound(self, sender: str, protocol: _InboundProtocol) -> None:
        previous = self.inbound_by_sender.get(sender)
        self.inbound_by_sender[sender] = protocol
        if previous is not None:
            log.info(
                "peer %s connected again from %s; closing its older connection", sender, protocol.peername()
            )
            previous.close()

    def drop_inbound(self, sender: str) -> None:
        """Close the connection `sender` dialed to this node, if any (it was removed: its next
        HELLO is refused, which tells it so)."""
        protocol = self.inbound_by_sender.pop(sender, None)
        if protocol is not None:
            protocol.close()

    def release_inbound(self, protocol: _InboundProtocol) -> None:
        sender = protocol.connection.peer_id
        if self.inbound_by_sender.get(sender) is protocol:
            del self.inbound_by_sender[sender]

    def _start_link(self, link: _Link) -> None:
        task = self.loop.create_task(self._run_link(link), name=f"peer-link-{self.node_id}-{link.peer_id}")
        link.task = task
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _stop_link(self, link: _Link) -> None:
        if link.task is not None:
            link.task.cancel()
            link.task = None
        if link.protocol is not None:
            link.protocol.close()

    async def _run_link(self, link: _Link) -> None:
        """Dial, serve, and redial `link`'s peer until cancelled or replaced.

        The loop also checks that it is still the link's task, that the
        transport is not stopping and that the task is not being cancelled,
        because `asyncio.wait_for` in Python 3.11 can swallow a cancellation
        that races with the dial's own result; a link that then waited on its
        connection would keep `asyncio.run` from ever finishing.
        """
        failures = 0
        while link.task is asyncio.current_task() and not self.stopping:
            try:
                protocol = await self._dial(link)
            except (OSError, asyncio.TimeoutError) as error:
                failures += 1
                link.stats.connect_failures += 1
                # The first failure in a row is worth an operator's attention;
                # the retries that follow it are not.
                level = logging.WARNING if failures == 1 else logging.DEBUG
                log.log(level, "dial %s at %s failed: %r", link.peer_id, link.address, error)
                await asyncio.sleep(backoff_delay_s(failures, self.limits, self.rng))
                continue
            if link.task is not asyncio.current_task() or self.stopping or asyncio.current_task().cancelling():
                protocol.close()  # replaced, stopped or cancelled while the dial completed
                return
            failures = 0
            if link.stats.connects > 0:
                link.stats.reconnects += 1
            link.stats.connects += 1
            link.protocol = protocol
            link.connected.set()
            log.info("connected to peer %s at %s", link.peer_id, link.address)
            self.link_changed(link, True)
            if link.queue:
                self.schedule_flush(link)
            try:
                await protocol.closed
            finally:
                protocol.close()
            log.info("connection to peer %s at %s lost", link.peer_id, link.address)
            await asyncio.sleep(backoff_delay_s(0, self.limits, self.rng))

    async def _dial(self, link: _Link) -> _OutboundProtocol:
        """One connection to `link`'s peer, welcomed; raises OSError or TimeoutError."""
        host, port = link.address
        transport, protocol = await asyncio.wait_for(
            self.loop.create_connection(lambda: _OutboundProtocol(self, link), host, port),
            self.limits.connect_timeout_s,
        )
        try:
            await asyncio.wait_for(protocol.welcomed, self.limits.handshake_timeout_s)
        except BaseException:
            transport.abort()
            raise
        return protocol
