"""`kvorum cluster up` and `kvorum cluster restart`: a local development cluster.

`cluster_up` starts one `kvorum server` process per node (node i is `n<i>`,
client port base_port + i - 1, bus port client port + 10000, data in
DATA_DIR/n<i>), prints how to reach them, and waits. The nodes write to the
launcher's own stdout and stderr.

DATA_DIR/cluster.json describes the running cluster: the launcher's pid and,
per node, its id, ports, data directory, command line, pid (null while it is
down) and last exit status. The launcher rewrites it (write, then rename)
whenever one of these changes, and clears the pids when it stops.

Restart. `request_restart` (the `cluster restart` command) drops a request
file DATA_DIR/restart-<token>.request naming the node; the launcher looks for
requests every POLL_S, stops the node if it is alive (SIGTERM, SIGKILL after
STOP_TIMEOUT_S), starts it again with the same command, and answers in
DATA_DIR/restart-<token>.reply, which the command prints. A file carries the
request, not a signal, because a signal sent to the pid in cluster.json could
reach an unrelated process once the launcher is gone and its pid reused.

Stop. Ctrl-C or SIGTERM stops the nodes in a written order: SIGTERM to every
node, wait up to STOP_TIMEOUT_S for all of them, then SIGKILL whatever is
left. If a node dies on its own, the launcher says so, with the command that
restarts it, and keeps the others running (a cluster survives a minority).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time

from kvorum.cluster.topology import TopologyError, parse_peers

STOP_TIMEOUT_S = 10.0
POLL_S = 0.25
# How long `cluster restart` waits for the launcher's answer: a stop that needs
# the SIGKILL, plus a margin for the launcher's poll and the new process.
RESTART_REPLY_TIMEOUT_S = STOP_TIMEOUT_S + 5.0
STATE_FILE = "cluster.json"
BUS_PORT_OFFSET = 10000


class LauncherError(Exception):
    """A restart the launcher cannot do, or no launcher to ask: the message says which."""


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


def restart_hint(node_id: str, data_dir: str) -> str:
    return f"kvorum cluster restart {node_id} --data-dir {data_dir}"


def _write_json(path: str, value: dict) -> None:
    """Replace `path` whole, so a reader never sees half a file."""
    partial = path + ".tmp"
    with open(partial, "w") as f:
        json.dump(value, f, indent=2)
        f.write("\n")
    os.replace(partial, path)


class _Launcher:
    """The nodes of one `cluster up`, their processes, and the state file that describes them."""

    def __init__(self, count: int, base_port: int, data_dir: str, fsync: str):
        self.data_dir = data_dir
        self.peers = peers_spec(count, base_port)
        self.nodes: dict[str, dict] = {}
        self.procs: dict[str, subprocess.Popen] = {}
        for i in range(1, count + 1):
            node_id, port = f"n{i}", base_port + i - 1
            node_dir = os.path.join(data_dir, node_id)
            self.nodes[node_id] = {
                "id": node_id, "port": port, "bus_port": port + BUS_PORT_OFFSET, "data_dir": node_dir,
                "command": node_command(node_id, port, self.peers, node_dir, fsync),
                "pid": None, "exit_status": None,
            }

    def save(self, running: bool = True) -> None:
        state = {"launcher_pid": os.getpid() if running else None, "peers": self.peers,
                 "nodes": list(self.nodes.values())}
        _write_json(os.path.join(self.data_dir, STATE_FILE), state)

    def start(self, node_id: str) -> int:
        node = self.nodes[node_id]
        os.makedirs(node["data_dir"], exist_ok=True)
        proc = self.procs[node_id] = subprocess.Popen(node["command"])
        node["pid"], node["exit_status"] = proc.pid, None
        return proc.pid

    def reap(self) -> None:
        """Report each node that exited on its own since the last call, once."""
        changed = False
        for node_id, proc in self.procs.items():
            if proc.returncode is None and proc.poll() is not None:
                self.nodes[node_id].update(pid=None, exit_status=proc.returncode)
                changed = True
                print(f"node {node_id} exited with status {proc.returncode}; restart it with: "
                      f"{restart_hint(node_id, self.data_dir)}", flush=True)
        if changed:
            self.save()

    def restart(self, node_id: str) -> str:
        if node_id not in self.nodes:
            raise LauncherError(f"no node {node_id} in this cluster ({', '.join(self.nodes)})")
        proc = self.procs[node_id]
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT_S)
                before = f"stopped (pid {proc.pid})"
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                before = f"killed (pid {proc.pid}) after {STOP_TIMEOUT_S:.0f}s without stopping"
        else:
            before = f"was down (status {proc.returncode})"
        self.nodes[node_id].update(pid=None, exit_status=proc.returncode)
        try:
            pid = self.start(node_id)
        except OSError as exc:
            raise LauncherError(f"node {node_id} {before}; cannot start it again: {exc}") from None
        finally:
            self.save()
        return f"node {node_id} {before}; started again, pid {pid}"

    def serve_requests(self) -> None:
        """Answer every pending restart request; each is removed before it is acted on, so it runs once."""
        requests = sorted(name for name in os.listdir(self.data_dir)
                          if name.startswith("restart-") and name.endswith(".request"))
        for name in requests:
            path = os.path.join(self.data_dir, name)
            try:
                with open(path) as f:
                    node_id = json.load(f)["node"]
                os.remove(path)
            except (OSError, ValueError, KeyError, TypeError):
                continue
            try:
                reply = {"ok": True, "message": self.restart(node_id)}
            except LauncherError as exc:
                reply = {"ok": False, "message": str(exc)}
            print(reply["message"], flush=True)
            _write_json(path[: -len(".request")] + ".reply", reply)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for node_id, proc in self.procs.items():
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                print(f"node {node_id} did not stop within {STOP_TIMEOUT_S:.0f}s; killing it", flush=True)
                proc.kill()
                proc.wait()
            self.nodes[node_id].update(pid=None, exit_status=proc.returncode)
        self.save(running=False)


def cluster_up(count: int, base_port: int, data_dir: str, fsync: str) -> int:
    os.makedirs(data_dir, exist_ok=True)
    launcher = _Launcher(count, base_port, data_dir, fsync)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    try:
        for node_id in launcher.nodes:
            launcher.start(node_id)
        launcher.save()
        print(f"kvorum cluster of {count}: {launcher.peers}", flush=True)
        print(f"  redis-cli -c -p {base_port}    kvorum cluster status --seed 127.0.0.1:{base_port}", flush=True)
        print(f"  restart a node: {restart_hint('nI', data_dir)}", flush=True)
        while not stop:
            time.sleep(POLL_S)
            launcher.reap()
            launcher.serve_requests()
    except KeyboardInterrupt:
        pass
    finally:
        launcher.stop_all()
    return 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0 delivers nothing: it only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, as another user's process
    return True


def request_restart(data_dir: str, node_id: str) -> str:
    """Ask the `cluster up` running from `data_dir` to restart `node_id`; its answer."""
    try:
        with open(os.path.join(data_dir, STATE_FILE)) as f:
            state = json.load(f)
    except (OSError, ValueError) as exc:
        raise LauncherError(f"no cluster started by `kvorum cluster up` in {data_dir} ({exc})") from None
    ids = [node["id"] for node in state.get("nodes", [])]
    if node_id not in ids:
        raise LauncherError(f"no node {node_id} in the cluster of {data_dir} ({', '.join(ids)})")
    launcher_pid = state.get("launcher_pid")
    if not launcher_pid or not _alive(launcher_pid):
        raise LauncherError(f"the `kvorum cluster up` of {data_dir} is not running")
    stem = os.path.join(data_dir, f"restart-{secrets.token_hex(8)}")
    _write_json(stem + ".request", {"node": node_id})
    deadline = time.monotonic() + RESTART_REPLY_TIMEOUT_S
    while time.monotonic() < deadline and _alive(launcher_pid):
        try:
            with open(stem + ".reply") as f:
                reply = json.load(f)
        except FileNotFoundError:
            time.sleep(POLL_S / 2)
            continue
        os.remove(stem + ".reply")
        if not reply.get("ok"):
            raise LauncherError(reply.get("message", "the launcher refused the restart"))
        return reply["message"]
    try:
        os.remove(stem + ".request")
    except FileNotFoundError:
        pass
    raise LauncherError(f"the `kvorum cluster up` of {data_dir} did not answer within "
                        f"{RESTART_REPLY_TIMEOUT_S:.0f}s")
