"""`kvorum cluster up` and `kvorum cluster status`: a local development cluster.

`cluster_up` starts one `kvorum server` process per node (node i is `n<i>`,
client port base_port + i - 1, bus port client port + 10000, data in
DATA_DIR/n<i>), prints how to reach them, and waits. Ctrl-C or SIGTERM stops
them in a written order: SIGTERM to every node, wait up to STOP_TIMEOUT_S for
all of them, then SIGKILL whatever is left. If a node dies on its own, the
launcher says so and keeps the others running (a cluster survives a minority).

`status_table` asks each node for CLUSTER INFO and prints one line per node.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import redis

from kvorum.cluster.topology import TopologyError, parse_peers

STOP_TIMEOUT_S = 10.0
POLL_S = 0.5
STATUS_TIMEOUT_S = 2.0


def check_replicated(settings, port_given: bool) -> None:
    """Raise TopologyError unless the replicated settings hang together.

    Without an explicit port, the node listens on its own port from --peers."""
    mode = "--join" if settings.join else "--peers"
    if not settings.node_id:
        raise TopologyError(f"{mode} needs --node-id")
    if not settings.data_dir:
        raise TopologyError(f"{mode} needs --data-dir (the log must survive a restart)")
    if settings.join:
        if settings.peers:
            raise TopologyError("give either --peers (a new cluster) or --join (a running one), not both")
        return
    nodes = parse_peers(settings.peers, settings.bus_port, settings.node_id)
    me = nodes[settings.node_id]
    if not port_given:
        settings.port = me.port
    elif me.port != settings.port:
        raise TopologyError(f"--port {settings.port} differs from {settings.node_id}'s port {me.port} in --peers")


def peers_spec(count: int, base_port: int, host: str = "127.0.0.1") -> str:
    return ",".join(f"n{i}@{host}:{base_port + i - 1}" for i in range(1, count + 1))


def node_command(node_id: str, port: int, peers: str, data_dir: str, fsync: str) -> list[str]:
    return [sys.executable, "-m", "kvorum", "server", "--node-id", node_id, "--port", str(port),
            "--peers", peers, "--data-dir", data_dir, "--fsync", fsync]


def cluster_up(count: int, base_port: int, data_dir: str, fsync: str) -> int:
    peers = peers_spec(count, base_port)
    procs: dict[str, subprocess.Popen] = {}
    for i in range(1, count + 1):
        node_id = f"n{i}"
        node_dir = os.path.join(data_dir, node_id)
        os.makedirs(node_dir, exist_ok=True)
        procs[node_id] = subprocess.Popen(node_command(node_id, base_port + i - 1, peers, node_dir, fsync))
    print(f"kvorum cluster of {count}: {peers}", flush=True)
    print(f"  redis-cli -c -p {base_port}    kvorum cluster status --nodes {count} --base-port {base_port}",
          flush=True)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    try:
        while not stop:
            time.sleep(POLL_S)
            for node_id, proc in procs.items():
                if proc.returncode is None and proc.poll() is not None:
                    print(f"node {node_id} exited with status {proc.returncode}", flush=True)
    except KeyboardInterrupt:
        pass
    return stop_all(procs)


def stop_all(procs: dict[str, subprocess.Popen]) -> int:
    for proc in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for node_id, proc in procs.items():
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"node {node_id} did not stop within {STOP_TIMEOUT_S:.0f}s; killing it", flush=True)
            proc.kill()
            proc.wait()
    return 0


def status_addresses(count: int, base_port: int, host: str, peers: str | None) -> list[tuple[str, str, int]]:
    if peers:
        return [(n.id, n.host, n.port) for n in parse_peers(peers).values()]
    return [(f"n{i}", host, base_port + i - 1) for i in range(1, count + 1)]


def node_info(host: str, port: int) -> dict[str, str]:
    conn = redis.Redis(host=host, port=port, socket_timeout=STATUS_TIMEOUT_S,
                       socket_connect_timeout=STATUS_TIMEOUT_S, decode_responses=True)
    try:
        text = conn.execute_command("CLUSTER", "INFO")
    finally:
        conn.close()
    if isinstance(text, dict):
        return {k: str(v) for k, v in text.items()}
    return dict(line.split(":", 1) for line in str(text).splitlines() if ":" in line)


def status_table(addresses: list[tuple[str, str, int]]) -> str:
    rows = [("node", "address", "role", "term", "leader", "commit", "applied", "last", "lag")]
    infos = {}
    for node_id, host, port in addresses:
        try:
            infos[node_id] = node_info(host, port)
        except (redis.RedisError, OSError) as exc:
            infos[node_id] = {"raft_role": f"down ({type(exc).__name__})"}
    leader_last = max((int(i.get("raft_last_index", 0)) for i in infos.values()
                       if i.get("raft_role") == "leader"), default=None)
    for node_id, host, port in addresses:
        info = infos[node_id]
        applied = info.get("raft_applied_index", "-")
        lag = "-"
        if leader_last is not None and applied != "-":
            lag = str(max(0, leader_last - int(applied)))
        rows.append((node_id, f"{host}:{port}", info.get("raft_role", "?"), info.get("raft_term", "-"),
                     info.get("raft_leader", "-"), info.get("raft_commit_index", "-"), applied,
                     info.get("raft_last_index", "-"), lag))
    widths = [max(len(str(row[c])) for row in rows) for c in range(len(rows[0]))]
    return "\n".join("  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip() for row in rows)
