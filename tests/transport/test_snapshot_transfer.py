"""Chunked snapshot transfer, sans-I/O: a sender and a receiver joined by an in-memory link.

The link is two lists of payloads; each test decides which are delivered, lost,
duplicated or reordered, and when the sender's clock ticks.
"""

from __future__ import annotations

import random
from dataclasses import replace

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvorum.consensus.raft.messages import (
    AppendEntries,
    Heartbeat,
    InstallSnapshot,
    decode_message,
    encode_message,
)
from kvorum.consensus.replicated_log import Entry, Membership, Snapshot
from kvorum.server.peer_frames import (
    FRAME_BYTES_MAX_DEFAULT,
    LocalProtocolError,
    RemoteProtocolError,
    payload_bytes_max,
)
from kvorum.server.snapshot_transfer import (
    CHUNK_BYTES_MAX_DEFAULT,
    CHUNK_OVERHEAD_BYTES_MAX,
    CHUNKS_IN_FLIGHT_MAX_DEFAULT,
    DIGEST_BYTES,
    Ack,
    Chunk,
    ReceiverState,
    SenderState,
    SnapshotMeta,
    SnapshotReceiver,
    SnapshotSender,
    TransferKind,
    decode_ack,
    decode_chunk,
    encode_ack,
    encode_chunk,
    image_digest,
    transfer_kind,
)

MIB = 1024 * 1024
MEMBERSHIP = Membership(frozenset({"n1", "n2", "n3"}), learners=frozenset({"n4"}))
META = SnapshotMeta(term=3, index=1000, log_term=2, membership=MEMBERSHIP)
NEWER_META = SnapshotMeta(term=3, index=2000, log_term=3, membership=MEMBERSHIP)
BUDGET_BYTES = 64 * MIB


