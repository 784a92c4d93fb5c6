"""Lua scripting on a single node (EVAL, EVALSHA, *_RO, SCRIPT), black-box with redis-py,
compared with a real redis-server where the reply is Redis' own."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import time

import pytest
import redis

from node_process import free_port

SHA_OF_RETURN_1 = "e0e1f9fabfc9d4800c877a703b823ac0578ff8db"  # sha1("return 1")


@pytest.fixture(scope="module")
def real_redis():
    """A redis-server on loopback for replies to compare with, or skip."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    process = subprocess.Popen(["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port, protocol=2)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    yield client
    client.close()
    process.terminate()
    process.wait()


def both(r, real, method, *args):
    """The same call on kvorum and on redis-server (each on an empty keyspace): both outcomes."""
    out = []
    for client in (r, real):
        client.flushall()
        try:
            out.append(getattr(client, method)(*args))
        except redis.ResponseError as exc:
            out.append(("error", str(exc).split(" script:")[0]))
    return out


CONVERSIONS = [
    "return 'hello'",
    "return 3.99",
    "return -3.99",
    "return true",
    "return false",
    "return nil",
    "return {1, 2.5, 'x', false, 'after'}",
    "return {1, nil, 3}",
    "return {1, {2, {3, 'deep'}}}",
    "return redis.status_reply('FINE')",
    "return {ok='STATUS'}",
    "return redis.call('set', KEYS[1], ARGV[1])",
    "redis.call('set', KEYS[1], ARGV[1]); return redis.call('get', KEYS[1])",
    "return redis.call('get', 'missing')",
    "return redis.call('incr', KEYS[1])",
    "redis.call('hset', KEYS[1], 'f', 'v'); return redis.call('hgetall', KEYS[1])",
    "return redis.call('exists', KEYS[1])",
    "return redis.pcall('incr', 'nope', 'extra')",
    "redis.call('set', KEYS[1], 'notanumber'); return redis.pcall('incr', KEYS[1])",
    "return type(redis.call('get', 'missing'))",
    "return type(redis.call('set', KEYS[1], 1))",
    "return redis.call('set', KEYS[1], 1)['ok']",
    "return KEYS[1] .. ARGV[1] .. #KEYS .. #ARGV",
    "return redis.sha1hex('abc')",
    "return cjson.encode({a=1})",
    "return cjson.decode('{\"a\":[1,2,3]}')['a'][2]",
    "return tostring(cjson.decode('[null]')[1] == cjson.null)",
    "return bit.band(0xff, 0x0f) .. ' ' .. bit.bxor(5, 3) .. ' ' .. bit.tohex(255)",
    "return redis.REDIS_VERSION ~= nil",
    "return math.floor(7.9)",
    "return string.format('%05d', 42)",
    "return table.concat({'a', 'b'}, '-')",
    "return {err='MYERR custom'}",
    "return {unpack({1, 2, 3}, -1, -2)}",
    "return {unpack({1, 2, 3}, 2)}",
    "return _G",
    "return setmetatable({1, 2}, {__index = function() error('no') end})",
    "local ok, e = pcall(error, 'x') return {tostring(ok), e}",
    "return select('#', pcall(function() return 1, nil, 3 end))",
    "return redis.error_reply('MYERR custom')",
    "return redis.error_reply('oneword')",
    "return redis.error_reply('-CODE with dash')",
    "return setmetatable({}, {__index = function() return 1 end})[5]",
    "return getmetatable(setmetatable({}, {x = 1})).x",
]


@pytest.mark.parametrize("script", CONVERSIONS)
def test_reply_conversion_matches_redis(kvorum_node, real_redis, script):
    r = kvorum_node.client(protocol=2)
    mine, theirs = both(r, real_redis, "eval", script, 1, "key", "7")
    assert mine == theirs


RESP3_SCRIPTS = [
    "redis.setresp(3); return redis.call('hgetall', KEYS[1])",
    "redis.setresp(3); redis.call('hset', KEYS[1], 'f', 'v'); local m = redis.call('hgetall', KEYS[1]); "
    "return m['map']['f']",
    "redis.setresp(3); return redis.call('get', 'missing') == nil",
    "return {double=3.5}",
    "redis.setresp(3); return true",
    "redis.setresp(3); return false",
]


