"""LEASEGET / LEASESET against a real node, in RESP3 and RESP2, and the lease table alone."""

from __future__ import annotations

import time

import pytest
import redis

from server_wire import call as cmd
from kvorum.server.leases import LeaseTable
from kvorum.store import Keyspace

OK = (b"OK", "OK")


def lease(r, key, *options):
    reply = cmd(r, "LEASEGET", key, *options)
    assert reply[0] == b"LEASE", reply
    return reply[1]


def test_hit_returns_value_and_version(r):
    r.set("k", "v")
    version = cmd(r, "VERSION", "k")[0]
    assert cmd(r, "LEASEGET", "k") == [b"HIT", b"v", version]


def test_one_lease_per_miss_the_others_wait(r, kvorum_node):
    other = kvorum_node.client(protocol=2)
    token = lease(r, "k")
    assert isinstance(token, int)
    assert cmd(r, "LEASEGET", "k") == [b"WAIT", None]
    assert cmd(other, "LEASEGET", "k", "STALE", 1000) == [b"WAIT", None]
    assert cmd(r, "LEASESET", "k", "from-db", token) in OK
    assert r.get("k") == b"from-db"
    assert cmd(other, "LEASEGET", "k")[:2] == [b"HIT", b"from-db"]
    other.close()


def test_a_token_is_used_once(r):
    token = lease(r, "k")
    assert cmd(r, "LEASESET", "k", "a", token, "EX", 100) in OK
    assert 0 < r.ttl("k") <= 100
    r.delete("k")
    assert cmd(r, "LEASESET", "k", "b", token) is None
    assert r.get("k") is None


@pytest.mark.parametrize("touch", [
    lambda r: r.set("k", "writer"),
    lambda r: r.delete("k"),
    lambda r: r.flushall(),
    lambda r: cmd(r, "SET", "k", "row", "IFNEWER", 3),
])
def test_any_write_or_delete_voids_the_lease(r, touch):
    r.set("k", "old")
    r.delete("k")
    token = lease(r, "k")
    touch(r)
    before = cmd(r, "VGET", "k")
    assert cmd(r, "LEASESET", "k", "stale-from-db", token) is None
    assert cmd(r, "VGET", "k") == before
    # The voided lease is gone: the next miss gets a new one.
    r.delete("k")
    assert lease(r, "k") != token


def test_the_reader_writer_race_cannot_leave_a_stale_value(r):
    # Reader misses and takes a lease, then reads the database (old row).
    token = lease(r, "user:1")
    row_read_by_reader = "name=old"
    # Writer updates the database and deletes the cache entry.
    r.delete("user:1")
    # The reader's set of the old row is refused.
    assert cmd(r, "LEASESET", "user:1", row_read_by_reader, token) is None
    assert r.get("user:1") is None


def test_expiry_of_the_key_voids_the_lease(r):
    token = lease(r, "k")
    r.set("k", "short", px=30)
    time.sleep(0.06)
    assert r.get("k") is None
    assert cmd(r, "LEASESET", "k", "late", token) is None


def test_lease_expires(r):
    token = lease(r, "k", "LEASE", 30)
    assert cmd(r, "LEASEGET", "k") == [b"WAIT", None]
    time.sleep(0.06)
    assert cmd(r, "LEASESET", "k", "late", token) is None
    assert r.get("k") is None
    assert lease(r, "k") != token


def test_bad_input_changes_nothing(r):
    r.hset("h", "f", "v")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        cmd(r, "LEASEGET", "h")
    token = lease(r, "k")
    bad_calls = [
        ("LEASEGET", "x", "LEASE", "soon"),
        ("LEASEGET", "x", "LEASE", 0),
        ("LEASEGET", "x", "LEASE", -5),
        ("LEASEGET", "x", "STALE", -1),
        ("LEASEGET", "x", "LEASE"),
        ("LEASEGET", "x", "BOGUS", 1),
        ("LEASESET", "k", "v", "not-a-token"),
        ("LEASESET", "k", "v", "1.5"),
        ("LEASESET", "k", "v", token, "EX", 0),
        ("LEASESET", "k", "v", token, "NX"),
        ("LEASESET", "k", "v", token, "GET"),
        ("LEASESET", "k", "v", token, "IFNEWER", 1),
        ("LEASESET", "k", "v"),
    ]
    for args in bad_calls:
        with pytest.raises(redis.ResponseError):
            cmd(r, *args)
    # Nothing was written, no lease was taken on "x", and the token still works.
    assert r.exists("k", "x") == 0
    assert lease(r, "x")
    assert cmd(r, "LEASESET", "k", "v", token + 1) is None
    assert cmd(r, "LEASESET", "other", "v", token) is None
    assert cmd(r, "LEASESET", "k", "v", token) in OK


def test_commands_are_in_the_table(r):
    info = cmd(r, "COMMAND", "INFO", "LEASEGET", "LEASESET")
    assert all(doc is not None for doc in info)
    assert cmd(r, "COMMAND", "GETKEYS", "LEASESET", "k", "v", "1") == [b"k"]


# The lease table alone.


def test_table_is_bounded_and_drops_the_oldest():
    db = Keyspace()
    table = LeaseTable(db, token_base=100, leases_max=2)
    a = table.acquire(b"a", 0, 1000)
    b = table.acquire(b"b", 0, 1000)
    c = table.acquire(b"c", 0, 1000)
    assert len({a, b, c}) == 3 and len(table) == 2
    assert not table.consume(b"a", a, 0)
    assert table.consume(b"b", b, 0) and table.consume(b"c", c, 0)


def test_table_listens_only_while_leases_are_outstanding():
    db = Keyspace()
    table = LeaseTable(db, token_base=0)
    assert db.on_key_modified is None
    token = table.acquire(b"k", 0, 1000)
    assert db.has_key_listener(table.void)
    db.set(b"other", b"v", 0)
    assert len(table) == 1
    db.set(b"k", b"v", 0)
    assert len(table) == 0 and db.on_key_modified is None
    assert not table.consume(b"k", token, 0)


def test_tokens_wrap_below_the_bound():
    from kvorum.server.leases import TOKEN_MAX
    table = LeaseTable(Keyspace(), token_base=TOKEN_MAX - 2)
    assert table.acquire(b"a", 0, 10) == TOKEN_MAX - 1
    assert table.acquire(b"b", 0, 10) == 1
