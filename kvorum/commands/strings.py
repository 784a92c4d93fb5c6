"""String commands (Redis' t_string.c).

Strings are stored as bytes; integers and floats are strings that parse as
such. Every handler parses and validates all its arguments before it writes,
so a bad call changes nothing. GET and plain `SET key value` are the hot path
and are kept to a lookup and a store.
"""

from __future__ import annotations

from fractions import Fraction

from kvorum.commands.args import (
    INT64_MAX,
    INT64_MIN,
    add_long_double,
    check_string_length,
    format_long_double,
    parse_int,
    parse_long_double,
    to_int,
)
from kvorum.commands.table import CommandContext, command
from kvorum.protocol.values import NOT_INTEGER, OK, OVERFLOW, SYNTAX, WRONGTYPE, CommandError, wrong_arity

# Expiry option kinds shared by SET and GETEX.
_EX, _PX, _EXAT, _PXAT = 1, 2, 3, 4
_EXPIRE_KINDS = {b"EX": _EX, b"PX": _PX, b"EXAT": _EXAT, b"PXAT": _PXAT}
_SECONDS_MAX = INT64_MAX // 1000


def _string_or_none(value):
    if value.__class__ is dict:
        raise CommandError(WRONGTYPE)
    return value


def expire_at_from_option(kind: int, arg: bytes, now_ms: int, name: str) -> int:
    """Absolute expiry in ms for EX/PX/EXAT/PXAT, as getExpireMillisecondsOrReply."""
    value = parse_int(arg)
    if value <= 0 or (kind in (_EX, _EXAT) and value > _SECONDS_MAX):
        raise CommandError(f"ERR invalid expire time in '{name}' command")
    if kind in (_EX, _EXAT):
        value *= 1000
    if kind in (_EX, _PX):
        value += now_ms
        if value > INT64_MAX:
            raise CommandError(f"ERR invalid expire time in '{name}' command")
    return value


class _Options:
    """Parsed SET / GETEX options (parseExtendedStringArgumentsOrReply)."""

    __slots__ = ("nx", "xx", "get", "keepttl", "persist", "kind", "arg", "ext")

    def __init__(self, argv: list[bytes], start: int, for_set: bool):
        self.nx = self.xx = self.get = self.keepttl = self.persist = False
        self.kind = 0
        self.arg = b""
        self.ext: int | None = None  # SET ... IFNEWER: the caller's external version
        j = start
        argc = len(argv)
        while j < argc:
            opt = argv[j].upper()
            has_next = j + 1 < argc
            kind = _EXPIRE_KINDS.get(opt)
            if opt == b"NX" and for_set and not self.xx:
                self.nx = True
            elif opt == b"XX" and for_set and not self.nx:
                self.xx = True
            elif opt == b"GET" and for_set:
                self.get = True
            elif opt == b"IFNEWER" and for_set and has_next and self.ext is None:
                self.ext = parse_int(argv[j + 1])
                j += 1
            elif opt == b"KEEPTTL" and for_set and not self.persist and not self.kind:
                self.keepttl = True
            elif opt == b"PERSIST" and not for_set and not self.kind and not self.keepttl:
                self.persist = True
            elif (kind is not None and has_next and not self.keepttl and not self.persist
                  and self.kind in (0, kind)):
                self.kind = kind
                self.arg = argv[j + 1]
                j += 1
            else:
                raise CommandError(SYNTAX)
            j += 1


# GET key
@command("get", arity=2, flags="readonly fast", keys=(1, 1, 1), group="string",
         summary="Get the value of a key", since="1.0.0", complexity="O(1)")
def get(ctx: CommandContext, argv: list[bytes]):
    value = ctx.db.get(argv[1], ctx.now_ms)
    if value.__class__ is dict:
        raise CommandError(WRONGTYPE)
    return value


# SET key value [NX | XX] [GET] [EX seconds | PX milliseconds |
#   EXAT unix-time-seconds | PXAT unix-time-milliseconds | KEEPTTL] [IFNEWER ext-version]
# IFNEWER is kvorum's (docs/commands-versions.md): the SET happens only if the
# key's stored external version is absent or older than ext-version.
@command("set", arity=-3, flags="write denyoom", keys=(1, 1, 1), group="string",
         summary="Set the string value of a key", since="1.0.0", complexity="O(1)",
         blind=lambda argv: len(argv) == 3)
def set_(ctx: CommandContext, argv: list[bytes]):
    if len(argv) == 3:
        ctx.db.set_plain(argv[1], argv[2], ctx.now_ms)
        return OK
    opts = _Options(argv, 3, for_set=True)
    return _set_generic(ctx, argv[1], argv[2], opts, "set")


