from command_dispatch import Dispatcher, err, ok

WRONGTYPE = "WRONGTYPE Operation against a key holding the wrong kind of value"


def test_hset_hget_hmset_hmget(r):
    assert r("HSET", "h", "a", "1", "b", "2") == 2
    assert r("HSET", "h", "a", "9", "c", "3") == 1
    assert r("HGET", "h", "a") == b"9"
    assert r("HGET", "h", "x") is None
    assert r("HGET", "nokey", "x") is None
    assert ok(r("HMSET", "h", "d", "4"))
    assert r("HMGET", "h", "a", "x", "d") == [b"9", None, b"4"]
    assert r("HMGET", "nokey", "a", "b") == [None, None]
    assert err(r("HSET", "h", "a", "1", "b")) == "ERR wrong number of arguments for 'hset' command"
    assert err(r("HMSET", "h", "a")) == "ERR wrong number of arguments for 'hmset' command"


def test_hsetnx_hexists_hlen_hstrlen(r):
    assert r("HSETNX", "h", "f", "v") == 1
    assert r("HSETNX", "h", "f", "w") == 0
    assert r("HGET", "h", "f") == b"v"
    assert r("HEXISTS", "h", "f") == 1
    assert r("HEXISTS", "h", "g") == 0
    assert r("HLEN", "h") == 1
    assert r("HLEN", "nokey") == 0
    assert r("HSTRLEN", "h", "f") == 1
    assert r("HSTRLEN", "h", "g") == 0


def test_hgetall_hkeys_hvals(r):
    r("HSET", "h", "a", "1", "b", "2")
    assert r("HGETALL", "h") == {b"a": b"1", b"b": b"2"}
    assert sorted(r("HKEYS", "h")) == [b"a", b"b"]
    assert sorted(r("HVALS", "h")) == [b"1", b"2"]
    assert r("HGETALL", "nokey") == {}
    assert r("HKEYS", "nokey") == []


def test_hdel_removes_empty_hash(r):
    r("HSET", "h", "a", "1", "b", "2")
    assert r("HDEL", "h", "a", "x") == 1
    assert r("HDEL", "h", "b", "b") == 1
    assert r("EXISTS", "h") == 0
    assert r("HDEL", "h", "a") == 0


def test_hincrby(r):
    assert r("HINCRBY", "h", "n", "5") == 5
    assert r("HINCRBY", "h", "n", "-7") == -2
    r("HSET", "h", "s", "abc", "big", "9223372036854775807")
    assert err(r("HINCRBY", "h", "s", "1")) == "ERR hash value is not an integer"
    assert err(r("HINCRBY", "h", "big", "1")) == "ERR increment or decrement would overflow"
    assert err(r("HINCRBY", "h", "n", "x")) == "ERR value is not an integer or out of range"


def test_hincrbyfloat(r):
    assert r("HINCRBYFLOAT", "h", "f", "10.5") == b"10.5"
    assert r("HINCRBYFLOAT", "h", "f", "0.1") == b"10.6"
    r("HSET", "h", "s", "abc")
    assert err(r("HINCRBYFLOAT", "h", "s", "1")) == "ERR hash value is not a float"
    assert err(r("HINCRBYFLOAT", "h", "f", "x")) == "ERR value is not a valid float"
    assert err(r("HINCRBYFLOAT", "h2", "f", "+inf")) == "ERR value is NaN or Infinity"
    assert r("EXISTS", "h2") == 0


def test_wrongtype(r):
    r("SET", "s", "v")
    for cmd in (("HSET", "s", "f", "v"), ("HGET", "s", "f"), ("HGETALL", "s"), ("HDEL", "s", "f"),
                ("HLEN", "s"), ("HINCRBY", "s", "f", "1"), ("HRANDFIELD", "s"), ("HSCAN", "s", "0"),
                ("HMGET", "s", "f"), ("HSETNX", "s", "f", "v"), ("HEXISTS", "s", "f")):
        assert err(r(*cmd)) == WRONGTYPE, cmd
    assert r("GET", "s") == b"v"


def test_hrandfield(r):
    assert r("HRANDFIELD", "nokey") is None
    assert r("HRANDFIELD", "nokey", "5") == []
    r("HSET", "h", "a", "1", "b", "2", "c", "3")
    assert r("HRANDFIELD", "h") in (b"a", b"b", b"c")
    assert r("HRANDFIELD", "h", "0") == []
    assert sorted(r("HRANDFIELD", "h", "10")) == [b"a", b"b", b"c"]
    two = r("HRANDFIELD", "h", "2")
    assert len(two) == 2 and len(set(two)) == 2
    many = r("HRANDFIELD", "h", "-20")
    assert len(many) == 20 and set(many) <= {b"a", b"b", b"c"}
    flat = r("HRANDFIELD", "h", "-5", "WITHVALUES")
    assert len(flat) == 10
    assert all({b"a": b"1", b"b": b"2", b"c": b"3"}[f] == v for f, v in zip(flat[::2], flat[1::2]))
    r3 = Dispatcher(r.db, resp=3)
    pairs = r3("HRANDFIELD", "h", "3", "WITHVALUES")
    assert sorted(pairs) == [[b"a", b"1"], [b"b", b"2"], [b"c", b"3"]]
    assert err(r("HRANDFIELD", "h", "1", "FOO")) == "ERR syntax error"
    assert err(r("HRANDFIELD", "h", "-9223372036854775808")).startswith("ERR value is out of range")
    assert err(r("HRANDFIELD", "h", "-9223372036854770000", "WITHVALUES")) == "ERR value is out of range"


def test_hscan(r):
    for i in range(200):
        r("HSET", "h", f"f{i}", f"v{i}")
    cursor, items = r("HSCAN", "h", "0", "COUNT", "10")
    assert cursor == b"0" and len(items) == 400
    cursor, items = r("HSCAN", "h", "0", "MATCH", "f1?")
    assert sorted(items[::2]) == sorted(f"f1{i}".encode() for i in range(10))
    cursor, items = r("HSCAN", "h", "0", "MATCH", "f1", "NOVALUES")
    assert items == [b"f1"]
    assert r("HSCAN", "nokey", "0") == [b"0", []]
    assert err(r("HSCAN", "h", "0", "TYPE", "string")) == "ERR syntax error"
    assert err(r("HSCAN", "h", "abc")) == "ERR invalid cursor"
