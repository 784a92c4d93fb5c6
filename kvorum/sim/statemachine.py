"""The simulator's state machine: kvorum's own replicated state machine, behind the clients' ops.

Every write a simulated client makes travels through the replicated log as an
entry of `kvorum.replica.state_machine` (the format the server proposes), and
each replica applies committed entries in index order to its own `GroupState`:
a real `Keyspace`, changed only by the command handlers the server runs. So
the simulator checks the production apply path and its snapshots (dump and
load of the keyspace) under every fault, not a model of them.

The clients' ops map onto commands: `put` is SET, `incr` INCRBY, `delete` DEL,
and a read GET after a read barrier. `cas` has no Redis command; its entry is
the simulator's own kind, applied here as GET then SET through the same
handlers within one entry, which is what makes it atomic.

Values: the clients write strings that are never integers ("c1-5") and
increment integers; a stored value that reads as a canonical integer is one.
The checker's sequential model (`kvorum.sim.linearizability.step`) is written
separately on purpose: this is the system under test, that is the spec.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

import kvorum.commands  # noqa: F401  (registers every command handler)
from kvorum.commands.table import TABLE, CommandContext
from kvorum.protocol.values import CommandError
from kvorum.replica import state_machine
from kvorum.store import Keyspace

INCR_ERROR = "ERR"  # reply to INCR on a value that is not an integer
WRITE_KINDS = frozenset({"put", "cas", "incr", "delete"})
# The simulator's compare-and-set entry, beside the server's kinds (which start at 1).
SIM_CAS = 100
# Entries carry no wall-clock time in the simulator: nothing here expires.
STAMP_MS = 1


@dataclass(frozen=True, slots=True)
class Command:
    client: str
    op_id: int
    kind: str
    key: str
    args: tuple[Any, ...]


def _text(value: Any) -> bytes:
    return str(value).encode()


def encode_command(command: Command) -> bytes:
    """The log entry for one client write: the server's own entry for SET, INCRBY and DEL."""
    kind, key, args = command.kind, command.key.encode(), command.args
    assert kind in WRITE_KINDS, kind
    if kind == "cas":
        expected = None if args[0] is None else _text(args[0])
        return msgpack.packb([SIM_CAS, STAMP_MS, [key, expected, _text(args[1])]], use_bin_type=True)
    if kind == "put":
        argv = [b"SET", key, _text(args[0])]
    elif kind == "incr":
        argv = [b"INCRBY", key, _text(args[0])]
    else:
        argv = [b"DEL", key]
    return state_machine.encode_command(STAMP_MS, argv)


def _value(stored: bytes | None) -> Any:
    if stored is None:
        return None
    text = stored.decode()
    if text.lstrip("-").isdigit() and str(int(text)) == text:
        return int(text)
    return text


class KVStateMachine:
    """A `GroupState` (keyspace, roster, stamper): a `ready_loop.StateMachine` for one simulated node."""

    def __init__(self) -> None:
        self.state = state_machine.GroupState(Keyspace())

    def apply(self, data: bytes, origin: Any = None) -> Any:
        kind, _stamp_ms, body = state_machine.decode(data)
        if kind == SIM_CAS:
            return self._cas(*body)
        reply = self.state.apply(data)
        name = body[0]
        if name == b"INCRBY":
            return INCR_ERROR if isinstance(reply, CommandError) else reply
        if name == b"DEL":
            return reply
        return None

    def dump(self) -> bytes:
        return self.state.dump()

    def load(self, blob: bytes) -> None:
        self.state.load(blob)

    def on_membership(self, membership, index: int) -> None:
        """The simulator's checks read memberships from the engines themselves."""

    def read(self, key: str) -> Any:
        return _value(self._get(key.encode()))

    def _get(self, key: bytes) -> bytes | None:
        return TABLE["get"].handler(CommandContext(self.state.db, STAMP_MS), [b"GET", key])

    def _cas(self, key: bytes, expected: bytes | None, new: bytes) -> bool:
        """GET, compare, SET: one entry, so nothing runs in between."""
        if self._get(key) != expected:
            return False
        TABLE["set"].handler(CommandContext(self.state.db, STAMP_MS), [b"SET", key, new])
        return True
