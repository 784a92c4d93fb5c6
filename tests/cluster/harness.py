"""Real replicated kvorum clusters in subprocesses on free loopback ports.

`LocalCluster(tmp_path, size)` starts `python -m kvorum server --node-id nI
--peers ... --data-dir ...` per node, each with its own free client and bus
port. Nodes can be killed (SIGKILL), stopped (SIGTERM), paused (SIGSTOP),
resumed and restarted on the same ports and data directory. A node given its
own `peers` list is started with it (netproxy.py routes peer links through a
proxy that way). `add_node` makes a node that joins the running cluster
(`--join`); one whose `announce_bus_port` is set registers that bus port (a
proxy's listener) instead of the one it binds. `retire` takes a node the
cluster removed out of `nodes`, which always lists the cluster's members and
the nodes joining it. Node logs go to files in the cluster's directory,
printed by `logs()` when a test fails.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

REPO = Path(__file__).resolve().parent.parent.parent
START_TIMEOUT_S = 20.0
LEADER_TIMEOUT_S = 15.0


def free_ports(count: int) -> list[int]:
    """Distinct free loopback ports (held open together so none repeats)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class ClusterNode:
    def __init__(self, cluster: LocalCluster, node_id: str, port: int, bus_port: int):
        self.cluster = cluster
        self.id = node_id
        self.port = port
        self.bus_port = bus_port
        self.data_dir = cluster.dir / node_id
        self.log_path = cluster.dir / f"{node_id}.log"
        self.process: subprocess.Popen | None = None
        self.paused = False
        self.peers: str | None = None  # this node's own --peers list, instead of the cluster's
        self.join_via: ClusterNode | None = None  # a member to --join through, instead of --peers
        self.join_flags: tuple[str, ...] = ()
        self.announce_bus_port: int | None = None  # with join_via: the bus port peers dial, if not bus_port
        self.flags: tuple[str, ...] = ()  # this node's own extra flags (an --admin-port of its own)

    def start(self) -> None:
        assert self.process is None or self.process.poll() is not None
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        announce = ["--cluster-announce-bus-port", str(self.announce_bus_port)] if self.announce_bus_port else []
        topology = (["--join", self._join_target(), "--bus-port", str(self.bus_port), *announce, *self.join_flags]
                    if self.join_via is not None else ["--peers", self.peers or self.cluster.peers])
        cmd = [sys.executable, "-m", "kvorum", "server", "--node-id", self.id, "--port", str(self.port),
               *topology, "--data-dir", str(self.data_dir),
               "--fsync", self.cluster.fsync,
               "--log-level", "verbose", *self.cluster.extra_flags, *self.flags]
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.paused = False

    def _join_target(self) -> str:
        """host:port to --join through: the member named, or another live one once it left or died.

        A joined node restarts with --join too (joining again changes nothing),
        by which time the member it first joined through may be gone."""
        via = self.join_via
        if via not in self.cluster.nodes or not via.alive:
            via = next((n for n in self.cluster.nodes if n is not self and n.alive and not n.paused), via)
        return f"127.0.0.1:{via.port}"

    @property
    def bus_address(self) -> str:
        """host:port@busport as this node registers itself (CLUSTER MEMBER ADD)."""
        return f"127.0.0.1:{self.port}@{self.announce_bus_port or self.bus_port}"

    def wait_listening(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.id} exited with {self.process.returncode}:\n{self.log_path.read_text()}")
            try:
                with self.client(socket_timeout=1) as r:
                    r.ping()
                    return
            except (redis.ConnectionError, redis.TimeoutError):
                time.sleep(0.05)
        raise RuntimeError(f"{self.id} did not answer PING in time")

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def client(self, **kwargs) -> redis.Redis:
        """A redis-py client that never resends a request by itself (a resent INCR could apply twice)."""
        kwargs.setdefault("socket_timeout", 10)
        kwargs.setdefault("retry", Retry(NoBackoff(), 0))
        return redis.Redis(host="127.0.0.1", port=self.port, **kwargs)

    def info(self) -> dict:
        with self.client(socket_timeout=2, decode_responses=True) as r:
            text = r.execute_command("CLUSTER", "INFO")
        return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)

    def kill(self) -> None:
        if self.paused:
            self.resume()
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        if self.alive:
            if self.paused:
                self.resume()
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def pause(self) -> None:
        self.process.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)
        self.paused = False


