"""Function libraries as replicated state: applied from log entries, carried by snapshots."""

from __future__ import annotations

import kvorum.commands  # noqa: F401  (registers the command table)
from kvorum.replica import state_machine
from kvorum.scripting.functions import FunctionRegistry
from kvorum.scripting.runtime import Engine
from kvorum.store import Keyspace

LIBRARY = b"#!lua name=lib\nredis.register_function('f', function(keys, args) return 1 end)\n"


def group_state() -> state_machine.GroupState:
    return state_machine.GroupState(Keyspace(), FunctionRegistry(Engine()))


def test_function_entries_apply_and_snapshots_carry_libraries():
    state = group_state()
    assert state.apply(state_machine.encode_command(1, [b"FUNCTION", b"LOAD", LIBRARY])) == b"lib"
    assert state.apply(state_machine.encode_command(2, [b"SET", b"k", b"v"])) is not None
    image = state.dump()
    copy = group_state()
    copy.load(image)
    assert list(copy.functions.libraries) == ["lib"] and list(copy.functions.functions) == ["f"]
    assert copy.db.get(b"k", 3) == b"v"
    copy.apply(state_machine.encode_command(3, [b"FUNCTION", b"DELETE", b"lib"]))
    empty = group_state()
    empty.load(copy.dump())
    assert empty.functions.libraries == {}


def test_an_image_without_functions_still_loads():
    import msgpack

    state = group_state()
    state.functions.load(LIBRARY, replace=False)
    old = msgpack.packb([state_machine.SNAPSHOT_FORMAT_NO_FUNCTIONS, Keyspace().dump(), state.roster.dump()],
                       use_bin_type=True)
    state.load(old)
    assert state.functions.libraries == {}
