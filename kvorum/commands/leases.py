"""Lease commands (kvorum's own): LEASEGET and LEASESET.

The lease table lives in the serving node (`ctx.server.leases`), not in the
keyspace: leases are connection-level coordination, not data, and are never
replicated. LEASEGET reads the keyspace and hands out tokens; LEASESET checks
its token against the node's table and then writes like `SET key value [EX|PX]`.
In a replicated partition both go to the leader (LEASEGET is readonly, so a
READONLY replica would answer it, but its token is unknown to the leader and
the LEASESET is refused: safe, never stale). There the token is not data: the
leader checks and consumes it when it accepts the LEASESET, after voiding the
leases of every write it accepted before, and proposes the plain SET through
the log (`kvorum.server.replication`). docs/commands-versions.md has the contract.
"""

from __future__ import annotations

from kvorum.commands.args import parse_int
from kvorum.commands.strings import expire_at_from_option, parse_set_options
from kvorum.commands.table import CommandContext, command
from kvorum.protocol.values import OK, SYNTAX, WRONGTYPE, CommandError

# How long a lease is valid when LEASEGET gives no LEASE ms (memcache's default is 10 s).
LEASE_MS_DEFAULT = 10_000


def _parse_ms(arg: bytes, minimum: int, what: str) -> int:
    value = parse_int(arg)
    if value < minimum:
        raise CommandError(f"ERR invalid {what} time in 'leaseget' command")
    return value


# LEASEGET key [LEASE milliseconds] [STALE milliseconds]
# ["HIT", value, version] when the key exists; on a miss ["LEASE", token] for the
# first caller and ["WAIT", stale value or nil] while that lease is outstanding.
# This node keeps no stale values, so WAIT always carries nil; STALE is accepted
# for the clients that ask for one.
@command("leaseget", arity=-2, flags="readonly fast leader_state", keys=(1, 1, 1), group="string",
         summary="Get the value of a key, or a lease to fill it on a miss", since="0.1.0",
         complexity="O(1)")
def leaseget(ctx: CommandContext, argv: list[bytes]):
    lease_ms = LEASE_MS_DEFAULT
    j = 2
    while j < len(argv):
        option = argv[j].upper()
        if option == b"LEASE" and j + 1 < len(argv):
            lease_ms = _parse_ms(argv[j + 1], 1, "lease")
        elif option == b"STALE" and j + 1 < len(argv):
            _parse_ms(argv[j + 1], 0, "stale")
        else:
            raise CommandError(SYNTAX)
        j += 2
    db = ctx.db
    key = argv[1]
    value = db.get(key, ctx.now_ms)
    if value is not None:
        if value.__class__ is dict:
            raise CommandError(WRONGTYPE)
        return ["HIT", value, db.version_of(key, ctx.now_ms)]
    token = ctx.server.leases.acquire(key, ctx.now_ms, lease_ms)
    if token is None:
        return ["WAIT", None]
    return ["LEASE", token]


# LEASESET key value token [EX seconds | PX milliseconds | EXAT unix-time-seconds |
#   PXAT unix-time-milliseconds]
# OK and the token is used up; nil (nothing written) when the token is unknown,
# expired, used, or voided by a write or delete of the key since LEASEGET.
@command("leaseset", arity=-4, flags="write denyoom", keys=(1, 1, 1), group="string",
         summary="Set the value of a key with the lease token from LEASEGET", since="0.1.0",
         complexity="O(1)")
def leaseset(ctx: CommandContext, argv: list[bytes]):
    now_ms = ctx.now_ms
    token, expire_at_ms = parse_leaseset(argv, now_ms)
    if not ctx.server.leases.consume(argv[1], token, now_ms):
        return None
    ctx.db.set(argv[1], argv[2], now_ms, expire_at_ms)
    return OK


def parse_leaseset(argv: list[bytes], now_ms: int) -> tuple[int, int]:
    """LEASESET's (token, expire_at_ms or 0), or the CommandError of bad input.

    A replicated leader checks the token itself and proposes `SET key value`
    with LEASESET's expire option (argv[4:]), which this has validated."""
    token = parse_int(argv[3])
    opts = parse_set_options(argv, 4)
    if opts.nx or opts.xx or opts.get or opts.keepttl or opts.ext is not None:
        raise CommandError(SYNTAX)
    expire_at_ms = expire_at_from_option(opts.kind, opts.arg, now_ms, "leaseset") if opts.kind else 0
    return token, expire_at_ms
