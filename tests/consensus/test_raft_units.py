"""Unit tests for the pieces under the Raft engine: wire encoding, quorum math,
progress tracking, configuration checks and the sans-I/O import rule."""

from __future__ import annotations

import ast
import pathlib
import random

import pytest

from kvorum.consensus.quorum import (
    INDEX_UNBOUNDED,
    VoteResult,
    joint_index,
    joint_vote,
    majority_index,
    majority_vote,
)
from kvorum.consensus.raft import (
    AppendEntries,
    AppendResponse,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    MessageDecodeError,
    RaftConfig,
    RaftNode,
    RequestVote,
    TimeoutNow,
    VoteResponse,
    decode_message,
    encode_message,
)
from kvorum.consensus.raft.bugs import KNOWN_BUGS, node_class
from kvorum.consensus.raft.membership import decode_membership, encode_membership, plan_change
from kvorum.consensus.replicated_log import (
    EngineConfigError,
    Entry,
    EntryKind,
    Membership,
    ProposalDropped,
    Snapshot,
)
from kvorum.consensus.tracker import Inflights, Progress, ProgressState

M3 = Membership(frozenset({"1", "2", "3"}))

MESSAGES = [
    AppendEntries(
        "2",
        "1",
        3,
        7,
        2,
        (Entry(3, 8, EntryKind.NORMAL, b"\x00data"), Entry(3, 9, EntryKind.NOOP, b"")),
        6,
    ),
    AppendEntries("2", "1", 3, 7, 2, (), 6),
    AppendResponse("1", "2", 3, 7, True, 5, 2),
    AppendResponse("1", "2", 3, 9),
    Heartbeat("3", "1", 4, 10, 17),
    HeartbeatResponse("1", "3", 4, 17),
    RequestVote("2", "1", 5, 10, 4, True, False),
    RequestVote("2", "1", 5, 10, 4, False, True),
    VoteResponse("1", "2", 5, False, True),
    InstallSnapshot(
        "3",
        "1",
        6,
        Snapshot(
            100,
            5,
            Membership(frozenset({"1", "2"}), frozenset({"4"}), frozenset({"1", "2", "3"}), frozenset({"3"})),
            b"image",
        ),
    ),
    TimeoutNow("2", "1", 6),
]


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
def test_message_round_trip(msg: object) -> None:
    data = encode_message(msg)
    assert isinstance(data, bytes)
    back = decode_message(data)
    assert back == msg and type(back) is type(msg)
    assert encode_message(back) == data


@pytest.mark.parametrize("junk", [b"", b"\x93\x01\x02\x03", b"\xc1", encode_message(TimeoutNow("a", "b", 1))[:-1]])
def test_decode_rejects_junk(junk: bytes) -> None:
    with pytest.raises(MessageDecodeError):
        decode_message(junk)


def test_membership_entry_round_trip() -> None:
    m = Membership(frozenset({"a", "b"}), frozenset({"c"}), frozenset({"a", "d", "e"}), frozenset({"d"}))
    assert decode_membership(encode_membership(m)) == m


def test_joint_snapshot_loses_learners_next_on_disk(tmp_path: pathlib.Path) -> None:
    """Paper §6: a snapshot taken inside C_old,new must keep the voters it demotes to
    learners, in the snapshot file as on the wire (InstallSnapshot, above)."""
    from kvorum.storage.snapshot import read_snapshot, write_snapshot

    joint = Membership(frozenset({"1", "2", "4"}), frozenset(), frozenset({"1", "2", "3"}), frozenset({"3"}))
    snap = Snapshot(7, 2, joint, b"image")
    path = write_snapshot(str(tmp_path), snap, lambda fd: None)
    assert read_snapshot(path, 1 << 20) == snap


