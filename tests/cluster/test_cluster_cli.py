"""The command line against real clusters: ports already taken, `cluster status`, `cluster up` and `restart`."""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

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


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _lines_of(stream) -> queue.Queue:
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line.rstrip("\n")) for line in stream], daemon=True).start()
    return lines


def _wait_line(lines: queue.Queue, wanted: str, seen: list[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while wanted not in seen:
        try:
            seen.append(lines.get(timeout=max(0.01, deadline - time.monotonic())))
        except queue.Empty:
            raise AssertionError(f"no line {wanted!r} in:\n" + "\n".join(seen)) from None


def _wait(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except (redis.RedisError, OSError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"{what} within {timeout_s}s")


def _client(port: int) -> redis.Redis:
    return redis.Redis(port=port, socket_timeout=1, retry=Retry(NoBackoff(), 0), decode_responses=True)


def _raft_leader(port: int) -> str | None:
    with _client(port) as r:
        info = dict(line.split(":", 1) for line in r.execute_command("CLUSTER", "INFO").splitlines() if ":" in line)
    return None if info["raft_leader"] == "-" else info["raft_leader"]


def test_cluster_up_restarts_a_killed_node_and_stops_everything_on_ctrl_c(tmp_path: Path):
    # cluster up takes ports base..base+2 and their bus ports base+10000..base+10002.
    base = next(b for b in (random.randrange(20000, 30000) for _ in range(100))
                if all(_bindable(b + d) for d in (0, 1, 2, 10000, 10001, 10002)))
    data_dir = str(tmp_path / "c")
    up = subprocess.Popen([sys.executable, "-m", "kvorum", "cluster", "up", "--nodes", "3", "--base-port", str(base),
                           "--data-dir", data_dir], cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    lines, seen = _lines_of(up.stdout), []
    pids: list[int] = []
    try:
        _wait_line(lines, f"  restart a node: kvorum cluster restart nI --data-dir {data_dir}", seen, 15)
        status = _wait(lambda: (s := kvorum("cluster", "status", "--nodes", "3", "--base-port", str(base)))
                       .returncode == 0 and s, 30, "no healthy cluster")
        state = json.loads((Path(data_dir) / "cluster.json").read_text())
        assert state["launcher_pid"] == up.pid
        nodes = {n["id"]: n for n in state["nodes"]}
        pids = [n["pid"] for n in nodes.values()]
        assert nodes["n2"]["port"] == base + 1 and nodes["n2"]["bus_port"] == base + 10001
        assert nodes["n2"]["data_dir"] == os.path.join(data_dir, "n2") and "--node-id" in nodes["n2"]["command"]
        assert status_rows(status.stdout)["n2"]["pid"] == str(nodes["n2"]["pid"])

        os.kill(nodes["n2"]["pid"], signal.SIGKILL)
        _wait_line(lines, f"node n2 exited with status -9; restart it with: "
                          f"kvorum cluster restart n2 --data-dir {data_dir}", seen, 5)
        restart = kvorum("cluster", "restart", "n2", "--data-dir", data_dir)
        assert restart.returncode == 0, restart.stdout + restart.stderr
        assert restart.stdout.startswith("node n2 was down (status -9); started again, pid ")
        new_pid = int(restart.stdout.split()[-1])
        pids.append(new_pid)
        state = json.loads((Path(data_dir) / "cluster.json").read_text())
        assert {n["id"]: n["pid"] for n in state["nodes"]}["n2"] == new_pid
        _wait(lambda: _client(base + 1).ping(), 15, "n2 did not answer PING after its restart")
        _wait(lambda: _raft_leader(base + 1), 15, "n2 did not rejoin a leader")

        unknown = kvorum("cluster", "restart", "n9", "--data-dir", data_dir)
        assert unknown.returncode == 1 and "no node n9" in unknown.stderr
    finally:
        up.send_signal(signal.SIGINT)
        up.wait(timeout=30)
    assert up.returncode == 0, "\n".join(seen)
    for pid in pids:  # every node the launcher started is gone, not left behind
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        raise AssertionError(f"node pid {pid} outlived its launcher")
    state = json.loads((Path(data_dir) / "cluster.json").read_text())
    assert state["launcher_pid"] is None and all(n["pid"] is None for n in state["nodes"])
    assert kvorum("cluster", "restart", "n2", "--data-dir", data_dir).returncode == 1
