"""Request parsing: bytes from a client in, requests (lists of bytes) out. Sans-I/O.

Theory of operation
-------------------
Redis accepts two request forms on one stream: multibulk (`*2\\r\\n$3\\r\\nGET\\r\\n...`,
what every client library sends) and inline (`GET key\\r\\n`, what a human types
in telnet). Which form a request uses is decided by its first byte: `*` means
multibulk, anything else inline.

Two parsers share the work:

- The fast path is hiredis' C reader. It parses multibulk requests at C speed,
  but it is a general RESP reader: it also accepts nested arrays, integers and
  nulls as arguments, knows nothing of inline requests, and does not report how
  many bytes it has consumed. So each parsed request is checked to be a list of
  at most proto-max-multibulk-len bytes arguments (anything else is the
  protocol error Redis would give); a bulk length over proto-max-bulk-len is
  refused when a chunk ends with it (that is where a client announcing a huge
  length waits for the payload; elsewhere the query-buffer limit catches it,
  since hiredis buffers payloads instead of allocating ahead); and aggregate
  headers with huge counts never reach hiredis (see `_fast_entry`).
- The exact path is the Python port of Redis' processInlineBuffer /
  processMultibulkBuffer below, with Redis' limits and error words. It parses
  inline requests, and everything from clients that have not authenticated yet
  (Redis lets them send only 10 arguments of 16 KiB).

A request boundary is known for certain at the start of the stream and whenever
the exact path has consumed its buffer. With hiredis, a chunk that arrives after
a chunk that ended a line, while hiredis holds no unconsumed bytes, is taken to
start a request: if it starts with neither `*` nor `$` it goes to the exact path
as an inline request (a `$` there can only be the next argument of a request
split exactly between two arguments), and if hiredis rejects it, the exact path
parses the whole chunk again, so that negative counts, inline requests after
multibulk ones and Redis' own error words come out as Redis has them. Two cases
are answered differently from Redis, both only for a client that mixes request
forms or breaks the protocol: an inline request that follows multibulk ones in a
chunk that did not start a request is a protocol error, and a protocol error in
a chunk that starts exactly between two arguments is read as inline.

After a protocol error the parser stops (`error` is set); the connection answers
the requests parsed before it, then the error, and closes, like Redis.
"""

from __future__ import annotations

import re

import hiredis

# Redis' PROTO_INLINE_MAX_SIZE also bounds the header lines of multibulk requests.
INLINE_MAX_BYTES_DEFAULT = 64 * 1024
BULK_MAX_BYTES_DEFAULT = 512 * 1024 * 1024
MULTIBULK_MAX_COUNT_DEFAULT = 2**31 - 1
QUERY_BUFFER_MAX_BYTES_DEFAULT = 1024 * 1024 * 1024
# What Redis allows a client that has not authenticated yet.
UNAUTHENTICATED_MULTIBULK_MAX_COUNT = 10
UNAUTHENTICATED_BULK_MAX_BYTES = 16384

QUERY_BUFFER_EXCEEDED = "query buffer limit exceeded"

# Aggregate headers (array, map, set, push, attribute) with a count of 7+ digits.
BIG_AGGREGATE_COUNT_MIN = 1_000_000
_BIG_AGGREGATE = re.compile(rb"[*%~>|]\d{7}")
# Every chunk is screened for such headers. `_BIG_AGGREGATE.search` walks it
# byte by byte in the regex engine (about 60 CPU instructions per byte: 2,700
# per pipelined `SET key:012345678901 xxx`, 55,000 with a 1 KiB value), so the
# screen instead maps digits to b"0" and aggregate type bytes to b"*" with one
# `bytes.translate` and looks for b"*0000000" with one substring search: the
# same answer as `_BIG_AGGREGATE.search(data) is not None`, several times
# cheaper. `_BIG_AGGREGATE` stays for `_feed_guarded`, which needs the positions.
_SCREEN_TABLE = bytes(48 if 48 <= b <= 57 else 42 if b in b"*%~>|" else 120 for b in range(256))
_SCREEN_MARK = b"*" + b"0" * len(str(BIG_AGGREGATE_COUNT_MIN))
assert _BIG_AGGREGATE.pattern.endswith(b"{%d}" % (len(_SCREEN_MARK) - 1))
# What an unfinished aggregate header line can look like; longer is never a valid count.
_AGGREGATE_HEAD = re.compile(rb"[*%~>|]-?\d{0,20}")
HELD_BYTES_MAX = 22