@pytest.mark.parametrize("script", RESP3_SCRIPTS)
@pytest.mark.parametrize("protocol", [2, 3])
def test_resp3_conversion_matches_redis(kvorum_node, real_redis, script, protocol):
    r = kvorum_node.client(protocol=protocol)
    real = redis.Redis(port=real_redis.connection_pool.connection_kwargs["port"], protocol=protocol)
    mine, theirs = both(r, real, "eval", script, 1, "key")
    assert mine == theirs


ERRORS = [
    ("x = 1", "Attempt to modify a readonly table"),
    ("function f() end", "Attempt to modify a readonly table"),
    ("return undefined_thing", "Script attempted to access nonexistent global variable 'undefined_thing'"),
    ("return os.time()", "Script attempted to access nonexistent global variable 'os'"),
    ("return io.open('/etc/passwd')", "Script attempted to access nonexistent global variable 'io'"),
    ("return loadfile('/etc/passwd')", "Script attempted to access nonexistent global variable 'loadfile'"),
    ("return dofile('/etc/passwd')", "Script attempted to access nonexistent global variable 'dofile'"),
    ("return require('os')", "Script attempted to access nonexistent global variable 'require'"),
    ("return loadstring('return os')()", "Script attempted to access nonexistent global variable 'os'"),
    ("redis.foo = 1", "Attempt to modify a readonly table"),
    ("return redis.call('nosuchcommand')", "Unknown Redis command called from script"),
    ("return redis.call('get')", "Wrong number of args calling Redis command from script"),
    ("return redis.call('multi')", "This Redis command is not allowed from script"),
    ("return redis.call('eval', 'return 1', 0)", "This Redis command is not allowed from script"),
    ("return redis.call()", "Please specify at least one argument for this redis lib call"),
    ("return redis.call({})", "Lua redis lib command arguments must be strings or integers"),
    ("return 1 +", "Error compiling script"),
    ("error('boom')", "boom"),
    ("redis.setresp(4)", "RESP version must be 2 or 3"),
    ("redis.log(99, 'x')", "Invalid debug level"),
    ("redis = function() return 1 end", "Attempt to modify a readonly table"),
    ("_G = {}", "Attempt to modify a readonly table"),
    ("KEYS = {}", "Attempt to modify a readonly table"),
    ("redis.call = function() return 1 end", "Attempt to modify a readonly table"),
    ("cjson.encode = function() return 1 end", "Attempt to modify a readonly table"),
    ("rawset(_G, 'x', 1)", "Attempt to modify a readonly table"),
    ("setmetatable(_G, {})", "Attempt to modify a readonly table"),
    ("getmetatable(_G).__index = {}", "Attempt to modify a readonly table"),
    ("getmetatable('').__index = {}", "Attempt to modify a readonly table"),
    ("return {unpack({1, 2, 3}, -2, 2147483647)}", "too many results to unpack"),
    ("return {unpack({1, 2, 3}, -2147483648, -2)}", "too many results to unpack"),
]


@pytest.mark.parametrize("script,message", ERRORS)
def test_script_errors(r, script, message):
    with pytest.raises(redis.ResponseError, match=message.replace("(", r"\(").replace(")", r"\)")):
        r.eval(script, 0)
    assert r.ping()


def test_tricks_on_the_sandbox_leave_later_scripts_intact(r):
    for trick in ("redis = function() return 1 end", "_G = {}", "string.sub = nil", "rawset(_G, 'redis', 1)",
                  "getmetatable('').__index = {}", "math.floor = nil", "KEYS = 1"):
        with pytest.raises(redis.ResponseError):
            r.eval(trick, 0)
    assert r.eval("return redis.call('set', KEYS[1], string.sub('hello', 1, 2) .. math.floor(1.5))", 1, "k")
    assert r.get("k") == b"he1"


def test_a_failed_script_keeps_its_earlier_writes_like_redis(r, real_redis):
    script = "redis.call('set', KEYS[1], 'v'); error('late')"
    for client in (r, real_redis):
        client.flushall()
        with pytest.raises(redis.ResponseError):
            client.eval(script, 1, "k")
        assert client.get("k") == b"v"


def test_redis_call_error_stops_the_script_pcall_does_not(r):
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        r.eval("redis.call('hset', KEYS[1], 'f', 'v'); redis.call('incr', KEYS[1]); redis.call('set', 'after', 1)",
               1, "h")
    assert r.get("after") is None
    assert r.eval("local e = redis.pcall('incr', KEYS[1]); redis.call('set', 'after', 1); return e['err']",
                  1, "h").startswith(b"WRONGTYPE")
    assert r.get("after") == b"1"


