"""The fault suites' clients and their end-of-run checks, shared by every real-process fault test.

`Workload` runs CLIENTS recording workers and one pipelining worker in threads
against a `LocalCluster`, while a test injects faults; `Workload.verify` then
reads every key once more, checks the recorded history for linearizability
and the pipeline's connection order, and returns a one-line summary.

A recording worker does one logical operation at a time on one of a few keys:
GET, SET of a fresh integer, or INCR. An op may be sent several times, but
only after answers that prove it did not happen (-MOVED, -CLUSTERDOWN,
-TRYAGAIN, a refused dial); a timeout, a lost connection or -TIMEOUT makes its
outcome unknown, and that client continues under a new name (an unknown op
stays concurrent with everything after it). `Worker` keeps one plain redis-py
connection and follows -MOVED itself; `ClusterWorker` uses a RedisCluster
client with its own retries switched off (it still follows -MOVED and
-TRYAGAIN, which prove nothing happened). Every KEY_EPOCH_S the workers move
to fresh keys (a1, b1, ... then a2, ...): keys are independent, so the checker
searches many short histories instead of a few long ones whose unknown
outcomes would make the search exponential.

The final read of every key is itself a linearizable GET in the history, which
the checker holds to every acknowledged write: a lost acknowledged write makes
the history non-linearizable.

`PipelineWorker` pipelines `SET q n; GET p; SET p <fresh>; GET p` on keys of
its own and checks the order Redis gives one connection: whatever the
faults, a pipeline answered in full reads the old value before its SET and its
own value after. Linearizability alone allows both reads to see the SET (the
three overlap).

`Writer` SETs w:<i> = i through a RedisCluster client and remembers every
acknowledged i, for `all_acked_present`; `keyspaces_equal` compares what
every member holds once each applied the leader's commit index.
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.exceptions import ClusterDownError, ClusterError, RedisClusterException, TryAgainError
from redis.retry import Retry

from kvorum.server.cluster_status import Member, render, survey
from kvorum.sim.history import Recorder, dump_jsonl
from kvorum.sim.linearizability import check

CLIENTS = 4
KEYS = ("a", "b", "c", "d")
KEY_EPOCH_S = 5.0
OP_SOCKET_TIMEOUT_S = 1.5
OP_RETRY_S_MAX = 5.0  # an op refused for this long is recorded as failed (it never happened)
REDIRECT_PAUSE_S = 0.02
FINAL_READER = 99  # the index of the worker that reads every key at the end
OK_OPS_MIN = 50
PIPELINES_MIN = 10


class Worker(threading.Thread):
    """Records GET / SET / INCR ops over one plain connection, following -MOVED itself."""

    def __init__(self, index: int, cluster, recorder: Recorder, lock: threading.Lock, stop: threading.Event,
                 start_s: float = 0.0):
        super().__init__(daemon=True)
        self.start_s = start_s
        self.index = index
        self.cluster = cluster
        self.recorder = recorder
        self.lock = lock
        self.stop_event = stop
        self.rng = random.Random(index)
        self.generation = 0
        self.port = cluster.nodes[index % len(cluster.nodes)].port
        self.conn: redis.Redis | None = None
        self.seq = 0
        self.counts = {"ok": 0, "unknown": 0, "fail": 0}
        self.last_refusal = ""

    @property
    def name(self) -> str:
        return f"c{self.index}.{self.generation}"

    def connect(self, port: int) -> redis.Redis:
        if self.conn is None or self.port != port:
            self.close()
            self.port = port
            self.conn = redis.Redis(host="127.0.0.1", port=port, socket_timeout=OP_SOCKET_TIMEOUT_S,
                                    socket_connect_timeout=OP_SOCKET_TIMEOUT_S, retry=None,
                                    single_connection_client=True, protocol=2)
        self.conn.connection.connect()  # a refused dial sends nothing: the op is simply retried
        return self.conn

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:
                pass
            self.conn = None

    def run(self) -> None:
        while not self.stop_event.is_set():
            epoch = int((time.monotonic() - self.start_s) // KEY_EPOCH_S)
            self.one_op(f"{self.rng.choice(KEYS)}{epoch}", self.rng.choice(("get", "put", "incr")))
        self.close()

    def one_op(self, key: str, kind: str) -> str:
        self.seq += 1
        value = self.index * 1_000_000 + self.seq
        args = {"get": (), "put": (value,), "incr": (1,)}[kind]
        command = {"get": ("GET", key), "put": ("SET", key, value), "incr": ("INCR", key)}[kind]
        with self.lock:
            op = self.recorder.invoke(self.name, kind, key, args, time.monotonic())
        status, result = self.execute(kind, command, time.monotonic() + OP_RETRY_S_MAX)
        with self.lock:
            if status == "ok":
                self.recorder.ok(op, result, time.monotonic())
            elif status == "fail":
                self.recorder.fail(op, time.monotonic())
            else:
                self.recorder.unknown(op)
                self.generation += 1
        self.counts[status] += 1
        return status

    def random_port(self) -> int:
        return self.rng.choice(self.cluster.nodes).port

    def execute(self, kind: str, command: tuple, deadline_s: float) -> tuple[str, object]:
        """Send `command` until it is answered or proves unknown: (status, result)."""
        while time.monotonic() < deadline_s:
            try:
                conn = self.connect(self.port)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                self.last_refusal = f"cannot connect to port {self.port}: {exc}"
                self.close()
                self.port = self.random_port()
                time.sleep(REDIRECT_PAUSE_S)
                continue
            try:
                reply = conn.execute_command(*command)
            except redis.exceptions.MovedError as moved:
                self.last_refusal = f"MOVED {moved}"
                self.close()
                self.port = int(str(moved).split()[-1].rsplit(":", 1)[1])
                time.sleep(REDIRECT_PAUSE_S)
                continue
            except (redis.ConnectionError, redis.TimeoutError):
                self.close()
                self.port = self.random_port()
                return "unknown", None
            except redis.ResponseError as exc:
                if isinstance(exc, (ClusterDownError, TryAgainError)):
                    self.last_refusal = f"{type(exc).__name__} {exc} (port {self.port})"
                    self.close()
                    self.port = self.random_port()
                    time.sleep(REDIRECT_PAUSE_S)
                    continue
                if kind == "incr" and "not an integer" in str(exc):
                    return "ok", "ERR"
                return "unknown", None
            return "ok", {"get": reply, "put": None, "incr": reply}[kind]
        return "fail", None


class ClusterWorker(Worker):
    """Records the same ops through a RedisCluster client (no retries of its own after a lost connection)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.rc = None

    def client(self):
        if self.rc is None:
            self.rc = self.cluster.cluster_client(socket_timeout=OP_SOCKET_TIMEOUT_S,
                                                  socket_connect_timeout=OP_SOCKET_TIMEOUT_S,
                                                  retry=Retry(NoBackoff(), 0), protocol=2)
        return self.rc

    def close(self) -> None:
        if self.rc is not None:
            try:
                self.rc.close()
            except Exception:
                pass
            self.rc = None

    def execute(self, kind: str, command: tuple, deadline_s: float) -> tuple[str, object]:
        while time.monotonic() < deadline_s:
            try:
                rc = self.client()
            except (redis.RedisError, RedisClusterException, OSError) as exc:  # discovery failed: nothing sent
                self.last_refusal = f"no cluster client: {exc}"
                time.sleep(REDIRECT_PAUSE_S)
                continue
            try:
                reply = rc.execute_command(*command)
            except (ClusterDownError, TryAgainError) as exc:
                self.last_refusal = f"{type(exc).__name__} {exc}"
                time.sleep(REDIRECT_PAUSE_S)
                continue
            except ClusterError as exc:  # only -MOVED and -TRYAGAIN answers, until the client's TTL ran out
                self.last_refusal = f"{type(exc).__name__} {exc}"
                self.close()
                continue
            except (redis.ConnectionError, redis.TimeoutError, RedisClusterException):
                # Lost on the way, or the client's rediscovery after a lost connection failed.
                self.close()
                return "unknown", None
            except redis.ResponseError as exc:
                if kind == "incr" and "not an integer" in str(exc):
                    return "ok", "ERR"
                return "unknown", None
            return "ok", {"get": reply, "put": None, "incr": reply}[kind]
        return "fail", None


