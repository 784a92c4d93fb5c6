"""Reply encoding: reply values (see `kvorum.protocol.values`) to RESP2 or RESP3 bytes.

`encode(value, resp3)` is on the hot path of every command, so the common
shapes (bytes, None, int, the OK/PONG/QUEUED constants) are tested first with
`type(x) is T` or identity and encoded with one %-format; everything else goes through
`_encode_into`, which appends the parts of nested values to one list that is
joined once.
"""

from __future__ import annotations

import math

from kvorum.protocol.values import (
    OK,
    PONG,
    QUEUED,
    CommandError,
    NullArray,
    Push,
    RawReply,
    SimpleString,
    Verbatim,
)

OK_REPLY = b"+OK\r\n"
PONG_REPLY = b"+PONG\r\n"
QUEUED_REPLY = b"+QUEUED\r\n"
NULL_BULK_RESP2 = b"$-1\r\n"
NULL_ARRAY_RESP2 = b"*-1\r\n"
NULL_RESP3 = b"_\r\n"

# Integer replies up to this bound are pre-encoded; counters and lengths are mostly small.
SMALL_INT_MAX = 1024
_SMALL_INTS = [b":%d\r\n" % i for i in range(SMALL_INT_MAX + 1)]


def format_double(value: float) -> str:
    """The shortest text that reads back as the same double, Redis style ("3", "1.5", "inf")."""
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if math.isnan(value):
        return "nan"
    text = repr(value)
    if text.endswith(".0"):
        text = text[:-2]
    return text


def error_line(message: str) -> bytes:
    """An error reply; newlines would break the framing, so, as in Redis'
    addReplyErrorFormat, those at the end are dropped and the others become spaces."""
    if "\r" in message or "\n" in message:
        message = message.rstrip("\r\n").replace("\r", " ").replace("\n", " ")
    return b"-%s\r\n" % message.encode("utf-8", "surrogateescape")


def encode(value, resp3: bool) -> bytes:
    """Encode one reply value for a connection speaking RESP3 (`resp3`) or RESP2."""
    t = type(value)
    if t is bytes:
        return b"$%d\r\n%s\r\n" % (len(value), value)
    if value is None:
        return NULL_RESP3 if resp3 else NULL_BULK_RESP2
    if t is int:
        if 0 <= value <= SMALL_INT_MAX:
            return _SMALL_INTS[value]
        return b":%d\r\n" % value
    if value is OK:
        return OK_REPLY
    if value is QUEUED:
        return QUEUED_REPLY
    if value is PONG:
        return PONG_REPLY
    parts: list[bytes] = []
    _encode_into(parts, value, resp3)
    return b"".join(parts)


def _encode_into(out: list[bytes], value, resp3: bool) -> None:
    t = type(value)
    if t is bytes:
        out.append(b"$%d\r\n%s\r\n" % (len(value), value))
    elif value is None:
        out.append(NULL_RESP3 if resp3 else NULL_BULK_RESP2)
    elif t is int:
        out.append(b":%d\r\n" % value)
    elif t is list or t is tuple:
        out.append(b"*%d\r\n" % len(value))
        for item in value:
            _encode_into(out, item, resp3)
    elif t is SimpleString:
        out.append(b"+%s\r\n" % value.text.encode())
    elif t is str:
        data = value.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    elif t is dict:
        out.append((b"%%%d\r\n" if resp3 else b"*%d\r\n") % (len(value) if resp3 else 2 * len(value)))
        for key, item in value.items():
            _encode_into(out, key, resp3)
            _encode_into(out, item, resp3)
    elif t is bool:
        if resp3:
            out.append(b"#t\r\n" if value else b"#f\r\n")
        else:
            out.append(b":1\r\n" if value else b":0\r\n")
    elif t is float:
        text = format_double(value).encode()
        if resp3:
            out.append(b",%s\r\n" % text)
        else:
            out.append(b"$%d\r\n%s\r\n" % (len(text), text))
    elif isinstance(value, CommandError):
        out.append(error_line(value.message))
    elif value is NullArray:
        out.append(NULL_RESP3 if resp3 else NULL_ARRAY_RESP2)
    elif t is set or t is frozenset:
        out.append((b"~%d\r\n" if resp3 else b"*%d\r\n") % len(value))
        for item in value:
            _encode_into(out, item, resp3)
    elif t is Push:
        out.append((b">%d\r\n" if resp3 else b"*%d\r\n") % len(value.items))
        for item in value.items:
            _encode_into(out, item, resp3)
    elif t is Verbatim:
        data = value.text.encode()
        if resp3:
            out.append(b"=%d\r\n%s:%s\r\n" % (len(data) + 4, value.format.encode(), data))
        else:
            out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    elif t is RawReply:
        out.append(value.data)
    elif t is bytearray or t is memoryview:
        data = bytes(value)
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    else:
        raise TypeError(f"not a reply value: {value!r}")
