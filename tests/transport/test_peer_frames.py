"""Peer framing and handshake, sans-I/O: bytes in, frames and events out, no sockets."""

from __future__ import annotations

import struct

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvorum.server.peer_frames import (
    BATCH_ENVELOPE_BYTES_MAX,
    NONCE_BYTES,
    PROOF_BYTES,
    PROTOCOL_VERSION,
    SECRET_MISMATCH,
    SECRET_MISSING,
    SECRET_UNEXPECTED,
    Batch,
    Challenge,
    Challenged,
    Connection,
    FrameDecoder,
    FrameKind,
    Hello,
    HelloAccepted,
    HelloChallenged,
    HelloRefused,
    LocalProtocolError,
    Proof,
    Refuse,
    RemoteProtocolError,
    Role,
    State,
    Welcome,
    batch_cost_bytes,
    encode_frame,
    handshake_proof,
    payload_bytes_max,
)

FRAMES = [
    Hello(PROTOCOL_VERSION, "cluster-1", "n1", "n2"),
    Hello(PROTOCOL_VERSION, "cluster-1", "n1", "n2", b"\x01" * NONCE_BYTES),
    Welcome(PROTOCOL_VERSION, "n2"),
    Welcome(PROTOCOL_VERSION, "n2", b"\x02" * PROOF_BYTES),
    Challenge(b"\x03" * NONCE_BYTES),
    Proof(b"\x04" * PROOF_BYTES),
    Refuse("cluster id 'x' is not 'y'"),
    Batch([]),
    Batch([b"", b"a", b"\x00" * 300, bytes(range(256))]),
]


def raw_frame(body: object) -> bytes:
    packed = msgpack.packb(body)
    return struct.pack(">I", len(packed)) + packed


# --- decoder ----------------------------------------------------------------


def test_every_frame_kind_round_trips() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(b"".join(map(encode_frame, FRAMES))) == FRAMES
    assert decoder.buffered_bytes == 0


def test_byte_at_a_time_yields_each_frame_when_its_last_byte_arrives() -> None:
    decoder = FrameDecoder()
    out = []
    for frame in FRAMES:
        wire = encode_frame(frame)
        for i, byte in enumerate(wire):
            got = decoder.feed(bytes([byte]))
            assert got == ([frame] if i == len(wire) - 1 else [])
            out.extend(got)
    assert out == FRAMES


@settings(max_examples=200, deadline=None)
@given(
    payload_lists=st.lists(st.lists(st.binary(max_size=70), max_size=5), min_size=1, max_size=8),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=12),
)
def test_any_split_of_the_stream_yields_the_same_frames(payload_lists, cuts) -> None:
    frames = [Batch(payloads) for payloads in payload_lists]
    wire = b"".join(map(encode_frame, frames))
    bounds = sorted({0, len(wire), *(cut % (len(wire) + 1) for cut in cuts)})
    decoder = FrameDecoder()
    out = []
    for start, end in zip(bounds, bounds[1:]):
        out.extend(decoder.feed(wire[start:end]))
    assert out == frames
    assert decoder.buffered_bytes == 0


def test_oversized_frame_is_refused_from_its_header_alone() -> None:
    decoder = FrameDecoder(frame_bytes_max=1000)
    with pytest.raises(RemoteProtocolError, match="exceeds frame_bytes_max=1000"):
        decoder.feed(struct.pack(">I", 1001))


def test_oversized_frame_after_good_ones_in_the_same_chunk() -> None:
    decoder = FrameDecoder(frame_bytes_max=1000)
    good = encode_frame(Batch([b"x"]))
    with pytest.raises(RemoteProtocolError):
        decoder.feed(good + struct.pack(">I", 2**32 - 1) + b"junk")


def test_frame_exactly_at_the_limit_is_accepted() -> None:
    body = msgpack.packb([FrameKind.BATCH, [b"y" * 100]])
    decoder = FrameDecoder(frame_bytes_max=len(body))
    assert decoder.feed(struct.pack(">I", len(body)) + body) == [Batch([b"y" * 100])]


def test_decoder_stays_broken_after_a_protocol_error() -> None:
    decoder = FrameDecoder()
    with pytest.raises(RemoteProtocolError):
        decoder.feed(struct.pack(">I", 0))
    with pytest.raises(RemoteProtocolError):
        decoder.feed(encode_frame(Batch([b"fine"])))


