"""The replicated state machine: log entries that carry commands, and how every node applies them.

Theory of operation
-------------------
Every change to the keyspace of a replicated node is a log entry, and every
node applies the same entries in the same order through the same handlers, so
every replica holds the same keys with the same versions. An entry's data is
msgpack `[kind, stamp_ms, body]`:

    COMMAND  body = argv               one write command (SET, INCR, DEL ...)
    EXEC     body = [watches, argvs]   a MULTI/EXEC transaction, applied as one
                                       step; `watches` is [[key, version], ...]:
                                       if any watched key's version differs at
                                       apply time, nothing runs (EXEC -> nil)
    EXPIRE   body = keys               keys the leader saw past their deadline;
                                       each is removed if it is still expired
                                       at `stamp_ms` (a write since may have
                                       given it a new deadline)
    EVICT    body = keys               keys the leader chose to evict to stay
                                       within maxmemory; each still present is
                                       removed and counted as evicted
    ROSTER   body = [op, arg, known]   a change to the group's roster (who its
                                       members are and should become, and their
                                       addresses: kvorum.replica.roster)

Time comes from the entry: handlers get `CommandContext(db, now_ms=stamp_ms)`,
so a TTL is judged at the same instant on every replica. The leader makes
stamps non-decreasing (`Stamper`), so a key that was expired at one entry is
expired at every later one, whichever node's clock stamped it.

Eviction: replicas never evict on their own either. Before a denyoom write
over maxmemory, the leader asks the keyspace for an eviction plan and proposes
it as one EVICT entry ahead of the write; the keyspace's sizes are the same on
every replica, so all of them evict the same keys at the same position.

Expiry: replicas never expire keys on their own timer. The leader's cron asks
the keyspace for due keys and proposes one EXPIRE entry (at most
EXPIRE_KEYS_PER_ENTRY_MAX keys); lookups made while applying an entry may also
expire a key lazily, but at the entry's stamp, identically everywhere.

`GroupState` is one replica group's replicated state: its keyspace, its
roster, its stamper and its Lua function libraries (FUNCTION LOAD / DELETE /
FLUSH / RESTORE are COMMAND entries). Its snapshot image holds the keyspace,
the roster and the libraries' sources.

`apply` returns the reply value; the leader encodes it for the client that
proposed the entry, followers drop it. A handler's CommandError is a reply
(the command is refused identically on every node), never a failure of the
state machine.
"""

from __future__ import annotations

import enum
import logging
import time

import msgpack

from kvorum.commands.table import TABLE_BY_BYTES, CommandContext
from kvorum.protocol.values import CommandError, NullArray
from kvorum.replica.roster import Member, Roster
from kvorum.store.keyspace import EVICT_KEYS_PER_PLAN_MAX

log = logging.getLogger("kvorum.replica")

# Keys one EXPIRE entry may carry.
EXPIRE_KEYS_PER_ENTRY_MAX = 256
# Keys one EVICT entry may carry (one eviction plan of the keyspace).
EVICT_KEYS_PER_ENTRY_MAX = EVICT_KEYS_PER_PLAN_MAX
# Commands one EXEC entry may carry (a longer transaction is refused before it is proposed).
EXEC_COMMANDS_MAX = 10_000


class EntryType(enum.IntEnum):
    COMMAND = 1
    EXEC = 2
    EXPIRE = 3
    EVICT = 4
    ROSTER = 5


# The first element of a snapshot image; a node refuses an image of another format.
SNAPSHOT_FORMAT = 3
# The format before function libraries joined the image; still read.
SNAPSHOT_FORMAT_NO_FUNCTIONS = 2


class Stamper:
    """Leader time stamps: wall-clock milliseconds, never below the last stamp seen in the log."""

    def __init__(self) -> None:
        self.last_ms = 0

    def observe(self, stamp_ms: int) -> None:
        if stamp_ms > self.last_ms:
            self.last_ms = stamp_ms

    def next_ms(self) -> int:
        self.last_ms = max(self.last_ms, int(time.time() * 1000))
        return self.last_ms


def encode_command(stamp_ms: int, argv: list[bytes]) -> bytes:
    return msgpack.packb([EntryType.COMMAND, stamp_ms, argv], use_bin_type=True)


