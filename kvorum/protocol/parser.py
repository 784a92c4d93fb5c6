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
  nulls as arguments, knows nothing of inline requests or of Redis' limits, and
  does not report how many bytes it has consumed. So each parsed request is
  checked to be a list of bytes arguments (anything else is the protocol error
  Redis would give), and the limits are kept by a screen (below).
- The exact path is the Python port of Redis' processInlineBuffer /
  processMultibulkBuffer below, with Redis' limits and error words. It parses
  inline requests, and everything from clients that have not authenticated yet
  (Redis lets them send only 10 arguments of 16 KiB).

Limits, whatever the read boundaries
------------------------------------
Redis checks a length when it reads the header that announces it, before it
buffers what the header announces; so does this parser, on both paths, however
the stream is cut into chunks. The exact path reads every header itself. hiredis
would buffer any payload it is told of, so every chunk it gets is screened first
(one `bytes.translate` and one `bytes.find`) for a header type byte (`$`, or an
aggregate's `*%~>|`) followed by enough digits to pass a limit: as many as
`limit + 1` has, for the smallest of proto-max-bulk-len,
client-query-buffer-limit less the payload's line end, and
proto-max-multibulk-len (or 1,000,000 arguments: hiredis allocates an
aggregate's list at its header, and freeing billions of empty slots takes
seconds). With the default limits that is 7 digits, so common requests never
leave the fast path. A chunk that ends inside what may be such a header is held
back until the header is complete.

On a hit, hiredis is fed the chunk up to the hit, then the hit's type byte
alone: if hiredis takes that byte as a new item's type (it holds nothing
unconsumed afterwards), the hit is a header; otherwise it is inside a payload
or a line, and harmless. A bulk header over proto-max-bulk-len is answered
`invalid bulk length`; one whose payload cannot fit the query buffer closes the
connection, as Redis closes it once its buffer passes the limit; an aggregate
header with a count over the limit, or of a million or more, goes to the exact
path. A legal bulk's payload is known from then on and is fed to hiredis
without being screened. What hiredis may still wait for is then bounded: a
bulk too short to be screened, or a header line; a wait longer than both is a
header line, refused as Redis refuses one (`too big bulk count string`) or,
past the query buffer limit, by closing the connection.

Request boundaries
------------------
A request boundary is known for certain at the start of the stream and whenever
the exact path has consumed its buffer. With hiredis, a chunk that arrives after
a chunk that ended a line, while hiredis holds no unconsumed bytes, is taken to
start a request: if it starts with neither `*` nor `$` it goes to the exact path
as an inline request (a `$` there can only be the next argument of a request
split exactly between two arguments), and if hiredis rejects it, the exact path
parses the whole chunk again, so that negative counts, inline requests after
multibulk ones and Redis' own error words come out as Redis has them. Three
cases are answered differently from Redis, all only for a client that mixes
request forms or breaks the protocol: an inline request that follows multibulk
ones in a chunk that did not start a request is a protocol error; a protocol
error in a chunk that starts exactly between two arguments is read as inline;
and an inline request that looks like a bulk header over the limit
(`$600000000`) is refused as one. hiredis' header lines are bounded by the
larger of proto-inline-max-size and the shortest screened bulk (1 MB with the
default limits) rather than by proto-inline-max-size alone.

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

# Aggregate headers with a count of this many or more never reach hiredis (see above).
BIG_AGGREGATE_COUNT_MIN = 1_000_000
# The longest number string2ll reads ('-' and 19 digits), a header line around it, and
# the most a chunk may hold back: a type byte, '-', 20 digits and the CR of a line end.
NUMBER_BYTES_MAX = 20
HEADER_LINE_BYTES_MAX = 1 + NUMBER_BYTES_MAX + 2
HELD_BYTES_MAX = 3 + NUMBER_BYTES_MAX
# Besides the bytes it has not parsed, hiredis keeps up to 1 KiB it has parsed (it trims
# its buffer once it has consumed that much) and the header line of the bulk it reads.
READER_SLACK_BYTES = 1024 + HEADER_LINE_BYTES_MAX