class PipelineWorker(threading.Thread):
    """Pipelines SET q n; GET p; SET p v; GET p on its own keys; records pipelines that break connection order."""

    KEY = "pipelined"

    def __init__(self, cluster, stop: threading.Event):
        super().__init__(daemon=True)
        self.cluster = cluster
        self.stop_event = stop
        self.port = cluster.nodes[0].port
        self.rng = random.Random(1)
        self.answered = 0
        self.violations: list[str] = []

    def run(self) -> None:
        seq = 0
        conn = None
        while not self.stop_event.is_set():
            seq += 1
            value = b"v%d" % seq
            try:
                if conn is None:
                    conn = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=OP_SOCKET_TIMEOUT_S,
                                       socket_connect_timeout=OP_SOCKET_TIMEOUT_S, retry=None,
                                       single_connection_client=True, protocol=2)
                pipe = conn.pipeline(transaction=False)
                # The first SET makes the GET wait for a write's reply, as well as for its barrier.
                pipe.set(self.KEY + ":other", seq).get(self.KEY).set(self.KEY, value).get(self.KEY)
                _ok, before, _ok, after = pipe.execute()
            except redis.exceptions.MovedError as moved:
                self.port = int(str(moved).split()[-1].rsplit(":", 1)[1])
            except (redis.RedisError, OSError):
                self.port = self.rng.choice(self.cluster.nodes).port
            else:
                self.answered += 1
                if before == value or after != value:
                    self.violations.append(f"pipeline {seq}: GET {before!r}, SET {value!r}, GET {after!r}")
                continue
            if conn is not None:
                conn.close()
                conn = None
            time.sleep(REDIRECT_PAUSE_S)
        if conn is not None:
            conn.close()


