"""COMMAND and its subcommands, generated from the command table in Redis 7's reply shapes.

Clients read these to learn key positions (redis-py's cluster client) and to
show hints (redis-cli reads COMMAND DOCS), so every declared command appears,
with its arity, flags, legacy key range, ACL categories and key specs.
"""

from __future__ import annotations

from kvorum.commands.table import REPLICATION_FLAGS, TABLE, Command, CommandContext, command, container
from kvorum.protocol.values import NOT_INTEGER, SYNTAX, CommandError, SimpleString
from kvorum.store.glob import stringmatch
from kvorum.store.keyspace import ENTRY_OVERHEAD_BYTES, value_size

# ACL category of each command group, as Redis assigns them.
GROUP_CATEGORIES = {
    "string": "@string",
    "hash": "@hash",
    "generic": "@keyspace",
    "keyspace": "@keyspace",
    "connection": "@connection",
    "transactions": "@transaction",
    "scripting": "@scripting",
    "server": "@admin",
}


def acl_categories(cmd: Command) -> list[str]:
    categories = []
    if "write" in cmd.flags:
        categories.append("@write")
    if "readonly" in cmd.flags:
        categories.append("@read")
    group = GROUP_CATEGORIES.get(cmd.group)
    if group and group not in categories:
        categories.append(group)
    if "admin" in cmd.flags:
        categories += [c for c in ("@admin", "@dangerous") if c not in categories]
    categories.append("@fast" if "fast" in cmd.flags else "@slow")
    return categories


def key_specs(cmd: Command) -> list[dict]:
    if cmd.first_key == 0:
        return []
    last = cmd.last_key if cmd.last_key < 0 else cmd.last_key - cmd.first_key
    if "write" in cmd.flags:
        flags = [SimpleString("RW"), SimpleString("UPDATE")]
    else:
        flags = [SimpleString("RO"), SimpleString("ACCESS")]
    return [{
        "flags": flags,
        "begin_search": {"type": "index", "spec": {"index": cmd.first_key}},
        "find_keys": {"type": "range", "spec": {"lastkey": last, "keystep": cmd.key_step, "limit": 0}},
    }]


def command_info(cmd: Command) -> list:
    return [
        cmd.full_name,
        cmd.arity,
        {SimpleString(flag) for flag in sorted(cmd.flags - REPLICATION_FLAGS)},
        cmd.first_key,
        cmd.last_key,
        cmd.key_step,
        {SimpleString(category) for category in acl_categories(cmd)},
        [],
        key_specs(cmd),
        [command_info(sub) for sub in cmd.subcommands.values()],
    ]


def command_docs(cmd: Command) -> dict:
    docs = {"summary": cmd.summary, "since": cmd.since, "group": cmd.group}
    if cmd.complexity:
        docs["complexity"] = cmd.complexity
    if cmd.subcommands:
        docs["subcommands"] = {sub.full_name: command_docs(sub) for sub in cmd.subcommands.values()}
    return docs


def find(name: bytes) -> Command | None:
    """A command by name, or a subcommand by 'parent|sub'."""
    text = name.decode("utf-8", "replace").lower()
    parent, _, sub = text.partition("|")
    cmd = TABLE.get(parent)
    if cmd is not None and sub:
        cmd = cmd.subcommands.get(sub)
    return cmd


def all_commands() -> list[Command]:
    out = []
    for cmd in TABLE.values():
        out.append(cmd)
        out.extend(cmd.subcommands.values())
    return out


# COMMAND
def command_(ctx: CommandContext, argv: list[bytes]):
    return [command_info(cmd) for cmd in TABLE.values()]


container("command", arity=-1, flags="loading stale", group="server", handler=command_,
          summary="Returns detailed information about all commands.", since="2.8.13")


# COMMAND COUNT
@command("count", container="command", arity=2, flags="loading stale", group="server",
         summary="Returns a count of commands.", since="2.8.13")
def command_count(ctx: CommandContext, argv: list[bytes]):
    return len(TABLE)


# COMMAND INFO [command-name ...]
@command("info", container="command", arity=-2, flags="loading stale", group="server",
         summary="Returns information about one, multiple or all commands.", since="2.8.13", complexity="O(N)")
def command_info_(ctx: CommandContext, argv: list[bytes]):
    if len(argv) == 2:
        return [command_info(cmd) for cmd in TABLE.values()]
    out = []
    for name in argv[2:]:
        cmd = find(name)
        out.append(None if cmd is None else command_info(cmd))
    return out


