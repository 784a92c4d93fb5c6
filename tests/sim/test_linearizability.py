"""The linearizability checker on hand-made histories and generated ones."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvorum.sim.history import INFINITY, Recorder, from_records, load_jsonl, make_op
from kvorum.sim.linearizability import ERROR, Verdict, check, check_key, step


class H:
    """Tiny builder: H().op("a", "put", "x", (1,), 0, 2).op(...).ops"""

    def __init__(self) -> None:
        self.ops = []

    def op(self, client, kind, key, args, invoke, response, result=None, status="ok"):
        self.ops.append(make_op(len(self.ops), client, kind, key, args, invoke, response, result, status))
        return self


def verdict(h: H) -> Verdict:
    return check(h.ops).verdict


# --- linearizable -----------------------------------------------------------


def test_empty_history_is_linearizable():
    assert check([]).verdict is Verdict.OK


def test_sequential_put_get():
    h = H().op("a", "put", "x", (1,), 0, 1).op("a", "get", "x", (), 2, 3, 1)
    assert verdict(h) is Verdict.OK


def test_read_of_absent_key_is_none():
    h = H().op("a", "get", "x", (), 0, 1, None).op("b", "put", "x", (1,), 2, 3)
    assert verdict(h) is Verdict.OK


def test_concurrent_read_may_see_old_or_new():
    for seen in (None, 1):
        h = H().op("a", "put", "x", (1,), 0, 10).op("b", "get", "x", (), 2, 3, seen)
        assert verdict(h) is Verdict.OK, seen


def test_concurrent_writes_any_order_but_reads_agree():
    # Two overlapping writes; later reads must agree on one winner.
    h = (
        H()
        .op("a", "put", "x", (1,), 0, 5)
        .op("b", "put", "x", (2,), 1, 6)
        .op("c", "get", "x", (), 7, 8, 1)
        .op("d", "get", "x", (), 9, 10, 1)
    )
    assert verdict(h) is Verdict.OK


def test_touching_intervals_count_as_concurrent():
    h = H().op("a", "put", "x", (1,), 0, 5).op("b", "get", "x", (), 5, 6, None)
    assert verdict(h) is Verdict.OK


def test_incr_returns_new_value():
    h = H().op("a", "incr", "n", (1,), 0, 1, 1).op("b", "incr", "n", (5,), 2, 3, 6).op("c", "get", "n", (), 4, 5, 6)
    assert verdict(h) is Verdict.OK


def test_concurrent_increments_any_order():
    h = H().op("a", "incr", "n", (1,), 0, 10, 3).op("b", "incr", "n", (2,), 0, 10, 2)
    assert verdict(h) is Verdict.OK


def test_incr_on_non_integer_is_an_error():
    h = H().op("a", "put", "x", ("abc",), 0, 1).op("b", "incr", "x", (1,), 2, 3, ERROR).op("c", "get", "x", (), 4, 5, "abc")
    assert verdict(h) is Verdict.OK


def test_cas_success_and_failure():
    h = (
        H()
        .op("a", "put", "x", (1,), 0, 1)
        .op("b", "cas", "x", (1, 2), 2, 3, True)
        .op("c", "cas", "x", (1, 3), 4, 5, False)
        .op("d", "get", "x", (), 6, 7, 2)
    )
    assert verdict(h) is Verdict.OK


def test_concurrent_cas_exactly_one_wins():
    h = (
        H()
        .op("a", "put", "x", (0,), 0, 1)
        .op("b", "cas", "x", (0, 1), 2, 6, True)
        .op("c", "cas", "x", (0, 2), 2, 6, False)
        .op("d", "get", "x", (), 7, 8, 1)
    )
    assert verdict(h) is Verdict.OK


def test_delete_then_read_absent():
    h = H().op("a", "put", "x", (1,), 0, 1).op("a", "delete", "x", (), 2, 3, 1).op("b", "get", "x", (), 4, 5, None)
    assert verdict(h) is Verdict.OK


def test_unknown_write_may_take_effect_late():
    # The put timed out; a read long after sees it: allowed (it is at +inf).
    h = (
        H()
        .op("a", "put", "x", (1,), 0, 1)
        .op("b", "put", "x", (2,), 2, None)
        .op("c", "get", "x", (), 100, 101, 1)
        .op("c", "get", "x", (), 200, 201, 2)
    )
    assert verdict(h) is Verdict.OK


def test_unknown_write_may_never_happen():
    h = H().op("a", "put", "x", (1,), 0, 1).op("b", "put", "x", (2,), 2, None).op("c", "get", "x", (), 100, 101, 1)
    assert verdict(h) is Verdict.OK


def test_failed_ops_are_ignored():
    h = H().op("a", "put", "x", (1,), 0, 1).op("b", "put", "x", (2,), 2, 3, status="fail").op("c", "get", "x", (), 4, 5, 1)
    assert verdict(h) is Verdict.OK


def test_keys_are_independent():
    # Each key alone is fine; linearizability composes per key.
    h = (
        H()
        .op("a", "put", "x", (1,), 0, 10)
        .op("b", "put", "y", (1,), 0, 10)
        .op("c", "get", "x", (), 1, 2, 1)
        .op("c", "get", "y", (), 3, 4, None)
    )
    assert verdict(h) is Verdict.OK


# --- not linearizable -------------------------------------------------------


def test_stale_read():
    h = H().op("a", "put", "x", (1,), 0, 1).op("a", "put", "x", (2,), 2, 3).op("b", "get", "x", (), 4, 5, 1)
    result = check(h.ops)
    assert result.verdict is Verdict.VIOLATION
    text = result.explain()
    assert "key 'x'" in text and "get" in text


def test_read_goes_back_in_time():
    # One reader sees the new value, a later reader sees the old one.
    h = (
        H()
        .op("a", "put", "x", (1,), 0, 1)
        .op("w", "put", "x", (2,), 2, 20)
        .op("b", "get", "x", (), 3, 4, 2)
        .op("c", "get", "x", (), 5, 6, 1)
    )
    assert verdict(h) is Verdict.VIOLATION


def test_lost_write():
    h = H().op("a", "put", "x", (1,), 0, 1).op("b", "get", "x", (), 2, 3, None)
    assert verdict(h) is Verdict.VIOLATION


def test_lost_increment():
    h = H().op("a", "incr", "n", (1,), 0, 1, 1).op("b", "incr", "n", (1,), 2, 3, 1)
    assert verdict(h) is Verdict.VIOLATION


def test_read_of_value_never_written():
    h = H().op("a", "put", "x", (1,), 0, 10).op("b", "get", "x", (), 1, 2, 7)
    assert verdict(h) is Verdict.VIOLATION


def test_cas_both_succeed():
    h = H().op("a", "put", "x", (0,), 0, 1).op("b", "cas", "x", (0, 1), 2, 6, True).op("c", "cas", "x", (0, 2), 2, 6, True)
    assert verdict(h) is Verdict.VIOLATION


def test_cas_fails_although_value_matched():
    h = H().op("a", "put", "x", (0,), 0, 1).op("b", "cas", "x", (0, 1), 2, 3, False)
    assert verdict(h) is Verdict.VIOLATION


def test_cas_succeeds_on_wrong_value():
    h = H().op("a", "put", "x", (5,), 0, 1).op("b", "cas", "x", (0, 1), 2, 3, True)
    assert verdict(h) is Verdict.VIOLATION


def test_cas_result_not_visible():
    h = H().op("a", "put", "x", (0,), 0, 1).op("b", "cas", "x", (0, 1), 2, 3, True).op("c", "get", "x", (), 4, 5, 0)
    assert verdict(h) is Verdict.VIOLATION


def test_unknown_write_cannot_take_effect_before_invocation():
    h = H().op("a", "get", "x", (), 0, 1, 2).op("b", "put", "x", (2,), 5, None)
    assert verdict(h) is Verdict.VIOLATION


def test_read_after_delete_sees_old_value():
    h = H().op("a", "put", "x", (1,), 0, 1).op("a", "delete", "x", (), 2, 3, 1).op("b", "get", "x", (), 4, 5, 1)
    assert verdict(h) is Verdict.VIOLATION


def test_violation_reports_stuck_ops():
    h = H().op("a", "put", "x", (1,), 0, 1).op("b", "get", "x", (), 2, 3, None)
    result = check(h.ops)
    (bad,) = result.failures()
    assert [op.kind for op in bad.best_prefix] == ["put"]
    assert [op.kind for op in bad.stuck_ops] == ["get"]


# --- bound ------------------------------------------------------------------


def test_bound_reports_unknown_instead_of_hanging():
    # Many fully concurrent increments with unknown outcomes plus a read that
    # cannot be explained forces the search to enumerate subsets.
    h = H()
    for i in range(20):
        h.op(f"c{i}", "incr", "n", (1 << i,), 0, None)
    h.op("r", "get", "n", (), 1, 2, -1)
    result = check_key("n", h.ops, max_states=2_000)
    assert result.verdict is Verdict.UNKNOWN
    assert result.states_explored > 2_000


# --- loading ----------------------------------------------------------------


def test_jsonl_op_records_roundtrip(tmp_path):
    path = tmp_path / "h.jsonl"
    records = [
        {"client": "a", "kind": "put", "key": "x", "args": ["5"], "invoke": 0.5, "response": 1.25, "status": "ok"},
        {"client": "b", "kind": "incr", "key": "x", "args": [1], "invoke": 2, "response": 3, "result": 6},
        {"client": "c", "kind": "get", "key": "x", "args": [], "invoke": 4, "response": 5, "result": "6"},
        {"client": "d", "kind": "put", "key": "x", "args": ["9"], "invoke": 6, "response": None, "status": "unknown"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    ops = load_jsonl(str(path))
    assert ops[0].args == (5,) and ops[2].result == 6
    assert ops[3].response == INFINITY and ops[3].status == "unknown"
    assert check(ops).verdict is Verdict.OK


def test_jepsen_style_events():
    events = [
        {"process": 0, "type": "invoke", "f": "put", "key": "x", "value": 1, "time": 0},
        {"process": 1, "type": "invoke", "f": "get", "key": "x", "value": None, "time": 1},
        {"process": 0, "type": "ok", "f": "put", "key": "x", "value": 1, "time": 2},
        {"process": 1, "type": "ok", "f": "get", "key": "x", "value": 1, "time": 3},
        {"process": 0, "type": "invoke", "f": "cas", "key": "x", "value": [1, 2], "time": 4},
        {"process": 0, "type": "info", "f": "cas", "key": "x", "value": [1, 2], "time": 9},
        {"process": 1, "type": "invoke", "f": "get", "key": "x", "value": None, "time": 10},
        {"process": 1, "type": "ok", "f": "get", "key": "x", "value": 2, "time": 11},
        {"process": 2, "type": "invoke", "f": "put", "key": "x", "value": 3, "time": 12},
    ]
    ops = from_records(events)
    assert [op.status for op in ops] == ["ok", "ok", "unknown", "ok", "unknown"]
    assert check(ops).verdict is Verdict.OK
    events[7]["value"] = 7
    assert check(from_records(events)).verdict is Verdict.VIOLATION


def test_recorder_reports_open_ops_as_unknown():
    r = Recorder()
    a = r.invoke("a", "put", "x", (1,), 0)
    r.ok(a, None, 1)
    r.invoke("b", "put", "x", (2,), 2)
    ops = r.history()
    assert [op.status for op in ops] == ["ok", "unknown"]


# --- generated histories ----------------------------------------------------


@st.composite
def sequential_histories(draw):
    """A sequential run at instants 10, 20, 30 ..., then widened into overlapping windows.

    Each op takes effect at its instant; its visible interval is stretched by
    a random amount on each side (up to several neighbours' worth), and some
    ops lose their response (unknown: applied or not).
    """
    keys = draw(st.lists(st.sampled_from("xyz"), min_size=1, max_size=3, unique=True))
    count = draw(st.integers(min_value=1, max_value=24))
    state: dict[str, object] = {}
    ops = []
    for i in range(count):
        key = draw(st.sampled_from(keys))
        kind = draw(st.sampled_from(["get", "put", "cas", "incr", "delete"]))
        if kind == "put":
            args = (draw(st.integers(0, 3)),)
        elif kind == "cas":
            args = (draw(st.one_of(st.none(), st.integers(0, 3))), draw(st.integers(0, 3)))
        elif kind == "incr":
            args = (draw(st.integers(1, 3)),)
        else:
            args = ()
        instant = 10 * (i + 1)
        invoke = instant - draw(st.integers(0, 35))
        unknown = kind != "get" and draw(st.integers(0, 5)) == 0
        applied = not unknown or draw(st.booleans())
        probe = make_op(0, "probe", kind, key, args, 0, 1, None, "unknown")
        _, new = step(state.get(key), probe)
        result = _result(kind, args, state.get(key), new)
        if applied:
            state[key] = new
        response = None if unknown else instant + draw(st.integers(0, 35))
        ops.append(make_op(i, f"c{i % 4}", kind, key, args, invoke, response, result))
    return ops


def _result(kind, args, old, new):
    if kind == "get":
        return old
    if kind == "cas":
        return old == args[0]
    if kind == "incr":
        return new
    if kind == "delete":
        return 0 if old is None else 1
    return None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sequential_histories())
def test_sequential_execution_with_overlaps_is_accepted(ops):
    result = check(ops)
    assert result.verdict is Verdict.OK, result.explain()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sequential_histories(), st.data())
def test_corrupted_read_is_rejected(ops, data):
    reads = [i for i, op in enumerate(ops) if op.kind == "get" and op.status == "ok"]
    if not reads:
        return
    i = data.draw(st.sampled_from(reads))
    op = ops[i]
    # A string no op ever writes to any key: the read is provably wrong.
    corrupted = make_op(op.id, op.client, op.kind, op.key, op.args, op.invoke, op.response, "never-written")
    ops = ops[:i] + [corrupted] + ops[i + 1 :]
    result = check(ops)
    assert result.verdict is Verdict.VIOLATION
    assert [k.key for k in result.failures()] == [op.key]
