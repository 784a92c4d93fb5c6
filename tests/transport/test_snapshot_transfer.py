"""Snapshot transfer wire format: chunk and ack payloads, their kinds and validating decoders."""

from __future__ import annotations

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
from kvorum.server.peer_frames import RemoteProtocolError
from kvorum.server.snapshot_transfer import (
    CHUNK_OVERHEAD_BYTES_MAX,
    DIGEST_BYTES,
    Ack,
    Chunk,
    SnapshotMeta,
    TransferKind,
    decode_ack,
    decode_chunk,
    encode_ack,
    encode_chunk,
    image_digest,
    transfer_kind,
)

MEMBERSHIP = Membership(frozenset({"n1", "n2", "n3"}), learners=frozenset({"n4"}))


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


def test_oversized_payload_is_refused_before_it_is_parsed() -> None:
    with pytest.raises(RemoteProtocolError, match="plus"):
        decode_chunk(b"\x00" * (1000 + CHUNK_OVERHEAD_BYTES_MAX + 1), chunk_bytes_max=1000)
    with pytest.raises(RemoteProtocolError):
        decode_ack(b"\x00" * 65)
