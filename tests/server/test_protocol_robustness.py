"""Bad input over raw sockets, inline commands, pipelining and the limits; the node keeps serving."""

from __future__ import annotations

import os
import socket
import time

import pytest
import redis

from server_wire import read_reply, read_until_closed


def assert_still_serving(node):
    with node.client() as r:
        assert r.ping() is True
        assert r.set("alive", "yes") is True
        assert r.get("alive") == b"yes"


def test_inline_commands(raw):
    raw.sendall(b"PING\r\n")
    assert read_reply(raw) == b"+PONG\r\n"
    raw.sendall(b'SET greeting "hello world"\r\nGET greeting\n')
    data = b""
    while data.count(b"\r\n") < 3:
        data += read_reply(raw)
    assert data == b"+OK\r\n$11\r\nhello world\r\n"
    raw.sendall(b"\r\n\r\nECHO 'it\\'s'\r\n")
    assert read_reply(raw) == b"$4\r\nit's\r\n"


@pytest.mark.parametrize("payload, error", [
    (b"*3000000000\r\n", b"-ERR Protocol error: invalid multibulk length\r\n"),
    (b"*3\r\n$3\r\nSET\r\n$1\r\nx\r\nfooz\r\n", b"-ERR Protocol error: expected '$', got 'f'\r\n"),
    (b"*3\r\n$3\r\nSET\r\n$1\r\nx\r\n$-10\r\n", b"-ERR Protocol error: invalid bulk length\r\n"),
    (b"*3\r\n$3\r\nSET\r\n$1\r\nx\r\n$2000000000\r\n", b"-ERR Protocol error: invalid bulk length\r\n"),
    (b"*3\r\n$3\r\nSET\r\n$1\r\nx\r\n$blabla\r\n", b"-ERR Protocol error: invalid bulk length\r\n"),
    (b"*1\r\nfoo\r\n", b"-ERR Protocol error: expected '$', got 'f'\r\n"),
    (b'set """test-key""" test-value\r\nping\r\n', b"-ERR Protocol error: unbalanced quotes in request\r\n"),
])
def test_protocol_errors_close_the_connection(kvorum_node, raw, payload, error):
    raw.sendall(payload)
    assert read_until_closed(raw) == error
    assert_still_serving(kvorum_node)


def test_requests_before_a_protocol_error_are_answered(kvorum_node, raw):
    raw.sendall(b"*1\r\n$4\r\nPING\r\n*1\r\nfoo\r\n")
    assert read_until_closed(raw) == b"+PONG\r\n-ERR Protocol error: expected '$', got 'f'\r\n"


@pytest.mark.parametrize("start", [b"\x00", b"*\x00", b"$\x00"])
def test_protocol_desync(kvorum_node, start):
    """Redis' 'Protocol desync regression test': junk without a line end is cut off at 64 KiB."""
    with kvorum_node.connect() as sock:
        sock.sendall(start)
        sent = 0
        try:
            while sent < 10 * 1024 * 1024:
                sock.sendall(b"A" * 1024)
                sent += 1024
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert b"Protocol error" in read_until_closed(sock)
    assert_still_serving(kvorum_node)


def test_random_garbage_never_hurts(kvorum_node):
    rng = __import__("random").Random(7)
    for _ in range(30):
        with kvorum_node.connect() as sock:
            try:
                sock.sendall(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 4000))))
                sock.settimeout(0.5)
                sock.recv(65536)
            except (OSError, socket.timeout):
                pass
    for blob in (b"*1\r\n*1\r\n*1\r\n", b"*2\r\n:1\r\n,1.5\r\n", b"%1\r\n$1\r\na\r\n", b"*1\r\n$-1\r\n", os.urandom(5000)):
        with kvorum_node.connect() as sock:
            sock.sendall(blob)
            sock.settimeout(1)
            try:
                sock.recv(65536)
            except (OSError, socket.timeout):
                pass
    assert_still_serving(kvorum_node)


@pytest.mark.parametrize("header", [b"*1999999999\r\n", b"*1\r\n$4\r\nPING\r\n*1\r\n*1999999999\r\n",
                                    b"*1\r\n$4\r\nPING\r\n*19", b">1999999999\r\n"])
def test_huge_counts_cost_nothing(kvorum_node, header):
    """A count of billions must not make the node allocate or free billions of slots."""
    for _ in range(3):
        with kvorum_node.connect() as sock:
            sock.sendall(header)
            if header.endswith(b"*19"):
                sock.sendall(b"99999999\r\n")
            time.sleep(0.05)
    started = time.monotonic()
    assert_still_serving(kvorum_node)
    assert time.monotonic() - started < 1.0