def encode_exec(stamp_ms: int, watches: list[tuple[bytes, int]], argvs: list[list[bytes]]) -> bytes:
    assert len(argvs) <= EXEC_COMMANDS_MAX
    return msgpack.packb([EntryType.EXEC, stamp_ms, [watches, argvs]], use_bin_type=True)


def encode_expire(stamp_ms: int, keys: list[bytes]) -> bytes:
    assert 0 < len(keys) <= EXPIRE_KEYS_PER_ENTRY_MAX
    return msgpack.packb([EntryType.EXPIRE, stamp_ms, keys], use_bin_type=True)


def encode_evict(stamp_ms: int, keys: list[bytes]) -> bytes:
    assert 0 < len(keys) <= EVICT_KEYS_PER_ENTRY_MAX
    return msgpack.packb([EntryType.EVICT, stamp_ms, keys], use_bin_type=True)


def encode_roster(stamp_ms: int, op: str, arg: object, known: list[Member]) -> bytes:
    return msgpack.packb([EntryType.ROSTER, stamp_ms, [op, arg, [m.to_wire() for m in known]]],
                         use_bin_type=True)


def decode(data: bytes) -> tuple[int, int, object]:
    kind, stamp_ms, body = msgpack.unpackb(data, raw=False)
    return kind, stamp_ms, body


def _run(ctx: CommandContext, argv: list[bytes]):
    """One command through its handler: the reply value, or the CommandError it raised."""
    cmd = TABLE_BY_BYTES.get(argv[0]) or TABLE_BY_BYTES.get(argv[0].lower())
    # The leader proposes only commands that passed lookup and arity.
    assert cmd is not None, argv[0]
    if cmd.subcommands and len(argv) > 1:
        cmd = cmd.subcommands[argv[1].decode("utf-8", "surrogateescape").lower()]
    try:
        return cmd.handler(ctx, argv)
    except CommandError as exc:
        return exc
    except Exception:
        # A handler bug: every replica hits it at the same entry, so the state stays identical.
        log.exception("applying %r failed", argv[0])
        return CommandError(f"ERR internal error while running '{cmd.full_name}'")


def apply(db, data: bytes, stamper: Stamper, roster: Roster | None = None, functions=None):
    """Apply one entry's data to the keyspace `db` (and `roster`, `functions`); the reply value for the proposer."""
    kind, stamp_ms, body = decode(data)
    stamper.observe(stamp_ms)
    ctx = CommandContext(db, stamp_ms, functions=functions)
    if kind == EntryType.COMMAND:
        return _run(ctx, body)
    if kind == EntryType.EXEC:
        watches, argvs = body
        for key, version in watches:
            if db.version_of(key, stamp_ms) != version:
                return NullArray
        return [_run(ctx, argv) for argv in argvs]
    if kind == EntryType.EVICT:
        return sum(db.evict(key) for key in body)
    if kind == EntryType.ROSTER:
        assert roster is not None
        return roster.apply_entry(body)
    assert kind == EntryType.EXPIRE, kind
    for key in body:
        db.contains(key, stamp_ms)
    return None


class GroupState:
    """The replicated state of one replica group: keyspace, roster, stamper, function registry."""

    def __init__(self, db, functions=None) -> None:
        self.db = db
        self.roster = Roster()
        self.stamper = Stamper()
        # Lua function libraries (kvorum.scripting.functions.FunctionRegistry); None where
        # nothing runs Lua (the simulator), whose logs then carry no FUNCTION entries.
        self.functions = functions

    def apply(self, data: bytes):
        return apply(self.db, data, self.stamper, self.roster, self.functions)

    def dump(self) -> bytes:
        libraries = self.functions.snapshot() if self.functions is not None else []
        return msgpack.packb([SNAPSHOT_FORMAT, self.db.dump(), self.roster.dump(), libraries], use_bin_type=True)

    def load(self, blob: bytes) -> None:
        image = msgpack.unpackb(blob, raw=False)
        image_format = image[0]
        if image_format not in (SNAPSHOT_FORMAT, SNAPSHOT_FORMAT_NO_FUNCTIONS):
            raise ValueError(f"snapshot image format {image_format}, expected {SNAPSHOT_FORMAT}")
        self.db.load(image[1])
        self.roster.load(image[2])
        if self.functions is not None:
            self.functions.restore_snapshot(image[3] if image_format == SNAPSHOT_FORMAT else [])
