"""Scripts on a replicated 3-node cluster: run once on the leader, replicated as their effects
(docs/scripting.md#consistency-on-a-cluster)."""

from __future__ import annotations

import threading
import time

import pytest
import redis
from redis.exceptions import MovedError

from kvorum.cluster.slots import key_slot


def readonly_client(node):
    r = node.client(single_connection_client=True)
    r.execute_command("READONLY")
    return r


def keyspace(node) -> dict:
    """Every key of a node's local keyspace with its type, value, version and deadline."""
    r = readonly_client(node)
    out = {}
    for key in r.keys("*"):
        kind = r.type(key)
        value = r.hgetall(key) if kind == b"hash" else r.get(key)
        out[key] = (kind, value, r.execute_command("VERSION", key), r.pexpiretime(key))
    r.close()
    return out


def assert_replicas_equal(cluster) -> dict:
    leader = cluster.leader()
    cluster.wait_applied(int(leader.info()["raft_applied_index"]))
    spaces = [keyspace(node) for node in cluster.nodes]
    assert spaces[0] == spaces[1] == spaces[2]
    return spaces[0]


def test_script_effects_land_on_every_replica(cluster):
    leader = cluster.leader()
    r = leader.client()
    script = """
        redis.call('set', KEYS[1], ARGV[1])
        redis.call('incrby', KEYS[2], 5)
        redis.call('hset', KEYS[3], 'f', ARGV[1], 'g', 'x')
        redis.call('expire', KEYS[1], 100)
        redis.call('set', KEYS[4], 'gone', 'PX', 50000)
        redis.call('del', KEYS[4])
        return {redis.call('get', KEYS[1]), redis.call('get', KEYS[2])}
    """
    keys = ["{s}a", "{s}n", "{s}h", "{s}tmp"]
    assert r.eval(script, 4, *keys, "v1") == [b"v1", b"5"]
    assert r.eval(script, 4, *keys, "v2") == [b"v2", b"10"]
    space = assert_replicas_equal(cluster)
    assert space[b"{s}a"][1] == b"v2" and space[b"{s}a"][3] > 0
    assert space[b"{s}h"][1] == {b"f": b"v2", b"g": b"x"}
    assert b"{s}tmp" not in space


def test_time_and_random_do_not_make_replicas_diverge(cluster):
    r = cluster.leader().client()
    script = """
        local t = redis.call('time')
        math.randomseed(tonumber(t[2]))
        local n = math.random(1, 1000000000)
        redis.call('set', KEYS[1], t[1] .. '.' .. t[2] .. ':' .. n)
        redis.call('pexpire', KEYS[1], 60000 + n % 1000)
        redis.call('hset', KEYS[2], 'r' .. n, n)
        return n
    """
    values = {r.eval(script, 2, "{r}clock", "{r}rand") for _ in range(20)}
    assert len(values) > 1
    space = assert_replicas_equal(cluster)
    assert len(space[b"{r}rand"][1]) == len(values)


def test_undeclared_and_cross_slot_keys_are_refused(cluster):
    r = cluster.leader().client()
    with pytest.raises(redis.ResponseError, match="non local key"):
        r.eval("return redis.call('set', 'undeclared', 1)", 0)
    with pytest.raises(redis.ResponseError, match="non local key"):
        r.eval("return redis.call('get', 'undeclared')", 1, "declared")
    assert key_slot(b"a") != key_slot(b"b")
    with pytest.raises(redis.ResponseError, match="don.t hash to the same slot"):
        r.eval("return 1", 2, "a", "b")
    with pytest.raises(redis.ResponseError, match="undeclared keys"):
        r.eval("return redis.call('flushall')", 0)
    assert r.get("undeclared") is None


def test_a_failing_script_keeps_its_earlier_writes_everywhere(cluster):
    r = cluster.leader().client()
    with pytest.raises(redis.ResponseError, match="boom"):
        r.eval("redis.call('set', KEYS[1], 'kept'); error('boom')", 1, "f")
    assert r.get("f") == b"kept"
    assert assert_replicas_equal(cluster)[b"f"][1] == b"kept"


def test_follower_redirects_and_readonly_scripts_run_on_followers(cluster):
    leader = cluster.leader()
    leader.client().set("ro", "value")
    follower = next(n for n in cluster.nodes if n.id != leader.id)
    with pytest.raises(MovedError) as moved:
        follower.client().eval("return redis.call('get', KEYS[1])", 1, "ro")
    assert str(moved.value) == f"{key_slot(b'ro')} 127.0.0.1:{leader.port}"
    cluster.wait_applied(int(leader.info()["raft_applied_index"]))
    ro = readonly_client(follower)
    assert ro.eval_ro("return redis.call('get', KEYS[1])", 1, "ro") == b"value"
    with pytest.raises(redis.ResponseError, match="read-only scripts"):
        ro.eval_ro("return redis.call('set', KEYS[1], 'x')", 1, "ro")
    assert leader.client().eval_ro("return redis.call('get', KEYS[1])", 1, "ro") == b"value"


