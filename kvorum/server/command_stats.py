"""Per-command statistics, error counts by prefix, and the slow log.

Theory of operation
-------------------
Every command in the table (subcommands included) owns one `CommandStat`,
created when dispatch builds its tables and referenced from the dispatch
entries, so recording a call on the hot path is a handful of attribute and
list operations on an object already in hand: no dict lookup by name, no lock,
no allocation. INFO (commandstats, latencystats), CONFIG RESETSTAT and the
Prometheus exposition read the same objects.

Latency is kept as a histogram in units of 1024 ns ("ticks", a microsecond
and a bit, so that a shift finds the slot): one counter per tick below
LATENCY_LINEAR_TICKS, then one per power of two. The call count is the
histogram's sum, read at INFO time rather than counted per call. The hot path
records a call with one comparison (`CommandStat`'s fast threshold, which
also keeps calls to be logged in the slow log off it), one shift and one list
increment, plus the running total of nanoseconds; anything slower goes through
`record_slow`. Percentiles and Prometheus buckets are read from the histogram
at scrape time. A call is timed with the monotonic nanosecond clock; a
pipelined batch reads that clock once per command, each reading closing one
command and opening the next.

Errors are counted by their first word (ERR, WRONGTYPE, MOVED ...) as Redis
7 counts them for INFO errorstats, for at most ERROR_PREFIXES_MAX distinct
words: error text partly comes from clients (unknown command names), and the
table must not grow with it.
"""

from __future__ import annotations

import collections
import time

# One histogram slot per tick (TICK_NS) below this many ticks (about a millisecond), then per power of two.
TICK_SHIFT = 10
TICK_NS = 1 << TICK_SHIFT
LATENCY_LINEAR_TICKS = 1024
LATENCY_LINEAR_NS_MAX = LATENCY_LINEAR_TICKS << TICK_SHIFT
# Enough powers of two for any duration a 64-bit nanosecond clock can show.
LATENCY_BUCKETS = LATENCY_LINEAR_TICKS + 64
# Distinct error prefixes INFO errorstats tracks (Redis' ERROR_STATS_NUMBER); later new ones are not counted.
ERROR_PREFIXES_MAX = 128
# What one slow log entry keeps of a command, as Redis: the first arguments, each cut at a length.
SLOWLOG_ARGS_MAX = 32
SLOWLOG_ARG_BYTES_MAX = 128
# Longest an error prefix may be to count as one (Redis reads the code from the first 32 bytes).
ERROR_PREFIX_BYTES_MAX = 32
# Where the first power-of-two slot sits: ticks of bit length b >= 11 go to slot _OCTAVE_BASE + b.
_OCTAVE_BASE = LATENCY_LINEAR_TICKS - LATENCY_LINEAR_TICKS.bit_length()


def latency_bucket(ns: int) -> int:
    """The histogram slot of a duration in nanoseconds."""
    ticks = ns >> TICK_SHIFT
    return ticks if ticks < LATENCY_LINEAR_TICKS else _OCTAVE_BASE + ticks.bit_length()


def bucket_upper_ns(bucket: int) -> int:
    """Every duration counted in `bucket` is below this many nanoseconds."""
    if bucket < LATENCY_LINEAR_TICKS:
        return (bucket + 1) << TICK_SHIFT
    return 1 << (bucket - _OCTAVE_BASE + TICK_SHIFT)


assert latency_bucket(LATENCY_LINEAR_NS_MAX - 1) == LATENCY_LINEAR_TICKS - 1
assert latency_bucket(LATENCY_LINEAR_NS_MAX) == LATENCY_LINEAR_TICKS
assert bucket_upper_ns(LATENCY_LINEAR_TICKS) == 2 * LATENCY_LINEAR_NS_MAX
assert bucket_upper_ns(LATENCY_LINEAR_TICKS - 1) == LATENCY_LINEAR_NS_MAX
assert latency_bucket(2**64 - 1) < LATENCY_BUCKETS


