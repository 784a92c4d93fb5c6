"""Membership changes on real clusters: join, remove, replace, transfer, with writes going on.

Each test starts real kvorum processes on loopback and talks to them with
redis-py. A background writer keeps acknowledged writes flowing through every
change; at the end every acknowledged write is read back from the group, and
every live member holds the same keys.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import redis

from harness import REPO, LocalCluster
from workload import Writer, keyspaces_equal

SMALL_SNAPSHOT_ENTRIES = 500
SLOW_ELECTION_TICKS = 30  # 3 to 6 s at 100 ms a tick


def test_join_then_remove_the_leader_then_replace_a_dead_node(cluster):
    writer = Writer(cluster)
    writer.start()
    try:
        time.sleep(0.5)
        # A fourth node joins as a learner, catches up and is promoted.
        n4 = cluster.add_node("n4")
        n4.start()
        n4.wait_listening()
        cluster.wait_members({"n1": "voter", "n2": "voter", "n3": "voter", "n4": "voter"})

        # Removing the leader moves leadership away first; the removed node stops by itself.
        leader = cluster.wait_leader()
        with leader.client(decode_responses=True) as r:
            assert r.execute_command("CLUSTER", "MEMBER", "REMOVE", leader.id) == "OK"
        expected = {n: "voter" for n in ("n1", "n2", "n3", "n4") if n != leader.id}
        cluster.wait_members(expected)
        leader.process.wait(timeout=30)
        assert cluster.wait_leader().id != leader.id

        # A dead voter is replaced in one joint change, once its replacement caught up.
        dead = next(n for n in cluster.nodes if n.alive and n.id != cluster.wait_leader().id)
        dead.kill()
        n5 = cluster.add_node("n5")
        with cluster.wait_leader().client(decode_responses=True) as r:
            reply = r.execute_command("CLUSTER", "MEMBER", "ADD", "n5", f"127.0.0.1:{n5.port}@{n5.bus_port}",
                                      "REPLACE", dead.id)
            assert reply == "OK"
        n5.start()
        n5.wait_listening()
        expected = {n: "voter" for n in expected if n != dead.id} | {"n5": "voter"}
        cluster.wait_members(expected)
        time.sleep(0.5)
    finally:
        writer.stop()
    assert len(writer.acked) > 50
    writer.all_acked_present()
    keyspaces_equal(cluster, [n for n in cluster.nodes if n.alive])


def test_a_removed_id_is_never_reused(cluster):
    leader = cluster.wait_leader()
    victim = next(n for n in cluster.nodes if n.id != leader.id)
    with leader.client(decode_responses=True) as r:
        r.set("k", "v")
        assert r.execute_command("CLUSTER", "MEMBER", "REMOVE", victim.id) == "OK"
    cluster.wait_members({n.id: "voter" for n in cluster.nodes if n is not victim})
    victim.process.wait(timeout=30)
    again = cluster.add_node(victim.id)
    again.start()
    assert again.process.wait(timeout=30) != 0
    assert "never reused" in again.log_path.read_text()


def test_learner_stays_a_learner_and_cannot_be_counted(cluster):
    n4 = cluster.add_node("n4", join_flags=("--learner", "yes"))
    n4.start()
    n4.wait_listening()
    cluster.wait_members({"n1": "voter", "n2": "voter", "n3": "voter", "n4": "learner"})
    with cluster.wait_leader().client(decode_responses=True) as r:
        r.set("seen-by-learner", "1")
        slots = r.execute_command("CLUSTER", "SLOTS")
    # Learners are not offered to routing clients as replicas.
    assert {row[2] for row in slots[0][2:]} == {"n1", "n2", "n3"}
    keyspaces_equal(cluster, [n for n in cluster.nodes if n.alive])
    with cluster.wait_leader().client(decode_responses=True) as r:
        assert r.execute_command("CLUSTER", "MEMBER", "PROMOTE", "n4") == "OK"
    cluster.wait_members({"n1": "voter", "n2": "voter", "n3": "voter", "n4": "voter"})


def _wait_leader_is(cluster: LocalCluster, node_id: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        leader = cluster.leader()
        if leader is not None and leader.id == node_id:
            return
        assert time.monotonic() < deadline, cluster.logs()
        time.sleep(0.05)


def test_move_leader_and_failover(cluster):
    leader = cluster.wait_leader()
    target = next(n for n in cluster.nodes if n.id != leader.id)
    with leader.client(decode_responses=True) as r:
        assert r.execute_command("CLUSTER", "MOVE-LEADER", target.id) == "OK"
    _wait_leader_is(cluster, target.id)
    back = leader
    with back.client(decode_responses=True) as r:
        assert r.execute_command("CLUSTER", "FAILOVER") == "OK"
    _wait_leader_is(cluster, back.id)
    with cluster.wait_leader().client(decode_responses=True) as r:
        with pytest.raises(redis.ResponseError, match="to a replica"):
            r.execute_command("CLUSTER", "FAILOVER")
        with pytest.raises(redis.ResponseError, match="not a voter"):
            r.execute_command("CLUSTER", "MOVE-LEADER", "nobody")


def test_membership_requests_with_bad_input_change_nothing(cluster):
    leader = cluster.wait_leader()
    follower = next(n for n in cluster.nodes if n.id != leader.id)
    with follower.client(decode_responses=True) as r:
        with pytest.raises(redis.exceptions.MovedError):
            r.execute_command("CLUSTER", "MEMBER", "ADD", "n9", "127.0.0.1:1")
    with leader.client(decode_responses=True) as r:
        for bad, error in [
            (("ADD", "n9", "nohost"), "invalid address"),
            (("ADD", "n9", "127.0.0.1:99999"), "invalid address"),
            (("ADD", "n9", "127.0.0.1:7000", "BOGUS"), "syntax"),
            (("ADD", "n9", "127.0.0.1:7000", "REPLACE", "nobody"), "no member nobody"),
            (("ADD", "n1", "127.0.0.1:1"), "already a member"),
            (("REMOVE", "nobody"), "no member"),
            (("PROMOTE", "nobody"), "no member"),
            (("FROB", "x"), "unknown subcommand"),
        ]:
            with pytest.raises(redis.ResponseError, match=error):
                r.execute_command("CLUSTER", "MEMBER", *bad)
        assert r.ping()
    assert cluster.members() == {"n1": "voter", "n2": "voter", "n3": "voter"}


def test_join_refuses_a_node_without_its_settings(tmp_path):
    result = subprocess.run([sys.executable, "-m", "kvorum", "server", "--join", "127.0.0.1:1"], cwd=REPO,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode != 0 and "--join needs --node-id" in result.stderr


def _cli(*args: str, timeout_s: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kvorum", "cluster", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout_s)


def test_cluster_replace_move_leader_and_remove_from_the_command_line(cluster):
    seed = f"127.0.0.1:{cluster.nodes[0].port}"
    old = cluster.node("n3")
    old.kill()
    n4 = cluster.add_node("n4")
    replace = subprocess.Popen([sys.executable, "-m", "kvorum", "cluster", "replace", "n3",
                                f"n4@127.0.0.1:{n4.port}@{n4.bus_port}", "--seed", seed, "--timeout", "60"],
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(1.0)  # registered first, started second: --join of a registered node just starts it
    n4.start()
    out, _ = replace.communicate(timeout=90)
    assert replace.returncode == 0, out + cluster.logs()
    assert "n4 replaced n3" in out and "  n1 voter, n2 voter" in out  # progress lines while it ran
    assert cluster.members() == {"n1": "voter", "n2": "voter", "n4": "voter"}

    moved = _cli("move-leader", "n4", "--seed", seed)
    assert moved.returncode == 0 and "n4 leads" in moved.stdout, moved.stdout + moved.stderr
    removed = _cli("remove", "n4", "--seed", seed)
    assert removed.returncode == 0 and "n4 removed" in removed.stdout, removed.stdout + removed.stderr
    assert cluster.members() == {"n1": "voter", "n2": "voter"}
    n4.process.wait(timeout=30)

    refused = _cli("remove", "nobody", "--seed", seed)
    assert refused.returncode != 0 and "no member nobody" in refused.stderr


def test_a_newcomer_catches_up_from_a_snapshot_larger_than_a_peer_frame(tmp_path):
    """A 20 MiB image (a peer frame holds 16 MiB) reaches a joining node in chunks."""
    config = tmp_path / "kvorum.yaml"
    config.write_text("snapshot-entries: 8\n")
    cluster = LocalCluster(tmp_path / "big", 3, extra_flags=("--config", str(config))).start()
    try:
        value = b"x" * (1024 * 1024)
        with cluster.wait_leader().client() as r:
            for i in range(20):
                r.set(f"big:{i}", value + str(i).encode())
        n4 = cluster.add_node("n4")
        n4.start()
        n4.wait_listening()
        cluster.wait_members({"n1": "voter", "n2": "voter", "n3": "voter", "n4": "voter"}, timeout_s=60)
        assert "sending the snapshot" in "".join(n.log_path.read_text() for n in cluster.nodes[:3])
        assert "received a snapshot" in n4.log_path.read_text()
        cluster.wait_applied(int(cluster.wait_leader().info()["raft_commit_index"]), [n4])
        with n4.client() as r:
            r.execute_command("READONLY")
            assert r.dbsize() == 20
            assert r.get("big:7") == value + b"7"
    finally:
        cluster.stop()


def test_a_node_joins_a_leader_whose_snapshot_predates_them_both(tmp_path):
    """The leader's only snapshot is older than the leader's own membership (it joined through
    that snapshot): a node joining it installs that snapshot, whose roster knows neither of
    them, and must still answer the leader with the address it was given when it joined."""
    config = tmp_path / "kvorum.yaml"
    config.write_text(f"snapshot-entries: {SMALL_SNAPSHOT_ENTRIES}\n")
    cluster = LocalCluster(tmp_path / "cluster", 3, extra_flags=("--config", str(config))).start()
    try:
        with cluster.wait_leader().client() as r:
            pipe = r.pipeline(transaction=False)
            for i in range(SMALL_SNAPSHOT_ENTRIES + 100):
                pipe.set(f"k{i}", i)
            pipe.execute()
        n4 = cluster.add_node("n4")
        n4.start()
        cluster.wait_members({"n1": "voter", "n2": "voter", "n3": "voter", "n4": "voter"})
        assert int(n4.info()["raft_snapshot_index"]) > 0  # n4 joined through the snapshot
        with cluster.wait_leader().client(decode_responses=True) as r:
            assert r.execute_command("CLUSTER", "MOVE-LEADER", "n4") == "OK"
        deadline = time.monotonic() + 10
        while cluster.leader() is not n4:
            assert time.monotonic() < deadline, cluster.logs()
            time.sleep(0.05)
        n5 = cluster.add_node("n5", join_via=n4)
        n5.start()
        cluster.wait_members({f"n{i}": "voter" for i in range(1, 6)}, timeout_s=20)
        keyspaces_equal(cluster, cluster.nodes)
    finally:
        cluster.stop()


def test_a_node_removed_while_paused_is_refused_by_its_peers_and_stops(cluster):
    """It never receives the entries that removed it; its peers' refusal tells it."""
    leader = cluster.wait_leader()
    victim = next(n for n in cluster.nodes if n.id != leader.id)
    victim.pause()
    with leader.client(decode_responses=True) as r:
        assert r.execute_command("CLUSTER", "MEMBER", "REMOVE", victim.id) == "OK"
    cluster.wait_members({n.id: "voter" for n in cluster.nodes if n is not victim})
    victim.resume()
    assert victim.process.wait(timeout=30) == 0
    log = victim.log_path.read_text()
    assert f"node {victim.id} was removed from this cluster; shutting down" in log
    with cluster.wait_leader().client() as r:
        assert r.set("after", "1")


