"""The command table: every command is declared here once.

Dispatch, `COMMAND` / `COMMAND INFO` / `COMMAND DOCS` / `COMMAND GETKEYS`,
cluster routing and the docs all read `TABLE`. A family module declares its
commands with the `@command` decorator:

    @command("set", arity=-3, flags="write denyoom", keys=(1, 1, 1), group="string",
             summary="Set the string value of a key.", since="1.0.0")
    def set_(ctx: CommandContext, argv: list[bytes]):
        ...

`arity` follows Redis: positive means exactly that many arguments (the name
counts), negative means at least -arity. `keys` is (first, last, step) as in
Redis' legacy key specs; last = -1 means "up to the last argument".

Handler signature: `handler(ctx, argv) -> reply value` (see
`kvorum.protocol.values`). `argv[0]` is the command name as the client sent it.
Handlers of data commands (flags `write` or `readonly`) touch only `ctx.db` and
`ctx.now_ms`, so that later the same handler can be applied on every replica
from the replicated log. Connection and server commands may use `ctx.client`
and `ctx.server`.

Subcommands (CLIENT ID, CONFIG GET, ...) are declared as containers: the parent
has `subcommands`, and dispatch routes on argv[1].
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

# Flags that Redis clients and tools look at; unknown flags are a programmer error.
KNOWN_FLAGS = frozenset(
    {
        "write",  # modifies the keyspace
        "readonly",  # reads the keyspace only
        "denyoom",  # refused with OOM when over maxmemory and nothing can be evicted
        "admin",  # server administration
        "pubsub",
        "noscript",
        "blocking",
        "loading",  # allowed while loading data
        "stale",
        "skip_monitor",
        "skip_slowlog",
        "fast",  # O(1) or O(log N)
        "no_auth",  # allowed before AUTH
        "may_replicate",
        "no_multi",  # refused inside MULTI
        "allow_busy",
        # How a command replicates, beyond write/readonly (read by kvorum.server.replication):
        "leader_state",  # uses state only the leader holds (LEASEGET's tokens): not in a replicated MULTI
        "unwatches",  # ends the connection's WATCH (DISCARD, UNWATCH, RESET)
        "membership",  # changes or moves the replica group (CLUSTER MEMBER ...): the handler returns a Future
        "script",  # runs a script: a replicated node runs it on the leader and replicates its effects
    }
)


# kvorum's own flags, for its replication layer; COMMAND does not report them.
REPLICATION_FLAGS = frozenset({"leader_state", "unwatches", "membership", "script"})


@dataclass(slots=True)
class Command:
    name: str  # lower-case
    arity: int
    flags: frozenset[str]
    first_key: int
    last_key: int
    key_step: int
    group: str
    handler: Callable[[Any, list], Any] | None
    summary: str
    since: str = "1.0.0"
    complexity: str = ""
    container: str | None = None  # parent command name for subcommands
    subcommands: dict[str, "Command"] = field(default_factory=dict)
    # For a write whose reply never depends on the data when its arguments pass this
    # check (SET k v): the `one` write concern may answer it as soon as the leader's
    # own log holds it durably, before it is applied.
    blind: Callable[[list], bool] | None = None

    @property
    def full_name(self) -> str:
        return f"{self.container}|{self.name}" if self.container else self.name

    def arity_ok(self, argc: int) -> bool:
        return argc == self.arity if self.arity > 0 else argc >= -self.arity

    def key_positions(self, argc: int) -> range:
        """Indexes of key arguments for a call with argc arguments (name included)."""
        if self.first_key == 0:
            return range(0)
        last = self.last_key if self.last_key >= 0 else argc + self.last_key
        return range(self.first_key, last + 1, self.key_step)


# name (lower-case str) -> Command; also keyed by bytes, lower and upper case, for the hot path.
TABLE: dict[str, Command] = {}
TABLE_BY_BYTES: dict[bytes, Command] = {}


def command(
    name: str,
    *,
    arity: int,
    flags: str = "",
    keys: tuple[int, int, int] = (0, 0, 0),
    group: str,
    summary: str,
    since: str = "1.0.0",
    complexity: str = "O(1)",
    container: str | None = None,
    blind: Callable[[list], bool] | None = None,
) -> Callable:
    """Declare a command (or a subcommand when `container` is given)."""
    flag_set = frozenset(flags.split())
    unknown = flag_set - KNOWN_FLAGS
    assert not unknown, f"{name}: unknown flags {unknown}"
    assert arity != 0, f"{name}: arity 0 is meaningless"
    assert blind is None or "write" in flag_set, f"{name}: only a write can be blind"

    def register(handler: Callable) -> Callable:
        cmd = Command(
            name=name.lower(),
            arity=arity,
            flags=flag_set,
            first_key=keys[0],
            last_key=keys[1],
            key_step=keys[2],
            group=group,
            handler=handler,
            summary=summary,
            since=since,
            complexity=complexity,
            container=container,
            blind=blind,
        )
        if container is None:
            assert cmd.name not in TABLE, f"{name} declared twice"
            TABLE[cmd.name] = cmd
            TABLE_BY_BYTES[cmd.name.encode()] = cmd
            TABLE_BY_BYTES[cmd.name.upper().encode()] = cmd
        else:
            parent = TABLE[container]
            assert cmd.name not in parent.subcommands, f"{container}|{name} declared twice"
            parent.subcommands[cmd.name] = cmd
        return handler

    return register


def container(name: str, *, arity: int = -2, group: str, summary: str, since: str = "1.0.0",
              flags: str = "", handler: Callable | None = None) -> Command:
    """Declare a container command (CLIENT, CONFIG, ...) whose subcommands follow.

    A container with a `handler` (COMMAND) runs it when called without a subcommand.
    """
    flag_set = frozenset(flags.split())
    cmd = Command(name=name, arity=arity, flags=flag_set, first_key=0, last_key=0, key_step=0,
                  group=group, handler=handler, summary=summary, since=since)
    assert name not in TABLE, f"{name} declared twice"
    TABLE[name] = cmd
    TABLE_BY_BYTES[name.encode()] = cmd
    TABLE_BY_BYTES[name.upper().encode()] = cmd
    return cmd


def decode_arg(arg: bytes) -> str:
    """Connection bytes as text for error messages, byte-exact on the way back out."""
    return arg.decode("utf-8", "surrogateescape")


def unknown_command(argv: list[bytes]) -> str:
    args = ""
    for arg in argv[1:]:
        if len(args) >= 128:
            break
        args += "'" + decode_arg(arg)[:128 - len(args)] + "' "
    return f"ERR unknown command '{decode_arg(argv[0])[:128]}', with args beginning with: {args}"


def resolve(argv: list[bytes]) -> Command | str:
    """The command argv names (a subcommand for containers), or the error text."""
    cmd = TABLE_BY_BYTES.get(argv[0])
    if cmd is None:
        cmd = TABLE_BY_BYTES.get(argv[0].lower())
        if cmd is None:
            return unknown_command(argv)
    argc = len(argv)
    arity = cmd.arity
    if argc != arity if arity > 0 else argc < -arity:
        return f"ERR wrong number of arguments for '{cmd.name}' command"
    if cmd.handler is None or (cmd.subcommands and argc > 1):
        sub = cmd.subcommands.get(decode_arg(argv[1]).lower())
        if sub is None:
            return (f"ERR unknown subcommand '{decode_arg(argv[1])[:128]}'. "
                    f"Try {cmd.name.upper()} HELP.")
        arity = sub.arity
        if argc != arity if arity > 0 else argc < -arity:
            return f"ERR wrong number of arguments for '{cmd.name}|{sub.name}' command"
        cmd = sub
    return cmd


def lookup(name: bytes) -> Command | None:
    cmd = TABLE_BY_BYTES.get(name)
    if cmd is None:
        cmd = TABLE_BY_BYTES.get(name.lower())
    return cmd


class CommandContext:
    """What a handler may touch. Data handlers use only `db` and `now_ms`.

    `now_ms` is the command's wall-clock time in milliseconds, chosen once by
    the caller (the server's cached clock on a single node; the leader's stamp
    in a log entry on a replica), so a handler never reads a clock itself.
    """

    __slots__ = ("db", "now_ms", "client", "server", "functions")

    def __init__(self, db: Any, now_ms: int, client: Any = None, server: Any = None, functions: Any = None):
        self.db = db
        self.now_ms = now_ms
        self.client = client
        self.server = server
        # The function registry (kvorum.scripting.functions), replicated state like `db`.
        self.functions = functions