def _set_generic(ctx: CommandContext, key: bytes, value: bytes, opts: _Options, name: str):
    db = ctx.db
    now_ms = ctx.now_ms
    expire_at_ms = expire_at_from_option(opts.kind, opts.arg, now_ms, name) if opts.kind else 0
    old = _string_or_none(db.get(key, now_ms)) if opts.get else None
    if set_checked(db, key, value, now_ms, opts, expire_at_ms) and not opts.get:
        return OK
    return old


def parse_set_options(argv: list[bytes], start: int) -> _Options:
    """SET's options from argv[start:] (VSET takes the same ones)."""
    return _Options(argv, start, for_set=True)


def set_checked(db, key: bytes, value: bytes, now_ms: int, opts: _Options, expire_at_ms: int) -> bool:
    """SET's conditions (NX, XX, IFNEWER), then the write; whether it wrote."""
    if opts.nx or opts.xx:
        found = db.contains(key, now_ms)
        if (opts.nx and found) or (opts.xx and not found):
            return False
    if opts.ext is not None and not ext_version_newer(db, key, opts.ext, now_ms):
        return False
    db.set(key, value, now_ms, expire_at_ms, opts.keepttl, opts.ext)
    return True


def ext_version_newer(db, key: bytes, ext: int, now_ms: int) -> bool:
    """Whether a write carrying external version `ext` may replace the key.

    Strictly newer wins: an equal version is refused, so a retried write is a no-op.
    """
    stored = db.ext_version_of(key, now_ms)
    return stored is None or stored < ext


# SETNX key value
@command("setnx", arity=3, flags="write denyoom fast", keys=(1, 1, 1), group="string",
         summary="Set the value of a key, only if the key does not exist", since="1.0.0",
         complexity="O(1)")
def setnx(ctx: CommandContext, argv: list[bytes]):
    db = ctx.db
    if db.contains(argv[1], ctx.now_ms):
        return 0
    db.set(argv[1], argv[2], ctx.now_ms)
    return 1


# SETEX / PSETEX times up to this (seconds or milliseconds) can never overflow an
# expiry time, so such a write always answers +OK; larger ones may be refused.
BLIND_TTL_MAX = 10**12


def _setex_blind(argv: list[bytes]) -> bool:
    ttl = to_int(argv[2])  # the handler's own parsing: "01" or "+1" is refused there too
    return ttl is not None and 0 < ttl <= BLIND_TTL_MAX


def _setex(ctx: CommandContext, argv: list[bytes], kind: int, name: str):
    expire_at_ms = expire_at_from_option(kind, argv[2], ctx.now_ms, name)
    ctx.db.set(argv[1], argv[3], ctx.now_ms, expire_at_ms)
    return OK


# SETEX key seconds value
@command("setex", arity=4, flags="write denyoom", keys=(1, 1, 1), group="string",
         summary="Set the value and expiration of a key", since="2.0.0", complexity="O(1)",
         blind=_setex_blind)
def setex(ctx: CommandContext, argv: list[bytes]):
    return _setex(ctx, argv, _EX, "setex")


# PSETEX key milliseconds value
@command("psetex", arity=4, flags="write denyoom", keys=(1, 1, 1), group="string",
         summary="Set the value and expiration in milliseconds of a key", since="2.6.0",
         complexity="O(1)", blind=_setex_blind)
def psetex(ctx: CommandContext, argv: list[bytes]):
    return _setex(ctx, argv, _PX, "psetex")


# MGET key [key ...]
@command("mget", arity=-2, flags="readonly fast", keys=(1, -1, 1), group="string",
         summary="Get the values of all the given keys", since="1.0.0",
         complexity="O(N) where N is the number of keys to retrieve.")
def mget(ctx: CommandContext, argv: list[bytes]):
    get_ = ctx.db.get
    now_ms = ctx.now_ms
    out = []
    for key in argv[1:]:
        value = get_(key, now_ms)
        out.append(value if value.__class__ is bytes else None)
    return out


# MSET key value [key value ...]
@command("mset", arity=-3, flags="write denyoom", keys=(1, -1, 2), group="string",
         summary="Set multiple keys to multiple values", since="1.0.1",
         complexity="O(N) where N is the number of keys to set.", blind=lambda argv: len(argv) % 2 == 1)
