"""Peer transports on loopback: delivery, order, reconnects, refusals, queue bounds, shutdown.

Every wait is on an event with a timeout; nothing sleeps to let time pass.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import struct
from typing import Awaitable, Callable

import pytest

from kvorum.server.peer_frames import (
    PROTOCOL_VERSION,
    Batch,
    Connection,
    FrameDecoder,
    Hello,
    LocalProtocolError,
    Refuse,
    Role,
    encode_frame,
    payload_bytes_max,
)
from kvorum.server.peer_transport import PeerTransport, TransportLimits, backoff_delay_s

WAIT_S = 5.0
LOOPBACK = ("127.0.0.1", 0)
LIMITS = TransportLimits(
    reconnect_delay_s_min=0.01,
    reconnect_delay_s_max=0.05,
    connect_timeout_s=1.0,
    handshake_timeout_s=1.0,
    stop_timeout_s=1.0,
)


class Node:
    """A transport plus what it received and its link changes, each awaitable."""

    def __init__(self, node_id: str, cluster_id: str = "c1", limits: TransportLimits = LIMITS, port: int = 0,
                 secret: bytes = b""):
        self.received: list[tuple[str, bytes]] = []
        self._count_waiters: list[tuple[int, asyncio.Event]] = []
        self._link_waiters: list[tuple[str, bool, asyncio.Event]] = []
        self.transport = PeerTransport(
            node_id,
            cluster_id,
            ("127.0.0.1", port),
            {},
            self._on_message,
            limits,
            on_link_change=self._on_link_change,
            rng=random.Random(7),
            secret=secret,
        )

    def _on_message(self, sender: str, payload: bytes) -> None:
        self.received.append((sender, payload))
        for count, event in self._count_waiters:
            if len(self.received) >= count:
                event.set()

    def _on_link_change(self, peer: str, connected: bool) -> None:
        for want_peer, want_connected, event in self._link_waiters:
            if (want_peer, want_connected) == (peer, connected):
                event.set()

    async def received_count(self, count: int) -> None:
        event = asyncio.Event()
        self._count_waiters.append((count, event))
        if len(self.received) >= count:
            event.set()
        await asyncio.wait_for(event.wait(), WAIT_S)

    def link_event(self, peer: str, connected: bool) -> asyncio.Event:
        """An event set at the next change of the link to `peer` to `connected`."""
        event = asyncio.Event()
        self._link_waiters.append((peer, connected, event))
        return event

    def payloads_from(self, sender: str) -> list[bytes]:
        return [payload for who, payload in self.received if who == sender]


async def mesh(*nodes: Node) -> None:
    """Start `nodes`, give each all the others as peers, wait until every link is up."""
    for node in nodes:
        await node.transport.start()
    peers = {node.transport.node_id: node.transport.address for node in nodes}
    for node in nodes:
        node.transport.set_peers(peers)
    for node in nodes:
        for peer in node.transport.links:
            await asyncio.wait_for(node.transport.wait_connected(peer), WAIT_S)


def run(
    test: Callable[[], Awaitable[None]],
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
) -> None:
    """Run `test` in a fresh loop and check that it left no task behind."""

    async def body() -> None:
        await asyncio.wait_for(test(), 30)
        leftover = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        assert leftover == [], leftover

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(body())


class LogWatch(logging.Handler):
    """Sets an event when a record containing `text` is logged."""

    def __init__(self, text: str) -> None:
        super().__init__(logging.DEBUG)
        self.text = text
        self.event = asyncio.Event()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if self.text in message:
            self.messages.append(message)
            self.event.set()

    def __enter__(self) -> LogWatch:
        logging.getLogger("kvorum.server.peer_transport").addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger("kvorum.server.peer_transport").removeHandler(self)


async def read_until_closed(reader: asyncio.StreamReader) -> None:
    """Read until the other end closes (a reset counts: an abort may send one)."""
    try:
        while await reader.read(65536):
            pass
    except ConnectionResetError:
        pass


def seq(i: int, size: int = 8) -> bytes:
    return i.to_bytes(8, "big") + b"." * (size - 8)


# --- delivery -----------------------------------------------------------------


def test_two_nodes_exchange_messages_both_ways() -> None:
    async def test() -> None:
        a, b = Node("a"), Node("b")
        await mesh(a, b)
        a.transport.send("b", b"ping")
        b.transport.send("a", b"pong")
        await b.received_count(1)
        await a.received_count(1)
        assert b.received == [("a", b"ping")]
        assert a.received == [("b", b"pong")]
        sent, got = a.transport.peer_stats("b"), b.transport.peer_stats("a")
        assert (sent.messages_sent, sent.connects, sent.reconnects, sent.messages_dropped) == (1, 1, 0, 0)
        assert (got.messages_received, got.bytes_received) == (1, 4)
        assert sent.bytes_sent == 4
        await a.transport.stop()
        await b.transport.stop()

    run(test)


def test_two_nodes_on_uvloop() -> None:
    uvloop = pytest.importorskip("uvloop")

    async def test() -> None:
        a, b = Node("a"), Node("b")
        await mesh(a, b)
        for i in range(1000):
            a.transport.send("b", seq(i))
        await b.received_count(1000)
        assert b.payloads_from("a") == [seq(i) for i in range(1000)]
        await a.transport.stop()
        await b.transport.stop()

    run(test, loop_factory=uvloop.new_event_loop)


def test_three_nodes_every_pair_both_ways() -> None:
    async def test() -> None:
        nodes = [Node("n1"), Node("n2"), Node("n3")]
        await mesh(*nodes)
        for node in nodes:
            for peer in node.transport.links:
                for i in range(50):
                    node.transport.send(peer, f"{node.transport.node_id}->{peer}:{i}".encode())
        for node in nodes:
            await node.received_count(100)
        for node in nodes:
            me = node.transport.node_id
            for other in nodes:
                sender = other.transport.node_id
                if sender != me:
                    assert node.payloads_from(sender) == [f"{sender}->{me}:{i}".encode() for i in range(50)]
        for node in nodes:
            await node.transport.stop()

    run(test)


def test_order_is_preserved_across_many_batches_and_loop_iterations() -> None:
    async def test() -> None:
        a, b = Node("a"), Node("b")
        await mesh(a, b)
        rng = random.Random(1)
        total = 0
        while total < 20_000:
            for _ in range(rng.randrange(1, 700)):
                a.transport.send("b", seq(total, rng.randrange(8, 300)))
                total += 1
            await asyncio.sleep(0)  # end this loop iteration so the next burst is a separate flush
        await b.received_count(total)
        assert [int.from_bytes(payload[:8], "big") for payload in b.payloads_from("a")] == list(range(total))
        await a.transport.stop()
        await b.transport.stop()

    run(test)


def test_messages_sent_in_one_iteration_leave_in_one_frame() -> None:
    async def test() -> None:
        a, b = Node("a"), Node("b")
        await mesh(a, b)
        for i in range(500):
            a.transport.send("b", seq(i))
        await b.received_count(500)
        stats = a.transport.peer_stats("b")
        assert (stats.messages_sent, stats.frames_sent) == (500, 1)
        await a.transport.stop()
        await b.transport.stop()

    run(test)


def test_a_queue_larger_than_one_batch_leaves_in_several_frames() -> None:
    async def test() -> None:
        a, b = Node("a", limits=dataclasses.replace(LIMITS, batch_bytes_max=1000)), Node("b")
        await mesh(a, b)
        for i in range(100):
            a.transport.send("b", seq(i, 95))  # 100 bytes of batch cost each: 10 per frame
        await b.received_count(100)
        assert a.transport.peer_stats("b").frames_sent == 10
        assert [int.from_bytes(payload[:8], "big") for payload in b.payloads_from("a")] == list(range(100))
        await a.transport.stop()
        await b.transport.stop()

    run(test)


# --- reconnects and membership --------------------------------------------------


def test_peer_restart_reconnects_and_delivers_what_was_queued_meanwhile() -> None:
    async def test() -> None:
        a, b = Node("a"), Node("b")
        await mesh(a, b)
        port = b.transport.address[1]
        lost = a.link_event("b", False)
        await b.transport.stop()
        await asyncio.wait_for(lost.wait(), WAIT_S)
        assert not a.transport.is_connected("b")
        for i in range(10):
            a.transport.send("b", seq(i))
        assert a.transport.peer_stats("b").queue_messages == 10

        b_again = Node("b", port=port)
        await b_again.transport.start()
        b_again.transport.set_peers({"a": a.transport.address})
        await asyncio.wait_for(a.transport.wait_connected("b"), WAIT_S)
        await b_again.received_count(10)
        assert b_again.payloads_from("a") == [seq(i) for i in range(10)]
        stats = a.transport.peer_stats("b")
        assert (stats.connects, stats.reconnects, stats.queue_messages) == (2, 1, 0)
        await a.transport.stop()
        await b_again.transport.stop()

    run(test)


def test_set_peers_adds_removes_and_moves_peers() -> None:
    async def test() -> None:
        a, b, c = Node("a"), Node("b"), Node("c")
        await mesh(a, b)
        await c.transport.start()
        a.transport.set_peers({"a": a.transport.address, "b": b.transport.address, "c": c.transport.address})
        await asyncio.wait_for(a.transport.wait_connected("c"), WAIT_S)
        a.transport.send("c", b"hello c")
        await c.received_count(1)

        lost_b = a.link_event("b", False)
        a.transport.set_peers({"c": c.transport.address})
        await asyncio.wait_for(lost_b.wait(), WAIT_S)
        a.transport.send("b", b"b is no longer a peer")
        assert a.transport.stats.unknown_peer_drops == 1
        assert set(a.transport.all_peer_stats()) == {"c"}

        c_moved = Node("c")
        await c_moved.transport.start()
        a.transport.set_peers({"c": c_moved.transport.address})
        await asyncio.wait_for(a.transport.wait_connected("c"), WAIT_S)
        a.transport.send("c", b"hello again")
        await c_moved.received_count(1)
        assert c_moved.received == [("a", b"hello again")]
        assert c.received == [("a", b"hello c")]
        for node in (a, b, c, c_moved):
            await node.transport.stop()

    run(test)


def test_newer_connection_from_the_same_sender_replaces_the_older() -> None:
    async def test() -> None:
        b = Node("b")
        await b.transport.start()
        host, port = b.transport.address
        hello = encode_frame(Hello(PROTOCOL_VERSION, "c1", "a", "b"))
        old_reader, old_writer = await asyncio.open_connection(host, port)
        old_writer.write(hello)
        assert FrameDecoder().feed(await asyncio.wait_for(old_reader.read(1000), WAIT_S))
        new_reader, new_writer = await asyncio.open_connection(host, port)
        new_writer.write(hello)
        assert FrameDecoder().feed(await asyncio.wait_for(new_reader.read(1000), WAIT_S))
        assert await asyncio.wait_for(old_reader.read(), WAIT_S) == b""  # closed by b
        for writer in (old_writer, new_writer):
            writer.close()
            await writer.wait_closed()
        await b.transport.stop()

    run(test)


# --- refusals and protocol errors ------------------------------------------------


def test_a_node_of_another_cluster_is_refused_and_both_sides_log_it() -> None:
    async def test() -> None:
        a, b = Node("a", cluster_id="blue"), Node("b", cluster_id="green")
        await a.transport.start()
        await b.transport.start()
        with LogWatch("refused this node") as dialer_log, LogWatch("refused connection") as acceptor_log:
            a.transport.set_peers({"b": b.transport.address})
            a.transport.send("b", b"must never reach another cluster")
            await asyncio.wait_for(dialer_log.event.wait(), WAIT_S)
            await asyncio.wait_for(acceptor_log.event.wait(), WAIT_S)
        assert "cluster id 'blue' is not 'green'" in dialer_log.messages[0]
        assert "cluster id 'blue' is not 'green'" in acceptor_log.messages[0]
        assert b.received == []
        assert b.transport.stats.handshakes_refused >= 1
        stats = a.transport.peer_stats("b")
        assert stats.refusals >= 1 and stats.connects == 0 and stats.messages_sent == 0
        assert stats.queue_messages == 1
        assert not a.transport.is_connected("b")
        await a.transport.stop()
        await b.transport.stop()

    run(test)


def test_hello_to_the_wrong_node_is_answered_with_refuse_then_close() -> None:
    async def test() -> None:
        b = Node("b")
        await b.transport.start()
        reader, writer = await asyncio.open_connection(*b.transport.address)
        writer.write(encode_frame(Hello(PROTOCOL_VERSION, "c1", "a", "x")))
        answer = await asyncio.wait_for(reader.read(), WAIT_S)  # everything up to the close
        assert FrameDecoder().feed(answer) == [Refuse("addressed to node 'x', this is 'b'")]
        writer.close()
        await writer.wait_closed()
        assert b.transport.stats.handshakes_refused == 1
        await b.transport.stop()

    run(test)


def test_oversized_frame_from_a_peer_closes_the_connection() -> None:
    async def test() -> None:
        b = Node("b", limits=dataclasses.replace(LIMITS, frame_bytes_max=4096, batch_bytes_max=4000))
        await b.transport.start()
        reader, writer = await asyncio.open_connection(*b.transport.address)
        writer.write(encode_frame(Hello(PROTOCOL_VERSION, "c1", "a", "b")))
        writer.write(struct.pack(">I", 4097))
        await asyncio.wait_for(read_until_closed(reader), WAIT_S)
        writer.close()
        await writer.wait_closed()
        assert b.transport.stats.protocol_errors == 1
        assert b.received == []
        await b.transport.stop()

    run(test)


def test_a_connection_that_never_says_hello_is_closed() -> None:
    async def test() -> None:
        b = Node("b", limits=dataclasses.replace(LIMITS, handshake_timeout_s=0.1))
        await b.transport.start()
        with LogWatch("sent no HELLO") as watch:
            reader, writer = await asyncio.open_connection(*b.transport.address)
            assert await asyncio.wait_for(reader.read(), WAIT_S) == b""
            await asyncio.wait_for(watch.event.wait(), WAIT_S)
        writer.close()
        await writer.wait_closed()
        await b.transport.stop()

    run(test)


def test_payload_over_the_limit_is_refused_at_send() -> None:
    async def test() -> None:
        limits = dataclasses.replace(LIMITS, frame_bytes_max=4096, batch_bytes_max=4000)
        a, b = Node("a", limits=limits), Node("b", limits=limits)
        await mesh(a, b)
        largest = payload_bytes_max(4096)
        with pytest.raises(LocalProtocolError):
            a.transport.send("b", b"x" * (largest + 1))
        a.transport.send("b", b"y" * largest)
        await b.received_count(1)
        assert b.received == [("a", b"y" * largest)]
        await a.transport.stop()
        await b.transport.stop()

    run(test)


# --- queue bounds and shutdown --------------------------------------------------


def test_queue_bound_drops_the_oldest_while_the_peer_is_down() -> None:
    async def test() -> None:
        a = Node("a", limits=dataclasses.replace(LIMITS, queue_messages_max=100))
        b = Node("b")
        await b.transport.start()
        port = b.transport.address[1]
        await b.transport.stop()  # b is down; its port is known
        await a.transport.start()
        a.transport.set_peers({"b": ("127.0.0.1", port)})
        for i in range(250):
            a.transport.send("b", seq(i))
        stats = a.transport.peer_stats("b")
        assert (stats.messages_dropped, stats.queue_messages, stats.queue_bytes) == (150, 100, 800)

        b_up = Node("b", port=port)
        await b_up.transport.start()
        await b_up.received_count(100)
        assert b_up.payloads_from("a") == [seq(i) for i in range(150, 250)]
        stats = a.transport.peer_stats("b")
        assert (stats.messages_sent, stats.messages_dropped, stats.queue_messages) == (100, 150, 0)
        await a.transport.stop()
        await b_up.transport.stop()

    run(test)


def test_queue_byte_bound_drops_the_oldest() -> None:
    # Never started: the queue bound holds before any connection exists.
    limits = dataclasses.replace(LIMITS, queue_bytes_max=1000)
    transport = PeerTransport("a", "c1", LOOPBACK, {"b": ("127.0.0.1", 9)}, lambda *_: None, limits)
    for i in range(25):
        transport.send("b", seq(i, 100))
    stats = transport.peer_stats("b")
    assert (stats.messages_dropped, stats.queue_messages, stats.queue_bytes) == (15, 10, 1000)
    assert list(transport.links["b"].queue) == [seq(i, 100) for i in range(15, 25)]


def test_stop_closes_everything_and_counts_what_was_still_queued() -> None:
    async def test() -> None:
        a, b = Node("a"), Node("b")
        await mesh(a, b)
        down = Node("down")
        await down.transport.start()
        down_address = down.transport.address
        await down.transport.stop()
        a.transport.set_peers({"b": b.transport.address, "down": down_address})
        a.transport.send("down", b"never delivered")
        a.transport.send("b", b"delivered")
        await b.received_count(1)

        await a.transport.stop()
        await b.transport.stop()
        for node in (a, b):
            assert node.transport.connections == set()
            assert node.transport.tasks == set()
            assert not node.transport.server.is_serving()
        assert a.transport.peer_stats("down").messages_dropped == 1
        a.transport.send("b", b"after stop")
        assert a.transport.peer_stats("b").messages_dropped == 1
        await a.transport.stop()  # a second stop is a no-op

    run(test)


def test_stop_before_start_is_harmless() -> None:
    async def test() -> None:
        node = Node("lonely")
        await node.transport.stop()
        node.transport.send("nobody", b"x")
        assert node.transport.stats.unknown_peer_drops == 1

    run(test)


def test_a_peer_that_stops_reading_pauses_flushing_then_the_queue_drops_the_oldest() -> None:
    """Back-pressure end to end: TCP window, write buffer high-water mark, bounded queue."""

    async def test() -> None:
        welcomed, resume, drained = asyncio.Event(), asyncio.Event(), asyncio.Event()
        received: list[int] = []
        last_sent = -1

        async def stalled_peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            connection = Connection(Role.ACCEPTOR, "b", "c1")
            (accepted,) = connection.receive_data(await reader.read(4096))
            writer.write(accepted.reply)
            welcomed.set()
            await resume.wait()  # meanwhile nothing is read: the TCP window closes
            while not drained.is_set():
                for event in connection.receive_data(await reader.read(65536)):
                    assert isinstance(event, Batch)
                    received.extend(int.from_bytes(payload[:8], "big") for payload in event.payloads)
                if received and received[-1] == last_sent:
                    drained.set()
            writer.close()

        server = await asyncio.start_server(stalled_peer, "127.0.0.1", 0)
        limits = dataclasses.replace(
            LIMITS, write_buffer_bytes_high=64 * 1024, batch_bytes_max=64 * 1024, queue_messages_max=1000
        )
        a = Node("a", limits=limits)
        await a.transport.start()
        a.transport.set_peers({"b": server.sockets[0].getsockname()[:2]})
        await asyncio.wait_for(welcomed.wait(), WAIT_S)
        await asyncio.wait_for(a.transport.wait_connected("b"), WAIT_S)
        # A burst per loop iteration that one flush can carry (50 KiB of the
        # 64 KiB a flush writes here), until the kernel buffers and the write
        # buffer are full, flushing pauses, and the queue overflows.
        for _ in range(10_000):
            for _ in range(50):
                last_sent += 1
                a.transport.send("b", seq(last_sent, 1024))
            await asyncio.sleep(0)
            if a.transport.peer_stats("b").messages_dropped:
                break
        stats = a.transport.peer_stats("b")
        assert stats.messages_dropped > 0
        assert a.transport.links["b"].protocol.paused
        assert stats.queue_messages == 1000
        assert stats.messages_sent + stats.messages_dropped + stats.queue_messages == last_sent + 1

        resume.set()
        await asyncio.wait_for(drained.wait(), WAIT_S)
        stats = a.transport.peer_stats("b")
        assert received == sorted(set(received))  # in order, no duplicates
        assert len(received) == stats.messages_sent == last_sent + 1 - stats.messages_dropped
        assert received[-1000:] == list(range(last_sent - 999, last_sent + 1))  # the newest all arrived
        await a.transport.stop()
        server.close()
        await server.wait_closed()

    run(test)


def test_backoff_doubles_from_the_minimum_up_to_the_cap_with_jitter() -> None:
    limits = dataclasses.replace(LIMITS, reconnect_delay_s_min=0.1, reconnect_delay_s_max=1.0)
    rng = random.Random(3)
    for failures, full_s in [(0, 0.1), (1, 0.2), (2, 0.4), (3, 0.8), (4, 1.0), (60, 1.0)]:
        delays = [backoff_delay_s(failures, limits, rng) for _ in range(200)]
        assert all(full_s / 2 <= delay <= full_s for delay in delays)
        assert max(delays) - min(delays) > full_s / 4  # jittered, not constant


@pytest.mark.parametrize(
    "overrides",
    [
        dict(frame_bytes_max=10),
        dict(batch_bytes_max=0),
        dict(frame_bytes_max=4096, batch_bytes_max=4096),
        dict(queue_messages_max=0),
        dict(queue_bytes_max=-1),
        dict(write_buffer_bytes_high=0),
        dict(reconnect_delay_s_min=0),
        dict(reconnect_delay_s_min=3.0, reconnect_delay_s_max=2.0),
        dict(handshake_timeout_s=0),
    ],
)
def test_inconsistent_limits_are_rejected(overrides) -> None:
    with pytest.raises(ValueError, match="TransportLimits"):
        TransportLimits(**overrides)
