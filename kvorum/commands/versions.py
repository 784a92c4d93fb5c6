"""Version commands (kvorum's own): VGET VERSION VSET EXTVERSION, and SET's IFNEWER.

Every key has a version drawn from one keyspace-wide counter on each write
(`kvorum.store.keyspace`), so it only grows and is never reused, even across a
delete and re-create. A reader that holds a copy and its version asks
`VGET key IFNOTVERSION v` and gets "not modified" with no payload while the copy
is current, like HTTP's If-None-Match; that is what the client's strict near
cache sends on every read.

A key may also carry an external version: a number the application takes from
its database (a row version, a commit timestamp). `SET ... IFNEWER ext` and
`VSET ... IFNEWER ext` write only when the stored external version is absent or
strictly older, so of two writers racing to fill the cache from the database,
the one that read the newer row wins whatever the order their writes arrive in,
and a retried write is a no-op. The external version is keyspace data: it is
replicated with the value. docs/commands-versions.md has the full contract.
"""

from __future__ import annotations

from kvorum.commands.args import parse_int
from kvorum.commands.strings import expire_at_from_option, parse_set_options, set_checked
from kvorum.commands.table import CommandContext, command
from kvorum.protocol.values import SYNTAX, WRONGTYPE, CommandError


# VGET key [IFNOTVERSION version]
# nil if the key is missing; [version] if its version is still `version` ("not
# modified", no payload); [version, value] otherwise.
@command("vget", arity=-2, flags="readonly fast", keys=(1, 1, 1), group="string",
         summary="Get the value of a key with its version, or only the version when unchanged",
         since="0.1.0", complexity="O(1)")
def vget(ctx: CommandContext, argv: list[bytes]):
    held = None
    if len(argv) == 4 and argv[2].upper() == b"IFNOTVERSION":
        held = parse_int(argv[3])
    elif len(argv) != 2:
        raise CommandError(SYNTAX)
    db = ctx.db
    key = argv[1]
    value = db.get(key, ctx.now_ms)
    if value is None:
        return None
    if value.__class__ is dict:
        raise CommandError(WRONGTYPE)
    version = db.version_of(key, ctx.now_ms)
    if version == held:
        return [version]
    return [version, value]


# VERSION key [key ...]
# The version of each key, 0 for a missing one.
@command("version", arity=-2, flags="readonly fast", keys=(1, -1, 1), group="generic",
         summary="Get the versions of keys (0 for a missing key)", since="0.1.0",
         complexity="O(N) where N is the number of keys")
def version(ctx: CommandContext, argv: list[bytes]):
    version_of = ctx.db.version_of
    now_ms = ctx.now_ms
    return [version_of(key, now_ms) for key in argv[1:]]


# VSET key value [IFNEWER ext-version] [EX seconds | PX milliseconds |
#   EXAT unix-time-seconds | PXAT unix-time-milliseconds | KEEPTTL] [NX | XX]
# [version] of the write, or nil when a condition refused it.
@command("vset", arity=-3, flags="write denyoom", keys=(1, 1, 1), group="string",
         summary="Set the string value of a key and return its new version", since="0.1.0",
         complexity="O(1)")
def vset(ctx: CommandContext, argv: list[bytes]):
    opts = parse_set_options(argv, 3)
    if opts.get:
        raise CommandError(SYNTAX)
    now_ms = ctx.now_ms
    expire_at_ms = expire_at_from_option(opts.kind, opts.arg, now_ms, "vset") if opts.kind else 0
    if not set_checked(ctx.db, argv[1], argv[2], now_ms, opts, expire_at_ms):
        return None
    return [ctx.db.version_of(argv[1], now_ms)]


# EXTVERSION key
# The external version stored with the key, nil if the key is missing or has none.
@command("extversion", arity=2, flags="readonly fast", keys=(1, 1, 1), group="generic",
         summary="Get the external version stored with a key", since="0.1.0", complexity="O(1)")
def extversion(ctx: CommandContext, argv: list[bytes]):
    return ctx.db.ext_version_of(argv[1], ctx.now_ms)
