"""Linearizability checker for key/value histories.

Theory of operation
-------------------
A history is linearizable if every op can be given one instant between its
invocation and its response such that running the ops one at a time, in the
order of those instants, against a sequential key/value model gives every
`ok` op the result its client saw.

Keys are independent objects, and linearizability is compositional
(Herlihy & Wing, "P-compositionality" in Horn & Kroening): a history is
linearizable iff its restriction to each key is. So the history is split per
key and each part is searched on its own, which keeps the bitmasks small and
turns one exponential search into many small ones.

Per key, the search is Wing & Gong's with Lowe's memoization, laid out as in
Porcupine: every op contributes a call event and a return event, sorted by
time (calls before returns on ties, so ops that touch at an instant count as
concurrent) into a doubly linked list. The search walks the list:

- at a call whose op the model accepts in the current state, it linearizes
  that op: pushes (op, state) on a stack, unlinks the op's call and return,
  and restarts from the head;
- at a return, the op that returns there was not linearized before it, so
  the current prefix is a dead end: pop the last linearized op, relink it,
  and try the next call after it.

Lowe's cache holds (set of linearized ops as a bitmask, model state); a
configuration already in it was already explored and is skipped. Ops whose
outcome is unknown are split out of the key: a configuration is also skipped
when one with the same known ops and state, and a subset of its unknown ops,
was explored (see `_subsumed`), which keeps timed-out writes from making the
search exponential in their number. The search
succeeds as soon as every op with a finite response is linearized: ops whose
outcome is unknown (response at +infinity) may simply never have happened,
and can always be placed last if they did.

Ops with status `fail` did not happen and are dropped; `get`s with unknown
outcome constrain nothing and are dropped too.

The search is exponential in the worst case, so it is bounded: after
`max_states` explored configurations on one key it gives up and reports
`unknown` for that key instead of hanging.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Iterable

from kvorum.sim.history import INFINITY, Op

MAX_STATES_DEFAULT = 1_000_000
SUBSUMERS_MAX = 64  # unknown-op sets remembered per (known ops, state); see _subsumed
EXPLAIN_PREFIX_OPS_MAX = 12  # ops of the linearizable prefix a violation report shows
ERROR = "ERR"  # what INCR returns on a value that is not an integer


class Verdict(enum.Enum):
    OK = "ok"
    VIOLATION = "violation"
    UNKNOWN = "unknown"  # the search hit its bound


def step(value: Any, op: Op) -> tuple[bool, Any]:
    """Run `op` on one key's sequential model; returns (result matches, new value).

    `value` is None when the key is absent. An op whose outcome is unknown
    matches any result.
    """
    kind = op.kind
    known = op.status == "ok"
    if kind == "get":
        return (not known or op.result == value), value
    if kind == "put":
        return True, op.args[0]
    if kind == "cas":
        swapped = value == op.args[0]
        new = op.args[1] if swapped else value
        return (not known or op.result == swapped), new
    if kind == "incr":
        if value is None:
            value = 0
        if not isinstance(value, int) or isinstance(value, bool):
            return (not known or op.result == ERROR), value
        new = value + op.args[0]
        return (not known or op.result == new), new
    if kind == "delete":
        existed = 0 if value is None else 1
        return (not known or op.result is None or op.result == existed), None
    raise AssertionError(f"unknown op kind {kind!r}")


@dataclass(slots=True)
class KeyResult:
    key: str
    verdict: Verdict
    ops_count: int
    states_explored: int
    # On a violation: the longest prefix the search could linearize and the
    # ops that were still pending (called, not linearized) when it got stuck.
    best_prefix: tuple[Op, ...] = ()
    stuck_ops: tuple[Op, ...] = ()

    def explain(self) -> str:
        lines = [f"key {self.key!r}: {self.verdict.value} ({self.ops_count} ops, {self.states_explored} states)"]
        if self.verdict is Verdict.VIOLATION:
            value = None
            shown = len(self.best_prefix) - EXPLAIN_PREFIX_OPS_MAX
            lines.append(f"  longest linearizable prefix ({len(self.best_prefix)} ops, the last ones shown):")
            for i, op in enumerate(self.best_prefix):
                _, value = step(value, op)
                if i >= shown:
                    lines.append(f"    {op.describe()}    => {value!r}")
            lines.append("  none of these could be linearized next:")
            for op in self.stuck_ops:
                lines.append(f"    {op.describe()}")
        return "\n".join(lines)


@dataclass(slots=True)
class CheckResult:
    verdict: Verdict
    keys: list[KeyResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.verdict is Verdict.OK

    def failures(self) -> list[KeyResult]:
        return [k for k in self.keys if k.verdict is not Verdict.OK]

    def explain(self) -> str:
        bad = self.failures()
        if not bad:
            return f"linearizable ({len(self.keys)} keys)"
        return "\n".join(k.explain() for k in bad)


class _Node:
    """One call or return event in the search's doubly linked list."""

    __slots__ = ("op", "index", "is_call", "match", "prev", "next")

    def __init__(self, op: Op | None, index: int, is_call: bool) -> None:
        self.op = op
        self.index = index
        self.is_call = is_call
        self.match: _Node | None = None
        self.prev: _Node | None = None
        self.next: _Node | None = None