def test_plan_change_single_vs_joint() -> None:
    """Thesis 4.1: one voter changes in one step; more go through C_old,new (§6)."""
    one = plan_change(M3, Membership(frozenset({"1", "2", "3", "4"})))
    assert not one.joint and one.learners_next == frozenset()
    joint = plan_change(M3, Membership(frozenset({"1", "4"}), frozenset({"2"})))
    assert joint.voters_outgoing == M3.voters and joint.voters == frozenset({"1", "4"})
    assert joint.learners_next == frozenset({"2"}) and "2" not in joint.learners
    assert "2" in joint.members()
    with pytest.raises(ValueError):
        plan_change(M3, Membership(frozenset()))


def test_majority_and_joint_index() -> None:
    acked = {"1": 5, "2": 3, "3": 9, "4": 1, "5": 7}
    assert majority_index({"1", "2", "3"}, acked) == 5
    assert majority_index({"1", "2", "3", "4"}, acked) == 3  # needs 3 of 4
    assert majority_index({"1", "2", "3", "4", "5"}, acked) == 5
    assert majority_index({"9"}, acked) == 0
    assert majority_index(set(), acked) == INDEX_UNBOUNDED
    assert joint_index({"1", "3", "5"}, {"2", "4"}, acked) == 1
    assert joint_index({"1", "3", "5"}, set(), acked) == 7


def test_majority_and_joint_vote() -> None:
    assert majority_vote({"1", "2", "3"}, {"1": True, "2": True}) is VoteResult.WON
    assert majority_vote({"1", "2", "3"}, {"1": True, "2": False}) is VoteResult.PENDING
    assert majority_vote({"1", "2", "3"}, {"1": True, "2": False, "3": False}) is VoteResult.LOST
    assert majority_vote(set(), {}) is VoteResult.WON
    votes = {"1": True, "2": True, "4": False, "5": False}
    assert joint_vote({"1", "2", "3"}, {"3", "4", "5"}, votes) is VoteResult.LOST
    assert joint_vote({"1", "2", "3"}, {"1", "2", "4"}, votes) is VoteResult.WON


def test_progress_probe_replicate_snapshot() -> None:
    pr = Progress(next_index=10, inflight_max=2)
    assert pr.state is ProgressState.PROBE and not pr.is_paused()
    pr.sent_entries(12)
    assert pr.is_paused()  # one probe at a time
    assert pr.maybe_decr_to(9, 4)  # rejected at 9, the follower hints 4
    assert pr.next == 5 and not pr.is_paused()
    assert not pr.maybe_decr_to(9, 4)  # stale rejection
    assert pr.maybe_update(6)
    pr.become_replicate()
    pr.sent_entries(8)
    pr.sent_entries(10)
    assert pr.is_paused() and pr.next == 11  # in-flight window full
    pr.inflights.free_le(8)
    assert not pr.is_paused()
    pr.become_snapshot(40)
    assert pr.is_paused()
    pr.become_probe()
    assert pr.next == 41


def test_inflights_bounded() -> None:
    infl = Inflights(3)
    for i in (1, 2, 3):
        infl.add(i)
    assert infl.full()
    infl.free_le(2)
    assert len(infl) == 1
    infl.free_first_one()
    assert len(infl) == 0


@pytest.mark.parametrize(
    "kw",
    [
        {"election_tick": 1},
        {"heartbeat_tick": 0},
        {"lease_reads": True, "check_quorum": False},
        {"lease_drift_ticks": 10},
        {"lease_reads": True, "lease_drift_ticks": 0},
        {"max_inflight_msgs": 0},
        {"max_bytes_per_msg": 0},
        {"id": ""},
    ],
)
def test_config_validated_once_at_construction(kw: dict) -> None:
    base = {"id": "1", "membership": M3, "rng": random.Random(1)}
    with pytest.raises(ValueError):
        RaftNode(RaftConfig(**{**base, **kw}))


def test_stale_lease_bug_lifts_check_quorum_requirement_and_nothing_else() -> None:
    stale = node_class({"stale-lease"})
    stale(RaftConfig("1", M3, random.Random(1), lease_reads=True, check_quorum=False))
    with pytest.raises(ValueError):
        stale(RaftConfig("1", M3, random.Random(1), lease_reads=True, check_quorum=False, lease_drift_ticks=0))