def test_a_joined_leader_restarts_while_the_others_still_follow_it(tmp_path):
    """A joined node restarts with --join; the member it asks redirects it to the leader it
    knows, which is this very node until an election (made slow here) replaces it."""
    config = tmp_path / "kvorum.yaml"
    config.write_text(f"raft-election-ticks: {SLOW_ELECTION_TICKS}\n")
    cluster = LocalCluster(tmp_path / "cluster", 3, extra_flags=("--config", str(config))).start()
    try:
        n4 = cluster.add_node("n4")
        n4.start()
        cluster.wait_members({"n1": "voter", "n2": "voter", "n3": "voter", "n4": "voter"})
        with cluster.wait_leader().client(decode_responses=True) as r:
            assert r.execute_command("CLUSTER", "MOVE-LEADER", "n4") == "OK"
        deadline = time.monotonic() + 10
        while cluster.leader() is not n4:
            assert time.monotonic() < deadline, cluster.logs()
            time.sleep(0.05)
        n4.kill()
        n4.start()
        n4.wait_listening()
        cluster.wait_members({"n1": "voter", "n2": "voter", "n3": "voter", "n4": "voter"})
    finally:
        cluster.stop()


def test_a_joining_node_announces_a_bus_port_other_than_the_one_it_binds(cluster, tmp_path):
    """Peers dial the announced port (here a proxy); cutting the proxy cuts the node off."""
    from netproxy import NetProxy

    with NetProxy() as proxy:
        n4 = cluster.add_node("n4")
        announced = proxy.add_link("any", "n4", ("127.0.0.1", n4.bus_port))
        n4.join_flags = ("--cluster-announce-bus-port", str(announced))
        n4.start()
        n4.wait_listening()
        cluster.wait_members({"n1": "voter", "n2": "voter", "n3": "voter", "n4": "voter"})
        with cluster.wait_leader().client(decode_responses=True) as r:
            rows = {row[0]: row[3] for row in r.execute_command("CLUSTER", "MEMBERS")}
        assert rows["n4"] == announced != n4.bus_port
        proxy.drop([("any", "n4")])
        with cluster.wait_leader().client() as r:
            r.set("while-cut", "1")
        time.sleep(1.5)
        with n4.client() as r:
            r.execute_command("READONLY")
            # Nothing reaches n4 but through the announced port: it hears no leader.
            with pytest.raises(redis.exceptions.TryAgainError, match="no contact with a leader"):
                r.get("while-cut")
        proxy.heal()
        cluster.wait_applied(int(cluster.wait_leader().info()["raft_commit_index"]), [n4])
        with n4.client() as r:
            r.execute_command("READONLY")
            assert r.get("while-cut") == b"1"
