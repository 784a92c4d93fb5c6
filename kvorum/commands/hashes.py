"""Hash commands (Redis' t_hash.c).

A hash is a dict of field bytes to value bytes held by the keyspace; handlers
read it through the keyspace and change it only through
`Keyspace.hash_set` / `Keyspace.hash_delete`, which keep memory accounting and
versions right and delete a hash that becomes empty.
"""

from __future__ import annotations

from fractions import Fraction

from kvorum.commands.args import (
    INT64_MAX,
    INT64_MIN,
    add_long_double,
    format_long_double,
    parse_cursor,
    parse_int,
    parse_long_double,
    to_int,
    to_long_double,
)
from kvorum.commands.keys import parse_scan_options
from kvorum.commands.table import CommandContext, command
from kvorum.protocol.values import OVERFLOW, SYNTAX, WRONGTYPE, CommandError, OK, wrong_arity

# HRANDFIELD's count bounds (Redis: -LONG_MAX..LONG_MAX, halved with WITHVALUES).
_COUNT_MAX = INT64_MAX
_COUNT_WITHVALUES_MAX = INT64_MAX // 2


def _hash_or_none(value) -> dict | None:
    if value.__class__ is bytes:
        raise CommandError(WRONGTYPE)
    return value


def _read(ctx: CommandContext, key: bytes) -> dict | None:
    return _hash_or_none(ctx.db.get(key, ctx.now_ms))


def _for_write(ctx: CommandContext, key: bytes) -> dict | None:
    return _hash_or_none(ctx.db.get_for_write(key, ctx.now_ms))


def _pairs(argv: list[bytes], name: str) -> list[tuple[bytes, bytes]]:
    if len(argv) % 2 == 1:
        raise wrong_arity(name)
    return list(zip(argv[2::2], argv[3::2]))


# HSET key field value [field value ...]
@command("hset", arity=-4, flags="write denyoom fast", keys=(1, 1, 1), group="hash",
         summary="Set the string value of a hash field", since="2.0.0",
         complexity="O(1) for each field/value pair added, so O(N) to add N field/value pairs "
                    "when the command is called with multiple field/value pairs.")
def hset(ctx: CommandContext, argv: list[bytes]):
    pairs = _pairs(argv, "hset")
    _for_write(ctx, argv[1])
    return ctx.db.hash_set(argv[1], pairs, ctx.now_ms)


# HMSET key field value [field value ...]
@command("hmset", arity=-4, flags="write denyoom fast", keys=(1, 1, 1), group="hash",
         summary="Set multiple hash fields to multiple values", since="2.0.0",
         complexity="O(N) where N is the number of fields being set.")
def hmset(ctx: CommandContext, argv: list[bytes]):
    pairs = _pairs(argv, "hmset")
    _for_write(ctx, argv[1])
    ctx.db.hash_set(argv[1], pairs, ctx.now_ms)
    return OK


# HSETNX key field value
@command("hsetnx", arity=4, flags="write denyoom fast", keys=(1, 1, 1), group="hash",
         summary="Set the value of a hash field, only if the field does not exist",
         since="2.0.0", complexity="O(1)")
def hsetnx(ctx: CommandContext, argv: list[bytes]):
    fields = _for_write(ctx, argv[1])
    if fields is not None and argv[2] in fields:
        return 0
    ctx.db.hash_set(argv[1], ((argv[2], argv[3]),), ctx.now_ms)
    return 1


# HGET key field
@command("hget", arity=3, flags="readonly fast", keys=(1, 1, 1), group="hash",
         summary="Get the value of a hash field", since="2.0.0", complexity="O(1)")
def hget(ctx: CommandContext, argv: list[bytes]):
    fields = _read(ctx, argv[1])
    return None if fields is None else fields.get(argv[2])


