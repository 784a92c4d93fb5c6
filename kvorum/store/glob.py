"""Glob-style patterns exactly as Redis' stringmatchlen() reads them (KEYS, SCAN MATCH).

    *        any run of bytes, including none
    ?        any one byte
    [abc]    one of a, b, c;  [^abc] none of them;  [a-z] a range (ends may come
             in either order);  \\x inside a class is a literal x;  a class left
             open runs to the end of the pattern
    \\x       a literal x (a trailing lone backslash is a literal backslash)

A pattern is translated once into an equivalent regular expression (cached),
rather than interpreted byte by byte per key, because KEYS matches one pattern
against every key. One quirk is kept on purpose: stringmatchlen never matches
the empty string against a non-empty pattern; only "*", which Redis' callers
treat as "everything" before matching, and the empty pattern match it.
"""

from __future__ import annotations

import re
from typing import Callable

# Compiled patterns kept for reuse; cleared when full.
PATTERN_CACHE_MAX = 256

# Redis' stringmatchlen gives up (no match) past this recursion depth, one
# level per run of stars that still has bytes to match after it.
STAR_NESTING_MAX = 1000

_cache: dict[bytes, Callable[[bytes], bool]] = {}


def _byte(c: int) -> bytes:
    return b"\\x%02x" % c


def _class(pattern: bytes, i: int) -> tuple[bytes, int]:
    """Translate the class whose '[' is at i-1; return (regex, index after it)."""
    n = len(pattern)
    negate = i < n and pattern[i] == ord("^")
    if negate:
        i += 1
    items = []
    while True:
        if i < n and pattern[i] == ord("\\") and n - i >= 2:
            items.append(_byte(pattern[i + 1]))
            i += 2
        elif i < n and pattern[i] == ord("]"):
            i += 1
            break
        elif i >= n:
            break
        elif n - i >= 3 and pattern[i + 1] == ord("-"):
            lo, hi = sorted((pattern[i], pattern[i + 2]))
            items.append(_byte(lo) + b"-" + _byte(hi))
            i += 3
        else:
            items.append(_byte(pattern[i]))
            i += 1
    body = b"".join(items)
    if not body:
        return (b"." if negate else b"(?!)"), i
    return b"[" + (b"^" if negate else b"") + body + b"]", i


def translate(pattern: bytes) -> bytes:
    """The regular expression (for fullmatch, DOTALL) that matches what `pattern` matches.

    Every token but '*' matches exactly one byte, so the pattern is a run of
    fixed-width segments separated by stars. Placing each middle segment at its
    leftmost possible position is never worse than any other placement, so each
    is matched lazily inside an atomic group: the regex never backtracks into an
    earlier segment and runs in O(len(string) * len(pattern)), where a plain
    translation would take exponential time on patterns like "a*a*a*a*b"
    (Redis' stringmatchlen cuts the same search short with skipLongerMatches).
    """
    parts = _segments(pattern)
    if len(parts) == 1:
        return parts[0]
    middle = b"".join(b"(?>.*?" + part + b")" for part in parts[1:-1])
    return parts[0] + middle + b".*" + parts[-1]


def _segments(pattern: bytes) -> list[bytes]:
    """The regexes of the star-free segments of `pattern`, in order (runs of stars between)."""
    segments: list[list[bytes]] = [[]]
    i = 0
    n = len(pattern)
    while i < n:
        c = pattern[i]
        i += 1
        if c == ord("*"):
            while i < n and pattern[i] == ord("*"):
                i += 1
            segments.append([])
        elif c == ord("?"):
            segments[-1].append(b".")
        elif c == ord("["):
            regex, i = _class(pattern, i)
            segments[-1].append(regex)
        elif c == ord("\\") and i < n:
            segments[-1].append(_byte(pattern[i]))
            i += 1
        else:
            segments[-1].append(_byte(c))
    return [b"".join(segment) for segment in segments]


def _star_nesting(pattern: bytes) -> int:
    """How deep stringmatchlen must recurse for a match: one level per star run
    that is followed by more of the pattern (a final run matches without recursing)."""
    parts = _segments(pattern)
    return len(parts) - 2 if parts[-1] == b"" else len(parts) - 1


def matcher(pattern: bytes) -> Callable[[bytes], bool]:
    """A predicate telling whether a string matches `pattern`."""
    match = _cache.get(pattern)
    if match is not None:
        return match
    if pattern == b"*":
        # Redis short-cuts "*" before calling stringmatchlen, so it also
        # matches the empty key.
        def match(s: bytes) -> bool:
            return True
    elif _star_nesting(pattern) > STAR_NESTING_MAX:
        def match(s: bytes) -> bool:
            return False
    else:
        fullmatch = re.compile(translate(pattern), re.DOTALL).fullmatch
        if pattern:
            def match(s: bytes, fullmatch=fullmatch) -> bool:
                return bool(s) and fullmatch(s) is not None
        else:
            def match(s: bytes) -> bool:
                return not s
    if len(_cache) >= PATTERN_CACHE_MAX:
        _cache.clear()
    _cache[pattern] = match
    return match


def stringmatch(pattern: bytes, string: bytes) -> bool:
    return matcher(pattern)(string)