def _has_big_aggregate(data) -> bool:
    """Whether `_BIG_AGGREGATE` matches somewhere in `data`."""
    # `find`, not `in`: `bytes.__contains__` first tries its operand as an
    # integer and discards the TypeError that raises, about 1,900 CPU
    # instructions per call, more than the translation and the search.
    return data.translate(_SCREEN_TABLE).find(_SCREEN_MARK) != -1


class _HiredisProtocolError(Exception):
    pass


class _HiredisReplyError(Exception):
    pass


_RESP_TYPE_BYTE = {int: ":", list: "*", float: ",", bool: "#", dict: "%", set: "~", _HiredisReplyError: "-"}


def parse_strict_int(text: bytes) -> int | None:
    """Redis' string2ll: optional '-', digits, no leading zeros, no spaces; None otherwise."""
    if not text or len(text) > 20:
        return None
    digits = text[1:] if text[:1] == b"-" else text
    if not digits.isdigit() or not digits.isascii() or (len(digits) > 1 and digits[:1] == b"0"):
        return None
    if digits == b"0" and text[:1] == b"-":
        return None
    value = int(text)
    if not -(2**63) <= value < 2**63:
        return None
    return value


_ESCAPES = {ord("n"): 10, ord("r"): 13, ord("t"): 9, ord("b"): 8, ord("a"): 7}
_SPACES = b" \n\r\t\x0b\x0c"
_HEX = b"0123456789abcdefABCDEF"


def split_args(line: bytes) -> list[bytes] | None:
    """Redis' sdssplitargs: split an inline request; None on unbalanced quotes."""
    args: list[bytes] = []
    i = 0
    n = len(line)
    while True:
        while i < n and line[i] in _SPACES:
            i += 1
        if i >= n:
            return args
        current = bytearray()
        in_double = in_single = False
        while True:
            if in_double:
                if i >= n:
                    return None
                c = line[i]
                if (c == 92 and i + 3 < n and line[i + 1] == ord("x")
                        and line[i + 2] in _HEX and line[i + 3] in _HEX):
                    current.append(int(line[i + 2:i + 4], 16))
                    i += 3
                elif c == 92 and i + 1 < n:
                    i += 1
                    current.append(_ESCAPES.get(line[i], line[i]))
                elif c == 34:
                    if i + 1 < n and line[i + 1] not in _SPACES:
                        return None
                    in_double = False
                    i += 1
                    break
                else:
                    current.append(c)
            elif in_single:
                if i >= n:
                    return None
                c = line[i]
                if c == 92 and i + 1 < n and line[i + 1] == 39:
                    i += 1
                    current.append(39)
                elif c == 39:
                    if i + 1 < n and line[i + 1] not in _SPACES:
                        return None
                    in_single = False
                    i += 1
                    break
                else:
                    current.append(c)
            else:
                if i >= n:
                    break
                c = line[i]
                if c in _SPACES:
                    break
                if c == 34:
                    in_double = True
                elif c == 39:
                    in_single = True
                else:
                    current.append(c)
            i += 1
        args.append(bytes(current))


