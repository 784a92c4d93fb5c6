"""The function registry (Redis 7 functions): Lua libraries and the functions they register.

A library is its source (`#!lua name=<library>` first line); loading it runs
its top level once in the node's Lua runtime, where `redis.register_function`
records each function with its flags and description (redis.call is refused
there). The registry's state is the libraries' sources: on a replicated node
FUNCTION LOAD / DELETE / FLUSH / RESTORE are log entries that every replica
applies to its registry, and the group's snapshot carries the sources
(`snapshot` / `restore_snapshot`), so every node holds the same libraries.
The compiled functions are each node's own.
"""

from __future__ import annotations

import fnmatch
import re

import msgpack

from kvorum.protocol.values import CommandError, SimpleString
from kvorum.scripting.runtime import Call, Engine

FUNCTION_FLAGS = frozenset({"no-writes", "allow-oom", "allow-stale", "no-cluster", "allow-cross-slot-keys"})
# Libraries one registry may hold.
LIBRARIES_MAX = 10_000
# The first bytes of a FUNCTION DUMP payload (kvorum's own format, versioned).
DUMP_MAGIC = b"KVFN1"

_NAME = re.compile(rb"^[A-Za-z0-9_]+$")
_NAME_ERROR = "ERR Function names can only contain letters, numbers, or underscores(_) and must be at least one " \
              "character long"


class Function:
    __slots__ = ("name", "library", "fn", "flags", "description")

    def __init__(self, name: str, library: str, fn, flags: frozenset[str], description: bytes | None):
        self.name = name
        self.library = library
        self.fn = fn
        self.flags = flags
        self.description = description


class Library:
    __slots__ = ("name", "code", "functions")

    def __init__(self, name: str, code: bytes, functions: dict[str, Function]):
        self.name = name
        self.code = code
        self.functions = functions


def library_name(code: bytes) -> str:
    """The library name of a `#!lua name=<library>` first line."""
    if not code.startswith(b"#!"):
        raise CommandError("ERR Missing library metadata")
    end = code.find(b"\n")
    parts = (code if end < 0 else code[:end]).decode("utf-8", "surrogateescape").split()
    engine = parts[0][2:] if parts else ""
    if engine.lower() != "lua":
        raise CommandError(f"ERR Engine '{engine}' not found")
    name = None
    for part in parts[1:]:
        if part.startswith("name="):
            name = part[len("name="):]
        else:
            raise CommandError(f"ERR Invalid metadata value given: {part}")
    if not name:
        raise CommandError("ERR Library name was not given")
    if not _NAME.match(name.encode()):
        raise CommandError("ERR Library names can only contain letters, numbers, or underscores(_) and must be "
                           "at least one character long")
    return name


