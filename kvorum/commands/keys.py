"""Keyspace commands (Redis' db.c and expire.c): DEL, EXPIRE, SCAN, RENAME, ...

DBSIZE, FLUSHDB and FLUSHALL are declared here too, in Redis' "server" group,
because they act on the keyspace alone.
"""

from __future__ import annotations

from kvorum.commands.args import INT64_MAX, parse_count, parse_cursor, parse_int, to_int
from kvorum.commands.table import CommandContext, command, container
from kvorum.protocol.values import OK, SYNTAX, CommandError, SimpleString
from kvorum.store.glob import matcher

# Seconds that convert to milliseconds without overflowing 64 bits (C's
# LLONG_MIN / 1000 and LLONG_MAX / 1000, truncated toward zero).
_SECONDS_MAX = INT64_MAX // 1000
_SECONDS_MIN = -_SECONDS_MAX

# Keys examined per SCAN call when COUNT is not given (Redis' default).
SCAN_COUNT_DEFAULT = 10


def _delete_keys(ctx: CommandContext, argv: list[bytes]) -> int:
    delete = ctx.db.delete
    now_ms = ctx.now_ms
    deleted = 0
    for key in argv[1:]:
        if delete(key, now_ms):
            deleted += 1
    return deleted


# DEL key [key ...]
@command("del", arity=-2, flags="write", keys=(1, -1, 1), group="generic",
         summary="Delete a key", since="1.0.0",
         complexity="O(N) where N is the number of keys that will be removed. When a key to "
                    "remove holds a value other than a string, the individual complexity for this "
                    "key is O(M) where M is the number of elements in the list, set, sorted set or "
                    "hash. Removing a single key that holds a string value is O(1).")
def del_(ctx: CommandContext, argv: list[bytes]):
    return _delete_keys(ctx, argv)


# UNLINK key [key ...]
@command("unlink", arity=-2, flags="write fast", keys=(1, -1, 1), group="generic",
         summary="Delete a key asynchronously in another thread. Otherwise it is just as DEL, "
                 "but non blocking.", since="4.0.0",
         complexity="O(1) for each key removed regardless of its size. Then the command does "
                    "O(N) work in a different thread in order to reclaim memory, where N is the "
                    "number of allocations the deleted objects where composed of.")
def unlink(ctx: CommandContext, argv: list[bytes]):
    return _delete_keys(ctx, argv)


# EXISTS key [key ...]
@command("exists", arity=-2, flags="readonly fast", keys=(1, -1, 1), group="generic",
         summary="Determine if a key exists", since="1.0.0",
         complexity="O(N) where N is the number of keys to check.")
def exists(ctx: CommandContext, argv: list[bytes]):
    get = ctx.db.get
    now_ms = ctx.now_ms
    count = 0
    for key in argv[1:]:
        if get(key, now_ms) is not None:
            count += 1
    return count


def _expire_generic(ctx: CommandContext, argv: list[bytes], base_ms: int, unit_ms: int, name: str):
    nx = xx = gt = lt = False
    for raw in argv[3:]:
        opt = raw.upper()
        if opt == b"NX":
            nx = True
        elif opt == b"XX":
            xx = True
        elif opt == b"GT":
            gt = True
        elif opt == b"LT":
            lt = True
        else:
            raise CommandError(f"ERR Unsupported option {raw.decode(errors='replace')}")
    if nx and (xx or gt or lt):
        raise CommandError("ERR NX and XX, GT or LT options at the same time are not compatible")
    if gt and lt:
        raise CommandError("ERR GT and LT options at the same time are not compatible")
    when = parse_int(argv[2])
    if unit_ms == 1000:
        if not _SECONDS_MIN <= when <= _SECONDS_MAX:
            raise CommandError(f"ERR invalid expire time in '{name}' command")
        when *= 1000
    if when > INT64_MAX - base_ms:
        raise CommandError(f"ERR invalid expire time in '{name}' command")
    when += base_ms
    db = ctx.db
    key = argv[1]
    current = db.expire_at_of(key, ctx.now_ms)
    if current == -2:
        return 0
    if nx and current != -1:
        return 0
    if xx and current == -1:
        return 0
    if gt and (current == -1 or when <= current):
        return 0
    if lt and current != -1 and when >= current:
        return 0
    db.set_expire(key, when, ctx.now_ms)
    return 1


# EXPIRE key seconds [NX | XX | GT | LT]
@command("expire", arity=-3, flags="write fast", keys=(1, 1, 1), group="generic",
         summary="Set a key's time to live in seconds", since="1.0.0",
         complexity="O(1)")
def expire(ctx: CommandContext, argv: list[bytes]):
    return _expire_generic(ctx, argv, ctx.now_ms, 1000, "expire")