def mset(ctx: CommandContext, argv: list[bytes]):
    if len(argv) % 2 == 0:
        raise wrong_arity("mset")
    set_plain = ctx.db.set_plain
    now_ms = ctx.now_ms
    for i in range(1, len(argv), 2):
        set_plain(argv[i], argv[i + 1], now_ms)
    return OK


# MSETNX key value [key value ...]
@command("msetnx", arity=-3, flags="write denyoom", keys=(1, -1, 2), group="string",
         summary="Set multiple keys to multiple values, only if none of the keys exist",
         since="1.0.1", complexity="O(N) where N is the number of keys to set.")
def msetnx(ctx: CommandContext, argv: list[bytes]):
    if len(argv) % 2 == 0:
        raise wrong_arity("msetnx")
    db = ctx.db
    now_ms = ctx.now_ms
    for i in range(1, len(argv), 2):
        if db.contains(argv[i], now_ms):
            return 0
    for i in range(1, len(argv), 2):
        db.set(argv[i], argv[i + 1], now_ms)
    return 1


# GETSET key value
@command("getset", arity=3, flags="write denyoom fast", keys=(1, 1, 1), group="string",
         summary="Set the string value of a key and return its old value", since="1.0.0",
         complexity="O(1)")
def getset(ctx: CommandContext, argv: list[bytes]):
    old = _string_or_none(ctx.db.get(argv[1], ctx.now_ms))
    ctx.db.set(argv[1], argv[2], ctx.now_ms)
    return old


# GETDEL key
@command("getdel", arity=2, flags="write fast", keys=(1, 1, 1), group="string",
         summary="Get the value of a key and delete the key", since="6.2.0", complexity="O(1)")
def getdel(ctx: CommandContext, argv: list[bytes]):
    value = _string_or_none(ctx.db.get(argv[1], ctx.now_ms))
    if value is not None:
        ctx.db.delete(argv[1], ctx.now_ms)
    return value


# GETEX key [EX seconds | PX milliseconds | EXAT unix-time-seconds |
#   PXAT unix-time-milliseconds | PERSIST]
@command("getex", arity=-2, flags="write fast", keys=(1, 1, 1), group="string",
         summary="Get the value of a key and optionally set its expiration", since="6.2.0",
         complexity="O(1)")
def getex(ctx: CommandContext, argv: list[bytes]):
    opts = _Options(argv, 2, for_set=False)
    db = ctx.db
    now_ms = ctx.now_ms
    key = argv[1]
    value = _string_or_none(db.get(key, now_ms))
    if value is None:
        return None
    if opts.kind:
        # An absolute time already past deletes the key, like set_expire does.
        db.set_expire(key, expire_at_from_option(opts.kind, opts.arg, now_ms, "getex"), now_ms)
    elif opts.persist:
        db.persist(key, now_ms)
    return value


# APPEND key value
@command("append", arity=3, flags="write denyoom fast", keys=(1, 1, 1), group="string",
         summary="Append a value to a key", since="2.0.0",
         complexity="O(1). The amortized time complexity is O(1) assuming the appended value is "
                    "small and the already present value is of any size, since the dynamic string "
                    "library used by Redis will double the free space available on every "
                    "reallocation.")
def append(ctx: CommandContext, argv: list[bytes]):
    db = ctx.db
    old = _string_or_none(db.get_for_write(argv[1], ctx.now_ms))
    if old is None:
        db.set(argv[1], argv[2], ctx.now_ms)
        return len(argv[2])
    check_string_length(db, len(old) + len(argv[2]))
    new = old + argv[2]
    db.set(argv[1], new, ctx.now_ms, keep_ttl=True)
    return len(new)


# STRLEN key
@command("strlen", arity=2, flags="readonly fast", keys=(1, 1, 1), group="string",
         summary="Get the length of the value stored in a key", since="2.2.0", complexity="O(1)")
def strlen(ctx: CommandContext, argv: list[bytes]):
    value = _string_or_none(ctx.db.get(argv[1], ctx.now_ms))
    return 0 if value is None else len(value)


def _getrange(ctx: CommandContext, argv: list[bytes]):
    start = parse_int(argv[2])
    end = parse_int(argv[3])
    value = _string_or_none(ctx.db.get(argv[1], ctx.now_ms))
    if value is None:
        return b""
    length = len(value)
    if start < 0 and end < 0 and start > end:
        return b""
    if start < 0:
        start = max(0, length + start)
    if end < 0:
        end = max(0, length + end)
    end = min(end, length - 1)
    if start > end or length == 0:
        return b""
    return value[start:end + 1]


