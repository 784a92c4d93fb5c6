"""The request parser and reply encoder without sockets."""

from __future__ import annotations

import pytest

from kvorum.protocol import RequestParser, encode
from kvorum.protocol.parser import split_args
from kvorum.protocol.values import OK, CommandError, NullArray, Push, SimpleString, Verbatim


def parse(*chunks: bytes, **limits):
    parser = RequestParser(**limits)
    requests = []
    for chunk in chunks:
        requests += parser.feed(chunk)
    return requests, parser.error


def test_multibulk_split_anywhere():
    stream = b"*2\r\n$3\r\nGET\r\n$1\r\na\r\n*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n"
    for cut in range(1, len(stream)):
        assert parse(stream[:cut], stream[cut:]) == ([[b"GET", b"a"], [b"SET", b"k", b"hello"]], None)


def test_inline_then_multibulk_then_inline():
    requests, error = parse(b"PING\r\n", b'set a "b c"\r\n*1\r\n$4\r\nPING\r\n', b"\r\n", b"get a\n")
    assert error is None
    assert requests == [[b"PING"], [b"set", b"a", b"b c"], [b"PING"], [b"get", b"a"]]


def test_empty_and_negative_requests_are_skipped():
    assert parse(b"\r\n", b"*0\r\n", b"*-10\r\n", b"*1\r\n$4\r\nPING\r\n") == ([[b"PING"]], None)


@pytest.mark.parametrize("stream, error", [
    (b"*3000000000\r\n", "invalid multibulk length"),
    (b"*x\r\n", "invalid multibulk length"),
    (b"*3\r\n$3\r\nSET\r\n$1\r\nx\r\nfooz\r\n", "expected '$', got 'f'"),
    (b"*3\r\n$3\r\nSET\r\n$1\r\nx\r\n$-10\r\n", "invalid bulk length"),
    (b"*3\r\n$3\r\nSET\r\n$1\r\nx\r\n$2000000000\r\n", "invalid bulk length"),
    (b"*3\r\n$3\r\nSET\r\n$1\r\nx\r\n$blabla\r\n", "invalid bulk length"),
    (b"*1\r\nfoo\r\n", "expected '$', got 'f'"),
    (b"*2\r\n:1\r\n$1\r\na\r\n", "expected '$', got ':'"),
    (b"*1\r\n*1\r\n$1\r\na\r\n", "expected '$', got '*'"),
    (b'set """test-key""" test-value\r\nping\r\n', "unbalanced quotes in request"),
    (b"\x00" + b"A" * 70000, "too big inline request"),
    (b"*\x00" + b"A" * 70000, "too big mbulk count string"),
])
def test_protocol_errors(stream, error):
    requests, got = parse(stream)
    assert requests == []
    assert got == "Protocol error: " + error


def test_requests_before_an_error_are_kept():
    requests, error = parse(b"*1\r\n$4\r\nPING\r\n*1\r\nfoo\r\n")
    assert requests == [[b"PING"]]
    assert error == "Protocol error: expected '$', got 'f'"


@pytest.mark.parametrize("bad, error", [
    (b"*2\r\n$3\r\nGET\r\n:1\r\n", "expected '$', got ':'"),
    (b"*2\r\n$3\r\nGET\r\n*1\r\n$1\r\na\r\n", "expected '$', got '*'"),
    (b"*2\r\n$3\r\nGET\r\n$-1\r\n", "invalid bulk length"),
    (b"*2\r\n$3\r\nGET\r\n%1\r\n$1\r\na\r\n$1\r\nb\r\n", "expected '$', got '%'"),
])
@pytest.mark.parametrize("value_bytes", [3, 70_000])  # a small chunk, and one past the join check
def test_bad_argument_inside_a_pipeline_keeps_the_requests_before_it(bad, error, value_bytes):
    value = b"v" * value_bytes
    good = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$%d\r\n%s\r\n" % (len(value), value)
    # The first chunk leaves the stream between two requests' bytes, so the
    # second does not start a request and is not parsed again exactly.
    requests, got = parse(good[:5], good[5:] + good + bad + good)
    assert requests == [[b"SET", b"k", value]] * 2
    assert got == "Protocol error: " + error


def test_lowered_multibulk_limit_inside_a_pipeline():
    ping = b"*1\r\n$4\r\nPING\r\n"
    echo3 = b"*3\r\n$4\r\nECHO\r\n$1\r\na\r\n$1\r\nb\r\n"
    requests, got = parse(ping[:3], ping[3:] + ping + echo3 + ping, multibulk_max_count=2)
    assert requests == [[b"PING"], [b"PING"]]
    assert got == "Protocol error: invalid multibulk length"


