"""Server processes for the benchmarks: start, wait until ready, account CPU, kill and restart, stop.

Every process is started in its own session, so a Ctrl-C typed at the terminal
reaches only the benchmark, which then stops the clusters in order; and with
PR_SET_PDEATHSIG, so the kernel sends it SIGKILL if the benchmark dies without
cleaning up (kill -9 included). SIGKILL rather than SIGTERM because an etcd
member whose peers are gone does not exit on SIGTERM for a long time, and the
data is thrown away anyway (the temporary directory is what is left behind then).
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import time

CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
PR_SET_PDEATHSIG = 1

STOP_TIMEOUT_S = 5.0
LOG_TAIL_LINES = 20
PORT_TRIES_MAX = 200


class BenchError(Exception):
    """An operating error that ends a run with a message (not a traceback)."""


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PortPicker:
    """Hands out distinct free loopback ports, optionally with a free partner at +offset.

    A port is free when it is checked; another program could take it before the
    server binds it, which on a development machine is rare enough to report as
    an error rather than retry.
    """

    def __init__(self) -> None:
        self.taken: set[int] = set()

    def pick(self, partner_offset: int = 0) -> int:
        for _ in range(PORT_TRIES_MAX):
            port = free_port()
            wanted = {port, port + partner_offset}
            if port + partner_offset > 65535 or wanted & self.taken:
                continue
            if partner_offset and not port_is_free(port + partner_offset):
                continue
            self.taken |= wanted
            return port
        raise BenchError(f"no free loopback port (with a free partner at +{partner_offset})")


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGKILL it when the benchmark dies (Linux)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of the given processes and all their descendants, in seconds."""
    children: dict[int, list[int]] = {}
    ticks: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # the process exited while we looked
        # The command name (field 2) is in parentheses and may hold spaces;
        # everything after the last ')' is space-separated.
        rest = stat[stat.rindex(b")") + 2 :].split()
        ticks[int(entry)] = int(rest[11]) + int(rest[12])  # utime, stime
        children.setdefault(int(rest[1]), []).append(int(entry))
    total = 0
    todo = list(pids)
    while todo:
        pid = todo.pop()
        total += ticks.get(pid, 0)
        todo.extend(children.get(pid, ()))
    return total / CLOCK_TICKS_PER_S


class Proc:
    """One server process with its log file."""

    def __init__(self, name: str, argv: list[str], log_path: str, cwd: str | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.cwd = cwd
        self.env = env
        self.popen: subprocess.Popen | None = None

    def start(self) -> None:
        assert self.popen is None, f"{self.name} started twice"
        self._spawn("wb")

    def restart(self) -> None:
        """Start the process again after it exited (killed or stopped), appending to its log."""
        assert self.popen is not None and self.popen.poll() is not None, f"{self.name} is still running"
        self._spawn("ab")

    def _spawn(self, log_mode: str) -> None:
        with open(self.log_path, log_mode) as log:
            try:
                self.popen = subprocess.Popen(
                    self.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.cwd,
                    env=self.env,
                    start_new_session=True,
                    preexec_fn=_die_with_parent,
                )
            except OSError as e:
                raise BenchError(f"cannot start {self.name} ({self.argv[0]}): {e}") from e

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            code = None if self.popen is None else self.popen.returncode
            raise BenchError(f"{self.name} exited with {code}; its log ends with:\n{self.log_tail()}")

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            with open(self.log_path, "rb") as f:
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL the process and reap it: when this returns, it is gone and its sockets closed."""
        if self.alive():
            self.popen.kill()
        if self.popen is not None:
            self.popen.wait()

    def terminate(self) -> None:
        if self.alive():
            self.popen.terminate()

    def wait_stopped(self, deadline: float) -> None:
        """Wait for the process until `deadline` (monotonic), then SIGKILL it."""
        if self.popen is None or self.popen.poll() is not None:
            return
        try:
            self.popen.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


def stop_all(procs: list[Proc], timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM every process at once, then wait for all, SIGKILL those left after timeout_s."""
    for proc in procs:
        proc.terminate()
    deadline = time.monotonic() + timeout_s
    for proc in procs:
        proc.wait_stopped(deadline)


def wait_until(ready, what: str, procs: list[Proc], timeout_s: float, poll_s: float = 0.1):
    """Call ready() until it returns something truthy; fail if a process exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    last_error = ""
    while time.monotonic() < deadline:
        for proc in procs:
            proc.check_alive()
        try:
            result = ready()
        except (OSError, ValueError, KeyError) as e:
            result, last_error = None, f"{type(e).__name__}: {e}"
        if result:
            return result
        time.sleep(poll_s)
    logs = "\n".join(f"--- {p.name} log:\n{p.log_tail()}" for p in procs)
    raise BenchError(f"{what} not ready within {timeout_s:.0f} s ({last_error or 'no answer'})\n{logs}")