def test_wrong_arity_keeps_the_connection(r):
    with pytest.raises(redis.ResponseError, match="wrong number of arguments for 'set' command"):
        r.execute_command("SET", "only-key")
    assert r.ping() is True


def test_pipelining_many_commands(r):
    pipe = r.pipeline(transaction=False)
    for i in range(5000):
        pipe.set(f"key:{i}", i)
        pipe.get(f"key:{i}")
    results = pipe.execute()
    assert results[0::2] == [True] * 5000
    assert results[1::2] == [str(i).encode() for i in range(5000)]


def test_raw_pipeline_in_one_write(raw):
    raw.sendall(b"*1\r\n$4\r\nPING\r\n" * 1000)
    data = b""
    while len(data) < 7000:
        data += raw.recv(65536)
    assert data == b"+PONG\r\n" * 1000


def test_large_values(r):
    value = os.urandom(5 * 1024 * 1024)
    assert r.set("big", value) is True
    assert r.get("big") == value


def test_many_arguments(r):
    pairs = {f"k{i}": f"v{i}" for i in range(10000)}
    assert r.mset(pairs) is True
    assert r.get("k9999") == b"v9999"


def test_maxclients(node_factory):
    node = node_factory()
    with node.client() as admin:
        admin.config_set("maxclients", "3")
        socks = [node.connect() for _ in range(2)]
        for sock in socks:
            sock.sendall(b"PING\r\n")
            assert read_reply(sock) == b"+PONG\r\n"
        extra = node.connect()
        assert read_until_closed(extra) == b"-ERR max number of clients reached\r\n"
        extra.close()
        assert admin.info("stats")["rejected_connections"] >= 1
        socks.pop().close()
        time.sleep(0.2)
        again = node.connect()
        again.sendall(b"PING\r\n")
        assert read_reply(again) == b"+PONG\r\n"
        again.close()
        for sock in socks:
            sock.close()


def test_output_buffer_limit_drops_a_client_that_does_not_read(node_factory):
    node = node_factory()
    with node.client() as admin:
        admin.config_set("client-output-buffer-limit", "normal 1mb 0 0")
        admin.set("blob", b"x" * 200_000)
        hog = node.connect()
        hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        hog_addr = "%s:%d" % hog.getsockname()[:2]
        hog.sendall(b"PING\r\n")
        assert read_reply(hog) == b"+PONG\r\n"
        request = b"*2\r\n$3\r\nGET\r\n$4\r\nblob\r\n" * 200
        try:
            for _ in range(20):
                hog.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and hog_addr in {c["addr"] for c in admin.client_list()}:
            time.sleep(0.1)
        assert hog_addr not in {c["addr"] for c in admin.client_list()}
        hog.close()
        assert admin.ping() is True


def test_slow_reader_is_paused_not_dropped_without_a_limit(kvorum_node):
    with kvorum_node.client() as admin:
        admin.set("blob", b"y" * 100_000)
        slow = kvorum_node.connect()
        request = b"*2\r\n$3\r\nGET\r\n$4\r\nblob\r\n" * 100
        slow.sendall(request)
        time.sleep(0.5)
        assert admin.ping() is True
        expected = len(b"$100000\r\n" + b"y" * 100_000 + b"\r\n") * 100
        got = 0
        while got < expected:
            chunk = slow.recv(1 << 20)
            assert chunk
            got += len(chunk)
        assert got == expected
        slow.close()


def test_query_buffer_limit(node_factory):
    node = node_factory()
    with node.client() as admin:
        admin.config_set("client-query-buffer-limit", "1mb")
        with node.connect() as sock:
            sock.sendall(b"*2\r\n$3\r\nSET\r\n$100000000\r\n")
            try:
                for _ in range(2048):
                    sock.sendall(b"z" * 1024)
            except (BrokenPipeError, ConnectionResetError):
                pass
            assert read_until_closed(sock) == b""
        assert admin.ping() is True


def test_proto_max_bulk_len(node_factory):
    node = node_factory()
    with node.client() as admin:
        admin.config_set("proto-max-bulk-len", "1mb")
        with node.connect() as sock:
            sock.sendall(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2000000\r\n")
            assert read_until_closed(sock) == b"-ERR Protocol error: invalid bulk length\r\n"
