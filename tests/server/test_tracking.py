"""CLIENT TRACKING (client-side caching), its RESP2 redirection over pub/sub, and redis-py's own cache.

Pushes are read from raw sockets so that the tests see exactly what arrives
and in which order.
"""

from __future__ import annotations

import socket
import time

import hiredis
import pytest
import redis
from redis.cache import CacheConfig

import kvorum.commands  # noqa: F401  (registers every command in the table)
from kvorum.commands.table import TABLE
from kvorum.protocol.encoder import encode
from kvorum.protocol.values import Push
from kvorum.commands.tracking import ClientTracking
from kvorum.server.tracking import Tracking
from kvorum.store import Keyspace

INVALIDATE_FLUSH = b">2\r\n$10\r\ninvalidate\r\n_\r\n"
QUIET_S = 0.15


class Conn:
    """A raw connection: send commands, read replies and pushes in arrival order."""

    def __init__(self, node, protocol: int):
        self.sock = node.connect()
        self.reader = hiredis.Reader()
        self.raw = b""
        self.protocol = protocol
        if protocol == 3:
            self.call("HELLO", "3")
        self.id = self.call("CLIENT", "ID")

    def send(self, *args) -> None:
        out = b""
        for command in args:
            parts = [a if isinstance(a, bytes) else str(a).encode() for a in command]
            out += b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
        self.sock.sendall(out)

    def read(self, timeout: float = 5.0):
        self.sock.settimeout(timeout)
        while True:
            value = self.reader.gets()
            if value is not False:
                return value
            data = self.sock.recv(65536)
            assert data, "connection closed"
            self.raw += data
            self.reader.feed(data)

    def call(self, *args):
        self.send(args)
        return self.read()

    def quiet(self) -> bool:
        """Nothing more arrives within QUIET_S."""
        self.sock.settimeout(QUIET_S)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            return self.reader.gets() is False
        self.raw += data
        self.reader.feed(data)
        return False

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def conns(kvorum_node):
    opened = []

    def open_(protocol: int = 3) -> Conn:
        conn = Conn(kvorum_node, protocol)
        opened.append(conn)
        return conn

    writer = kvorum_node.client(protocol=3)
    writer.flushall()
    yield open_, writer
    writer.close()
    for conn in opened:
        conn.close()


def test_default_mode_sends_one_invalidation_per_read(conns):
    open_, writer = conns
    a = open_()
    writer.set("k", "v1")
    assert a.call("CLIENT", "TRACKING", "ON") == b"OK"
    assert a.call("GET", "k") == b"v1"
    writer.set("k", "v2")
    assert a.read() == [b"invalidate", [b"k"]]
    assert b">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n" in a.raw
    # Not read again: the key is no longer tracked for this client.
    writer.set("k", "v3")
    assert a.quiet()
    # Keys never read are not sent.
    writer.set("other", "x")
    assert a.quiet()


def test_invalidation_is_sent_before_the_write_is_acknowledged(conns):
    open_, writer = conns
    a = open_()
    a.call("CLIENT", "TRACKING", "ON")
    for i in range(20):
        a.call("GET", "k")
        writer.set("k", i)
        # Already in a's socket when the writer got its reply: no waiting needed.
        assert a.read(timeout=0.05) == [b"invalidate", [b"k"]]


def test_own_invalidations_in_one_batch_come_together_after_the_replies(conns):
    open_, writer = conns
    a = open_()
    a.call("CLIENT", "TRACKING", "ON")
    a.send(("MGET", "x", "y"), ("MSET", "x", "1", "y", "2"), ("FLUSHALL",), ("GET", "x"))
    assert [a.read() for _ in range(5)] == [[None, None], b"OK", b"OK", None, [b"invalidate", None]]


