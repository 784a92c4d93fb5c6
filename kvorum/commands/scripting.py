"""Scripting commands: EVAL EVALSHA EVAL_RO EVALSHA_RO SCRIPT, FCALL FCALL_RO FUNCTION.

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
NON_LOCAL_KEY = "ERR Script attempted to access a non local key in a cluster node"
KEYLESS_DATA_COMMAND = ("ERR Script attempted to run a command on undeclared keys in a cluster node "
                        "(a replicated script may touch only the keys it declares)")


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
            if not flag:
                continue  # "flags=" alone sets none, as in Redis
            if flag not in SCRIPT_FLAGS:
                raise CommandError(f"ERR Unexpected flag in script shebang: {flag}")
            flags.add(flag)
    return frozenset(flags)


class ScriptRun:
    """One script invocation's redis.call on a single node: which commands it may run,
    and running them on the node's keyspace."""

    def __init__(self, ctx: CommandContext, readonly: bool, allow_oom: bool):
        self.ctx = ctx
        self.readonly = readonly
        self.allow_oom = allow_oom

    def admit(self, argv: list[bytes]):
        """The command argv names, or the CommandError that refuses it."""
        cmd = resolve(argv)
        if cmd.__class__ is str:
            if cmd.startswith("ERR unknown command") or cmd.startswith("ERR unknown subcommand"):
                return CommandError("ERR Unknown Redis command called from script")
            return CommandError("ERR Wrong number of args calling Redis command from script")
        flags = cmd.flags
        if "noscript" in flags:
            return CommandError(NOT_FROM_SCRIPT)
        if "write" in flags and self.readonly:
            return CommandError(WRITE_FROM_READONLY)
        ctx = self.ctx
        if ("denyoom" in flags and not self.allow_oom and ctx.db.maxmemory
                and not ctx.server.memory_ok(ctx.client, ctx.now_ms)):
            return CommandError(OOM)
        return cmd

    def command(self, argv: list[bytes]):
        cmd = self.admit(argv)
        if cmd.__class__ is CommandError:
            return cmd
        ctx = self.ctx
        return ctx.server.call(ctx.client, cmd, argv, ctx.now_ms)


class EffectsRun(ScriptRun):
    """A script on a replicated node: its data commands run on a scratch keyspace that holds
    copies of its declared keys, and its successful writes are recorded (their argv, as
    run), to be replicated as one log entry instead of the script.

    Every key a command names must be declared: the scratch keyspace has no others, and
    the log entry's watches cover only those."""

    def __init__(self, ctx: CommandContext, scratch: CommandContext, readonly: bool, allow_oom: bool,
                 declared: frozenset[bytes]):
        super().__init__(ctx, readonly, allow_oom)
        self.scratch = scratch
        self.declared = declared
        self.writes: list[list[bytes]] = []

    def command(self, argv: list[bytes]):
        cmd = self.admit(argv)
        if cmd.__class__ is CommandError:
            return cmd
        flags = cmd.flags
        writes = "write" in flags
        if not writes and "readonly" not in flags:
            ctx = self.ctx
            return ctx.server.call(ctx.client, cmd, argv, ctx.now_ms)
        positions = cmd.key_positions(len(argv))
        if not positions:
            return CommandError(KEYLESS_DATA_COMMAND)
        for i in positions:
            if argv[i] not in self.declared:
                return CommandError(NON_LOCAL_KEY)
        try:
            reply = cmd.handler(self.scratch, argv)
        except CommandError as exc:
            return exc
        if writes:
            self.writes.append(argv)
        return reply


class Prepared:
    """A script invocation checked and ready to run: its function, keys, arguments and flags."""

    __slots__ = ("fn", "name", "keys", "args", "readonly", "allow_oom", "flags", "as_function")

    def __init__(self, fn, name: str, keys: list[bytes], args: list[bytes], readonly: bool, allow_oom: bool,
                 flags: frozenset[str] | None, as_function: bool = False):
        self.as_function = as_function
        self.fn = fn
        self.name = name
        self.keys = keys
        self.args = args
        self.readonly = readonly
        self.allow_oom = allow_oom
        self.flags = flags


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


def prepare(ctx: CommandContext, argv: list[bytes]) -> Prepared:
    """Check an EVAL / EVALSHA / EVAL_RO / EVALSHA_RO / FCALL / FCALL_RO call and find
    (or compile) its script or function."""
    name = argv[0].lower()
    by_sha = name.startswith(b"evalsha")
    ro = name.endswith(b"_ro")
    if name.startswith(b"fcall"):
        return _prepare_function(ctx, argv, ro)
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
    return Prepared(fn, f"f_{sha}", keys, args, readonly, allow_oom, flags)