def image(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


class Link:
    """A sender and a receiver joined by two in-memory queues of payloads."""

    def __init__(self, sender: SnapshotSender, receiver: SnapshotReceiver, budget_bytes: int = BUDGET_BYTES):
        self.sender = sender
        self.receiver = receiver
        self.budget_bytes = budget_bytes
        self.to_receiver: list[bytes] = []
        self.to_sender: list[bytes] = []
        self.received: list[tuple[SnapshotMeta, bytes]] = []
        self.ticks = 0

    def pump(self) -> list[bytes]:
        chunks = self.sender.next_chunks(self.budget_bytes)
        self.to_receiver += chunks
        return chunks

    def deliver_chunk(self, i: int = 0) -> None:
        ack, done = self.receiver.on_chunk(self.to_receiver.pop(i))
        if ack is not None:
            self.to_sender.append(ack)
        if done is not None:
            self.received.append(done)

    def deliver_ack(self, i: int = 0) -> None:
        self.sender.on_ack(self.to_sender.pop(i))

    def drop_in_flight(self) -> None:
        self.to_receiver.clear()
        self.to_sender.clear()

    def tick(self) -> None:
        self.ticks += 1
        self.sender.tick()

    def run(self, steps_max: int = 10_000) -> None:
        """Deliver everything in order, ticking only while nothing moves, until the sender is done."""
        for _ in range(steps_max):
            self.pump()
            if self.sender.state is SenderState.DONE and not self.to_receiver and not self.to_sender:
                return
            if not self.to_receiver and not self.to_sender:
                self.tick()
            while self.to_receiver:
                self.deliver_chunk()
            while self.to_sender:
                self.deliver_ack()
        raise AssertionError("the transfer did not finish")


def small_link(size: int = 10_000, budget_bytes: int = BUDGET_BYTES, **limits) -> tuple[Link, bytes]:
    """A link with 1000-byte chunks, a window of 4 and an ack timeout of 5 ticks."""
    limits = {"chunk_bytes_max": 1000, "chunks_in_flight_max": 4, "ack_timeout_ticks": 5} | limits
    receiver_limits = {k: v for k, v in limits.items() if k in ("chunk_bytes_max", "snapshot_bytes_max")}
    link = Link(SnapshotSender(**limits), SnapshotReceiver(**receiver_limits), budget_bytes)
    data = image(size)
    assert link.sender.start(META, data)
    return link, data


# --- whole transfers -----------------------------------------------------------


def test_whole_transfer_delivers_the_image_once_and_rebuilds_install_snapshot() -> None:
    link = Link(SnapshotSender(), SnapshotReceiver())
    data = image(3 * MIB + 12345)
    message = InstallSnapshot("n2", "n1", 3, Snapshot(1000, 2, MEMBERSHIP, data))
    assert link.sender.start(SnapshotMeta.of(message.term, message.snapshot), message.snapshot.data)
    link.run()
    assert len(link.received) == 1
    meta, got = link.received[0]
    assert InstallSnapshot("n2", "n1", meta.term, meta.snapshot(got)) == message
    assert link.sender.bytes_sent == len(data) and link.sender.resends == 0 and link.ticks == 0
    assert link.receiver.state is ReceiverState.COMPLETE and link.receiver.offset == 0


def test_forty_mib_image_travels_in_one_mib_chunks_within_the_window() -> None:
    link = Link(SnapshotSender(), SnapshotReceiver())
    data = image(40 * MIB)
    link.sender.start(META, data)
    chunks_sent = 0
    while link.sender.state is not SenderState.DONE:
        chunks = link.pump()
        assert len(link.to_receiver) <= CHUNKS_IN_FLIGHT_MAX_DEFAULT
        for payload in chunks:
            assert len(payload) <= payload_bytes_max(FRAME_BYTES_MAX_DEFAULT)
            assert len(decode_chunk(payload).data) == CHUNK_BYTES_MAX_DEFAULT
        chunks_sent += len(chunks)
        link.deliver_chunk()
        link.deliver_ack()
    assert chunks_sent == 40
    assert link.received == [(META, data)]
    assert link.sender.bytes_sent == 40 * MIB


def test_empty_image_travels_as_one_empty_chunk() -> None:
    link, data = small_link(size=0)
    [payload] = link.pump()
    assert decode_chunk(payload).data == b""
    link.run()
    assert link.received == [(META, b"")]


def test_window_holds_at_most_chunks_in_flight_max_unacknowledged_chunks() -> None:
    link, _ = small_link()
    assert len(link.pump()) == 4
    assert link.pump() == []
    link.deliver_chunk()
    link.deliver_ack()
    assert len(link.pump()) == 1


def test_budget_bounds_the_payload_bytes_of_one_call() -> None:
    link, data = small_link(budget_bytes=2500)
    chunks = link.pump()
    assert sum(map(len, chunks)) <= 2500
    assert [len(decode_chunk(c).data) for c in chunks][:2] == [1000, 1000]
    link.run()
    assert link.received == [(META, data)]


def test_budget_too_small_for_one_byte_of_image_sends_nothing() -> None:
    link, data = small_link()
    # The meta of the last chunk, whose offset is the largest, with a bin32 header.
    overhead_bytes = len(encode_chunk(Chunk(META, len(data), image_digest(data), len(data), b""))) + 3
    assert link.sender.next_chunks(overhead_bytes) == []
    [payload] = link.sender.next_chunks(overhead_bytes + 1)
    assert decode_chunk(payload).data == data[:1]


# --- loss, duplicates, reordering ---------------------------------------------


def test_lost_chunk_is_resent_once_after_the_gap_acks() -> None:
    link, data = small_link()
    link.pump()
    del link.to_receiver[1]
    while link.to_receiver:
        link.deliver_chunk()
    assert [decode_ack(a).rewind for a in link.to_sender] == [False, True, True]
    link.deliver_ack()
    link.deliver_ack()  # the first gap ack: send again from 1000
    assert [decode_chunk(c).offset for c in link.pump()] == [1000, 2000, 3000, 4000]
    link.deliver_ack()  # the second gap ack for the same offset is already answered
    assert link.pump() == []
    assert link.sender.resends == 1
    link.run()
    assert link.received == [(META, data)]
    assert link.receiver.gaps == 2 and link.ticks == 0


def test_lost_last_chunk_is_resent_after_the_ack_timeout() -> None:
    link, data = small_link(size=4000)
    link.pump()
    link.to_receiver.pop()
    while link.to_receiver:
        link.deliver_chunk()
    while link.to_sender:
        link.deliver_ack()
    for _ in range(4):
        link.tick()
        assert link.pump() == []
    link.tick()
    [payload] = link.pump()
    assert decode_chunk(payload).offset == 3000
    link.run()
    assert link.received == [(META, data)]


def test_lost_acks_cost_at_most_one_window_of_resent_bytes() -> None:
    link, data = small_link()
    link.pump()
    while link.to_receiver:
        link.deliver_chunk()
    link.to_sender.clear()
    link.run()
    assert link.received == [(META, data)]
    assert link.sender.bytes_sent - len(data) <= 4 * 1000


def test_duplicate_chunks_and_acks_are_idempotent() -> None:
    link, data = small_link()
    while link.sender.state is not SenderState.DONE:
        link.pump()
        for payload in list(link.to_receiver):
            link.to_receiver.append(payload)
        while link.to_receiver:
            link.deliver_chunk()
        link.to_sender += link.to_sender
        while link.to_sender:
            link.deliver_ack()
    assert link.received == [(META, data)]
    assert link.receiver.duplicates >= 10


def test_reordered_window_is_reassembled() -> None:
    link, data = small_link()
    for _ in range(100):
        if link.sender.state is SenderState.DONE:
            break
        link.pump()
        link.to_receiver.reverse()
        while link.to_receiver:
            link.deliver_chunk()
        link.to_sender.reverse()
        while link.to_sender:
            link.deliver_ack()
        link.tick()
    assert link.received == [(META, data)]


# --- reconnects ----------------------------------------------------------------


def test_reconnect_resumes_from_the_receivers_offset() -> None:
    link = Link(SnapshotSender(), SnapshotReceiver())
    data = image(20 * MIB)
    link.sender.start(META, data)
    while link.receiver.offset < 10 * MIB:
        link.pump()
        link.deliver_chunk()
        link.deliver_ack()
    link.pump()
    link.drop_in_flight()  # the connection drops with chunks and acks on the wire
    resume = link.receiver.resume_ack()
    assert decode_ack(resume) == Ack(META.term, META.index, link.receiver.offset, rewind=True)
    link.sender.on_ack(resume)
    link.run()
    assert link.received == [(META, data)]
    assert link.ticks == 0
    assert link.sender.bytes_sent - len(data) <= CHUNKS_IN_FLIGHT_MAX_DEFAULT * CHUNK_BYTES_MAX_DEFAULT


def test_reconnect_without_resume_ack_recovers_through_the_ack_timeout() -> None:
    link, data = small_link(size=50_000)
    while link.receiver.offset < 25_000:
        link.pump()
        link.deliver_chunk()
        link.deliver_ack()
    link.pump()
    link.drop_in_flight()
    link.run()
    assert link.received == [(META, data)]
    assert link.sender.bytes_sent - len(data) <= 4 * 1000


def test_leader_side_resend_unacked_after_its_link_comes_back() -> None:
    link, data = small_link()
    link.pump()
    link.drop_in_flight()
    link.sender.resend_unacked()
    link.run()
    assert link.received == [(META, data)] and link.ticks == 0


def test_restarted_receiver_sends_the_sender_back_to_zero() -> None:
    link, data = small_link()
    link.pump()
    link.deliver_chunk()
    link.deliver_chunk()
    link.deliver_ack()
    link.receiver = SnapshotReceiver(chunk_bytes_max=1000)  # lost the partial image
    link.run()
    assert link.received == [(META, data)]
    assert link.receiver.gaps >= 1 and link.sender.resends >= 1


def test_resume_ack_only_while_receiving() -> None:
    link, _ = small_link()
    assert link.receiver.resume_ack() is None
    link.run()
    assert link.receiver.resume_ack() is None


# --- which image ---------------------------------------------------------------


def test_newer_snapshot_supersedes_the_transfer_in_progress() -> None:
    link, _ = small_link()
    link.pump()
    link.deliver_chunk()
    old_chunks = list(link.to_receiver)
    link.to_receiver.clear()
    newer = image(7000, seed=2)
    assert link.sender.start(NEWER_META, newer)
    link.pump()
    link.deliver_chunk()  # the receiver drops the older partial image
    assert link.receiver.offset == 1000
    old_ack = encode_ack(Ack(META.term, META.index, 4000))
    link.sender.on_ack(old_ack)  # a stale ack changes nothing
    assert link.sender.acked_bytes == 0
    for payload in old_chunks:
        assert link.receiver.on_chunk(payload) == (None, None)
    assert link.receiver.stale_chunks == 3
    link.run()
    assert link.received == [(NEWER_META, newer)]


def test_chunk_of_an_older_snapshot_after_completion_is_ignored() -> None:
    link, _ = small_link()
    link.run()
    older = SnapshotMeta(term=2, index=9000, log_term=2, membership=MEMBERSHIP)
    stale = encode_chunk(Chunk(older, 10, image_digest(b"x" * 10), 0, b"x" * 10))
    assert link.receiver.on_chunk(stale) == (None, None)
    assert link.receiver.state is ReceiverState.COMPLETE


def test_late_chunk_of_the_completed_snapshot_is_acknowledged_not_delivered_again() -> None:
    link, data = small_link()
    link.pump()
    first = link.to_receiver[0]
    link.run()
    ack, done = link.receiver.on_chunk(first)
    assert done is None and decode_ack(ack) == Ack(META.term, META.index, len(data))
    assert link.received == [(META, data)]


def test_engine_resending_the_same_snapshot_keeps_the_progress() -> None:
    link, data = small_link()
    link.pump()
    while link.to_receiver:
        link.deliver_chunk()
    while link.to_sender:
        link.deliver_ack()
    assert not link.sender.start(META, data)  # the engine's re-probe
    assert link.sender.acked_bytes == 4000
    link.run()
    assert link.sender.bytes_sent == len(data)


def test_same_snapshot_after_done_is_sent_again_from_zero() -> None:
    link, data = small_link()
    link.run()
    assert link.sender.start(META, data)  # the follower needs it again
    assert link.sender.state is SenderState.SENDING and link.sender.acked_bytes == 0
    link.receiver = SnapshotReceiver(chunk_bytes_max=1000)  # it restarted before persisting
    link.run()
    assert link.received == [(META, data), (META, data)]


def test_starting_an_older_snapshot_is_a_programming_error() -> None:
    link, _ = small_link()
    link.sender.start(NEWER_META, b"new")
    with pytest.raises(AssertionError):
        link.sender.start(META, b"old")


# --- the digest -----------------------------------------------------------------


def corrupt(payload: bytes) -> bytes:
    chunk = decode_chunk(payload)
    data = bytearray(chunk.data)
    data[len(data) // 2] ^= 0x01
    return encode_chunk(replace(chunk, data=bytes(data)))


def test_corrupted_chunk_is_caught_by_the_digest_and_the_image_sent_again() -> None:
    link, data = small_link()
    link.pump()
    link.to_receiver[2] = corrupt(link.to_receiver[2])
    for _ in range(100):
        if link.receiver.digest_mismatches:
            break
        link.pump()
        while link.to_receiver:
            link.deliver_chunk()
        while link.to_sender:
            link.deliver_ack()
    assert link.receiver.digest_mismatches == 1 and link.received == []
    assert link.sender.acked_bytes == 0  # rewound to the start
    link.run()
    assert link.received == [(META, data)]
    assert link.sender.bytes_sent == 2 * len(data)


def test_chunk_disagreeing_with_the_held_image_is_the_peers_fault() -> None:
    link, data = small_link()
    link.pump()
    link.deliver_chunk()
    chunk = decode_chunk(link.to_receiver[0])
    for other in (
        replace(chunk, digest=image_digest(b"other")),
        replace(chunk, total_bytes=chunk.total_bytes + 1),
        replace(chunk, meta=replace(META, log_term=1)),
    ):
        with pytest.raises(RemoteProtocolError, match="disagrees"):
            link.receiver.on_chunk(encode_chunk(other))
    assert link.receiver.offset == 1000
    link.run()
    assert link.received == [(META, data)]


# --- limits ---------------------------------------------------------------------


def test_receiver_refuses_an_image_over_snapshot_bytes_max_before_holding_any() -> None:
    link, _ = small_link(size=5001, snapshot_bytes_max=10_000)
    link.receiver = SnapshotReceiver(chunk_bytes_max=1000, snapshot_bytes_max=5000)
    link.pump()
    with pytest.raises(RemoteProtocolError, match="exceeds snapshot_bytes_max=5000"):
        link.deliver_chunk()
    assert link.receiver.state is ReceiverState.IDLE and link.receiver.offset == 0


def test_sender_refuses_to_start_an_image_over_snapshot_bytes_max() -> None:
    sender = SnapshotSender(snapshot_bytes_max=100)
    with pytest.raises(LocalProtocolError, match="exceeds snapshot_bytes_max=100"):
        sender.start(META, b"x" * 101)
    assert sender.state is SenderState.IDLE


def test_sender_refuses_a_membership_too_large_for_the_chunk_overhead() -> None:
    crowd = Membership(frozenset(f"{i:0>200}" for i in range(400)))
    with pytest.raises(LocalProtocolError, match="CHUNK_OVERHEAD_BYTES_MAX"):
        SnapshotSender().start(SnapshotMeta(1, 1, 1, crowd), b"x")


def test_receiver_refuses_a_chunk_over_its_chunk_bytes_max() -> None:
    data = image(3000)
    payload = encode_chunk(Chunk(META, len(data), image_digest(data), 0, data[:2000]))
    with pytest.raises(RemoteProtocolError, match="exceeds chunk_bytes_max=1000"):
        SnapshotReceiver(chunk_bytes_max=1000).on_chunk(payload)


def test_oversized_payload_is_refused_before_it_is_parsed() -> None:
    with pytest.raises(RemoteProtocolError, match="plus"):
        decode_chunk(b"\x00" * (1000 + CHUNK_OVERHEAD_BYTES_MAX + 1), chunk_bytes_max=1000)
    with pytest.raises(RemoteProtocolError):
        decode_ack(b"\x00" * 65)


def test_ack_past_the_end_of_the_image_is_the_peers_fault() -> None:
    link, data = small_link()
    with pytest.raises(RemoteProtocolError, match="past the image"):
        link.sender.on_ack(encode_ack(Ack(META.term, META.index, len(data) + 1)))


# --- encoding -------------------------------------------------------------------

GOOD = [TransferKind.CHUNK, 3, 1000, 2, ["n1"], [], [], [], 10, b"d" * DIGEST_BYTES, 0, b"0123456789"]


def with_field(i: int, value: object) -> bytes:
    body = list(GOOD)
    body[i] = value
    return msgpack.packb(body, use_bin_type=True)


def test_good_raw_chunk_decodes() -> None:
    chunk = decode_chunk(msgpack.packb(GOOD, use_bin_type=True))
    assert chunk.meta == SnapshotMeta(3, 1000, 2, Membership(frozenset({"n1"})))


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"\xc1", id="not-msgpack"),
        pytest.param(msgpack.packb(GOOD, use_bin_type=True) + b"\x00", id="trailing-bytes"),
        pytest.param(msgpack.packb({"kind": 32}), id="map"),
        pytest.param(msgpack.packb(GOOD[:-1], use_bin_type=True), id="short"),
        pytest.param(with_field(0, TransferKind.ACK), id="ack-kind"),
        pytest.param(with_field(0, True), id="bool-kind"),
        pytest.param(with_field(1, -1), id="negative-term"),
        pytest.param(with_field(2, True), id="bool-index"),
        pytest.param(with_field(3, 1.5), id="float-log-term"),
        pytest.param(with_field(4, "n1"), id="voters-not-list"),
        pytest.param(with_field(4, [""]), id="empty-node-id"),
        pytest.param(with_field(5, ["x" * 257]), id="long-node-id"),
        pytest.param(with_field(6, [7]), id="int-node-id"),
        pytest.param(with_field(9, b"short"), id="short-digest"),
        pytest.param(with_field(9, "d" * DIGEST_BYTES), id="str-digest"),
        pytest.param(with_field(11, "0123456789"), id="str-data"),
        pytest.param(with_field(10, 1), id="past-the-end"),
        pytest.param(with_field(11, b""), id="empty-data-of-non-empty-image"),
    ],
)
def test_malformed_chunk_is_the_peers_fault(payload: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_chunk(payload)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param([TransferKind.ACK, 3, 1000, 0], id="short"),
        pytest.param([TransferKind.CHUNK, 3, 1000, 0, False], id="chunk-kind"),
        pytest.param([TransferKind.ACK, 3, 1000, -1, False], id="negative-offset"),
        pytest.param([TransferKind.ACK, 3, 1000, 0, 0], id="int-rewind"),
        pytest.param([TransferKind.ACK, "3", 1000, 0, False], id="str-term"),
    ],
)
def test_malformed_ack_is_the_peers_fault(body: list) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_ack(msgpack.packb(body))