def test_every_kind_of_change_invalidates(conns):
    open_, writer = conns
    a = open_()
    writer.set("s", "1")
    writer.hset("h", "f", "v")
    a.call("CLIENT", "TRACKING", "ON")
    a.send(("GET", "s"), ("HGET", "h", "f"), ("EXISTS", "gone"), ("VGET", "s"))
    assert [a.read() for _ in range(4)][:3] == [b"1", b"v", 0]
    writer.incr("s")
    assert a.read() == [b"invalidate", [b"s"]]
    writer.hdel("h", "f")
    assert a.read() == [b"invalidate", [b"h"]]
    writer.execute_command("SET", "gone", "now", "IFNEWER", 1)
    assert a.read() == [b"invalidate", [b"gone"]]


def test_expiry_invalidates(conns):
    open_, writer = conns
    a = open_()
    writer.set("k", "v", px=50)
    a.call("CLIENT", "TRACKING", "ON")
    assert a.call("GET", "k") == b"v"
    # The active expiry cycle removes the key without anyone touching it.
    assert a.read(timeout=5) == [b"invalidate", [b"k"]]


def test_flush_sends_invalidate_nil(conns):
    open_, writer = conns
    a = open_()
    b = open_()
    a.call("CLIENT", "TRACKING", "ON")
    b.call("CLIENT", "TRACKING", "ON", "BCAST")
    writer.flushall()
    assert a.read() == [b"invalidate", None]
    assert b.read() == [b"invalidate", None]
    assert INVALIDATE_FLUSH in a.raw


def test_own_writes_are_invalidated_after_their_replies(conns):
    open_, writer = conns
    a = open_()
    writer.set("k", "old")
    a.call("CLIENT", "TRACKING", "ON")
    # One batch: the invalidation must come after the reply that carried the old value.
    a.send(("GET", "k"), ("SET", "k", "new"), ("GET", "k"))
    assert [a.read() for _ in range(4)] == [b"old", b"OK", b"new", [b"invalidate", [b"k"]]]


def test_noloop_skips_own_writes(conns):
    open_, writer = conns
    a = open_()
    a.call("CLIENT", "TRACKING", "ON", "NOLOOP")
    a.call("GET", "k")
    a.call("SET", "k", "mine")
    assert a.quiet()
    a.call("GET", "k")
    writer.set("k", "theirs")
    assert a.read() == [b"invalidate", [b"k"]]


def test_bcast_with_prefixes(conns):
    open_, writer = conns
    a = open_()
    assert a.call("CLIENT", "TRACKING", "ON", "BCAST", "PREFIX", "user:", "PREFIX", "cfg:") == b"OK"
    writer.set("user:1", "x")
    assert a.read() == [b"invalidate", [b"user:1"]]
    writer.set("order:1", "x")
    writer.set("cfg:a", "y")
    assert a.read() == [b"invalidate", [b"cfg:a"]]
    everything = open_()
    everything.call("CLIENT", "TRACKING", "ON", "BCAST")
    writer.set("any", "z")
    assert everything.read() == [b"invalidate", [b"any"]]
    assert a.quiet()


def test_optin_tracks_only_after_caching_yes(conns):
    open_, writer = conns
    a = open_()
    a.call("CLIENT", "TRACKING", "ON", "OPTIN")
    a.call("GET", "k")
    writer.set("k", "1")
    assert a.quiet()
    assert a.call("CLIENT", "CACHING", "YES") == b"OK"
    a.call("GET", "k")
    a.call("GET", "other")
    writer.set("other", "1")
    writer.set("k", "2")
    assert a.read() == [b"invalidate", [b"k"]]
    assert a.quiet()


def test_optin_caching_covers_a_transaction(conns):
    open_, writer = conns
    a = open_()
    a.call("CLIENT", "TRACKING", "ON", "OPTIN")
    a.send(("CLIENT", "CACHING", "yes"), ("MULTI",), ("GET", "x"), ("GET", "y"), ("EXEC",))
    assert [a.read() for _ in range(5)][-1] == [None, None]
    writer.mset({"x": 1, "y": 2})
    assert [a.read(), a.read()] == [[b"invalidate", [b"x"]], [b"invalidate", [b"y"]]]


