"""A 3-node kvorum cluster on loopback, written to through redis-py's asyncio client.

Each node is `python -m kvorum server --node-id nI --port P --data-dir DIR
--peers n1@127.0.0.1:P1,... --fsync MODE`, run from the kvorum checkout being
measured, with its peer traffic on P + 10000 (the server's default), so ports
are picked in pairs. The cluster is ready when CLUSTER SLOTS names a primary
for all 16384 slots and a SET sent there is acknowledged.

Two client set-ups (--kvorum-client):
- leader (default): every writer is a redis.asyncio.Redis with one connection
  to the leader found with CLUSTER SLOTS, the same client code that drives the
  PySyncObj front end. It needs one primary for all slots (one Raft group);
- cluster: one redis.asyncio.RedisCluster shared by all writers, routing each
  key by its slot and following -MOVED, as an application would; it costs more
  client CPU per write.
"""

from __future__ import annotations

import os
import sys

import redis.asyncio

from .node_view import HEALTHY_LAG_MAX, NodeView
from .procs import BenchError, PortPicker, Proc, stop_all, wait_until
from .redis_writer import SOCKET_TIMEOUT_S, RedisClusterWriter, RedisWriter
from .resp import resp_call

NODES = 3
SLOTS = 16384
BUS_PORT_OFFSET = 10000
START_TIMEOUT_S = 60.0
CLIENT_MODES = ("leader", "cluster")


def cluster_info(port: int) -> dict[str, str]:
    """CLUSTER INFO of the node on `port` as a dict."""
    reply = resp_call(port, b"CLUSTER", b"INFO")
    if not isinstance(reply, bytes):
        raise ValueError(f"CLUSTER INFO on port {port} answered {reply!r}")
    lines = reply.decode().splitlines()
    return dict(line.split(":", 1) for line in lines if ":" in line)


def primaries(slots_reply) -> dict[int, int]:
    """Map each covered slot range start to its primary's port, from a CLUSTER SLOTS reply."""
    if not isinstance(slots_reply, list):
        return {}
    covered = 0
    result = {}
    for entry in slots_reply:
        start, end, primary = entry[0], entry[1], entry[2]
        covered += end - start + 1
        result[start] = int(primary[1])
    return result if covered == SLOTS else {}