def _relevant(ops: Iterable[Op]) -> list[Op]:
    return [op for op in ops if op.status != "fail" and not (op.kind == "get" and op.status == "unknown")]


def _build_list(ops: list[Op]) -> _Node:
    events: list[tuple[float, int, int, _Node]] = []
    for index, op in enumerate(ops):
        call = _Node(op, index, True)
        ret = _Node(op, index, False)
        call.match = ret
        # Calls sort before returns at the same instant: touching ops overlap.
        events.append((op.invoke, 0, index, call))
        events.append((op.response, 1, index, ret))
    events.sort(key=lambda e: (e[0], e[1], e[2]))
    head = _Node(None, -1, False)
    prev = head
    for _, _, _, node in events:
        prev.next = node
        node.prev = prev
        prev = node
    return head


def _lift(call: _Node) -> None:
    call.prev.next = call.next
    if call.next is not None:
        call.next.prev = call.prev
    ret = call.match
    ret.prev.next = ret.next
    if ret.next is not None:
        ret.next.prev = ret.prev


def _unlift(call: _Node) -> None:
    ret = call.match
    ret.prev.next = ret
    if ret.next is not None:
        ret.next.prev = ret
    call.prev.next = call
    if call.next is not None:
        call.next.prev = call


def check_key(key: str, ops: list[Op], max_states: int = MAX_STATES_DEFAULT) -> KeyResult:
    """Search one key's history; see the module docstring."""
    ops = _relevant(ops)
    head = _build_list(ops)
    must = sum(1 for op in ops if op.response != INFINITY)
    unknown_mask = 0
    for index, op in enumerate(ops):
        if op.response == INFINITY:
            unknown_mask |= 1 << index
    known_mask = ~unknown_mask
    state: Any = None
    linearized = 0
    stack: list[tuple[_Node, Any]] = []
    # (known ops linearized, state) -> the sets of unknown ops linearized with them.
    cache: dict[tuple[int, Any], list[int]] = {}
    seen_exact: set[tuple[int, Any]] = set()
    explored = 0
    best: list[Op] = []
    entry = head.next
    while must > 0:
        if entry.is_call:
            matches, new_state = step(state, entry.op)
            if matches:
                new_linearized = linearized | (1 << entry.index)
                known = new_linearized & known_mask
                if not _subsumed(cache, seen_exact, new_linearized, known, new_state, new_linearized & unknown_mask):
                    explored += 1
                    if explored > max_states:
                        return KeyResult(key, Verdict.UNKNOWN, len(ops), explored)
                    stack.append((entry, state))
                    state = new_state
                    linearized = new_linearized
                    if entry.op.response != INFINITY:
                        must -= 1
                    _lift(entry)
                    entry = head.next
                    continue
            entry = entry.next
            continue
        # A return: the op returning here was not linearized before its response.
        if len(stack) >= len(best):
            best = [call.op for call, _ in stack]
        if not stack:
            return KeyResult(key, Verdict.VIOLATION, len(ops), explored, tuple(best), _stuck(ops, best))
        call, state = stack.pop()
        linearized &= ~(1 << call.index)
        if call.op.response != INFINITY:
            must += 1
        _unlift(call)
        entry = call.next
    return KeyResult(key, Verdict.OK, len(ops), explored)


