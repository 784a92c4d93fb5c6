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

`execute_batch` runs a pipelined batch. Data commands (flags `write` or
`readonly`) only read and write the keyspace, so running one cannot change what
the auth, MULTI, tracking and memory gates decide for the connection: the batch
decides those gates once, runs data commands straight from `_DATA` while they
pass, and decides them again after any other command, which goes through
`execute`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from kvorum.commands.table import TABLE_BY_BYTES, Command, resolve
from kvorum.protocol.encoder import OK_REPLY, encode, error_line
from kvorum.protocol.values import NOAUTH, OK, OOM, QUEUED, CommandError

if TYPE_CHECKING:
    from kvorum.server.connection import Connection

log = logging.getLogger("kvorum.server")

# Commands that run at once inside MULTI instead of being queued (Redis' list).
MULTI_DIRECT = frozenset({"exec", "discard", "multi", "watch", "quit", "reset"})

_QUEUED = encode(QUEUED, False)

# Filled by `prepare()` once every command family is imported.
_PLAIN: dict[bytes, tuple] = {}
_DATA: dict[bytes, tuple] = {}
# What `execute_batch` looks data commands up in while the gates do not pass: nothing.
_NO_DATA: dict[bytes, tuple] = {}


def prepare() -> None:
    """Build the fast-path tables from the command table (call after registering commands)."""
    _PLAIN.clear()
    _PLAIN.update(_plain_commands())
    _DATA.clear()
    _DATA.update(_data_commands(_PLAIN))


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
    cmd, handler, arity, writes, denyoom = entry
    argc = len(argv)
    if ((argc != arity if arity > 0 else argc < -arity) or client.multi is not None or not client.authenticated
            or client.tracking is not None):
        return execute_gated(client, argv, now_ms)
    if denyoom and client.db.maxmemory and not memory_ok(client, now_ms):
        return reject(client, OOM)
    ctx = client.ctx
    ctx.now_ms = now_ms
    try:
        reply = handler(ctx, argv)
    except CommandError as exc:
        client.server.stats.error_replies += 1
        return error_line(exc.message)
    except Exception:
        return error_line(internal_error(cmd).message)
    if writes:
        server = client.server
        server.dirty += 1
        if server.leases.outstanding:
            server.leases.void_keys(cmd, argv)
    if reply.__class__ is bytes:
        return b"$%d\r\n%s\r\n" % (len(reply), reply)
    if reply is OK:
        return OK_REPLY
    return encode(reply, client.resp3)


def execute_batch(client: Connection, requests: list[list[bytes]], now_ms: int, out_bytes_max: int) -> list[bytes]:
    """Run a pipelined batch in order; the encoded replies, one per request run.

    Stops after the reply that takes the batch's output past `out_bytes_max`,
    or after a request that closes the connection. Each reply equals what
    `execute` would return: the loop body for data commands is `execute`'s fast
    path without the gates that `_data_gates_pass` has already decided (arity
    is still checked per request); keep the two equal.
    """
    ctx = client.ctx
    server = client.server
    leases = server.leases
    parts: list[bytes] = []
    append = parts.append
    out_bytes = 0
    data = _DATA if _data_gates_pass(client) else _NO_DATA
    for argv in requests:
        entry = data.get(argv[0])
        if entry is not None:
            cmd, handler, arity, writes = entry
            argc = len(argv)
            if argc != arity if arity > 0 else argc < -arity:
                entry = None
        if entry is None:
            reply = execute(client, argv, now_ms)
            data = _DATA if _data_gates_pass(client) else _NO_DATA
            append(reply)
            out_bytes += len(reply)
            if out_bytes > out_bytes_max or client.close_after_reply:
                break
            continue
        ctx.now_ms = now_ms
        try:
            value = handler(ctx, argv)
        except CommandError as exc:
            server.stats.error_replies += 1
            reply = error_line(exc.message)
        except Exception:
            reply = error_line(internal_error(cmd).message)
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
    return parts


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
        return reject(client, cmd)
    if not client.authenticated and "no_auth" not in cmd.flags:
        return reject(client, NOAUTH)
    if client.multi is not None and (cmd.name not in MULTI_DIRECT or cmd.container is not None):
        return queue(client, cmd, argv, now_ms)
    if client.db.maxmemory and "denyoom" in cmd.flags and not memory_ok(client, now_ms):
        return reject(client, OOM)
    tracking = client.server.tracking
    tracking.writer = client
    reply = call(client, cmd, argv, now_ms)
    tracking.writer = None
    tracking.command_done(client, cmd)
    if reply.__class__ is CommandError:
        client.server.stats.error_replies += 1
        return error_line(reply.message)
    return encode(reply, client.resp3)


def _plain_commands() -> dict[bytes, tuple]:
    """name (as sent: lower or upper case) -> (command, handler, arity, writes, denyoom)."""
    plain = {}
    for name, cmd in TABLE_BY_BYTES.items():
        if cmd.handler is not None and not cmd.subcommands:
            plain[name] = (cmd, cmd.handler, cmd.arity, "write" in cmd.flags, "denyoom" in cmd.flags)
    return plain


def _data_commands(plain: dict[bytes, tuple]) -> dict[bytes, tuple]:
    """The `_PLAIN` entries of data commands (flags write or readonly), as
    name -> (command, handler, arity, writes)."""
    return {
        name: (cmd, handler, arity, writes)
        for name, (cmd, handler, arity, writes, _denyoom) in plain.items()
        if writes or "readonly" in cmd.flags
    }


def reject(client: Connection, message: str) -> bytes:
    client.server.stats.error_replies += 1
    if client.multi is not None:
        client.multi_failed = True
    return error_line(message)


def memory_ok(client: Connection, now_ms: int) -> bool:
    """Evict per the policy (`client.make_room`); False when still over maxmemory and the client may not pass."""
    return client.make_room(now_ms) or client.no_evict


def queue(client: Connection, cmd: Command, argv: list[bytes], now_ms: int) -> bytes:
    """Queue a command inside MULTI. Queueing grows memory, so it is refused over maxmemory."""
    if "no_multi" in cmd.flags:
        return reject(client, "ERR Command not allowed inside a transaction")
    if client.db.maxmemory and not memory_ok(client, now_ms):
        return reject(client, OOM)
    client.multi.append((cmd, argv))
    return _QUEUED


def call(client: Connection, cmd: Command, argv: list[bytes], now_ms: int):
    """Run the handler (for EXEC): its reply value, or the CommandError it raised."""
    ctx = client.ctx
    ctx.now_ms = now_ms
    try:
        reply = cmd.handler(ctx, argv)
    except CommandError as exc:
        return exc
    except Exception:
        return internal_error(cmd)
    if client.tracking is not None and "readonly" in cmd.flags:
        client.server.tracking.remember(client, cmd, argv)
    if "write" in cmd.flags:
        server = client.server
        server.dirty += 1
        if server.leases.outstanding:
            server.leases.void_keys(cmd, argv)
    return reply


def internal_error(cmd: Command) -> CommandError:
    """A handler bug: logged with its traceback, answered as an error, the node keeps serving."""
    log.exception("command %s failed", cmd.full_name)
    return CommandError(f"ERR internal error while running '{cmd.full_name}'")
