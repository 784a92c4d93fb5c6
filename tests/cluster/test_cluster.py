"""Black-box tests of a replicated 3-node cluster over real sockets (docs/cluster.md)."""

from __future__ import annotations

import subprocess
import time

import pytest
import redis
from redis.exceptions import MovedError

from kvorum.cluster.slots import key_slot

FAILOVER_S_MAX = 2.0


def followers(cluster, leader):
    return [n for n in cluster.nodes if n.id != leader.id]


def readonly_client(node):
    r = node.client(single_connection_client=True)
    r.execute_command("READONLY")
    return r


def test_writes_replicate_to_every_node(cluster):
    leader = cluster.leader()
    r = leader.client()
    for i in range(50):
        assert r.set(f"k{i}", i)
    assert r.incr("counter") == 1
    index = int(leader.info()["raft_applied_index"])
    cluster.wait_applied(index)
    for node in cluster.nodes:
        ro = readonly_client(node)
        assert ro.get("k49") == b"49"
        assert ro.get("counter") == b"1"
        assert ro.dbsize() == 51


def test_follower_redirects_writes_and_linearizable_reads(cluster):
    leader = cluster.leader()
    follower = followers(cluster, leader)[0]
    r = follower.client()
    with pytest.raises(MovedError) as moved:
        r.set("foo", "bar")
    assert str(moved.value) == f"{key_slot(b'foo')} 127.0.0.1:{leader.port}"
    with pytest.raises(MovedError):
        r.get("foo")
    assert r.ping()
    assert r.execute_command("ROLE")[:4] == [b"slave", b"127.0.0.1", leader.port, b"connected"]
    assert leader.client().execute_command("ROLE")[0] == b"master"
    info = r.info()
    assert info["cluster_enabled"] == 1
    assert info["role"] == "slave" and info["raft_leader"] == leader.id


def test_redis_cli_follows_moved(cluster):
    leader = cluster.leader()
    follower = followers(cluster, leader)[0]
    run = lambda *args: subprocess.run(["redis-cli", "-c", "-p", str(follower.port), *args],  # noqa: E731
                                       capture_output=True, text=True, timeout=10).stdout.strip()
    assert run("SET", "cli-key", "hello").endswith("OK")
    assert run("GET", "cli-key").endswith("hello")
    assert leader.client().get("cli-key") == b"hello"


def test_cluster_face(cluster):
    leader = cluster.leader()
    r = followers(cluster, leader)[0].client(decode_responses=True)
    slots = r.execute_command("CLUSTER", "SLOTS")
    assert len(slots) == 1 and slots[0][0] == 0 and slots[0][1] == 16383
    assert slots[0][2][1] == leader.port and len(slots[0]) == 5
    assert r.execute_command("CLUSTER", "KEYSLOT", "{user1}.name") == key_slot(b"user1")
    assert r.execute_command("CLUSTER", "MYID") != leader.id
    nodes = r.execute_command("CLUSTER", "NODES")
    assert f"{leader.id} 127.0.0.1:{leader.port}@{leader.bus_port} master - " in str(nodes)
    shards = r.execute_command("CLUSTER", "SHARDS")
    assert len(shards) == 1
    info = leader.info()
    assert info["cluster_state"] == "ok" and info["cluster_slots_assigned"] == "16384"


def test_redis_py_cluster_client_routes(cluster):
    rc = cluster.cluster_client()
    for i in range(30):
        rc.set(f"user:{i}", i)
    assert rc.get("user:7") == b"7"
    assert rc.incr("hits") == 1
    assert rc.mget("{t}a", "{t}b") == [None, None]
    rc.mset({"{t}a": "1", "{t}b": "2"})
    assert rc.mget("{t}a", "{t}b") == [b"1", b"2"]
    pipe = rc.pipeline()
    pipe.set("p1", 1).incr("p1").get("p1")
    assert pipe.execute() == [True, 2, b"2"]
    rc.close()


def test_transactions_are_one_entry_and_watch_works(cluster):
    r = cluster.leader().client()
    with r.pipeline(transaction=True) as pipe:
        pipe.set("a", 1).incr("a").get("a")
        assert pipe.execute() == [True, 2, b"2"]
    other = cluster.leader().client()
    with r.pipeline(transaction=True) as pipe:
        pipe.watch("a")
        pipe.multi()
        pipe.set("a", 10)
        other.set("a", 5)
        with pytest.raises(redis.WatchError):
            pipe.execute()
    assert r.get("a") == b"5"
    conn = cluster.leader().client(single_connection_client=True)
    conn.execute_command("WATCH", "a")
    conn.execute_command("UNWATCH")
    other.set("a", 6)
    conn.execute_command("MULTI")
    conn.execute_command("INCR", "a")
    assert conn.execute_command("EXEC") == [7]