# COMMAND DOCS [command-name ...]
@command("docs", container="command", arity=-2, flags="loading stale", group="server",
         summary="Returns documentary information about one, multiple or all commands.", since="7.0.0",
         complexity="O(N)")
def command_docs_(ctx: CommandContext, argv: list[bytes]):
    if len(argv) == 2:
        return {cmd.name: command_docs(cmd) for cmd in TABLE.values()}
    out = {}
    for name in argv[2:]:
        cmd = find(name)
        if cmd is not None:
            out[cmd.full_name] = command_docs(cmd)
    return out


# COMMAND GETKEYS command [arg ...]
@command("getkeys", container="command", arity=-3, flags="loading stale", group="server",
         summary="Extracts the key names from an arbitrary command.", since="2.8.13")
def command_getkeys(ctx: CommandContext, argv: list[bytes]):
    call = argv[2:]
    cmd = TABLE.get(call[0].decode("utf-8", "replace").lower())
    if cmd is None:
        raise CommandError("ERR Invalid command specified")
    if cmd.subcommands and len(call) > 1:
        cmd = cmd.subcommands.get(call[1].decode("utf-8", "replace").lower(), cmd)
    if not cmd.arity_ok(len(call)):
        raise CommandError("ERR Invalid number of arguments specified for command")
    positions = cmd.key_positions(len(call))
    if not positions:
        raise CommandError("ERR The command has no key arguments")
    return [call[i] for i in positions if i < len(call)]


# COMMAND LIST [FILTERBY MODULE module-name | ACLCAT category | PATTERN pattern]
@command("list", container="command", arity=-2, flags="loading stale", group="server",
         summary="Returns a list of command names.", since="7.0.0", complexity="O(N)")
def command_list(ctx: CommandContext, argv: list[bytes]):
    commands = all_commands()
    if len(argv) == 2:
        return [cmd.full_name for cmd in commands]
    if len(argv) != 5 or argv[2].lower() != b"filterby":
        raise CommandError("ERR syntax error")
    kind, value = argv[3].lower(), argv[4]
    if kind == b"module":
        return []
    if kind == b"aclcat":
        category = "@" + value.decode("utf-8", "replace").lower().lstrip("@")
        return [cmd.full_name for cmd in commands if category in acl_categories(cmd)]
    if kind == b"pattern":
        return [cmd.full_name for cmd in commands if stringmatch(value.lower(), cmd.full_name.encode())]
    raise CommandError("ERR syntax error")


# COMMAND HELP
@command("help", container="command", arity=2, flags="loading stale", group="server",
         summary="Returns helpful text about the different subcommands.", since="5.0.0")
def command_help(ctx: CommandContext, argv: list[bytes]):
    return [
        SimpleString("COMMAND <subcommand> [<arg> [value] [opt] ...]. Subcommands are:"),
        SimpleString("(no subcommand), COUNT, INFO [<command-name> ...], DOCS [<command-name> ...],"),
        SimpleString("GETKEYS <full-command>, LIST [FILTERBY (MODULE <module-name>|ACLCAT <category>|"
                     "PATTERN <pattern>)], HELP"),
    ]


container("memory", group="server", summary="A container for memory diagnostics commands.", since="4.0.0")


# MEMORY USAGE key [SAMPLES count]
@command("usage", container="memory", arity=-3, flags="readonly", keys=(2, 2, 1), group="server",
         summary="Estimates the memory usage of a key.", since="4.0.0", complexity="O(N)")
def memory_usage(ctx: CommandContext, argv: list[bytes]):
    if len(argv) not in (3, 5):
        raise CommandError(SYNTAX)
    if len(argv) == 5:
        if argv[3].lower() != b"samples":
            raise CommandError(SYNTAX)
        if not argv[4].lstrip(b"-").isdigit():
            raise CommandError(NOT_INTEGER)
    value = ctx.db.peek(argv[2], ctx.now_ms)
    if value is None:
        return None
    return len(argv[2]) + ENTRY_OVERHEAD_BYTES + value_size(value)


# MEMORY HELP
@command("help", container="memory", arity=2, flags="loading stale", group="server",
         summary="Returns helpful text about the different subcommands.", since="4.0.0")
def memory_help(ctx: CommandContext, argv: list[bytes]):
    return [
        SimpleString("MEMORY <subcommand> [<arg> [value] [opt] ...]. Subcommands are:"),
        SimpleString("USAGE <key> [SAMPLES <count>], HELP"),
    ]
