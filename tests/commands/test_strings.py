from kvorum.protocol.values import SimpleString

from command_dispatch import err, ok


def test_get_set_basic(r):
    assert r("GET", "k") is None
    assert ok(r("SET", "k", "v"))
    assert r("GET", "k") == b"v"
    assert r("get", "k") == b"v"
    assert err(r("GET")) == "ERR wrong number of arguments for 'get' command"


def test_set_nx_xx(r):
    assert r("SET", "k", "1", "XX") is None
    assert ok(r("SET", "k", "1", "NX"))
    assert r("SET", "k", "2", "NX") is None
    assert ok(r("SET", "k", "3", "xx"))
    assert r("GET", "k") == b"3"
    assert err(r("SET", "k", "1", "NX", "XX")) == "ERR syntax error"


def test_set_get_option(r):
    assert r("SET", "k", "a", "GET") is None
    assert r("SET", "k", "b", "GET") == b"a"
    # GET with NX (Redis 7): the old value comes back and nothing is written.
    assert r("SET", "k", "c", "NX", "GET") == b"b"
    assert r("GET", "k") == b"b"
    assert r("SET", "new", "c", "NX", "GET") is None
    assert r("GET", "new") == b"c"
    r("HSET", "h", "f", "v")
    assert err(r("SET", "h", "x", "GET")).startswith("WRONGTYPE")
    assert r("HGET", "h", "f") == b"v"


