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

from .procs import BenchError, PortPicker, Proc, stop_all, wait_until
from .redis_writer import SOCKET_TIMEOUT_S, RedisClusterWriter, RedisWriter
from .resp import resp_call

NODES = 3
SLOTS = 16384
BUS_PORT_OFFSET = 10000
START_TIMEOUT_S = 60.0
CLIENT_MODES = ("leader", "cluster")


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
                 client: str = "leader") -> None:
        assert client in CLIENT_MODES, client
        self.work_dir = os.path.join(work_dir, "kvorum")
        self.kvorum_root = kvorum_root
        self.fsync = fsync
        self.client = client
        self.ports = [ports.pick(partner_offset=BUS_PORT_OFFSET) for _ in range(NODES)]
        self.procs: list[Proc] = []
        self.leader_port = 0
        self.shared_cluster: redis.asyncio.RedisCluster | None = None
        self.writers_open = 0

    def describe(self) -> str:
        return (f"kvorum ({self.kvorum_root}), {NODES} nodes, --fsync {self.fsync}, ports "
                f"{','.join(map(str, self.ports))}, leader on {self.leader_port}, "
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
                "--log-level", "warning",
            ]  # fmt: skip
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