class RequestParser:
    """Turns a client's byte stream into requests; see the module docstring."""

    __slots__ = (
        "inline_max_bytes", "bulk_max_bytes", "multibulk_max_count", "query_buffer_max_bytes",
        "authenticated", "error", "_reader", "_fast", "_at_boundary", "_buf",
        "_pending_count", "_pending_bulk", "_pending_args", "_line_ended", "_held",
    )

    def __init__(
        self,
        *,
        inline_max_bytes: int = INLINE_MAX_BYTES_DEFAULT,
        bulk_max_bytes: int = BULK_MAX_BYTES_DEFAULT,
        multibulk_max_count: int = MULTIBULK_MAX_COUNT_DEFAULT,
        query_buffer_max_bytes: int = QUERY_BUFFER_MAX_BYTES_DEFAULT,
        authenticated: bool = True,
    ):
        self.inline_max_bytes = inline_max_bytes
        self.bulk_max_bytes = bulk_max_bytes
        self.multibulk_max_count = multibulk_max_count
        self.query_buffer_max_bytes = query_buffer_max_bytes
        # Unauthenticated clients get Redis' small limits and the exact path.
        self.authenticated = authenticated
        # The protocol error text ("Protocol error: ...") once the stream is broken.
        self.error: str | None = None
        self._reader = hiredis.Reader(protocolError=_HiredisProtocolError, replyError=_HiredisReplyError)
        self._fast = False
        # Whether the last chunk given to hiredis ended a line (hiredis consumes a type
        # byte on its own, so "no unconsumed bytes" alone does not mean a boundary).
        self._line_ended = True
        # The end of a chunk that may be an unfinished aggregate header, kept from hiredis.
        self._held = b""
        # Whether the exact path's buffer starts at a request's first byte.
        self._at_boundary = True
        # Exact path state: unconsumed bytes, and the multibulk request in progress.
        self._buf = bytearray()
        self._pending_count = 0  # arguments still expected; 0 = between requests
        self._pending_bulk = -1  # length of the argument being read; -1 = header next
        self._pending_args: list[bytes] = []

    def buffered_bytes(self) -> int:
        """Bytes received and not yet parsed into requests (about: hiredis keeps up to 1 KiB consumed)."""
        if not self._fast:
            return len(self._buf)
        reader = self._reader
        return (reader.len() if reader.has_data() else 0) + len(self._held)

    def feed(self, data: bytes) -> list[list[bytes]]:
        """Parse `data`; return the requests it completes (empty requests are dropped)."""
        if not data or self.error is not None:
            return []
        if self._fast:
            if self._held:
                data = self._held + data
                self._held = b""
            at_boundary = self._line_ended and not self._reader.has_data()
            if not at_boundary or data[0] == 42 or data[0] == 36:
                if data[-1] == 10 and not _has_big_aggregate(data):
                    # What `_fast_entry` would decide for a chunk that ends a line, in one call less.
                    return self._feed_fast(self._reader, data, at_boundary)
                return self._fast_entry(data, at_boundary)
            return self._switch_to_exact(data)
        if self._at_boundary and not self._buf and self.authenticated and _fast_start(data):
            self._fast = True
            return self._fast_entry(data, True)
        self._buf += data
        return self._parse_exact_then_fast()

    def _switch_to_exact(self, data: bytes) -> list[list[bytes]]:
        """Continue with the exact path from `data`, which starts a request."""
        self._fast = False
        self._reader = hiredis.Reader(protocolError=_HiredisProtocolError, replyError=_HiredisReplyError)
        self._line_ended = True
        self._buf = bytearray(data)
        self._buf += self._held
        self._held = b""
        self._at_boundary = True
        return self._parse_exact_then_fast()

    def _parse_exact_then_fast(self) -> list[list[bytes]]:
        requests = self._parse_exact()
        if (self.error is None and self.authenticated and self._at_boundary and _fast_start(self._buf)
                and not _has_big_aggregate(self._buf)):
            rest = bytes(self._buf)
            self._buf.clear()
            self._fast = True
            requests.extend(self._fast_entry(rest, True))
        return requests

    # The fast path.

    def _fast_entry(self, data: bytes, at_boundary: bool) -> list[list[bytes]]:
        """Keep hiredis away from aggregate headers with huge counts, then let it parse.

        hiredis allocates an aggregate's list as soon as it reads the header, and
        freeing a list of billions of empty slots takes seconds, so a header whose
        count has 7 or more digits never reaches it: the exact path takes over at
        that header (when it starts a request; inside a bulk payload the bytes are
        harmless). A chunk that ends inside what may be such a header line is held
        back until the line is complete.
        """
        if data[-1] != 10:
            cut = data.rfind(b"\n") + 1
            if len(data) - cut <= HELD_BYTES_MAX and _AGGREGATE_HEAD.fullmatch(data, cut):
                self._held = data[cut:]
                data = data[:cut]
                if not data:
                    return []
        if not _has_big_aggregate(data):
            return self._feed_fast(self._reader, data, at_boundary)
        return self._feed_guarded(data, at_boundary)

    def _feed_guarded(self, data: bytes, at_boundary: bool) -> list[list[bytes]]:
        requests: list[list[bytes]] = []
        reader = self._reader
        # Held bytes come after all of `data`; keep them out of any switch made on the way.
        held, self._held = self._held, b""
        pos = 0
        for match in _BIG_AGGREGATE.finditer(data):
            start = match.start()
            if start < pos:
                continue
            if start > pos:
                requests += self._feed_fast(reader, data[pos:start], at_boundary)
                if self.error is not None:
                    return requests
                if not self._fast:
                    self._buf += data[start:]
                    self._buf += held
                    requests += self._parse_exact_then_fast()
                    return requests
                at_boundary = self._line_ended and not reader.has_data()
            pos = start
            if at_boundary:
                requests += self._switch_to_exact(data[pos:] + held)
                return requests
        self._held = held
        requests += self._feed_fast(reader, data[pos:], at_boundary)
        return requests

    def _feed_fast(self, reader, data: bytes, at_boundary: bool) -> list[list[bytes]]:
        """hiredis parses `data`; a chunk it rejects is parsed again exactly if it began a request."""
        reader.feed(data)
        self._line_ended = data[-1] == 10
        requests = []
        error = None
        count_max = self.multibulk_max_count
        try:
            request = reader.gets()
            while request is not False:
                if request.__class__ is list:
                    if len(request) > count_max:
                        error = "Protocol error: invalid multibulk length"
                        break
                    for arg in request:
                        if arg.__class__ is not bytes:
                            error = _bad_argument(arg)
                            break
                    else:
                        if request:
                            requests.append(request)
                        request = reader.gets()
                        continue
                    break
                if request is not None:
                    error = "Protocol error: invalid multibulk length"
                    break
                request = reader.gets()
        except _HiredisProtocolError as exc:
            error = _hiredis_error(str(exc))
        if error is not None:
            if not at_boundary:
                self.error = error
                return requests
            # Inline requests, negative counts and Redis' exact error words: the exact
            # path parses the whole chunk again, the requests hiredis found included.
            return self._switch_to_exact(data)
        if reader.has_data():
            # hiredis waits for more: for a bulk's payload, or in a line it has not finished.
            self._check_waiting_header(data, 36, self.bulk_max_bytes, "Protocol error: invalid bulk length")
            if self.error is None and reader.len() > self.query_buffer_max_bytes:
                self.error = QUERY_BUFFER_EXCEEDED
        elif self.multibulk_max_count < BIG_AGGREGATE_COUNT_MIN:
            # A count under the guard's reach but over a lowered limit, waiting for its arguments.
            self._check_waiting_header(data, 42, self.multibulk_max_count,
                                       "Protocol error: invalid multibulk length")
        return requests

    def _check_waiting_header(self, data: bytes, kind: int, limit: int, error: str) -> None:
        """Refuse at once a length over its limit in the header line a chunk ends with.

        hiredis would wait for the payload or the arguments; Redis answers at the header.
        A value that itself holds such a line, cut by a read right after it, is refused
        the same way: the one case where a client following the protocol sees a
        difference, and only with values that embed RESP headers over the limit.
        """
        if data[-1] != 10:
            return
        start = data.rfind(b"\n", 0, len(data) - 1) + 1
        if data[start] != kind:
            return
        value = parse_strict_int(data[start + 1:len(data) - 2])
        if value is not None and value > limit:
            self.error = error

    # The exact path: Redis' networking.c, one request form at a time.

    def _parse_exact(self) -> list[list[bytes]]:
        requests: list[list[bytes]] = []
        buf = self._buf
        pos = 0
        while pos < len(buf) and self.error is None:
            if self._pending_count == 0 and buf[pos] != 42:
                new_pos, request = self._parse_inline(buf, pos)
            else:
                new_pos, request = self._parse_multibulk(buf, pos)
            if new_pos == pos:
                break
            pos = new_pos
            if request:
                requests.append(request)
        del buf[:pos]
        self._at_boundary = self._pending_count == 0
        if self.error is None and len(buf) > self.query_buffer_max_bytes:
            self.error = QUERY_BUFFER_EXCEEDED
        return requests

    def _parse_inline(self, buf: bytearray, pos: int) -> tuple[int, list[bytes] | None]:
        newline = buf.find(b"\n", pos)
        if newline < 0:
            if len(buf) - pos > self.inline_max_bytes:
                self.error = "Protocol error: too big inline request"
            return pos, None
        end = newline - 1 if newline > pos and buf[newline - 1] == 13 else newline
        args = split_args(bytes(buf[pos:end]))
        if args is None:
            self.error = "Protocol error: unbalanced quotes in request"
            return pos, None
        return newline + 1, args

    def _parse_multibulk(self, buf: bytearray, pos: int) -> tuple[int, list[bytes] | None]:
        if self._pending_count == 0:
            newline = buf.find(b"\r", pos)
            if newline < 0 or newline + 1 >= len(buf):
                if len(buf) - pos > self.inline_max_bytes:
                    self.error = "Protocol error: too big mbulk count string"
                return pos, None
            count = parse_strict_int(bytes(buf[pos + 1:newline]))
            limit = self.multibulk_max_count if self.authenticated else UNAUTHENTICATED_MULTIBULK_MAX_COUNT
            if count is None or count > limit:
                self.error = "Protocol error: invalid multibulk length"
                return pos, None
            pos = newline + 2
            if count <= 0:
                return pos, None
            self._pending_count = count
            self._pending_bulk = -1
            self._pending_args = []
        args = self._pending_args
        while self._pending_count:
            if self._pending_bulk < 0:
                newline = buf.find(b"\r", pos)
                if newline < 0 or newline + 1 >= len(buf):
                    if len(buf) - pos > self.inline_max_bytes:
                        self.error = "Protocol error: too big bulk count string"
                    return pos, None
                if buf[pos] != 36:
                    self.error = f"Protocol error: expected '$', got '{chr(buf[pos])}'"
                    return pos, None
                length = parse_strict_int(bytes(buf[pos + 1:newline]))
                limit = self.bulk_max_bytes if self.authenticated else UNAUTHENTICATED_BULK_MAX_BYTES
                if length is None or length < 0 or length > limit:
                    self.error = "Protocol error: invalid bulk length"
                    return pos, None
                pos = newline + 2
                self._pending_bulk = length
            if len(buf) - pos < self._pending_bulk + 2:
                return pos, None
            args.append(bytes(buf[pos:pos + self._pending_bulk]))
            pos += self._pending_bulk + 2
            self._pending_bulk = -1
            self._pending_count -= 1
        self._pending_args = []
        return pos, args


def _fast_start(data) -> bool:
    """Whether a request starting at data[0] can go to hiredis: `*` and a digit.

    Negative counts (an empty request to Redis, an error to hiredis) and garbage
    after `*` (answered by Redis after 64 KiB without a line end) take the exact path.
    """
    return len(data) > 1 and data[0] == 42 and 48 <= data[1] <= 57


def _bad_argument(arg) -> str:
    if arg is None:
        return "Protocol error: invalid bulk length"
    return f"Protocol error: expected '$', got '{_RESP_TYPE_BYTE.get(type(arg), '?')}'"


def _hiredis_error(message: str) -> str:
    if "multi-bulk length" in message:
        return "Protocol error: invalid multibulk length"
    if "ulk string length" in message:
        return "Protocol error: invalid bulk length"
    if "as reply type byte" in message:
        quoted = message.split('"')
        return f"Protocol error: expected '$', got '{quoted[1] if len(quoted) > 2 else '?'}'"
    return f"Protocol error: {message}"