# HMGET key field [field ...]
@command("hmget", arity=-3, flags="readonly fast", keys=(1, 1, 1), group="hash",
         summary="Get the values of all the given hash fields", since="2.0.0",
         complexity="O(N) where N is the number of fields being requested.")
def hmget(ctx: CommandContext, argv: list[bytes]):
    fields = _read(ctx, argv[1])
    if fields is None:
        return [None] * (len(argv) - 2)
    return [fields.get(field) for field in argv[2:]]


# HGETALL key
@command("hgetall", arity=2, flags="readonly", keys=(1, 1, 1), group="hash",
         summary="Get all the fields and values in a hash", since="2.0.0",
         complexity="O(N) where N is the size of the hash.")
def hgetall(ctx: CommandContext, argv: list[bytes]):
    fields = _read(ctx, argv[1])
    return {} if fields is None else dict(fields)


# HDEL key field [field ...]
@command("hdel", arity=-3, flags="write fast", keys=(1, 1, 1), group="hash",
         summary="Delete one or more hash fields", since="2.0.0",
         complexity="O(N) where N is the number of fields to be removed.")
def hdel(ctx: CommandContext, argv: list[bytes]):
    if _for_write(ctx, argv[1]) is None:
        return 0
    return ctx.db.hash_delete(argv[1], argv[2:], ctx.now_ms)


# HEXISTS key field
@command("hexists", arity=3, flags="readonly fast", keys=(1, 1, 1), group="hash",
         summary="Determine if a hash field exists", since="2.0.0", complexity="O(1)")
def hexists(ctx: CommandContext, argv: list[bytes]):
    fields = _read(ctx, argv[1])
    return 1 if fields is not None and argv[2] in fields else 0


# HLEN key
@command("hlen", arity=2, flags="readonly fast", keys=(1, 1, 1), group="hash",
         summary="Get the number of fields in a hash", since="2.0.0", complexity="O(1)")
def hlen(ctx: CommandContext, argv: list[bytes]):
    fields = _read(ctx, argv[1])
    return 0 if fields is None else len(fields)


# HKEYS key
@command("hkeys", arity=2, flags="readonly", keys=(1, 1, 1), group="hash",
         summary="Get all the fields in a hash", since="2.0.0",
         complexity="O(N) where N is the size of the hash.")
def hkeys(ctx: CommandContext, argv: list[bytes]):
    fields = _read(ctx, argv[1])
    return [] if fields is None else list(fields)


# HVALS key
@command("hvals", arity=2, flags="readonly", keys=(1, 1, 1), group="hash",
         summary="Get all the values in a hash", since="2.0.0",
         complexity="O(N) where N is the size of the hash.")
def hvals(ctx: CommandContext, argv: list[bytes]):
    fields = _read(ctx, argv[1])
    return [] if fields is None else list(fields.values())


# HSTRLEN key field
@command("hstrlen", arity=3, flags="readonly fast", keys=(1, 1, 1), group="hash",
         summary="Get the length of the value of a hash field", since="3.2.0", complexity="O(1)")
def hstrlen(ctx: CommandContext, argv: list[bytes]):
    fields = _read(ctx, argv[1])
    value = None if fields is None else fields.get(argv[2])
    return 0 if value is None else len(value)


# HINCRBY key field increment
@command("hincrby", arity=4, flags="write denyoom fast", keys=(1, 1, 1), group="hash",
         summary="Increment the integer value of a hash field by the given number",
         since="2.0.0", complexity="O(1)")
def hincrby(ctx: CommandContext, argv: list[bytes]):
    increment = parse_int(argv[3])
    fields = _for_write(ctx, argv[1])
    old = None if fields is None else fields.get(argv[2])
    value = 0
    if old is not None:
        value = to_int(old)
        if value is None:
            raise CommandError("ERR hash value is not an integer")
    value += increment
    if not INT64_MIN <= value <= INT64_MAX:
        raise CommandError(OVERFLOW)
    ctx.db.hash_set(argv[1], ((argv[2], b"%d" % value),), ctx.now_ms)
    return value


