"""Client histories: what each client asked for, when, and what it was told.

Theory of operation
-------------------
A history is a list of `Op`s. Each op has an invoke time and a response time
(plain numbers: simulator ticks, or seconds from a real clock) and a status:

- ``ok``: the client got an answer; `result` is what it was told.
- ``unknown``: the client never learned the outcome (timeout, connection
  lost). The op may have taken effect at any point after its invocation, or
  never, so its response time is +infinity and its result is unconstrained.
- ``fail``: the system said the op definitely did not happen (refused before
  it was proposed). Such ops constrain nothing and the checker ignores them.

Values are normalized when an op is built: bytes become str, and a str that
spells a base-10 integer becomes an int, so a history recorded from a Redis
client (where INCR writes "5" and GET reads b"5") compares equal to one
recorded by the simulator (which uses ints).

Two on-disk forms are accepted by `load_jsonl`/`load_json`:

- op records: ``{"client", "kind", "key", "args", "invoke", "response",
  "result", "status"}``, one op per record (`response` null when unknown);
- event records in the Jepsen style: ``{"process", "type": "invoke"|"ok"|
  "fail"|"info", "f", "key", "value", "time"}``, where each process has at
  most one op outstanding and ``info`` means the outcome is unknown.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

KINDS = frozenset({"get", "put", "cas", "incr", "delete"})
STATUSES = frozenset({"ok", "unknown", "fail"})
# Arity of `args` per kind: get(), put(value), cas(expected, new), incr(delta), delete().
ARGS_COUNT = {"get": 0, "put": 1, "cas": 2, "incr": 1, "delete": 0}
assert set(ARGS_COUNT) == KINDS

INFINITY = math.inf

_INT_RE = re.compile(r"-?(0|[1-9][0-9]*)")


def normalize(value: Any) -> Any:
    """Bring a value into the model's vocabulary (None, int, str, bool)."""
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("utf-8", "backslashreplace")
    if isinstance(value, str) and _INT_RE.fullmatch(value):
        return int(value)
    if isinstance(value, list):
        return tuple(normalize(v) for v in value)
    return value


@dataclass(frozen=True, slots=True)
class Op:
    """One client operation on one key."""

    id: int
    client: str
    kind: str
    key: str
    args: tuple[Any, ...]
    invoke: float
    response: float  # INFINITY when status is "unknown"
    result: Any = None
    status: str = "ok"

    def __post_init__(self) -> None:
        assert self.kind in KINDS, self.kind
        assert self.status in STATUSES, self.status
        assert len(self.args) == ARGS_COUNT[self.kind], (self.kind, self.args)
        assert self.invoke <= self.response, (self.invoke, self.response)
        assert (self.status == "unknown") == (self.response == INFINITY), self

    def describe(self) -> str:
        args = ", ".join(repr(a) for a in self.args)
        if self.status == "ok":
            outcome = f"-> {self.result!r}"
        else:
            outcome = f"-> <{self.status}>"
        end = "inf" if self.response == INFINITY else f"{self.response:g}"
        return (
            f"#{self.id} {self.client} {self.kind}({self.key!r}{', ' if args else ''}{args}) "
            f"{outcome} [{self.invoke:g}, {end}]"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "client": self.client,
            "kind": self.kind,
            "key": self.key,
            "args": list(self.args),
            "invoke": self.invoke,
            "response": None if self.response == INFINITY else self.response,
            "result": self.result,
            "status": self.status,
        }


def make_op(
    id: int,
    client: str,
    kind: str,
    key: str,
    args: Iterable[Any],
    invoke: float,
    response: float | None,
    result: Any = None,
    status: str = "ok",
) -> Op:
    """Build an op with normalized values; `response=None` means unknown outcome."""
    if response is None or status == "unknown":
        status, response, result = "unknown", INFINITY, None
    return Op(
        id=id,
        client=str(client),
        kind=kind,
        key=str(normalize(key)),
        args=tuple(normalize(a) for a in args),
        invoke=float(invoke),
        response=float(response),
        result=normalize(result),
        status=status,
    )