# The screen maps digits to b"0", header type bytes to b"*" and everything else to
# b"x" with one `bytes.translate`, then looks for b"*" and the screen's digits with one
# substring search: C speed over the chunk. (`re.search` walks a chunk byte by byte in
# the regex engine, about 60 CPU instructions per byte.)
_SCREEN_TABLE = bytes(48 if 48 <= b <= 57 else 42 if b in b"*%~>|$" else 120 for b in range(256))
_DIGITS = re.compile(rb"[0-9]+")
# What the end of a chunk looks like when it may be an unfinished header.
_HEADER_TAIL = re.compile(rb"[*%~>|$]-?[0-9]{0," + str(NUMBER_BYTES_MAX).encode() + rb"}\r?\Z")
_HEADER_TAIL_LAST = frozenset(b"*%~>|$-0123456789\r")


def _screen_digits(bulk_max_bytes: int, multibulk_max_count: int, query_buffer_max_bytes: int) -> int:
    """How many digits after a header's type byte make it worth a look.

    A number with fewer digits than `limit + 1` is at most `limit`.
    """
    bulk_bytes_max = max(0, min(bulk_max_bytes, query_buffer_max_bytes - 2))
    count_max = max(0, min(multibulk_max_count, BIG_AGGREGATE_COUNT_MIN - 1))
    return min(len(str(bulk_bytes_max + 1)), len(str(count_max + 1)))