# HINCRBYFLOAT key field increment
@command("hincrbyfloat", arity=4, flags="write denyoom fast", keys=(1, 1, 1), group="hash",
         summary="Increment the float value of a hash field by the given amount",
         since="2.6.0", complexity="O(1)")
def hincrbyfloat(ctx: CommandContext, argv: list[bytes]):
    increment = parse_long_double(argv[3])
    if isinstance(increment, float):
        raise CommandError("ERR value is NaN or Infinity")
    fields = _for_write(ctx, argv[1])
    old = None if fields is None else fields.get(argv[2])
    value = Fraction(0)
    if old is not None:
        value = to_long_double(old)
        if value is None:
            raise CommandError("ERR hash value is not a float")
    total = add_long_double(value, increment)
    if total is None:
        raise CommandError("ERR increment would produce NaN or Infinity")
    text = format_long_double(total)
    ctx.db.hash_set(argv[1], ((argv[2], text),), ctx.now_ms)
    return text


# HRANDFIELD key [count [WITHVALUES]]
@command("hrandfield", arity=-2, flags="readonly", keys=(1, 1, 1), group="hash",
         summary="Get one or multiple random fields from a hash", since="6.2.0",
         complexity="O(N) where N is the number of fields returned")
def hrandfield(ctx: CommandContext, argv: list[bytes]):
    if len(argv) == 2:
        fields = _read(ctx, argv[1])
        if not fields:
            return None
        return ctx.db.random.choice(list(fields))
    count = parse_int(argv[2])
    if not -_COUNT_MAX <= count <= _COUNT_MAX:
        raise CommandError(f"ERR value is out of range, value must between {-_COUNT_MAX} and {_COUNT_MAX}")
    withvalues = False
    if len(argv) > 4 or (len(argv) == 4 and argv[3].upper() != b"WITHVALUES"):
        raise CommandError(SYNTAX)
    if len(argv) == 4:
        withvalues = True
        if not -_COUNT_WITHVALUES_MAX <= count <= _COUNT_WITHVALUES_MAX:
            raise CommandError("ERR value is out of range")
    fields = _read(ctx, argv[1])
    if not fields or count == 0:
        return []
    rng = ctx.db.random
    names = list(fields)
    if count < 0:
        chosen = rng.choices(names, k=-count)
    elif count >= len(names):
        chosen = names
    else:
        chosen = rng.sample(names, count)
    if not withvalues:
        return chosen
    # Redis answers RESP3 clients with [field, value] pairs and RESP2 clients
    # with a flat array; the shape of the reply is all the client decides here.
    if getattr(ctx.client, "resp3", False):
        return [[name, fields[name]] for name in chosen]
    out = []
    for name in chosen:
        out.append(name)
        out.append(fields[name])
    return out


# HSCAN key cursor [MATCH pattern] [COUNT count] [NOVALUES]
@command("hscan", arity=-3, flags="readonly", keys=(1, 1, 1), group="hash",
         summary="Incrementally iterate hash fields and associated values", since="2.8.0",
         complexity="O(1) for every call. O(N) for a complete iteration, including enough command "
                    "calls for the cursor to return back to 0. N is the number of elements inside "
                    "the collection.")
def hscan(ctx: CommandContext, argv: list[bytes]):
    # The whole hash is returned in one reply with cursor 0, as Redis does for
    # small (listpack) hashes: that trivially returns every field present for
    # the whole iteration, and COUNT is only a hint.
    parse_cursor(argv[2])
    fields = _read(ctx, argv[1])
    if fields is None:
        return [b"0", []]
    _, match, _, novalues = parse_scan_options(argv, 3, for_hash=True)
    out = []
    for field, value in fields.items():
        if match is None or match(field):
            out.append(field)
            if not novalues:
                out.append(value)
    return [b"0", out]