def test_set_expire_options(r):
    assert ok(r("SET", "k", "v", "EX", "10"))
    assert r("TTL", "k") == 10
    assert ok(r("SET", "k", "v", "PX", "1500"))
    assert r("PTTL", "k") == 1500
    assert ok(r("SET", "k", "v", "EXAT", str(r.now_ms // 1000 + 100)))
    assert 99 <= r("TTL", "k") <= 100
    assert ok(r("SET", "k", "v", "PXAT", str(r.now_ms + 5000)))
    assert r("PTTL", "k") == 5000
    assert ok(r("SET", "k", "w", "KEEPTTL"))
    assert r("PTTL", "k") == 5000
    assert ok(r("SET", "k", "w"))
    assert r("TTL", "k") == -1
    assert err(r("SET", "k", "v", "EX", "10", "PX", "100")) == "ERR syntax error"
    assert err(r("SET", "k", "v", "EX", "10", "KEEPTTL")) == "ERR syntax error"
    assert err(r("SET", "k", "v", "EX")) == "ERR syntax error"
    assert err(r("SET", "k", "v", "EX", "0")) == "ERR invalid expire time in 'set' command"
    assert err(r("SET", "k", "v", "PX", "-1")) == "ERR invalid expire time in 'set' command"
    assert err(r("SET", "k", "v", "EX", "9223372036854775")) == "ERR invalid expire time in 'set' command"
    assert err(r("SET", "k", "v", "EX", "x")) == "ERR value is not an integer or out of range"
    assert r("GET", "k") == b"w"


def test_set_pxat_in_the_past_deletes(r):
    r("SET", "k", "v")
    assert ok(r("SET", "k", "v", "PXAT", "1"))
    assert r("EXISTS", "k") == 0


def test_set_expiry_is_lazy_and_simulated(r):
    r("SET", "k", "v", "PX", "100")
    r.advance(99)
    assert r("GET", "k") == b"v"
    r.advance(1)
    assert r("GET", "k") is None
    assert r.db.expired_keys == 1


def test_setnx_setex_psetex(r):
    assert r("SETNX", "k", "a") == 1
    assert r("SETNX", "k", "b") == 0
    assert ok(r("SETEX", "k", "10", "c"))
    assert r("TTL", "k") == 10
    assert ok(r("PSETEX", "k", "1000", "d"))
    assert r("PTTL", "k") == 1000
    assert err(r("SETEX", "k", "-10", "v")) == "ERR invalid expire time in 'setex' command"
    assert err(r("PSETEX", "k", "0", "v")) == "ERR invalid expire time in 'psetex' command"
    assert r("GET", "k") == b"d"


def test_mget_mset_msetnx(r):
    assert ok(r("MSET", "a", "1", "b", "2"))
    r("HSET", "h", "f", "v")
    assert r("MGET", "a", "b", "c", "h") == [b"1", b"2", None, None]
    assert err(r("MSET", "a", "1", "b")) == "ERR wrong number of arguments for 'mset' command"
    assert r("MSETNX", "x", "1", "a", "9") == 0
    assert r("GET", "a") == b"1" and r("EXISTS", "x") == 0
    assert r("MSETNX", "x", "1", "y", "2") == 1
    assert err(r("MSETNX", "x")) == "ERR wrong number of arguments for 'msetnx' command"


def test_getset_getdel(r):
    assert r("GETSET", "k", "a") is None
    r("EXPIRE", "k", "100")
    assert r("GETSET", "k", "b") == b"a"
    assert r("TTL", "k") == -1
    assert r("GETDEL", "k") == b"b"
    assert r("GETDEL", "k") is None
    r("HSET", "h", "f", "v")
    assert err(r("GETDEL", "h")).startswith("WRONGTYPE")


def test_getex(r):
    assert r("GETEX", "nokey", "EX", "bad") is None
    r("SET", "k", "v")
    assert r("GETEX", "k", "EX", "100") == b"v"
    assert r("TTL", "k") == 100
    assert r("GETEX", "k", "PERSIST") == b"v"
    assert r("TTL", "k") == -1
    assert r("GETEX", "k", "PX", "500") == b"v"
    assert r("PTTL", "k") == 500
    assert err(r("GETEX", "k", "EX", "0")) == "ERR invalid expire time in 'getex' command"
    assert err(r("GETEX", "k", "KEEPTTL")) == "ERR syntax error"
    assert err(r("GETEX", "k", "EX", "10", "PERSIST")) == "ERR syntax error"
    assert r("GETEX", "k", "PXAT", "1") == b"v"
    assert r("EXISTS", "k") == 0


def test_append_strlen(r):
    assert r("APPEND", "k", "ab") == 2
    r("EXPIRE", "k", "100")
    assert r("APPEND", "k", "cd") == 4
    assert r("GET", "k") == b"abcd"
    assert r("TTL", "k") == 100
    assert r("STRLEN", "k") == 4
    assert r("STRLEN", "nokey") == 0


def test_getrange(r):
    r("SET", "k", "Hello World")
    assert r("GETRANGE", "k", "0", "4") == b"Hello"
    assert r("GETRANGE", "k", "-5", "-1") == b"World"
    assert r("GETRANGE", "k", "-1", "-5") == b""
    assert r("GETRANGE", "k", "5", "3") == b""
    assert r("GETRANGE", "k", "0", "-100") == b"H"
    assert r("GETRANGE", "k", "0", "1000") == b"Hello World"
    assert r("GETRANGE", "nokey", "0", "1") == b""
    assert r("SUBSTR", "k", "6", "-1") == b"World"
    assert err(r("GETRANGE", "k", "a", "1")) == "ERR value is not an integer or out of range"


def test_setrange(r):
    assert r("SETRANGE", "k", "5", "x") == 6
    assert r("GET", "k") == b"\x00\x00\x00\x00\x00x"
    r("SET", "k", "Hello World")
    assert r("SETRANGE", "k", "6", "Redis") == 11
    assert r("GET", "k") == b"Hello Redis"
    assert r("SETRANGE", "k", "0", "") == 11
    assert r("SETRANGE", "nokey", "10", "") == 0
    assert r("EXISTS", "nokey") == 0
    assert err(r("SETRANGE", "k", "-1", "x")) == "ERR offset is out of range"
    assert err(r("SETRANGE", "k", "536870911", "xx")) == \
        "ERR string exceeds maximum allowed size (proto-max-bulk-len)"
    assert err(r("SETRANGE", "k", "9223372036854775807", "x")) == \
        "ERR string exceeds maximum allowed size (proto-max-bulk-len)"


def test_incr_decr(r):
    assert r("INCR", "n") == 1
    assert r("INCRBY", "n", "10") == 11
    assert r("DECR", "n") == 10
    assert r("DECRBY", "n", "20") == -10
    r("SET", "n", "9223372036854775807")
    assert err(r("INCR", "n")) == "ERR increment or decrement would overflow"
    assert err(r("DECRBY", "n", "-9223372036854775808")) == "ERR decrement would overflow"
    for bad in ("1.5", " 1", "1 ", "+1", "01", "", "-0", "1\x002"):
        r("SET", "n", bad)
        assert err(r("INCR", "n")) == "ERR value is not an integer or out of range", bad
    assert err(r("INCRBY", "x", "1.5")) == "ERR value is not an integer or out of range"
    r("SET", "n", "5")
    r("EXPIRE", "n", "100")
    assert r("INCR", "n") == 6
    assert r("TTL", "n") == 100


def test_incrbyfloat(r):
    assert r("INCRBYFLOAT", "f", "1") == b"1"
    assert r("INCRBYFLOAT", "f", "0.25") == b"1.25"
    r("SET", "f", "10.50")
    assert r("INCRBYFLOAT", "f", "0.1") == b"10.6"
    r("SET", "f", "0.1")
    assert r("INCRBYFLOAT", "f", "0.2") == b"0.3"
    r("SET", "f", "5.0e3")
    assert r("INCRBYFLOAT", "f", "2.0e2") == b"5200"
    r("SET", "f", "17179869184")
    assert r("INCRBYFLOAT", "f", "1.5") == b"17179869185.5"
    r("SET", "f", "0")
    assert err(r("INCRBYFLOAT", "f", "+inf")) == "ERR increment would produce NaN or Infinity"
    assert err(r("INCRBYFLOAT", "f", "nan")) == "ERR value is not a valid float"
    r("SET", "f", " 11")
    assert err(r("INCRBYFLOAT", "f", "1")) == "ERR value is not a valid float"
    r("DEL", "f")
    r("INCRBYFLOAT", "f", str(1 / 41))
    assert r("INCRBYFLOAT", "f", str(-1 / 41)) == b"0"


def test_wrongtype(r):
    r("HSET", "h", "f", "v")
    for cmd in (("GET", "h"), ("APPEND", "h", "x"), ("INCR", "h"), ("STRLEN", "h"),
                ("GETRANGE", "h", "0", "1"), ("SETRANGE", "h", "0", "x"), ("GETSET", "h", "x"),
                ("INCRBYFLOAT", "h", "1"), ("GETEX", "h")):
        assert err(r(*cmd)) == "WRONGTYPE Operation against a key holding the wrong kind of value", cmd
    assert r("HGET", "h", "f") == b"v"
    assert ok(r("SET", "h", "s"))


def test_type_reply_is_status(r):
    r("SET", "k", "v")
    assert r("TYPE", "k") == SimpleString("string")



def test_lcs(r):
    # The examples of Redis' LCS documentation.
    r("SET", "a", "ohmytext")
    r("SET", "b", "mynewtext")
    assert r("LCS", "a", "b") == b"mytext"
    assert r("LCS", "a", "b", "IDX", "WITHMATCHLEN") == {
        "matches": [[[4, 7], [5, 8], 4], [[2, 3], [0, 1], 2]], "len": 6}
    assert r("LCS", "a", "b", "LEN") == 6
    assert r("LCS", "a", "b", "IDX", "MINMATCHLEN", "4") == {"matches": [[[4, 7], [5, 8]]], "len": 6}
    assert r("LCS", "a", "nokey") == b""
    assert err(r("LCS", "a", "b", "LEN", "IDX")) == \
        "ERR If you want both the length and indexes, please just use IDX."
    r("HSET", "h", "f", "v")
    assert err(r("LCS", "a", "h")) == "ERR The specified keys must contain string values"
