-- kvorum's Lua sandbox, run once per Lua state (kvorum.scripting.runtime).
--
-- Scripts run with `G` as their environment, never with this chunk's globals:
-- G holds the allowed builtins and libraries, refuses new globals with Redis'
-- "Attempt to modify a readonly table" and reading a missing one with
-- "Script attempted to access nonexistent global variable". Library tables are
-- read-only proxies. What Python provides arrives as this chunk's arguments.
local py = ...

local error, type, tostring, select, unpack = error, type, tostring, select, unpack
local setmetatable, rawget, rawset, setfenv = setmetatable, rawget, rawset, setfenv
local real_pcall, xpcall, loadstring = pcall, xpcall, loadstring
local getinfo, sethook = debug.getinfo, debug.sethook
local SOURCE = "@kvorum_sandbox"
local sub = string.sub

-- Strings share one metatable; hidden from scripts, no script can change what s:method() means.
getmetatable("").__metatable = false

local function readonly_error()
    error("Attempt to modify a readonly table", 2)
end

local function readonly(t)
    return setmetatable({}, {__index = t, __newindex = readonly_error, __metatable = false})
end

local function copy(t)
    local c = {}
    for k, v in pairs(t) do c[k] = v end
    return c
end

-- G stays empty: an assignment to any name reaches its __newindex (Lua calls __newindex only
-- for absent keys, so a G holding `redis` would let a script replace it). The globals
-- themselves live in `globals`, read through G's __index.
local G = {}
local globals = {}
local protected = {}

-- loadstring compiles into the thread's real globals in Lua 5.1: bind the
-- result to G instead, and refuse precompiled chunks (they bypass the verifier).
local function sandboxed_loadstring(s, name)
    if type(s) == "string" and sub(s, 1, 1) == "\27" then
        return nil, "attempt to load a binary chunk"
    end
    local f, err = loadstring(s, name)
    if f then setfenv(f, G) end
    return f, err
end

-- Redis 7 keeps pcall returning the error message, not the error table, for old scripts.
local function pack(...)
    return {n = select("#", ...), ...}
end

local function redis_pcall(f, ...)
    local r = pack(real_pcall(f, ...))
    if not r[1] and type(r[2]) == "table" and type(rawget(r[2], "err")) == "string" then
        r[2] = r[2].err
    end
    return unpack(r, 1, r.n)
end

-- Lua 5.1's unpack computes its result count in a C int: huge ranges overflow it and crash
-- the process. Refuse them first, with the error Redis' patched Lua gives.
local real_unpack, floor = unpack, math.floor
local UNPACK_RESULTS_MAX = 8000
local function safe_unpack(t, i, j)
    i = floor(tonumber(i) or 1)
    if j == nil then j = #t else j = floor(tonumber(j) or 0) end
    local n = j - i + 1
    if n <= 0 then return end
    if n >= UNPACK_RESULTS_MAX then error("too many results to unpack", 2) end
    return real_unpack(t, i, j)
end

-- Metatables of the sandbox's tables (and of strings) read as read-only, as in Redis.
local real_setmetatable, real_getmetatable = setmetatable, getmetatable
local function safe_getmetatable(t)
    if t == G or protected[t] or type(t) == "string" then
        return readonly({})
    end
    return real_getmetatable(t)
end
local function safe_setmetatable(t, mt)
    if t == G or protected[t] then readonly_error() end
    return real_setmetatable(t, mt)
end

local function safe_rawset(t, k, v)
    if t == G or t == globals or protected[t] then readonly_error() end
    return rawset(t, k, v)
end

local redis = {}
redis.call = function(...)
    local failed, reply = py.call(true, ...)
    if failed then error(reply, 0) end
    return reply
end
redis.pcall = function(...)
    local _, reply = py.call(false, ...)
    return reply
end
redis.error_reply = function(msg)
    if type(msg) ~= "string" then error({err = "ERR wrong number or type of arguments"}, 0) end
    if sub(msg, 1, 1) == "-" then msg = sub(msg, 2) end
    -- As Redis: the first word is the error code; a message of one word gets the ERR code.
    if not string.find(msg, " ", 1, true) then msg = "ERR " .. msg end
    return {err = msg}
end
redis.status_reply = function(msg)
    if type(msg) ~= "string" then error({err = "ERR wrong number or type of arguments"}, 0) end
    return {ok = msg}
end
redis.sha1hex = function(...)
    if select("#", ...) ~= 1 then error({err = "ERR wrong number of arguments"}, 0) end
    return py.sha1hex(tostring((...)))
