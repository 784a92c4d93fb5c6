"""Command dispatch: a straight line of gates, as in Redis' processCommand.

    lookup -> arity -> subcommand -> auth -> MULTI queueing -> memory limit -> call

Each gate either passes or answers with Redis' exact error text; a rejected
command inside MULTI also marks the transaction failed (EXECABORT), like
Redis' flagTransaction. After the handler comes the write epilogue: handlers
signal modified keys through the keyspace (which bumps versions and dirties
WATCHers), every write counts towards `dirty`, and a write command voids the
leases of the keys it names even when it changed nothing (a DEL of a missing
key must still refuse a LEASESET of a value read before it).

`execute` runs for every request and returns the encoded reply. Most requests
are plain commands from authenticated clients outside MULTI, for which the
lookup, arity, auth and MULTI gates reduce to one dict lookup (`_PLAIN`, built
from the command table) and one test; any other request goes through the
whole line in `execute_gated`. `call` is the same handler step for EXEC.

Statistics (INFO commandstats / errorstats / latencystats, the slow log,
/metrics) are recorded here, where each call is known: every command's
`CommandStat` (`kvorum.server.command_stats`) rides in its dispatch entry, so
recording needs no lookup by name. A single request costs two clock readings
and a few attribute operations; a pipelined batch reads the clock once per
run of the same command (see `execute_batch`). A rejected call counts as
`rejected`, one whose handler raised as `failed`.

`execute_batch` runs a pipelined batch. Data commands (flags `write` or
`readonly`) only read and write the keyspace, so running one cannot change what
the auth, MULTI, tracking and memory gates decide for the connection: the batch
decides those gates once, runs data commands straight from `_DATA` while they
pass, and decides them again after any other command, which goes through
`execute`.
"""

from __future__ import annotations

import logging
from time import perf_counter_ns
from typing import TYPE_CHECKING

from kvorum.commands.table import TABLE_BY_BYTES, Command, resolve
from kvorum.protocol.encoder import OK_REPLY, encode, error_line
from kvorum.protocol.values import NOAUTH, OK, OOM, QUEUED, CommandError
from kvorum.server.command_stats import TICK_SHIFT, CommandStat, latency_bucket

if TYPE_CHECKING:
    from kvorum.server.connection import Connection

log = logging.getLogger("kvorum.server")

# Commands that run at once inside MULTI instead of being queued (Redis' list).
MULTI_DIRECT = frozenset({"exec", "discard", "multi", "watch", "quit", "reset"})

_QUEUED = encode(QUEUED, False)
_ARITY_ERROR = "ERR wrong number of arguments for '"

# The hot path finds a fast call's histogram slot as `ns >> 10`, a literal where a global
# lookup would cost as much as the shift.
assert TICK_SHIFT == 10

# Filled by `prepare()` once every command family is imported.
_PLAIN: dict[bytes, tuple] = {}
_DATA: dict[bytes, tuple] = {}
# What `execute_batch` looks data commands up in while the gates do not pass: nothing.
_NO_DATA: dict[bytes, tuple] = {}


# Full name ("get", "config|get") -> its statistics; rebuilt by `prepare()`.
STATS: dict[str, CommandStat] = {}


def prepare() -> dict[str, CommandStat]:
    """Build the fast-path tables and fresh statistics from the command table (call after
    registering commands); the statistics, by full command name.

    The tables are the process's: a node is one process, with one ServerState."""
    STATS.clear()
    for cmd in TABLE_BY_BYTES.values():
        for each in (cmd, *cmd.subcommands.values()):
            if each.full_name not in STATS:
                STATS[each.full_name] = CommandStat(each.full_name)
    _PLAIN.clear()
    _PLAIN.update(_plain_commands())
    _DATA.clear()
    _DATA.update(_data_commands(_PLAIN))
    return STATS


def execute(client: Connection, argv: list[bytes], now_ms: int) -> bytes:
    """Run one request; the encoded reply.

    The common case, a plain command (no subcommands) with the right arity from an
    authenticated client outside MULTI and without CLIENT TRACKING, passes the
    lookup, arity, auth and MULTI gates with one dict lookup and one test;
    everything else takes the full line of gates in `execute_gated`.
    """
    entry = _PLAIN.get(argv[0])
    if entry is None:
        return execute_gated(client, argv, now_ms)
    cmd, handler, arity, writes, denyoom, stat, hist = entry
    argc = len(argv)
    if ((argc != arity if arity > 0 else argc < -arity) or client.multi is not None or not client.authenticated
            or client.tracking is not None):
        return execute_gated(client, argv, now_ms)
    if denyoom and client.db.maxmemory and not memory_ok(client, now_ms):
        return reject(client, OOM, stat)
    ctx = client.ctx
    ctx.now_ms = now_ms
    start_ns = perf_counter_ns()
    try:
        reply = handler(ctx, argv)
    except CommandError as exc:
        out = failed(client, stat, exc.message)
    except Exception:
        out = failed(client, stat, internal_error(cmd).message)
    else:
        if writes:
            server = client.server
            server.dirty += 1
            if server.leases.outstanding:
                server.leases.void_keys(cmd, argv)
        if reply.__class__ is bytes:
            out = b"$%d\r\n%s\r\n" % (len(reply), reply)
        elif reply is OK:
            out = OK_REPLY
        else:
            out = encode(reply, client.resp3)
    ns = perf_counter_ns() - start_ns
    stat.ns += ns
    if ns < client.server.stats_fast_ns:
        hist[ns >> 10] += 1
    else:
        slow(client, cmd, stat, argv, ns)
    return out


