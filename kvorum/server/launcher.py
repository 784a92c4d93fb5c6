"""`kvorum cluster up`: a local development cluster.

`cluster_up` starts one `kvorum server` process per node (node i is `n<i>`,
client port base_port + i - 1, bus port client port + 10000, data in
DATA_DIR/n<i>), prints how to reach them, and waits. Ctrl-C or SIGTERM stops
them in a written order: SIGTERM to every node, wait up to STOP_TIMEOUT_S for
all of them, then SIGKILL whatever is left. If a node dies on its own, the
launcher says so and keeps the others running (a cluster survives a minority).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from kvorum.cluster.topology import TopologyError, parse_peers

STOP_TIMEOUT_S = 10.0
POLL_S = 0.5


def check_replicated(settings, port_given: bool) -> None:
    """Raise TopologyError unless the replicated settings hang together.

    Without an explicit port, the node listens on its own port from --peers."""
    if not settings.node_id:
        raise TopologyError("--peers needs --node-id")
    if not settings.data_dir:
        raise TopologyError("--peers needs --data-dir (the log must survive a restart)")
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
    print(f"  redis-cli -c -p {base_port}    kvorum cluster status --seed 127.0.0.1:{base_port}", flush=True)
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
