"""`kvorum server --join HOST:PORT`: ask a running cluster to take this node in.

The joining node sends `CLUSTER MEMBER ADD <id> <host:port@bus> [LEARNER]` to
the member it was given, following -MOVED to the leader and retrying through
that member while the cluster has no leader (or the leader it named does not
answer), then reads `CLUSTER MEMBERS` for every member's
address. It then starts outside the membership; the leader adds it as a
learner, catches it up (snapshot, then log) and promotes it once caught up
(kvorum.replica.reconfigure). Joining again with the same id and address is
harmless (a restarted node does it); an id the cluster removed is refused.
"""

from __future__ import annotations

import logging
import time

import redis

from kvorum.replica.roster import Goal, Member

log = logging.getLogger("kvorum.group")

JOIN_TIMEOUT_S = 30.0  # the whole join, retries included
JOIN_SOCKET_TIMEOUT_S = 2.0
JOIN_RETRY_S = 0.2


class JoinError(Exception):
    """The cluster refused this node, or could not be reached (operator error)."""


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise JoinError(f"--join {text!r} is not host:port")
    return host, int(port)


def join(seed: str, me: Member, learner: bool) -> list[Member]:
    """Register `me` with the cluster at `seed`; the cluster's members (with addresses)."""
    seed_address = _address(seed)
    target = seed_address
    request = ["CLUSTER", "MEMBER", "ADD", me.id, f"{me.host}:{me.port}@{me.bus_port}"]
    if learner:
        request.append("LEARNER")
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    last_error = ""
    while time.monotonic() < deadline:
        conn = redis.Redis(host=target[0], port=target[1], socket_timeout=JOIN_SOCKET_TIMEOUT_S,
                           socket_connect_timeout=JOIN_SOCKET_TIMEOUT_S, decode_responses=True,
                           protocol=2)
        try:
            conn.execute_command(*request)
            rows = conn.execute_command("CLUSTER", "MEMBERS")
            members = [Member(row[0], row[1], int(row[2]), int(row[3]),
                              Goal.VOTER if row[4] == "voter" else Goal.LEARNER) for row in rows]
            if all(m.id != me.id for m in members):
                members.append(me)
            log.info("joined the cluster through %s:%d as %s; %d members", target[0], target[1], me.id,
                     len(members))
            return members
        except redis.exceptions.MovedError as exc:
            target = (exc.host, int(exc.port))
            continue
        except (redis.exceptions.TryAgainError, redis.exceptions.ClusterDownError) as exc:
            last_error = str(exc)
        except redis.ResponseError as exc:
            raise JoinError(f"the cluster refused {me.id}: {exc}") from None
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            last_error = str(exc)
        finally:
            conn.close()
        # A redirect names the leader as its sender knew it, which may be gone since (this
        # very node, restarting after a crash while the others still followed it): ask the
        # seed again, which learns of the next leader.
        target = seed_address
        time.sleep(JOIN_RETRY_S)
    raise JoinError(f"could not join through {seed} within {JOIN_TIMEOUT_S:.0f}s: {last_error}")