class KvorumCluster:
    name = "kvorum"

    def __init__(self, work_dir: str, ports: PortPicker, kvorum_root: str, fsync: str = "batch",
                 client: str = "leader", log_level: str = "warning", config_file: str | None = None) -> None:
        assert client in CLIENT_MODES, client
        self.work_dir = os.path.join(work_dir, "kvorum")
        self.kvorum_root = kvorum_root
        self.fsync = fsync
        self.client = client
        self.log_level = log_level
        self.config_file = config_file  # a YAML file given to every node with --config
        self.ports = [ports.pick(partner_offset=BUS_PORT_OFFSET) for _ in range(NODES)]
        self.procs: list[Proc] = []
        self.leader_port = 0
        self.shared_cluster: redis.asyncio.RedisCluster | None = None
        self.writers_open = 0

    def describe_servers(self) -> str:
        config = f", --config {self.config_file}" if self.config_file else ""
        return (f"kvorum ({self.kvorum_root}), {NODES} nodes, --fsync {self.fsync}{config}, ports "
                f"{','.join(map(str, self.ports))}")

    def describe(self) -> str:
        return (f"{self.describe_servers()}, leader on {self.leader_port}, "
                f"client redis-py {redis.__version__} ({self.client})")

    def check_installed(self) -> None:
        if not os.path.isdir(os.path.join(self.kvorum_root, "kvorum")):
            raise BenchError(f"no kvorum package in {self.kvorum_root}")

    def start(self) -> None:
        self.check_installed()
        os.makedirs(self.work_dir)
        peers = ",".join(f"n{i + 1}@127.0.0.1:{p}" for i, p in enumerate(self.ports))
        env = dict(os.environ)
        env["PYTHONPATH"] = self.kvorum_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        for i, port in enumerate(self.ports):
            name = f"n{i + 1}"
            argv = [
                sys.executable, "-m", "kvorum", "server",
                "--node-id", name,
                "--port", str(port),
                "--data-dir", os.path.join(self.work_dir, name),
                "--peers", peers,
                "--fsync", self.fsync,
                "--log-level", self.log_level,
            ]  # fmt: skip
            if self.config_file:
                argv += ["--config", self.config_file]
            # `python -m` puts the working directory first on sys.path, so it
            # chooses which kvorum runs.
            proc = Proc(f"kvorum {name}", argv, os.path.join(self.work_dir, f"{name}.log"),
                        cwd=self.kvorum_root, env=env)
            self.procs.append(proc)
            proc.start()
        self.leader_port = wait_until(self._leader_port, "kvorum leader", self.procs, START_TIMEOUT_S)

    def _leader_port(self) -> int | None:
        for port in self.ports:
            ranges = primaries(resp_call(port, b"CLUSTER", b"SLOTS"))
            if not ranges:
                continue
            leaders = set(ranges.values())
            if len(leaders) > 1 and self.client == "leader":
                raise BenchError(f"kvorum has {len(leaders)} primaries; use --kvorum-client cluster")
            leader = next(iter(leaders))
            return leader if resp_call(leader, b"SET", b"ready", b"") == b"OK" else None
        return None

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def check_alive(self) -> None:
        for proc in self.procs:
            proc.check_alive()

    # Single nodes: bench/failover kills the leader, watches the others elect
    # one, restarts the killed node and waits until it has caught up.

    def node_ids(self) -> list[str]:
        return [f"n{i + 1}" for i in range(NODES)]

    def view(self, index: int) -> NodeView:
        info = cluster_info(self.ports[index])
        leader = info.get("raft_leader", "-")
        ids = self.node_ids()
        return NodeView(index, int(info["raft_term"]), ids.index(leader) if leader in ids else None)

    def leader_index(self) -> int | None:
        """The one live node that says it leads, or None."""
        leaders = [i for i in range(NODES) if self.procs[i].alive() and self.view(i).leads]
        return leaders[0] if len(leaders) == 1 else None

    def healthy(self) -> bool:
        """Every node runs and follows one leader, which replicates to each with little lag."""
        if not all(proc.alive() for proc in self.procs):
            return False
        views = [self.view(i) for i in range(NODES)]
        leader = views[0].leader
        if leader is None or any(v.leader != leader for v in views):
            return False
        info = cluster_info(self.ports[leader])
        for node_id in self.node_ids():
            fields = dict(kv.split("=", 1) for kv in info.get(f"raft_peer_{node_id}", "").split(",") if "=" in kv)
            if (fields.get("state") != "replicate" or fields.get("active") != "1"
                    or int(fields.get("lag", HEALTHY_LAG_MAX + 1)) > HEALTHY_LAG_MAX):
                return False
        return True

    def kill(self, index: int) -> None:
        self.procs[index].kill()

    def restart(self, index: int) -> None:
        self.procs[index].restart()

    def endpoints(self) -> list[int]:
        """Client ports by index."""
        return list(self.ports)

    async def open_writer(self):
        if self.client == "leader":
            return RedisWriter(self.name, "127.0.0.1", self.leader_port)
        if self.shared_cluster is None:
            self.shared_cluster = redis.asyncio.RedisCluster(
                host="127.0.0.1", port=self.leader_port, socket_timeout=SOCKET_TIMEOUT_S)
            await self.shared_cluster.initialize()
        self.writers_open += 1
        return RedisClusterWriter(self.name, self.shared_cluster, self._close_writer)

    async def _close_writer(self) -> None:
        self.writers_open -= 1
        if self.writers_open == 0 and self.shared_cluster is not None:
            cluster, self.shared_cluster = self.shared_cluster, None
            await cluster.aclose()

    def stop(self) -> None:
        stop_all(self.procs)
