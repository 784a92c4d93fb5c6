"""Differential tests: the same random requests to two servers, whose replies must be equal.

- A single node and a 3-node cluster's leader. The cluster serves writes
  through the log, reads through barriers, pipelines out of order internally
  and transactions as one entry; none of that may show in a reply. This is how
  SETEX with an overflowing time was found answering +OK on a cluster.
- A single node and redis-server, for the commands both have.

One seeded stream of batches (single commands, pipelines, MULTI/EXEC, WATCH with
a write of the same or of another connection in between) goes to both. Commands
whose replies depend on time or chance (TTL, RANDOMKEY, SCAN, HRANDFIELD, INFO,
lease tokens) are left out.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import time

import pytest
import redis

from harness import REPO, free_ports

BATCHES = int(os.environ.get("KVORUM_DIFF_BATCHES", "2000"))
SEED = int(os.environ.get("KVORUM_DIFF_SEED", "1"))

REDIS_COMMANDS = ["get", "set", "setnx", "setex", "psetex", "mget", "mset", "msetnx", "getset", "getdel", "getex",
            "append", "strlen", "getrange", "setrange", "incr", "decr", "incrby", "decrby", "incrbyfloat", "del",
            "unlink", "exists", "expire", "pexpire", "persist", "type", "rename", "renamenx", "copy", "hset",
            "hsetnx", "hget", "hmget", "hgetall", "hdel", "hexists", "hlen", "hkeys", "hvals", "hincrby",
            "hincrbyfloat", "hstrlen", "echo", "ping", "lcs", "substr", "expireat", "pexpireat", "touch", "hmset"]
REDIS_WORDS = [b"EX", b"PX", b"EXAT", b"PXAT", b"NX", b"XX", b"GT", b"LT", b"GET", b"KEEPTTL", b"PERSIST",
               b"REPLACE", b"LEN", b"IDX", b"MINMATCHLEN", b"WITHMATCHLEN"]
# kvorum's own commands and options (docs/commands-versions.md) join in when both servers are kvorum,
# and DBSIZE: Redis counts a key given a deadline already past until its expiry cycle removes it.
KVORUM_COMMANDS = REDIS_COMMANDS + ["vget", "version", "vset", "extversion", "dbsize"]
KVORUM_WORDS = REDIS_WORDS + [b"IFNEWER", b"IFNOTVERSION"]
KINDS = ["single", "single", "pipeline", "multi", "watch-own-write", "watch-other-write"]


class Requests:
    """The seeded stream of batches."""

    def __init__(self, seed: int, commands: list[str], words: list[bytes]):
        self.rng = random.Random(seed)
        self.commands = commands
        self.words = words

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
            return rng.choice(self.words)
        return bytes(rng.randrange(97, 123) for _ in range(rng.randrange(0, 4)))

    def command(self) -> list[bytes]:
        argv = [self.rng.choice(self.commands).encode()] + [self.arg() for _ in range(self.rng.randrange(0, 5))]
        return _without_near_deadlines(argv)

    def batch(self) -> tuple[str, list[list[bytes]]]:
        kind = self.rng.choice(KINDS)
        count = 1 if kind == "single" else self.rng.randrange(2, 7)
        return kind, [self.command() for _ in range(count)]


# Relative times in seconds or milliseconds: a key that expires during the run
# would expire between the two servers' runs of a batch now and then.
_RELATIVE_TIME_OPTIONS = {b"EX", b"PX"}
_RELATIVE_TIME_COMMANDS = {b"expire", b"pexpire", b"setex", b"psetex"}
_FAR_FUTURE = b"9999999999"


def _without_near_deadlines(argv: list[bytes]) -> list[bytes]:
    """The request with every relative time that is positive and valid made far: no key expires
    while the test runs, so both servers see the same keys. Past deadlines stay (they expire at once)."""
    positions = [i + 1 for i, arg in enumerate(argv[:-1]) if arg.upper() in _RELATIVE_TIME_OPTIONS]
    if argv[0] in _RELATIVE_TIME_COMMANDS:
        positions.append(2)
    argv = list(argv)
    for i in positions:
        if i < len(argv) and argv[i].isdigit() and 0 < int(argv[i]) < int(_FAR_FUTURE):
            argv[i] = _FAR_FUTURE
    return argv


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


def _serve(argv: list[str], port: int, log_path):
    """Start a server process and wait until it answers PING; the process."""
    with open(log_path, "wb") as log:
        process = subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    probe = redis.Redis(port=port)
    deadline = time.monotonic() + 20
    while True:
        try:
            probe.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise AssertionError(f"{argv[0]} did not start: {log_path.read_text()[-2000:]}")
            time.sleep(0.05)
    probe.close()
    return process


@pytest.fixture
def single_node(tmp_path):
    port = free_ports(1)[0]
    process = _serve([sys.executable, "-m", "kvorum", "server", "--port", str(port)], port, tmp_path / "kvorum.log")
    yield port
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture
def redis_server(tmp_path):
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (Debian: redis-server; .ci/run installs it)")
    port = free_ports(1)[0]
    process = _serve([binary, "--port", str(port), "--save", "", "--appendonly", "no", "--databases", "1"],
                     port, tmp_path / "redis.log")
    yield port
    process.terminate()
    process.wait(timeout=10)


def _compare(conns, requests: Requests) -> None:
    for number in range(BATCHES):
        kind, commands = requests.batch()
        first, second = (run_batch(conn, other, kind, commands) for conn, other in conns)
        assert first == second, f"batch {number} ({kind}): {commands}"
    for conn, other in conns:
        conn.close()
        other.close()


@pytest.mark.parametrize("protocol", [2, 3])
def test_single_node_and_cluster_leader_answer_alike(cluster, single_node, protocol):
    leader = cluster.wait_leader()
    conns = []
    for make in (lambda: redis.Redis(port=single_node, protocol=protocol, single_connection_client=True),
                 lambda: leader.client(protocol=protocol, single_connection_client=True)):
        conns.append((make(), make()))
    _compare(conns, Requests(SEED + protocol, KVORUM_COMMANDS, KVORUM_WORDS))


@pytest.mark.parametrize("protocol", [2, 3])
def test_single_node_and_redis_answer_alike(single_node, redis_server, protocol):
    conns = [(redis.Redis(port=port, protocol=protocol, single_connection_client=True),
              redis.Redis(port=port, protocol=protocol, single_connection_client=True))
             for port in (redis_server, single_node)]
    _compare(conns, Requests(SEED + 10 + protocol, REDIS_COMMANDS, REDIS_WORDS))