class CommandStat:
    """One command's counters (Redis' cmdstat fields) and latency histogram."""

    __slots__ = ("name", "ns", "rejected", "failed", "hist")

    def __init__(self, name: str) -> None:
        self.name = name  # as INFO shows it: "get", "config|get"
        self.hist = [0] * LATENCY_BUCKETS
        self.reset()

    def reset(self) -> None:
        self.ns = 0  # total time of the executed calls
        self.rejected = 0  # refused before running (arity, NOAUTH, OOM, inside MULTI)
        self.failed = 0  # ran and answered an error
        # Cleared in place: dispatch entries hold the list itself.
        self.hist[:] = [0] * LATENCY_BUCKETS

    @property
    def calls(self) -> int:
        """Executed calls, failed ones included (one histogram count each)."""
        return sum(self.hist)

    def record(self, ns: int) -> None:
        """One executed call that took `ns` (the paths off the hot path, and its slow calls)."""
        self.ns += ns
        self.hist[latency_bucket(ns)] += 1

    def percentile_us(self, percent: float) -> float:
        """The latency below which `percent` of the calls fell (a slot's upper edge), in microseconds."""
        total = sum(self.hist)
        if not total:
            return 0.0
        rank = max(1, -(-total * percent // 100))
        seen = 0
        for bucket, count in enumerate(self.hist):
            seen += count
            if seen >= rank:
                return bucket_upper_ns(bucket) / 1000
        raise AssertionError("rank beyond the histogram's total")

    def cumulative_counts(self, bounds_ns: tuple[int, ...]) -> list[int]:
        """For each bound (ascending), the calls in slots wholly below it."""
        out = []
        seen = 0
        bucket = 0
        hist = self.hist
        for bound in bounds_ns:
            while bucket < LATENCY_BUCKETS and bucket_upper_ns(bucket) <= bound:
                seen += hist[bucket]
                bucket += 1
            out.append(seen)
        return out


class ErrorStats:
    """Error replies by prefix (INFO errorstats), bounded by ERROR_PREFIXES_MAX."""

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def add(self, message: str) -> None:
        space = message.find(" ", 0, ERROR_PREFIX_BYTES_MAX + 1)
        prefix = message[:space] if space > 0 else "ERR"
        counts = self.counts
        if prefix in counts:
            counts[prefix] += 1
        elif len(counts) < ERROR_PREFIXES_MAX:
            counts[prefix] = 1

    def reset(self) -> None:
        self.counts.clear()


class SlowLog:
    """Redis' slow log: the latest calls slower than `slowlog-log-slower-than`, newest first."""

    __slots__ = ("entries", "next_id")

    def __init__(self) -> None:
        # Bounded by slowlog-max-len (trimmed on every add and on CONFIG SET).
        self.entries: collections.deque[list] = collections.deque()
        self.next_id = 0

    def add(self, argv: list[bytes], duration_us: int, client, max_len: int) -> None:
        args: list[bytes] = []
        for i, arg in enumerate(argv):
            if i == SLOWLOG_ARGS_MAX - 1 and len(argv) > SLOWLOG_ARGS_MAX:
                args.append(b"... (%d more arguments)" % (len(argv) - i))
                break
            if len(arg) > SLOWLOG_ARG_BYTES_MAX:
                arg = arg[:SLOWLOG_ARG_BYTES_MAX] + b"... (%d more bytes)" % (len(arg) - SLOWLOG_ARG_BYTES_MAX)
            args.append(arg)
        entry = [self.next_id, int(time.time()), duration_us, args, client.addr.encode(), client.name]
        self.next_id += 1
        self.entries.appendleft(entry)
        self.trim(max_len)

    def trim(self, max_len: int) -> None:
        entries = self.entries
        while len(entries) > max_len:
            entries.pop()

    def reset(self) -> None:
        self.entries.clear()