def _prepare_function(ctx: CommandContext, argv: list[bytes], ro: bool) -> Prepared:
    function = registry(ctx).lookup(argv[1].decode("utf-8", "surrogateescape"))
    if function is None:
        raise CommandError("ERR Function not found")
    try:
        int(argv[2])
    except ValueError:
        raise CommandError("ERR Bad number of keys provided") from None
    keys, args = parse_keys(argv)
    flags = function.flags
    writes = "no-writes" not in flags
    if ro and writes:
        raise CommandError(WRITE_SCRIPT_RO)
    allow_oom = bool(flags & {"allow-oom", "no-writes"})
    if not allow_oom and ctx.db.maxmemory and not ctx.server.memory_ok(ctx.client, ctx.now_ms):
        raise CommandError("OOM allow-oom flag is not set on the script, can not run it when used memory > "
                           "'maxmemory'")
    return Prepared(function.fn, function.name, keys, args, not writes, allow_oom, flags, as_function=True)


def registry(ctx: CommandContext):
    """The function registry: the group's replicated one, which a connection's context also holds."""
    return ctx.functions


def run(ctx: CommandContext, prepared: Prepared, script_run: ScriptRun):
    """Run a prepared script with `script_run` deciding what redis.call does; its reply value."""
    return ctx.server.scripts.run(prepared.fn, prepared.name, prepared.keys, prepared.args,
                                  Call(script_run.command), as_function=prepared.as_function)


def run_script(ctx: CommandContext, argv: list[bytes]):
    prepared = prepare(ctx, argv)
    return run(ctx, prepared, ScriptRun(ctx, prepared.readonly, prepared.allow_oom))


# EVAL script numkeys [key [key ...]] [arg [arg ...]]
@command("eval", arity=-3, flags="noscript skip_monitor may_replicate stale script", group="scripting",
         summary="Execute a Lua script server side.", since="2.6.0", complexity="Depends on the script that is executed.")
def eval_(ctx: CommandContext, argv: list[bytes]):
    return run_script(ctx, argv)


# EVALSHA sha1 numkeys [key [key ...]] [arg [arg ...]]
@command("evalsha", arity=-3, flags="noscript skip_monitor may_replicate stale script", group="scripting",
         summary="Execute a Lua script server side.", since="2.6.0", complexity="Depends on the script that is executed.")
def evalsha(ctx: CommandContext, argv: list[bytes]):
    return run_script(ctx, argv)


# EVAL_RO script numkeys [key [key ...]] [arg [arg ...]]
@command("eval_ro", arity=-3, flags="noscript skip_monitor stale readonly script", group="scripting",
         summary="Execute a read-only Lua script server side.", since="7.0.0",
         complexity="Depends on the script that is executed.")
def eval_ro(ctx: CommandContext, argv: list[bytes]):
    return run_script(ctx, argv)


# EVALSHA_RO sha1 numkeys [key [key ...]] [arg [arg ...]]
@command("evalsha_ro", arity=-3, flags="noscript skip_monitor stale readonly script", group="scripting",
         summary="Execute a read-only Lua script server side.", since="7.0.0",
         complexity="Depends on the script that is executed.")
def evalsha_ro(ctx: CommandContext, argv: list[bytes]):
    return run_script(ctx, argv)


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



# FCALL function numkeys [key [key ...]] [arg [arg ...]]
@command("fcall", arity=-3, flags="noscript skip_monitor may_replicate stale script", group="scripting",
         summary="Invoke a function.", since="7.0.0", complexity="Depends on the function that is executed.")
def fcall(ctx: CommandContext, argv: list[bytes]):
    return run_script(ctx, argv)


# FCALL_RO function numkeys [key [key ...]] [arg [arg ...]]
@command("fcall_ro", arity=-3, flags="noscript skip_monitor stale readonly script", group="scripting",
         summary="Invoke a read-only function.", since="7.0.0", complexity="Depends on the function that is executed.")
def fcall_ro(ctx: CommandContext, argv: list[bytes]):
    return run_script(ctx, argv)


container("function", group="scripting", summary="A container for function commands.", since="7.0.0")


# FUNCTION LOAD [REPLACE] function-code
@command("load", container="function", arity=-3, flags="write denyoom noscript", group="scripting",
         summary="Create a function with the given arguments (name, code, description).", since="7.0.0")
