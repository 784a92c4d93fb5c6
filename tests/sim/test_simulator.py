"""The simulator: determinism, a clean engine passing, each deliberate bug caught."""

from __future__ import annotations

import dataclasses
import random

import pytest

from kvorum.consensus import engines
from kvorum.consensus.replicated_log import Entry, EntryKind, HardState, Membership, Role, Snapshot
from kvorum.sim.disk import Disk
from kvorum.sim.invariants import Invariants, InvariantViolation
from kvorum.sim.runner import apply_settings, config_from_args, main, parser, replay_command, run_seed, run_seeds
from kvorum.sim.statemachine import Command, KVStateMachine, decode_command, encode_command
from kvorum.sim.world import SimConfig, profile_config

# Each deliberate bug, the profile that makes its schedules likely, and how
# many seeds the test allows before calling it missed.
BUGS = [
    ("commit-old-term", "figure8", 200),
    ("forget-vote", "crash-restart", 200),
    ("stale-lease", "stale-leader", 200),
    ("no-truncate", "default", 200),
]


def test_registry_knows_raft_and_its_bugs():
    assert "raft" in engines.names()
    assert {bug for bug, _, _ in BUGS} <= engines.get("raft").known_bugs()
    with pytest.raises(ValueError):
        engines.get("no-such-engine")


def test_registry_builds_nodes_whose_messages_travel_through_its_codec():
    spec = engines.get("raft")
    membership = Membership(frozenset({"n1", "n2", "n3"}))
    node = spec.make(engines.NodeSettings(id="n1", membership=membership, rng=random.Random(1)))
    node.campaign()
    messages = node.ready().messages
    assert messages and all(m.frm == "n1" and m.to in {"n2", "n3"} for m in messages)
    for m in messages:
        assert spec.decode_message(spec.encode_message(m)) == m
    with pytest.raises(engines.MessageDecodeError):
        spec.decode_message(b"\x93\x01")
    assert issubclass(engines.MessageDecodeError, ValueError)


def test_same_seed_same_trace():
    config = dataclasses.replace(SimConfig(), steps=4000)
    first = run_seed(11, config)
    again = run_seed(11, config)
    assert first.trace_hash == again.trace_hash
    assert first.history == again.history
    assert first.stats == again.stats
    other = run_seed(12, config)
    assert other.trace_hash != first.trace_hash


def test_verbose_trace_is_the_hashed_trace():
    config = dataclasses.replace(SimConfig(), steps=1500)
    lines: list[str] = []
    result = run_seed(3, config, verbose=lines.append)
    assert result.trace_hash == run_seed(3, config).trace_hash
    assert lines[0].split()[1:3] == ["seed", "3"]
    # One line per event that reaches a live node, client or nemesis (timers
    # of a crashed node's earlier life are skipped silently).
    assert len(lines) > 1300


def test_clean_engine_passes_a_batch_of_seeds():
    results = run_seeds(range(50), SimConfig())
    failed = [r.summary() for r in results if r.failed]
    assert not failed, failed
    # The runs did exercise the faults and the clients.
    totals = {key: sum(r.stats[key] for r in results) for key in ("crashes", "partitions", "membership", "transfers")}
    assert all(v > 0 for v in totals.values()), totals
    assert sum(r.stats["ops"] for r in results) > 50 * 100


@pytest.mark.parametrize("profile", ["figure8", "crash-restart"])
def test_clean_engine_passes_the_bug_hunting_profiles(profile):
    results = run_seeds(range(8), profile_config(profile))
    failed = [r.summary() for r in results if r.failed]
    assert not failed, failed


def test_clean_engine_passes_with_five_nodes():
    results = run_seeds(range(10), dataclasses.replace(SimConfig(), nodes=5))
    failed = [r.summary() for r in results if r.failed]
    assert not failed, failed


@pytest.mark.parametrize("bug,profile,seeds_max", BUGS)
def test_each_bug_is_caught(bug, profile, seeds_max):
    config = profile_config(profile, bugs=frozenset({bug}))
    results = run_seeds(range(seeds_max), config, stop_at_first_failure=True)
    caught = results[-1]
    assert caught.failed, f"{bug} not caught in {seeds_max} seeds of profile {profile}"
    # Replaying the catching seed gives the same failure.
    again = run_seed(caught.seed, config)
    assert again.failed and again.trace_hash == caught.trace_hash
    assert f"--bug {bug}" in replay_command(caught.seed, config)


def test_cli_passes_clean_seeds(capsys):
    assert main(["--engine", "raft", "--seeds", "3", "--steps", "2000"]) == 0
    out = capsys.readouterr().out
    assert "3 passed, 0 failed" in out


def test_cli_reports_the_seed_that_catches_a_bug(capsys):
    assert main(["--seeds", "5", "--bug", "no-truncate"]) == 0
    out = capsys.readouterr().out
    assert "caught by seed" in out and "replay: python -m kvorum.sim" in out


def test_cli_rejects_unknown_bug_and_knob(capsys):
    assert main(["--bug", "no-such-bug"]) == 2
    assert main(["--set", "no_such_knob=1"]) == 2


