"""The load generator: N asyncio writers against one system for a warm-up and a measured window.

Theory of operation. Each writer is one asyncio task with its own connection
(the system's client decides what a connection is), writing 100-byte values
back to back: it sends a write, waits for the acknowledgement, and sends the
next, so N writers keep at most N writes in flight (closed loop). The run has
two phases on one clock: a warm-up (connections opened, leader caches warm,
the servers' allocators and the JIT-less interpreters in their steady state),
whose writes are not counted, then the measured window. A write counts when
its acknowledgement arrives inside the window, and its latency is recorded;
throughput is the count divided by the window's length. At the end of the
window the writers finish their write in flight and stop.

Keys are `w<writer>:<n>` with n cycling through KEYS_PER_WRITER values, so the
key space stays bounded (etcd keeps a revision per write in any case) and no
two writers write the same key.

Besides throughput and latency the run reports CPU time per write: the
benchmark process's own (time.process_time, the client side) and the servers'
(from /proc, all three nodes), because on a small machine the client and the
servers share the cores and the CPU bill says who was the bottleneck.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, Protocol

from .latency import LatencyRecorder
from .procs import cpu_seconds

KEYS_PER_WRITER = 10_000
ERROR_PAUSE_S = 0.01  # a writer whose write failed waits this long, so a down system is not hammered
ERRORS_KEPT_MAX = 5  # distinct error messages kept for the report
STOP_GRACE_S = 10.0  # writers still waiting for a write this long after the window are cancelled


class WriteError(Exception):
    """A write that failed for an operating reason (refused, timed out, connection lost)."""


class Writer(Protocol):
    """One connection to a system under test.

    `write` returns when the write is acknowledged and raises WriteError when it
    failed; a writer reconnects by itself on its next write after a lost connection.
    """

    async def write(self, key: bytes, value: bytes) -> None: ...

    async def close(self) -> None: ...


@dataclass
class RunResult:
    writers: int
    window_s: float
    writes: int
    errors: int
    error_samples: list[str]
    latency: LatencyRecorder
    client_cpu_s: float
    server_cpu_s: float

    @property
    def writes_per_s(self) -> float:
        return self.writes / self.window_s if self.window_s > 0 else 0.0


async def run_writers(
    open_writer: Callable[[], Awaitable[Writer]],
    writers: int,
    value: bytes,
    warmup_s: float,
    duration_s: float,
    server_pids: list[int],
) -> RunResult:
    assert writers > 0 and duration_s > 0 and warmup_s >= 0
    conns = [await open_writer() for _ in range(writers)]
    latency = LatencyRecorder()
    state = {"writes": 0, "errors": 0}
    error_samples: list[str] = []
    clock = time.perf_counter_ns
    start_ns = clock() + int(warmup_s * 1e9)
    end_ns = start_ns + int(duration_s * 1e9)

    async def writer_loop(index: int, conn: Writer) -> None:
        prefix = f"w{index}:".encode()
        n = 0
        while True:
            t0 = clock()
            if t0 >= end_ns:
                return
            key = prefix + str(n % KEYS_PER_WRITER).encode()
            n += 1
            try:
                await conn.write(key, value)
            except WriteError as e:
                t1 = clock()
                if start_ns <= t1 < end_ns:
                    state["errors"] += 1
                message = str(e)
                if len(error_samples) < ERRORS_KEPT_MAX and message not in error_samples:
                    error_samples.append(message)
                await asyncio.sleep(ERROR_PAUSE_S)
                continue
            t1 = clock()
            if start_ns <= t1 < end_ns:
                state["writes"] += 1
                latency.record(t1 - t0)

    async def measure_cpu() -> tuple[float, float]:
        await asyncio.sleep(max(0.0, (start_ns - clock()) / 1e9))
        client0, server0 = time.process_time(), cpu_seconds(server_pids)
        await asyncio.sleep(max(0.0, (end_ns - clock()) / 1e9))
        return time.process_time() - client0, cpu_seconds(server_pids) - server0

    tasks = [asyncio.create_task(writer_loop(i, c)) for i, c in enumerate(conns)]
    try:
        client_cpu_s, server_cpu_s = await measure_cpu()
        done, pending = await asyncio.wait(tasks, timeout=STOP_GRACE_S)
        for task in pending:
            task.cancel()
        for task in done:
            task.result()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for conn in conns:
            await conn.close()
    return RunResult(
        writers=writers,
        window_s=duration_s,
        writes=state["writes"],
        errors=state["errors"],
        error_samples=error_samples,
        latency=latency,
        client_cpu_s=client_cpu_s,
        server_cpu_s=server_cpu_s,
    )