end
redis.log = function(level, ...)
    local failure = py.log(level, ...)
    if failure then error({err = failure}, 0) end
end
redis.setresp = function(...)
    local failure = py.setresp(...)
    if failure then error({err = failure}, 0) end
end
redis.set_repl = function(...)
    local failure = py.set_repl(...)
    if failure then error({err = failure}, 0) end
end
redis.replicate_commands = function() return true end
redis.breakpoint = function() return false end
redis.debug = function() end
redis.LOG_DEBUG, redis.LOG_VERBOSE, redis.LOG_NOTICE, redis.LOG_WARNING = 0, 1, 2, 3
redis.REPL_NONE, redis.REPL_AOF, redis.REPL_SLAVE, redis.REPL_REPLICA, redis.REPL_ALL = 0, 1, 2, 2, 3
redis.REDIS_VERSION = py.version
redis.REDIS_VERSION_NUM = py.version_num
redis.register_function = function(...)
    local failure = py.register_function(...)
    if failure then error({err = failure}, 0) end
end

local cjson = {
    encode = function(v) local s, failure = py.json_encode(v) if failure then error(failure, 2) end return s end,
    decode = function(s) local v, failure = py.json_decode(s) if failure then error(failure, 2) end return v end,
    null = py.json_null,
}

local bit = {}
for _, name in ipairs({"tobit", "tohex", "bnot", "band", "bor", "bxor", "lshift", "rshift", "arshift",
                       "rol", "ror", "bswap"}) do
    local op = py.bit[name]
    bit[name] = function(...) return op(...) end
end

local builtins = {
    "assert", "collectgarbage", "error", "gcinfo", "ipairs", "next", "pairs",
    "rawequal", "rawget", "select", "tonumber", "tostring", "type",
    "xpcall", "_VERSION",
}
for _, name in ipairs(builtins) do globals[name] = _G[name] end
globals.pcall = redis_pcall
globals.unpack = safe_unpack
globals.rawset = safe_rawset
globals.getmetatable = safe_getmetatable
globals.setmetatable = safe_setmetatable
globals.loadstring = sandboxed_loadstring
globals._G = G
for name, lib in pairs({string = string, table = table, math = math, coroutine = coroutine,
                        redis = redis, cjson = cjson, bit = bit}) do
    local proxy = readonly(name == "math" and copy(lib) or lib)
    protected[proxy] = true
    globals[name] = proxy
end
setmetatable(G, {
    __index = function(_, name)
        local value = globals[name]
        if value == nil then
            error("Script attempted to access nonexistent global variable '" .. tostring(name) .. "'", 2)
        end
        return value
    end,
    __newindex = readonly_error,
    __metatable = false,
})

-- Errors become Redis 7's error table {err=..., source=..., line=...}, located at the
-- innermost frame of the script itself (not a C function, not this sandbox).
local function error_handler(err)
    if type(err) ~= "table" then err = {err = "ERR " .. tostring(err)} end
    for level = 2, 20 do
        local i = getinfo(level, "Sl")
        if not i then break end
        if i.what ~= "C" and i.what ~= "tail" and i.source ~= SOURCE then
            err.source = i.source
            err.line = i.currentline
            break
        end
    end
    return err
end

local killed = false
local function hook()
    -- Only in the script's own code: this chunk's lines run after a stop too.
    local where = getinfo(2, "S")
    if where and where.source == SOURCE then return end
    -- Out of memory, calling Python can fail: then the check waits for the next hook.
    local ok, failure = true, killed
    if not failure then ok, failure = real_pcall(py.check) end
    if ok and failure then
        killed = failure
        -- From now on at every instruction, so that a pcall in the script cannot swallow it.
        sethook(hook, "", 1)
        error({err = failure}, 0)
    end
end

local env = {}

-- compile(body, chunkname): the function bound to G, or nil and the compile error.
env.compile = function(body, name)
    if sub(body, 1, 1) == "\27" then return nil, "attempt to load a binary chunk" end
    local f, err = loadstring(body, name)
    if not f then return nil, err end
    setfenv(f, G)
    return f, nil
end

-- run(f, keys, args, as_function, hook_instructions): true and the result, or false and the error.
env.run = function(f, keys, args, as_function, hook_instructions)
    killed = false
    sethook(hook, "", hook_instructions)
    local ok, result
    if as_function then
        ok, result = xpcall(function() return f(keys, args) end, error_handler)
    else
        globals.KEYS = keys
        globals.ARGV = args
        ok, result = xpcall(f, error_handler)
    end
    sethook()
    return ok, result
end

env.G = G
env.protected = protected
return env