# PEXPIRE key milliseconds [NX | XX | GT | LT]
@command("pexpire", arity=-3, flags="write fast", keys=(1, 1, 1), group="generic",
         summary="Set a key's time to live in milliseconds", since="2.6.0",
         complexity="O(1)")
def pexpire(ctx: CommandContext, argv: list[bytes]):
    return _expire_generic(ctx, argv, ctx.now_ms, 1, "pexpire")


# EXPIREAT key unix-time-seconds [NX | XX | GT | LT]
@command("expireat", arity=-3, flags="write fast", keys=(1, 1, 1), group="generic",
         summary="Set the expiration for a key as a UNIX timestamp", since="1.2.0",
         complexity="O(1)")
def expireat(ctx: CommandContext, argv: list[bytes]):
    return _expire_generic(ctx, argv, 0, 1000, "expireat")


# PEXPIREAT key unix-time-milliseconds [NX | XX | GT | LT]
@command("pexpireat", arity=-3, flags="write fast", keys=(1, 1, 1), group="generic",
         summary="Set the expiration for a key as a UNIX timestamp specified in milliseconds",
         since="2.6.0", complexity="O(1)")
def pexpireat(ctx: CommandContext, argv: list[bytes]):
    return _expire_generic(ctx, argv, 0, 1, "pexpireat")


def _ttl_generic(ctx: CommandContext, key: bytes, output_ms: bool, absolute: bool) -> int:
    expire_at_ms = ctx.db.expire_at_of(key, ctx.now_ms)
    if expire_at_ms < 0:
        return expire_at_ms
    ttl = expire_at_ms if absolute else max(0, expire_at_ms - ctx.now_ms)
    return ttl if output_ms else (ttl + 500) // 1000


# TTL key
@command("ttl", arity=2, flags="readonly fast", keys=(1, 1, 1), group="generic",
         summary="Get the time to live for a key in seconds", since="1.0.0", complexity="O(1)")
def ttl(ctx: CommandContext, argv: list[bytes]):
    return _ttl_generic(ctx, argv[1], False, False)


# PTTL key
@command("pttl", arity=2, flags="readonly fast", keys=(1, 1, 1), group="generic",
         summary="Get the time to live for a key in milliseconds", since="2.6.0",
         complexity="O(1)")
def pttl(ctx: CommandContext, argv: list[bytes]):
    return _ttl_generic(ctx, argv[1], True, False)


# EXPIRETIME key
@command("expiretime", arity=2, flags="readonly fast", keys=(1, 1, 1), group="generic",
         summary="Get the expiration Unix timestamp for a key", since="7.0.0", complexity="O(1)")
def expiretime(ctx: CommandContext, argv: list[bytes]):
    return _ttl_generic(ctx, argv[1], False, True)


# PEXPIRETIME key
@command("pexpiretime", arity=2, flags="readonly fast", keys=(1, 1, 1), group="generic",
         summary="Get the expiration Unix timestamp for a key in milliseconds", since="7.0.0",
         complexity="O(1)")
def pexpiretime(ctx: CommandContext, argv: list[bytes]):
    return _ttl_generic(ctx, argv[1], True, True)


# PERSIST key
@command("persist", arity=2, flags="write fast", keys=(1, 1, 1), group="generic",
         summary="Remove the expiration from a key", since="2.2.0", complexity="O(1)")
def persist(ctx: CommandContext, argv: list[bytes]):
    return 1 if ctx.db.persist(argv[1], ctx.now_ms) else 0


def type_name(value) -> str:
    if value is None:
        return "none"
    return "string" if value.__class__ is bytes else "hash"


# TYPE key
@command("type", arity=2, flags="readonly fast", keys=(1, 1, 1), group="generic",
         summary="Determine the type stored at key", since="1.0.0", complexity="O(1)")
def type_(ctx: CommandContext, argv: list[bytes]):
    return SimpleString(type_name(ctx.db.peek(argv[1], ctx.now_ms)))


# KEYS pattern
@command("keys", arity=2, flags="readonly", keys=(0, 0, 0), group="generic",
         summary="Find all keys matching the given pattern", since="1.0.0",
         complexity="O(N) with N being the number of keys in the database, under the assumption "
                    "that the key names in the database and the given pattern have limited length.")
def keys(ctx: CommandContext, argv: list[bytes]):
    match = matcher(argv[1])
    return [key for key in ctx.db.keys(ctx.now_ms) if match(key)]


