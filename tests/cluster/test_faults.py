"""Fault suite: concurrent clients against a real 3-node cluster while a nemesis kills,
restarts and pauses nodes and cuts traffic between them; the recorded history must be
linearizable.

Clients are threads with plain redis-py connections (no retries of their own).
Each op is one logical operation on one of a few keys: GET, SET of a fresh
integer, or INCR. An op may be sent several times, but only after answers that
prove it did not happen (-MOVED, -CLUSTERDOWN, -TRYAGAIN, a refused dial); a timeout, a lost
connection or -TIMEOUT makes its outcome unknown, and that client continues
under a new name (an unknown op stays concurrent with everything after it).

The nemesis, in a loop, one fault at a time: SIGKILL the leader and restart it
after a while; SIGSTOP a random node (sometimes the leader) and SIGCONT it
later; or cut traffic between nodes and heal it later. Every peer link goes
through netproxy's fault-injecting TCP proxy, so a cut is real TCP behaviour
(connections aborted, new dials black-holed or reset): the leader isolated
from both followers, a random 1|2 split, or a one-way cut (one directed link,
or everything the leader sends, or everything it receives). Clients keep
their direct connections, so they go on talking to a cut-off old leader. At
the end every node runs again and every link is healed, and one final
linearizable GET per key, which the checker holds to every acknowledged
write, proves nothing acknowledged was lost.

One more client pipelines `SET q n; GET p; SET p <fresh>; GET p` on keys of its own
and checks the order Redis gives one connection: whatever the faults, a pipeline
answered in full reads the old value before its SET and its own value after.
Linearizability alone allows both reads to see the SET (the three overlap).

Faults are dealt from a shuffled deck holding each kind once, so even the
default run injects every kind. Duration: KVORUM_FAULT_SECONDS (default 30) of
faults, nemesis seed KVORUM_FAULT_SEED (default 7); the history is written to
the test's temporary directory as history.jsonl for `python -m kvorum.sim.linearizability`.
"""

from __future__ import annotations

import os
import random
import threading
import time

import pytest
import redis
from redis.exceptions import ClusterDownError, TryAgainError

from kvorum.server.cluster_status import Member, render, survey
from kvorum.sim.history import Recorder, dump_jsonl
from kvorum.sim.linearizability import check
from netproxy import BLACKHOLE, RESET, partitionable_cluster

FAULT_S = float(os.environ.get("KVORUM_FAULT_SECONDS", "30"))
FAULT_SEED = int(os.environ.get("KVORUM_FAULT_SEED", "7"))  # the nemesis' choices
CLIENTS = 4
KEYS = ("a", "b", "c", "d")
# Every KEY_EPOCH_S the clients move to fresh keys (a1, b1, ... then a2, ...): keys are
# independent, so the checker searches many short histories instead of a few long ones
# whose unknown outcomes would make the search exponential.
KEY_EPOCH_S = 5.0
OP_SOCKET_TIMEOUT_S = 1.5
OP_RETRY_S_MAX = 5.0  # an op refused for this long is recorded as failed (it never happened)
REDIRECT_PAUSE_S = 0.02
NEMESIS_GAP_S = (0.5, 1.5)
FAULT_LENGTH_S = (0.5, 2.5)
PARTITION_LENGTH_S = (1.0, 4.0)  # long enough, often, for an election and a CheckQuorum step-down
ACTIONS = ("kill-leader", "pause-random", "pause-leader", "isolate-leader", "split", "one-way")


class Worker(threading.Thread):
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
        deadline = time.monotonic() + OP_RETRY_S_MAX
        status = "fail"
        result = None
        while time.monotonic() < deadline:
            try:
                conn = self.connect(self.port)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                self.last_refusal = f"cannot connect to port {self.port}: {exc}"
                self.close()
                self.port = self.rng.choice(self.cluster.nodes).port
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
                status = "unknown"
                self.close()
                self.port = self.rng.choice(self.cluster.nodes).port
                break
            except redis.ResponseError as exc:
                text = str(exc)
                if isinstance(exc, (ClusterDownError, TryAgainError)):
                    self.last_refusal = f"{type(exc).__name__} {exc} (port {self.port})"
                    self.close()
                    self.port = self.rng.choice(self.cluster.nodes).port
                    time.sleep(REDIRECT_PAUSE_S)
                    continue
                if kind == "incr" and "not an integer" in text:
                    status, result = "ok", "ERR"
                    break
                status = "unknown"
                break
            status = "ok"
            result = {"get": reply, "put": None, "incr": reply}[kind]
            break
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


