"""The command line against real clusters: ports already taken, `cluster status`."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

from harness import REPO

ENV = dict(os.environ, PYTHONPATH=str(REPO))
# A node that cannot listen exits in well under a second; the rest is process start-up.
LISTEN_FAILURE_EXIT_S_MAX = 5.0
STATUS_S_MAX = 2.5


def kvorum(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kvorum", *args], cwd=REPO, env=ENV, capture_output=True,
                          text=True, timeout=timeout)


def holding(port: int) -> socket.socket:
    """A socket listening on `port`, as another program's would be."""
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the port may still have TIME_WAIT entries
    holder.bind(("127.0.0.1", port))
    holder.listen()
    return holder


def test_node_exits_at_once_when_its_client_or_bus_port_is_taken(cluster):
    """While the others run a leader that counts it as a peer, n3 cannot listen on either port."""
    node = cluster.node("n3")
    node.stop()
    for what, port in (("port", node.port), ("bus port", node.bus_port)):
        with holding(port):
            node.start()
            assert node.process.wait(timeout=LISTEN_FAILURE_EXIT_S_MAX) == 1
        log = node.log_path.read_text()
        assert f"Error: cannot listen on 127.0.0.1 {what} {port}: Address already in use\n" in log
        assert "Traceback" not in log


def status_rows(stdout: str) -> dict[str, dict[str, str]]:
    lines = stdout.splitlines()
    header = lines[0].split()
    assert header == ["node", "address", "role", "term", "leader", "commit", "applied", "lag", "pid"]
    rows = {}
    for line in lines[1:-1]:
        values = line.split()
        rows[values[0]] = dict(zip(header, values + ["-"] * (len(header) - len(values))))
    return rows


def timed_status(*args: str) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    result = kvorum("cluster", "status", *args, timeout=10)
    return result, time.monotonic() - started


def test_status_names_unreachable_nodes_and_answers_fast(cluster):
    leader = cluster.wait_leader()
    seed = f"127.0.0.1:{leader.port}"
    healthy = kvorum("cluster", "status", "--seed", seed)
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    rows = status_rows(healthy.stdout)
    assert sorted(rows) == ["n1", "n2", "n3"]
    for node in cluster.nodes:
        row = rows[node.id]
        assert row["address"] == f"127.0.0.1:{node.port}" and row["pid"] == str(node.process.pid)
        assert row["role"] == ("leader" if node is leader else "follower") and row["leader"] == leader.id
    assert healthy.stdout.splitlines()[-1].startswith(f"ok: {leader.id} leads term ")

    dead, paused = [n for n in cluster.nodes if n is not leader]
    dead.kill()
    for args in (("--seed", seed), ("--seed", f"127.0.0.1:{dead.port}", "--peers", cluster.peers)):
        result, elapsed = timed_status(*args)
        assert result.returncode == 1 and elapsed < STATUS_S_MAX, (elapsed, result.stdout + result.stderr)
        rows = status_rows(result.stdout)
        assert rows[dead.id]["role"] == "unreachable" and rows[leader.id]["role"] == "leader"
        assert result.stdout.splitlines()[-1] == f"unhealthy: {dead.id} (127.0.0.1:{dead.port}) does not answer"

    paused.pause()  # connects, never answers: the timeout path
    result, elapsed = timed_status("--seed", f"127.0.0.1:{paused.port}", "--peers", cluster.peers)
    assert result.returncode == 1 and elapsed < STATUS_S_MAX, (elapsed, result.stdout + result.stderr)
    rows = status_rows(result.stdout)
    assert rows[dead.id]["role"] == rows[paused.id]["role"] == "unreachable"
    assert f"{dead.id} (127.0.0.1:{dead.port}), {paused.id} (127.0.0.1:{paused.port}) do not answer" in (
        result.stdout.splitlines()[-1])
