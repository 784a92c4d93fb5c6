"""An in-process dispatcher for testing command handlers without a server.

`r("SET", "k", "v")` looks the command up in the table, checks arity as Redis
does, routes subcommands, calls the handler with a CommandContext and returns
its reply value, or the CommandError it raised. Time is simulated: `r.now_ms`
is the command clock, moved forward with `r.advance(ms)`.
"""

import kvorum.commands.hashes  # noqa: F401  (registers commands)
import kvorum.commands.keys  # noqa: F401
import kvorum.commands.strings  # noqa: F401
from kvorum.commands.table import CommandContext, lookup
from kvorum.protocol.values import CommandError, SimpleString, wrong_arity
from kvorum.store import Keyspace

START_MS = 1_700_000_000_000


class FakeClient:
    def __init__(self, resp: int):
        self.resp3 = resp == 3


class Dispatcher:
    def __init__(self, db: Keyspace | None = None, resp: int = 2):
        self.db = db if db is not None else Keyspace()
        self.now_ms = START_MS
        self.client = FakeClient(resp)

    def advance(self, ms: int) -> None:
        self.now_ms += ms

    def __call__(self, *args):
        argv = [a if isinstance(a, bytes) else str(a).encode() for a in args]
        cmd = lookup(argv[0])
        if cmd is None:
            return CommandError(f"ERR unknown command '{args[0]}'")
        if cmd.subcommands:
            if len(argv) < 2:
                return wrong_arity(cmd.name)
            sub = cmd.subcommands.get(argv[1].decode().lower())
            if sub is None:
                return CommandError(f"ERR unknown subcommand '{args[1]}'")
            cmd = sub
        if not cmd.arity_ok(len(argv)):
            return wrong_arity(cmd.full_name)
        try:
            return cmd.handler(CommandContext(self.db, self.now_ms, self.client), argv)
        except CommandError as e:
            return e


def err(reply) -> str:
    """The text of an error reply (fails the test when the reply is not an error)."""
    assert isinstance(reply, CommandError), reply
    return reply.message


def ok(reply) -> bool:
    return isinstance(reply, SimpleString) and reply.text == "OK"