def _subsumed(cache: dict[tuple[int, Any], list[int]], seen_exact: set[tuple[int, Any]], linearized: int, known: int, state: Any, unknown: int) -> bool:
    """Was this configuration, or one that can do everything it can, explored already?

    A configuration with the same known ops linearized and the same state but
    a *subset* of its unknown ops linearized can reach every continuation this
    one can (unknown ops never return, so leaving them pending blocks nothing),
    so if that one was explored this one need not be. Exact repeats are found
    in `seen_exact`; for subsets, up to SUBSUMERS_MAX sets per (known, state)
    are kept, preferring the smallest (they subsume the most). Otherwise the
    configuration is recorded and explored.
    """
    config = (linearized, state)
    if config in seen_exact:
        return True
    seen = cache.get((known, state))
    if seen is None:
        cache[(known, state)] = [unknown]
    else:
        for other in seen:
            if other & ~unknown == 0:
                return True
        if len(seen) < SUBSUMERS_MAX:
            seen.append(unknown)
        else:
            largest = max(range(len(seen)), key=lambda i: seen[i].bit_count())
            if unknown.bit_count() < seen[largest].bit_count():
                seen[largest] = unknown
    seen_exact.add(config)
    return False


def _stuck(ops: list[Op], prefix: list[Op]) -> tuple[Op, ...]:
    """Ops not in `prefix` that were invoked before the earliest pending response."""
    done = {op.id for op in prefix}
    rest = [op for op in ops if op.id not in done]
    if not rest:
        return ()
    deadline = min(op.response for op in rest)
    return tuple(sorted((op for op in rest if op.invoke <= deadline), key=lambda op: op.invoke))


def check(ops: Iterable[Op], max_states: int = MAX_STATES_DEFAULT) -> CheckResult:
    """Check a whole history, key by key. `max_states` bounds each key's search."""
    by_key: dict[str, list[Op]] = {}
    for op in ops:
        by_key.setdefault(op.key, []).append(op)
    results = [check_key(key, key_ops, max_states) for key, key_ops in sorted(by_key.items())]
    if any(r.verdict is Verdict.VIOLATION for r in results):
        verdict = Verdict.VIOLATION
    elif any(r.verdict is Verdict.UNKNOWN for r in results):
        verdict = Verdict.UNKNOWN
    else:
        verdict = Verdict.OK
    return CheckResult(verdict, results)


def main(argv: list[str] | None = None) -> int:
    """`python -m kvorum.sim.linearizability HISTORY.jsonl [--max-states N]`."""
    import argparse

    from kvorum.sim.history import load_json, load_jsonl

    parser = argparse.ArgumentParser(description="check a key/value history for linearizability")
    parser.add_argument("path")
    parser.add_argument("--max-states", type=int, default=MAX_STATES_DEFAULT)
    args = parser.parse_args(argv)
    loader = load_json if args.path.endswith(".json") else load_jsonl
    result = check(loader(args.path), args.max_states)
    print(result.explain())
    print(result.verdict.value)
    return {Verdict.OK: 0, Verdict.VIOLATION: 1, Verdict.UNKNOWN: 2}[result.verdict]


if __name__ == "__main__":
    raise SystemExit(main())
