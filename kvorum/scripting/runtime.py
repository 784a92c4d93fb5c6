"""The Lua runtime of one node: a sandboxed Lua 5.1 state, the script cache, and the limits.

Theory of operation
-------------------
One Lua state (lupa's Lua 5.1, the version Redis embeds) serves every script of
the node, one at a time. `sandbox.lua` builds the environment scripts run in:
the allowed builtins (no os, io, loadfile, dofile, require, print), the
libraries kvorum bundles (string, table, math, coroutine, `redis`, `cjson`,
`bit`), and a global table that refuses new globals. Python reaches Lua only
through that chunk's `env` table and Lua reaches Python only through the `py`
table handed to it (redis.call, redis.log, cjson, bit ...).

A run (`Engine.run`) binds a `Call` — what redis.call does, supplied by the
command layer — sets a count hook every HOOK_INSTRUCTIONS instructions that
stops a script running longer than `run_time_max_ms` (or killed by SCRIPT
KILL), and converts the result (`kvorum.scripting.replies`). The state's memory
is capped (`memory_bytes_max`): an allocation past it fails inside Lua, the
script gets an error, and a full collection under a lifted cap frees what it
held. Nothing a script does can raise out of `run`: syntax errors, runtime
errors, a busy loop and unbounded allocation each come back as an error reply.

Scripts are cached by SHA1 of their body, at most `cache_scripts_max`, least
recently used evicted first (a client sees -NOSCRIPT and loads it again).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import OrderedDict
from importlib import resources
from typing import Callable

from lupa import lua51

from kvorum.protocol.values import CommandError
from kvorum.scripting import replies

log = logging.getLogger("kvorum.scripting")

# Instructions between two checks of the run time and the kill flag (Redis' value).
HOOK_INSTRUCTIONS = 100_000
# Bytes the Lua state may allocate, scripts and their data together.
MEMORY_BYTES_MAX = 64 * 1024 * 1024
# A script body larger than this is refused before it is compiled.
BODY_BYTES_MAX = 4 * 1024 * 1024
# Scripts the cache holds (EVAL and SCRIPT LOAD alike); the least recently used goes first.
CACHE_SCRIPTS_MAX = 1000
# A script running longer than this is stopped with an error.
RUN_TIME_MAX_MS = 5000

NOSCRIPT = "NOSCRIPT No matching script. Please use EVAL."
LOG_LEVELS = {0: logging.DEBUG, 1: logging.INFO, 2: logging.INFO, 3: logging.WARNING}


def sha1hex(body: bytes) -> str:
    return hashlib.sha1(body).hexdigest()


class Call:
    """What one run may do: `command(argv)` runs a command for redis.call (a reply value
    or a CommandError), `register(...)` registers a function (FUNCTION LOAD only)."""

    def __init__(self, command: Callable[[list[bytes]], object],
                 register: Callable[..., str | None] | None = None):
        self.command = command
        self.register = register
        self.resp3 = False
        self.deadline_s = 0.0
        self.killed: str | None = None


class Engine:
    """A Lua state with its sandbox and script cache."""

    def __init__(self, memory_bytes_max: int = MEMORY_BYTES_MAX, body_bytes_max: int = BODY_BYTES_MAX,
                 cache_scripts_max: int = CACHE_SCRIPTS_MAX, run_time_max_ms: int = RUN_TIME_MAX_MS,
                 version: str = "7.0.0"):
        assert cache_scripts_max > 0 and memory_bytes_max > 0
        self.memory_bytes_max = memory_bytes_max
        self.body_bytes_max = body_bytes_max
        self.cache_scripts_max = cache_scripts_max
        self.run_time_max_ms = run_time_max_ms
        self.version = version
        # sha (hex str) -> (body, compiled function); most recently used last.
        self.cache: OrderedDict[str, tuple[bytes, object]] = OrderedDict()
        self.evicted_scripts = 0
        self.call: Call | None = None  # the run in progress
        self._start()

    def _start(self) -> None:
        self.lua = lua51.LuaRuntime(register_eval=False, register_builtins=False, unpack_returned_tuples=True,
                                    encoding=None, max_memory=self.memory_bytes_max)
        self.lua_type = self.lua.eval("type")
        self.rawget = self.lua.eval("rawget")
        self.json_null = self.lua.table()
        major, minor, patch = (int(x) for x in self.version.split("."))
        py = self.lua.table_from({
            b"call": self._redis_call,
            b"check": self._check,
            b"log": self._log,
            b"setresp": self._setresp,
            b"set_repl": self._set_repl,
            b"sha1hex": lambda s: sha1hex(s).encode(),
            b"register_function": self._register_function,
            b"version": self.version.encode(),
            b"version_num": (major << 16) | (minor << 8) | patch,
            b"json_encode": self._json_encode,
            b"json_decode": self._json_decode,
            b"json_null": self.json_null,
            b"bit": self.lua.table_from({name.encode(): fn for name, fn in _BIT_OPS.items()}),
        })
        source = resources.files("kvorum.scripting").joinpath("sandbox.lua").read_bytes()
        setup = self.lua.execute(b"return function(...) " + b"local chunk = assert(loadstring(...)) "
                                 b"return chunk(select(3, ...)) end")
        self.env = setup(source, b"@kvorum_sandbox", py)

    # The cache.

    def load(self, body: bytes) -> str:
        """Compile and cache a script; its SHA1. A compile error is raised as CommandError."""
        sha = sha1hex(body)
        if sha in self.cache:
            self.cache.move_to_end(sha)
            return sha
        if len(body) > self.body_bytes_max:
            raise CommandError(f"ERR script body of {len(body)} bytes is over the limit of "
                               f"{self.body_bytes_max} bytes")
        fn = self.compile(body, b"@user_script")
        self.cache[sha] = (body, fn)
        while len(self.cache) > self.cache_scripts_max:
            self.cache.popitem(last=False)
            self.evicted_scripts += 1
        return sha

    def compile(self, body: bytes, chunk_name: bytes):
        try:
            fn, error = self.env[b"compile"](_strip_shebang(body), chunk_name)
        except lua51.LuaMemoryError:
            self._collect()
            raise CommandError("ERR Error compiling script: not enough memory") from None
        except lua51.LuaError as exc:
            raise CommandError(f"ERR Error compiling script: {_text(exc)[:100]}") from None
        if fn is None:
            raise CommandError("ERR Error compiling script (new function): "
                               + error.decode("utf-8", "surrogateescape"))
        return fn

    def lookup(self, sha: bytes):
        """The cached (body, function) of a SHA1 (any case), or None."""
        key = sha.decode("latin-1").lower()
        entry = self.cache.get(key)
        if entry is not None:
            self.cache.move_to_end(key)
        return entry

    def exists(self, sha: bytes) -> bool:
        return sha.decode("latin-1").lower() in self.cache

    def flush(self) -> None:
        """SCRIPT FLUSH: forget every script (the Lua state stays: functions live in it too)."""
        self.cache.clear()
        self._collect()

    def memory_used_bytes(self) -> int:
        return self.lua.get_memory_used()

    # Running.

    def run(self, fn, name: str, keys: list[bytes], args: list[bytes], call: Call,
            as_function: bool = False):
        """Run a compiled script (or a library function with `as_function`); its reply value."""
        assert self.call is None, "scripts run one at a time"
        lua = self.lua
        self.call = call
        call.deadline_s = time.monotonic() + self.run_time_max_ms / 1000
        try:
            ok, result = self.env[b"run"](fn, lua.table_from(keys), lua.table_from(args), as_function,
                                          HOOK_INSTRUCTIONS)
            if ok:
                return replies.from_lua(result, call.resp3, self.lua_type, self.rawget)
            return self._error_reply(result, name)
        except lua51.LuaMemoryError:
            return CommandError(f"ERR Error running script {name}, not enough memory "
                                f"(the Lua state is limited to {self.memory_bytes_max} bytes)")
        except lua51.LuaError as exc:
            return CommandError(f"ERR Error running script {name}, {_text(exc)[:100]}")
        finally:
            self.call = None
            if lua.get_memory_used() > self.memory_bytes_max // 2:
                self._collect()

    def _error_reply(self, error, name: str) -> CommandError:
        """Redis 7's text for a failed run: the error, then where the script raised it."""
        if error.__class__ is bytes or self.lua_type(error) != b"table":
            text = error.decode("utf-8", "surrogateescape") if error.__class__ is bytes else "execution failure"
            if text == "not enough memory":
                text += f" (the Lua state is limited to {self.memory_bytes_max} bytes)"
            return CommandError(f"ERR Error running script {name}, {text[:100]}")
        message = error[b"err"]
        text = message.decode("utf-8", "surrogateescape") if message.__class__ is bytes else "ERR unknown error"
        source, line = error[b"source"], error[b"line"]
        if source is not None and line is not None:
            text += f" script: {name}, on {source.decode('utf-8', 'surrogateescape')}:{int(line)}."
        return CommandError(text)

    def _collect(self) -> None:
        """A full collection with the cap lifted: the collector itself must not fail for lack of memory."""
        self.lua.set_max_memory(0)
        try:
            self.lua.gccollect()
        finally:
            self.lua.set_max_memory(self.memory_bytes_max)

    def kill(self, reason: str) -> None:
        """Stop the running script at its next hook (SCRIPT KILL, FUNCTION KILL)."""
        if self.call is not None:
            self.call.killed = reason

    # Called from Lua. None of these may raise: a Python exception would cross Lua's C frames.

    def _redis_call(self, raise_error, *args):
        """redis.call / redis.pcall: (failed, reply as a Lua value)."""
        call = self.call
        if call is None:
            return True, self._error("ERR redis.call/pcall can only be called inside a script invocation")
        if not args:
            return True, self._error("ERR Please specify at least one argument for this redis lib call")
        argv = []
        for arg in args:
            t = arg.__class__
            if t is bytes:
                argv.append(arg)
            elif t is int:
                argv.append(b"%d" % arg)
            elif t is float:
                argv.append(b"%.17g" % arg)
            else:
                return True, self._error("ERR Lua redis lib command arguments must be strings or integers")
        try:
            reply = call.command(argv)
        except Exception:
            log.exception("redis.call %r failed", argv[0])
            reply = CommandError("ERR internal error while running a command from a script")
        try:
            return reply.__class__ is CommandError and raise_error, replies.to_lua(self.lua, reply, call.resp3)
        except lua51.LuaMemoryError:
            return True, self._error("ERR not enough memory")

    def _error(self, message: str):
        return self.lua.table_from({b"err": message.encode()})

    def _check(self):
        """The count hook: an error text to stop the script with, or None to go on."""
        call = self.call
        if call is None:
            return None
        if call.killed:
            return call.killed.encode()
        if time.monotonic() > call.deadline_s:
            return (f"ERR Script stopped: it ran for more than {self.run_time_max_ms} ms "
                    f"(the script run time limit)").encode()
        return None

    def _log(self, level=None, *parts):
        if level is None or not parts:
            return b"ERR redis.log() requires two arguments or more."
        if level.__class__ not in (int, float):
            return b"ERR First argument must be a number (log level)."
        if int(level) not in LOG_LEVELS:
            return b"ERR Invalid debug level."
        text = " ".join(_text(p) for p in parts)
        log.log(LOG_LEVELS[int(level)], "script: %s", text)
        return None

    def _setresp(self, *args):
        if self.call is None:
            return b"ERR redis.setresp can only be called inside a script invocation"
        if len(args) != 1:
            return b"ERR redis.setresp() requires one argument."
        if args[0] not in (2, 3):
            return b"ERR RESP version must be 2 or 3."
        self.call.resp3 = args[0] == 3
        return None

    def _set_repl(self, *args):
        """Accepted and ignored: kvorum always replicates a script's effects."""
        if self.call is None:
            return b"ERR redis.set_repl can only be called inside a script invocation"
        if len(args) != 1:
            return b"ERR redis.set_repl() requires two arguments."
        if args[0] not in (0, 1, 2, 3):
            return b"ERR Invalid replication flags. Use REPL_AOF, REPL_REPLICA, REPL_ALL or REPL_NONE."
        return None

    def _register_function(self, *args):
        call = self.call
        if call is None or call.register is None:
            return b"ERR redis.register_function can only be called on FUNCTION LOAD command"
        try:
            failure = call.register(*args)
        except Exception:
            log.exception("redis.register_function failed")
            failure = "ERR internal error in redis.register_function"
        return failure.encode() if failure else None

    def _json_encode(self, value):
        try:
            return json.dumps(self._from_lua_json(value, 0), separators=(",", ":"),
                              ensure_ascii=False).encode("utf-8", "surrogateescape"), None
        except (ValueError, TypeError, RecursionError) as exc:
            return None, f"Cannot serialise: {exc}".encode()

    def _from_lua_json(self, value, depth: int):
        if depth > 1000:
            raise ValueError("excessive nesting")
        t = value.__class__
        if value is None or t in (bool, int, float):
            return value
        if t is bytes:
            return value.decode("utf-8", "surrogateescape")
        if self.lua_type(value) != b"table":
            raise TypeError(f"type not supported: {self.lua_type(value).decode()}")
        if value == self.json_null:
            return None
        items = list(value.items())
        n = len(items)
        if n and all(k.__class__ is int and 1 <= k <= n for k, _ in items):
            ordered = sorted(items)
            return [self._from_lua_json(v, depth + 1) for _, v in ordered]
        out = {}
        for k, v in items:
            key = k.decode("utf-8", "surrogateescape") if k.__class__ is bytes else _number_text(k)
            out[key] = self._from_lua_json(v, depth + 1)
        return out

    def _json_decode(self, text):
        if text.__class__ is not bytes:
            return None, b"bad argument #1 to 'decode' (string expected)"
        try:
            return self._to_lua_json(json.loads(text)), None
        except ValueError as exc:
            return None, f"Expected value but found invalid token: {exc}".encode()
        except lua51.LuaMemoryError:
            return None, b"not enough memory"

    def _to_lua_json(self, value):
        if value is None:
            return self.json_null
        t = value.__class__
        if t is str:
            return value.encode("utf-8", "surrogateescape")
        if t is list:
            return self.lua.table_from([self._to_lua_json(v) for v in value])
        if t is dict:
            return self.lua.table_from({k.encode("utf-8", "surrogateescape"): self._to_lua_json(v)
                                        for k, v in value.items()})
        return value