@pytest.mark.parametrize(
    "wire",
    [
        pytest.param(struct.pack(">I", 0), id="empty-frame"),
        pytest.param(struct.pack(">I", 2) + b"\xc1\xc1", id="not-msgpack"),
        pytest.param(struct.pack(">I", 3) + b"\x91\x04\x00", id="trailing-bytes"),
        pytest.param(raw_frame({"kind": 4}), id="map-not-array"),
        pytest.param(raw_frame([]), id="empty-array"),
        pytest.param(raw_frame([99, []]), id="unknown-kind"),
        pytest.param(raw_frame([True, "v", "c", "a", "b"]), id="bool-kind"),
        pytest.param(raw_frame([FrameKind.BATCH, ["text, not bytes"]]), id="str-payload"),
        pytest.param(raw_frame([FrameKind.BATCH, b"not a list"]), id="batch-not-list"),
        pytest.param(raw_frame([FrameKind.BATCH, [], []]), id="batch-extra-field"),
        pytest.param(raw_frame([FrameKind.HELLO, 1, "c", "a"]), id="hello-short"),
        pytest.param(raw_frame([FrameKind.HELLO, 1, "c", "", "b"]), id="hello-empty-id"),
        pytest.param(raw_frame([FrameKind.HELLO, "1", "c", "a", "b"]), id="hello-str-version"),
        pytest.param(raw_frame([FrameKind.HELLO, 1, "c" * 257, "a", "b"]), id="hello-long-id"),
        pytest.param(raw_frame([FrameKind.WELCOME, 1]), id="welcome-short"),
        pytest.param(raw_frame([FrameKind.WELCOME, 1, "n2"]), id="welcome-without-proof"),
        pytest.param(raw_frame([FrameKind.WELCOME, 1, "n2", b"short"]), id="welcome-short-proof"),
        pytest.param(raw_frame([FrameKind.HELLO, 1, "c", "a", "b", b"short"]), id="hello-short-nonce"),
        pytest.param(raw_frame([FrameKind.HELLO, 1, "c", "a", "b", "x" * NONCE_BYTES]), id="hello-str-nonce"),
        pytest.param(raw_frame([FrameKind.CHALLENGE, b""]), id="challenge-empty-nonce"),
        pytest.param(raw_frame([FrameKind.CHALLENGE, b"n" * (NONCE_BYTES + 1)]), id="challenge-long-nonce"),
        pytest.param(raw_frame([FrameKind.PROOF, b"p" * (PROOF_BYTES - 1)]), id="proof-short"),
        pytest.param(raw_frame([FrameKind.PROOF]), id="proof-missing"),
        pytest.param(raw_frame([FrameKind.REFUSE, b"bytes"]), id="refuse-bytes-reason"),
    ],
)
def test_malformed_frames_are_remote_protocol_errors(wire: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        FrameDecoder().feed(wire)


# --- handshake and the state table -------------------------------------------


def pair(cluster_dialer="c1", cluster_acceptor="c1", target="n2", acceptor_id="n2"):
    dialer = Connection(Role.DIALER, "n1", cluster_dialer, peer_id=target)
    acceptor = Connection(Role.ACCEPTOR, acceptor_id, cluster_acceptor)
    return dialer, acceptor


def handshake(dialer: Connection, acceptor: Connection):
    (answer,) = acceptor.receive_data(dialer.start())
    (reply,) = dialer.receive_data(answer.reply)
    return answer, reply


def test_handshake_then_batches_flow_dialer_to_acceptor() -> None:
    dialer, acceptor = pair()
    answer, reply = handshake(dialer, acceptor)
    assert isinstance(answer, HelloAccepted) and answer.hello.sender_id == "n1"
    assert reply == Welcome(PROTOCOL_VERSION, "n2")
    assert (dialer.state, acceptor.state) == (State.SENDING, State.RECEIVING)
    assert acceptor.peer_id == "n1"
    wire = dialer.encode_batch([b"one", b"two"]) + dialer.encode_batch([b"three"])
    assert acceptor.receive_data(wire) == [Batch([b"one", b"two"]), Batch([b"three"])]


def test_hello_and_first_batch_in_one_chunk_are_both_handled() -> None:
    dialer, acceptor = pair()
    hello = dialer.start()
    dialer.state = State.SENDING  # as if welcomed; only the acceptor side is under test
    events = acceptor.receive_data(hello + dialer.encode_batch([b"early"]))
    assert isinstance(events[0], HelloAccepted)
    assert events[1] == Batch([b"early"])


@pytest.mark.parametrize(
    "kwargs, reason",
    [
        (dict(cluster_dialer="c1", cluster_acceptor="c2"), "cluster id 'c1' is not 'c2'"),
        (dict(target="n3"), "addressed to node 'n3', this is 'n2'"),
        (dict(target="n1", acceptor_id="n1"), "sender claims this node's own id"),
    ],
)
def test_mismatched_hello_is_refused_with_a_reason(kwargs, reason) -> None:
    dialer, acceptor = pair(**kwargs)
    answer, reply = handshake(dialer, acceptor)
    assert isinstance(answer, HelloRefused)
    assert reason in answer.reason
    assert reply == Refuse(answer.reason)
    assert dialer.state is State.CLOSED and acceptor.state is State.CLOSED


def test_a_version_1_hello_is_refused_for_its_version() -> None:
    """A node of the previous version is told why, not just dropped as malformed."""
    acceptor = Connection(Role.ACCEPTOR, "n2", "c1")
    (answer,) = acceptor.receive_data(raw_frame([FrameKind.HELLO, 1, "c1", "n1", "n2"]))
    assert isinstance(answer, HelloRefused) and "protocol version 1 is not" in answer.reason


def test_other_protocol_version_is_refused() -> None:
    acceptor = Connection(Role.ACCEPTOR, "n2", "c1")
    (answer,) = acceptor.receive_data(encode_frame(Hello(PROTOCOL_VERSION + 1, "c1", "n1", "n2")))
    assert isinstance(answer, HelloRefused) and "protocol version" in answer.reason


def test_refused_acceptor_ignores_frames_pipelined_after_the_hello() -> None:
    dialer, acceptor = pair(cluster_acceptor="other")
    events = acceptor.receive_data(dialer.start() + encode_frame(Batch([b"must not be delivered"])))
    assert [type(event) for event in events] == [HelloRefused]
    with pytest.raises(RemoteProtocolError):
        acceptor.receive_data(encode_frame(Batch([b"later"])))


@pytest.mark.parametrize(
    "role, frames",
    [
        (Role.ACCEPTOR, [Batch([b"before hello"])]),
        (Role.ACCEPTOR, [Welcome(PROTOCOL_VERSION, "n1")]),
        (Role.ACCEPTOR, [Hello(PROTOCOL_VERSION, "c1", "n1", "n2")] * 2),
        (Role.DIALER, [Batch([b"wrong direction"])]),
        (Role.DIALER, [Hello(PROTOCOL_VERSION, "c1", "n2", "n1")]),
        (Role.DIALER, [Welcome(PROTOCOL_VERSION, "n2"), Welcome(PROTOCOL_VERSION, "n2")]),
        (Role.DIALER, [Welcome(PROTOCOL_VERSION, "n2"), Batch([b"wrong direction"])]),
        (Role.DIALER, [Welcome(PROTOCOL_VERSION, "n2"), Refuse("too late")]),
        (Role.DIALER, [Welcome(PROTOCOL_VERSION, "n3")]),
        (Role.DIALER, [Welcome(PROTOCOL_VERSION + 1, "n2")]),
    ],
)
def test_frames_outside_the_state_table_close_the_connection(role, frames) -> None:
    if role is Role.DIALER:
        connection = Connection(role, "n1", "c1", peer_id="n2")
        connection.start()
    else:
        connection = Connection(role, "n2", "c1")
    with pytest.raises(RemoteProtocolError):
        connection.receive_data(b"".join(map(encode_frame, frames)))
    assert connection.state is State.CLOSED


def test_largest_payload_fits_the_frame_limit_exactly() -> None:
    frame_bytes_max = 70_000  # the bin32 header applies past 65535 bytes
    dialer = Connection(Role.DIALER, "n1", "c1", "n2", frame_bytes_max=frame_bytes_max)
    acceptor = Connection(Role.ACCEPTOR, "n2", "c1", frame_bytes_max=frame_bytes_max)
    handshake(dialer, acceptor)
    largest = payload_bytes_max(frame_bytes_max)
    assert batch_cost_bytes(largest) + BATCH_ENVELOPE_BYTES_MAX == frame_bytes_max
    assert acceptor.receive_data(dialer.encode_batch([b"z" * largest])) == [Batch([b"z" * largest])]


def test_batch_over_the_frame_limit_is_the_callers_error() -> None:
    dialer = Connection(Role.DIALER, "n1", "c1", "n2", frame_bytes_max=1000)
    handshake(dialer, Connection(Role.ACCEPTOR, "n2", "c1", frame_bytes_max=1000))
    with pytest.raises(LocalProtocolError):
        dialer.encode_batch([b"a" * 600, b"b" * 600])


def test_an_acceptor_refuses_a_sender_its_owner_names():
    """A node removed from the cluster is refused at the handshake, and told why."""
    removed = {"n3"}
    acceptor = Connection(Role.ACCEPTOR, "n1", "c", refuse_sender=lambda s: f"{s} is out" if s in removed else None)
    dialer = Connection(Role.DIALER, "n3", "c", "n1")
    (event,) = acceptor.receive_data(dialer.start())
    assert isinstance(event, HelloRefused) and event.reason == "n3 is out"
    (answer,) = dialer.receive_data(event.reply)
    assert isinstance(answer, Refuse) and answer.reason == "n3 is out"
    welcome = Connection(Role.ACCEPTOR, "n1", "c", refuse_sender=lambda s: None)
    (event,) = welcome.receive_data(Connection(Role.DIALER, "n2", "c", "n1").start())
    assert isinstance(event, HelloAccepted)


# --- the cluster secret: mutual challenge-response ---------------------------

SECRET = b"s" * 32
OTHER_SECRET = b"o" * 32


def nonce(tag: int) -> bytes:
    """A distinct nonce per tag; the transport draws real ones from os.urandom."""
    return bytes([tag]) * NONCE_BYTES


def secret_pair(dialer_secret=SECRET, acceptor_secret=SECRET, cluster="c1", acceptor_nonce=nonce(2)):
    dialer = Connection(Role.DIALER, "n1", cluster, "n2", secret=dialer_secret, nonce=nonce(1))
    acceptor = Connection(Role.ACCEPTOR, "n2", cluster, secret=acceptor_secret, nonce=acceptor_nonce)
    return dialer, acceptor


def secret_handshake(dialer: Connection, acceptor: Connection) -> tuple[list, list]:
    """Run the handshake to its end; every event of each side, in order."""
    dialer_events: list = []
    acceptor_events = acceptor.receive_data(dialer.start())
    wire = acceptor_events[-1].reply
    while True:
        (event,) = dialer.receive_data(wire)
        dialer_events.append(event)
        if not isinstance(event, Challenged):
            return dialer_events, acceptor_events
        (answer,) = acceptor.receive_data(event.reply)
        acceptor_events.append(answer)
        wire = answer.reply


def test_the_same_secret_on_both_sides_welcomes_after_both_proved_it() -> None:
    dialer, acceptor = secret_pair()
    (hello,) = acceptor.receive_data(dialer.start())
    assert isinstance(hello, HelloChallenged) and acceptor.state is State.AWAIT_PROOF
    assert hello.hello.nonce == nonce(1)
    (challenged,) = dialer.receive_data(hello.reply)
    assert isinstance(challenged, Challenged) and dialer.state is State.AWAIT_WELCOME_SECRET
    (accepted,) = acceptor.receive_data(challenged.reply)
    assert isinstance(accepted, HelloAccepted) and acceptor.state is State.RECEIVING
    (welcome,) = dialer.receive_data(accepted.reply)
    assert isinstance(welcome, Welcome) and dialer.state is State.SENDING
    assert welcome.proof == handshake_proof(SECRET, Role.ACCEPTOR, "c1", "n1", "n2", nonce(1), nonce(2))
    assert acceptor.receive_data(dialer.encode_batch([b"one"])) == [Batch([b"one"])]


def test_a_wrong_secret_is_refused_by_the_acceptor_with_a_reason_for_both_sides() -> None:
    dialer, acceptor = secret_pair(dialer_secret=OTHER_SECRET)
    dialer_events, acceptor_events = secret_handshake(dialer, acceptor)
    assert isinstance(acceptor_events[-1], HelloRefused) and acceptor_events[-1].reason == SECRET_MISMATCH
    assert dialer_events[-1] == Refuse(SECRET_MISMATCH)
    assert dialer.state is State.CLOSED and acceptor.state is State.CLOSED


@pytest.mark.parametrize(
    "dialer_secret, acceptor_secret, reason",
    [(b"", SECRET, SECRET_MISSING), (SECRET, b"", SECRET_UNEXPECTED)],
    ids=["dialer-without", "acceptor-without"],
)
def test_a_node_with_a_secret_and_one_without_never_talk(dialer_secret, acceptor_secret, reason) -> None:
    dialer, acceptor = secret_pair(dialer_secret, acceptor_secret)
    dialer_events, acceptor_events = secret_handshake(dialer, acceptor)
    assert [type(event) for event in acceptor_events] == [HelloRefused]
    assert acceptor_events[0].reason == reason
    assert dialer_events == [Refuse(reason)]
    assert dialer.state is State.CLOSED and acceptor.state is State.CLOSED


def test_a_payload_pipelined_before_the_proof_is_a_protocol_error() -> None:
    """Nothing is delivered before the dialer proved the secret."""
    dialer, acceptor = secret_pair()
    events = acceptor.receive_data(dialer.start())
    assert [type(event) for event in events] == [HelloChallenged]
    with pytest.raises(RemoteProtocolError):
        acceptor.receive_data(encode_frame(Batch([b"must not be delivered"])))
    assert acceptor.state is State.CLOSED


def test_a_recorded_handshake_replayed_later_is_refused() -> None:
    """The acceptor's nonce is fresh per connection, so an old PROOF answers another challenge."""
    dialer, acceptor = secret_pair(acceptor_nonce=nonce(2))
    hello = dialer.start()
    (challenge,) = acceptor.receive_data(hello)
    (challenged,) = dialer.receive_data(challenge.reply)
    recorded = hello + challenged.reply
    assert isinstance(acceptor.receive_data(challenged.reply)[0], HelloAccepted)
    later = Connection(Role.ACCEPTOR, "n2", "c1", secret=SECRET, nonce=nonce(3))
    events = later.receive_data(recorded)
    assert [type(event) for event in events] == [HelloChallenged, HelloRefused]
    assert events[1].reason == SECRET_MISMATCH and later.state is State.CLOSED


def test_a_tampered_proof_is_refused() -> None:
    dialer, acceptor = secret_pair()
    (challenge,) = acceptor.receive_data(dialer.start())
    (challenged,) = dialer.receive_data(challenge.reply)
    tampered = bytearray(challenged.reply)
    tampered[-1] ^= 1
    (event,) = acceptor.receive_data(bytes(tampered))
    assert isinstance(event, HelloRefused) and event.reason == SECRET_MISMATCH


@pytest.mark.parametrize(
    "cluster, dialer_id, acceptor_id, role",
    [
        ("c1", "n1", "n3", Role.DIALER),  # made for another receiver
        ("c9", "n1", "n2", Role.DIALER),  # made for another cluster
        ("c1", "n4", "n2", Role.DIALER),  # made by another sender
        ("c1", "n1", "n2", Role.ACCEPTOR),  # the acceptor's proof reflected back as the dialer's
    ],
    ids=["other-receiver", "other-cluster", "other-sender", "reflected"],
)
def test_a_proof_made_for_another_connection_is_refused(cluster, dialer_id, acceptor_id, role) -> None:
    dialer, acceptor = secret_pair()
    acceptor.receive_data(dialer.start())
    forged = handshake_proof(SECRET, role, cluster, dialer_id, acceptor_id, nonce(1), nonce(2))
    (event,) = acceptor.receive_data(encode_frame(Proof(forged)))
    assert isinstance(event, HelloRefused) and event.reason == SECRET_MISMATCH


def _dialer_after_challenge() -> Connection:
    dialer = Connection(Role.DIALER, "n1", "c1", "n2", secret=SECRET, nonce=nonce(1))
    dialer.start()
    (event,) = dialer.receive_data(encode_frame(Challenge(nonce(2))))
    assert isinstance(event, Challenged)
    return dialer


@pytest.mark.parametrize(
    "proof",
    [
        pytest.param(b"", id="no-proof"),
        pytest.param(b"\x00" * PROOF_BYTES, id="made-up"),
        pytest.param(handshake_proof(OTHER_SECRET, Role.ACCEPTOR, "c1", "n1", "n2", nonce(1), nonce(2)),
                     id="other-secret"),
        pytest.param(handshake_proof(SECRET, Role.DIALER, "c1", "n1", "n2", nonce(1), nonce(2)), id="reflected"),
        pytest.param(handshake_proof(SECRET, Role.ACCEPTOR, "c1", "n1", "n2", nonce(1), nonce(9)),
                     id="other-connection"),
    ],
)
def test_an_impostor_acceptor_is_caught_before_the_dialer_sends_anything(proof) -> None:
    """A listener on a peer's address without the secret never receives a consensus message."""
    dialer = _dialer_after_challenge()
    with pytest.raises(RemoteProtocolError, match="did not prove the cluster secret"):
        dialer.receive_data(encode_frame(Welcome(PROTOCOL_VERSION, "n2", proof)))
    assert dialer.state is State.CLOSED
    with pytest.raises(AssertionError):
        dialer.encode_batch([b"never"])


def test_an_acceptor_may_not_skip_the_challenge() -> None:
    dialer = Connection(Role.DIALER, "n1", "c1", "n2", secret=SECRET, nonce=nonce(1))
    dialer.start()
    with pytest.raises(RemoteProtocolError, match="not allowed in state await-challenge"):
        dialer.receive_data(encode_frame(Welcome(PROTOCOL_VERSION, "n2")))
    assert dialer.state is State.CLOSED


def test_a_dialer_without_a_secret_takes_no_challenge_and_no_proof() -> None:
    dialer = Connection(Role.DIALER, "n1", "c1", "n2")
    dialer.start()
    with pytest.raises(RemoteProtocolError):
        dialer.receive_data(encode_frame(Challenge(nonce(2))))
    dialer = Connection(Role.DIALER, "n1", "c1", "n2")
    dialer.start()
    with pytest.raises(RemoteProtocolError, match="carries a proof"):
        dialer.receive_data(encode_frame(Welcome(PROTOCOL_VERSION, "n2", b"\x00" * PROOF_BYTES)))


@pytest.mark.parametrize(
    "state_frames",
    [
        [Proof(b"p" * PROOF_BYTES)],  # a PROOF before any HELLO
        [Hello(PROTOCOL_VERSION, "c1", "n1", "n2", nonce(1)), Challenge(nonce(5))],  # wrong direction
    ],
)
def test_an_acceptor_with_a_secret_follows_the_table(state_frames) -> None:
    acceptor = Connection(Role.ACCEPTOR, "n2", "c1", secret=SECRET, nonce=nonce(2))
    with pytest.raises(RemoteProtocolError):
        acceptor.receive_data(b"".join(map(encode_frame, state_frames)))
    assert acceptor.state is State.CLOSED


def test_a_removed_node_is_told_so_only_after_it_proved_the_secret() -> None:
    dialer = Connection(Role.DIALER, "n3", "c1", "n2", secret=SECRET, nonce=nonce(1))
    acceptor = Connection(Role.ACCEPTOR, "n2", "c1", refuse_sender=lambda s: f"{s} is out",
                          secret=SECRET, nonce=nonce(2))
    dialer_events, acceptor_events = secret_handshake(dialer, acceptor)
    assert [type(event) for event in acceptor_events] == [HelloChallenged, HelloRefused]
    assert dialer_events[-1] == Refuse("n3 is out")
    stranger = Connection(Role.DIALER, "n3", "c1", "n2", secret=OTHER_SECRET, nonce=nonce(1))
    acceptor = Connection(Role.ACCEPTOR, "n2", "c1", refuse_sender=lambda s: f"{s} is out",
                          secret=SECRET, nonce=nonce(2))
    assert secret_handshake(stranger, acceptor)[0][-1] == Refuse(SECRET_MISMATCH)