def parse_scan_options(argv: list[bytes], start: int, for_hash: bool):
    """SCAN-family options: (count, match predicate or None, type name or None, novalues).

    TYPE is for SCAN only, NOVALUES for HSCAN only; anything else is a syntax error.
    """
    count = SCAN_COUNT_DEFAULT
    match = None
    type_filter = None
    novalues = False
    i = start
    argc = len(argv)
    while i < argc:
        opt = argv[i].upper()
        if opt == b"COUNT" and i + 1 < argc:
            count = parse_count(argv[i + 1])
            i += 2
        elif opt == b"MATCH" and i + 1 < argc:
            match = None if argv[i + 1] == b"*" else matcher(argv[i + 1])
            i += 2
        elif opt == b"TYPE" and not for_hash and i + 1 < argc:
            type_filter = argv[i + 1].decode(errors="replace").lower()
            i += 2
        elif opt == b"NOVALUES" and for_hash:
            novalues = True
            i += 1
        else:
            raise CommandError(SYNTAX)
    return count, match, type_filter, novalues


# SCAN cursor [MATCH pattern] [COUNT count] [TYPE type]
@command("scan", arity=-2, flags="readonly", keys=(0, 0, 0), group="generic",
         summary="Incrementally iterate the keys space", since="2.8.0",
         complexity="O(1) for every call. O(N) for a complete iteration, including enough command "
                    "calls for the cursor to return back to 0. N is the number of elements inside "
                    "the collection.")
def scan(ctx: CommandContext, argv: list[bytes]):
    # The cursor is the creation sequence number of the last key examined and
    # keys are visited newest first (see kvorum.store.keyspace): every key that
    # exists for the whole iteration is returned exactly once, and keys created
    # meanwhile cannot keep the iteration from ending.
    cursor = parse_cursor(argv[1])
    count, match, type_filter, _ = parse_scan_options(argv, 2, for_hash=False)
    db = ctx.db
    now_ms = ctx.now_ms
    cursor, found = db.scan(cursor, count, now_ms)
    if match is not None:
        found = [key for key in found if match(key)]
    if type_filter is not None:
        found = [key for key in found if type_name(db.peek(key, now_ms)) == type_filter]
    return [b"%d" % cursor, found]


def _rename_generic(ctx: CommandContext, argv: list[bytes], nx: bool):
    db = ctx.db
    now_ms = ctx.now_ms
    src, dst = argv[1], argv[2]
    if not db.contains(src, now_ms):
        raise CommandError("ERR no such key")
    if src == dst:
        return 0 if nx else OK
    if nx and db.contains(dst, now_ms):
        return 0
    db.rename(src, dst, now_ms)
    return 1 if nx else OK


# RENAME key newkey
@command("rename", arity=3, flags="write", keys=(1, 2, 1), group="generic",
         summary="Rename a key", since="1.0.0", complexity="O(1)")
def rename(ctx: CommandContext, argv: list[bytes]):
    return _rename_generic(ctx, argv, nx=False)


# RENAMENX key newkey
@command("renamenx", arity=3, flags="write fast", keys=(1, 2, 1), group="generic",
         summary="Rename a key, only if the new key does not exist", since="1.0.0",
         complexity="O(1)")
def renamenx(ctx: CommandContext, argv: list[bytes]):
    return _rename_generic(ctx, argv, nx=True)


# COPY source destination [DB destination-db] [REPLACE]
@command("copy", arity=-3, flags="write denyoom", keys=(1, 2, 1), group="generic",
         summary="Copy a key", since="6.2.0",
         complexity="O(N) worst case for collections, where N is the number of nested items. O(1) "
                    "for string values.")
def copy(ctx: CommandContext, argv: list[bytes]):
    replace = False
    j = 3
    while j < len(argv):
        opt = argv[j].upper()
        if opt == b"REPLACE":
            replace = True
        elif opt == b"DB" and j + 1 < len(argv):
            if parse_int(argv[j + 1]) != 0:
                raise CommandError("ERR DB index is out of range")
            j += 1
        else:
            raise CommandError(SYNTAX)
        j += 1
    src, dst = argv[1], argv[2]
    if src == dst:
        raise CommandError("ERR source and destination objects are the same")
    return 1 if ctx.db.copy(src, dst, ctx.now_ms, replace) else 0


# TOUCH key [key ...]
@command("touch", arity=-2, flags="readonly fast", keys=(1, -1, 1), group="generic",
         summary="Alters the last access time of a key(s). Returns the number of existing keys "
                 "specified.", since="3.2.1",
         complexity="O(N) where N is the number of keys that will be touched.")
def touch(ctx: CommandContext, argv: list[bytes]):
    touch_ = ctx.db.touch
    now_ms = ctx.now_ms
    return sum(1 for key in argv[1:] if touch_(key, now_ms))


# RANDOMKEY
@command("randomkey", arity=1, flags="readonly", keys=(0, 0, 0), group="generic",
         summary="Return a random key from the keyspace", since="1.0.0", complexity="O(1)")
def randomkey(ctx: CommandContext, argv: list[bytes]):
    return ctx.db.random_key(ctx.now_ms)


# DBSIZE
@command("dbsize", arity=1, flags="readonly fast", keys=(0, 0, 0), group="server",
         summary="Return the number of keys in the selected database", since="1.0.0",
         complexity="O(1)")
