"""A writer thread that sets one counter key back to back and records when each write was acknowledged.

Theory of operation. bench/failover needs the client's view of a leader
failure: when did writes stop being acknowledged, and when did they resume.
A `CounterWriter` is a thread that sends `SET counter n` (or etcd's put) with
n rising, one write at a time, through a blocking client as an application
would use it. Every acknowledged write is logged with the time it was sent and
the time its acknowledgement arrived; every failed attempt with its time and a
short kind (the exception's class, or the HTTP status and etcd's message).
After a failure the writer waits `retry_pause_s` and tries again, as an
application that retries connection errors does. The clients retry on their
own first (RedisCluster follows -MOVED, re-reads the topology and tries again;
the etcd client moves to the next member), so a failure logged here is one
that reached the application.

The main thread reads the log while the writer runs: `first_ack_sent_after(t)`
waits for the first write *sent* after `t` to be acknowledged. A write sent
after a node was killed cannot have been answered by it, whereas a reply the
dying node sent just before the kill may still be read a moment after it.

Clocks are time.monotonic() seconds, the same clock in every thread.
"""

from __future__ import annotations

import base64
import collections
import http.client
import json
import threading
import time
from dataclasses import dataclass
from typing import Protocol

import redis
import redis.cluster

KEY = b"counter"
ACKS_KEPT_MAX = 200_000  # acknowledged writes kept (the oldest go first); minutes of writes
FAILURES_KEPT_MAX = 100_000  # failed attempts kept; at least one retry pause apart
FAILURE_KIND_CHARS_MAX = 80
WRITER_LIFETIME_S_MAX = 600.0  # a writer stops by itself after this long, whatever the caller does


class CounterClient(Protocol):
    """A blocking client that writes the counter; `put` raises on any failed write."""

    def put(self, value: int) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Ack:
    sent_s: float
    acked_s: float


class WriteLog:
    """Acknowledged writes and failed attempts of one writer, shared between two threads."""

    def __init__(self) -> None:
        self._acks: collections.deque[Ack] = collections.deque(maxlen=ACKS_KEPT_MAX)
        self._failures: collections.deque[tuple[float, str]] = collections.deque(maxlen=FAILURES_KEPT_MAX)
        self._changed = threading.Condition()

    def acked(self, sent_s: float, acked_s: float) -> None:
        with self._changed:
            self._acks.append(Ack(sent_s, acked_s))
            self._changed.notify_all()

    def failed(self, at_s: float, kind: str) -> None:
        with self._changed:
            self._failures.append((at_s, kind))

    def acks(self) -> int:
        with self._changed:
            return len(self._acks)

    def first_ack_sent_after(self, t_s: float, timeout_s: float) -> Ack | None:
        """The first acknowledged write sent at or after `t_s`, waiting up to `timeout_s` for it."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while True:
                # One writer sends one write at a time, so the log is in order of sending.
                first = None
                for ack in reversed(self._acks):
                    if ack.sent_s < t_s:
                        break
                    first = ack
                if first is not None:
                    return first
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._changed.wait(left)

    def failures_between(self, t0_s: float, t1_s: float) -> collections.Counter[str]:
        """How many attempts failed in [t0_s, t1_s), by kind."""
        with self._changed:
            return collections.Counter(kind for at, kind in self._failures if t0_s <= at < t1_s)


class CounterWriter(threading.Thread):
    """Writes the counter through `client` until stopped, logging every outcome in `log`."""

    def __init__(self, client: CounterClient, log: WriteLog, retry_pause_s: float,
                 retryable: tuple[type[BaseException], ...]) -> None:
        super().__init__(name="counter-writer", daemon=True)
        self.client = client
        self.log = log
        self.retry_pause_s = retry_pause_s
        self.retryable = retryable
        self.crash: BaseException | None = None  # an unexpected exception that ended the thread
        self._stop_event = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + WRITER_LIFETIME_S_MAX
        value = 0
        try:
            while not self._stop_event.is_set() and time.monotonic() < deadline:
                sent = time.monotonic()
                try:
                    self.client.put(value)
                except self.retryable as e:
                    self.log.failed(time.monotonic(), failure_kind(e))
                    self._stop_event.wait(self.retry_pause_s)
                    continue
                self.log.acked(sent, time.monotonic())
                value += 1
        except BaseException as e:  # reported by the main thread, which ends the run
            self.crash = e

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def failure_kind(e: BaseException) -> str:
    kind = type(e).__name__
    if isinstance(e, EtcdPutError):
        kind = str(e)
    return kind[:FAILURE_KIND_CHARS_MAX]


# ---------------------------------------------------------------------------
# kvorum: redis-py's RedisCluster


class KvorumCounterClient:
    """redis-py's RedisCluster with its defaults, every node as a startup node, and a socket timeout."""

    # Connection errors and cluster errors (CLUSTERDOWN, TRYAGAIN, a topology it cannot read) that
    # RedisCluster's own retries did not absorb; any other error reply is retried too, and counted.
    retryable = (redis.exceptions.RedisError, redis.exceptions.RedisClusterException, OSError)

    def __init__(self, ports: list[int], socket_timeout_s: float) -> None:
        startup = [redis.cluster.ClusterNode("127.0.0.1", port) for port in ports]
        self.client = redis.cluster.RedisCluster(startup_nodes=startup, socket_timeout=socket_timeout_s)

    @staticmethod
    def describe(socket_timeout_s: float) -> str:
        return (f"redis-py {redis.__version__} RedisCluster, defaults, every node a startup node, "
                f"socket_timeout={socket_timeout_s:g} s")

    def put(self, value: int) -> None:
        self.client.set(KEY, str(value))

    def close(self) -> None:
        self.client.close()


# ---------------------------------------------------------------------------
# etcd: its HTTP/JSON gateway, moving to the next member on any failure


class EtcdPutError(Exception):
    """etcd answered a put with something other than success."""


class EtcdCounterClient:
    """Puts over etcd's HTTP/JSON gateway with one keep-alive connection to one member at a time.

    Starts at the leader. On any failure (connection refused or lost, timeout,
    an error status) it closes the connection and moves to the next member, as
    etcd's own client moves to another endpoint; a follower forwards the put to
    its leader.
    """

    retryable = (OSError, http.client.HTTPException, EtcdPutError)

    def __init__(self, ports: list[int], first: int, prefix: str, timeout_s: float) -> None:
        self.ports = ports
        self.current = first
        self.path = f"{prefix}/kv/put"
        self.timeout_s = timeout_s
        self.conn: http.client.HTTPConnection | None = None

    @staticmethod
    def describe(timeout_s: float) -> str:
        return (f"HTTP/JSON gateway kv/put, one keep-alive connection, next member on any failure, "
                f"timeout={timeout_s:g} s")

    def put(self, value: int) -> None:
        body = json.dumps({"key": base64.b64encode(KEY).decode(),
                           "value": base64.b64encode(str(value).encode()).decode()})
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.ports[self.current],
                                                       timeout=self.timeout_s)
            self.conn.request("POST", self.path, body, {"Content-Type": "application/json"})
            response = self.conn.getresponse()
            reply = response.read()
            if response.status != 200:
                raise EtcdPutError(f"HTTP {response.status} {etcd_message(reply)}")
        except BaseException:
            self.close()
            self.current = (self.current + 1) % len(self.ports)
            raise

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def etcd_message(reply: bytes) -> str:
    try:
        return str(json.loads(reply).get("error", ""))
    except (ValueError, AttributeError):
        return ""