def test_concurrent_scripts_and_writes_are_atomic(cluster):
    """Increments by a script (read, then write what it read plus one) race with plain
    INCRs from other clients: a script whose key changed under it runs again, so no
    increment is lost."""
    leader = cluster.leader()
    script = "local v = tonumber(redis.call('get', KEYS[1]) or '0'); redis.call('set', KEYS[1], v + 1); return v + 1"
    rounds = 40
    errors = []

    def by_script():
        r = leader.client()
        for _ in range(rounds):
            try:
                r.eval(script, 1, "counter")
            except redis.ResponseError as exc:
                errors.append(exc)

    def by_incr():
        r = leader.client()
        for _ in range(rounds):
            r.incr("counter")

    threads = [threading.Thread(target=f) for f in (by_script, by_script, by_incr, by_incr)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert int(leader.client().get("counter")) == 4 * rounds
    assert_replicas_equal(cluster)


def test_scripts_are_refused_inside_multi(cluster):
    r = cluster.leader().client()
    with pytest.raises(redis.ResponseError):
        with r.pipeline() as p:
            p.eval("return 1", 0)
            p.execute()


def test_pipelined_write_after_a_script_applies_after_it(cluster):
    r = cluster.leader().client()
    with r.pipeline(transaction=False) as p:
        p.eval("redis.call('set', KEYS[1], 'script'); return 1", 1, "order")
        p.set("order", "after")
        p.eval("return redis.call('get', KEYS[1])", 1, "order")
        assert p.execute() == [1, True, b"after"]


def test_redis_py_lock_survives_a_leader_failover(cluster):
    rc = cluster.cluster_client()
    lock = rc.lock("resource", timeout=30)
    assert lock.acquire(blocking=False)
    token = lock.local.token
    old = cluster.leader()
    cluster.wait_applied(int(old.info()["raft_applied_index"]))
    old.kill()
    new = cluster.wait_leader(exclude=old.id)
    deadline = time.monotonic() + 20
    while True:
        try:
            assert new.client().get("resource") == token
            break
        except (redis.ResponseError, redis.ConnectionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    rc = cluster.cluster_client()
    lock2 = rc.lock("resource", timeout=30)
    lock2.local.token = token
    assert not rc.lock("resource", timeout=30).acquire(blocking=False)
    assert lock2.extend(10)
    lock2.release()
    assert new.client().get("resource") is None
    assert rc.lock("resource", timeout=30).acquire(blocking=False)


LIBRARY = """#!lua name=counters
redis.register_function('bump', function(keys, args) return redis.call('incrby', keys[1], args[1]) end)
redis.register_function{function_name='peek', callback=function(keys) return redis.call('get', keys[1]) end,
                        flags={'no-writes'}}
"""


def library_names(client) -> list[bytes]:
    names = []
    for lib in client.function_list():
        if isinstance(lib, list):  # RESP2: a flat array of fields and values
            lib = dict(zip(lib[::2], lib[1::2]))
        names.append(lib[b"library_name"])
    return names


def test_functions_are_replicated_and_survive_failover_and_restart(cluster):
    leader = cluster.leader()
    r = leader.client()
    assert r.function_load(LIBRARY) == b"counters"
    assert r.fcall("bump", 1, "fc", 5) == 5
    cluster.wait_applied(int(leader.info()["raft_applied_index"]))
    for node in cluster.nodes:
        ro = readonly_client(node)
        assert library_names(ro) == [b"counters"]
        assert ro.fcall_ro("peek", 1, "fc") == b"5"
    leader.kill()
    new = cluster.wait_leader(exclude=leader.id)
    deadline = time.monotonic() + 20
    while True:
        try:
            assert new.client().fcall("bump", 1, "fc", 1) == 6
            break
        except (redis.ResponseError, redis.ConnectionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    leader.start()
    leader.wait_listening()
    cluster.wait_applied(int(new.info()["raft_applied_index"]), [leader])
    assert library_names(readonly_client(leader)) == [b"counters"]
    new.client().function_delete("counters")
    cluster.wait_applied(int(new.info()["raft_applied_index"]))
    assert all(readonly_client(node).function_list() == [] for node in cluster.nodes)
