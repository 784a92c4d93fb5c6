"""Three PySyncObj replicas on loopback (pysyncobj_node.py), written to through redis-py.

Every writer connects to the leader (the replica answering ROLE with +leader):
PySyncObj forwards a follower's command to the leader itself, but sending to
the leader is its best case and the same choice made for etcd and kvorum.
"""

from __future__ import annotations

import os
import sys

from .procs import BenchError, PortPicker, Proc, stop_all, wait_until
from .redis_writer import RedisWriter
from .resp import resp_call

REPLICAS = 3
START_TIMEOUT_S = 30.0
NODE_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pysyncobj_node.py")


class PySyncObjCluster:
    def __init__(self, work_dir: str, ports: PortPicker, name: str = "pysyncobj", sync: str = "msync",
                 batch: str = "on") -> None:
        self.name = name
        self.batch = batch
        self.work_dir = os.path.join(work_dir, name)
        self.sync = sync
        self.raft_ports = [ports.pick() for _ in range(REPLICAS)]
        self.resp_ports = [ports.pick() for _ in range(REPLICAS)]
        self.procs: list[Proc] = []
        self.leader_port = 0
        self.version = ""

    def describe(self) -> str:
        journal = ("journal msync'd before each send (group commit)" if self.sync == "msync"
                   else "journal as shipped (mmap, never synced)")
        return (f"PySyncObj {self.version}, {REPLICAS} replicas, ReplDict, appendEntriesUseBatch="
                f"{self.batch == 'on'}, {journal}, RESP ports "
                f"{','.join(map(str, self.resp_ports))}, leader on {self.leader_port}")

    def check_installed(self) -> None:
        try:
            from pysyncobj.version import VERSION
        except ImportError as e:
            raise BenchError("pysyncobj is not installed (pip install pysyncobj)") from e
        self.version = VERSION

    def start(self) -> None:
        self.check_installed()
        os.makedirs(self.work_dir)
        addresses = [f"127.0.0.1:{p}" for p in self.raft_ports]
        for i in range(REPLICAS):
            name = f"p{i + 1}"
            argv = [
                sys.executable, NODE_SCRIPT,
                "--raft", addresses[i],
                "--partners", ",".join(a for j, a in enumerate(addresses) if j != i),
                "--port", str(self.resp_ports[i]),
                "--journal", os.path.join(self.work_dir, f"{name}.journal"),
                "--sync", self.sync,
                "--batch", self.batch,
            ]  # fmt: skip
            proc = Proc(f"pysyncobj {name}", argv, os.path.join(self.work_dir, f"{name}.log"),
                        cwd=self.work_dir)
            self.procs.append(proc)
            proc.start()
        self.leader_port = wait_until(self._leader_port, "PySyncObj leader", self.procs, START_TIMEOUT_S)

    def _leader_port(self) -> int | None:
        for port in self.resp_ports:
            if resp_call(port, b"ROLE") == b"leader":
                return port if resp_call(port, b"SET", b"ready", b"") == b"OK" else None
        return None

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def check_alive(self) -> None:
        for proc in self.procs:
            proc.check_alive()

    async def open_writer(self) -> RedisWriter:
        return RedisWriter(self.name, "127.0.0.1", self.leader_port)

    def stop(self) -> None:
        stop_all(self.procs)
