"""CONFIG, INFO, TIME, COMMAND*, FUNCTION FLUSH, LASTSAVE over redis-py."""

from __future__ import annotations

import re
import time

import pytest
import redis

from server_wire import call, text


def test_config_get_patterns(r):
    config = r.config_get("maxmemory*")
    assert config == {"maxmemory": "0", "maxmemory-policy": "noeviction"}
    assert r.config_get("save") == {"save": ""}
    assert r.config_get("appendonly") == {"appendonly": "no"}
    assert set(r.config_get("proto-*")) == {"proto-max-bulk-len", "proto-max-multibulk-len", "proto-inline-max-size"}
    assert r.config_get("no-such-thing") == {}
    both = call(r, "CONFIG", "GET", "port", "bind")
    if isinstance(both, list):
        both = dict(zip(both[::2], both[1::2]))
    assert set(both) == {b"port", b"bind"}


def test_config_set_and_apply(kvorum_node):
    with kvorum_node.client() as r:
        try:
            assert r.config_set("maxmemory", "100mb") is True
            assert r.config_get("maxmemory") == {"maxmemory": str(100 * 1024 * 1024)}
            assert call(r, "CONFIG", "SET", "maxmemory-policy", "allkeys-lru", "timeout", "0") in (b"OK", "OK")
            assert r.config_get("maxmemory-policy") == {"maxmemory-policy": "allkeys-lru"}
            assert "maxmemory_policy:allkeys-lru" in text(call(r, "INFO", "memory"))
        finally:
            r.config_set("maxmemory", "0")
            r.config_set("maxmemory-policy", "noeviction")


@pytest.mark.parametrize("args, message", [
    (("nope", "1"), "Unknown option or number of arguments for CONFIG SET - 'nope'"),
    (("maxmemory", "lots"), "CONFIG SET failed (possibly related to argument 'maxmemory') - argument must be a memory value"),
    (("maxmemory-policy", "sometimes"), "argument(s) must be one of the following"),
    (("port", "1234"), "can't set immutable config"),
    (("timeout", "1", "timeout", "2"), "duplicate parameter"),
    (("timeout", "1", "hz"), "wrong number of arguments for 'config|set' command"),
])
def test_config_set_errors(r, args, message):
    with pytest.raises(redis.ResponseError) as err:
        call(r, "CONFIG", "SET", *args)
    assert message in str(err.value)


def test_config_set_is_all_or_nothing(r):
    with pytest.raises(redis.ResponseError):
        call(r, "CONFIG", "SET", "timeout", "5", "maxmemory", "lots")
    assert r.config_get("timeout") == {"timeout": "0"}


def test_config_resetstat(r):
    r.get("miss")
    assert r.config_resetstat() is True
    assert r.info("stats")["keyspace_misses"] == 0


def test_info_sections(r):
    info = r.info()
    assert info["redis_version"] == "7.4.0"
    assert info["redis_mode"] == "standalone"
    assert info["role"] == "master"
    assert info["connected_clients"] >= 1
    assert "used_memory" in info and "used_cpu_user" in info and "kvorum_version" in info
    r.set("k", "v")
    assert r.info("keyspace")["db0"]["keys"] == 1
    only = text(call(r, "INFO", "clients"))
    assert only.startswith("# Clients\r\n") and "# Server" not in only
    assert "# Kvorum" in text(call(r, "INFO", "everything"))
    assert text(call(r, "INFO", "nosuchsection")) == ""
    both = text(call(r, "INFO", "server", "stats"))
    assert "# Server" in both and "# Stats" in both and "# Memory" not in both


def test_info_stats_count(r):
    r.config_resetstat()
    r.get("missing")
    r.set("k", "v")
    r.get("k")
    stats = r.info("stats")
    assert stats["keyspace_hits"] == 1 and stats["keyspace_misses"] == 1
    assert stats["total_commands_processed"] >= 3


def test_time(r):
    seconds, micros = r.time()
    assert abs(seconds - time.time()) < 5
    assert 0 <= micros < 1_000_000


def test_function_flush_and_lastsave(r):
    assert call(r, "FUNCTION", "FLUSH") in (b"OK", "OK")
    assert call(r, "FUNCTION", "FLUSH", "SYNC") in (b"OK", "OK")
    assert isinstance(r.lastsave(), object)


def test_command_count_and_list(r):
    count = r.command_count()
    names = [text(n) for n in r.command_list()]
    assert count >= 60
    for name in ("get", "set", "hset", "multi", "client", "config|get", "command|info", "ping"):
        assert name in names
    assert [text(n) for n in r.command_list(pattern="client|*")] and all(
        text(n).startswith("client|") for n in r.command_list(pattern="client|*"))
    assert "get" in [text(n) for n in r.command_list(category="read")]


