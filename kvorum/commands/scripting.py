"""Scripting commands: EVAL EVALSHA EVAL_RO EVALSHA_RO SCRIPT (LOAD EXISTS FLUSH KILL).

A script runs in the node's Lua runtime (`kvorum.scripting.runtime`, on
`ctx.server.scripts`); what `redis.call` does is decided here, by `ScriptRun`:
the command is looked up in the command table, refused when flagged
`noscript`, when a read-only script (EVAL_RO, `#!lua flags=no-writes`) writes,
or when a denyoom write finds the node over maxmemory, and otherwise run
through `ctx.server.call`: the same handler step and write epilogue as
dispatch and EXEC (dirty count, lease voiding, CLIENT TRACKING).

A single node runs scripts on its keyspace as Redis does: a script sees its
own writes, and runs alone (the event loop runs nothing else meanwhile).
"""

from __future__ import annotations

from kvorum.commands.table import CommandContext, command, container, resolve
from kvorum.protocol.values import NOT_INTEGER, OK, OOM, CommandError
from kvorum.scripting.runtime import NOSCRIPT, Call

# Script flags a `#!lua flags=...` line may set (Redis 7's names).
SCRIPT_FLAGS = frozenset({"no-writes", "allow-oom", "allow-stale", "no-cluster", "allow-cross-slot-keys"})

NOT_FROM_SCRIPT = "ERR This Redis command is not allowed from script"
WRITE_FROM_READONLY = "ERR Write commands are not allowed from read-only scripts."
WRITE_SCRIPT_RO = "ERR Can not execute a script with write flag using *_ro command."


def shebang_flags(body: bytes) -> frozenset[str] | None:
    """The flags of a `#!lua` first line; None for a script without one (Redis' compatibility mode)."""
    if not body.startswith(b"#!"):
        return None
    end = body.find(b"\n")
    if end < 0:
        raise CommandError("ERR Invalid script shebang")
    parts = body[:end].decode("utf-8", "surrogateescape").split()
    if not parts:
        raise CommandError("ERR Invalid engine in script shebang")
    if parts[0] != "#!lua":
        raise CommandError(f"ERR Unexpected engine in script shebang: {parts[0]}")
    flags: set[str] = set()
    for part in parts[1:]:
        if not part.startswith("flags="):
            raise CommandError(f"ERR Unknown lua shebang option: {part}")
        for flag in part[len("flags="):].split(","):
            if flag not in SCRIPT_FLAGS:
                raise CommandError(f"ERR Unexpected flag in script shebang: {flag}")
            flags.add(flag)
    return frozenset(flags)


class ScriptRun:
    """One script invocation's redis.call: which commands it may run, and running them."""

    def __init__(self, ctx: CommandContext, readonly: bool, allow_oom: bool):
        self.ctx = ctx
        self.readonly = readonly
        self.allow_oom = allow_oom
        self.wrote = False

    def command(self, argv: list[bytes]):
        cmd = resolve(argv)
        if cmd.__class__ is str:
            if cmd.startswith("ERR unknown command") or cmd.startswith("ERR unknown subcommand"):
                return CommandError("ERR Unknown Redis command called from script")
            return CommandError("ERR Wrong number of args calling Redis command from script")
        flags = cmd.flags
        if "noscript" in flags:
            return CommandError(NOT_FROM_SCRIPT)
        writes = "write" in flags
        if writes and self.readonly:
            return CommandError(WRITE_FROM_READONLY)
        ctx = self.ctx
        server = ctx.server
        if ("denyoom" in flags and not self.allow_oom and ctx.db.maxmemory
                and not server.memory_ok(ctx.client, ctx.now_ms)):
            return CommandError(OOM)
        if writes:
            self.wrote = True
        return server.call(ctx.client, cmd, argv, ctx.now_ms)


