"""Reply conversion between kvorum's reply values and Lua, both ways, as Redis 7 documents it.

Command reply -> Lua (what redis.call returns), by the script's protocol
(`redis.setresp`, 2 unless changed):

    bulk string            -> string           integer -> number
    status (+OK)           -> {ok=...}         error   -> {err=...}
    array                  -> table            nil     -> false (RESP2) / nil (RESP3)
    RESP3 map, set         -> {map={...}}, {set={k=true}} (RESP2: a flat array)
    RESP3 double, boolean  -> {double=n}, boolean (RESP2: bulk string, 1 / 0)

Lua -> reply (what the script returns):

    string -> bulk string; number -> integer (truncated); true -> 1 (RESP2) / true;
    false, nil -> nil (RESP2) / false, nil; {err=} -> error; {ok=} -> status;
    {double=}, {map=}, {set=}, {big_number=}, {verbatim_string=} -> those RESP3 types;
    other tables -> array up to the first nil.

Nesting is bounded by REPLY_DEPTH_MAX, so a table that holds itself is an error.
"""

from __future__ import annotations

import math

from kvorum.protocol.encoder import format_double
from kvorum.protocol.values import CommandError, NullArray, Push, RawReply, SimpleString, Verbatim

# Tables nested deeper than this in a script's reply are refused ("reached lua stack limit").
REPLY_DEPTH_MAX = 100

STACK_LIMIT = "ERR reached lua stack limit"


def to_lua(lua, value, resp3: bool):
    """A command's reply value as the Lua value redis.call returns."""
    t = value.__class__
    if t is bytes:
        return value
    if t is int:
        return value
    if t is str:
        return value.encode()
    if value is None or value is NullArray:
        return None if resp3 else False
    if t is bool:
        return value if resp3 else int(value)
    if t is float:
        if resp3:
            return lua.table_from({b"double": value})
        return format_double(value).encode()
    if t is SimpleString:
        return lua.table_from({b"ok": value.text.encode()})
    if t is CommandError:
        return lua.table_from({b"err": value.message.encode("utf-8", "surrogateescape")})
    if t is list or t is tuple or t is Push:
        items = value.items if t is Push else value
        return lua.table_from([to_lua(lua, item, resp3) for item in items])
    if t is dict:
        if resp3:
            return lua.table_from({b"map": lua.table_from(
                {to_lua(lua, k, resp3): to_lua(lua, v, resp3) for k, v in value.items()})})
        flat = []
        for k, v in value.items():
            flat.append(to_lua(lua, k, resp3))
            flat.append(to_lua(lua, v, resp3))
        return lua.table_from(flat)
    if t is set or t is frozenset:
        if resp3:
            return lua.table_from({b"set": lua.table_from({to_lua(lua, k, resp3): True for k in value})})
        return lua.table_from([to_lua(lua, k, resp3) for k in value])
    if t is Verbatim:
        if resp3:
            return lua.table_from({b"verbatim_string": lua.table_from(
                {b"format": value.format.encode(), b"string": value.text.encode()})})
        return value.text.encode()
    if t is bytearray or t is memoryview:
        return bytes(value)
    assert t is not RawReply, "a script cannot run a command with a pre-encoded reply"
    raise AssertionError(f"no Lua conversion for {t.__name__}")


def from_lua(value, resp3: bool, lua_type, rawget, depth: int = 0):
    """What a script returned, as a reply value (an error is a returned CommandError).

    Tables are read with `rawget`, as Redis reads them: a metatable cannot run code here."""
    if value is None:
        return None
    t = value.__class__
    if t is bytes:
        return value
    if t is bool:
        if resp3:
            return value
        return 1 if value else None
    if t is int:
        return value
    if t is float:
        return _truncate(value)
    if lua_type(value) != b"table":
        return None  # functions, coroutines, userdata: Redis answers nil
    if depth >= REPLY_DEPTH_MAX:
        return CommandError(STACK_LIMIT)
    err = rawget(value, b"err")
    if err.__class__ is bytes:
        return CommandError(err.decode("utf-8", "surrogateescape"))
    ok = rawget(value, b"ok")
    if ok.__class__ is bytes:
        return SimpleString(ok.decode("utf-8", "surrogateescape").replace("\r", " ").replace("\n", " "))
    double = rawget(value, b"double")
    if double.__class__ in (int, float):
        return float(double)
    big = rawget(value, b"big_number")
    if big.__class__ is bytes:
        return big.replace(b"\r", b" ").replace(b"\n", b" ")
    verbatim = rawget(value, b"verbatim_string")
    if verbatim is not None and lua_type(verbatim) == b"table":
        fmt, text = rawget(verbatim, b"format"), rawget(verbatim, b"string")
        if fmt.__class__ is bytes and text.__class__ is bytes:
            return Verbatim(text.decode("utf-8", "surrogateescape"), fmt.decode("utf-8", "surrogateescape"))
    mapping = rawget(value, b"map")
    if mapping is not None and lua_type(mapping) == b"table":
        out = {}
        for k, v in mapping.items():
            out[_key(from_lua(k, resp3, lua_type, rawget, depth + 1))] = from_lua(v, resp3, lua_type, rawget, depth + 1)
        return out
    members = rawget(value, b"set")
    if members is not None and lua_type(members) == b"table":
        return {_key(from_lua(k, resp3, lua_type, rawget, depth + 1)) for k in members.keys()}
    items = []
    i = 1
    while True:
        item = rawget(value, i)
        if item is None:
            return _first_error(items)
        items.append(from_lua(item, resp3, lua_type, rawget, depth + 1))
        i += 1


def _first_error(items: list):
    """A reply nested too deep is an error for the whole reply, as Redis stops there."""
    for item in items:
        if item.__class__ is CommandError and item.message == STACK_LIMIT:
            return item
    return items


def _key(value):
    """Map keys and set members must be hashable: a nested table becomes its bytes form."""
    if value.__class__ in (list, dict, set, CommandError, SimpleString, Verbatim):
        return repr(value).encode()
    return value


def _truncate(number: float) -> int:
    """Lua numbers are doubles; Redis replies with the integer part (C's cast)."""
    if math.isnan(number):
        return 0
    if math.isinf(number):
        return (1 << 63) - 1 if number > 0 else -(1 << 63)
    return int(number)