def execute_batch(client: Connection, requests: list[list[bytes]], now_ms: int, out_bytes_max: int) -> list[bytes]:
    """Run a pipelined batch in order; the encoded replies, one per request run.

    Stops after the reply that takes the batch's output past `out_bytes_max`,
    or after a request that closes the connection. Each reply equals what
    `execute` would return: the loop body for data commands is `execute`'s fast
    path without the gates that `_data_gates_pass` has already decided (arity
    is still checked per request); keep the two equal.

    Statistics are kept per run of the same command (a pipeline is mostly one
    command, many times): the clock is read when the command changes and when
    the batch ends, and each call of a run is charged the run's average, so a
    call costs one identity test. `_charge` records a run.
    """
    ctx = client.ctx
    server = client.server
    leases = server.leases
    parts: list[bytes] = []
    append = parts.append
    out_bytes = 0
    data = _DATA if _data_gates_pass(client) else _NO_DATA
    # The current run: its command's entry, the index of its first request, when it began.
    run = None
    run_first = 0
    run_start_ns = 0
    for argv in requests:
        entry = data.get(argv[0])
        if entry is not None:
            cmd, handler, arity, writes, stat, _hist = entry
            argc = len(argv)
            if argc != arity if arity > 0 else argc < -arity:
                entry = None
        if entry is None:
            if run is not None:
                _charge(client, run, requests, run_first, len(parts), perf_counter_ns() - run_start_ns)
                run = None
            reply = execute(client, argv, now_ms)
            data = _DATA if _data_gates_pass(client) else _NO_DATA
            append(reply)
            out_bytes += len(reply)
            if out_bytes > out_bytes_max or client.close_after_reply:
                break
            continue
        if entry is not run:
            now_ns = perf_counter_ns()
            if run is not None:
                _charge(client, run, requests, run_first, len(parts), now_ns - run_start_ns)
            run = entry
            run_first = len(parts)
            run_start_ns = now_ns
        ctx.now_ms = now_ms
        try:
            value = handler(ctx, argv)
        except CommandError as exc:
            reply = failed(client, stat, exc.message)
        except Exception:
            reply = failed(client, stat, internal_error(cmd).message)
        else:
            if writes:
                server.dirty += 1
                if leases.outstanding:
                    leases.void_keys(cmd, argv)
            if value.__class__ is bytes:
                reply = b"$%d\r\n%s\r\n" % (len(value), value)
            elif value is OK:
                reply = OK_REPLY
            else:
                reply = encode(value, client.resp3)
        append(reply)
        out_bytes += len(reply)
        # A data command never closes the connection, so only the size is checked.
        if out_bytes > out_bytes_max:
            break
    if run is not None:
        _charge(client, run, requests, run_first, len(parts), perf_counter_ns() - run_start_ns)
    return parts


def _charge(client: Connection, entry: tuple, requests: list[list[bytes]], first: int, end: int, ns: int) -> None:
    """Record requests[first:end], one run of the command of `entry`, which took `ns` in all."""
    cmd, _handler, _arity, _writes, stat, hist = entry
    count = end - first
    stat.ns += ns
    per_call_ns = ns // count
    if per_call_ns < client.server.stats_fast_ns:
        hist[per_call_ns >> 10] += count
        return
    for argv in requests[first:end]:
        slow(client, cmd, stat, argv, per_call_ns)


def _data_gates_pass(client: Connection) -> bool:
    """Whether `execute` runs a data command of the right arity straight from its
    `_PLAIN` entry without a memory check: authenticated, outside MULTI, without
    CLIENT TRACKING, no maxmemory."""
    return (client.authenticated and client.multi is None and client.tracking is None
            and not client.db.maxmemory)


def execute_gated(client: Connection, argv: list[bytes], now_ms: int) -> bytes:
    """The full line of gates, in Redis' order."""
    cmd = resolve(argv)
    if cmd.__class__ is str:
        return reject(client, cmd, _arity_error_stat(cmd))
    stat = STATS[cmd.full_name]
    if not client.authenticated and "no_auth" not in cmd.flags:
        return reject(client, NOAUTH, stat)
    if client.multi is not None and (cmd.name not in MULTI_DIRECT or cmd.container is not None):
        return queue(client, cmd, argv, now_ms)
    if client.db.maxmemory and "denyoom" in cmd.flags and not memory_ok(client, now_ms):
        return reject(client, OOM, stat)
    tracking = client.server.tracking
    tracking.writer = client
    reply = call(client, cmd, argv, now_ms)
    tracking.writer = None
    tracking.command_done(client, cmd)
    if reply.__class__ is CommandError:
        return error_line(reply.message)
    return encode(reply, client.resp3)


