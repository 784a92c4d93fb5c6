"""A real 3-node replicated kvorum cluster in subprocesses, for the client's failover tests.

Each node is `python -m kvorum server --node-id n<i> --peers ... --data-dir ...` on free ports
(client and bus). `wait_leader()` polls CLUSTER INFO until one node says it leads; `kill(node)`
sends SIGKILL, the failure the cluster must survive.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import redis

from node_process import REPO, free_port

START_TIMEOUT_S = 20.0
POLL_S = 0.05


class Cluster:
    def __init__(self, data_dir, count: int = 3):
        self.ports = {f"n{i}": free_port() for i in range(1, count + 1)}
        bus = {node: free_port() for node in self.ports}
        peers = ",".join(f"{n}@127.0.0.1:{p}@{bus[n]}" for n, p in self.ports.items())
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.processes = {}
        for node, port in self.ports.items():
            node_dir = os.path.join(data_dir, node)
            os.makedirs(node_dir, exist_ok=True)
            self.processes[node] = subprocess.Popen(
                [sys.executable, "-m", "kvorum", "server", "--node-id", node, "--port", str(port),
                 "--peers", peers, "--data-dir", node_dir, "--log-level", "warning"],
                cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    @property
    def url(self) -> str:
        first = next(n for n, p in self.processes.items() if p.poll() is None)
        return f"redis://127.0.0.1:{self.ports[first]}"

    def role(self, node: str) -> str | None:
        try:
            with redis.Redis(port=self.ports[node], socket_timeout=1, decode_responses=True) as r:
                info = r.execute_command("CLUSTER", "INFO")
        except (redis.RedisError, OSError):
            return None
        if isinstance(info, dict):
            return str(info.get("raft_role"))
        return dict(line.split(":", 1) for line in info.splitlines() if ":" in line).get("raft_role")

    def wait_leader(self, timeout_s: float = START_TIMEOUT_S) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for node, process in self.processes.items():
                if process.poll() is None and self.role(node) == "leader":
                    return node
            time.sleep(POLL_S)
        raise RuntimeError("no leader elected in time")

    def kill(self, node: str) -> None:
        self.processes[node].kill()
        self.processes[node].wait()

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
