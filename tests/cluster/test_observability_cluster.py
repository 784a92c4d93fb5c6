"""The admin port of a replicated 3-node cluster (docs/operations.md): metrics of the replica
group under a write load, and readiness through a leader's loss and return."""

from __future__ import annotations

import http.client
import json
import pathlib
import re
import threading
import time

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from harness import LocalCluster, free_ports

READY_FLIP_S_MAX = 15.0
OPERATIONS_MD = pathlib.Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def http_get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    status, body = http_get(port, "/metrics")
    assert status == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode()) for s in family.samples}


def ready(node) -> tuple[int, dict]:
    status, body = http_get(node.admin_port, "/health/ready")
    return status, json.loads(body)


def wait_ready(node, want: int, timeout_s: float = READY_FLIP_S_MAX) -> dict:
    deadline = time.monotonic() + timeout_s
    seen = None
    while time.monotonic() < deadline:
        status, seen = ready(node)
        if status == want:
            return seen
        time.sleep(0.05)
    raise AssertionError(f"{node.id} /health/ready stayed {seen}, wanted {want}")


@pytest.fixture
def admin_cluster(tmp_path, request):
    c = LocalCluster(tmp_path / "cluster")
    for node, port in zip(c.nodes, free_ports(len(c.nodes))):
        node.admin_port = port
        node.flags = ("--admin-port", str(port))
    try:
        c.start()
        yield c
    finally:
        failed = getattr(request.node, "failed_call", False)
        c.stop()
        if failed:
            print(c.logs())


def test_group_metrics_under_a_write_load(admin_cluster):
    cluster = admin_cluster
    leader = cluster.wait_leader()
    stop = threading.Event()

    def load() -> None:
        with leader.client() as r:
            for i in range(2000):
                if stop.is_set():
                    return
                try:
                    r.set(f"k{i}", i)
                except redis.RedisError:
                    return  # leadership moved under load: the assertions below say so

    writer = threading.Thread(target=load)
    writer.start()
    try:
        time.sleep(0.5)
        during = {node.id: scrape(node.admin_port) for node in cluster.nodes}
    finally:
        stop.set()
        writer.join()
    group = (("group", "0"),)
    on_leader = during[leader.id]
    assert on_leader[("kvorum_group_role", (("group", "0"), ("role", "leader")))] == 1
    assert on_leader[("kvorum_command_calls_total", (("command", "set"),))] > 0
    assert on_leader[("kvorum_group_fsync_duration_seconds_count", group)] > 0
    followers = [n for n in cluster.nodes if n.id != leader.id]
    for node in followers:
        lag = on_leader[("kvorum_group_follower_lag_entries", (("follower", node.id), ("group", "0")))]
        assert lag >= 0
        assert during[node.id][("kvorum_group_role", (("group", "0"), ("role", "follower")))] == 1
    for node in cluster.nodes:
        metrics = during[node.id]
        assert metrics[("kvorum_group_term", group)] >= 1
        assert metrics[("kvorum_group_elections_seen_total", group)] >= 1
        assert metrics[("kvorum_group_applied_index", group)] <= metrics[("kvorum_group_commit_index", group)]
        assert ("kvorum_group_snapshot_bytes", group) in metrics
        assert ready(node)[0] == 200
    with pytest.raises(redis.exceptions.MovedError):
        followers[0].client().set("k", "v")
    errors = scrape(followers[0].admin_port)
    assert errors[("kvorum_error_replies_total", (("prefix", "MOVED"),))] >= 1
    index = int(leader.info()["raft_applied_index"])
    cluster.wait_applied(index)
    after = scrape(followers[0].admin_port)
    assert after[("kvorum_group_applied_index", group)] >= index
    assert after[("kvorum_keys", ())] > 0
    overview = json.loads(http_get(leader.admin_port, "/api/overview")[1])
    assert overview["mode"] == "replicated" and overview["group"]["leader"] == leader.id
    members = {m["id"]: m for m in overview["group"]["members"]}
    assert set(members) == {n.id for n in cluster.nodes}
    assert members[leader.id]["leader"] and members[leader.id]["self"]
    assert all(members[n.id]["lag"] is not None for n in followers)


def test_ready_flips_when_the_leader_is_lost_and_back(admin_cluster):
    cluster = admin_cluster
    leader = cluster.wait_leader()
    with leader.client() as r:
        for i in range(50):
            r.set(f"k{i}", i)
    survivor, other = [n for n in cluster.nodes if n.id != leader.id]
    assert ready(survivor)[0] == 200
    # Without a majority nobody can lead: the survivor loses its leader and says why.
    leader.kill()
    other.kill()
    reason = wait_ready(survivor, 503)["reason"]
    assert "leader" in reason
    assert http_get(survivor.admin_port, "/health/live")[0] == 200
    other.start()
    other.wait_listening()
    new_leader = cluster.wait_leader(exclude=leader.id)
    wait_ready(survivor, 200)
    wait_ready(new_leader, 200)
    with new_leader.client() as r:
        assert r.get("k49") == b"49"
    metrics = scrape(survivor.admin_port)
    assert metrics[("kvorum_group_leader_changes_total", (("group", "0"),))] >= 2


def test_ready_on_a_follower_during_a_failover(admin_cluster):
    """A plain failover: the followers' readiness goes back to 200 under the new leader."""
    cluster = admin_cluster
    leader = cluster.wait_leader()
    leader.kill()
    new_leader = cluster.wait_leader(exclude=leader.id)
    for node in cluster.nodes:
        if node is not leader:
            wait_ready(node, 200)
    with new_leader.client() as r:
        try:
            r.set("after", "1")
        except redis.RedisError as exc:
            pytest.fail(f"write after failover: {exc}")


def test_every_metric_in_the_docs_is_served(admin_cluster):
    """docs/operations.md names what /metrics serves: every name it lists is in a leader's scrape."""
    leader = admin_cluster.wait_leader()
    with leader.client() as r:
        r.set("a", "1")
    served = {name for name, _labels in scrape(leader.admin_port)}
    documented = set(re.findall(r"`(kvorum_[a-z_]+)`", OPERATIONS_MD.read_text()))
    assert len(documented) > 20
    missing = sorted(name for name in documented if name not in served and name + "_count" not in served)
    assert not missing, f"documented but not served: {missing}"