class Workload:
    """CLIENTS recording workers of class `worker` and, with `pipeline`, one PipelineWorker."""

    def __init__(self, cluster, worker: type[Worker] = Worker, clients: int = CLIENTS, pipeline: bool = True):
        self.cluster = cluster
        self.recorder = Recorder()
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.start_s = time.monotonic()
        self.worker_class = worker
        self.workers = [worker(i, cluster, self.recorder, self.lock, self.stop_event, self.start_s)
                        for i in range(clients)]
        self.pipeliner = PipelineWorker(cluster, self.stop_event) if pipeline else None

    def start(self) -> None:
        for w in self.workers:
            w.start()
        if self.pipeliner is not None:
            self.pipeliner.start()

    def stop(self) -> None:
        self.stop_event.set()
        for w in self.workers:
            w.join(timeout=30)
        if self.pipeliner is not None:
            self.pipeliner.join(timeout=30)

    def counts(self) -> dict[str, int]:
        return {s: sum(w.counts[s] for w in self.workers) for s in ("ok", "unknown", "fail")}

    def verify(self, directory: Path) -> str:
        """After stop(): read every key, check the history (written to directory/history.jsonl); a summary."""
        cluster = self.cluster
        cluster.wait_leader()
        final = self.worker_class(FINAL_READER, cluster, self.recorder, self.lock, threading.Event())
        for key in sorted({op.key for op in self.recorder.history()}):
            assert final.one_op(key, "get") == "ok", (
                f"final read of {key} failed: {final.last_refusal}\n"
                + render(survey([Member(n.id, "127.0.0.1", n.port) for n in cluster.nodes])))
        final.close()
        history = self.recorder.history()
        dump_jsonl(history, str(Path(directory) / "history.jsonl"))
        counts = self.counts()
        summary = f"{len(history)} ops {counts}"
        if self.pipeliner is not None:
            summary += f", {self.pipeliner.answered} pipelines answered"
        assert counts["ok"] > OK_OPS_MIN, summary
        if self.pipeliner is not None:
            assert self.pipeliner.answered > PIPELINES_MIN, summary
            assert self.pipeliner.violations == [], self.pipeliner.violations[:5]
        result = check(history)
        assert result.ok, result.explain()
        return summary


class Writer(threading.Thread):
    """SETs w:<i> = i through a RedisCluster client, recording every acknowledged i."""

    def __init__(self, cluster, prefix: str = "w"):
        super().__init__(daemon=True)
        self.cluster = cluster
        self.prefix = prefix
        self.acked: list[int] = []
        self.errors = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        rc = None
        i = 0
        while not self.stopping.is_set():
            try:
                if rc is None:
                    rc = self.cluster.cluster_client(socket_timeout=2)
                i += 1
                rc.set(f"{self.prefix}:{i}", i)
                self.acked.append(i)
            except (redis.RedisError, OSError, IndexError):
                # Failover or a node going away: a fresh client rediscovers the leader.
                self.errors += 1
                rc = None
                time.sleep(0.05)

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=30)

    def all_acked_present(self) -> None:
        """Every acknowledged SET reads back from the leader."""
        with self.cluster.wait_leader().client(decode_responses=True) as r:
            keys = [f"{self.prefix}:{i}" for i in self.acked]
            values = r.mget(keys) if keys else []
        missing = [i for i, v in zip(self.acked, values) if v != str(i)]
        assert not missing, f"{len(missing)} acknowledged writes lost, e.g. {missing[:5]}"


def keyspaces_equal(cluster, nodes) -> int:
    """Every node applies the leader's commit index and holds the same keys and values; the key count.

    Read with READONLY from each node's own keyspace, once no client writes any more."""
    leader = cluster.wait_leader()
    index = int(leader.info()["raft_commit_index"])
    cluster.wait_applied(index, nodes)
    images = {}
    for node in nodes:
        with node.client(decode_responses=True) as r:
            r.execute_command("READONLY")
            keys = sorted(r.keys("*"))
            images[node.id] = dict(zip(keys, r.mget(keys) if keys else []))
    first_id, first = next(iter(images.items()))
    for node_id, image in images.items():
        if image == first:
            continue
        only_here = sorted(image.keys() - first.keys())[:5]
        only_there = sorted(first.keys() - image.keys())[:5]
        differ = sorted(k for k in image.keys() & first.keys() if image[k] != first[k])[:5]
        raise AssertionError(f"{node_id} differs from {first_id} after index {index}: keys only on {node_id} "
                             f"{only_here}, only on {first_id} {only_there}, different values {differ}\n"
                             + cluster.logs())
    return len(first)