class Recorder:
    """Collects a history as it happens (simulator or a live test harness).

    `invoke` opens an op and returns its id; `ok`, `fail` or `unknown` closes
    it. Ops still open when `history()` is called are reported as unknown.
    """

    def __init__(self) -> None:
        self._open: dict[int, tuple[str, str, str, tuple[Any, ...], float]] = {}
        self._done: list[Op] = []
        self._next_id = 0

    def invoke(self, client: str, kind: str, key: str, args: Iterable[Any], time: float) -> int:
        op_id = self._next_id
        self._next_id += 1
        self._open[op_id] = (client, kind, key, tuple(args), time)
        return op_id

    def ok(self, op_id: int, result: Any, time: float) -> None:
        self._close(op_id, time, result, "ok")

    def fail(self, op_id: int, time: float) -> None:
        self._close(op_id, time, None, "fail")

    def unknown(self, op_id: int) -> None:
        self._close(op_id, None, None, "unknown")

    def _close(self, op_id: int, time: float | None, result: Any, status: str) -> None:
        client, kind, key, args, invoke = self._open.pop(op_id)
        self._done.append(make_op(op_id, client, kind, key, args, invoke, time, result, status))

    def history(self) -> list[Op]:
        ops = list(self._done)
        for op_id, (client, kind, key, args, invoke) in self._open.items():
            ops.append(make_op(op_id, client, kind, key, args, invoke, None))
        ops.sort(key=lambda op: op.id)
        return ops


def _from_op_record(index: int, record: dict[str, Any]) -> Op:
    return make_op(
        id=record.get("id", index),
        client=record["client"],
        kind=record["kind"],
        key=record["key"],
        args=record.get("args", ()),
        invoke=record["invoke"],
        response=record.get("response"),
        result=record.get("result"),
        status=record.get("status", "ok"),
    )


def _event_args(f: str, value: Any) -> tuple[Any, ...]:
    if f in ("get", "delete"):
        return ()
    if f == "incr":
        return (1 if value is None else value,)
    if f == "cas":
        return tuple(value)
    return (value,)


def _from_events(records: list[dict[str, Any]]) -> list[Op]:
    """Pair Jepsen-style invoke/ok/fail/info events per process."""
    pending: dict[str, tuple[int, dict[str, Any]]] = {}
    ops: list[Op] = []
    for index, record in enumerate(records):
        process = str(record["process"])
        kind = record["type"]
        if kind == "invoke":
            if process in pending:
                raise ValueError(f"event {index}: process {process} already has an op open")
            pending[process] = (index, record)
            continue
        if process not in pending:
            raise ValueError(f"event {index}: {kind} for process {process} with no open op")
        start_index, start = pending.pop(process)
        f = start["f"]
        args = _event_args(f, start.get("value"))
        status = {"ok": "ok", "fail": "fail", "info": "unknown"}[kind]
        # Jepsen reports a CAS that did not apply as "fail", so an "ok" CAS swapped.
        result = True if f == "cas" else record.get("value")
        response = record["time"] if status != "unknown" else None
        ops.append(make_op(start_index, process, f, start["key"], args, start["time"], response, result, status))
    for process, (start_index, start) in pending.items():
        f = start["f"]
        args = _event_args(f, start.get("value"))
        ops.append(make_op(start_index, process, f, start["key"], args, start["time"], None))
    ops.sort(key=lambda op: op.id)
    return ops


def from_records(records: list[dict[str, Any]]) -> list[Op]:
    """Build a history from decoded JSON records of either accepted form."""
    if records and "type" in records[0]:
        return _from_events(records)
    return [_from_op_record(i, r) for i, r in enumerate(records)]


def _lines(text: str) -> Iterator[dict[str, Any]]:
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"line {number}: {err}") from err


def load_jsonl(path: str) -> list[Op]:
    with open(path, encoding="utf-8") as f:
        return from_records(list(_lines(f.read())))


def load_json(path: str) -> list[Op]:
    with open(path, encoding="utf-8") as f:
        return from_records(json.load(f))


def dump_jsonl(ops: Iterable[Op], path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for op in ops:
            f.write(json.dumps(op.to_json(), sort_keys=True) + "\n")