def test_unauthenticated_limits():
    assert parse(b"*11\r\n", authenticated=False)[1] == "Protocol error: invalid multibulk length"
    assert parse(b"*2\r\n$4\r\nAUTH\r\n$16385\r\n", authenticated=False)[1] == "Protocol error: invalid bulk length"
    assert parse(b"*2\r\n$4\r\nAUTH\r\n$2\r\npw\r\n", authenticated=False) == ([[b"AUTH", b"pw"]], None)


def test_configured_limits():
    assert parse(b"*5\r\n", multibulk_max_count=4)[1] == "Protocol error: invalid multibulk length"
    assert parse(b"*1\r\n$2000\r\n", bulk_max_bytes=1000)[1] == "Protocol error: invalid bulk length"
    assert parse(b"PING " + b"x" * 2000, inline_max_bytes=1024)[1] == "Protocol error: too big inline request"
    assert parse(b"*1\r\n$5000\r\n" + b"x" * 3000, query_buffer_max_bytes=2048)[1] is not None


def test_split_args_like_sdssplitargs():
    assert split_args(b'set "a\\x41\\n" \'it\\\'s\' x"y z"') == [b"set", b"aA\n", b"it's", b"xy z"]
    assert split_args(b"  ") == []
    assert split_args(b'"a"b') is None
    assert split_args(b"'abc") is None


@pytest.mark.parametrize("value, resp2, resp3", [
    (b"abc", b"$3\r\nabc\r\n", b"$3\r\nabc\r\n"),
    (None, b"$-1\r\n", b"_\r\n"),
    (NullArray, b"*-1\r\n", b"_\r\n"),
    (7, b":7\r\n", b":7\r\n"),
    (-7, b":-7\r\n", b":-7\r\n"),
    (True, b":1\r\n", b"#t\r\n"),
    (1.5, b"$3\r\n1.5\r\n", b",1.5\r\n"),
    (3.0, b"$1\r\n3\r\n", b",3\r\n"),
    (OK, b"+OK\r\n", b"+OK\r\n"),
    (SimpleString("RESET"), b"+RESET\r\n", b"+RESET\r\n"),
    (CommandError("ERR bad\r\nthing"), b"-ERR bad  thing\r\n", b"-ERR bad  thing\r\n"),
    ([b"a", 1, None], b"*3\r\n$1\r\na\r\n:1\r\n$-1\r\n", b"*3\r\n$1\r\na\r\n:1\r\n_\r\n"),
    ({"k": 1}, b"*2\r\n$1\r\nk\r\n:1\r\n", b"%1\r\n$1\r\nk\r\n:1\r\n"),
    ({b"m"}, b"*1\r\n$1\r\nm\r\n", b"~1\r\n$1\r\nm\r\n"),
    (Push([b"x"]), b"*1\r\n$1\r\nx\r\n", b">1\r\n$1\r\nx\r\n"),
    (Verbatim("hi"), b"$2\r\nhi\r\n", b"=6\r\ntxt:hi\r\n"),
])
def test_encode(value, resp2, resp3):
    assert encode(value, False) == resp2
    assert encode(value, True) == resp3


def _every_three_way_split(stream: bytes):
    for a in range(1, len(stream)):
        for b in range(a + 1, len(stream)):
            yield stream[:a], stream[a:b], stream[b:]


def test_pipeline_split_anywhere_in_three():
    stream = (b"*2\r\n$3\r\nGET\r\n$1\r\na\r\n*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$9\r\nv*1234567\r\n*0\r\n"
              b"*1\r\n$4\r\nPING\r\n*-1\r\n*2\r\n$4\r\nECHO\r\n$0\r\n\r\n*1\r\n$4\r\nPING\r\n")
    want = [[b"GET", b"a"], [b"SET", b"k", b"v*1234567"], [b"PING"], [b"ECHO", b""], [b"PING"]]
    for chunks in _every_three_way_split(stream):
        assert parse(*chunks) == (want, None), chunks


def test_huge_count_split_anywhere_is_refused_without_hiredis():
    stream = b"*1\r\n$4\r\nPING\r\n*3000000000\r\n"
    for chunks in _every_three_way_split(stream):
        assert parse(*chunks) == ([[b"PING"]], "Protocol error: invalid multibulk length"), chunks


def test_big_legal_count_goes_to_the_exact_path():
    parser = RequestParser()
    assert parser.feed(b"*1\r\n$4\r\nPING\r\n*2000000\r\n$1\r\na\r\n") == [[b"PING"]]
    assert parser.error is None
    assert parser.buffered_bytes() == 0


def test_error_line_keeps_the_framing_as_redis_does():
    from kvorum.protocol.encoder import error_line

    assert error_line("ERR Unsupported option  \xce\r") == "-ERR Unsupported option  \xce\r\n".encode("utf-8", "surrogateescape")
    assert error_line("ERR a\r\nb\n") == b"-ERR a  b\r\n"