def dbsize(ctx: CommandContext, argv: list[bytes]):
    return len(ctx.db)


def _flush(ctx: CommandContext, argv: list[bytes]):
    if len(argv) > 2 or (len(argv) == 2 and argv[1].upper() not in (b"ASYNC", b"SYNC")):
        raise CommandError(SYNTAX)
    ctx.db.flush()
    return OK


# FLUSHDB [ASYNC | SYNC]
@command("flushdb", arity=-1, flags="write", keys=(0, 0, 0), group="server",
         summary="Remove all keys from the current database", since="1.0.0",
         complexity="O(N) where N is the number of keys in the selected database")
def flushdb(ctx: CommandContext, argv: list[bytes]):
    return _flush(ctx, argv)


# FLUSHALL [ASYNC | SYNC]
@command("flushall", arity=-1, flags="write", keys=(0, 0, 0), group="server",
         summary="Remove all keys from all databases", since="1.0.0",
         complexity="O(N) where N is the total number of keys in all databases")
def flushall(ctx: CommandContext, argv: list[bytes]):
    return _flush(ctx, argv)


container("object", arity=-2, group="generic",
          summary="A container for object introspection commands", since="2.2.3")

_LFU_ONLY = ("ERR An LFU maxmemory policy is not selected, access frequency not tracked. Please "
             "note that when switching between policies at runtime LRU and LFU data will take "
             "some time to adjust.")

# Redis' encoding thresholds, reported by OBJECT ENCODING.
EMBSTR_BYTES_MAX = 44
LISTPACK_ENTRIES_MAX = 128
LISTPACK_VALUE_BYTES_MAX = 64


def encoding_name(value) -> str:
    if value.__class__ is bytes:
        if to_int(value) is not None:
            return "int"
        return "embstr" if len(value) <= EMBSTR_BYTES_MAX else "raw"
    if len(value) <= LISTPACK_ENTRIES_MAX and all(
        len(f) <= LISTPACK_VALUE_BYTES_MAX and len(v) <= LISTPACK_VALUE_BYTES_MAX for f, v in value.items()
    ):
        return "listpack"
    return "hashtable"


# OBJECT ENCODING key
@command("encoding", container="object", arity=3, flags="readonly", keys=(2, 2, 1),
         group="generic", summary="Inspect the internal encoding of a Redis object",
         since="2.2.3", complexity="O(1)")
def object_encoding(ctx: CommandContext, argv: list[bytes]):
    value = ctx.db.peek(argv[2], ctx.now_ms)
    return None if value is None else encoding_name(value).encode()


# OBJECT REFCOUNT key
@command("refcount", container="object", arity=3, flags="readonly", keys=(2, 2, 1),
         group="generic", summary="Get the number of references to the value of the key",
         since="2.2.3", complexity="O(1)")
def object_refcount(ctx: CommandContext, argv: list[bytes]):
    return None if ctx.db.peek(argv[2], ctx.now_ms) is None else 1


# OBJECT IDLETIME key
@command("idletime", container="object", arity=3, flags="readonly", keys=(2, 2, 1),
         group="generic", summary="Get the time since a Redis object was last accessed",
         since="2.2.3", complexity="O(1)")
def object_idletime(ctx: CommandContext, argv: list[bytes]):
    idle_ms = ctx.db.idle_ms(argv[2], ctx.now_ms)
    return None if idle_ms is None else idle_ms // 1000


# OBJECT FREQ key
@command("freq", container="object", arity=3, flags="readonly", keys=(2, 2, 1),
         group="generic", summary="Get the logarithmic access frequency counter of a Redis object",
         since="4.0.0", complexity="O(1)")
def object_freq(ctx: CommandContext, argv: list[bytes]):
    if ctx.db.peek(argv[2], ctx.now_ms) is None:
        return None
    raise CommandError(_LFU_ONLY)


# OBJECT HELP
@command("help", container="object", arity=2, flags="loading stale", keys=(0, 0, 0),
         group="generic", summary="Show helpful text about the different subcommands",
         since="6.2.0", complexity="O(1)")
def object_help(ctx: CommandContext, argv: list[bytes]):
    return [
        "OBJECT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
        "ENCODING <key>",
        "    Return the kind of internal representation used in order to store the value",
        "    associated with a <key>.",
        "FREQ <key>",
        "    Return the access frequency index of the <key>. The returned integer is",
        "    proportional to the logarithm of the recent access frequency of the key.",
        "IDLETIME <key>",
        "    Return the idle time of the <key>, that is the approximated number of",
        "    seconds elapsed since the last access to the key.",
        "REFCOUNT <key>",
        "    Return the number of references of the value associated with the specified",
        "    <key>.",
        "HELP",
        "    Print this help.",
    ]