def test_bug_variants_are_subclasses_built_on_request() -> None:
    assert node_class(()) is RaftNode
    both = node_class(["forget-vote", "no-truncate"])
    assert issubclass(both, RaftNode) and both is node_class({"no-truncate", "forget-vote"})
    assert KNOWN_BUGS >= {"commit-old-term", "forget-vote", "stale-lease", "no-truncate"}
    with pytest.raises(EngineConfigError):
        node_class({"no-such-bug"})


def test_follower_refuses_proposals_and_reads() -> None:
    node = RaftNode(RaftConfig("1", M3, random.Random(1)))
    with pytest.raises(ProposalDropped):
        node.propose(b"x")
    with pytest.raises(ProposalDropped):
        node.read_barrier(b"r")
    with pytest.raises(ProposalDropped):
        node.change_membership(M3)
    with pytest.raises(ProposalDropped):
        node.transfer_leadership("2")


def test_single_node_commits_and_reads_alone() -> None:
    node = RaftNode(RaftConfig("1", Membership(frozenset({"1"})), random.Random(1)))
    node.campaign()
    index, term = node.propose(b"x")
    node.read_barrier(b"r")
    rd = node.ready()
    assert [e.index for e in rd.entries] == [1, 2] and rd.hard_state.commit == 2
    assert [e.index for e in rd.committed_entries] == [1, 2]
    assert (index, term) == (2, 1)
    node.advance(rd)
    node.read_barrier(b"r2")
    rd = node.ready()
    assert [rs.index for rs in rd.read_states] == [2]
    node.advance(rd)
    st = node.status()
    assert st.applied == st.commit == st.last_index == 2
    node.compact(Snapshot(2, 1, Membership(frozenset()), b"img"))
    st = node.status()
    assert st.first_index == 3 and node.log_entries(1, 3) == []


def test_ready_must_sync_for_entries_term_and_vote_but_not_for_commit_alone() -> None:
    """As etcd-io/raft's MustSync: what a node promised others (entries it
    acknowledges, its term and vote) must reach disk before its messages go out;
    a commit index it can learn again from the leader need not."""
    m2 = Membership(frozenset({"1", "2"}))
    leader = RaftNode(RaftConfig("1", m2, random.Random(1)))
    follower = RaftNode(RaftConfig("2", m2, random.Random(2)))
    nodes = {"1": leader, "2": follower}

    def ready(nid: str):
        rd = nodes[nid].ready()
        nodes[nid].advance(rd)
        return rd

    def deliver(msgs) -> None:
        for m in msgs:
            nodes[m.to].step(m)

    leader.campaign()  # PreVote: no term or vote of its own yet
    rd = ready("1")
    assert rd.hard_state is None and rd.messages and not rd.must_sync
    deliver(rd.messages)
    rd = ready("2")  # grants the pre-vote: still nothing promised
    assert rd.hard_state is None and not rd.must_sync
    deliver(rd.messages)
    rd = ready("1")  # a real candidate: new term, votes for itself
    assert rd.hard_state.term == 1 and rd.hard_state.vote == "1" and rd.must_sync
    deliver(rd.messages)
    rd = ready("2")  # grants its vote
    assert rd.hard_state.vote == "1" and not rd.entries and rd.must_sync
    deliver(rd.messages)
    rd = ready("1")  # the leader's NOOP
    assert [e.kind for e in rd.entries] == [EntryKind.NOOP] and rd.must_sync
    deliver(rd.messages)
    rd = ready("2")  # the follower stores it
    assert rd.entries and rd.hard_state is None and rd.must_sync
    deliver(rd.messages)
    rd = ready("1")  # the NOOP commits: only the commit index moved
    assert rd.hard_state.commit == 1 and not rd.entries and rd.committed_entries
    assert not rd.must_sync
    deliver(rd.messages)
    rd = ready("2")  # the follower learns the commit index
    assert rd.hard_state.commit == 1 and (rd.hard_state.term, rd.hard_state.vote) == (1, "1")
    assert not rd.must_sync


