"""Transactions: MULTI EXEC DISCARD WATCH UNWATCH.

Queueing happens in dispatch (every command but these and QUIT/RESET is
queued while `client.multi` is a list); these handlers open, run or drop the
queue. WATCH is optimistic locking through the keyspace's modification hook
(see `kvorum.server.state`): EXEC answers a null array when a watched key
changed, expired or was evicted since WATCH.
"""

from __future__ import annotations

from kvorum.commands.table import CommandContext, command
from kvorum.protocol.values import OK, OOM, CommandError, NullArray


# MULTI
@command("multi", arity=1, flags="noscript loading stale fast allow_busy", group="transactions",
         summary="Starts a transaction.")
def multi(ctx: CommandContext, argv: list[bytes]):
    client = ctx.client
    if client.multi is not None:
        raise CommandError("ERR MULTI calls can not be nested")
    client.multi = []
    client.multi_failed = False
    return OK


# EXEC
@command("exec", arity=1, flags="noscript loading stale skip_slowlog", group="transactions",
         summary="Executes all commands in a transaction.")
def exec_(ctx: CommandContext, argv: list[bytes]):
    client = ctx.client
    server = ctx.server
    queued = client.multi
    if queued is None:
        raise CommandError("ERR EXEC without MULTI")
    failed = client.multi_failed
    client.multi = None
    client.multi_failed = False
    if failed:
        server.unwatch_all(client)
        raise CommandError("EXECABORT Transaction discarded because of previous errors.")
    if server.watched_key_expired(client, ctx.now_ms):
        server.unwatch_all(client)
        return NullArray
    server.unwatch_all(client)
    if (server.db.maxmemory and any("denyoom" in cmd.flags for cmd, _ in queued)
            and not server.memory_ok(client, ctx.now_ms)):
        raise CommandError("EXECABORT Transaction discarded because of: " + OOM)
    return [server.call(client, cmd, args, ctx.now_ms) for cmd, args in queued]


# DISCARD
@command("discard", arity=1, flags="noscript loading stale fast allow_busy unwatches", group="transactions",
         summary="Discards a transaction.", since="2.0.0")
def discard(ctx: CommandContext, argv: list[bytes]):
    client = ctx.client
    if client.multi is None:
        raise CommandError("ERR DISCARD without MULTI")
    client.multi = None
    client.multi_failed = False
    ctx.server.unwatch_all(client)
    return OK


# WATCH key [key ...]
@command("watch", arity=-2, flags="noscript loading stale fast allow_busy", keys=(1, -1, 1),
         group="transactions", summary="Monitors changes to keys to determine the execution of a transaction.",
         since="2.2.0")
def watch(ctx: CommandContext, argv: list[bytes]):
    client = ctx.client
    if client.multi is not None:
        raise CommandError("ERR WATCH inside MULTI is not allowed")
    for key in argv[1:]:
        ctx.server.watch(client, key, ctx.now_ms)
    return OK


# UNWATCH
@command("unwatch", arity=1, flags="noscript loading stale fast allow_busy unwatches", group="transactions",
         summary="Forgets about watched keys of a transaction.", since="2.2.0")
def unwatch(ctx: CommandContext, argv: list[bytes]):
    ctx.server.unwatch_all(ctx.client)
    return OK
