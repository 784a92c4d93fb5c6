"""Keyspace commands (Redis' db.c and expire.c): DEL, EXPIRE, SCAN, RENAME, ...

DBSIZE, FLUSHDB and FLUSHALL are declared here too, in Redis' "server" group,
because they act on the keyspace alone.
"""

from __future__ import annotations

from kvorum.commands.table import CommandContext, command


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
