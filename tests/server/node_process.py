"""A real kvorum node in a subprocess: `python -m kvorum server --port <free port>`."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import redis

REPO = Path(__file__).resolve().parent.parent.parent
START_TIMEOUT_S = 15.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Node:
    """A `python -m kvorum server` subprocess listening on `port`."""

    def __init__(self, *flags: str, host: str = "127.0.0.1"):
        self.port = free_port()
        self.host = host
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "kvorum", "server", "--port", str(self.port), "--log-level", "warning",
             *flags],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        self._wait_ready(flags)

    def _wait_ready(self, flags) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        password = flags[flags.index("--requirepass") + 1] if "--requirepass" in flags else None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"kvorum exited: {self.process.stdout.read().decode()}")
            try:
                with redis.Redis(host=self.host, port=self.port, password=password, socket_timeout=1) as r:
                    if r.ping():
                        return
            except (redis.ConnectionError, redis.TimeoutError):
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("kvorum did not answer PING in time")

    def client(self, **kwargs) -> redis.Redis:
        kwargs.setdefault("socket_timeout", 10)
        return redis.Redis(host=self.host, port=self.port, **kwargs)

    def connect(self) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=10)
        return sock

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process.stdout.close()
        return self.process.returncode
