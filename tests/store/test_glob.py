"""KEYS / SCAN MATCH patterns against a line-by-line port of Redis' stringmatchlen."""

import random

import pytest

from kvorum.store.glob import stringmatch


def reference_match(pattern: bytes, string: bytes) -> bool:
    """Redis 7.0 util.c stringmatchlen_impl, ported literally (nocase off)."""
    skip_longer = [False]

    def impl(p: int, plen: int, s: int, slen: int) -> bool:
        def pat(k: int) -> int:
            return pattern[k] if k < len(pattern) else 0

        while plen and slen:
            c = pat(p)
            if c == ord("*"):
                while plen and pat(p + 1) == ord("*"):
                    p += 1
                    plen -= 1
                if plen == 1:
                    return True
                while slen:
                    if impl(p + 1, plen - 1, s, slen):
                        return True
                    if skip_longer[0]:
                        return False
                    s += 1
                    slen -= 1
                skip_longer[0] = True
                return False
            elif c == ord("?"):
                s += 1
                slen -= 1
            elif c == ord("["):
                p += 1
                plen -= 1
                negate = pat(p) == ord("^")
                if negate:
                    p += 1
                    plen -= 1
                matched = False
                while True:
                    if pat(p) == ord("\\") and plen >= 2:
                        p += 1
                        plen -= 1
                        if pat(p) == string[s]:
                            matched = True
                    elif pat(p) == ord("]"):
                        break
                    elif plen == 0:
                        p -= 1
                        plen += 1
                        break
                    elif plen >= 3 and pat(p + 1) == ord("-"):
                        lo, hi = sorted((pat(p), pat(p + 2)))
                        p += 2
                        plen -= 2
                        if lo <= string[s] <= hi:
                            matched = True
                    elif pat(p) == string[s]:
                        matched = True
                    p += 1
                    plen -= 1
                if negate:
                    matched = not matched
                if not matched:
                    return False
                s += 1
                slen -= 1
            else:
                if c == ord("\\") and plen >= 2:
                    p += 1
                    plen -= 1
                if pat(p) != string[s]:
                    return False
                s += 1
                slen -= 1
            p += 1
            plen -= 1
            if slen == 0:
                while pat(p) == ord("*"):
                    p += 1
                    plen -= 1
                break
        return plen == 0 and slen == 0

    if pattern == b"*":
        return True
    return impl(0, len(pattern), 0, len(string))


@pytest.mark.parametrize(
    "pattern,string,expected",
    [
        (b"*", b"", True),
        (b"*", b"anything", True),
        (b"h?llo", b"hello", True),
        (b"h?llo", b"hllo", False),
        (b"h*llo", b"heeeello", True),
        (b"h[ae]llo", b"hallo", True),
        (b"h[ae]llo", b"hillo", False),
        (b"h[^e]llo", b"hallo", True),
        (b"h[^e]llo", b"hello", False),
        (b"h[a-b]llo", b"hbllo", True),
        (b"h[b-a]llo", b"hbllo", True),
        (b"h\\*llo", b"h*llo", True),
        (b"h\\*llo", b"hello", False),
        (b"[\\]]", b"]", True),
        (b"[ab", b"b", True),
        (b"a\\", b"a\\", True),
        (b"*a*", b"", False),
        (b"", b"", True),
        (b"a", b"", False),
    ],
)
def test_known_patterns(pattern, string, expected):
    assert stringmatch(pattern, string) is expected
    assert reference_match(pattern, string) is expected


def test_agrees_with_stringmatchlen_on_random_patterns():
    rng = random.Random(7)
    alphabet = b"ab*?[]^-\\"
    for _ in range(4000):
        pattern = bytes(rng.choice(alphabet) for _ in range(rng.randrange(0, 8)))
        string = bytes(rng.choice(b"ab-]^*\\") for _ in range(rng.randrange(0, 6)))
        assert stringmatch(pattern, string) == reference_match(pattern, string), (pattern, string)


def test_many_stars_do_not_backtrack_exponentially():
    # keyspace.tcl "Regression for pattern matching long nested loops".
    assert not stringmatch(b"a*" * 32 + b"b", b"a" * 64)
    assert stringmatch(b"a*" * 32 + b"a", b"a" * 64)


def test_too_deeply_nested_stars_never_match():
    # keyspace.tcl "Regression for pattern matching very long nested loops":
    # Redis gives up past 1000 levels of star recursion.
    assert not stringmatch(b"*?" * 50000, b"a" * 50000)
    assert stringmatch(b"*a" * 1000 + b"*", b"a" * 1000)
    assert not stringmatch(b"*a" * 1001, b"a" * 1001)
