"""The request parser on mutated and re-cut input, for a bounded time (KVORUM_FUZZ_SECONDS, default 3 each).

Seeds are valid requests of every form the parser reads; hypothesis mutates them
(bytes flipped, inserted, deleted, numbers replaced by values around the limits),
cuts the stream into chunks and feeds them. Whatever the input, the parser must
raise nothing (protocol errors are reported in `error`), finish each input
quickly, and never buffer past its query buffer limit. On valid input, how the
stream is cut must not change the requests it yields, nor the error a request
over a limit gets.
"""

from __future__ import annotations

import itertools
import os
import signal
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvorum.protocol import RequestParser
from kvorum.protocol.parser import QUERY_BUFFER_EXCEEDED, READER_SLACK_BYTES

FUZZ_SECONDS = float(os.environ.get("KVORUM_FUZZ_SECONDS", "3"))
# Work per input is bounded: a few KiB of input never takes this long.
INPUT_SECONDS_MAX = 5.0
EXAMPLES_PER_ROUND = 100

ERRORS = {
    QUERY_BUFFER_EXCEEDED,
    "Protocol error: invalid bulk length",
    "Protocol error: invalid multibulk length",
    "Protocol error: too big inline request",
    "Protocol error: too big mbulk count string",
    "Protocol error: too big bulk count string",
    "Protocol error: unbalanced quotes in request",
}


def is_protocol_error(error: str) -> bool:
    return error in ERRORS or error.startswith("Protocol error: expected '$', got ")


def multibulk(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


SEEDS = [
    multibulk(b"PING"),
    multibulk(b"SET", b"key:1", b"value"),
    multibulk(b"SET", b"k", b"v" * 300),
    multibulk(b"MSET", b"a", b"1", b"b", b"2", b"c", b"3"),
    multibulk(b"ECHO", b""),
    multibulk(b"ECHO", b"\r\n$1234567\r\n*1000000\r\n%9999999\r\n"),  # payloads that look like headers
    b"*0\r\n",
    b"*-1\r\n",
    b"PING\r\n",
    b'SET greeting "hello world"\r\n',
    b"\r\n",
    b"*1\r\n$-1\r\n",
    b">2\r\n$1\r\na\r\n$1\r\nb\r\n",
]

LIMITS = st.fixed_dictionaries({
    "inline_max_bytes": st.sampled_from([16, 1024, 64 * 1024]),
    "bulk_max_bytes": st.sampled_from([4, 100, 1024 * 1024, 512 * 1024 * 1024]),
    "multibulk_max_count": st.sampled_from([1, 3, 1000, 2**31 - 1]),
    "query_buffer_max_bytes": st.sampled_from([64, 4096, 1024 * 1024, 1024**3]),
    "authenticated": st.booleans(),
})

INTERESTING_NUMBERS = [b"0", b"-1", b"-2", b"00", b"01", b"3", b"4", b"5", b"99", b"100", b"101", b"1000",
                       b"1001", b"4094", b"4095", b"65536", b"999999", b"1000000", b"1048576", b"1048577",
                       b"536870912", b"536870913", b"2147483647", b"2147483648", b"9223372036854775807",
                       b"9223372036854775808", b"1" * 25, b"+1", b" 1"]


@st.composite
def mutated_stream(draw) -> bytes:
    data = bytearray(b"".join(draw(st.lists(st.sampled_from(SEEDS), min_size=1, max_size=6))))
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "number", "duplicate"]))
        at = draw(st.integers(0, len(data)))
        if op == "flip" and at < len(data):
            data[at] = draw(st.sampled_from(b"*$%~>|+-:\r\n 0123456789x\x00"))
        elif op == "insert":
            data[at:at] = draw(st.binary(max_size=8) | st.sampled_from([b"\r\n", b"$", b"*", b"$1234567\r\n"]))
        elif op == "delete":
            del data[at:at + draw(st.integers(1, 4))]
        elif op == "number":
            end = at
            while end < len(data) and 48 <= data[end] <= 57:
                end += 1
            data[at:end] = draw(st.sampled_from(INTERESTING_NUMBERS))
        elif op == "duplicate":
            data[at:at] = data[max(0, at - 64):at]
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