def test_optout_skips_after_caching_no(conns):
    open_, writer = conns
    a = open_()
    a.call("CLIENT", "TRACKING", "ON", "OPTOUT")
    a.call("CLIENT", "CACHING", "NO")
    a.call("GET", "skipped")
    a.call("GET", "tracked")
    writer.set("skipped", "1")
    writer.set("tracked", "1")
    assert a.read() == [b"invalidate", [b"tracked"]]
    assert a.quiet()


def test_resp2_redirect_to_a_subscribed_connection(conns):
    open_, writer = conns
    listener = open_(protocol=2)
    assert listener.call("SUBSCRIBE", "__redis__:invalidate") == [b"subscribe", b"__redis__:invalidate", 1]
    a = open_(protocol=2)
    assert a.call("CLIENT", "TRACKING", "ON", "REDIRECT", listener.id) == b"OK"
    assert a.call("CLIENT", "GETREDIR") == listener.id
    a.call("GET", "k")
    writer.set("k", "v")
    assert listener.read() == [b"message", b"__redis__:invalidate", [b"k"]]
    writer.flushall()
    assert listener.read() == [b"message", b"__redis__:invalidate", None]
    assert a.quiet()


def test_resp3_redirect_and_broken_redirect(conns):
    open_, writer = conns
    target = open_()
    a = open_()
    a.call("CLIENT", "TRACKING", "ON", "REDIRECT", target.id)
    a.call("GET", "k")
    writer.set("k", "v")
    assert target.read() == [b"invalidate", [b"k"]]
    target.close()
    time.sleep(0.1)
    a.call("GET", "k")
    writer.set("k", "w")
    assert a.read() == [b"tracking-redir-broken", target.id]
    info = a.call("CLIENT", "TRACKINGINFO")
    assert b"broken_redirect" in info[b"flags"]
    assert b"flags=tR" in a.call("CLIENT", "INFO")


def test_tracking_info_getredir_and_client_list(conns):
    open_, writer = conns
    a = open_()
    assert a.call("CLIENT", "GETREDIR") == -1
    assert a.call("CLIENT", "TRACKINGINFO") == {b"flags": [b"off"], b"redirect": -1, b"prefixes": []}
    a.call("CLIENT", "TRACKING", "ON", "BCAST", "PREFIX", "a", "NOLOOP")
    assert a.call("CLIENT", "GETREDIR") == 0
    assert a.call("CLIENT", "TRACKINGINFO") == {
        b"flags": [b"on", b"bcast", b"noloop"], b"redirect": 0, b"prefixes": [b"a"]}
    line = a.call("CLIENT", "INFO")
    assert b"flags=tB" in line and b"redir=0" in line
    assert a.call("CLIENT", "TRACKING", "OFF") == b"OK"
    assert a.call("CLIENT", "GETREDIR") == -1
    writer.set("a1", "x")
    assert a.quiet()


@pytest.mark.parametrize("args, error", [
    (("MAYBE",), "syntax error"),
    (("ON", "BOGUS"), "syntax error"),
    (("ON", "REDIRECT"), "syntax error"),
    (("ON", "REDIRECT", "abc"), "not an integer"),
    (("ON", "REDIRECT", 999999), "does not exist"),
    (("ON", "OPTIN", "OPTOUT"), "both OPTIN and OPTOUT"),
    (("ON", "BCAST", "OPTIN"), "not compatible with BCAST"),
    (("ON", "PREFIX", "a"), "requires BCAST"),
    (("ON", "BCAST", "PREFIX", "ab", "PREFIX", "a"), "overlaps"),
])
def test_bad_tracking_options_change_nothing(conns, args, error):
    open_, writer = conns
    a = open_()
    with pytest.raises(redis.ResponseError, match=error):
        raise_if_error(a.call("CLIENT", "TRACKING", *args))
    assert a.call("CLIENT", "TRACKINGINFO")[b"flags"] == [b"off"]
    writer.set("k", "v")
    assert a.quiet()