def _arity_error_stat(message: str) -> CommandStat | None:
    """The statistics of the command an arity error names (Redis counts it as a rejected call
    of that command); None for an unknown command or subcommand, which Redis counts nowhere."""
    if not message.startswith(_ARITY_ERROR):
        return None
    return STATS.get(message[len(_ARITY_ERROR):].partition("'")[0])


def _plain_commands() -> dict[bytes, tuple]:
    """name (as sent: lower or upper case) -> (command, handler, arity, writes, denyoom, stat, hist)."""
    plain = {}
    for name, cmd in TABLE_BY_BYTES.items():
        if cmd.handler is not None and not cmd.subcommands:
            stat = STATS[cmd.full_name]
            plain[name] = (cmd, cmd.handler, cmd.arity, "write" in cmd.flags, "denyoom" in cmd.flags, stat,
                           stat.hist)
    return plain


def _data_commands(plain: dict[bytes, tuple]) -> dict[bytes, tuple]:
    """The `_PLAIN` entries of data commands (flags write or readonly), as
    name -> (command, handler, arity, writes, stat, hist)."""
    return {
        name: (cmd, handler, arity, writes, stat, hist)
        for name, (cmd, handler, arity, writes, _denyoom, stat, hist) in plain.items()
        if writes or "readonly" in cmd.flags
    }


def reject(client: Connection, message: str, stat: CommandStat | None = None) -> bytes:
    """Refuse a command before it runs: the error line, counted against `stat` when one is named."""
    client.server.stats.error(message)
    if stat is not None:
        stat.rejected += 1
    if client.multi is not None:
        client.multi_failed = True
    return error_line(message)


def failed(client: Connection, stat: CommandStat, message: str) -> bytes:
    """A command that ran and answered an error: the error line, counted."""
    client.server.stats.error(message)
    stat.failed += 1
    return error_line(message)


def slow(client: Connection, cmd: Command, stat: CommandStat, argv: list[bytes], ns: int) -> None:
    """Count a call past the hot path's threshold (`stats_fast_ns`) in its histogram, and log
    it when slower than slowlog-log-slower-than. Not with AUTH's or HELLO's arguments (the
    commands allowed before AUTH), which may hold a password: Redis redacts them too."""
    stat.hist[latency_bucket(ns)] += 1
    server = client.server
    if ns <= server.slowlog_ns or "skip_slowlog" in cmd.flags:
        return
    if "no_auth" in cmd.flags:
        argv = argv[:1] + [b"(redacted)"] * (len(argv) - 1)
    server.slowlog.add(argv, ns // 1000, client, server.settings.slowlog_max_len)


def memory_ok(client: Connection, now_ms: int) -> bool:
    """Evict per the policy (`client.make_room`); False when still over maxmemory and the client may not pass."""
    return client.make_room(now_ms) or client.no_evict


def queue(client: Connection, cmd: Command, argv: list[bytes], now_ms: int) -> bytes:
    """Queue a command inside MULTI. Queueing grows memory, so it is refused over maxmemory."""
    if "no_multi" in cmd.flags:
        return reject(client, "ERR Command not allowed inside a transaction", STATS[cmd.full_name])
    if client.db.maxmemory and not memory_ok(client, now_ms):
        return reject(client, OOM, STATS[cmd.full_name])
    client.multi.append((cmd, argv))
    return _QUEUED


def call(client: Connection, cmd: Command, argv: list[bytes], now_ms: int):
    """Run the handler (the gated path, and each command of EXEC): its reply value, or the
    CommandError it raised, counted."""
    ctx = client.ctx
    ctx.now_ms = now_ms
    stat = STATS[cmd.full_name]
    start_ns = perf_counter_ns()
    try:
        reply = cmd.handler(ctx, argv)
    except Exception as exc:
        reply = exc if isinstance(exc, CommandError) else internal_error(cmd)
        client.server.stats.error(reply.message)
        stat.failed += 1
        _timed(client, cmd, stat, argv, start_ns)
        return reply
    _timed(client, cmd, stat, argv, start_ns)
    if client.tracking is not None and "readonly" in cmd.flags:
        client.server.tracking.remember(client, cmd, argv)
    if "write" in cmd.flags:
        server = client.server
        server.dirty += 1
        if server.leases.outstanding:
            server.leases.void_keys(cmd, argv)
    return reply


def _timed(client: Connection, cmd: Command, stat: CommandStat, argv: list[bytes], start_ns: int) -> None:
    ns = perf_counter_ns() - start_ns
    stat.ns += ns
    slow(client, cmd, stat, argv, ns)


def internal_error(cmd: Command) -> CommandError:
    """A handler bug: logged with its traceback, answered as an error, the node keeps serving."""
    log.exception("command %s failed", cmd.full_name)
    return CommandError(f"ERR internal error while running '{cmd.full_name}'")