def test_evalsha_and_script_load_exists_flush(r):
    sha = r.script_load("return 1")
    assert sha == SHA_OF_RETURN_1
    assert r.evalsha(sha, 0) == 1
    assert r.evalsha(sha.upper(), 0) == 1
    assert r.script_exists(sha, "0" * 40) == [True, False]
    assert r.script_flush() is True
    assert r.script_exists(sha) == [False]
    with pytest.raises(redis.exceptions.NoScriptError):
        r.evalsha(sha, 0)
    assert r.eval("return 1", 0) == 1  # EVAL caches the script too
    assert r.evalsha(sha, 0) == 1


def test_eval_ro_refuses_writes_and_reads(r):
    r.set("k", "v")
    assert r.eval_ro("return redis.call('get', KEYS[1])", 1, "k") == b"v"
    with pytest.raises(redis.ResponseError, match="Write commands are not allowed from read-only scripts"):
        r.eval_ro("return redis.call('set', KEYS[1], 'x')", 1, "k")
    assert r.get("k") == b"v"
    sha = r.script_load("return redis.call('get', KEYS[1])")
    assert r.evalsha_ro(sha, 1, "k") == b"v"
    with pytest.raises(redis.ResponseError, match="Write commands are not allowed from read-only scripts"):
        r.eval("#!lua flags=no-writes\nreturn redis.call('del', KEYS[1])", 1, "k")
    r.eval("#!lua flags=\nreturn redis.call('set', KEYS[1], 'w')", 1, "k")  # an empty flag list
    assert r.get("k") == b"w"
    with pytest.raises(redis.ResponseError, match="Unexpected flag in script shebang: bogus"):
        r.eval("#!lua flags=bogus\nreturn 1", 0)


def test_numkeys_errors(r):
    with pytest.raises(redis.ResponseError, match="Number of keys can't be greater than number of args"):
        r.eval("return 1", 3, "a")
    with pytest.raises(redis.ResponseError, match="Number of keys can't be negative"):
        r.eval("return 1", -1)
    with pytest.raises(redis.ResponseError, match="not an integer"):
        r.execute_command("EVAL", "return 1", "x")


def test_a_busy_loop_is_stopped_and_the_node_goes_on(kvorum_node):
    r = kvorum_node.client()
    started = time.monotonic()
    with pytest.raises(redis.ResponseError, match="script run time limit"):
        r.eval("local i = 0 while true do i = i + 1 end", 0)
    assert time.monotonic() - started < 30
    with pytest.raises(redis.ResponseError, match="script run time limit"):
        r.eval("pcall(function() while true do end end) return 'escaped'", 0)
    assert r.eval("return 'alive'", 0) == b"alive"


def test_unbounded_allocation_is_stopped_and_the_node_goes_on(kvorum_node):
    r = kvorum_node.client()
    with pytest.raises(redis.ResponseError, match="not enough memory|script run time limit"):
        r.eval("local t = {} local s = string.rep('x', 65536) while true do t[#t + 1] = s .. #t end", 0)
    assert r.eval("return #string.rep('y', 1000)", 0) == 1000
    assert r.set("k", "v") and r.get("k") == b"v"


def test_scripts_see_their_own_writes_and_bump_versions(r):
    r.set("k", "1")
    before = r.execute_command("VERSION", "k")
    assert r.eval("redis.call('incr', KEYS[1]); return redis.call('get', KEYS[1])", 1, "k") == b"2"
    assert r.execute_command("VERSION", "k") > before


def test_script_writes_void_leases(r):
    kind, token = r.execute_command("LEASEGET", "k")
    assert kind == b"LEASE"
    r.eval("return redis.call('del', KEYS[1])", 1, "k")
    assert r.execute_command("LEASESET", "k", "stale", token) is None


def test_script_writes_invalidate_tracking_clients(kvorum_node):
    reader = kvorum_node.client(protocol=3)
    reader.set("tracked", "1")
    pushes = []
    reader.execute_command("CLIENT", "TRACKING", "ON")
    conn = reader.connection_pool.get_connection()
    conn._parser.set_invalidation_push_handler(pushes.append)
    conn.send_command("CLIENT", "TRACKING", "ON")
    conn.read_response()
    conn.send_command("GET", "tracked")
    assert conn.read_response() == b"1"
    writer = kvorum_node.client()
    writer.eval("return redis.call('set', KEYS[1], '2')", 1, "tracked")
    conn.send_command("PING")
    conn.read_response()
    assert any(b"tracked" in (push[1] or []) for push in pushes)