_GETRANGE_COMPLEXITY = (
    "O(N) where N is the length of the returned string. The complexity is ultimately determined "
    "by the returned length, but because creating a substring from an existing string is very "
    "cheap, it can be considered O(1) for small strings.")


# GETRANGE key start end
@command("getrange", arity=4, flags="readonly", keys=(1, 1, 1), group="string",
         summary="Get a substring of the string stored at a key", since="2.4.0",
         complexity=_GETRANGE_COMPLEXITY)
def getrange(ctx: CommandContext, argv: list[bytes]):
    return _getrange(ctx, argv)


# SUBSTR key start end
@command("substr", arity=4, flags="readonly", keys=(1, 1, 1), group="string",
         summary="Get a substring of the string stored at a key", since="1.0.0",
         complexity=_GETRANGE_COMPLEXITY)
def substr(ctx: CommandContext, argv: list[bytes]):
    return _getrange(ctx, argv)


# SETRANGE key offset value
@command("setrange", arity=4, flags="write denyoom", keys=(1, 1, 1), group="string",
         summary="Overwrite part of a string at key starting at the specified offset",
         since="2.2.0",
         complexity="O(1), not counting the time taken to copy the new string in place. Usually, "
                    "this string is very small so the amortized complexity is O(1). Otherwise, "
                    "complexity is O(M) with M being the length of the value argument.")
def setrange(ctx: CommandContext, argv: list[bytes]):
    offset = parse_int(argv[2])
    if offset < 0:
        raise CommandError("ERR offset is out of range")
    db = ctx.db
    key = argv[1]
    patch = argv[3]
    old = _string_or_none(db.get_for_write(key, ctx.now_ms))
    if not patch:
        return 0 if old is None else len(old)
    check_string_length(db, offset + len(patch))
    if old is None:
        old = b""
    if len(old) < offset:
        old += bytes(offset - len(old))
    new = old[:offset] + patch + old[offset + len(patch):]
    db.set(key, new, ctx.now_ms, keep_ttl=True)
    return len(new)


def _incr_by(ctx: CommandContext, key: bytes, increment: int) -> int:
    db = ctx.db
    old = _string_or_none(db.get_for_write(key, ctx.now_ms))
    if old is None:
        value = 0
    else:
        value = to_int(old)
        if value is None:
            raise CommandError(NOT_INTEGER)
    value += increment
    if not INT64_MIN <= value <= INT64_MAX:
        raise CommandError(OVERFLOW)
    db.set(key, b"%d" % value, ctx.now_ms, keep_ttl=True)
    return value


# INCR key
@command("incr", arity=2, flags="write denyoom fast", keys=(1, 1, 1), group="string",
         summary="Increment the integer value of a key by one", since="1.0.0", complexity="O(1)")
def incr(ctx: CommandContext, argv: list[bytes]):
    return _incr_by(ctx, argv[1], 1)


# DECR key
@command("decr", arity=2, flags="write denyoom fast", keys=(1, 1, 1), group="string",
         summary="Decrement the integer value of a key by one", since="1.0.0", complexity="O(1)")
def decr(ctx: CommandContext, argv: list[bytes]):
    return _incr_by(ctx, argv[1], -1)


# INCRBY key increment
@command("incrby", arity=3, flags="write denyoom fast", keys=(1, 1, 1), group="string",
         summary="Increment the integer value of a key by the given amount", since="1.0.0",
         complexity="O(1)")
def incrby(ctx: CommandContext, argv: list[bytes]):
    return _incr_by(ctx, argv[1], parse_int(argv[2]))


# DECRBY key decrement
@command("decrby", arity=3, flags="write denyoom fast", keys=(1, 1, 1), group="string",
         summary="Decrement the integer value of a key by the given number", since="1.0.0",
         complexity="O(1)")
def decrby(ctx: CommandContext, argv: list[bytes]):
    decrement = parse_int(argv[2])
    if decrement == INT64_MIN:
        raise CommandError("ERR decrement would overflow")
    return _incr_by(ctx, argv[1], -decrement)


# INCRBYFLOAT key increment
@command("incrbyfloat", arity=3, flags="write denyoom fast", keys=(1, 1, 1), group="string",
         summary="Increment the float value of a key by the given amount", since="2.6.0",
         complexity="O(1)")
def incrbyfloat(ctx: CommandContext, argv: list[bytes]):
    db = ctx.db
    key = argv[1]
    old = _string_or_none(db.get_for_write(key, ctx.now_ms))
    value = parse_long_double(old) if old is not None else Fraction(0)
    increment = parse_long_double(argv[2])
    total = add_long_double(value, increment)
    if total is None:
        raise CommandError("ERR increment would produce NaN or Infinity")
    text = format_long_double(total)
    db.set(key, text, ctx.now_ms, keep_ttl=True)
    return text


