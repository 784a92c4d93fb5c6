"""A 3-node cluster on an authenticated bus, and an intruder with the wrong secret (docs/cluster.md).

The intruder is a real kvorum node claiming member n3's id, started with the
cluster's id and peers but another secret. Were it let in, its elections from
a fresh log would raise the cluster's term and depose the leader; instead
every member refuses it at the handshake and logs why, and the cluster goes on
with the same leader in the same term.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from harness import REPO, LocalCluster, free_ports

SECRET = "a cluster secret for the tests"
REFUSAL = "proof of the cluster secret does not match"
# Long enough for the intruder to dial every member many times and campaign several times
# (its election timeout is one to two seconds at the default ticks).
INTRUDER_RUN_S = 4.0
WAIT_S = 15.0


def wait_for_text(path: Path, text: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in {path}:\n{path.read_text(errors='replace')[-3000:]}")


def start_intruder(cluster: LocalCluster, directory: Path, secret_file: Path) -> subprocess.Popen:
    """A node claiming to be n3, on ports of its own, holding another secret."""
    port, bus_port = free_ports(2)
    peers = ",".join(
        f"{n.id}@127.0.0.1:{port}@{bus_port}" if n.id == "n3" else f"{n.id}@127.0.0.1:{n.port}@{n.bus_port}"
        for n in cluster.nodes
    )
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "kvorum", "server", "--node-id", "n3", "--port", str(port), "--peers", peers,
           "--data-dir", str(directory / "intruder"), "--cluster-secret-file", str(secret_file),
           "--log-level", "verbose"]
    with open(directory / "intruder.log", "ab") as log:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


def test_members_sharing_a_secret_work_and_an_intruder_with_another_is_refused(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    cluster = LocalCluster(tmp_path / "cluster", extra_flags=("--cluster-secret-file", str(secret_file)))
    intruder = None
    try:
        cluster.start()
        leader = cluster.leader()
        r = leader.client()
        for i in range(20):
            assert r.set(f"k{i}", i)
        cluster.wait_applied(int(leader.info()["raft_applied_index"]))
        term = leader.info()["raft_term"]
        assert r.config_get("cluster-secret-file") == {"cluster-secret-file": str(secret_file)}

        wrong_secret_file = tmp_path / "wrong-secret"
        wrong_secret_file.write_text("not the cluster's secret at all\n")
        intruder = start_intruder(cluster, tmp_path, wrong_secret_file)
        for node in cluster.nodes:
            if node.id != "n3":
                wait_for_text(node.log_path, f"claiming node 'n3': {REFUSAL}")
        wait_for_text(tmp_path / "intruder.log", f"refused this node: {REFUSAL}")
        time.sleep(INTRUDER_RUN_S)
        assert intruder.poll() is None, (tmp_path / "intruder.log").read_text()

        assert cluster.leader().id == leader.id and leader.info()["raft_term"] == term
        assert r.set("after", "intruder") and r.incr("k0") == 1
        cluster.wait_applied(int(leader.info()["raft_applied_index"]))
        for node in cluster.nodes:
            ro = node.client(single_connection_client=True)
            ro.execute_command("READONLY")
            assert ro.get("after") == b"intruder" and ro.get("k19") == b"19"
        n3_log = cluster.node("n3").log_path.read_text(errors="replace")
        assert REFUSAL not in n3_log  # the real n3 was never confused with the intruder
    except BaseException:
        print(cluster.logs())
        if (tmp_path / "intruder.log").exists():
            print((tmp_path / "intruder.log").read_text(errors="replace")[-3000:])
        raise
    finally:
        if intruder is not None:
            intruder.terminate()
            intruder.wait(10)
        cluster.stop()