def test_ttl_expires_through_the_log_on_every_node(cluster):
    leader = cluster.leader()
    r = leader.client()
    r.set("short", "v", px=300)
    r.set("long", "v")
    time.sleep(1.0)
    index = int(leader.info()["raft_applied_index"])
    cluster.wait_applied(index)
    for node in cluster.nodes:
        ro = readonly_client(node)
        assert ro.dbsize() == 1
        assert ro.get("short") is None


def test_leader_kill_fails_over_fast_and_loses_nothing(cluster):
    leader = cluster.leader()
    r = leader.client()
    acked = {}
    for i in range(100):
        r.set(f"k{i}", i)
        acked[f"k{i}"] = str(i).encode()
    leader.kill()
    start = time.monotonic()
    new_leader = cluster.wait_leader(exclude=leader.id)
    rn = new_leader.client()
    while True:
        try:
            rn.set("after-failover", 1)
            break
        except redis.ResponseError:
            time.sleep(0.02)
    elapsed = time.monotonic() - start
    print(f"failover: new leader {new_leader.id} took a write {elapsed:.2f}s after the kill")
    assert elapsed < FAILOVER_S_MAX
    for key, value in acked.items():
        assert rn.get(key) == value


def test_restarted_node_catches_up(cluster):
    leader = cluster.leader()
    follower = followers(cluster, leader)[0]
    follower.kill()
    r = leader.client()
    for i in range(200):
        r.set(f"late{i}", i)
    follower.start()
    follower.wait_listening()
    cluster.wait_applied(int(leader.info()["raft_applied_index"]), [follower])
    ro = readonly_client(follower)
    assert ro.get("late199") == b"199" and ro.dbsize() == 200


def test_full_cluster_restart_keeps_every_acknowledged_write(cluster):
    r = cluster.leader().client()
    for i in range(100):
        r.set(f"k{i}", i)
    r.incrby("n", 41)
    for node in cluster.nodes:
        node.kill()
    for node in cluster.nodes:
        node.start()
    for node in cluster.nodes:
        node.wait_listening()
    r = cluster.wait_leader().client()
    assert r.incr("n") == 42
    assert [r.get(f"k{i}") for i in (0, 42, 99)] == [b"0", b"42", b"99"]
    assert r.dbsize() == 101


def test_write_concerns(cluster):
    leader = cluster.leader()
    r = leader.client(single_connection_client=True, socket_timeout=1.5)
    assert r.execute_command("CLIENT", "WRITECONCERN") == b"majority"
    r.execute_command("CLIENT", "WRITECONCERN", "all")
    assert r.set("w-all", 1)
    index = int(leader.info()["raft_applied_index"])
    for node in followers(cluster, leader):
        assert int(node.info()["raft_last_index"]) >= index
    slow = followers(cluster, leader)[0]
    slow.pause()
    try:
        with pytest.raises(redis.TimeoutError):
            r.set("w-all-2", 1)  # committed by the majority, but one voter is missing it
        rm = leader.client(socket_timeout=5)
        assert rm.set("w-majority", 1)
        r1 = leader.client(single_connection_client=True, socket_timeout=5)
        r1.execute_command("CLIENT", "WRITECONCERN", "one")
        assert r1.set("w-one", 1)  # acknowledged from the leader's disk, before it commits
        deadline = time.monotonic() + 2
        while rm.get("w-one") != b"1":
            assert time.monotonic() < deadline, "the w=one write never became visible"
            time.sleep(0.01)
    finally:
        slow.resume()
    with pytest.raises(redis.ResponseError):
        leader.client().execute_command("CLIENT", "WRITECONCERN", "two")


def test_snapshots_compact_the_log_and_bring_a_lagging_node_back(tmp_path):
    from harness import LocalCluster

    config = tmp_path / "kvorum.yaml"
    config.write_text("snapshot-entries: 50\n")
    c = LocalCluster(tmp_path / "c", extra_flags=("--config", str(config)))
    try:
        c.start()
        leader = c.leader()
        lagging = followers(c, leader)[0]
        lagging.kill()
        r = leader.client()
        for i in range(300):
            r.set(f"s{i}", i)
        assert int(leader.info()["raft_snapshot_index"]) >= 250
        lagging.start()
        lagging.wait_listening()
        c.wait_applied(int(leader.info()["raft_applied_index"]), [lagging])
        ro = readonly_client(lagging)
        assert ro.get("s299") == b"299" and ro.dbsize() == 300
        for node in c.nodes:
            node.kill()
        for node in c.nodes:
            node.start()
        for node in c.nodes:
            node.wait_listening()
        assert c.wait_leader().client().dbsize() == 300
    finally:
        c.stop()