# LCS key1 key2 [LEN] [IDX] [MINMATCHLEN min-match-len] [WITHMATCHLEN]
@command("lcs", arity=-3, flags="readonly", keys=(1, 2, 1), group="string",
         summary="Find longest common substring", since="7.0.0",
         complexity="O(N*M) where N and M are the lengths of s1 and s2, respectively")
def lcs(ctx: CommandContext, argv: list[bytes]):
    a = ctx.db.get(argv[1], ctx.now_ms)
    b = ctx.db.get(argv[2], ctx.now_ms)
    if a.__class__ is dict or b.__class__ is dict:
        raise CommandError("ERR The specified keys must contain string values")
    a = a or b""
    b = b or b""
    getlen = getidx = withmatchlen = False
    minmatchlen = 0
    j = 3
    while j < len(argv):
        opt = argv[j].upper()
        if opt == b"IDX":
            getidx = True
        elif opt == b"LEN":
            getlen = True
        elif opt == b"WITHMATCHLEN":
            withmatchlen = True
        elif opt == b"MINMATCHLEN" and j + 1 < len(argv):
            minmatchlen = max(0, parse_int(argv[j + 1]))
            j += 1
        else:
            raise CommandError(SYNTAX)
        j += 1
    if getidx and getlen:
        raise CommandError("ERR If you want both the length and indexes, please just use IDX.")
    cells = (len(a) + 1) * (len(b) + 1)
    if cells * 4 > ctx.db.proto_max_bulk_len:
        raise CommandError("ERR Insufficient memory, transient memory for LCS exceeds proto-max-bulk-len")
    if cells > LCS_CELLS_MAX:
        raise CommandError(f"ERR strings too long for LCS (more than {LCS_CELLS_MAX} table cells)")
    table = _lcs_table(a, b)
    if getlen:
        return table[len(a)][len(b)]
    return _lcs_walk(a, b, table, getidx, withmatchlen, minmatchlen)


# The LCS table is (len1 + 1) * (len2 + 1) cells of Python ints, filled in
# Python: this bounds both its memory and the time the server is busy.
LCS_CELLS_MAX = 16 * 1024 * 1024


def _lcs_table(a: bytes, b: bytes) -> list[list[int]]:
    """table[i][j] = length of the LCS of a[:i] and b[:j] (Redis' LCS(i, j))."""
    m = len(b)
    prev = [0] * (m + 1)
    table = [prev]
    for ai in a:
        cur = [0] * (m + 1)
        for j in range(1, m + 1):
            if ai == b[j - 1]:
                cur[j] = prev[j - 1] + 1
            else:
                up = prev[j]
                left = cur[j - 1]
                cur[j] = up if up > left else left
        table.append(cur)
        prev = cur
    return table


def _lcs_walk(a: bytes, b: bytes, table: list[list[int]], getidx: bool, withmatchlen: bool,
              minmatchlen: int):
    """Walk the table back from the end as Redis' lcsCommand does, collecting
    the LCS string or the matching ranges (newest first)."""
    alen, blen = len(a), len(b)
    idx = table[alen][blen]
    result = bytearray(idx)
    matches = []
    arange_start, arange_end, brange_start, brange_end = alen, 0, 0, 0
    i, j = alen, blen
    while i > 0 and j > 0:
        emit = False
        if a[i - 1] == b[j - 1]:
            result[idx - 1] = a[i - 1]
            if arange_start == alen:
                arange_start = arange_end = i - 1
                brange_start = brange_end = j - 1
            elif arange_start == i and brange_start == j:
                arange_start -= 1
                brange_start -= 1
            else:
                emit = True
            if arange_start == 0 or brange_start == 0:
                emit = True
            idx -= 1
            i -= 1
            j -= 1
        else:
            if table[i - 1][j] > table[i][j - 1]:
                i -= 1
            else:
                j -= 1
            if arange_start != alen:
                emit = True
        if emit:
            match_len = arange_end - arange_start + 1
            if getidx and (minmatchlen == 0 or match_len >= minmatchlen):
                match = [[arange_start, arange_end], [brange_start, brange_end]]
                if withmatchlen:
                    match.append(match_len)
                matches.append(match)
            arange_start = alen
    if getidx:
        return {"matches": matches, "len": table[alen][blen]}
    return bytes(result)