node_ids = st.frozensets(st.text(min_size=1, max_size=20), max_size=4)


@settings(max_examples=100, deadline=None)
@given(
    term=st.integers(0, 2**64 - 1),
    index=st.integers(0, 2**64 - 1),
    log_term=st.integers(0, 2**64 - 1),
    voters=node_ids,
    learners=node_ids,
    data=st.binary(max_size=300),
    extra=st.integers(0, 1000),
    offset_seed=st.integers(0, 2**32),
    rewind=st.booleans(),
)
def test_chunks_and_acks_round_trip(
    term, index, log_term, voters, learners, data, extra, offset_seed, rewind
) -> None:
    meta = SnapshotMeta(term, index, log_term, Membership(voters, learners))
    total = len(data) + extra
    offset = offset_seed % (extra + 1)
    chunk = Chunk(meta, total, image_digest(b"any"), offset, data or b"x")
    chunk = Chunk(meta, max(total, offset + len(chunk.data)), chunk.digest, offset, chunk.data)
    payload = encode_chunk(chunk)
    assert transfer_kind(payload) is TransferKind.CHUNK
    assert decode_chunk(payload) == chunk
    ack = Ack(term, index, offset, rewind)
    assert transfer_kind(encode_ack(ack)) is TransferKind.ACK
    assert decode_ack(encode_ack(ack)) == ack