def test_mode_switches_and_caching_misuse_are_refused(conns):
    open_, writer = conns
    a = open_()
    with pytest.raises(redis.ResponseError, match="only when the client is in tracking mode"):
        raise_if_error(a.call("CLIENT", "CACHING", "yes"))
    a.call("CLIENT", "TRACKING", "ON", "BCAST", "PREFIX", "a")
    with pytest.raises(redis.ResponseError, match="switch BCAST"):
        raise_if_error(a.call("CLIENT", "TRACKING", "ON"))
    with pytest.raises(redis.ResponseError, match="overlaps with an existing prefix"):
        raise_if_error(a.call("CLIENT", "TRACKING", "ON", "BCAST", "PREFIX", "ab"))
    assert a.call("CLIENT", "TRACKINGINFO")[b"prefixes"] == [b"a"]
    a.call("CLIENT", "TRACKING", "OFF")
    a.call("CLIENT", "TRACKING", "ON", "OPTIN")
    with pytest.raises(redis.ResponseError, match="CACHING NO is only valid"):
        raise_if_error(a.call("CLIENT", "CACHING", "no"))
    with pytest.raises(redis.ResponseError, match="syntax error"):
        raise_if_error(a.call("CLIENT", "CACHING", "maybe"))
    with pytest.raises(redis.ResponseError, match="switch OPTIN/OPTOUT"):
        raise_if_error(a.call("CLIENT", "TRACKING", "ON", "OPTOUT"))


def test_disconnect_and_reset_end_tracking(conns, kvorum_node):
    open_, writer = conns
    a = open_()
    a.call("CLIENT", "TRACKING", "ON")
    a.call("GET", "k")
    a.close()
    b = open_()
    b.call("CLIENT", "TRACKING", "ON", "BCAST")
    assert b.call("RESET") == b"RESET"
    # RESET also goes back to RESP2: the map is a flat array.
    assert b.call("CLIENT", "TRACKINGINFO") == [b"flags", [b"off"], b"redirect", -1, b"prefixes", []]
    writer.set("k", "v")
    assert b.quiet()
    listing = writer.client_list()
    assert all("t" not in c["flags"] for c in listing)


def raise_if_error(reply):
    if isinstance(reply, hiredis.ReplyError):
        raise redis.ResponseError(str(reply))
    return reply


def test_pubsub_basics(kvorum_node):
    sub = kvorum_node.client(protocol=3).pubsub()
    sub.subscribe("news")
    sub.psubscribe("n*")
    assert sub.get_message(timeout=2)["type"] == "subscribe"
    assert sub.get_message(timeout=2)["type"] == "psubscribe"
    pub = kvorum_node.client(protocol=2)
    assert pub.publish("news", "hello") == 2
    messages = [sub.get_message(timeout=2) for _ in range(2)]
    assert {(m["type"], m["data"]) for m in messages} == {("message", b"hello"), ("pmessage", b"hello")}
    assert pub.publish("other", "x") == 0
    sub.unsubscribe("news")
    sub.punsubscribe()
    assert sub.get_message(timeout=2)["type"] == "unsubscribe"
    assert sub.get_message(timeout=2)["type"] == "punsubscribe"
    assert pub.publish("news", "again") == 0
    sub.close()
    pub.close()


def test_redis_py_client_side_cache(kvorum_node):
    cached = redis.Redis(host=kvorum_node.host, port=kvorum_node.port, protocol=3, cache_config=CacheConfig())
    other = kvorum_node.client(protocol=3)
    other.set("csc", "v1")
    assert cached.get("csc") == b"v1"
    cache = cached.get_cache()
    assert cache is not None and cache.size == 1
    # A cached read: served from memory, so a change behind the server's back is not seen...
    assert cached.get("csc") == b"v1"
    # ...but a write from another client invalidates it and the next read sees the new value.
    other.set("csc", "v2")
    deadline = time.monotonic() + 5
    while cached.get("csc") != b"v2":
        assert time.monotonic() < deadline, "invalidation never arrived"
        time.sleep(0.01)
    assert cached.get("csc") == b"v2"
    other.flushall()
    deadline = time.monotonic() + 5
    while cached.get("csc") is not None:
        assert time.monotonic() < deadline, "flush invalidation never arrived"
        time.sleep(0.01)
    cached.close()
    other.close()


