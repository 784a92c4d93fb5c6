"""A single node and a 3-node cluster's leader, given the same random requests, answer alike.

The cluster serves writes through the log, reads through barriers, pipelines
out of order internally and transactions as one entry; none of that may show
in a reply. One seeded stream of batches (single commands, pipelines, MULTI/EXEC,
WATCH with a write of the same or of another connection in between) goes to
both; every reply must be equal. Commands whose replies depend on time or chance
(TTL, RANDOMKEY, SCAN, HRANDFIELD, INFO, lease tokens) are left out. This is how
SETEX with an overflowing time was found answering +OK on a cluster.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time

import pytest
import redis

from harness import REPO, free_ports

BATCHES = int(os.environ.get("KVORUM_DIFF_BATCHES", "2000"))
SEED = int(os.environ.get("KVORUM_DIFF_SEED", "1"))

COMMANDS = ["get", "set", "setnx", "setex", "psetex", "mget", "mset", "msetnx", "getset", "getdel", "getex",
            "append", "strlen", "getrange", "setrange", "incr", "decr", "incrby", "decrby", "incrbyfloat", "del",
            "unlink", "exists", "expire", "pexpire", "persist", "type", "rename", "renamenx", "copy", "hset",
            "hsetnx", "hget", "hmget", "hgetall", "hdel", "hexists", "hlen", "hkeys", "hvals", "hincrby",
            "hincrbyfloat", "hstrlen", "echo", "ping", "vget", "version", "vset", "extversion", "dbsize"]
WORDS = [b"EX", b"PX", b"EXAT", b"PXAT", b"NX", b"XX", b"GT", b"LT", b"GET", b"KEEPTTL", b"PERSIST",
         b"REPLACE", b"IFNEWER", b"IFNOTVERSION"]
KINDS = ["single", "single", "pipeline", "multi", "watch-own-write", "watch-other-write"]


class Requests:
    """The seeded stream of batches."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)

    def arg(self) -> bytes:
        rng = self.rng
        x = rng.random()
        if x < 0.45:
            return b"k%d" % rng.randrange(4)
        if x < 0.65:
            return str(rng.choice([0, 1, -1, 2, 5, 100, 1000, 2**63 - 1, 9999999999])).encode()
        if x < 0.72:
            return rng.choice([b"1.5", b"inf", b"nan", b"", b"10.50", b"01", b"+1"])
        if x < 0.92:
            return rng.choice(WORDS)
        return bytes(rng.randrange(97, 123) for _ in range(rng.randrange(0, 4)))

    def command(self) -> list[bytes]:
        return [self.rng.choice(COMMANDS).encode()] + [self.arg() for _ in range(self.rng.randrange(0, 5))]

    def batch(self) -> tuple[str, list[list[bytes]]]:
        kind = self.rng.choice(KINDS)
        count = 1 if kind == "single" else self.rng.randrange(2, 7)
        return kind, [self.command() for _ in range(count)]


def _plain(value):
    """Replies with exceptions (inside EXEC) turned into comparable text."""
    if isinstance(value, Exception):
        return ("error", str(value))
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


def _one(conn: redis.Redis, argv: list[bytes]):
    try:
        return _plain(conn.execute_command(*argv))
    except redis.ResponseError as exc:
        return ("error", str(exc))


def run_batch(conn: redis.Redis, other: redis.Redis, kind: str, commands: list[list[bytes]]) -> list:
    if kind == "single":
        return [_one(conn, commands[0])]
    if kind == "pipeline":
        pipe = conn.pipeline(transaction=False)
        for argv in commands:
            pipe.execute_command(*argv)
        return _plain(pipe.execute(raise_on_error=False))
    replies = []
    if kind.startswith("watch"):
        replies.append(_one(conn, [b"WATCH", b"k0", b"k1"]))
        replies.append(_one(conn if kind == "watch-own-write" else other, commands[0]))
        commands = commands[1:]
    replies.append(_one(conn, [b"MULTI"]))
    replies += [_one(conn, argv) for argv in commands]
    replies.append(_one(conn, [b"EXEC"]))
    return replies


@pytest.fixture
def single_node(tmp_path):
    port = free_ports(1)[0]
    log = open(tmp_path / "single.log", "wb")
    process = subprocess.Popen([sys.executable, "-m", "kvorum", "server", "--port", str(port)], cwd=REPO,
                               stdout=log, stderr=subprocess.STDOUT)
    log.close()
    try:
        probe = redis.Redis(port=port)
        for _ in range(200):
            try:
                probe.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        probe.close()
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.mark.parametrize("protocol", [2, 3])
def test_single_node_and_cluster_leader_answer_alike(cluster, single_node, protocol):
    leader = cluster.wait_leader()
    conns = []
    for make in (lambda: redis.Redis(port=single_node, protocol=protocol, single_connection_client=True),
                 lambda: leader.client(protocol=protocol, single_connection_client=True)):
        conns.append((make(), make()))
    requests = Requests(SEED + protocol)
    for number in range(BATCHES):
        kind, commands = requests.batch()
        single, replicated = (run_batch(conn, other, kind, commands) for conn, other in conns)
        assert single == replicated, f"batch {number} ({kind}): {commands}"
    for conn, other in conns:
        conn.close()
        other.close()