def partition(cluster, proxy, action: str, leader, rng: random.Random) -> str:
    """Cut links for `action`; returns what was cut, for the nemesis log."""
    how = rng.choice((BLACKHOLE, RESET))
    ids = [n.id for n in cluster.nodes]
    if action == "isolate-leader":
        proxy.isolate(leader.id, how)
        return f"isolate {leader.id} ({how})"
    if action == "split":
        alone = rng.choice(ids)
        proxy.split({alone}, set(ids) - {alone}, how=how)
        return f"split {alone}|{','.join(i for i in ids if i != alone)} ({how})"
    others = [i for i in ids if i != leader.id]
    pairs = rng.choice((
        [tuple(rng.sample(ids, 2))],
        [(leader.id, o) for o in others],
        [(o, leader.id) for o in others],
    ))
    proxy.drop(pairs, how)
    return f"one-way {' '.join(f'{a}->{b}' for a, b in pairs)} ({how})"


def nemesis(cluster, proxy, stop: threading.Event, rng: random.Random, log: list[str],
            counts: dict[str, int]) -> None:
    deck: list[str] = []
    while not stop.is_set():
        time.sleep(rng.uniform(*NEMESIS_GAP_S))
        leader = cluster.leader()
        if leader is None or stop.is_set():
            continue
        if not deck:  # every kind of fault once per round, in a random order
            deck = rng.sample(ACTIONS, len(ACTIONS))
        action = deck.pop()
        length_s = rng.uniform(*FAULT_LENGTH_S)
        if action == "kill-leader":
            leader.kill()
            log.append(f"{time.monotonic():.2f} kill {leader.id}")
            time.sleep(length_s)
            leader.start()
            log.append(f"{time.monotonic():.2f} restart {leader.id}")
        elif action.startswith("pause"):
            victim = leader if action == "pause-leader" else rng.choice(cluster.nodes)
            if not victim.alive:
                continue
            victim.pause()
            log.append(f"{time.monotonic():.2f} pause {victim.id}")
            time.sleep(length_s)
            victim.resume()
            log.append(f"{time.monotonic():.2f} resume {victim.id}")
        else:
            log.append(f"{time.monotonic():.2f} {partition(cluster, proxy, action, leader, rng)}")
            time.sleep(rng.uniform(*PARTITION_LENGTH_S))
            proxy.heal()
            log.append(f"{time.monotonic():.2f} heal")
        counts[action] = counts.get(action, 0) + 1


@pytest.fixture
def net_cluster(tmp_path, request):
    with partitionable_cluster(tmp_path / "cluster") as (cluster, proxy):
        try:
            yield cluster, proxy
        finally:
            if getattr(request.node, "failed_call", False):
                print(cluster.logs())


@pytest.mark.timeout(int(FAULT_S) + 240)
def test_history_under_kills_pauses_and_partitions_is_linearizable(net_cluster, tmp_path):
    cluster, proxy = net_cluster
    recorder = Recorder()
    lock = threading.Lock()
    stop = threading.Event()
    start_s = time.monotonic()
    workers = [Worker(i, cluster, recorder, lock, stop, start_s) for i in range(CLIENTS)]
    pipeliner = PipelineWorker(cluster, stop)
    events: list[str] = []
    faults: dict[str, int] = {}
    for w in workers:
        w.start()
    pipeliner.start()
    nemesis_stop = threading.Event()
    chaos = threading.Thread(target=nemesis, daemon=True, args=(
        cluster, proxy, nemesis_stop, random.Random(FAULT_SEED), events, faults))
    chaos.start()
    try:
        time.sleep(FAULT_S)
        nemesis_stop.set()
        chaos.join()
        proxy.heal()
        for node in cluster.nodes:
            if not node.alive:
                node.start()
            elif node.paused:
                node.resume()
        for node in cluster.nodes:
            node.wait_listening()
        time.sleep(2.0)  # clients keep running against the healed cluster
    finally:  # also when a node fails to come back: no thread outlives the test
        nemesis_stop.set()
        stop.set()
        chaos.join()
        for w in workers:
            w.join(timeout=30)
        pipeliner.join(timeout=30)
    cluster.wait_leader()
    final = Worker(99, cluster, recorder, lock, threading.Event())
    for key in sorted({op.key for op in recorder.history()}):
        assert final.one_op(key, "get") == "ok", (
            f"final read of {key} failed: {final.last_refusal}\n"
            + render(survey([Member(n.id, "127.0.0.1", n.port) for n in cluster.nodes])))
    final.close()

    history = recorder.history()
    dump_jsonl(history, str(tmp_path / "history.jsonl"))
    counts = {s: sum(w.counts[s] for w in workers) for s in ("ok", "unknown", "fail")}
    print(f"fault suite: seed {FAULT_SEED}, {FAULT_S:.0f}s, {len(history)} ops {counts}, faults {faults}, "
          f"{pipeliner.answered} pipelines answered, nemesis: {'; '.join(events)}")
    assert counts["ok"] > 50, counts
    assert pipeliner.answered > 10 and pipeliner.violations == [], pipeliner.violations[:5]
    result = check(history)
    assert result.ok, result.explain()