def test_transfer_kind_tells_transfer_payloads_from_raft_messages() -> None:
    raft = [
        Heartbeat("n2", "n1", 3, 10, 1),
        AppendEntries("n2", "n1", 3, 5, 2, (Entry(3, 6, data=b"x"),), 5),
        InstallSnapshot("n2", "n1", 3, Snapshot(1000, 2, MEMBERSHIP, b"image")),
    ]
    for message in raft:
        payload = encode_message(message)
        assert transfer_kind(payload) is None
        assert decode_message(payload) == message
    for other in (b"", b"\x92", b"\x92\x63", b"\xdc\x00\x0c"):
        assert transfer_kind(other) is None


# --- random schedules -----------------------------------------------------------

ACTIONS = ["pump", "deliver_chunk", "drop_chunk", "dup_chunk", "deliver_ack", "drop_ack", "dup_ack", "tick",
           "resume", "resend"]


@settings(max_examples=300, deadline=None)
@given(
    size=st.integers(0, 6000),
    budget_bytes=st.integers(120, 5000),
    schedule=st.lists(st.tuples(st.sampled_from(ACTIONS), st.integers(0, 7)), max_size=250),
)
def test_any_schedule_of_loss_duplication_and_reordering_delivers_the_image_once(
    size, budget_bytes, schedule
) -> None:
    link, data = small_link(size=size, budget_bytes=budget_bytes, chunk_bytes_max=300, chunks_in_flight_max=3,
                            ack_timeout_ticks=3)
    for action, i in schedule:
        queue = link.to_receiver if action.endswith("chunk") else link.to_sender
        if action == "pump":
            for payload in link.pump():
                assert len(payload) <= budget_bytes
        elif action == "tick":
            link.tick()
        elif action == "resume":
            ack = link.receiver.resume_ack()
            if ack is not None:
                link.to_sender.append(ack)
        elif action == "resend":
            link.sender.resend_unacked()
        elif not queue:
            continue
        elif action.startswith("deliver"):
            (link.deliver_chunk if queue is link.to_receiver else link.deliver_ack)(i % len(queue))
        elif action.startswith("drop"):
            queue.pop(i % len(queue))
        else:
            queue.append(queue[i % len(queue)])
        assert len(link.received) <= 1
    link.run()  # the link heals
    assert link.received == [(META, data)]
    assert link.receiver.state is ReceiverState.COMPLETE
