from command_dispatch import Dispatcher, err, ok

from kvorum.protocol.values import SimpleString


def test_del_unlink_exists(r):
    r("MSET", "a", "1", "b", "2", "c", "3")
    assert r("EXISTS", "a", "a", "x") == 2
    assert r("DEL", "a", "x") == 1
    assert r("UNLINK", "b", "c", "b") == 2
    assert r("DBSIZE") == 0


def test_expire_family(r):
    r("SET", "k", "v")
    assert r("EXPIRE", "k", "100") == 1
    assert r("TTL", "k") == 100
    assert r("PTTL", "k") == 100_000
    assert r("PEXPIRE", "k", "1500") == 1
    assert r("TTL", "k") == 2  # rounded like Redis: (ttl + 500) / 1000
    at = r.now_ms // 1000 + 50
    assert r("EXPIREAT", "k", str(at)) == 1
    assert r("EXPIRETIME", "k") == at
    assert r("PEXPIRETIME", "k") == at * 1000
    assert r("PEXPIREAT", "k", str(r.now_ms + 10)) == 1
    assert r("PTTL", "k") == 10
    assert r("EXPIRE", "nokey", "10") == 0
    assert r("TTL", "nokey") == -2
    assert r("EXPIRETIME", "nokey") == -2
    assert r("PERSIST", "k") == 1
    assert r("PERSIST", "k") == 0
    assert r("TTL", "k") == -1
    assert r("EXPIRETIME", "k") == -1


def test_expire_in_the_past_deletes(r):
    r("SET", "k", "v")
    assert r("EXPIRE", "k", "-1") == 1
    assert r("EXISTS", "k") == 0
    r("SET", "k", "v")
    assert r("PEXPIREAT", "k", "-9223372036854770000") == 1
    assert r("TTL", "k") == -2


def test_expire_options(r):
    r("SET", "k", "v")
    assert r("EXPIRE", "k", "100", "XX") == 0
    assert r("EXPIRE", "k", "100", "GT") == 0
    assert r("EXPIRE", "k", "100", "NX") == 1
    assert r("EXPIRE", "k", "200", "NX") == 0
    assert r("EXPIRE", "k", "50", "GT") == 0
    assert r("EXPIRE", "k", "200", "GT") == 1
    assert r("EXPIRE", "k", "300", "LT") == 0
    assert r("EXPIRE", "k", "150", "lt") == 1
    assert r("TTL", "k") == 150
    assert r("EXPIRE", "k", "120", "XX", "LT") == 1
    r("PERSIST", "k")
    assert r("EXPIRE", "k", "10", "LT") == 1
    assert err(r("EXPIRE", "k", "10", "NX", "XX")) == \
        "ERR NX and XX, GT or LT options at the same time are not compatible"
    assert err(r("EXPIRE", "k", "10", "GT", "LT")) == \
        "ERR GT and LT options at the same time are not compatible"
    assert err(r("EXPIRE", "k", "10", "foo")) == "ERR Unsupported option foo"


def test_expire_overflow(r):
    r("SET", "k", "v")
    assert err(r("EXPIRE", "k", "9223370399119966")) == "ERR invalid expire time in 'expire' command"
    assert err(r("EXPIRE", "k", "-9223372036854775808")) == "ERR invalid expire time in 'expire' command"
    assert err(r("PEXPIRE", "k", "9223372036854770000")) == "ERR invalid expire time in 'pexpire' command"
    assert err(r("EXPIRE", "k", "1.5")) == "ERR value is not an integer or out of range"
    assert r("PEXPIREAT", "k", "9223372036854770000") == 1
    assert r("TTL", "k") > 0


def test_type(r):
    r("SET", "s", "v")
    r("HSET", "h", "f", "v")
    assert r("TYPE", "s") == SimpleString("string")
    assert r("TYPE", "h") == SimpleString("hash")
    assert r("TYPE", "x") == SimpleString("none")


def test_keys_patterns(r):
    for k in ("foo_a", "foo_b", "foo_c", "key_x", "key_y", "key_z"):
        r("SET", k, "1")
    assert sorted(r("KEYS", "foo*")) == [b"foo_a", b"foo_b", b"foo_c"]
    assert sorted(r("KEYS", "*")) == sorted(r.db.keys(r.now_ms))
    assert sorted(r("KEYS", "key_[xy]")) == [b"key_x", b"key_y"]
    assert sorted(r("KEYS", "key_[^x]")) == [b"key_y", b"key_z"]
    assert r("KEYS", "nomatch*") == []
    r("SET", "*", "star")
    assert r("KEYS", "\\*") == [b"*"]


def test_keys_skips_expired(r):
    r("SET", "a", "1", "PX", "10")
    r("SET", "b", "1")
    r.advance(10)
    assert r("KEYS", "*") == [b"b"]
    assert r("DBSIZE") == 1


def test_scan_full_iteration(r):
    for i in range(1000):
        r("SET", f"key:{i}", "v")
    seen = []
    cursor = b"0"
    while True:
        cursor, keys = r("SCAN", cursor, "COUNT", "37")
        seen.extend(keys)
        if cursor == b"0":
            break
    assert len(seen) == 1000 and len(set(seen)) == 1000


def test_scan_guarantee_under_writes(r):
    """Every key present for the whole iteration is returned, whatever else changes."""
    for i in range(500):
        r("SET", f"stable:{i}", "v")
    seen = set()
    cursor = b"0"
    n = 0
    while True:
        cursor, keys = r("SCAN", cursor, "COUNT", "10")
        seen.update(keys)
        for _ in range(20):
            r("SET", f"new:{n}", "v")
            r("DEL", f"new:{n - 7}")
            r("SET", f"stable:{n % 500}", "overwritten")
            n += 1
        if cursor == b"0":
            break
    assert {f"stable:{i}".encode() for i in range(500)} <= seen


