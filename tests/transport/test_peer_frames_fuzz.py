"""The peer frame decoder on mutated and re-cut input, for a bounded time (KVORUM_FUZZ_SECONDS, default 3 each).

Seeds are valid frames of every kind; hypothesis mutates them (bytes flipped,
inserted, deleted, length prefixes replaced by values around frame_bytes_max,
bodies replaced by arbitrary msgpack), cuts the stream into chunks and feeds
them to a `FrameDecoder` and to both ends of a `Connection`. Whatever the input,
only `RemoteProtocolError` may come out, each input finishes quickly, and the
decoder never holds more than one header and `frame_bytes_max` bytes of body
between two chunks. A frame announcing more than `frame_bytes_max` is refused by
the chunk that completes its header, however the stream is cut.
"""

from __future__ import annotations

import itertools
import os
import signal
import struct
import time

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvorum.server.peer_frames import (
    HEADER_BYTES,
    PROTOCOL_VERSION,
    Batch,
    Connection,
    FrameDecoder,
    FrameKind,
    Hello,
    Refuse,
    RemoteProtocolError,
    Role,
    State,
    Welcome,
    decode_body,
    encode_frame,
)

FUZZ_SECONDS = float(os.environ.get("KVORUM_FUZZ_SECONDS", "3"))
INPUT_SECONDS_MAX = 5.0
EXAMPLES_PER_ROUND = 100
FRAME_BYTES_MAX = 4096

SEEDS = [
    encode_frame(Hello(PROTOCOL_VERSION, "c1", "n1", "n2")),
    encode_frame(Welcome(PROTOCOL_VERSION, "n2")),
    encode_frame(Refuse("cluster id 'x' is not 'y'")),
    encode_frame(Batch([])),
    encode_frame(Batch([b"", b"a", b"\x00" * 300, bytes(range(256))])),
    encode_frame(Batch([b"p" * 2000])),
]

# msgpack values of every type, nested: what a broken or hostile peer could put in a body.
MSGPACK_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=20)
    | st.binary(max_size=40) | st.sampled_from(list(FrameKind)),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=5) | st.integers(-5, 5), inner, max_size=4),
    max_leaves=20,
)

LENGTHS = [0, 1, 2, 3, FRAME_BYTES_MAX - 1, FRAME_BYTES_MAX, FRAME_BYTES_MAX + 1, 2**31, 2**32 - 1]


def raw_frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


@st.composite
def mutated_stream(draw) -> bytes:
    parts = draw(st.lists(st.sampled_from(SEEDS) | st.builds(lambda v: raw_frame(msgpack.packb(v)), MSGPACK_VALUES),
                          min_size=1, max_size=5))
    data = bytearray(b"".join(parts))
    for _ in range(draw(st.integers(0, 5))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "length"]))
        at = draw(st.integers(0, len(data)))
        if op == "flip" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif op == "insert":
            data[at:at] = draw(st.binary(max_size=8))
        elif op == "delete":
            del data[at:at + draw(st.integers(1, 4))]
        elif op == "length":
            data[at:at + HEADER_BYTES] = struct.pack(">I", draw(st.sampled_from(LENGTHS)))
    return bytes(data)


def cut(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


class _Hang(Exception):
    pass


def _on_alarm(signum, frame):
    raise _Hang(f"one input took more than {INPUT_SECONDS_MAX} s")


@pytest.fixture
def alarm():
    """`alarm()` arms a per-input timer that turns a hang into a failure."""
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    yield lambda: signal.setitimer(signal.ITIMER_REAL, INPUT_SECONDS_MAX)
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)


def run_for_budget(test) -> None:
    """Run a hypothesis test round after round, each with new random inputs, for FUZZ_SECONDS."""
    deadline = time.monotonic() + FUZZ_SECONDS
    test()
    while time.monotonic() < deadline:
        test()


FUZZ_SETTINGS = settings(max_examples=EXAMPLES_PER_ROUND, deadline=None, database=None,
                         suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def feed_decoder(chunks: list[bytes]) -> None:
    decoder = FrameDecoder(FRAME_BYTES_MAX)
    for chunk in chunks:
        try:
            decoder.feed(chunk)
        except RemoteProtocolError:
            with pytest.raises(RemoteProtocolError):
                decoder.feed(SEEDS[3])  # a broken stream stays broken
            return
        assert decoder.buffered_bytes < HEADER_BYTES + FRAME_BYTES_MAX


def test_mutated_frames_are_refused_cleanly(alarm):
    @FUZZ_SETTINGS
    @given(data=mutated_stream(), cuts=st.lists(st.integers(0, 12000), max_size=8))
    def check(data, cuts):
        alarm()
        feed_decoder(cut(data, cuts))

    run_for_budget(check)


def test_mutated_bodies_are_refused_cleanly(alarm):
    @FUZZ_SETTINGS
    @given(body=mutated_stream() | st.builds(msgpack.packb, MSGPACK_VALUES))
    def check(body):
        alarm()
        try:
            decode_body(body)
        except RemoteProtocolError:
            pass

    run_for_budget(check)


def test_mutated_frames_keep_a_connection_in_its_state_table(alarm):
    @FUZZ_SETTINGS
    @given(data=mutated_stream(), cuts=st.lists(st.integers(0, 12000), max_size=8), dialer=st.booleans())
    def check(data, cuts, dialer):
        alarm()
        if dialer:
            connection = Connection(Role.DIALER, "n1", "c1", peer_id="n2", frame_bytes_max=FRAME_BYTES_MAX)
            connection.start()
        else:
            connection = Connection(Role.ACCEPTOR, "n2", "c1", frame_bytes_max=FRAME_BYTES_MAX)
        for chunk in cut(data, cuts):
            try:
                connection.receive_data(chunk)
            except RemoteProtocolError:
                assert connection.state is State.CLOSED
                return
            if connection.state is State.CLOSED:
                return

    run_for_budget(check)


def test_an_oversized_frame_is_refused_by_the_chunk_that_completes_its_header(alarm):
    @FUZZ_SETTINGS
    @given(before=st.lists(st.sampled_from(SEEDS), max_size=4),
           announced=st.sampled_from([FRAME_BYTES_MAX + 1, 2**31, 2**32 - 1]),
           cuts=st.lists(st.integers(0, 12000), max_size=8))
    def check(before, announced, cuts):
        alarm()
        good = b"".join(before)
        stream = good + struct.pack(">I", announced) + b"b" * FRAME_BYTES_MAX
        header_end = len(good) + HEADER_BYTES
        decoder = FrameDecoder(FRAME_BYTES_MAX)
        fed = 0
        frames = []
        for chunk in cut(stream, cuts):
            fed += len(chunk)
            try:
                frames += decoder.feed(chunk)
            except RemoteProtocolError as error:
                assert "exceeds frame_bytes_max" in str(error)
                assert fed >= header_end
                break
            assert fed < header_end, "the oversized header was let through"
        assert len(frames) <= len(before)

    run_for_budget(check)
