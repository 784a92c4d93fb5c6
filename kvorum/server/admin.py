"""`kvorum cluster remove | replace | move-leader`: membership changes from the command line.

Each command finds the group's leader from any member (`--seed`), sends the
request (kvorum.server.membership), then follows `CLUSTER MEMBERS` until the
membership shows the change done, printing a progress line whenever it moves
(a newcomer's entries caught up, roles changing). It gives up after
`timeout_s` and says where it stopped; the change itself goes on in the
cluster, since the request is in the replicated roster.
"""

from __future__ import annotations

import time
from typing import Callable

import redis

ADMIN_SOCKET_TIMEOUT_S = 2.0
POLL_S = 0.25
LEADER_SEARCH_S = 10.0


class AdminError(Exception):
    """The cluster refused the request or could not be reached (shown to the operator)."""


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise AdminError(f"{text!r} is not host:port")
    return host, int(port)


def _connect(host: str, port: int) -> redis.Redis:
    return redis.Redis(host=host, port=port, socket_timeout=ADMIN_SOCKET_TIMEOUT_S,
                       socket_connect_timeout=ADMIN_SOCKET_TIMEOUT_S, decode_responses=True, protocol=2)


def leader_call(seed: str, *request: str):
    """Send `request` to the leader, found from `seed` by following -MOVED; its reply."""
    target = _address(seed)
    deadline = time.monotonic() + LEADER_SEARCH_S
    last = ""
    while time.monotonic() < deadline:
        conn = _connect(*target)
        try:
            return conn.execute_command(*request)
        except redis.exceptions.MovedError as exc:
            target = (exc.host, int(exc.port))
            continue
        except (redis.exceptions.TryAgainError, redis.exceptions.ClusterDownError) as exc:
            last = str(exc)
        except redis.ResponseError as exc:
            raise AdminError(str(exc)) from None
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            last = f"{target[0]}:{target[1]}: {exc}"
            target = _address(seed)  # a leader that died: ask the seed again
        finally:
            conn.close()
        time.sleep(POLL_S)
    raise AdminError(f"no leader answered within {LEADER_SEARCH_S:.0f}s ({last})")


def _leader(seed: str) -> str:
    """The leader's client address, as the seed knows it (the seed itself when it leads)."""
    for row in leader_call(seed, "CLUSTER", "SLOTS")[0][2:3]:
        return f"{row[0]}:{row[1]}"
    raise AdminError("no leader known")


def members(seed: str) -> dict[str, tuple[str, int]]:
    """id -> (role, match index) as the leader reports it (only the leader knows matches)."""
    return {row[0]: (row[4], int(row[5])) for row in leader_call(_leader(seed), "CLUSTER", "MEMBERS")}


def _last_index(seed: str) -> int:
    return int(leader_call(_leader(seed), "INFO", "replication").get("raft_last_index", 0))


def wait_for(seed: str, done: Callable[[dict], bool], watch: str | None, timeout_s: float,
             say: Callable[[str], None]) -> dict:
    """Poll the membership until `done(members)`; report `watch`'s catch-up progress meanwhile."""
    deadline = time.monotonic() + timeout_s
    shown = None
    current: dict = {}
    while time.monotonic() < deadline:
        try:
            current = members(seed)
        except AdminError as exc:
            say(f"  waiting: {exc}")
            time.sleep(POLL_S)
            continue
        line = ", ".join(f"{nid} {role}" for nid, (role, _) in sorted(current.items()))
        if watch is not None and watch in current and current[watch][1] >= 0:
            line += f"; {watch} has {current[watch][1]} of {_last_index(seed)} entries"
        if line != shown:
            say("  " + line)
            shown = line
        if done(current):
            return current
        time.sleep(POLL_S)
    raise AdminError(f"not done within {timeout_s:.0f}s; the cluster goes on with it (members: {current})")


def remove(seed: str, node_id: str, timeout_s: float, say: Callable[[str], None]) -> None:
    say(f"removing {node_id} (leadership moves away first if it leads)")
    leader_call(seed, "CLUSTER", "MEMBER", "REMOVE", node_id)
    wait_for(seed, lambda m: node_id not in m, None, timeout_s, say)
    say(f"{node_id} removed; it shuts itself down, and its id is never used again")


def replace(seed: str, dead: str, new: str, timeout_s: float, say: Callable[[str], None]) -> None:
    """`new` is id@host:port[@busport]."""
    new_id, sep, address = new.partition("@")
    if not sep or not new_id:
        raise AdminError(f"{new!r} is not id@host:port[@busport]")
    leader_call(seed, "CLUSTER", "MEMBER", "ADD", new_id, address, "REPLACE", dead)
    say(f"{new_id} registered to replace {dead}; start it with: kvorum server --node-id {new_id} "
        f"--port {address.split('@')[0].rpartition(':')[2]} --data-dir DIR --join {seed}")
    wait_for(seed, lambda m: dead not in m and m.get(new_id, ("", 0))[0] == "voter", new_id, timeout_s, say)
    say(f"{new_id} replaced {dead}")


def move_leader(seed: str, node_id: str, timeout_s: float, say: Callable[[str], None]) -> None:
    leader_call(seed, "CLUSTER", "MOVE-LEADER", node_id)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if leader_call(seed, "INFO", "replication").get("raft_leader") == node_id:
            say(f"{node_id} leads")
            return
        time.sleep(POLL_S)
    raise AdminError(f"{node_id} did not take over within {timeout_s:.0f}s")