def test_scan_match_type_count(r):
    for i in range(20):
        r("SET", f"s{i}", "v")
        r("HSET", f"h{i}", "f", "v")
    cursor, keys = r("SCAN", "0", "COUNT", "100", "MATCH", "s1*")
    assert cursor == b"0"
    assert sorted(keys) == sorted(f"s1{x}".encode() for x in ["", *range(10)])
    cursor, keys = r("SCAN", "0", "COUNT", "100", "TYPE", "HASH")
    assert len(keys) == 20 and all(k.startswith(b"h") for k in keys)
    assert r("SCAN", "0", "COUNT", "100", "TYPE", "list") == [b"0", []]
    assert err(r("SCAN", "0", "COUNT", "0")) == "ERR syntax error"
    assert err(r("SCAN", "0", "COUNT")) == "ERR syntax error"
    assert err(r("SCAN", "x")) == "ERR invalid cursor"
    assert err(r("SCAN", "0", "FOO", "1")) == "ERR syntax error"


def test_rename(r):
    assert err(r("RENAME", "nokey", "x")) == "ERR no such key"
    r("SET", "a", "1", "EX", "100")
    assert ok(r("RENAME", "a", "a"))
    assert ok(r("RENAME", "a", "b"))
    assert r("GET", "b") == b"1" and r("EXISTS", "a") == 0
    assert r("TTL", "b") == 100
    r("SET", "c", "2")
    assert r("RENAMENX", "b", "c") == 0
    assert r("RENAMENX", "b", "d") == 1
    assert r("RENAMENX", "d", "d") == 0
    assert ok(r("RENAME", "d", "c"))
    assert r("GET", "c") == b"1" and r("TTL", "c") == 100


def test_copy(r):
    r("HSET", "h", "f", "v")
    r("EXPIRE", "h", "100")
    assert r("COPY", "h", "h2") == 1
    assert r("HGETALL", "h2") == {b"f": b"v"}
    assert r("TTL", "h2") == 100
    r("HSET", "h2", "g", "w")
    assert r("HLEN", "h") == 1  # a deep copy
    assert r("COPY", "h", "h2") == 0
    assert r("COPY", "h", "h2", "REPLACE") == 1
    assert r("HLEN", "h2") == 1
    assert r("COPY", "nokey", "x") == 0
    assert err(r("COPY", "h", "h")) == "ERR source and destination objects are the same"
    assert err(r("COPY", "h", "x", "DB", "1")) == "ERR DB index is out of range"
    assert r("COPY", "h", "x", "DB", "0") == 1


def test_touch_randomkey_dbsize_flush(r):
    assert r("RANDOMKEY") is None
    r("MSET", "a", "1", "b", "2")
    assert r("TOUCH", "a", "b", "c") == 2
    assert r("RANDOMKEY") in (b"a", b"b")
    assert r("DBSIZE") == 2
    assert ok(r("FLUSHDB"))
    assert r("DBSIZE") == 0
    r("SET", "a", "1")
    assert ok(r("FLUSHALL", "ASYNC"))
    assert ok(r("FLUSHALL", "sync"))
    assert err(r("FLUSHALL", "foo")) == "ERR syntax error"
    assert err(r("FLUSHDB", "SYNC", "ASYNC")) == "ERR syntax error"


def test_object(r):
    r("SET", "i", "12345")
    r("SET", "s", "hello")
    r("SET", "raw", "x" * 100)
    r("HSET", "h", "f", "v")
    assert r("OBJECT", "ENCODING", "i") == b"int"
    assert r("OBJECT", "ENCODING", "s") == b"embstr"
    assert r("OBJECT", "ENCODING", "raw") == b"raw"
    assert r("OBJECT", "ENCODING", "h") == b"listpack"
    assert r("OBJECT", "ENCODING", "nokey") is None
    assert r("OBJECT", "REFCOUNT", "s") == 1
    r.advance(5000)
    assert r("OBJECT", "IDLETIME", "s") == 5
    r("GET", "s")
    assert r("OBJECT", "IDLETIME", "s") == 0
    assert err(r("OBJECT", "FREQ", "s")).startswith("ERR An LFU maxmemory policy is not selected")
    assert isinstance(r("OBJECT", "HELP"), list)


def test_versions_follow_writes():
    r = Dispatcher()
    db = r.db
    r("SET", "k", "v")
    v1 = db.version_of(b"k", r.now_ms)
    r("GET", "k")
    assert db.version_of(b"k", r.now_ms) == v1
    r("EXPIRE", "k", "100")
    v2 = db.version_of(b"k", r.now_ms)
    assert v2 > v1
    r("DEL", "k")
    assert db.version_of(b"k", r.now_ms) == 0
    r("SET", "k", "v")
    assert db.version_of(b"k", r.now_ms) > v2


def test_bad_input_changes_nothing(r):
    r("SET", "k", "v")
    r("HSET", "h", "f", "1")
    version = r.db.version_of(b"k", r.now_ms)
    for cmd in (("SET", "k", "x", "EX", "-1"), ("SET", "k", "x", "NX", "XX"), ("INCR", "k"),
                ("EXPIRE", "k", "x"), ("EXPIRE", "k", "10", "NX", "GT"), ("SETRANGE", "k", "-1", "x"),
                ("HINCRBY", "h", "f", "x"), ("APPEND", "h", "x")):
        assert err(r(*cmd)), cmd
    assert r("GET", "k") == b"v" and r("TTL", "k") == -1
    assert r.db.version_of(b"k", r.now_ms) == version
    assert r("HGET", "h", "f") == b"1"
