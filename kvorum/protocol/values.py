"""Reply values: what command handlers return, independent of RESP version.

Handlers return plain Python values and the encoder (`kvorum.protocol.encode`)
turns them into RESP2 or RESP3 bytes for the connection that asked:

    bytes / bytearray / memoryview -> bulk string
    str                            -> bulk string (UTF-8); use SimpleString for "+OK"
    int (not bool)                 -> integer
    bool                           -> RESP3 boolean, RESP2 integer 1/0
    float                          -> RESP3 double, RESP2 bulk string
    None                           -> RESP3 null, RESP2 null bulk ($-1)
    NullArray                      -> RESP3 null, RESP2 null array (*-1)
    list / tuple                   -> array
    dict                           -> RESP3 map, RESP2 flat array k1 v1 k2 v2
    set / frozenset                -> RESP3 set, RESP2 array
    SimpleString                   -> +text
    Verbatim                       -> RESP3 verbatim string, RESP2 bulk string
    CommandError (returned)        -> -ERR ... (also raised by handlers)
    Push                           -> RESP3 push (>), RESP2 array
    RawReply                       -> bytes already encoded (hot-path constants)
"""

from __future__ import annotations

from dataclasses import dataclass


class CommandError(Exception):
    """An error reply. The message includes its prefix: 'ERR ...', 'WRONGTYPE ...'.

    Raised by handlers for bad input or operating errors; the command changes
    nothing when it raises before writing (handlers validate first, then write).
    """

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


@dataclass(frozen=True, slots=True)
class SimpleString:
    text: str


@dataclass(frozen=True, slots=True)
class Verbatim:
    text: str
    format: str = "txt"


@dataclass(frozen=True, slots=True)
class Push:
    items: list


@dataclass(frozen=True, slots=True)
class RawReply:
    data: bytes


class _NullArray:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NullArray"


NullArray = _NullArray()

OK = SimpleString("OK")
QUEUED = SimpleString("QUEUED")
PONG = SimpleString("PONG")

# Error texts that clients and the Redis test suite match on; keep them verbatim.
WRONGTYPE = "WRONGTYPE Operation against a key holding the wrong kind of value"
SYNTAX = "ERR syntax error"
NOT_INTEGER = "ERR value is not an integer or out of range"
NOT_FLOAT = "ERR value is not a valid float"
OVERFLOW = "ERR increment or decrement would overflow"
NOAUTH = "NOAUTH Authentication required."
OOM = "OOM command not allowed when used memory > 'maxmemory'."


def wrong_arity(name: str) -> CommandError:
    return CommandError(f"ERR wrong number of arguments for '{name}' command")