FORBIDDEN = {"asyncio", "socket", "time", "threading", "selectors", "random"}


def test_consensus_package_is_sans_io() -> None:
    """Design rule 1: no clocks, sockets, threads or global randomness under kvorum/consensus."""
    root = pathlib.Path(__file__).resolve().parents[2] / "kvorum" / "consensus"
    for path in root.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [(node.module or "").split(".")[0]]
            else:
                continue
            in_type_checking = False
            for parent in ast.walk(tree):
                if isinstance(parent, ast.If) and "TYPE_CHECKING" in ast.dump(parent.test):
                    if any(child is node for child in ast.walk(parent)):
                        in_type_checking = True
            if not in_type_checking:
                assert not FORBIDDEN & set(names), f"{path}: imports {names}"


def test_append_round_trip_property() -> None:
    """encode/decode are inverses for arbitrary ids, terms, payloads and batches."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    ids = st.text(min_size=1, max_size=8)
    ints = st.integers(min_value=0, max_value=(1 << 63) - 1)
    entries = st.lists(
        st.builds(Entry, ints, ints, st.sampled_from(list(EntryKind)), st.binary(max_size=64)),
        max_size=8,
    ).map(tuple)

    @settings(max_examples=200, deadline=None)
    @given(st.builds(AppendEntries, ids, ids, ints, ints, ints, entries, ints))
    def check(msg: AppendEntries) -> None:
        assert decode_message(encode_message(msg)) == msg

    check()


def test_snapshot_mid_change_takes_the_latest_membership_instead_of_the_one_at_its_index() -> None:
    """Thesis 4.1: a membership entry is in force once appended but may still be
    undone; a snapshot of the applied state must hold the membership at its index."""
    node = RaftNode(RaftConfig("1", Membership(frozenset({"1"})), random.Random(1)))
    node.campaign()
    node.advance(node.ready())
    node.change_membership(Membership(frozenset({"1", "2"})))
    st = node.status()
    assert st.membership == Membership(frozenset({"1", "2"})) and st.commit == 1
    assert node.membership_at(1) == Membership(frozenset({"1"}))
    assert node.membership_at(2) == st.membership


def test_ready_says_when_to_sync_and_who_leads():
    """etcd-io/raft's MustSync and SoftState: entries or a new term/vote need an fsync before
    sending; a commit index alone does not; the soft state appears only when it changes."""
    from kvorum.consensus.replicated_log import Role

    single = RaftNode(RaftConfig("1", Membership(frozenset({"1"})), random.Random(1)))
    rd = single.ready()
    assert rd.soft_state is not None and rd.soft_state.role is Role.FOLLOWER and not rd.must_sync
    single.advance(rd)
    single.campaign()
    rd = single.ready()
    assert rd.must_sync and rd.soft_state.leader == "1" and rd.soft_state.role is Role.LEADER
    single.advance(rd)
    while single.has_ready():
        rd = single.ready()
        assert rd.soft_state is None
        single.advance(rd)
    single.propose(b"x")
    rd = single.ready()
    assert rd.entries and rd.must_sync and rd.soft_state is None
    single.advance(rd)
    follower = RaftNode(RaftConfig("2", M3, random.Random(1)))
    follower.advance(follower.ready())
    follower.step(AppendEntries("2", "1", 1, 0, 0, (Entry(1, 1, EntryKind.NOOP),), 0))
    rd = follower.ready()
    assert rd.must_sync and rd.soft_state.leader == "1"
    follower.advance(rd)
    follower.step(Heartbeat("2", "1", 1, 1, 1))
    rd = follower.ready()
    assert rd.hard_state is not None and rd.hard_state.commit == 1 and not rd.must_sync