def _number_text(number) -> str:
    if number.__class__ is float and number.is_integer():
        return str(int(number))
    return str(number)


def _text(value) -> str:
    if value.__class__ is bytes:
        return value.decode("utf-8", "surrogateescape")
    if value.__class__ is float and value.is_integer():
        return str(int(value))
    return str(value)


def _strip_shebang(body: bytes) -> bytes:
    """A `#!` first line (flags, read by the command layer) is left out; its newline stays,
    so that line numbers in errors still match the script."""
    if body.startswith(b"#!"):
        end = body.find(b"\n")
        return b"" if end < 0 else body[end:]
    return body


def _tobit(x) -> int:
    x = int(x) & 0xFFFFFFFF
    return x - (1 << 32) if x & 0x80000000 else x


def _tohex(x, n=8) -> bytes:
    n = int(n)
    digits = "0123456789ABCDEF" if n < 0 else "0123456789abcdef"
    n = min(abs(n), 8) or 8
    x = int(x) & 0xFFFFFFFF
    return "".join(digits[(x >> (4 * i)) & 15] for i in reversed(range(n))).encode()


def _fold(op):
    def apply(x, *rest):
        acc = int(x) & 0xFFFFFFFF
        for y in rest:
            acc = op(acc, int(y) & 0xFFFFFFFF)
        return _tobit(acc)
    return apply


# The `bit` library (LuaBitOp's API, as Redis bundles it) on 32-bit signed integers.
_BIT_OPS = {
    "tobit": _tobit,
    "tohex": _tohex,
    "bnot": lambda x: _tobit(~int(x)),
    "band": _fold(lambda a, b: a & b),
    "bor": _fold(lambda a, b: a | b),
    "bxor": _fold(lambda a, b: a ^ b),
    "lshift": lambda x, n: _tobit(int(x) << (int(n) & 31)),
    "rshift": lambda x, n: _tobit((int(x) & 0xFFFFFFFF) >> (int(n) & 31)),
    "arshift": lambda x, n: _tobit(_tobit(x) >> (int(n) & 31)),
    "rol": lambda x, n: _tobit(((int(x) & 0xFFFFFFFF) << (int(n) & 31)) | ((int(x) & 0xFFFFFFFF) >> (32 - (int(n) & 31)))),
    "ror": lambda x, n: _tobit(((int(x) & 0xFFFFFFFF) >> (int(n) & 31)) | ((int(x) & 0xFFFFFFFF) << (32 - (int(n) & 31)))),
    "bswap": lambda x: _tobit(int.from_bytes((int(x) & 0xFFFFFFFF).to_bytes(4, "little"), "big")),
}