def test_isolated_leader_stops_serving_reads_when_its_lease_ends(cluster):
    leader = cluster.leader()
    r = leader.client(socket_timeout=3)
    r.set("x", 1)
    others = followers(cluster, leader)
    for node in others:
        node.pause()
    try:
        start = last_read_s = time.monotonic()
        while time.monotonic() - start < 3:
            try:
                assert r.get("x") == b"1"
                last_read_s = time.monotonic()
            except (redis.ResponseError, redis.TimeoutError):
                pass
            time.sleep(0.02)
        # The lease is election_tick - lease_drift_ticks = 8 ticks of 100 ms.
        assert last_read_s - start < 1.2
    finally:
        for node in others:
            node.resume()


def test_readonly_follower_serves_locally_and_refuses_once_cut_off(cluster):
    leader = cluster.leader()
    leader.client().set("x", 1)
    follower, other = followers(cluster, leader)
    cluster.wait_applied(int(leader.info()["raft_applied_index"]), [follower])
    ro = readonly_client(follower)
    assert ro.get("x") == b"1"
    ro.execute_command("READWRITE")
    with pytest.raises(MovedError):
        ro.get("x")
    ro.execute_command("READONLY")
    leader.pause()
    other.pause()
    try:
        time.sleep(1.5)
        with pytest.raises(redis.ResponseError, match="no contact with a leader"):
            ro.get("x")
    finally:
        leader.resume()
        other.resume()


def _segment(node):
    """The last WAL segment and its bytes, and where its records end (segments are preallocated with zeros)."""
    segments = sorted(node.data_dir.glob("*.wal"))
    assert segments
    data = bytearray(segments[-1].read_bytes())
    return segments[-1], data, len(data.rstrip(b"\0"))


def test_torn_wal_tail_is_cut_and_the_node_catches_up(cluster):
    leader = cluster.leader()
    r = leader.client()
    for i in range(100):
        r.set(f"k{i}", i)
    victim = followers(cluster, leader)[0]
    victim.kill()
    segment, data, end = _segment(victim)
    # A crash in the middle of writing a record that was never synced (so never acknowledged):
    # the start of a record header and some of its body, then nothing.
    torn = b"kv\x02\x40\x00\x00\x00" + bytes(range(1, 20))
    data[end:end + len(torn)] = torn
    segment.write_bytes(bytes(data))
    victim.start()
    victim.wait_listening()
    cluster.wait_applied(int(leader.info()["raft_applied_index"]), [victim])
    assert readonly_client(victim).dbsize() == 100
    assert "storage repaired" in victim.log_path.read_text()


