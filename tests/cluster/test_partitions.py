"""A leader cut off from both followers by the network (netproxy), on a real 3-node cluster.

The majority side elects a new leader within about 2 s and takes writes; the old
leader stops serving linearizable reads once its lease ends and never answers
a stale value; a write sent to it is never acknowledged and is gone after the
heal; after the heal the old leader follows the new one and has its writes.
And a one-way cut: a leader that still sends but hears nobody steps down, the
others elect a leader, and after the heal the old one follows it.
"""

from __future__ import annotations

import time

import redis

FAILOVER_S_MAX = 2.5  # election timeout 1-2 s after the last heartbeat, plus the vote
LEASE_END_S = 1.2  # the lease (0.8 s after the last quorum contact), one tick, and a margin
READ_TIMEOUT_S = 0.5
REFUSALS = ("MOVED", "CLUSTERDOWN", "TRYAGAIN", "TIMEOUT")


def read_on(node, key: str) -> tuple[float, str, object]:
    """One linearizable GET on `node`: (invoked at, "value" | "refused" | "timeout", reply)."""
    invoked = time.monotonic()
    try:
        with node.client(socket_timeout=READ_TIMEOUT_S, socket_connect_timeout=READ_TIMEOUT_S) as r:
            return invoked, "value", r.get(key)
    except redis.ResponseError as exc:
        assert str(exc).split()[0].upper() in REFUSALS or type(exc).__name__ in (
            "MovedError", "ClusterDownError", "TryAgainError"), exc
        return invoked, "refused", str(exc)
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        return invoked, "timeout", str(exc)


def leader_among(nodes):
    for node in nodes:
        try:
            if node.info().get("raft_role") == "leader":
                return node
        except (redis.RedisError, OSError):
            pass
    return None


def test_isolated_leader_is_replaced_and_serves_no_stale_read(net_cluster):
    cluster, proxy = net_cluster
    old = cluster.wait_leader()
    others = [n for n in cluster.nodes if n is not old]
    with old.client() as r:
        r.set("k", "v1")
        applied = int(old.info()["raft_applied_index"])
    cluster.wait_applied(applied)

    proxy.isolate(old.id)
    cut_at = time.monotonic()
    reads = []
    orphan_reply = None
    orphan_conn = old.client(socket_timeout=READ_TIMEOUT_S)
    try:
        orphan_conn.set("orphan", "x")  # the isolated leader may take it, but can never commit it
        orphan_reply = "OK"
    except (redis.ResponseError, redis.ConnectionError, redis.TimeoutError) as exc:
        orphan_reply = repr(exc)
    finally:
        orphan_conn.close()
    assert orphan_reply != "OK", "an isolated leader acknowledged a write"

    new = None
    while new is None:
        reads.append(read_on(old, "k"))
        new = leader_among(others)
        assert time.monotonic() - cut_at < 10, "no leader on the majority side\n" + cluster.logs()
    with new.client() as r:
        r.set("k", "v2")
    acked_at = time.monotonic()
    failover_s = acked_at - cut_at
    print(f"new leader {new.id} took a write {failover_s:.2f}s after {old.id} was cut off")
    assert failover_s < FAILOVER_S_MAX

    while time.monotonic() - cut_at < 4.0:  # past the old leader's CheckQuorum step-down
        reads.append(read_on(old, "k"))
    # Once a new leader exists the old lease is over (the lease is shorter than the
    # shortest election timeout), so the old leader must not answer with any value.
    for invoked, outcome, reply in reads:
        if invoked > min(acked_at, cut_at + LEASE_END_S):
            assert outcome != "value", f"{old.id} served {reply!r} {invoked - cut_at:.2f}s after the cut"
    print(f"{old.id} while cut off: {sum(o == 'value' for _, o, _ in reads)} reads served in its lease, "
          f"{sum(o == 'refused' for _, o, _ in reads)} refused, {sum(o == 'timeout' for _, o, _ in reads)} timed out")
    assert old.info()["raft_role"] != "leader"

    proxy.heal()
    deadline = time.monotonic() + 10
    while True:
        info = old.info()
        if info["raft_role"] == "follower" and info["raft_leader"] == new.id:
            break
        assert time.monotonic() < deadline, f"{old.id} did not follow {new.id} after the heal: {info}"
        time.sleep(0.05)
    with new.client() as r:
        r.set("after", "heal")
        applied = int(new.info()["raft_applied_index"])
    cluster.wait_applied(applied)
    with old.client() as r:
        r.execute_command("READONLY")
        assert r.get("k") == b"v2"
        assert r.get("after") == b"heal"
        assert r.get("orphan") is None
    with new.client() as r:
        assert r.get("orphan") is None


def wait_leader_among(cluster, nodes, timeout_s: float):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        leader = leader_among(nodes)
        if leader is not None:
            return leader
        time.sleep(0.02)
    raise AssertionError(f"no leader among {[n.id for n in nodes]} in {timeout_s}s\n" + cluster.logs())


def test_leader_that_hears_nobody_steps_down_and_the_others_carry_on(net_cluster):
    """One-way cut: the leader still sends (its heartbeats arrive) but receives nothing."""
    cluster, proxy = net_cluster
    old = cluster.wait_leader()
    others = [n for n in cluster.nodes if n is not old]
    proxy.drop([(o.id, old.id) for o in others])
    cut_at = time.monotonic()
    # CheckQuorum makes the old leader step down after an election timeout without
    # acknowledgements; then the followers stop hearing heartbeats and elect.
    new = wait_leader_among(cluster, others, timeout_s=8.0)
    with new.client() as r:
        r.set("k", "after-cut")
    print(f"new leader {new.id} took a write {time.monotonic() - cut_at:.2f}s after {old.id} stopped hearing")
    assert old.info()["raft_role"] != "leader"

    proxy.heal()
    deadline = time.monotonic() + 10
    while (info := old.info())["raft_leader"] != new.id or info["raft_role"] != "follower":
        assert time.monotonic() < deadline, f"{old.id} did not follow {new.id} after the heal: {info}"
        time.sleep(0.05)
    applied = int(new.info()["raft_applied_index"])
    cluster.wait_applied(applied)
    with old.client() as r:
        r.execute_command("READONLY")
        assert r.get("k") == b"after-cut"
