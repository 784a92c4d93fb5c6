"""A value over proto-max-bulk-len is refused at its header, however it is written (real node, real clients).

Clients send a value's header and body in one write; the node must answer
`-ERR Protocol error: invalid bulk length` and close the connection, as Redis
does, before it buffers the body: nothing is stored, other clients are served,
and the node's peak memory does not grow by the value's size. A header
announcing 600 MB is followed by a few MB of body, which is enough to see the
node buffer it.
"""

from __future__ import annotations

import socket
import time

import pytest
import redis

from server_wire import read_until_closed

MB = 1024 * 1024
REFUSED = b"-ERR Protocol error: invalid bulk length\r\n"
# The node reads at most a few chunks of 256 KiB before it refuses; buffering a
# body of BODY_BYTES would raise its peak memory by at least that.
BODY_BYTES = 8 * MB
PEAK_GROWTH_BYTES_MAX = 3 * MB


def set_header(value_bytes: int, key: bytes = b"oversized") -> bytes:
    return b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n" % (len(key), key, value_bytes)


def memory_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


class PeakMemory:
    """The node's peak resident memory (VmHWM) from now on."""

    def __init__(self, pid: int):
        self.pid = pid
        try:
            with open(f"/proc/{pid}/clear_refs", "w") as clear_refs:
                clear_refs.write("5")  # reset VmHWM to the current RSS
        except OSError:
            pass  # then growth is measured from the peak so far, which is only stricter
        self.start_kb = max(memory_kb(pid, "VmHWM"), memory_kb(pid, "VmRSS"))

    def growth_bytes(self) -> int:
        return (memory_kb(self.pid, "VmHWM") - self.start_kb) * 1024


def assert_still_serving(node):
    with node.client() as r:
        assert r.ping() is True
        assert r.set("alive", "yes") is True
        assert r.get("alive") == b"yes"


def assert_nothing_stored(node):
    with node.client() as r:
        assert r.exists("oversized") == 0


def send_all_ignoring_close(sock: socket.socket, data: bytes, write_bytes: int) -> None:
    """Write `data` in writes of `write_bytes`; the node may close the connection meanwhile."""
    try:
        for start in range(0, len(data), write_bytes):
            sock.sendall(data[start:start + write_bytes])
    except (BrokenPipeError, ConnectionResetError):
        pass


def read_reply_or_reset(sock: socket.socket) -> bytes:
    """What the node answered before closing; b"" when its reset overtook the reply.

    Like Redis, the node closes with the rest of the body unread, so the kernel
    may reset the connection before the client reads the reply.
    """
    return read_until_closed(sock)


@pytest.fixture
def node(node_factory):
    return node_factory()


@pytest.mark.parametrize("limit", [None, "1mb"], ids=["default-512mb", "lowered-1mb"])
def test_header_and_body_in_one_write(node, limit):
    value_bytes = 600_000_000 if limit is None else 3 * MB
    if limit:
        with node.client() as admin:
            admin.config_set("proto-max-bulk-len", limit)
    with node.connect() as sock:
        sock.sendall(set_header(value_bytes) + b"v" * 1000)
        assert read_until_closed(sock) == REFUSED
    assert_nothing_stored(node)
    assert_still_serving(node)


def test_the_node_answers_at_the_header_before_any_body(kvorum_node):
    """Header bytes one write at a time: the reply comes before a byte of the body is sent."""
    with kvorum_node.connect() as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for byte in set_header(600_000_000):
            sock.sendall(bytes([byte]))
        assert read_until_closed(sock) == REFUSED
    assert_still_serving(kvorum_node)


def test_header_cut_at_every_byte(kvorum_node):
    header = set_header(600_000_000)
    for cut in range(1, len(header)):
        with kvorum_node.connect() as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(header[:cut])
            time.sleep(0.002)  # let the node read the first part on its own
            sock.sendall(header[cut:] + b"v" * 1000)
            assert read_until_closed(sock) == REFUSED, cut
    assert_nothing_stored(kvorum_node)
    assert_still_serving(kvorum_node)


@pytest.mark.parametrize("write_bytes", [BODY_BYTES, 64 * 1024, 1460], ids=["one-write", "64kb-writes", "1460b-writes"])
def test_megabytes_of_body_after_a_600mb_header_are_never_buffered(node, write_bytes):
    bystander = node.client()
    assert bystander.ping() is True
    peak = PeakMemory(node.process.pid)
    with node.connect() as sock:
        send_all_ignoring_close(sock, set_header(600_000_000) + b"v" * BODY_BYTES, write_bytes)
        assert read_reply_or_reset(sock) in (REFUSED, b"")
    assert peak.growth_bytes() < PEAK_GROWTH_BYTES_MAX
    assert bystander.ping() is True
    bystander.close()
    assert_nothing_stored(node)
    assert_still_serving(node)


@pytest.mark.parametrize("value_bytes", [3 * MB, 10 * MB])
def test_redis_py_cannot_store_past_a_lowered_limit(node, value_bytes):
    with node.client() as admin:
        admin.config_set("proto-max-bulk-len", "1mb")
    bystander = node.client()
    assert bystander.ping() is True
    peak = PeakMemory(node.process.pid)
    with node.client() as r:
        with pytest.raises((redis.ResponseError, redis.ConnectionError)) as refused:
            r.set("oversized", b"v" * value_bytes)
        if isinstance(refused.value, redis.ResponseError):
            assert "Protocol error: invalid bulk length" in str(refused.value)
    assert peak.growth_bytes() < PEAK_GROWTH_BYTES_MAX
    assert bystander.ping() is True
    bystander.close()
    assert_nothing_stored(node)
    assert_still_serving(node)
    with node.client() as r:
        assert r.set("at-the-limit", b"w" * MB) is True
        assert r.strlen("at-the-limit") == MB


def test_redis_py_connection_with_a_600mb_header(node):
    """redis-py's own connection sends the header and a few MB of body as one packed command."""
    peak = PeakMemory(node.process.pid)
    with node.client() as r:
        connection = r.connection_pool.get_connection()
        try:
            with pytest.raises((redis.ResponseError, redis.ConnectionError)) as refused:
                connection.send_packed_command([set_header(600_000_000), b"v" * BODY_BYTES])
                connection.read_response()
            if isinstance(refused.value, redis.ResponseError):
                assert "Protocol error: invalid bulk length" in str(refused.value)
        finally:
            connection.disconnect()
            r.connection_pool.release(connection)
    assert peak.growth_bytes() < PEAK_GROWTH_BYTES_MAX
    assert_nothing_stored(node)
    assert_still_serving(node)
