"""The simulator's key/value state machine and its command encoding.

Every write a simulated client makes travels through the replicated log as an
encoded `Command`; each replica applies committed commands in index order to
its own `KVStateMachine`. Reads never enter the log: they are served from the
state machine after a read barrier. The semantics mirror the checker's
sequential model (`kvorum.sim.linearizability.step`) but are written
separately on purpose: this is the system under test, that is the spec.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

INCR_ERROR = "ERR"  # reply to INCR on a value that is not an integer
WRITE_KINDS = frozenset({"put", "cas", "incr", "delete"})


@dataclass(frozen=True, slots=True)
class Command:
    client: str
    op_id: int
    kind: str
    key: str
    args: tuple[Any, ...]


def encode_command(command: Command) -> bytes:
    assert command.kind in WRITE_KINDS, command.kind
    payload = [command.client, command.op_id, command.kind, command.key, list(command.args)]
    return json.dumps(payload, separators=(",", ":")).encode()


def decode_command(data: bytes) -> Command:
    client, op_id, kind, key, args = json.loads(data)
    assert kind in WRITE_KINDS, kind
    return Command(client, op_id, kind, key, tuple(args))


class KVStateMachine:
    """A dict of key -> value (int or str), plus the index of the last applied entry."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        # Invariant: applied only grows, one entry at a time (or jumps on restore).
        self.applied = 0

    def apply(self, index: int, data: bytes | None) -> Any:
        """Apply the entry at `index`; `data` is None for entries without client data."""
        assert index == self.applied + 1, (index, self.applied)
        self.applied = index
        if data is None:
            return None
        return self._apply_command(decode_command(data))

    def _apply_command(self, command: Command) -> Any:
        key, args, values = command.key, command.args, self.values
        if command.kind == "put":
            values[key] = args[0]
            return None
        if command.kind == "cas":
            if values.get(key) != args[0]:
                return False
            values[key] = args[1]
            return True
        if command.kind == "incr":
            old = values.get(key, 0)
            if not isinstance(old, int):
                return INCR_ERROR
            values[key] = old + args[0]
            return values[key]
        assert command.kind == "delete"
        return 1 if values.pop(key, None) is not None else 0

    def read(self, key: str) -> Any:
        return self.values.get(key)

    def snapshot(self) -> bytes:
        return json.dumps([self.applied, sorted(self.values.items())], separators=(",", ":")).encode()

    def restore(self, data: bytes, index: int) -> None:
        applied, items = json.loads(data) if data else [0, []]
        assert applied == index, (applied, index)
        self.applied = applied
        self.values = {k: v for k, v in items}
