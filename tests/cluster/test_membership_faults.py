"""Fault suite with membership changes: the fault suite's clients and checks (test_faults.py)
while the nemesis also adds, removes and replaces nodes and moves leadership.

The nemesis (nemesis.py) deals from one shuffled deck the faults of test_faults.py
(SIGKILL and restart the leader, SIGSTOP a node, partitions through the proxy) and the
membership changes: a fresh node joins (--join), a follower or the leader is removed
(CLUSTER MEMBER REMOVE; it stops by itself), a voter is killed and replaced by a fresh
node (CLUSTER MEMBER ADD ... REPLACE, then --join), leadership moves (CLUSTER
MOVE-LEADER, CLUSTER FAILOVER). One membership change at a time, followed until
CLUSTER MEMBERS shows it done, or the test fails with the node logs. A change may be
played while a pause or a partition is in effect, and may remove the node that is
paused or cut off: that node never receives the entries that removed it, and must
stop by itself once the fault is healed and its peers refuse it. The voters stay
between 3 and 5, and ids are never reused.

Which peer links go through the proxy. A node that joins binds its own bus port and
announces a proxy listener instead (--cluster-announce-bus-port), which carries every
link into it; the proxy puts each connection on the link its HELLO names. So
partitions cut the links of joined nodes as they cut those of the first three. One
kind of link bypasses the proxy: to one of the first three nodes, from a node that
copied that node's address book (a joining node gets its member list from the leader,
and an installed snapshot carries the leader's addresses), whose entry for itself is
the real bus port it binds (a node started with --peers cannot announce another).
Those links cannot be cut; the summary lists the ones left at the end.

At the end every member runs, every link is healed, the history is linearizable
(which, with the final read of every key, means no acknowledged write was lost),
CLUSTER MEMBERS lists exactly the running nodes, all voters, and every member holds
the same keys and values (read with READONLY once each applied the leader's commit
index).

The second test shrinks a 5-node cluster to 3 and grows it back to 5 (remove the
leader, remove a follower, two fresh nodes join) under RedisCluster clients whose
history is checked the same way, and a writer of unique keys whose every
acknowledged write must read back.

Durations scale with KVORUM_FAULT_SECONDS (default 30): the nemesis plays for
MEMBERSHIP_SHARE of it, and the 5-3-5 test pauses RESIZE_SHARE of it between
changes; seed KVORUM_FAULT_SEED (default 7). Histories go to the tests' temporary
directories as history.jsonl.
"""

from __future__ import annotations

import os
import time

import pytest

from harness import LocalCluster
from nemesis import FAULTS, MEMBERSHIP, Changes, Nemesis, heal_everything
from netproxy import direct_links
from workload import ClusterWorker, Workload, Writer, keyspaces_equal

FAULT_S = float(os.environ.get("KVORUM_FAULT_SECONDS", "30"))
FAULT_SEED = int(os.environ.get("KVORUM_FAULT_SEED", "7"))
MEMBERSHIP_SHARE = 0.8  # of FAULT_S: each membership card takes a few seconds, setup and checks a few more
RESIZE_SHARE = 1 / 15  # of FAULT_S, between two changes of the 5-3-5 test (2 s by default)
HEALED_S = 2.0


def _members_all_run(cluster) -> None:
    """CLUSTER MEMBERS lists the running nodes, all voters; every removed or replaced node is stopped."""
    cluster.wait_members({n.id: "voter" for n in cluster.nodes})
    assert all(n.alive for n in cluster.nodes)
    assert not any(n.alive for n in cluster.retired), [n.id for n in cluster.retired if n.alive]


@pytest.mark.timeout(int(FAULT_S) + 300)
def test_history_under_membership_changes_and_faults_is_linearizable(net_cluster, tmp_path):
    cluster, proxy = net_cluster
    workload = Workload(cluster)
    nemesis = Nemesis(cluster, proxy, FAULTS + MEMBERSHIP, FAULT_SEED)
    workload.start()
    try:
        nemesis.run_for(FAULT_S * MEMBERSHIP_SHARE)
        heal_everything(cluster, proxy)
        time.sleep(HEALED_S)
    finally:
        nemesis.stop()
        workload.stop()
    summary = workload.verify(tmp_path)
    _members_all_run(cluster)
    keys = keyspaces_equal(cluster, cluster.nodes)
    print(f"membership fault suite: seed {FAULT_SEED}, {FAULT_S * MEMBERSHIP_SHARE:.0f}s, {summary}, "
          f"members {[n.id for n in cluster.nodes]} with {keys} keys each, "
          f"links bypassing the proxy {direct_links(cluster)}, {nemesis.summary()}")


@pytest.fixture
def five(tmp_path, request):
    c = LocalCluster(tmp_path / "cluster", 5)
    try:
        c.start()
        yield c
    finally:
        c.stop()
        if getattr(request.node, "failed_call", False):
            print(c.logs())


@pytest.mark.timeout(int(FAULT_S) + 240)
def test_five_to_three_to_five_under_load(five, tmp_path):
    cluster = five
    events: list[str] = []
    changes = Changes(cluster, None, lambda line: events.append(f"{time.monotonic():.2f} {line}"))
    pause_s = FAULT_S * RESIZE_SHARE
    workload = Workload(cluster, worker=ClusterWorker, pipeline=False)
    writer = Writer(cluster)
    workload.start()
    writer.start()
    try:
        time.sleep(pause_s)
        assert changes.remove(cluster.wait_leader())
        time.sleep(pause_s)
        leader = cluster.wait_leader()
        assert not changes.remove(next(n for n in cluster.nodes if n is not leader))
        assert len(cluster.nodes) == 3
        for _ in range(2):
            time.sleep(pause_s)
            changes.join(via=cluster.nodes[-1])
        time.sleep(pause_s)
    finally:
        workload.stop()
        writer.stop()
    summary = workload.verify(tmp_path)
    writer.all_acked_present()
    _members_all_run(cluster)
    assert len(cluster.nodes) == 5 and {"n6", "n7"} <= {n.id for n in cluster.nodes}
    keys = keyspaces_equal(cluster, cluster.nodes)
    print(f"5-3-5: {summary}, {len(writer.acked)} unique keys written, {keys} keys on each of "
          f"{[n.id for n in cluster.nodes]}; {'; '.join(events)}")