def test_corrupted_wal_record_stops_the_node_with_a_clear_error(cluster):
    leader = cluster.leader()
    r = leader.client()
    for i in range(100):
        r.set(f"k{i}", "x" * 100)
    victim = followers(cluster, leader)[0]
    victim.kill()
    segment, data, end = _segment(victim)
    data[end // 2] ^= 0xFF  # damage in the middle: valid records follow it
    segment.write_bytes(bytes(data))
    victim.start()
    assert victim.process.wait(timeout=20) != 0
    log = victim.log_path.read_text()
    assert "cannot use the data directory" in log and segment.name in log


def test_leaseset_answered_internal_error_on_every_replica(cluster):
    leader = cluster.leader()
    r = leader.client()
    kind, token = r.execute_command("LEASEGET", "item")
    assert kind == b"LEASE"
    assert r.execute_command("LEASESET", "item", "loaded", token, "PX", 60000) == b"OK"
    assert r.execute_command("LEASESET", "item", "again", token) is None  # used up
    # The writer's DEL of a key that is already missing changes nothing, yet voids the lease.
    kind, token = r.execute_command("LEASEGET", "gone")
    assert kind == b"LEASE" and r.delete("gone") == 0
    assert r.execute_command("LEASESET", "gone", "stale", token) is None
    assert r.pipeline(transaction=True).execute_command("LEASESET", "x", "v", 1).execute() == [None]
    cluster.wait_applied(int(leader.info()["raft_applied_index"]))
    for node in cluster.nodes:
        ro = readonly_client(node)
        assert ro.get("item") == b"loaded" and 0 < ro.pttl("item") <= 60000
        assert ro.get("gone") is None


def test_ping_queued_in_multi_aborted_exec(cluster):
    r = cluster.leader().client()
    tx = r.pipeline(transaction=True)
    tx.ping().set("a", 1).echo("hi").incr("a").execute_command("TIME").get("a")
    replies = tx.execute()
    assert replies[:5] == [True, True, b"hi", 2, replies[4]] and replies[5] == b"2"
    assert len(replies[4]) == 2
    with pytest.raises(redis.ResponseError, match="not allowed inside a transaction"):
        r.pipeline(transaction=True).execute_command("LEASEGET", "k").set("k", 1).execute()
    # Keys in different hash slots in one transaction: one partition holds every slot.
    assert r.pipeline(transaction=True).set("foo", 1).set("bar", 2).execute() == [True, True]


def test_pipelined_writes_waited_for_each_others_commit(cluster):
    r = cluster.leader().client()
    pipe = r.pipeline(transaction=False)
    for i in range(300):
        pipe.set(f"p{i}", i)
        if i % 50 == 0:
            pipe.incr("n").get(f"p{i}").ping()
    replies = pipe.execute()
    expected = []
    for i in range(300):
        expected.append(True)
        if i % 50 == 0:
            expected += [i // 50 + 1, str(i).encode(), True]
    assert replies == expected
    # A `one` SET is answered before the INCR ahead of it applies; the GET still sees the INCR.
    one = cluster.leader().client(single_connection_client=True)
    one.execute_command("CLIENT", "WRITECONCERN", "one")
    assert one.pipeline(transaction=False).incr("c").set("s", 1).get("c").execute() == [1, True, b"1"]


def test_exec_over_maxmemory_ran_instead_of_aborting(cluster):
    r = cluster.leader().client()
    r.set("big", "v" * 1000)
    tx = cluster.leader().client(single_connection_client=True)
    tx.execute_command("MULTI")
    tx.execute_command("SET", "x", 1)
    r.config_set("maxmemory", 1)  # after the SET was queued, as Redis' unit/multi does
    try:
        with pytest.raises(redis.exceptions.ExecAbortError, match="OOM"):
            tx.execute_command("EXEC")
    finally:
        r.config_set("maxmemory", 0)


def _set_on_every_node(cluster, **settings):
    for node in cluster.nodes:
        with node.client() as r:
            for name, value in settings.items():
                r.config_set(name.replace("_", "-"), value)


def test_maxmemory_evicts_the_same_keys_on_every_replica(cluster):
    """The leader's eviction plan goes through the log: every replica drops the same keys."""
    leader = cluster.wait_leader()
    _set_on_every_node(cluster, maxmemory=64 * 1024, maxmemory_policy="allkeys-lru")
    r = leader.client()
    # One at a time: the leader plans on its applied keyspace, so writes still in
    # flight (a pipeline) may take memory past the limit until the next write.
    for i in range(300):
        assert r.set(f"k{i}", "v" * 1000)
    with leader.client(decode_responses=True) as info:
        used = int(info.info("memory")["used_memory"])
        evicted = int(info.info("stats")["evicted_keys"])
    assert 0 < used <= 64 * 1024 + 2000  # within the limit, give or take the last write
    assert evicted > 200
    cluster.wait_applied(int(leader.info()["raft_applied_index"]))
    key_sets = []
    for node in cluster.nodes:
        ro = readonly_client(node)
        key_sets.append(sorted(ro.keys("*")))
        assert int(ro.info("stats")["evicted_keys"]) == evicted
        ro.close()
    assert key_sets[0] == key_sets[1] == key_sets[2]
    assert len(key_sets[0]) == 300 - evicted
    assert b"k299" in key_sets[0]  # the newest write is never its own victim


def test_maxmemory_noeviction_refuses_writes_on_the_leader(cluster):
    leader = cluster.wait_leader()
    r = leader.client()
    r.set("big", "v" * 5000)
    _set_on_every_node(cluster, maxmemory=1000, maxmemory_policy="noeviction")
    try:
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            r.set("x", 1)
        assert r.delete("big") == 1  # DEL is not denyoom: it frees memory
        assert r.set("x", 1)
    finally:
        _set_on_every_node(cluster, maxmemory=0)
    assert r.get("x") == b"1" and int(r.info("stats")["evicted_keys"]) == 0


def test_lowering_maxmemory_far_below_use_evicts_in_several_entries_before_the_next_write(cluster):
    leader = cluster.wait_leader()
    r = leader.client()
    pipe = r.pipeline(transaction=False)
    for i in range(1000):
        pipe.set(f"k{i}", "v" * 100)
    pipe.execute()
    _set_on_every_node(cluster, maxmemory=10_000, maxmemory_policy="allkeys-random")
    try:
        assert r.set("after", "x")  # 900+ victims: four eviction entries, then the write
        info = r.info()
        assert int(info["used_memory"]) <= 10_000 and int(info["evicted_keys"]) > 900
        assert r.get("after") == b"x"
    finally:
        _set_on_every_node(cluster, maxmemory=0)


def test_pipelined_read_never_sees_a_write_sent_after_it(cluster):
    """GET k; SET k v in one pipeline: the GET answers the old value.

    The bug: a read waiting for its barrier was served after a later write of the
    same connection had applied (both committed in one round), so the GET saw the SET.
    WATCH reads versions the same way and had the same problem.
    """
    r = cluster.wait_leader().client()
    for i in range(100):
        pipe = r.pipeline(transaction=False)
        pipe.set("other", i)  # an earlier write, so the read also waits for its reply
        pipe.get("k")
        pipe.set("k", f"v{i}")
        pipe.get("k")
        assert pipe.execute() == [True, None if i == 0 else f"v{i - 1}".encode(), True, f"v{i}".encode()]
    # The connection's own write after WATCH makes the transaction fail, as in Redis.
    # (redis-py runs WATCH at once, outside a pipeline: send the commands by hand.)
    conn = r.connection_pool.get_connection()
    try:
        for i in range(20):
            commands = [("SET", "other", i), ("WATCH", "w"), ("SET", "w", i), ("MULTI",), ("SET", "w", "tx"),
                        ("EXEC",)]
            conn.send_packed_command(conn.pack_commands(commands))
            assert [conn.read_response() for _ in commands] == [b"OK", b"OK", b"OK", b"OK", b"QUEUED", None]
    finally:
        r.connection_pool.release(conn)


def _resp3_conn(node):
    """A raw RESP3 connection: (send commands, read the next reply or push)."""
    import socket

    import hiredis

    sock = socket.create_connection(("127.0.0.1", node.port), timeout=5)
    reader = hiredis.Reader()

    def send(*args):
        parts = [a if isinstance(a, bytes) else str(a).encode() for a in args]
        sock.sendall(b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts))

    def read(timeout_s: float = 5.0):
        sock.settimeout(timeout_s)
        while True:
            value = reader.gets()
            if value is not False:
                return value
            data = sock.recv(65536)
            assert data, "connection closed"
            reader.feed(data)

    send("HELLO", "3")
    read()
    return sock, send, read


def test_tracking_noloop_skips_the_connections_own_writes(cluster):
    import socket

    leader = cluster.wait_leader()
    sock, send, read = _resp3_conn(leader)
    try:
        send("CLIENT", "TRACKING", "ON", "NOLOOP")
        assert read() == b"OK"
        send("GET", "k")
        assert read() is None
        send("SET", "k", "mine")  # its own write: no invalidation for it
        assert read() == b"OK"
        send("GET", "k")
        assert read() == b"mine"
        leader.client().set("k", "theirs")  # another connection's write: one invalidation
        assert read() == [b"invalidate", [b"k"]]
        send("PING")
        assert read() == b"PONG"
        with pytest.raises(socket.timeout):
            read(timeout_s=0.3)
    finally:
        sock.close()


@pytest.mark.parametrize("concern", ["majority", "one"])
def test_setex_with_a_time_it_refuses_is_not_answered_ok(cluster, concern):
    """SETEX/PSETEX were taken for writes that always answer +OK; an overflowing or
    malformed time is refused on a single node, and must be here too."""
    r = cluster.wait_leader().client(single_connection_client=True)
    r.execute_command("CLIENT", "WRITECONCERN", concern)
    for command in (("SETEX", "k", 9223372036854775807, "v"), ("PSETEX", "k", 9223372036854775807, "v"),
                    ("SETEX", "k", "01", "v"), ("SETEX", "k", "+5", "v")):
        with pytest.raises(redis.ResponseError):
            r.execute_command(*command)
    assert r.get("k") is None
    assert r.execute_command("SETEX", "k", 100, "v") is True
    deadline = time.monotonic() + 5  # a `one` write may be read before it commits (docs/cluster.md)
    while r.get("k") != b"v" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert r.get("k") == b"v"