def function_load(ctx: CommandContext, argv: list[bytes]):
    replace = False
    for arg in argv[2:-1]:
        if arg.lower() != b"replace":
            raise CommandError(f"ERR Unknown option given: {arg.decode('utf-8', 'surrogateescape')}")
        replace = True
    return registry(ctx).load(argv[-1], replace).encode()


# FUNCTION DELETE library-name
@command("delete", container="function", arity=3, flags="write noscript", group="scripting",
         summary="Delete a function by name.", since="7.0.0")
def function_delete(ctx: CommandContext, argv: list[bytes]):
    registry(ctx).delete(argv[2].decode("utf-8", "surrogateescape"))
    return OK


# FUNCTION FLUSH [ASYNC|SYNC]
@command("flush", container="function", arity=-2, flags="write noscript", group="scripting",
         summary="Deletes all libraries and functions.", since="7.0.0")
def function_flush(ctx: CommandContext, argv: list[bytes]):
    if len(argv) > 3 or (len(argv) == 3 and argv[2].lower() not in (b"async", b"sync")):
        raise CommandError("ERR FUNCTION FLUSH only supports SYNC|ASYNC option")
    registry(ctx).flush()
    return OK


# FUNCTION RESTORE serialized-value [FLUSH|APPEND|REPLACE]
@command("restore", container="function", arity=-3, flags="write denyoom noscript", group="scripting",
         summary="Restore all the functions on the given payload.", since="7.0.0")
def function_restore(ctx: CommandContext, argv: list[bytes]):
    if len(argv) > 4:
        raise CommandError("ERR wrong number of arguments for 'function|restore' command")
    policy = argv[3].decode("utf-8", "surrogateescape").lower() if len(argv) == 4 else "append"
    if policy not in ("flush", "append", "replace"):
        raise CommandError("ERR Wrong restore policy given, value should be either FLUSH, APPEND or REPLACE.")
    registry(ctx).restore(argv[2], policy)
    return OK


# FUNCTION DUMP
@command("dump", container="function", arity=2, flags="noscript", group="scripting",
         summary="Dump all functions into a serialized binary payload.", since="7.0.0")
def function_dump(ctx: CommandContext, argv: list[bytes]):
    return registry(ctx).dump()


# FUNCTION LIST [LIBRARYNAME library-name-pattern] [WITHCODE]
@command("list", container="function", arity=-2, flags="noscript", group="scripting",
         summary="List information about all the functions.", since="7.0.0")
def function_list(ctx: CommandContext, argv: list[bytes]):
    pattern = None
    with_code = False
    i = 2
    while i < len(argv):
        option = argv[i].lower()
        if option == b"withcode" and not with_code:
            with_code = True
        elif option == b"libraryname" and pattern is None and i + 1 < len(argv):
            pattern = argv[i + 1].decode("utf-8", "surrogateescape")
            i += 1
        else:
            raise CommandError(f"ERR Unknown argument {argv[i].decode('utf-8', 'surrogateescape')}")
        i += 1
    return registry(ctx).list(pattern, with_code)


# FUNCTION STATS
@command("stats", container="function", arity=2, flags="noscript allow_busy", group="scripting",
         summary="Return information about the function currently running (name, description, duration).",
         since="7.0.0")
def function_stats(ctx: CommandContext, argv: list[bytes]):
    functions = registry(ctx)
    return {
        "running_script": None,
        "engines": {"LUA": {"libraries_count": len(functions.libraries),
                            "functions_count": len(functions.functions)}},
    }


# FUNCTION KILL
@command("kill", container="function", arity=2, flags="noscript allow_busy", group="scripting",
         summary="Kill the function currently in execution.", since="7.0.0")
def function_kill(ctx: CommandContext, argv: list[bytes]):
    # Functions run to completion on the event loop: none is ever running when a command is served.
    raise CommandError("NOTBUSY No scripts in execution right now.")


# FUNCTION HELP
@command("help", container="function", arity=2, flags="loading stale", group="scripting",
         summary="Show helpful text about the different subcommands.", since="7.0.0")
def function_help(ctx: CommandContext, argv: list[bytes]):
    return [
        b"FUNCTION <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
        b"LOAD [REPLACE] <FUNCTION CODE>", b"DELETE <LIBRARY NAME>", b"LIST [LIBRARYNAME PATTERN] [WITHCODE]",
        b"FLUSH [ASYNC|SYNC]", b"DUMP", b"RESTORE <PAYLOAD> [FLUSH|APPEND|REPLACE]", b"STATS", b"KILL", b"HELP",
    ]
