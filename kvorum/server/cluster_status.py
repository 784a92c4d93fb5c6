"""`kvorum cluster status`: one row per member, from each member's own INFO.

Theory of operation
-------------------
The members come from `CLUSTER NODES` of a seed, so the table shows every
voter of the group, whatever list the caller knows; when no seed answers, the
caller's list stands in. Then every member is asked `INFO server replication
cluster` on a thread of its own, with a short timeout and no retry, so nodes
that are down or paused cost one timeout in all, not one each: the whole
answer comes within about two timeouts (discovery, then INFO).

The group is healthy when some member leads and every member answers. The
lag of a member is the leader's last log index minus what the member applied.
"""

from __future__ import annotations

import concurrent.futures
import ipaddress
from dataclasses import dataclass
from typing import Collection

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

# Connect and reply timeout of each request; a node slower than this is reported unreachable.
STATUS_TIMEOUT_S = 0.5
# Members asked at once; a larger group waits for a second round of threads.
STATUS_THREADS_MAX = 16
INFO_SECTIONS = ("server", "replication", "cluster")
COLUMNS = ("node", "address", "role", "term", "leader", "commit", "applied", "lag", "pid")


@dataclass(frozen=True, slots=True)
class Member:
    id: str
    host: str
    port: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Answer:
    """One member's INFO fields, or None when it did not answer in time."""

    member: Member
    info: dict | None


def parse_address(text: str) -> tuple[str, int]:
    """HOST:PORT (an IPv6 host in brackets) -> (host, port); ValueError when malformed."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def parse_cluster_nodes(reply) -> list[Member]:
    """Members from a CLUSTER NODES reply: Redis' text, or redis-py's parse of it (addr -> fields)."""
    if isinstance(reply, dict):
        pairs = [(fields["node_id"], addr) for addr, fields in reply.items()]
    else:
        pairs = [(line.split()[0], line.split()[1]) for line in str(reply).splitlines() if line.strip()]
    members = []
    for node_id, addr in pairs:
        host, port = parse_address(addr.split("@", 1)[0])
        members.append(Member(node_id, host, port))
    return sorted(members, key=lambda m: m.id)


def _client(host: str, port: int) -> redis.Redis:
    # No retry: a retried request to a dead node would double the time the table takes.
    return redis.Redis(host=host, port=port, socket_timeout=STATUS_TIMEOUT_S,
                       socket_connect_timeout=STATUS_TIMEOUT_S, retry=Retry(NoBackoff(), 0),
                       decode_responses=True)


def _ask(host: str, port: int, *command: str):
    with _client(host, port) as conn:
        if command[0] == "INFO":
            return conn.info(*command[1:])
        return conn.execute_command(*command)


def _ask_all(addresses: list[tuple[str, int]], *command: str) -> list:
    """Each address' reply, or the error it failed with, in the order given."""
    def one(address):
        try:
            return _ask(*address, *command)
        except (redis.RedisError, OSError) as exc:
            return exc

    workers = max(1, min(len(addresses), STATUS_THREADS_MAX))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, addresses))


def _unreachable(reply) -> bool:
    return isinstance(reply, (redis.ConnectionError, redis.TimeoutError, OSError))


def discover(seeds: list[tuple[str, int]], fallback: list[Member]) -> tuple[list[Member], set[tuple[str, int]]]:
    """The members named by the first seed (in order) that answers CLUSTER NODES, else `fallback`;
    and the seeds that could not be reached."""
    replies = _ask_all(seeds, "CLUSTER", "NODES")
    silent = {seed for seed, reply in zip(seeds, replies) if _unreachable(reply)}
    for reply in replies:
        if isinstance(reply, Exception):
            continue
        try:
            return parse_cluster_nodes(reply), silent
        except (ValueError, KeyError, IndexError):
            continue
    return fallback, silent


def survey(members: list[Member], silent: Collection[tuple[str, int]] = ()) -> list[Answer]:
    """Each member's INFO. Members in `silent` are not asked again: a paused node
    would cost a second timeout."""
    asked = [m for m in members if (m.host, m.port) not in silent]
    replies = dict(zip(asked, _ask_all([(m.host, m.port) for m in asked], "INFO", *INFO_SECTIONS)))
    return [Answer(m, replies.get(m) if isinstance(replies.get(m), dict) else None) for m in members]


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _leader(answers: list[Answer]) -> Answer | None:
    """The member that says it leads, the one of the highest term if a deposed one still says so."""
    leading = [a for a in answers if a.info is not None and a.info.get("raft_role") == "leader"]
    return max(leading, key=lambda a: int(a.info.get("raft_term", 0)), default=None)


def _row(answer: Answer, leader: Answer | None) -> tuple[str, ...]:
    member, info = answer.member, answer.info
    if info is None:
        return (member.id, member.address, "unreachable") + ("-",) * (len(COLUMNS) - 3)
    role = info.get("raft_role") or ("single" if not info.get("cluster_enabled") else "?")
    applied = info.get("raft_applied_index")
    lag = "-"
    if leader is not None and applied is not None:
        lag = str(max(0, int(leader.info.get("raft_last_index", 0)) - int(applied)))
    pid = str(info.get("process_id", "-")) if _loopback(member.host) else "-"
    return (member.id, member.address, role, str(info.get("raft_term", "-")), str(info.get("raft_leader", "-")),
            str(info.get("raft_commit_index", "-")), str(applied if applied is not None else "-"), lag, pid)


def verdict(answers: list[Answer]) -> tuple[bool, str]:
    """(healthy, the sentence that says why): a leader, and an answer from every member."""
    leader = _leader(answers)
    silent = [a.member for a in answers if a.info is None]
    problems = []
    if leader is None:
        problems.append("no node is leader")
    if silent:
        names = ", ".join(f"{m.id} ({m.address})" for m in silent)
        problems.append(f"{names} {'does' if len(silent) == 1 else 'do'} not answer")
    if problems:
        return False, "unhealthy: " + "; ".join(problems)
    return True, (f"ok: {leader.member.id} leads term {leader.info.get('raft_term')}; "
                  f"all {len(answers)} nodes answer")


def render(answers: list[Answer]) -> str:
    leader = _leader(answers)
    rows = [COLUMNS] + [_row(a, leader) for a in answers]
    widths = [max(len(row[c]) for row in rows) for c in range(len(COLUMNS))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in rows)


def report(seeds: list[tuple[str, int]], fallback: list[Member]) -> tuple[bool, str]:
    """(healthy, the table and its verdict line) for the group `seeds` belong to."""
    answers = survey(*discover(seeds, fallback))
    healthy, why = verdict(answers)
    return healthy, render(answers) + "\n" + why
