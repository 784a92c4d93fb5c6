"""A 3-member etcd cluster on loopback, written to through its HTTP/JSON gateway.

etcd (Debian's etcd-server) syncs its write-ahead log with fdatasync before it
acknowledges, on every member, and has no switch to turn that off: "fsync on"
is its only mode. Each member gets its own data directory, client port and
peer port; the cluster is formed with --initial-cluster.

Writes go as `POST <prefix>/kv/put` with base64 key and value, the gRPC
gateway's JSON form of the Put RPC, where <prefix> is /v3 on etcd 3.4 and
later (/v3beta on 3.3). Every writer sends to the leader, found with
`<prefix>/maintenance/status`: etcd's own clients balance over all members and
followers forward writes to the leader, so this is etcd's best case, and the
same choice kvorum's clients make (-MOVED sends writes to the leader).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import urllib.error
import urllib.request

from .http1 import HttpConnection, HttpError
from .load import WriteError
from .node_view import HEALTHY_LAG_MAX, NodeView
from .procs import BenchError, PortPicker, Proc, stop_all, wait_until

MEMBERS = 3
START_TIMEOUT_S = 30.0
HTTP_TIMEOUT_S = 2.0
STOP_TIMEOUT_S = 1.0
GATEWAY_PREFIXES = ("/v3", "/v3beta")


def _post_json(port: int, path: str, payload: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, {}


class EtcdWriter:
    def __init__(self, port: int, put_path: str) -> None:
        self.conn = HttpConnection("127.0.0.1", port)
        self.put_path = put_path
        self.value_b64: bytes = b""
        self.value: bytes = b""

    async def write(self, key: bytes, value: bytes) -> None:
        if value is not self.value:
            self.value, self.value_b64 = value, base64.b64encode(value)
        body = b'{"key":"' + base64.b64encode(key) + b'","value":"' + self.value_b64 + b'"}'
        try:
            status, reply = await self.conn.post(self.put_path, body)
        except (OSError, EOFError, HttpError) as e:
            raise WriteError(f"etcd: {type(e).__name__}: {e}") from e
        if status != 200:
            raise WriteError(f"etcd: HTTP {status}: {reply[:200]!r}")

    async def close(self) -> None:
        await self.conn.close()


class EtcdCluster:
    name = "etcd"

    def __init__(self, work_dir: str, ports: PortPicker, binary: str = "etcd") -> None:
        self.work_dir = os.path.join(work_dir, "etcd")
        self.binary = binary
        self.client_ports = [ports.pick() for _ in range(MEMBERS)]
        self.peer_ports = [ports.pick() for _ in range(MEMBERS)]
        self.procs: list[Proc] = []
        self.prefix = ""
        self.leader_port = 0
        self.version = ""
        self.member_ids: list[str] = []  # etcd's member id of each member, by index

    def describe_servers(self) -> str:
        return (f"etcd {self.version}, {MEMBERS} members (defaults: heartbeat 100 ms, election timeout "
                f"1000 ms), client ports {','.join(map(str, self.client_ports))}")

    def describe(self) -> str:
        return f"{self.describe_servers()}, leader on {self.leader_port}, gateway {self.prefix}/kv/put"

    def check_installed(self) -> None:
        if shutil.which(self.binary) is None:
            raise BenchError(f"{self.binary} not found (Debian: apt-get install etcd-server etcd-client)")
        out = subprocess.run([self.binary, "--version"], capture_output=True, text=True, timeout=10).stdout
        self.version = out.split("\n")[0].split(":")[-1].strip() or "unknown"

    def start(self) -> None:
        self.check_installed()
        os.makedirs(self.work_dir)
        names = [f"e{i + 1}" for i in range(MEMBERS)]
        initial = ",".join(f"{n}=http://127.0.0.1:{p}" for n, p in zip(names, self.peer_ports))
        for name, client_port, peer_port in zip(names, self.client_ports, self.peer_ports):
            client_url = f"http://127.0.0.1:{client_port}"
            peer_url = f"http://127.0.0.1:{peer_port}"
            argv = [
                self.binary,
                "--name", name,
                "--data-dir", os.path.join(self.work_dir, name),
                "--listen-client-urls", client_url,
                "--advertise-client-urls", client_url,
                "--listen-peer-urls", peer_url,
                "--initial-advertise-peer-urls", peer_url,
                "--initial-cluster", initial,
                "--initial-cluster-state", "new",
                "--initial-cluster-token", "cluster_compare",
                "--logger", "zap",
                "--log-level", "warn",
            ]  # fmt: skip
            proc = Proc(f"etcd {name}", argv, os.path.join(self.work_dir, f"{name}.log"), cwd=self.work_dir)
            self.procs.append(proc)
            proc.start()
        self.prefix = wait_until(self._gateway_prefix, "etcd gateway", self.procs, START_TIMEOUT_S)
        self.leader_port = wait_until(self._leader_port, "etcd leader", self.procs, START_TIMEOUT_S)
        self.member_ids = [self._status(i)["header"]["member_id"] for i in range(MEMBERS)]

    def _gateway_prefix(self) -> str | None:
        for prefix in GATEWAY_PREFIXES:
            status, _ = _post_json(self.client_ports[0], f"{prefix}/maintenance/status", {})
            if status == 200:
                return prefix
        return None

    def _leader_port(self) -> int | None:
        for port in self.client_ports:
            status, reply = _post_json(port, f"{self.prefix}/maintenance/status", {})
            leader = reply.get("leader")
            if status == 200 and leader and leader != "0" and reply["header"]["member_id"] == leader:
                status, _ = _post_json(port, f"{self.prefix}/kv/put",
                                       {"key": base64.b64encode(b"ready").decode(), "value": ""})
                return port if status == 200 else None
        return None

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def check_alive(self) -> None:
        for proc in self.procs:
            proc.check_alive()

    # Single members: bench/failover kills the leader, watches the others elect
    # one, restarts the killed member and waits until it has caught up.

    def _status(self, index: int) -> dict:
        status, reply = _post_json(self.client_ports[index], f"{self.prefix}/maintenance/status", {})
        if status != 200:
            raise ValueError(f"etcd e{index + 1} status: HTTP {status}")
        return reply

    def view(self, index: int) -> NodeView:
        reply = self._status(index)
        leader = reply.get("leader", "0")
        return NodeView(index, int(reply.get("raftTerm", 0)),
                        self.member_ids.index(leader) if leader in self.member_ids else None)

    def leader_index(self) -> int | None:
        """The one live member that says it leads, or None."""
        leaders = [i for i in range(MEMBERS) if self.procs[i].alive() and self.view(i).leads]
        return leaders[0] if len(leaders) == 1 else None

    def healthy(self) -> bool:
        """Every member runs and follows one leader, and none trails the others' raft index by much."""
        if not all(proc.alive() for proc in self.procs):
            return False
        replies = [self._status(i) for i in range(MEMBERS)]
        leaders = {r.get("leader", "0") for r in replies}
        if len(leaders) != 1 or leaders & {"0", None}:
            return False
        indexes = [int(r.get("raftIndex", 0)) for r in replies]
        return max(indexes) - min(indexes) <= HEALTHY_LAG_MAX

    def kill(self, index: int) -> None:
        self.procs[index].kill()

    def restart(self, index: int) -> None:
        self.procs[index].restart()

    def endpoints(self) -> list[int]:
        """Client ports by index."""
        return list(self.client_ports)

    async def open_writer(self) -> EtcdWriter:
        return EtcdWriter(self.leader_port, f"{self.prefix}/kv/put")

    def stop(self) -> None:
        # A member told to stop while it leads tries to hand leadership over
        # first, and waits seconds for followers that are stopping too; the
        # data is thrown away, so it is not waited for.
        stop_all(self.procs, STOP_TIMEOUT_S)