def test_replay_command_rebuilds_the_exact_config():
    config = apply_settings(
        profile_config("figure8", bugs=frozenset({"forget-vote"}), nodes=5),
        ["network.drop_rate=0.1", "crashes=on", "max_entries_per_msg=1,2", "clients.count=6"],
    )
    argv = replay_command(42, config).split()[3:]
    args = parser().parse_args(argv)
    assert args.seed == 42 and args.verbose
    assert config_from_args(args) == config


# --- pieces -------------------------------------------------------------------


def _entries(term, lo, hi):
    return tuple(Entry(term, i, EntryKind.NORMAL, b"x%d" % i) for i in range(lo, hi))


def test_disk_crash_keeps_synced_state_and_a_prefix_of_the_rest():
    disk = Disk()
    disk.write_entries(_entries(1, 1, 4))
    disk.write_hard_state(HardState(1, "n1", 2))
    disk.fsync(disk.seq)
    disk.write_entries(_entries(2, 3, 5))  # overwrites index 3
    disk.write_hard_state(HardState(2, "n2", 3))
    kept_everything = [False, False]
    for seed in range(40):
        d = Disk()
        d.synced = disk.synced.copy()
        d._queued = list(disk._queued)
        d.seq = disk.seq
        d.crash(random.Random(seed), lose_unsynced=True)
        state = d.restore_state()
        terms = [e.term for e in state.entries]
        assert terms in ([1, 1, 1], [1, 1, 2, 2])
        assert state.hard_state.term in (1, 2)
        # Writes survive in order: a newer hard state never without the entries before it.
        if state.hard_state.term == 2:
            assert terms == [1, 1, 2, 2]
            kept_everything[0] = True
        if terms == [1, 1, 1]:
            kept_everything[1] = True
    assert all(kept_everything)


def test_disk_snapshot_replaces_covered_entries():
    disk = Disk()
    disk.write_entries(_entries(1, 1, 6))
    disk.write_snapshot(Snapshot(3, 1, Membership(frozenset({"n1"})), b""))
    disk.fsync(disk.seq)
    state = disk.restore_state()
    assert state.snapshot.index == 3
    assert [e.index for e in state.entries] == [4, 5]


def test_state_machine_commands_roundtrip_and_apply():
    sm = KVStateMachine()
    cmds = [
        Command("c1", 1, "put", "k", ("a",)),
        Command("c1", 2, "cas", "k", ("a", "b")),
        Command("c1", 3, "cas", "k", ("a", "c")),
        Command("c1", 4, "incr", "k", (1,)),
        Command("c1", 5, "delete", "k", ()),
        Command("c1", 6, "incr", "k", (5,)),
    ]
    results = []
    for i, cmd in enumerate(cmds, start=1):
        data = encode_command(cmd)
        assert decode_command(data) == cmd
        results.append(sm.apply(i, data))
    assert results == [None, True, False, "ERR", 1, 5]
    copy = KVStateMachine()
    copy.restore(sm.snapshot(), sm.applied)
    assert copy.values == sm.values == {"k": 5}


class _FakeEngine:
    def __init__(self, role, term, log):
        self.role, self.term, self.log = role, term, log

    def status(self):
        from kvorum.consensus.replicated_log import Status

        last = self.log[-1].index if self.log else 0
        return Status("x", self.role, self.term, None, 0, 0, 1, last, Membership(frozenset({"x"})))

    def log_entries(self, lo, hi):
        return [e for e in self.log if lo <= e.index < hi]


class _FakeNode:
    def __init__(self, node_id, role, term, log=()):
        self.id = node_id
        self.engine = _FakeEngine(role, term, list(log))
        self.up = True


def test_invariants_catch_two_leaders_in_one_term():
    inv = Invariants()
    inv.after_event(_FakeNode("a", Role.LEADER, 3))
    with pytest.raises(InvariantViolation) as err:
        inv.after_event(_FakeNode("b", Role.LEADER, 3))
    assert err.value.invariant == "election safety"


def test_invariants_catch_divergent_applies_and_missing_committed_entries():
    inv = Invariants()
    a = _FakeNode("a", Role.FOLLOWER, 2)
    inv.on_apply(a, Entry(1, 1, EntryKind.NORMAL, b"x"), 1)
    with pytest.raises(InvariantViolation) as err:
        inv.on_apply(_FakeNode("b", Role.FOLLOWER, 2), Entry(2, 1, EntryKind.NORMAL, b"y"), 2)
    assert err.value.invariant == "state machine safety"
    with pytest.raises(InvariantViolation) as err:
        inv.after_event(_FakeNode("c", Role.LEADER, 3, [Entry(2, 1, EntryKind.NORMAL, b"y")]))
    assert err.value.invariant == "leader completeness"


def test_invariants_catch_log_matching_violations():
    inv = Invariants()
    inv.sweep([_FakeNode("a", Role.FOLLOWER, 2, [Entry(1, 1), Entry(2, 2)])])
    with pytest.raises(InvariantViolation) as err:
        inv.sweep([_FakeNode("b", Role.FOLLOWER, 2, [Entry(2, 1), Entry(2, 2)])])
    assert err.value.invariant == "log matching"