class LocalCluster:
    def __init__(self, directory: Path, size: int = 3, fsync: str = "batch", extra_flags: tuple[str, ...] = ()):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        self.extra_flags = extra_flags
        ports = free_ports(2 * size)
        # Members and joining nodes. Rebound, never changed in place, so that client
        # threads can pick from it while a test adds or retires nodes.
        self.nodes = [ClusterNode(self, f"n{i + 1}", ports[2 * i], ports[2 * i + 1]) for i in range(size)]
        self.retired: list[ClusterNode] = []  # nodes the cluster removed (kept for their logs)
        self.peers = ",".join(f"{n.id}@127.0.0.1:{n.port}@{n.bus_port}" for n in self.nodes)

    def start(self) -> LocalCluster:
        for node in self.nodes:
            node.start()
        for node in self.nodes:
            node.wait_listening()
        self.wait_leader()
        return self

    def add_node(self, node_id: str, join_via: ClusterNode | None = None,
                 join_flags: tuple[str, ...] = ()) -> ClusterNode:
        """A new node (not started) that joins the running cluster through `join_via` (any live member)."""
        port, bus_port = free_ports(2)
        node = ClusterNode(self, node_id, port, bus_port)
        node.join_via = join_via or next(n for n in self.nodes if n.alive and not n.paused)
        node.join_flags = join_flags
        self.nodes = [*self.nodes, node]
        return node

    def retire(self, node: ClusterNode) -> None:
        """`node` left the cluster (removed, or replaced after it died): no longer one of `nodes`."""
        self.nodes = [n for n in self.nodes if n is not node]
        self.retired = [*self.retired, node]

    def members(self) -> dict[str, str]:
        """CLUSTER MEMBERS as the leader reports it: id -> "voter" | "learner"."""
        with self.wait_leader().client(socket_timeout=2, decode_responses=True) as r:
            return {row[0]: row[4] for row in r.execute_command("CLUSTER", "MEMBERS")}

    def wait_members(self, expected: dict[str, str], timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        seen = None
        while time.monotonic() < deadline:
            try:
                seen = self.members()
                if seen == expected:
                    return
            except (redis.RedisError, OSError, AssertionError):
                pass
            time.sleep(0.1)
        raise AssertionError(f"members {seen}, expected {expected}\n" + self.logs())

    def node(self, node_id: str) -> ClusterNode:
        return next(n for n in self.nodes if n.id == node_id)

    def leader(self) -> ClusterNode | None:
        """The node that says it leads, among live unpaused nodes agreeing with a majority."""
        votes: dict[str, int] = {}
        for node in self.nodes:
            if not node.alive or node.paused:
                continue
            try:
                info = node.info()
            except (redis.RedisError, OSError):
                continue
            if info.get("raft_role") == "leader":
                votes[node.id] = votes.get(node.id, 0) + 1
        if len(votes) == 1:
            return self.node(next(iter(votes)))
        return None

    def wait_leader(self, timeout_s: float = LEADER_TIMEOUT_S, exclude: str | None = None) -> ClusterNode:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            leader = self.leader()
            if leader is not None and leader.id != exclude:
                return leader
            time.sleep(0.05)
        raise AssertionError("no leader elected in time\n" + self.logs())

    def wait_applied(self, index: int, nodes: list[ClusterNode] | None = None, timeout_s: float = 15.0) -> None:
        deadline = time.monotonic() + timeout_s
        for node in nodes or [n for n in self.nodes if n.alive]:
            while True:
                try:
                    if int(node.info()["raft_applied_index"]) >= index:
                        break
                except (redis.RedisError, OSError):
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"{node.id} did not apply index {index}\n" + self.logs())
                time.sleep(0.05)

    def cluster_client(self, **kwargs):
        from redis.cluster import ClusterNode as Startup, RedisCluster

        startup = [Startup("127.0.0.1", n.port) for n in self.nodes if n.alive]
        return RedisCluster(startup_nodes=startup, **kwargs)

    def stop(self) -> None:
        for node in [*self.nodes, *self.retired]:
            if node.process is not None:
                node.stop()

    def logs(self, tail_lines: int = 40) -> str:
        out = []
        for node in sorted([*self.nodes, *self.retired], key=lambda n: (len(n.id), n.id)):
            if node.log_path.exists():
                lines = node.log_path.read_text(errors="replace").splitlines()[-tail_lines:]
                out.append(f"--- {node.id} ---\n" + "\n".join(lines))
        return "\n".join(out)