class FunctionRegistry:
    def __init__(self, engine: Engine):
        self.engine = engine
        self.libraries: dict[str, Library] = {}
        self.functions: dict[str, Function] = {}

    def lookup(self, name: str) -> Function | None:
        """A function by name; names match case-insensitively, as in Redis."""
        return self.functions.get(name) or self._by_lower_name().get(name.lower())

    def _by_lower_name(self) -> dict[str, Function]:
        return {fname.lower(): function for fname, function in self.functions.items()}

    # Changes (replicated on a cluster: each is applied from a log entry on every replica).

    def load(self, code: bytes, replace: bool) -> str:
        name = library_name(code)
        old = self.libraries.get(name)
        if old is not None and not replace:
            raise CommandError(f"ERR Library '{name}' already exists")
        if old is None and len(self.libraries) >= LIBRARIES_MAX:
            raise CommandError(f"ERR at most {LIBRARIES_MAX} libraries may be loaded")
        library = self._compile(name, code)
        for fname in library.functions:
            holder = self.functions.get(fname)
            if holder is not None and holder.library != name:
                raise CommandError(f"ERR Function {fname} already exists")
        if old is not None:
            self._remove(old)
        self._add(library)
        return name

    def delete(self, name: str) -> None:
        library = self.libraries.get(name)
        if library is None:
            raise CommandError("ERR Library not found")
        self._remove(library)

    def flush(self) -> None:
        self.libraries.clear()
        self.functions.clear()

    def restore(self, payload: bytes, policy: str) -> None:
        """FUNCTION RESTORE: policy FLUSH, APPEND (refuse a name clash) or REPLACE."""
        codes = _undump(payload)
        libraries = [self._compile(library_name(code), code) for code in codes]
        if policy == "flush":
            self.flush()
        for library in libraries:
            old = self.libraries.get(library.name)
            clash = old is not None or any(
                f in self.functions and self.functions[f].library != library.name for f in library.functions)
            if clash and policy != "replace":
                raise CommandError(f"ERR Library {library.name} already exists")
        for library in libraries:
            old = self.libraries.get(library.name)
            if old is not None:
                self._remove(old)
            for fname in library.functions:
                holder = self.functions.get(fname)
                if holder is not None:
                    self._remove(self.libraries[holder.library])
            self._add(library)

    # Views.

    def dump(self) -> bytes:
        return DUMP_MAGIC + msgpack.packb([lib.code for lib in self.libraries.values()], use_bin_type=True)

    def list(self, pattern: str | None, with_code: bool) -> list[dict]:
        out = []
        for library in self.libraries.values():
            if pattern is not None and not fnmatch.fnmatchcase(library.name, pattern):
                continue
            entry = {
                "library_name": library.name,
                "engine": "LUA",
                "functions": [
                    {"name": f.name, "description": f.description,
                     "flags": {SimpleString(flag) for flag in f.flags}}
                    for f in library.functions.values()
                ],
            }
            if with_code:
                entry["library_code"] = library.code
            out.append(entry)
        return out

    # Snapshots of a replica group.

    def snapshot(self) -> list[bytes]:
        return [lib.code for lib in self.libraries.values()]

    def restore_snapshot(self, codes: list[bytes]) -> None:
        self.flush()
        for code in codes:
            self.load(code, replace=True)

    # Inside.

    def _add(self, library: Library) -> None:
        self.libraries[library.name] = library
        self.functions.update(library.functions)

    def _remove(self, library: Library) -> None:
        del self.libraries[library.name]
        for fname in library.functions:
            self.functions.pop(fname, None)

    def _compile(self, name: str, code: bytes) -> Library:
        engine = self.engine
        try:
            fn = engine.compile(code, b"@user_function")
        except CommandError as exc:
            raise CommandError(exc.message.replace("Error compiling script (new function)",
                                                   "Error compiling function")) from None
        registered: dict[str, Function] = {}

        def register(*args) -> str | None:
            return self._register(engine, name, registered, args)

        def no_commands(_argv):
            return CommandError("ERR redis.call/pcall can only be called inside a script invocation")

        reply = engine.run(fn, f"library {name}", [], [], Call(no_commands, register))
        if reply.__class__ is CommandError:
            raise CommandError(f"ERR Error registering functions: {reply.message}")
        if not registered:
            raise CommandError("ERR No functions registered")
        return Library(name, code, registered)

    @staticmethod
    def _register(engine: Engine, library: str, registered: dict[str, Function], args: tuple) -> str | None:
        lua_type = engine.lua_type
        flags: frozenset[str] = frozenset()
        description = None
        if len(args) == 1 and lua_type(args[0]) == b"table":
            spec = args[0]
            for key in spec.keys():
                if key not in (b"function_name", b"callback", b"flags", b"description"):
                    return "ERR unknown argument given to redis.register_function"
            name, callback = spec[b"function_name"], spec[b"callback"]
            raw_flags, description = spec[b"flags"], spec[b"description"]
            if raw_flags is not None:
                if lua_type(raw_flags) != b"table":
                    return "ERR flags argument to redis.register_function must be a table representing function flags"
                names = set()
                for flag in raw_flags.values():
                    text = flag.decode("utf-8", "surrogateescape") if flag.__class__ is bytes else str(flag)
                    if text not in FUNCTION_FLAGS:
                        return "ERR unknown flag given"
                    names.add(text)
                flags = frozenset(names)
            if description is not None and description.__class__ is not bytes:
                return "ERR description argument given to redis.register_function must be a string"
        elif len(args) == 2:
            name, callback = args
        else:
            return "ERR wrong number of arguments to redis.register_function"
        if name.__class__ is not bytes:
            return "ERR function_name argument given to redis.register_function must be a string"
        if not _NAME.match(name):
            return _NAME_ERROR
        if callback is None or lua_type(callback) != b"function":
            return "ERR callback argument given to redis.register_function must be a function"
        text = name.decode()
        if text in registered:
            return "ERR Function already exists in the library"
        registered[text] = Function(text, library, callback, flags, description)
        return None


def _undump(payload: bytes) -> list[bytes]:
    if not payload.startswith(DUMP_MAGIC):
        raise CommandError("ERR payload version or checksum are wrong")
    try:
        codes = msgpack.unpackb(payload[len(DUMP_MAGIC):], raw=False)
    except Exception:
        raise CommandError("ERR payload version or checksum are wrong") from None
    if not isinstance(codes, list) or not all(isinstance(code, bytes) for code in codes):
        raise CommandError("ERR payload version or checksum are wrong")
    return codes
