"""VGET, VERSION, VSET, EXTVERSION and SET ... IFNEWER against a real node, in RESP3 and RESP2."""

from __future__ import annotations

import pytest
import redis

from server_wire import call as cmd

OK = (b"OK", "OK")


def test_vget_missing_is_nil(r):
    assert cmd(r, "VGET", "nope") is None
    assert cmd(r, "VGET", "nope", "IFNOTVERSION", 5) is None


def test_vget_returns_version_and_value_then_not_modified(r):
    r.set("k", "v1")
    version, value = cmd(r, "VGET", "k")
    assert value == b"v1" and version > 0
    assert cmd(r, "VGET", "k", "IFNOTVERSION", version) == [version]
    assert cmd(r, "VGET", "k", "ifnotversion", version - 1) == [version, b"v1"]
    r.set("k", "v2")
    newer, value = cmd(r, "VGET", "k", "IFNOTVERSION", version)
    assert newer > version and value == b"v2"


def test_versions_only_grow_across_delete_and_recreate(r):
    r.set("k", "a")
    first = cmd(r, "VERSION", "k")[0]
    r.delete("k")
    assert cmd(r, "VERSION", "k") == [0]
    r.set("k", "a")
    assert cmd(r, "VERSION", "k")[0] > first


def test_version_of_many_keys_and_any_type(r):
    r.set("s", "1")
    r.hset("h", "f", "v")
    s, h, missing = cmd(r, "VERSION", "s", "h", "missing")
    assert s > 0 and h > s and missing == 0
    r.expire("s", 100)
    assert cmd(r, "VERSION", "s")[0] > h


def test_vget_wrong_type_and_bad_arguments(r):
    r.hset("h", "f", "v")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        cmd(r, "VGET", "h")
    r.set("k", "v")
    with pytest.raises(redis.ResponseError, match="not an integer"):
        cmd(r, "VGET", "k", "IFNOTVERSION", "abc")
    with pytest.raises(redis.ResponseError, match="syntax error"):
        cmd(r, "VGET", "k", "IFNOTVERSION")
    with pytest.raises(redis.ResponseError, match="syntax error"):
        cmd(r, "VGET", "k", "BOGUS", "1")
    with pytest.raises(redis.ResponseError, match="wrong number of arguments"):
        cmd(r, "VERSION")


def test_set_ifnewer_strictly_newer_wins(r):
    assert cmd(r, "SET", "k", "row@5", "IFNEWER", 5) in OK
    assert cmd(r, "EXTVERSION", "k") == 5
    version = cmd(r, "VERSION", "k")[0]
    # Older and equal external versions are refused and change nothing.
    assert cmd(r, "SET", "k", "row@4", "IFNEWER", 4) is None
    assert cmd(r, "SET", "k", "row@5-retry", "IFNEWER", 5) is None
    assert r.get("k") == b"row@5"
    assert cmd(r, "VERSION", "k")[0] == version
    assert cmd(r, "SET", "k", "row@6", "IFNEWER", 6) in OK
    assert r.get("k") == b"row@6" and cmd(r, "EXTVERSION", "k") == 6


def test_set_ifnewer_with_other_options(r):
    assert cmd(r, "SET", "k", "a", "IFNEWER", 1, "EX", 100, "NX") in OK
    assert 0 < r.ttl("k") <= 100
    assert cmd(r, "SET", "k", "b", "NX", "IFNEWER", 2) is None
    assert cmd(r, "SET", "k", "b", "XX", "IFNEWER", 2, "KEEPTTL", "GET") == b"a"
    assert r.get("k") == b"b" and 0 < r.ttl("k") <= 100
    # With GET the reply is the old value whether or not the SET happened, as for NX/XX.
    assert cmd(r, "SET", "k", "c", "IFNEWER", 2, "GET") == b"b"
    assert r.get("k") == b"b"
    assert cmd(r, "SET", "fresh", "x", "GET", "IFNEWER", 1) is None
    assert r.get("fresh") == b"x"
    assert cmd(r, "SET", "k", "d", "PX", 100000, "IFNEWER", -5) is None