def test_command_info_shape(r):
    reply = call(r, "COMMAND", "INFO", "get", "mset", "nosuch")
    get, mset, missing = reply
    assert get[0] == b"get" and get[1] == 2
    assert {text(f) for f in get[2]} == {"readonly", "fast"}
    assert get[3:6] == [1, 1, 1]
    assert {text(c) for c in get[6]} >= {"@read", "@string", "@fast"}
    assert mset[3:6] == [1, -1, 2]
    assert missing is None
    client = call(r, "COMMAND", "INFO", "client")[0]
    assert b"client|id" in [sub[0] for sub in client[9]]


def test_command_parsed_by_redis_py(r):
    commands = r.command()
    assert commands["get"]["arity"] == 2
    assert commands["set"]["first_key_pos"] == 1


def test_command_docs(r):
    docs = call(r, "COMMAND", "DOCS", "get", "config")
    if isinstance(docs, list):
        docs = dict(zip(docs[::2], docs[1::2]))
    get = docs[b"get"]
    if isinstance(get, list):
        get = dict(zip(get[::2], get[1::2]))
    assert get[b"group"] == b"string" and get[b"summary"]
    assert b"config" in docs


def test_command_getkeys(r):
    assert call(r, "COMMAND", "GETKEYS", "SET", "k", "v") == [b"k"]
    assert call(r, "COMMAND", "GETKEYS", "MSET", "a", "1", "b", "2") == [b"a", b"b"]
    with pytest.raises(redis.ResponseError, match="Invalid command specified"):
        call(r, "COMMAND", "GETKEYS", "nosuch", "x")
    with pytest.raises(redis.ResponseError, match="Invalid number of arguments specified for command"):
        call(r, "COMMAND", "GETKEYS", "get")
    with pytest.raises(redis.ResponseError, match="The command has no key arguments"):
        call(r, "COMMAND", "GETKEYS", "ping")


def test_every_command_has_a_complete_entry(r):
    for entry in call(r, "COMMAND"):
        assert len(entry) == 10
        name, arity = text(entry[0]), entry[1]
        assert re.fullmatch(r"[a-z_-]+", name) and arity != 0


def test_memory_usage(r):
    r.set("k", "v" * 100)
    assert r.memory_usage("k") > 100
    assert r.memory_usage("missing") is None


def test_listpack_settings_round_trip(r):
    old = r.config_get("hash-max-ziplist-value")["hash-max-ziplist-value"]
    try:
        assert r.config_set("hash-max-ziplist-value", "10") is True
        assert r.config_get("hash-max-listpack-value") == {"hash-max-listpack-value": "10"}
    finally:
        r.config_set("hash-max-ziplist-value", old)


def test_oom_when_over_maxmemory(kvorum_node):
    with kvorum_node.client() as r:
        r.flushall()
        r.set("seed", "x" * 1000)
        try:
            r.config_set("maxmemory", "1")
            with pytest.raises(redis.ResponseError, match=re.escape("command not allowed when used memory > 'maxmemory'.")):
                r.set("more", "y")
            assert r.get("seed") == b"x" * 1000
            assert r.delete("seed") == 1
            r.execute_command("CLIENT", "NO-EVICT", "on")
            r.set("seed", "x" * 1000)
            assert r.set("anyway", "z") is True
        finally:
            r.execute_command("CLIENT", "NO-EVICT", "off")
            r.config_set("maxmemory", "0")


def test_eviction_under_allkeys_lru(node_factory):
    node = node_factory("--maxmemory", "200kb", "--maxmemory-policy", "allkeys-lru")
    with node.client() as r:
        for i in range(1000):
            r.set(f"key:{i}", "v" * 1000)
        info = r.info()
        assert info["evicted_keys"] > 0
        assert info["used_memory"] <= 200 * 1024 + 2000
        assert r.dbsize() < 1000


def test_active_expiry_and_idle_timeout(node_factory):
    node = node_factory()
    with node.client() as r:
        for i in range(50):
            r.set(f"ttl:{i}", "v", px=50)
        time.sleep(0.6)
        assert r.info("stats")["expired_keys"] == 50
        assert r.dbsize() == 0
        r.config_set("timeout", "1")
        idle = node.connect()
        idle.sendall(b"PING\r\n")
        assert idle.recv(100) == b"+PONG\r\n"
        idle.settimeout(5)
        assert idle.recv(100) == b""
        idle.close()
        r.config_set("timeout", "0")
