"""Each input limit of the request parser holds however the stream is cut into chunks (no sockets).

Every case is fed in one chunk, in many small chunks, and cut at every byte of
the offending header (or line). The error must be Redis' and must be known by
the time the header is complete (for a line: once it is one byte too long), so
that nothing the header announces is ever buffered; requests before it are kept.
Right at each limit, the same request is accepted however it is cut.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from kvorum.protocol import RequestParser
from kvorum.protocol.parser import QUERY_BUFFER_EXCEEDED, READER_SLACK_BYTES

MB = 1024 * 1024


def multibulk(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


@dataclass(frozen=True)
class Case:
    head: bytes  # the request up to the end of the header (or line) under test
    rest: bytes  # what follows it
    limits: dict = field(default_factory=dict)
    error: str | None = None  # None: the request is legal
    request: list[bytes] | None = None  # what a legal one parses to
    decided: int | None = None  # bytes of `head` after which the error must be known; None = all

    def stream(self, before: bytes) -> bytes:
        return before + self.head + self.rest


def set_header(value_bytes: int) -> bytes:
    return b"*3\r\n$3\r\nSET\r\n$9\r\noversized\r\n$%d\r\n" % value_bytes


BODY = b"x" * 64 * 1024
INLINE_LIMITS = {"inline_max_bytes": 1024}

OVER = {
    "bulk-over-the-default": Case(set_header(600_000_000), BODY, error="Protocol error: invalid bulk length"),
    "bulk-one-over-a-lowered-limit": Case(set_header(MB + 1), BODY, {"bulk_max_bytes": MB},
                                          "Protocol error: invalid bulk length"),
    "bulk-over-the-query-buffer": Case(set_header(MB - 1), BODY, {"query_buffer_max_bytes": MB},
                                       QUERY_BUFFER_EXCEEDED),
    "count-one-over-a-lowered-limit": Case(b"*1001\r\n", b"$1\r\na\r\n" * 1001, {"multibulk_max_count": 1000},
                                           "Protocol error: invalid multibulk length"),
    "count-over-the-default": Case(b"*3000000000\r\n", b"$1\r\na\r\n" * 100,
                                   error="Protocol error: invalid multibulk length"),
    "inline-one-over": Case(b"ECHO " + b"a" * 1020, b"\r\n" + BODY, INLINE_LIMITS,
                            "Protocol error: too big inline request", decided=1025),
    "inline-over-the-query-buffer": Case(b"ECHO " + b"a" * MB, b"\r\n",
                                         {"inline_max_bytes": 4 * MB, "query_buffer_max_bytes": MB},
                                         QUERY_BUFFER_EXCEEDED, decided=MB + 1),
    "count-line-unauthenticated": Case(b"*" + b"1" * 1024, b"\r\n", {**INLINE_LIMITS, "authenticated": False},
                                       "Protocol error: too big mbulk count string", decided=1025),
    "bulk-line-unauthenticated": Case(b"*1\r\n$" + b"1" * 1024, b"\r\n", {**INLINE_LIMITS, "authenticated": False},
                                      "Protocol error: too big bulk count string", decided=4 + 1025),
}

AT_THE_LIMIT = {
    "bulk-at-a-lowered-limit": Case(set_header(MB), b"v" * MB + b"\r\n", {"bulk_max_bytes": MB},
                                    request=[b"SET", b"oversized", b"v" * MB]),
    "bulk-filling-the-query-buffer": Case(set_header(MB - 2), b"v" * (MB - 2) + b"\r\n",
                                          {"query_buffer_max_bytes": MB},
                                          request=[b"SET", b"oversized", b"v" * (MB - 2)]),
    "count-at-a-lowered-limit": Case(b"*1000\r\n", b"$1\r\na\r\n" * 1000, {"multibulk_max_count": 1000},
                                     request=[b"a"] * 1000),
    # Like Redis, the inline limit counts every byte before the line feed, the CR included.
    "inline-at-the-limit": Case(b"ECHO " + b"a" * 1018 + b"\r", b"\n", INLINE_LIMITS, request=[b"ECHO", b"a" * 1018]),
}

# Requests before the one under test: none, one the fast path reads, one the exact path reads.
BEFORE = {"first": (b"", []), "after-multibulk": (multibulk(b"PING"), [[b"PING"]]),
          "after-inline": (b"PING\r\n", [[b"PING"]])}


def one_write(stream: bytes, head_end: int) -> list[bytes]:
    return [stream]


def small_writes(stream: bytes, head_end: int) -> list[bytes]:
    """A byte at a time through a short header, then 4 KiB at a time (all of it for a long one)."""
    cut = min(len(stream), head_end + 16) if head_end < 4096 else 0
    return [stream[i:i + 1] for i in range(cut)] + [stream[i:i + 4096] for i in range(cut, len(stream), 4096)]


def every_cut_of_the_head(stream: bytes, head_start: int, head_end: int):
    for cut in range(head_start, head_end):
        yield [stream[:cut], stream[cut:head_end], stream[head_end:]]


def feed(case: Case, chunks: list[bytes], head_start: int) -> tuple[list[list[bytes]], str | None]:
    """Feed `chunks`; check the error comes by `case.decided` and nothing is buffered past the limit."""
    limits = dict(case.limits)
    parser = RequestParser(**limits)
    decided_at = head_start + (len(case.head) if case.decided is None else case.decided)
    requests = []
    fed = 0
    for chunk in chunks:
        requests += parser.feed(chunk)
        fed += len(chunk)
        if parser.error is None:
            assert parser.buffered_bytes() <= parser.query_buffer_max_bytes + READER_SLACK_BYTES
            assert case.error is None or fed < decided_at, f"no error after {fed} bytes"
        elif fed <= decided_at:
            # Refused at the header: what follows it is dropped unread.
            assert parser.feed(case.rest) == []
            buffered = parser.buffered_bytes()
            assert parser.feed(BODY) == [] and parser.buffered_bytes() == buffered
    return requests, parser.error


def expected(case: Case, before_requests: list) -> tuple[list, str | None]:
    return (before_requests if case.error else before_requests + [case.request]), case.error


@pytest.mark.parametrize("before", BEFORE)
@pytest.mark.parametrize("name", [*OVER, *AT_THE_LIMIT])
@pytest.mark.parametrize("chunking", [one_write, small_writes])
def test_limit_in_one_or_many_writes(name, before, chunking):
    case = OVER.get(name) or AT_THE_LIMIT[name]
    before_bytes, before_requests = BEFORE[before]
    stream = case.stream(before_bytes)
    head_end = len(before_bytes) + len(case.head)
    assert feed(case, chunking(stream, head_end), len(before_bytes)) == expected(case, before_requests)


@pytest.mark.parametrize("before", BEFORE)
@pytest.mark.parametrize("name", [name for name, case in {**OVER, **AT_THE_LIMIT}.items() if len(case.head) < 2000])
def test_limit_with_the_header_cut_anywhere(name, before):
    case = OVER.get(name) or AT_THE_LIMIT[name]
    before_bytes, before_requests = BEFORE[before]
    stream = case.stream(before_bytes)
    head_start = len(before_bytes)
    for chunks in every_cut_of_the_head(stream, head_start, head_start + len(case.head)):
        assert feed(case, chunks, head_start) == expected(case, before_requests), chunks[0][-40:]


def test_a_value_that_holds_a_header_over_the_limit_is_not_refused():
    """The screen finds `$600000000` inside the value; hiredis shows it is payload, not a header."""
    value = b"\r\n$600000000\r\n" * 100
    stream = multibulk(b"SET", b"k", value) + multibulk(b"PING")
    for cut in range(len(stream)):
        parser = RequestParser()
        assert parser.feed(stream[:cut]) + parser.feed(stream[cut:]) == [[b"SET", b"k", value], [b"PING"]]
        assert parser.error is None


def test_lowered_limits_apply_to_the_next_header():
    parser = RequestParser()
    assert parser.feed(set_header(3 * MB)[:-4]) == []
    parser.bulk_max_bytes = MB  # CONFIG SET from another client
    parser.feed(set_header(3 * MB)[-4:] + b"v" * 1000)
    assert parser.error == "Protocol error: invalid bulk length"


def test_a_header_line_hiredis_waits_on_is_bounded():
    """hiredis reads header lines; one that never ends is refused once it passes 1 MB."""
    parser = RequestParser()
    assert parser.feed(multibulk(b"PING") + b"*1\r\n$") == [[b"PING"]]
    fed = 0
    while parser.error is None:
        parser.feed(b"a" * 65536)
        fed += 65536
        assert parser.buffered_bytes() <= MB + 2 * READER_SLACK_BYTES
    assert parser.error == "Protocol error: too big bulk count string"
    assert fed <= MB + 65536