def parse_keys(argv: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    """EVAL script numkeys [key ...] [arg ...]: (keys, args)."""
    try:
        numkeys = int(argv[2])
    except ValueError:
        raise CommandError(NOT_INTEGER) from None
    if numkeys < 0:
        raise CommandError("ERR Number of keys can't be negative")
    if numkeys > len(argv) - 3:
        raise CommandError("ERR Number of keys can't be greater than number of args")
    return argv[3:3 + numkeys], argv[3 + numkeys:]


def run_script(ctx: CommandContext, argv: list[bytes], by_sha: bool, ro: bool):
    keys, args = parse_keys(argv)
    scripts = ctx.server.scripts
    if by_sha:
        entry = scripts.lookup(argv[1])
        if entry is None:
            raise CommandError(NOSCRIPT)
        sha = argv[1].decode("latin-1").lower()
    else:
        sha = scripts.load(argv[1])
        entry = scripts.cache[sha]
    body, fn = entry
    flags = shebang_flags(body)
    readonly = ro or (flags is not None and "no-writes" in flags)
    if ro and flags is not None and "no-writes" not in flags:
        raise CommandError(WRITE_SCRIPT_RO)
    allow_oom = flags is not None and bool(flags & {"allow-oom", "no-writes"})
    if (flags is not None and not allow_oom and ctx.db.maxmemory
            and not ctx.server.memory_ok(ctx.client, ctx.now_ms)):
        raise CommandError("OOM allow-oom flag is not set on the script, can not run it when used memory > "
                           "'maxmemory'")
    run = ScriptRun(ctx, readonly, allow_oom)
    return scripts.run(fn, f"f_{sha}", keys, args, Call(run.command))


# EVAL script numkeys [key [key ...]] [arg [arg ...]]
@command("eval", arity=-3, flags="noscript skip_monitor may_replicate stale", group="scripting",
         summary="Execute a Lua script server side.", since="2.6.0", complexity="Depends on the script that is executed.")
def eval_(ctx: CommandContext, argv: list[bytes]):
    return run_script(ctx, argv, by_sha=False, ro=False)


# EVALSHA sha1 numkeys [key [key ...]] [arg [arg ...]]
@command("evalsha", arity=-3, flags="noscript skip_monitor may_replicate stale", group="scripting",
         summary="Execute a Lua script server side.", since="2.6.0", complexity="Depends on the script that is executed.")
def evalsha(ctx: CommandContext, argv: list[bytes]):
    return run_script(ctx, argv, by_sha=True, ro=False)


# EVAL_RO script numkeys [key [key ...]] [arg [arg ...]]
@command("eval_ro", arity=-3, flags="noscript skip_monitor stale readonly", group="scripting",
         summary="Execute a read-only Lua script server side.", since="7.0.0",
         complexity="Depends on the script that is executed.")
def eval_ro(ctx: CommandContext, argv: list[bytes]):
    return run_script(ctx, argv, by_sha=False, ro=True)


# EVALSHA_RO sha1 numkeys [key [key ...]] [arg [arg ...]]
@command("evalsha_ro", arity=-3, flags="noscript skip_monitor stale readonly", group="scripting",
         summary="Execute a read-only Lua script server side.", since="7.0.0",
         complexity="Depends on the script that is executed.")
def evalsha_ro(ctx: CommandContext, argv: list[bytes]):
    return run_script(ctx, argv, by_sha=True, ro=True)


container("script", group="scripting", summary="A container for Lua scripts management commands.", since="2.6.0")


# SCRIPT LOAD script
@command("load", container="script", arity=3, flags="noscript stale", group="scripting",
         summary="Load the specified Lua script into the script cache.", since="2.6.0")
def script_load(ctx: CommandContext, argv: list[bytes]):
    shebang_flags(argv[2])
    return ctx.server.scripts.load(argv[2]).encode()


# SCRIPT EXISTS sha1 [sha1 ...]
@command("exists", container="script", arity=-3, flags="noscript stale", group="scripting",
         summary="Check existence of scripts in the script cache.", since="2.6.0")
def script_exists(ctx: CommandContext, argv: list[bytes]):
    scripts = ctx.server.scripts
    return [int(scripts.exists(sha)) for sha in argv[2:]]


# SCRIPT FLUSH [ASYNC|SYNC]
@command("flush", container="script", arity=-2, flags="noscript", group="scripting",
         summary="Remove all the scripts from the script cache.", since="2.6.0")
def script_flush(ctx: CommandContext, argv: list[bytes]):
    if len(argv) > 3 or (len(argv) == 3 and argv[2].lower() not in (b"async", b"sync")):
        raise CommandError("ERR SCRIPT FLUSH only support SYNC|ASYNC option")
    ctx.server.scripts.flush()
    return OK


# SCRIPT KILL
@command("kill", container="script", arity=2, flags="noscript allow_busy", group="scripting",
         summary="Kill the script currently in execution.", since="2.6.0")
def script_kill(ctx: CommandContext, argv: list[bytes]):
    # Scripts run to completion on the event loop: none is ever running when a command is served.
    raise CommandError("NOTBUSY No scripts in execution right now.")


# SCRIPT HELP
@command("help", container="script", arity=2, flags="loading stale", group="scripting",
         summary="Show helpful text about the different subcommands.", since="5.0.0")
def script_help(ctx: CommandContext, argv: list[bytes]):
    return [
        b"SCRIPT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
        b"EXISTS <sha1> [<sha1> ...]", b"    Return information about the existence of the scripts in the script cache.",
        b"FLUSH [ASYNC|SYNC]", b"    Flush the Lua scripts cache.",
        b"KILL", b"    Kill the currently executing Lua script.",
        b"LOAD <script>", b"    Load a script into the scripts cache without executing it.",
        b"HELP", b"    Print this help.",
    ]