assert _screen_digits(BULK_MAX_BYTES_DEFAULT, MULTIBULK_MAX_COUNT_DEFAULT, QUERY_BUFFER_MAX_BYTES_DEFAULT) == 7


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
    """Turns a client's byte stream into requests; see the module docstring.

    The four limits may be changed between two `feed` calls (CONFIG SET); each is
    checked at the header that announces a length, as Redis checks it.
    """

    __slots__ = (
        "_inline_max_bytes", "_bulk_max_bytes", "_multibulk_max_count", "_query_buffer_max_bytes",
        "_screen_mark", "_waiting_bytes_max",
        "authenticated", "error", "_reader", "_fast", "_at_boundary", "_buf",
        "_pending_count", "_pending_bulk", "_pending_args", "_line_ended", "_held", "_payload_left",
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
        self._inline_max_bytes = inline_max_bytes
        self._bulk_max_bytes = bulk_max_bytes
        self._multibulk_max_count = multibulk_max_count
        self._query_buffer_max_bytes = query_buffer_max_bytes
        self._limits_changed()
        # Unauthenticated clients get Redis' small limits and the exact path.
        self.authenticated = authenticated
        # The protocol error text ("Protocol error: ...") once the stream is broken.
        self.error: str | None = None
        self._reader = hiredis.Reader(protocolError=_HiredisProtocolError, replyError=_HiredisReplyError)
        self._fast = False
        # Whether the last chunk given to hiredis ended a line (hiredis consumes a type
        # byte on its own, so "no unconsumed bytes" alone does not mean a boundary).
        self._line_ended = True
        # The end of a chunk that may be an unfinished header, kept from hiredis.
        self._held = b""
        # Bytes of a screened bulk's payload (and its line end) hiredis still waits for.
        self._payload_left = 0
        # Whether the exact path's buffer starts at a request's first byte.
        self._at_boundary = True
        # Exact path state: unconsumed bytes, and the multibulk request in progress.
        self._buf = bytearray()
        self._pending_count = 0  # arguments still expected; 0 = between requests
        self._pending_bulk = -1  # length of the argument being read; -1 = header next
        self._pending_args: list[bytes] = []

    # The limits. Setting one recomputes what the screen looks for.

    @property
    def inline_max_bytes(self) -> int:
        """Longest inline request, and longest header line of a multibulk request."""
        return self._inline_max_bytes

    @inline_max_bytes.setter
    def inline_max_bytes(self, value: int) -> None:
        self._inline_max_bytes = value
        self._limits_changed()

    @property
    def bulk_max_bytes(self) -> int:
        """Longest argument of a multibulk request."""
        return self._bulk_max_bytes

    @bulk_max_bytes.setter
    def bulk_max_bytes(self, value: int) -> None:
        self._bulk_max_bytes = value
        self._limits_changed()

    @property
    def multibulk_max_count(self) -> int:
        """Most arguments in one multibulk request."""
        return self._multibulk_max_count

    @multibulk_max_count.setter
    def multibulk_max_count(self, value: int) -> None:
        self._multibulk_max_count = value
        self._limits_changed()

    @property
    def query_buffer_max_bytes(self) -> int:
        """Most bytes of a request not parsed yet, an argument's payload included."""
        return self._query_buffer_max_bytes

    @query_buffer_max_bytes.setter
    def query_buffer_max_bytes(self, value: int) -> None:
        self._query_buffer_max_bytes = value
        self._limits_changed()

    def _limits_changed(self) -> None:
        digits = _screen_digits(self._bulk_max_bytes, self._multibulk_max_count, self._query_buffer_max_bytes)
        self._screen_mark = b"*" + b"0" * digits
        # A bulk too short for the screen makes hiredis wait for at most this much; a longer
        # wait that is not for a screened payload is for a header line.
        unscreened_bulk_bytes_max = 10 ** (digits - 1) - 1
        waiting = max(self._inline_max_bytes, unscreened_bulk_bytes_max + 2)
        self._waiting_bytes_max = min(waiting, self._query_buffer_max_bytes) + READER_SLACK_BYTES

    def buffered_bytes(self) -> int:
        """Bytes received and not yet parsed into requests.

        On the hiredis path this is an upper bound: hiredis also keeps up to
        READER_SLACK_BYTES it has parsed. Between two `feed` calls it is at most
        `query_buffer_max_bytes + READER_SLACK_BYTES`, or the stream is refused.
        """
        if not self._fast:
            return len(self._buf)
        reader = self._reader
        return (reader.len() if reader.has_data() else 0) + len(self._held)

    def feed(self, data: bytes) -> list[list[bytes]]:
        """Parse `data`; return the requests it completes (empty requests are dropped)."""
        if not data or self.error is not None:
            return []
        if self._fast:
            if self._payload_left:
                return self._feed_payload(data)
            at_boundary = self._line_ended and not self._reader.has_data()
            if self._held:
                # A held `$` header is the next argument of a request, as if hiredis had it.
                at_boundary = at_boundary and self._held[0] != 36
                data = self._held + data
                self._held = b""
            if not at_boundary or data[0] == 42 or data[0] == 36:
                if data[-1] == 10 and data.translate(_SCREEN_TABLE).find(self._screen_mark) == -1:
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
        self._payload_left = 0
        self._buf = bytearray(data)
        self._buf += self._held
        self._held = b""
        self._at_boundary = True
        return self._parse_exact_then_fast()

    def _parse_exact_then_fast(self) -> list[list[bytes]]:
        requests = self._parse_exact()
        # A screened header stays with the exact path: back on the fast path it would be
        # handed straight back.
        if (self.error is None and self.authenticated and self._at_boundary and _fast_start(self._buf)
                and self._buf.translate(_SCREEN_TABLE).find(self._screen_mark) == -1):
            rest = bytes(self._buf)
            self._buf.clear()
            self._fast = True
            requests.extend(self._fast_entry(rest, True))
        return requests

    # The fast path.

    def _fast_entry(self, data: bytes, at_boundary: bool) -> list[list[bytes]]:
        """Screen `data`, hold back an unfinished header at its end, and let hiredis parse."""
        if data.translate(_SCREEN_TABLE).find(self._screen_mark) != -1:
            return self._feed_guarded(data, at_boundary)
        data = self._hold_tail(data)
        if not data:
            return []
        return self._feed_fast(self._reader, data, at_boundary)

    def _hold_tail(self, data: bytes) -> bytes:
        """`data` less what may be the start of a header, which waits in `_held` for the rest.

        The screen must see a header's type byte, all its digits and whether a line end
        follows them in one chunk.
        """
        if data[-1] not in _HEADER_TAIL_LAST:
            return data
        match = _HEADER_TAIL.search(data, max(0, len(data) - HELD_BYTES_MAX))
        if match is None:
            return data
        self._held = data[match.start():]
        return data[:match.start()]

    def _feed_guarded(self, data: bytes, at_boundary: bool) -> list[list[bytes]]:
        """`_feed_screened`; as in `_feed_fast`, a chunk that began a request and that hiredis
        refused is parsed again exactly, so that Redis' own words come out. A header over a
        limit is not: a `$` there is far more likely an argument than an inline request."""
        requests, decided = self._feed_screened(data)
        if self.error is not None and at_boundary and not decided:
            self.error = None
            self._held = b""
            return self._switch_to_exact(data)
        return requests

    def _feed_screened(self, data: bytes) -> tuple[list[list[bytes]], bool]:
        """hiredis parses `data` up to each screened header, which is checked before it goes on.

        Also returns whether the limits or the exact path decided the outcome, not hiredis.
        """
        requests: list[list[bytes]] = []
        reader = self._reader
        screened = data.translate(_SCREEN_TABLE)
        mark = self._screen_mark
        pos = 0  # data[:pos] has been fed to hiredis
        hit = screened.find(mark)
        while hit != -1:
            digits_end = _DIGITS.match(data, hit + 1).end()
            if (digits_end - hit - 1 <= NUMBER_BYTES_MAX and len(data) - digits_end <= 1
                    and (digits_end == len(data) or data[digits_end] == 13)):
                break  # the header may go on in the next chunk: `_hold_tail` keeps it
            if hit > pos:
                requests += self._feed_fast(reader, data[pos:hit], False)
                if self.error is not None:
                    return requests, False
                pos = hit
            if reader.has_data():
                hit = screened.find(mark, hit + 1)  # inside a payload or a line
                continue
            # The probe: a header if hiredis takes its first byte as the type of a new item.
            reader.feed(data, hit, 1)
            try:
                nothing = reader.gets()
            except _HiredisProtocolError as exc:
                self.error = _hiredis_error(str(exc))
                return requests, False
            assert nothing is False, nothing  # one byte more completes no reply
            pos = hit + 1
            self._line_ended = False
            if reader.has_data():
                hit = screened.find(mark, pos)  # the byte went on a line hiredis was reading
                continue
            next_search = self._check_header(data, hit, digits_end)
            if self.error is not None:
                return requests, True
            if next_search < 0:
                # An aggregate the exact path must read: from its type byte, as a request.
                requests += self._switch_to_exact(data[hit:])
                return requests, True
            if next_search > len(data):
                # A legal bulk whose payload goes on past this chunk.
                self._payload_left = next_search - len(data)
                requests += self._feed_fast(reader, data[pos:], False)
                return requests, False
            hit = screened.find(mark, next_search)
        data = self._hold_tail(data)
        assert len(data) >= pos, "only bytes after the last probe are held"
        if len(data) > pos:
            requests += self._feed_fast(reader, data[pos:], False)
        return requests, False

    def _check_header(self, data: bytes, hit: int, digits_end: int) -> int:
        """Check the header at `hit` against the limits; where to look for the next header.

        Returns -1 when the exact path must read the header, and past the payload of a
        legal bulk whose line end follows its number (hiredis skips it unread).
        """
        digits = data[hit + 1:digits_end]
        value = int(digits) if len(digits) <= NUMBER_BYTES_MAX else None
        if data[hit] != 36:
            if value is None or value > self._multibulk_max_count or value >= BIG_AGGREGATE_COUNT_MIN:
                return -1
            return digits_end
        if value is None or value > self._bulk_max_bytes:
            self.error = "Protocol error: invalid bulk length"
        elif value + 2 > self._query_buffer_max_bytes:
            self.error = QUERY_BUFFER_EXCEEDED
        elif data.startswith(b"\r\n", digits_end):
            return digits_end + 2 + value + 2
        return digits_end

    def _feed_payload(self, data: bytes) -> list[list[bytes]]:
        """Feed a screened bulk's payload to hiredis unscreened, and what follows it as usual."""
        left = self._payload_left
        reader = self._reader
        if len(data) < left:
            reader.feed(data)
            self._payload_left = left - len(data)
            # Only a limit lowered since the bulk's header can make this true.
            if reader.len() > self._query_buffer_max_bytes + READER_SLACK_BYTES:
                self.error = QUERY_BUFFER_EXCEEDED
            return []
        self._payload_left = 0
        requests = self._feed_fast(reader, data[:left], False)
        if len(data) > left and self.error is None:
            requests += self.feed(data[left:])
        return requests

    def _feed_fast(self, reader, data: bytes, at_boundary: bool) -> list[list[bytes]]:
        """hiredis parses `data`; a chunk it rejects is parsed again exactly if it began a request."""
        reader.feed(data)
        self._line_ended = data[-1] == 10
        requests = []
        error = None
        try:
            request = reader.gets()
            while request is not False:
                if request.__class__ is list:
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
        if not self._payload_left and reader.has_data() and reader.len() > self._waiting_bytes_max:
            # Longer than any bulk the screen let through unseen: hiredis waits for a line end.
            if reader.len() > self._query_buffer_max_bytes + READER_SLACK_BYTES:
                self.error = QUERY_BUFFER_EXCEEDED
            else:
                self.error = "Protocol error: too big bulk count string"
        return requests

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
        # Headers are checked as they are read; this catches a limit lowered since.
        if self.error is None and len(buf) > self._query_buffer_max_bytes:
            self.error = QUERY_BUFFER_EXCEEDED
        return requests

    def _refuse_line(self, buf: bytearray, pos: int, end: int, error: str) -> bool:
        """Whether the line from `pos` to `end` (-1: not ended yet) is too long; sets the error.

        Redis checks a line's length only while it waits for its end, so whether a long
        line passes depends on its read sizes; here a line is measured whole.
        """
        length = (end if end >= 0 else len(buf)) - pos
        if length <= self._inline_max_bytes and length <= self._query_buffer_max_bytes:
            return False
        # Redis checks its query buffer as it reads, before parsing: the smaller limit speaks.
        if length > self._query_buffer_max_bytes and self._query_buffer_max_bytes < self._inline_max_bytes:
            self.error = QUERY_BUFFER_EXCEEDED
        else:
            self.error = error
        return True

    def _parse_inline(self, buf: bytearray, pos: int) -> tuple[int, list[bytes] | None]:
        newline = buf.find(b"\n", pos)
        if self._refuse_line(buf, pos, newline, "Protocol error: too big inline request") or newline < 0:
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
            if self._refuse_line(buf, pos, newline, "Protocol error: too big mbulk count string"):
                return pos, None
            if newline < 0 or newline + 1 >= len(buf):
                return pos, None
            count = parse_strict_int(bytes(buf[pos + 1:newline]))
            limit = self._multibulk_max_count if self.authenticated else UNAUTHENTICATED_MULTIBULK_MAX_COUNT
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
                if self._refuse_line(buf, pos, newline, "Protocol error: too big bulk count string"):
                    return pos, None
                if newline < 0 or newline + 1 >= len(buf):
                    return pos, None
                if buf[pos] != 36:
                    self.error = f"Protocol error: expected '$', got '{chr(buf[pos])}'"
                    return pos, None
                length = parse_strict_int(bytes(buf[pos + 1:newline]))
                limit = self._bulk_max_bytes if self.authenticated else UNAUTHENTICATED_BULK_MAX_BYTES
                if length is None or length < 0 or length > limit:
                    self.error = "Protocol error: invalid bulk length"
                    return pos, None
                if length + 2 > self._query_buffer_max_bytes:
                    # Redis reads such a payload until its buffer passes the limit, then closes.
                    self.error = QUERY_BUFFER_EXCEEDED
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


# Words of hiredis' errors for an item it cannot read, and the item's type byte (a simple
# string and an error line share one message): in a request, such an item is an
# argument that is not a bulk string, which Redis refuses at its type byte.
_HIREDIS_ITEM_ERRORS = {"integer": ":", "double": ",", "nil": "_", "bool": "#", "bignum": "(",
                        "simple string": "+", "verbatim": "=", "nesting depth": "*"}


def _hiredis_error(message: str) -> str:
    for word, type_byte in _HIREDIS_ITEM_ERRORS.items():
        if word in message.lower():
            return f"Protocol error: expected '$', got '{type_byte}'"
    if "multi-bulk length" in message:
        return "Protocol error: invalid multibulk length"
    if "ulk string length" in message:
        return "Protocol error: invalid bulk length"
    if "as reply type byte" in message:
        quoted = message.split('"')
        return f"Protocol error: expected '$', got '{quoted[1] if len(quoted) > 2 else '?'}'"
    return f"Protocol error: {message}"