def test_eval_in_multi_and_dirty_count(r):
    before = int(r.info("persistence")["rdb_changes_since_last_save"])
    with r.pipeline() as p:
        p.eval("return redis.call('set', KEYS[1], 'a')", 1, "k")
        p.eval("return redis.call('get', KEYS[1])", 1, "k")
        assert p.execute() == [b"OK", b"a"]
    assert int(r.info("persistence")["rdb_changes_since_last_save"]) >= before + 1


def test_oversized_body_is_refused(r):
    with pytest.raises(redis.ResponseError, match="over the limit"):
        r.eval("return '" + "x" * (5 * 1024 * 1024) + "'", 0)


def test_script_cache_is_bounded_least_recently_used_first(r):
    first = r.script_load("return 'first'")
    for i in range(1100):
        r.script_load(f"return {i}")
        if i % 100 == 0:
            r.evalsha(first, 0)  # kept in use
    assert r.script_exists(first, r.script_load("return 0")) == [True, True]
    early = [hashlib.sha1(f"return {i}".encode()).hexdigest() for i in range(1, 50)]
    assert not any(r.script_exists(*early))


def test_oom_refuses_writes_inside_scripts(node_factory):
    node = node_factory()
    r = node.client()
    r.set("x", "taking memory")
    r.config_set("maxmemory", "1")
    with pytest.raises(redis.ResponseError, match="command not allowed when used memory"):
        r.eval("return redis.call('set', 'x', 1)", 0)
    assert r.eval("return redis.call('get', 'x')", 0) == b"taking memory"


LIBRARY = """#!lua name=mylib
redis.register_function('myset', function(keys, args) return redis.call('set', keys[1], args[1]) end)
redis.register_function{function_name='myget', callback=function(keys, args) return redis.call('get', keys[1]) end,
                        flags={'no-writes'}, description='reads'}
"""


def test_functions_load_call_list_dump_restore(r):
    r.function_flush()
    assert r.function_load(LIBRARY) == b"mylib"
    assert r.fcall("myset", 1, "k", "v") in (True, b"OK")
    assert r.fcall_ro("myget", 1, "k") == b"v"
    with pytest.raises(redis.ResponseError, match="write flag using \\*_ro"):
        r.fcall_ro("myset", 1, "k", "v")
    listed = r.function_list(withcode=True)
    assert len(listed) == 1
    payload = r.function_dump()
    r.function_flush()
    assert r.function_list() == []
    with pytest.raises(redis.ResponseError, match="Function not found"):
        r.fcall("myget", 1, "k")
    assert r.function_restore(payload)
    assert r.fcall("myget", 1, "k") == b"v"
    with pytest.raises(redis.ResponseError, match="already exists"):
        r.function_load(LIBRARY)
    assert r.function_load(LIBRARY, replace=True) == b"mylib"
    assert r.function_delete("mylib")
    with pytest.raises(redis.ResponseError, match="Library not found"):
        r.function_delete("mylib")


@pytest.mark.parametrize("code,message", [
    ("return 1", "Missing library metadata"),
    ("#!lua\nreturn 1", "Library name was not given"),
    ("#!lua name=x\nreturn 1", "No functions registered"),
    ("#!lua name=x\nredis.register_function('a b', function() end)", "Function names can only contain"),
    ("#!lua name=x\nredis.call('set', 'k', 1)", "can only be called inside a script invocation"),
    ("#!lua name=x\nwhile true do end", "script run time limit"),
    ("#!python name=x\n", "Engine 'python' not found"),
])
def test_function_load_errors_change_nothing(kvorum_node, code, message):
    r = kvorum_node.client()
    r.function_flush()
    with pytest.raises(redis.ResponseError, match=message):
        r.function_load(code)
    assert r.function_list() == []


def test_fcall_names_match_case_insensitively_and_numkeys_errors(r):
    r.function_load(LIBRARY, replace=True)
    assert r.fcall("MYGET", 1, "k") is None
    with pytest.raises(redis.ResponseError, match="Bad number of keys provided"):
        r.execute_command("FCALL", "myget", "x")
    with pytest.raises(redis.ResponseError, match="Error compiling function"):
        r.function_load("#!lua name=broken\nreturn 1 +")