# The tracking table alone, with stand-ins for the node and its connections.


class FakeClient:
    def __init__(self, client_id: int):
        self.id = client_id
        self.resp3 = True
        self.tracking = None
        self.multi = None
        self.channels: set[bytes] = set()
        self.patterns: set[bytes] = set()
        self.out: list[bytes] = []

    def write_push(self, data: bytes) -> None:
        self.out.append(data)


class FakeServer:
    def __init__(self):
        self.db = Keyspace()
        self.clients: dict[int, FakeClient] = {}

    def connect(self, client_id: int) -> FakeClient:
        client = self.clients[client_id] = FakeClient(client_id)
        return client


def invalidation(*keys: bytes) -> bytes:
    return encode(Push(["invalidate", list(keys)]), True)


def test_table_is_bounded_and_evicting_a_key_invalidates_it():
    server = FakeServer()
    tracking = Tracking(server, table_keys_max=2)
    a = server.connect(1)
    tracking.enable(a, ClientTracking(0, False, False, False, False, []))
    get = TABLE["get"]
    for key in (b"k1", b"k2", b"k3"):
        tracking.remember(a, get, [b"GET", key])
    assert list(tracking.table) == [b"k2", b"k3"]
    assert a.out == [invalidation(b"k1")]
    server.db.set(b"k3", b"v", 0)
    assert a.out[-1] == invalidation(b"k3") and list(tracking.table) == [b"k2"]


def test_listener_is_installed_only_while_someone_tracks():
    server = FakeServer()
    tracking = Tracking(server)
    a, b = server.connect(1), server.connect(2)
    assert server.db.on_key_modified is None
    tracking.enable(a, ClientTracking(0, True, False, False, False, [b"x"]))
    tracking.enable(b, ClientTracking(0, False, False, False, True, []))
    assert server.db.has_key_listener(tracking.key_modified)
    server.db.set(b"x1", b"v", 0)
    assert a.out == [invalidation(b"x1")]
    tracking.disable(a)
    assert tracking.prefixes == {}
    tracking.remember(b, TABLE["get"], [b"GET", b"k"])
    tracking.disable(b)
    tracking.disable(b)
    assert server.db.on_key_modified is None and tracking.table == {}
    server.db.set(b"x2", b"v", 0)
    assert a.out == [invalidation(b"x1")]


def test_noloop_skips_the_writer_but_not_other_trackers():
    server = FakeServer()
    tracking = Tracking(server)
    a, b = server.connect(1), server.connect(2)
    tracking.enable(a, ClientTracking(0, True, False, False, True, []))
    tracking.enable(b, ClientTracking(0, True, False, False, False, []))
    tracking.writer = a
    server.db.set(b"k", b"v", 0)
    tracking.writer = None
    assert a.out == [] and b.out == [invalidation(b"k")]


def test_info_counts_trackers_and_subscriptions(conns):
    open_, writer = conns
    a = open_()
    b = open_()
    listener = open_(protocol=2)
    a.call("CLIENT", "TRACKING", "ON")
    a.call("MGET", "k1", "k2")
    b.call("CLIENT", "TRACKING", "ON", "BCAST", "PREFIX", "p")
    listener.call("SUBSCRIBE", "__redis__:invalidate")
    listener.call("PSUBSCRIBE", "news.*")
    info = writer.info()
    assert info["tracking_clients"] == 2
    assert info["tracking_total_keys"] == 2
    assert info["tracking_total_prefixes"] == 1
    assert info["pubsub_channels"] == 1 and info["pubsub_patterns"] == 1