def feed_checked(parser: RequestParser, chunks: list[bytes]) -> tuple[list[list[bytes]], str | None]:
    """Feed `chunks`, checking after each that nothing is buffered past the query buffer limit."""
    requests = []
    for chunk in chunks:
        requests += parser.feed(chunk)
        if parser.error is not None:
            break
        assert parser.buffered_bytes() <= parser.query_buffer_max_bytes + READER_SLACK_BYTES
    for request in requests:
        assert request and all(type(arg) is bytes for arg in request), request
    if parser.error is not None:
        assert is_protocol_error(parser.error), parser.error
        assert parser.feed(b"*1\r\n$4\r\nPING\r\n") == [], "a broken stream stays broken"
    return requests, parser.error


FUZZ_SETTINGS = settings(max_examples=EXAMPLES_PER_ROUND, deadline=None, database=None,
                         suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def test_mutated_input_is_refused_cleanly(alarm):
    @FUZZ_SETTINGS
    @given(data=mutated_stream(), cuts=st.lists(st.integers(0, 4000), max_size=8), limits=LIMITS)
    def check(data, cuts, limits):
        alarm()
        feed_checked(RequestParser(**limits), cut(data, cuts))

    run_for_budget(check)




def arguments(repeats_max: int):
    """Arguments, some of them payloads full of what the screen looks for."""
    return st.one_of(
        st.binary(max_size=40),
        st.sampled_from([b"$1234567\r\n", b"\r\n*1000000\r\n", b"x$99999999", b"|2000000", b"$-1\r\n", b"\r\n$"]),
        st.builds(lambda n, fill: fill * n, st.integers(0, repeats_max), st.sampled_from([b"v", b"$1000000\r\n"])),
    )


def test_any_cut_of_valid_requests_yields_them(alarm):
    @FUZZ_SETTINGS
    @given(requests=st.lists(st.lists(arguments(3000), min_size=1, max_size=5), min_size=1, max_size=6),
           cuts=st.lists(st.integers(0, 20000), max_size=10),
           bulk_max_bytes=st.sampled_from([3000 * 10, 1024 * 1024]),
           multibulk_max_count=st.sampled_from([5, 2**31 - 1]))
    def check(requests, cuts, bulk_max_bytes, multibulk_max_count):
        alarm()
        stream = b"".join(multibulk(*request) for request in requests)
        parser = RequestParser(bulk_max_bytes=bulk_max_bytes, multibulk_max_count=multibulk_max_count,
                               query_buffer_max_bytes=64 * 1024)
        assert feed_checked(parser, cut(stream, cuts)) == (requests, None)

    run_for_budget(check)


OVER_LIMIT = {
    "bulk": (b"*2\r\n$4\r\nECHO\r\n$1001\r\n", "Protocol error: invalid bulk length"),
    "bulk-far-over": (b"*2\r\n$4\r\nECHO\r\n$600000000\r\n", "Protocol error: invalid bulk length"),
    "query-buffer": (b"*2\r\n$4\r\nECHO\r\n$999\r\n", QUERY_BUFFER_EXCEEDED),
    "count": (b"*6\r\n$1\r\na\r\n", "Protocol error: invalid multibulk length"),
    "count-huge": (b"*3000000000\r\n", "Protocol error: invalid multibulk length"),
}


@pytest.mark.parametrize("kind", OVER_LIMIT)
def test_any_cut_gives_an_over_limit_request_the_same_error(alarm, kind):
    header, error = OVER_LIMIT[kind]

    @FUZZ_SETTINGS
    @given(before=st.lists(st.lists(arguments(90), min_size=1, max_size=5),
                           max_size=4),
           cuts=st.lists(st.integers(0, 8000), max_size=10))
    def check(before, cuts):
        alarm()
        stream = b"".join(multibulk(*request) for request in before) + header + b"x" * 3000
        parser = RequestParser(bulk_max_bytes=1000, multibulk_max_count=5, query_buffer_max_bytes=1000)
        assert feed_checked(parser, cut(stream, cuts)) == (before, error)

    run_for_budget(check)