def test_ext_version_cleared_by_plain_writes_and_delete(r):
    cmd(r, "SET", "k", "a", "IFNEWER", 10)
    r.set("k", "plain")
    assert cmd(r, "EXTVERSION", "k") is None
    # With no stored external version any IFNEWER write is accepted.
    assert cmd(r, "SET", "k", "b", "IFNEWER", 1) in OK
    r.append("k", "!")
    assert cmd(r, "EXTVERSION", "k") is None
    cmd(r, "SET", "k", "c", "IFNEWER", 10)
    r.expire("k", 100)
    assert cmd(r, "EXTVERSION", "k") == 10
    r.delete("k")
    assert cmd(r, "EXTVERSION", "k") is None
    assert cmd(r, "SET", "k", "d", "IFNEWER", 3) in OK
    assert cmd(r, "EXTVERSION", "missing") is None


def test_set_ifnewer_bad_input_changes_nothing(r):
    cmd(r, "SET", "k", "a", "IFNEWER", 10)
    version = cmd(r, "VERSION", "k")[0]
    for args in (("IFNEWER", "ten"), ("IFNEWER", "1.5"), ("IFNEWER", " 11"), ("IFNEWER", "99999999999999999999"),
                 ("IFNEWER",), ("IFNEWER", 11, "IFNEWER", 12), ("IFNEWER", 11, "EX", "x")):
        with pytest.raises(redis.ResponseError):
            cmd(r, "SET", "k", "b", *args)
    assert r.get("k") == b"a" and cmd(r, "EXTVERSION", "k") == 10
    assert cmd(r, "VERSION", "k")[0] == version


def test_vset_returns_new_version_or_nil(r):
    (first,) = cmd(r, "VSET", "k", "a")
    assert cmd(r, "VGET", "k") == [first, b"a"]
    (second,) = cmd(r, "VSET", "k", "b", "IFNEWER", 7, "PX", 100000)
    assert second > first and 0 < r.pttl("k") <= 100000
    assert cmd(r, "EXTVERSION", "k") == 7
    assert cmd(r, "VSET", "k", "c", "IFNEWER", 7) is None
    assert cmd(r, "VSET", "k", "c", "IFNEWER", 6, "EX", 5) is None
    assert cmd(r, "VGET", "k") == [second, b"b"]
    (third,) = cmd(r, "VSET", "k", "c", "EX", 50)
    assert third > second and cmd(r, "EXTVERSION", "k") is None


def test_vset_bad_input_changes_nothing(r):
    (version,) = cmd(r, "VSET", "k", "a", "IFNEWER", 3)
    for args in (("GET",), ("IFNEWER", "x"), ("EX", "0"), ("EX", "soon"), ("BOGUS",), ("EX", 1, "PX", 1)):
        with pytest.raises(redis.ResponseError):
            cmd(r, "VSET", "k", "b", *args)
    with pytest.raises(redis.ResponseError, match="wrong number of arguments"):
        cmd(r, "VSET", "k")
    assert cmd(r, "VGET", "k") == [version, b"a"]
    assert cmd(r, "EXTVERSION", "k") == 3


def test_vset_over_a_hash_replaces_it(r):
    r.hset("h", "f", "v")
    (version,) = cmd(r, "VSET", "h", "s", "IFNEWER", 1)
    assert cmd(r, "VGET", "h") == [version, b"s"]


def test_commands_are_in_the_table(r):
    docs = cmd(r, "COMMAND", "INFO", "VGET", "VERSION", "VSET", "EXTVERSION")
    assert len(docs) == 4 and all(doc is not None for doc in docs)
    assert cmd(r, "COMMAND", "GETKEYS", "VERSION", "a", "b") == [b"a", b"b"]
    assert cmd(r, "COMMAND", "GETKEYS", "SET", "k", "v", "IFNEWER", "3") == [b"k"]
